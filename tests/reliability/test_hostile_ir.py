"""Hostile IR text: every malformed input raises compiler.ParseError naming its line;
nothing else escapes, and text that does parse is safe to send down the pipeline."""
from __future__ import annotations

import random
import re

import numpy as np
import pytest

import compiler
import runtime
from compiler import ParseError, PullbackError, ShapeError, Spec, ops
from compiler.ir.types import TensorType
from tests.reliability.crashproof import assert_not_crashed, guarded, run_python

BASE_LINES = [
    "graph g",                                                    # 1
    "  in_tree (*, *)",                                           # 2
    "  out_tree *",                                               # 3
    "  %x = input : f32[4,3] param",                              # 4
    "  %n = input : i32[4] data",                                 # 5
    "  %0 = exp(%x) : f32[4,3]",                                  # 6
    "  %1 = sum(%0) {axes=(0, 1), keepdims=False} : f32[]",      # 7
    "  return %1",                                                # 8
]
BASE = "\n".join(BASE_LINES) + "\n"


def with_line(number: int, text: str) -> str:
    lines = list(BASE_LINES)
    lines[number - 1] = text
    return "\n".join(lines) + "\n"


def parse_error(text: object) -> str:
    with pytest.raises(ParseError) as info:
        compiler.parse(text)
    return str(info.value)


def assert_names_line(message: str, line: int) -> None:
    found = re.match(r"line (\d+): ", message)
    assert found, f"ParseError does not start with 'line N: ': {message!r}"
    assert int(found.group(1)) == line, f"expected line {line}: {message!r}"
    assert "\n" not in message, f"the message is not one line: {message!r}"


def test_base_parses():
    graph = compiler.parse(BASE)
    assert graph.type(graph.outputs[0]) == TensorType((), "float32")


# ---------------------------------------------------------------- one bad line each
BAD_LINES = [
    # unknown ops
    (6, "  %0 = frobnicate(%x) : f32[4,3]", "unknown op 'frobnicate'"),
    (6, "  %0 = __import__(%x) : f32[4,3]", "unknown op"),
    (6, "  %0 = input(%x) : f32[4,3]", "input is written"),
    (6, "  %0 = 3(%x) : f32[4,3]", "expected an op name"),
    # bad types
    (4, "  %x = input : f32[4,3 param", "type"),
    (4, "  %x = input : f16[4,3] param", "malformed type"),
    (4, "  %x = input : f32[-4,3] param", "malformed type"),
    (4, "  %x = input : f32[4.5,3] param", "malformed type"),
    (4, "  %x = input : f32[a,b] param", "malformed type"),
    (4, "  %x = input : tensor<4x3xf32> param", "expected a type"),
    (4, "  %x = input : f32[4][3] param", "input kind|type"),
    (4, "  %x = input : param", "expected a type"),
    (4, "  %x = input : f32[nan] param", "malformed type"),
    (4, "  %x = input : f32[4,3] weights", "input kind must be one of"),
    (6, "  %0 = exp(%x) : f64[4,3]", "declared type f64\\[4,3\\] but its operands give f32\\[4,3\\]"),
    (6, "  %0 = exp(%x) : f32[3,4]", "declared type"),
    (6, "  %0 = exp(%n) : i32[4]", "exp"),
    (6, "  %0 = add(%x, %n) : f32[4,3]", "add"),
    (7, "  %1 = sum(%0) {axes=(0, 1), keepdims=1} : f32[]", "keepdims must be a bool"),
    (7, "  %1 = sum(%0) {axes=[0, 1], keepdims=False} : f32[]", "axes must be a tuple"),
    (7, "  %1 = sum(%0) {axes=(1, 0), keepdims=False} : f32[]", "sorted"),
    (7, "  %1 = sum(%0) {axes=(0, 1)} : f32[]", "missing attribute"),
    (7, "  %1 = sum(%0) {axes=(0, 1), keepdims=False, evil=1} : f32[]", "unknown attribute"),
    (7, "  %1 = sum(%0) {axes=(0, 1), keepdims=False, keepdims=True} : f32[]", "given twice"),
    (7, "  %1 = sum(%0) {axes=__import__('os').getcwd(), keepdims=False} : f32[]", "not a literal"),
    (7, "  %1 = sum(%0) {axes=(0, 1), keepdims=False : f32[]", "unbalanced"),
    (7, "  %1 = sum(%0) {axes='(0, 1), keepdims=False} : f32[]", "unterminated string"),
    (7, "  %1 = sum(%0) {**x} : f32[]", "attributes must be written"),
    (7, "  %1 = sum(%0, %0) {axes=(0, 1), keepdims=False} : f32[]", "takes 1 operand"),
    # duplicate names
    (7, "  %0 = sum(%0) {axes=(0, 1), keepdims=False} : f32[]", "value %0 is already defined on line 6"),
    (5, "  %x = input : i32[4] data", "value %x is already defined on line 4"),
    (5, '  %"x" = input : i32[4] data', "already defined"),
    # undefined values and use before definition (SSA text cannot express a cycle)
    (6, "  %0 = exp(%nope) : f32[4,3]", "%nope is not defined"),
    (6, "  %0 = exp(%1) : f32[4,3]", "%1 is not defined \\(values must be defined before they are used\\)"),
    (6, "  %0 = exp(%0) : f32[4,3]", "%0 is not defined"),
    (8, "  return %2", "%2 is not defined"),
    (8, "  return", "lists no values"),
    (8, "  return %1 %0", "unexpected text"),
    # garbage
    (6, "\x00\x01\x02\x03", "expected a value definition"),
    (6, "  %0 = exp(%x) : f32[4,3] \x00", "unexpected text"),
    (6, "  <html><body>hello</body></html>", "expected a value definition"),
    (6, '  {"op": "exp", "operands": ["x"]}', "expected a value definition"),
    (6, "  import os; os.system('echo pwned')", "expected a value definition"),
    (6, "  %0 = exp(%x) : f32[4,3] junk", "unexpected text"),
    (6, "  %0 = exp(%x : f32[4,3]", "to close the operand list"),
    (6, "  %0 exp(%x) : f32[4,3]", "expected '='"),
    (6, "  % = exp(%x) : f32[4,3]", "expected a value name"),
    (6, "  %0 = exp(%x) f32[4,3]", "expected ':' before the type"),
    (6, "  %0 = exp(%x) :", "expected a type"),
    (6, "  ☃ = exp(%x) : f32[4,3]", "expected a value definition"),
    # headers
    (1, "grph g", "expected `graph ...`"),
    (1, "graph", "graph|name"),
    (1, "graph a b c", "bad graph name"),
    (2, "  in_tree (*, *", "bad in_tree"),
    (2, "  in_tree (*,)", "in_tree has 1 leaves but the text defines 2 inputs"),
    (2, "  in_tree {'b': *, 'a': *}", "sorted order"),
    (2, "  in_tree (__import__('os'), *)", "bad in_tree"),
    (3, "  out_tree (*, *)", "out_tree has 2 leaves"),
    (3, "  out_tree *)", "bad out_tree"),
    # huge numbers that are caught
    (7, "  %1 = sum(%0) {axes=(99999999999999999999999999, 1), keepdims=False} : f32[]", "out of range"),
    (7, "  %1 = sum(%0) {axes=(" + "9" * 5000 + ",), keepdims=False} : f32[]", "malformed attributes|out of range"),
    (7, "  %1 = sum(%0) {axes=(0, 1), keepdims=" + "(" * 100_000 + ")" * 100_000 + "} : f32[]", "malformed attributes"),
    (2, "  in_tree " + "(" * 100_000 + "*" + ",)" * 100_000, "bad in_tree"),
    (2, "  in_tree " + "-" * 100_000 + "1", "bad in_tree"),
    (6, "  %0 = exp(" + "%x, " * 100_000 + "%x) : f32[4,3]", "takes 1 operand"),
    (7, "  %1 = constant() {value=array([], dtype='float32', shape=(0, 99999999999999999999))} : f32[]", "attribute value"),
    (7, "  %1 = constant() {value=array([1e39], dtype='float32')} : f32[1]", "overflows float32"),
    (7, "  %1 = constant() {value=array([2147483648], dtype='int32')} : i32[1]", "int32"),
    (7, "  %1 = reshape(%0) {shape=(-1,)} : f32[12]", "reshape"),
]


@pytest.mark.parametrize("line, text, problem", BAD_LINES, ids=[f"{i}:{t[:30]!r}" for i, (_, t, _) in enumerate(BAD_LINES)])
def test_bad_line_names_its_line(line, text, problem):
    message = parse_error(with_line(line, text))
    assert_names_line(message, line)
    assert re.search(problem, message), message


def test_return_count_mismatch_names_the_out_tree_line():
    message = parse_error(with_line(8, "  return %1, %0"))
    assert_names_line(message, 3)
    assert "out_tree has 1 leaves but `return` lists 2 values" in message


@pytest.mark.parametrize("text, line", [
    ("", 1),
    ("   \n\n\t\n", 3),
    ("# only a comment\n# and another\n", 2),
    ("\x00" * 64, 1),
    (bytes(range(256)).decode("latin-1"), 1),
    ("\ufeffgraph g\n", 1),
    ("graph g\n", 1),
    ("graph g\n  in_tree (*,)\n", 2),
    ("graph g\n  in_tree (*,)\n  out_tree *\n  %x = input : f32[4] param\n", 4),
    ("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 1),
    ("\x7fELF\x02\x01\x01" + "\x00" * 40, 1),
])
def test_empty_garbage_and_truncated_text(text, line):
    message = parse_error(text)
    assert_names_line(message, line)


@pytest.mark.parametrize("value", [b"graph g\n", None, 42, ["graph g"], bytearray(b"x")])
def test_non_string_input(value):
    assert "must be a str" in parse_error(value)


def _vg_text() -> str:
    def loss(p, x, labels):
        h = ops.tanh(x @ p["W"] + p["b"])
        logits = h @ p["V"]
        one_hot = ops.cast(labels.reshape(4, 1) == np.arange(3, dtype=np.int32), "float32")
        return -ops.sum(one_hot * ops.log_softmax(logits, axis=1)) / 4 + ops.mean(ops.square(p["W"]))

    graph = compiler.trace(loss, {"W": Spec((5, 6)), "b": Spec((6,)), "V": Spec((6, 3))}, Spec((4, 5)),
                           Spec((4,), "int32"))
    return compiler.dump(compiler.value_and_grad(graph))


def test_every_truncation_is_refused_or_harmless():
    """Cut the backward IR around every line end, at every 5th character and all through the
    `return` line: a prefix that ends before the `return` line is a ParseError naming a line;
    a prefix that parses must keep the whole body.

    (The format has no end marker, so a cut inside the last returned name, `%40` -> `%4`,
    can still name a defined value and parse as a different graph; text ending in the
    printer's final newline never does.)"""
    text = _vg_text()
    full = compiler.dump(compiler.parse(text))
    return_end = text.rindex("return")
    total_lines = text.count("\n") + 1
    line_ends = [i for i, char in enumerate(text) if char == "\n"]
    cuts = sorted({c for end in line_ends for c in range(end - 3, end + 3)} | set(range(0, len(text), 5))
                  | set(range(return_end - 5, len(text))))
    for cut in (c for c in cuts if 0 <= c < len(text)):
        prefix = text[:cut]
        try:
            graph = compiler.parse(prefix)
        except ParseError as exc:
            message = str(exc)
            found = re.match(r"line (\d+): ", message)
            assert found and 1 <= int(found.group(1)) <= total_lines, f"cut {cut}: {message!r}"
            continue
        assert cut > return_end, f"a prefix cut at {cut} (before the return line) parsed"
        if compiler.dump(graph) != full:
            assert prefix.endswith(tuple("0123456789")), f"cut {cut} parsed differently: {prefix[-40:]!r}"


def _mutations(text: str, rng: random.Random) -> str:
    alphabet = "%(){}[],:=#'\"\\*.-+0123456789 \t\nabcxyzfi\x00\u2603\ud800e"
    lines = text.split("\n")
    kind = rng.randrange(6)
    if kind == 0:  # delete a span
        at = rng.randrange(len(text))
        return text[:at] + text[at + rng.randrange(1, 8):]
    if kind == 1:  # insert junk
        at = rng.randrange(len(text))
        return text[:at] + "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 6))) + text[at:]
    if kind == 2:  # swap two lines (use before def, header order)
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines)
    if kind == 3:  # duplicate a line (duplicate names)
        i = rng.randrange(len(lines))
        lines.insert(rng.randrange(len(lines)), lines[i])
        return "\n".join(lines)
    if kind == 4:  # replace a number with a huge or negative one
        numbers = list(re.finditer(r"\d+", text))
        found = rng.choice(numbers)
        value = rng.choice(["99999999999999999999999", "-1", "0", str(2**31), str(2**63), "1e400", "nan"])
        return text[:found.start()] + value + text[found.end():]
    # replace an op name with another op's name
    names = list(re.finditer(r"= ([a-z_]+)\(", text))
    found = rng.choice(names)
    op = rng.choice(["add", "exp", "matmul", "sum", "transpose", "where", "reshape", "full", "cast", "nope"])
    return text[:found.start(1)] + op + text[found.end(1):]


def test_random_mutations_raise_only_parse_error():
    text = _vg_text()
    rng = random.Random(20260523)
    outcomes = {"parsed": 0, "ParseError": 0}
    for _ in range(600):
        mutated = text
        for _ in range(rng.randrange(1, 4)):
            mutated = _mutations(mutated, rng)
        try:
            compiler.parse(mutated)
            outcomes["parsed"] += 1
        except ParseError as exc:
            outcomes["ParseError"] += 1
            assert re.match(r"line \d+: |graph .* does not verify", str(exc)), str(exc)
    assert outcomes["ParseError"] > 300, outcomes


# ------------------------------------------------------------------- huge sizes
# A dimension or element count beyond int64 cannot be allocated, indexed or even measured
# (an int64 size would wrap): TensorType refuses it, so the text is refused where it is read.
HUGE_TYPES = [
    ("f32[99999999999999999999999999]", "a dimension beyond int64"),
    ("f32[4294967296,4294967296]", "2**64 elements: TensorType.size wraps to 0"),
    ("f32[4000000000,4000000000,4000000000]", "6.4e28 elements: size wraps negative"),
]


@pytest.mark.parametrize("type_text, why", HUGE_TYPES, ids=[w for _, w in HUGE_TYPES])
def test_types_beyond_int64_are_refused_with_the_line(type_text, why):
    rank = type_text.count(",") + 1
    text = "\n".join([
        "graph g", "  in_tree (*,)", "  out_tree *",
        f"  %x = input : {type_text} param",
        f"  %0 = exp(%x) : {type_text}",
        f"  %1 = sum(%0) {{axes={tuple(range(rank))}, keepdims=False}} : f32[]",
        "  return %1", ""])
    message = parse_error(text)
    assert_names_line(message, 4)


def test_tensor_type_size_never_wraps():
    with pytest.raises(ShapeError, match=r"more than 2\*\*63-1 bytes"):
        TensorType((2**32, 2**32), "float32")
    with pytest.raises(ShapeError):
        TensorType((np.int64(2**31), np.int64(2**31)), "f64")  # the slow (normalizing) path too
    with pytest.raises(ShapeError):
        TensorType((2**61,), "float32")  # 2**63 bytes: one past the limit
    edge = TensorType((2**63 - 1,), "bool")  # exactly at the limit is a type (if not an allocation)
    assert edge.size == 2**63 - 1 and edge.nbytes == 2**63 - 1
    assert TensorType((0, 2**40), "float64").size == 0
    with pytest.raises(ShapeError, match="strides would overflow"):
        TensorType((0, 10**30), "float32")  # empty, but its strides cannot be represented
    big = TensorType((2**20, 2**20, 2**20), "float32")
    assert big.size == 2**60 and big.nbytes == 2**62 and type(big.size) is int


def test_spec_beyond_int64_is_a_shape_error():
    with pytest.raises(ShapeError):
        compiler.trace(lambda p: ops.sum(p), Spec((2**40, 2**40)))


# A `full` value that does not fit its int dtype is refused where the op is built: numpy
# raises on it and native code would wrap it, so oracle and compiler would disagree.
@pytest.mark.parametrize("value", ["3000000000", "-2147483649", "99999999999999999999999999", "2.5"])
def test_full_value_out_of_int32_range_is_refused(value):
    text = with_line(7, f"  %1 = full() {{dtype='int32', shape=(), value={value}}} : i32[]")
    message = parse_error(text)
    assert_names_line(message, 7)
    assert "does not fit int32" in message, message


@pytest.mark.parametrize("value, dtype", [("2147483647", "int32"), ("-2147483648", "int32"),
                                          ("9223372036854775807", "int64"), ("-9223372036854775808", "int64")])
def test_full_value_at_the_int_limits_parses(value, dtype):
    short = {"int32": "i32", "int64": "i64"}[dtype]
    graph = compiler.parse(with_line(7, f"  %1 = full() {{dtype='{dtype}', shape=(), value={value}}} : {short}[]"))
    assert graph.node(graph.outputs[0]).attrs["value"] == int(value)


@pytest.mark.parametrize("fill, dtype", [(2**31, "int32"), (-(2**31) - 1, "int32"), (2**63, "int64"),
                                         (float("nan"), "int32"), (float("inf"), "int64"), (1e19, "int64")])
def test_traced_full_value_that_does_not_fit_is_refused(fill, dtype):
    with pytest.raises(ShapeError, match="does not fit"):
        compiler.trace(lambda p: ops.sum(p) + ops.sum(ops.full((2,), fill, dtype).astype("float32")), Spec((2,)))


# ------------------------------------------------- odd but valid names through the pipeline
# The graph name reaches LLVM IR text (the module label, symbols) and the artifact manifest:
# it is sanitized for the former, and names that are not valid Unicode (a lone surrogate,
# legal in IR text as "\\ud800") are refused by the parser, since no manifest could hold them.
@pytest.mark.parametrize("where, name", [
    ("graph", "plain"), ("graph", "\\u00e9t\\u00e9"), ("graph", "\\u65e5\\u672c"), ("graph", "a b;c}{%0"),
    ("graph", "x" * 3000), ("input", "a\\nb"), ("input", "a\\x00b"), ("input", "\\u00e9"), ("input", "}{ ;%"),
    ("graph", "a\\x00b"), ("graph", "a\\nb"), ("graph", "a\\rb\\tc\\x7f\\\\d"), ("graph", '\\"; ModuleID'),
    ("graph", "\\ud800"), ("input", "\\ud800"), ("graph", "ok\\udfff"),
])
def test_parsed_names_compile_or_are_refused_at_parse(where, name):
    """A name the parser accepts must not break the code generator or the artifact writer."""
    codegen = pytest.importorskip("compiler.codegen")
    quoted = f'"{name}"'
    text = "\n".join([
        f"graph {quoted if where == 'graph' else 'g'}", "  in_tree (*,)", "  out_tree *",
        f"  %{quoted if where == 'input' else 'x'} = input : f32[4] param",
        f"  %0 = exp(%{quoted if where == 'input' else 'x'}) : f32[4]", "  return %0", ""])
    if "\\ud" in name:  # a lone surrogate: refused up front, naming the line
        message = parse_error(text)
        assert_names_line(message, 1 if where == "graph" else 4)
        assert "not valid Unicode" in message, message
        return
    graph = compiler.parse(text)
    kernel = codegen.compile(graph, cache=False)
    np.testing.assert_allclose(kernel(np.zeros(4, np.float32)), np.ones(4, np.float32))
    loaded = runtime.loads(kernel.to_bytes())  # and the artifact round-trips
    assert loaded.manifest["name"] == graph.name
    np.testing.assert_allclose(loaded(np.zeros(4, np.float32)), np.ones(4, np.float32))


def test_unquoted_graph_name_with_a_lone_surrogate_is_refused():
    text = "\n".join(["graph a\ud800b", "  in_tree (*,)", "  out_tree *", "  %x = input : f32[4] param",
                      "  return %x", ""])
    message = parse_error(text)
    assert_names_line(message, 1)
    assert "not valid Unicode" in message, message


def test_quoted_location_with_a_lone_surrogate_is_refused():
    message = parse_error(with_line(6, '  %0 = exp(%x) : f32[4,3]  # "m.py:\\ud800"'))
    assert_names_line(message, 6)
    assert "not valid Unicode" in message, message


def test_traced_graph_name_with_a_lone_surrogate_is_an_artifact_error():
    """The front end takes any str as a name; the artifact writer refuses it cleanly."""
    codegen = pytest.importorskip("compiler.codegen")
    graph = compiler.trace(lambda p: ops.sum(p), Spec((3,)), name="bad\ud800")
    with pytest.raises(runtime.ArtifactError, match="not valid Unicode"):
        codegen.compile(graph, cache=False).to_bytes()


def test_hostile_text_in_a_fresh_process(tmp_path):
    """The nastiest texts once more where a crash would be visible: in a child process."""
    texts = [
        with_line(7, "  %1 = sum(%0) {axes=(0, 1), keepdims=" + "(" * 200_000 + ")" * 200_000 + "} : f32[]"),
        with_line(2, "  in_tree " + "[" * 100_000 + "*" + "]" * 100_000),
        with_line(2, "  in_tree " + "-" * 500_000 + "1"),
        with_line(6, "  %0 = exp(" + "%x," * 300_000 + "%x) : f32[4,3]"),
        bytes(range(256)).decode("latin-1") * 100,
    ]
    paths = []
    for index, text in enumerate(texts):
        path = tmp_path / f"t{index}.ir"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        paths.append(str(path))
    code = guarded("""
        import compiler
        for path in sys.argv[1:]:
            try:
                compiler.parse(open(path, encoding="utf-8", errors="surrogatepass").read())
            except compiler.ParseError as exc:
                assert str(exc).startswith("line "), str(exc)
            else:
                raise AssertionError(f"{path} parsed")
    """, "AssertionError")
    result = run_python(code, *paths)
    assert_not_crashed(result)
    assert result.returncode == 0 and result.stdout.strip() == "OK", result.stderr[-2000:]
