"""Parse the IR text written by `dump` back into a verified Graph.

Ops are added through `Graph.add_node` with their types inferred, and each inferred type
must equal the declared one, so a text graph is checked exactly as a traced one is.
Attribute blocks are read with `ast` and a small literal evaluator (never `eval`).
Every problem raises ParseError naming the line.

The text is one or more `graph NAME` sections: the first is the graph returned, the
others are bodies referred to by attributes written `graph('NAME')`. A body is built
(and verified) when first referred to, so bodies are finished before the ops using them;
a section referring to itself through bodies, to no section, or never used is an error.
"""
from __future__ import annotations

import ast
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from compiler.errors import ParseError, PullbackError
from compiler.ir.graph import INPUT_KINDS, Graph
from compiler.ir.printer import NAME
from compiler.ir.types import DTYPES, TensorType
from compiler.ir.verify import verify
from compiler.ops.registry import get_op
from runtime.pytree import LEAF, TreeError, flatten, num_leaves, treedef_from_text, treedef_to_text

_OP = re.compile(r"[A-Za-z_]\w*")
_TYPE = re.compile(r"\w*\[[^\]]*\]")
_STRING = re.compile(r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*\"""")
MAX_BODY_DEPTH = 100  # bodies within bodies; far beyond real programs, well within Python's recursion limit


def parse(text: str) -> Graph:
    """Rebuild the graph printed as `text`; raises ParseError naming the line on bad input."""
    if not isinstance(text, str):
        raise ParseError(f"IR text must be a str, got {type(text).__name__}")
    return _Text(text).parse()


@dataclass(frozen=True)
class _BodyRef:
    """graph('name') in an attribute, before the section it names is looked up."""
    name: str

    def __repr__(self) -> str:  # as written, for messages like "an array cannot hold graph('x')"
        return f"graph({self.name!r})"


class _Text:
    """Splits the text into `graph` sections and builds each body once, on first reference."""

    def __init__(self, text: str) -> None:
        # Blank lines and whole-line `#` comments are allowed anywhere (golden files may annotate).
        self.lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)
                      if line.strip() and not line.strip().startswith("#")]
        self.last_line = max(1, len(text.splitlines()))
        self.sections: dict[str, list[tuple[int, str]]] = {}  # name -> its lines, header first
        self.built: dict[str, Graph] = {}
        self.building: list[str] = []  # sections being built, outermost first

    def parse(self) -> Graph:
        if not self.lines:
            raise ParseError(f"line {self.last_line}: the text ends before the `graph NAME` header (truncated?)")
        lineno, first = self.lines[0]
        if _keyword(first) != "graph":
            raise ParseError(f"line {lineno}: expected `graph ...`, got {first!r}")
        current: list[tuple[int, str]] = []
        for lineno, line in self.lines:
            if _keyword(line) == "graph":
                name = _graph_name(line[len("graph"):].strip(), lineno)
                if name in self.sections:
                    raise ParseError(f"line {lineno}: graph {name!r} is already defined on line "
                                     f"{self.sections[name][0][0]} (section names must be unique)")
                current = self.sections[name] = []
            current.append((lineno, line))
        main = next(iter(self.sections))
        graph = self._build(main)
        for name, lines in self.sections.items():
            if name not in self.built:
                raise ParseError(f"line {lines[0][0]}: graph {name!r} is not used: no attribute refers to "
                                 f"graph({name!r}) (the first section is the graph; the others are its bodies)")
        return graph

    def body(self, name: str, lineno: int) -> Graph:
        """The body graph('name') referred to on line `lineno`."""
        if name in self.built:
            return self.built[name]
        if name not in self.sections:
            raise ParseError(f"line {lineno}: graph({name!r}) refers to no section: the text has no `graph {name}`")
        if name in self.building:
            cycle = " -> ".join(repr(n) for n in self.building[self.building.index(name):] + [name])
            raise ParseError(f"line {lineno}: graph({name!r}) makes graph {name!r} contain itself: {cycle}")
        if len(self.building) > MAX_BODY_DEPTH:
            raise ParseError(f"line {lineno}: bodies are nested more than {MAX_BODY_DEPTH} deep")
        return self._build(name)

    def _build(self, name: str) -> Graph:
        self.building.append(name)
        graph = _Parser(self, name).parse()
        self.building.pop()
        self.built[name] = graph
        return graph


class _Parser:
    """Builds the graph of one section."""

    def __init__(self, text: _Text, name: str) -> None:
        self.text, self.name = text, name
        header, *self.lines = text.sections[name]
        self.lineno = header[0]
        names = list(text.sections)
        following = names.index(name) + 1
        self.last = following == len(names)
        # a section ends at the next header: that line is where a missing `return` is reported
        self.last_line = text.last_line if self.last else text.sections[names[following]][0][0]
        self.values: dict[str, tuple[int, int]] = {}  # text name -> (node id, defining line)

    def parse(self) -> Graph:
        lines = iter(self.lines)
        graph = Graph(self.name)
        in_line = self._next(lines, "the `in_tree` line")
        in_tree = self._tree(self._header(in_line, "in_tree"), "in_tree")
        out_line = self._next(lines, "the `out_tree` line")
        out_tree = self._tree(self._header(out_line, "out_tree"), "out_tree")
        graph.capture_locations = False  # a node without `# loc` has none; don't invent the parser's
        outputs = None
        for self.lineno, line in lines:
            if outputs is not None:
                self.fail(f"unexpected text after `return`: {line!r}")
            if _keyword(line) == "return":
                outputs = self._return(line[len("return"):])
            elif line.startswith("%"):
                self._node(graph, line)
            else:
                self.fail(f"expected a value definition `%name = op(...) : type` or `return`, got {line!r}")
        if outputs is None:
            self._ended("without a `return` line")
        graph.capture_locations = True
        if num_leaves(in_tree) != len(graph.inputs):
            self.lineno = in_line[0]
            self.fail(f"in_tree has {num_leaves(in_tree)} leaves but the text defines {len(graph.inputs)} inputs")
        if num_leaves(out_tree) != len(outputs):
            self.lineno = out_line[0]
            self.fail(f"out_tree has {num_leaves(out_tree)} leaves but `return` lists {len(outputs)} values")
        graph.in_tree = in_tree
        graph.set_outputs(outputs, out_tree)
        try:
            verify(graph)
        except PullbackError as exc:
            raise ParseError(f"graph {graph.name!r} does not verify: {exc}") from None
        return graph

    # ------------------------------------------------------------ lines
    lineno = 0

    def fail(self, message: str) -> NoReturn:
        raise ParseError(f"line {self.lineno}: {message}")

    def _next(self, lines: Any, what: str) -> tuple[int, str]:
        try:
            self.lineno, line = next(lines)
        except StopIteration:
            self._ended(f"before {what}")
        return self.lineno, line

    def _ended(self, how: str) -> NoReturn:
        self.lineno = self.last_line
        if self.last:
            self.fail(f"the text ends {how} (truncated?)")
        self.fail(f"graph {self.name!r} ends {how}: this `graph` line starts the next section")

    def _header(self, numbered: tuple[int, str], keyword: str) -> str:
        self.lineno, line = numbered
        if _keyword(line) != keyword:
            self.fail(f"expected `{keyword} ...`, got {line!r}")
        return line[len(keyword):].strip()

    def _tree(self, text: str, which: str) -> Any:
        try:
            tree = treedef_from_text(text)
        except (TreeError, RecursionError, MemoryError) as exc:
            self.fail(f"bad {which}: {exc if isinstance(exc, TreeError) else 'nested too deeply'}")
        try:
            written = treedef_to_text(tree)
            treedef_from_text(written)
        except TreeError:
            self.fail(f"bad {which}: dict keys must be strings or numbers")
        # flatten() sorts dict keys, so a tree written unsorted could never match arguments
        canonical = treedef_to_text(flatten(tree, is_leaf=lambda node: node is LEAF)[1])
        if canonical != written:
            self.fail(f"bad {which}: dict keys must be in sorted order, as in {canonical}")
        return tree

    def _return(self, text: str) -> list[int]:
        scan = _Scanner(text, self)
        if scan.at_end():
            self.fail("`return` lists no values")
        outputs = [self._use(scan.name())]
        while scan.take(","):
            outputs.append(self._use(scan.name()))
        scan.end("after the returned values")
        return outputs

    def _node(self, graph: Graph, line: str) -> None:
        scan = _Scanner(line, self)
        name = scan.name()
        if name in self.values:
            self.fail(f"value %{name} is already defined on line {self.values[name][1]}")
        scan.expect("=", "after the value name")
        op = scan.match(_OP, "an op name")
        if op == "input" and scan.peek() == ":":
            node_id = self._input(graph, scan, name)
        else:
            node_id = self._op(graph, scan, op)
        self.values[name] = (node_id, self.lineno)

    def _input(self, graph: Graph, scan: "_Scanner", name: str) -> int:
        scan.expect(":", "")
        type_ = scan.type()
        kind = scan.match(re.compile(r"\w+"), f"the input kind ({' or '.join(INPUT_KINDS)})")
        if kind not in INPUT_KINDS:
            self.fail(f"input kind must be one of {', '.join(INPUT_KINDS)}, got {kind!r}")
        loc = scan.loc()
        return graph.add_input(name, type_, kind, loc=loc)

    def _op(self, graph: Graph, scan: "_Scanner", op: str) -> int:
        try:
            get_op(op)
        except PullbackError:
            self.fail(f"unknown op {op!r}")
        if op == "input":
            self.fail("an input is written `%name = input : TYPE KIND`")
        scan.expect("(", f"after the op name {op!r}")
        operands: list[int] = []
        if not scan.take(")"):
            operands.append(self._use(scan.name()))
            while scan.take(","):
                operands.append(self._use(scan.name()))
            scan.expect(")", "to close the operand list")
        attrs = self._attrs(scan.braces()) if scan.peek() == "{" else {}
        scan.expect(":", "before the type")
        declared = scan.type()
        loc = scan.loc()
        try:
            node_id = graph.add_node(op, operands, attrs, loc=loc)
        except PullbackError as exc:
            self.fail(str(exc))
        except Exception as exc:  # an op's rule choking on malformed attributes is still bad input
            self.fail(f"{op}: bad operands or attributes ({type(exc).__name__}: {exc})")
        inferred = graph.type(node_id)
        if inferred != declared:
            self.fail(f"{op}: declared type {declared} but its operands give {inferred}")
        return node_id

    def _use(self, name: str) -> int:
        if name not in self.values:
            self.fail(f"%{name} is not defined (values must be defined before they are used)")
        return self.values[name][0]

    def _attrs(self, text: str) -> dict[str, Any]:
        try:
            call = _ast_parse(f"f({text})").body
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            self.fail(f"malformed attributes {{{text}}}: {getattr(exc, 'msg', None) or exc}")
        if not isinstance(call, ast.Call) or call.args or any(k.arg is None for k in call.keywords):
            self.fail(f"attributes must be written {{name=value, ...}}, got {{{text}}}")
        attrs: dict[str, Any] = {}
        for keyword in call.keywords:
            if keyword.arg in attrs:
                self.fail(f"attribute {keyword.arg!r} is given twice")
            try:
                attrs[keyword.arg] = _literal(keyword.value)
            except (ValueError, TypeError, OverflowError, RecursionError) as exc:
                self.fail(f"attribute {keyword.arg}: {exc}")
        return {key: self._bodies(value) for key, value in attrs.items()}

    def _bodies(self, value: Any) -> Any:
        """`value` with each graph('name') replaced by that body, built now if need be."""
        if isinstance(value, _BodyRef):
            return self.text.body(value.name, self.lineno)
        if isinstance(value, tuple):
            return tuple(self._bodies(item) for item in value)
        if isinstance(value, list):
            return [self._bodies(item) for item in value]
        return value


def _ast_parse(source: str) -> ast.Expression:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an invalid escape like '\,' is a SyntaxError, not a warning
        return ast.parse(source, mode="eval")


def _string(quoted: str) -> str:
    """The value of one Python string literal (the caller matched it with _STRING)."""
    node = _ast_parse(quoted).body
    if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        raise ValueError(f"{quoted} is not a string literal")
    _check_unicode(node.value)
    return node.value


class _NotUnicode(ValueError):
    pass


def _check_unicode(text: str) -> None:
    # A lone surrogate ("\ud800") is a Python str but not Unicode text: it cannot be written
    # to an artifact manifest, a terminal or a file, so refuse it where it is read.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _NotUnicode("name is not valid Unicode (it holds a lone surrogate)") from None


def _keyword(line: str) -> str:
    return line.split(None, 1)[0] if line else ""


def _graph_name(text: str, lineno: int) -> str:
    try:
        if text[:1] in ("'", '"'):
            try:
                name = _string(text) if _STRING.fullmatch(text) else None
            except _NotUnicode:
                raise
            except (SyntaxError, ValueError):
                name = None
            if isinstance(name, str):
                return name
        elif text and len(text.split()) == 1:
            _check_unicode(text)
            return text
    except _NotUnicode as exc:
        raise ParseError(f"line {lineno}: bad graph name {text!r}: {exc}") from None
    raise ParseError(f"line {lineno}: bad graph name {text!r}")


class _Scanner:
    """Reads the tokens of one line left to right; errors name the parser's current line."""

    def __init__(self, text: str, parser: _Parser) -> None:
        self.text, self.pos, self.parser = text, 0, parser

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip()
        return self.text[self.pos:self.pos + 1]

    def at_end(self) -> bool:
        return self.peek() == ""

    def rest(self) -> str:
        return self.text[self.pos:] or "the end of the line"

    def take(self, char: str) -> bool:
        if self.peek() == char:
            self.pos += 1
            return True
        return False

    def expect(self, char: str, where: str) -> None:
        if not self.take(char):
            self.parser.fail(f"expected {char!r} {where}, got {self.rest()!r}".replace("  ", " "))

    def match(self, pattern: re.Pattern, what: str) -> str:
        self.skip()
        found = pattern.match(self.text, self.pos)
        if not found:
            self.parser.fail(f"expected {what}, got {self.rest()!r}")
        self.pos = found.end()
        return found.group()

    def name(self) -> str:
        self.expect("%", "before a value name")
        if self.text[self.pos:self.pos + 1] in ("'", '"'):
            quoted = self.match(_STRING, "a quoted value name")
            try:
                return _string(quoted)
            except _NotUnicode as exc:
                self.parser.fail(f"bad quoted value name {quoted}: {exc}")
            except (SyntaxError, ValueError):
                self.parser.fail(f"bad quoted value name {quoted}")
        found = NAME.match(self.text, self.pos)
        if not found:
            self.parser.fail(f"expected a value name after '%', got {self.rest()!r}")
        self.pos = found.end()
        return found.group()

    def type(self) -> TensorType:
        self.skip()
        found = _TYPE.match(self.text, self.pos)
        if not found:
            token = self.text[self.pos:].split(None, 1)[0] if not self.at_end() else "nothing"
            self.parser.fail(f"expected a type like f32[64,10], got {token!r}")
        try:
            type_ = TensorType.parse(found.group())
        except PullbackError as exc:
            self.parser.fail(f"bad type: {exc}")
        self.pos = found.end()
        return type_

    def braces(self) -> str:
        """The text inside a balanced {...}, skipping over brackets inside string literals."""
        self.expect("{", "")
        start, depth = self.pos, 1
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in "'\"":
                found = _STRING.match(self.text, self.pos)
                if not found:
                    self.parser.fail(f"unterminated string in attributes: {self.text[self.pos:]!r}")
                self.pos = found.end()
                continue
            depth += {"{": 1, "(": 1, "[": 1, "}": -1, ")": -1, "]": -1}.get(char, 0)
            self.pos += 1
            if depth == 0:
                return self.text[start:self.pos - 1]
        self.parser.fail(f"unbalanced brackets in attributes: {self.text[start - 1:]!r}")

    def loc(self) -> str | None:
        if self.at_end():
            return None
        if not self.take("#"):
            self.parser.fail(f"unexpected text {self.rest()!r} (a location comment starts with '#')")
        loc = self.text[self.pos:].strip()
        if loc[:1] in ("'", '"'):
            if not _STRING.fullmatch(loc):
                self.parser.fail(f"bad quoted location {loc!r}")
            try:
                loc = _string(loc)
            except _NotUnicode:
                self.parser.fail("bad quoted location: it is not valid Unicode (it holds a lone surrogate)")
            except (SyntaxError, ValueError):
                self.parser.fail(f"bad quoted location {loc!r}")
            if not isinstance(loc, str):
                self.parser.fail("a quoted location must be a string")
        return loc or None

    def end(self, where: str) -> None:
        if not self.at_end():
            self.parser.fail(f"unexpected text {self.rest()!r} {where}")


# ------------------------------------------------------------ literals
def _literal(node: ast.AST) -> Any:
    """A safe literal: numbers, strings, bools, None, tuples, lists, inf, nan, array(...), graph(...)."""
    if isinstance(node, ast.Constant) and (node.value is None or type(node.value) in (bool, int, float, str)):
        return node.value
    if isinstance(node, ast.Name) and node.id in ("inf", "nan"):
        return float(node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        operand = node.operand
        if (isinstance(operand, ast.Constant) and type(operand.value) in (int, float)) or (
                isinstance(operand, ast.Name) and operand.id in ("inf", "nan")):
            return -_literal(operand)
    if isinstance(node, ast.Tuple):
        return tuple(_literal(item) for item in node.elts)
    if isinstance(node, ast.List):
        return [_literal(item) for item in node.elts]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "array":
        return _array(node)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "graph":
        if len(node.args) != 1 or node.keywords or not (
                isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            raise ValueError(f"write a body as graph('name'), got {ast.unparse(node)!r}")
        return _BodyRef(node.args[0].value)
    raise ValueError(f"{ast.unparse(node)!r} is not a literal (numbers, strings, True/False/None, "
                     f"tuples, lists, inf, nan, array(...), graph('name'))")


def _array(call: ast.Call) -> np.ndarray:
    keywords = {k.arg: k.value for k in call.keywords}
    if len(call.args) != 1 or len(keywords) != len(call.keywords) or not set(keywords) <= {"dtype", "shape"} \
            or "dtype" not in keywords:
        raise ValueError("write arrays as array(<nested list>, dtype='float32') (with shape=(...) when empty)")
    dtype = _literal(keywords["dtype"])
    if dtype not in DTYPES:
        raise ValueError(f"array dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    data = _literal(call.args[0])
    _check_elements(data, dtype)
    try:
        with np.errstate(over="ignore"):
            array = np.array(data, dtype=dtype)
        overflow = array.dtype.kind == "f" and np.isinf(array).sum() != np.isinf(np.array(data, dtype=float)).sum()
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"bad {dtype} array: {exc}") from None
    if overflow:
        raise ValueError(f"an array element overflows {dtype}")
    if "shape" in keywords:
        shape = _literal(keywords["shape"])
        if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
            raise ValueError(f"array shape must be a tuple of non-negative ints, got {shape!r}")
        if array.size != 0 or math.prod(shape) != 0:
            if array.shape != shape:
                raise ValueError(f"array data has shape {array.shape} but shape={shape}")
        array = array.reshape(shape)
    array.setflags(write=False)
    return array


def _check_elements(data: Any, dtype: str) -> None:
    if isinstance(data, list):
        for item in data:
            _check_elements(item, dtype)
        return
    allowed = {"bool": (bool,), "int32": (int,), "int64": (int,)}.get(dtype, (int, float))
    if type(data) not in allowed:
        raise ValueError(f"a {dtype} array cannot hold {data!r}")
