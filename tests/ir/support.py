"""Shared by the parser tests: random edits of IR text, and what parsing the result must do."""
from __future__ import annotations

import re

from hypothesis import strategies as st

from compiler import ParseError
from compiler.ir.parser import parse
from compiler.ir.printer import dump


def edits(alphabet: str, max_chars: int) -> st.SearchStrategy:
    """1-3 deletions, insertions of characters from `alphabet`, or swaps of adjacent lines."""
    return st.lists(st.tuples(st.sampled_from(["delete", "insert", "swap"]), st.integers(0, 10**6),
                              st.text(alphabet=alphabet, min_size=1, max_size=max_chars)),
                    min_size=1, max_size=3)


def mutate(source: str, changes: list) -> str:
    for action, where, chars in changes:
        where %= len(source) + 1
        if action == "delete":
            source = source[:where] + source[where + len(chars):]
        elif action == "insert":
            source = source[:where] + chars + source[where:]
        else:
            lines = source.splitlines(keepends=True)
            k = where % len(lines)
            lines[k], lines[k - 1] = lines[k - 1], lines[k]
            source = "".join(lines)
    return source


def check_parses_or_raises_parse_error(source: str) -> None:
    """Text either parses into a graph that round-trips, or raises a ParseError with a line."""
    try:
        graph = parse(source)
    except ParseError as exc:
        assert re.match(r"line \d+: |graph .* does not verify", str(exc)), str(exc)
        return
    assert dump(parse(dump(graph))) == dump(graph)
