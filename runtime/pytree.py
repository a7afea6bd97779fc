"""Pytrees: nested tuples, lists and dicts whose leaves are arrays.

A tree definition ("treedef") is the same nesting with every leaf replaced by LEAF.
Dict keys are kept in sorted order, as JAX does, so a treedef is canonical.
None is an empty subtree (no leaves). Shared by compiler and runtime.
"""
from __future__ import annotations

import ast
import io
import tokenize
from typing import Any, Callable

LEAF = ...  # the placeholder for one leaf inside a treedef


class TreeError(ValueError):
    """A pytree does not have the structure that was expected."""


def flatten(tree: Any, is_leaf: Callable[[Any], bool] | None = None) -> tuple[list, Any]:
    """Return (leaves, treedef): leaves in depth-first order, dict keys sorted."""
    leaves: list = []

    def walk(node: Any) -> Any:
        if node is None:
            return None
        if is_leaf is not None and is_leaf(node):
            leaves.append(node)
            return LEAF
        if isinstance(node, tuple) and not hasattr(node, "_fields"):
            return tuple(walk(child) for child in node)
        if isinstance(node, list):
            return [walk(child) for child in node]
        if isinstance(node, dict):
            return {key: walk(node[key]) for key in _sorted_keys(node)}
        leaves.append(node)
        return LEAF

    return leaves, walk(tree)


def unflatten(treedef: Any, leaves: list) -> Any:
    """Rebuild a tree of the shape `treedef` from `leaves` (inverse of flatten)."""
    position = 0

    def build(node: Any) -> Any:
        nonlocal position
        if node is LEAF:
            if position >= len(leaves):
                raise TreeError(f"too few leaves: the tree needs {num_leaves(treedef)}, got {len(leaves)}")
            position += 1
            return leaves[position - 1]
        if node is None:
            return None
        if isinstance(node, tuple):
            return tuple(build(child) for child in node)
        if isinstance(node, list):
            return [build(child) for child in node]
        if isinstance(node, dict):
            return {key: build(child) for key, child in node.items()}
        raise TreeError(f"not a treedef node: {node!r}")

    tree = build(treedef)
    if position != len(leaves):
        raise TreeError(f"too many leaves: the tree needs {position}, got {len(leaves)}")
    return tree


def num_leaves(treedef: Any) -> int:
    _check_treedef(treedef, repr(treedef))
    return len(flatten(treedef, is_leaf=lambda node: node is LEAF)[0])


def leaf_paths(treedef: Any) -> list[tuple]:
    """The key path (a tuple of dict keys and sequence indices) of every leaf, in order."""
    paths: list[tuple] = []

    def walk(node: Any, path: tuple) -> None:
        if node is LEAF:
            paths.append(path)
        elif isinstance(node, (tuple, list)):
            for index, child in enumerate(node):
                walk(child, path + (index,))
        elif isinstance(node, dict):
            for key, child in node.items():
                walk(child, path + (key,))

    walk(treedef, ())
    return paths


def treedef_to_text(treedef: Any) -> str:
    """Python-literal text with `*` for each leaf, e.g. ({'W': *, 'b': *}, *)."""
    if treedef is LEAF:
        return "*"
    if treedef is None:
        return "None"
    if isinstance(treedef, tuple):
        inner = ", ".join(treedef_to_text(child) for child in treedef)
        return f"({inner},)" if len(treedef) == 1 else f"({inner})"
    if isinstance(treedef, list):
        return "[" + ", ".join(treedef_to_text(child) for child in treedef) + "]"
    if isinstance(treedef, dict):
        return "{" + ", ".join(f"{key!r}: {treedef_to_text(child)}" for key, child in treedef.items()) + "}"
    raise TreeError(f"not a treedef node: {treedef!r}")


def treedef_from_text(text: str) -> Any:
    """Inverse of treedef_to_text. Raises TreeError on anything else."""
    try:
        tokens = [
            (tokenize.OP, "...") if (tok.type == tokenize.OP and tok.string == "*") else (tok.type, tok.string)
            for tok in tokenize.generate_tokens(io.StringIO(text.strip()).readline)
        ]
        literal = ast.literal_eval(tokenize.untokenize(tokens).strip())
    except (SyntaxError, ValueError, tokenize.TokenError) as exc:
        raise TreeError(f"malformed tree {_shown(text)}: {exc}") from None
    except (RecursionError, MemoryError):  # CPython's parser gives up on e.g. 100,000 unary minus signs
        raise TreeError(f"malformed tree {_shown(text)}: nested too deeply") from None
    try:
        _check_treedef(literal, text)
    except RecursionError:
        raise TreeError(f"malformed tree {_shown(text)}: nested too deeply") from None
    return literal


def _shown(text: str, limit: int = 200) -> str:
    # hostile trees can be megabytes long: quote the start, not all of it
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def _check_treedef(node: Any, text: str) -> None:
    if node is LEAF or node is None:
        return
    if isinstance(node, (tuple, list)):
        for child in node:
            _check_treedef(child, text)
        return
    if isinstance(node, dict):
        for key, child in node.items():
            if key is LEAF or isinstance(key, (list, dict, tuple)) or key is None:
                raise TreeError(f"malformed tree {_shown(text)}: dict keys must be strings or numbers, got {key!r}")
            _check_treedef(child, text)
        return
    raise TreeError(f"malformed tree {_shown(text)}: unexpected {node!r}")


def _sorted_keys(mapping: dict) -> list:
    try:
        return sorted(mapping)
    except TypeError:
        return sorted(mapping, key=repr)
