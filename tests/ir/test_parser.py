"""The IR parser: exact round trips (hand-picked and random graphs) and one test per error."""
import math
import re
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compiler
from compiler import ParseError, Spec, TensorType, ops
from compiler.ir.graph import Graph
from compiler.ir.parser import parse
from compiler.ir.printer import dump
from runtime.pytree import LEAF
from tests.ir.support import check_parses_or_raises_parse_error, edits, mutate


def assert_round_trip(graph, names=None):
    text = dump(graph, names)
    parsed = parse(text)
    assert dump(parsed, names=None) == dump(graph), "parse(dump(g)) prints differently"
    assert dump(parse(dump(graph))) == dump(graph)
    assert_equivalent(graph, parsed)
    return parsed


def assert_equivalent(graph, parsed):
    """Same inputs, ops, operands, attrs, types, locs, outputs and trees (ids may differ)."""
    assert parsed.name == graph.name
    assert parsed.in_tree == graph.in_tree and parsed.out_tree == graph.out_tree
    ids = dict(zip(graph.inputs, parsed.inputs))
    for old, new in ids.items():
        a, b = graph.node(old), parsed.node(new)
        assert (a.attrs, a.type, a.loc or None) == (b.attrs, b.type, b.loc or None)
    others = [n for n in graph.topo_order() if n not in ids]
    assert len(others) == len(parsed) - len(parsed.inputs)
    for old, new in zip(others, [n for n in parsed.topo_order() if n not in parsed.inputs]):
        a, b = graph.node(old), parsed.node(new)
        assert (a.op, a.type, a.loc or None) == (b.op, b.type, b.loc or None)
        assert tuple(ids[o] for o in a.operands) == b.operands
        assert a.attrs.keys() == b.attrs.keys()
        for key, value in a.attrs.items():
            other = b.attrs[key]
            if isinstance(value, np.ndarray):
                assert other.dtype == value.dtype and other.shape == value.shape and not other.flags.writeable
                if value.dtype.kind == "f":  # bit-exact, except that a nan keeps only its sign, not its payload
                    nan = np.isnan(value)
                    assert np.array_equal(np.isnan(other), nan) and np.array_equal(np.signbit(other), np.signbit(value))
                    value, other = value[~nan], other[~nan]
                assert other.tobytes() == value.tobytes()
            elif isinstance(value, float) and math.isnan(value):
                assert math.isnan(other) and math.copysign(1, value) == math.copysign(1, other)
            else:
                assert other == value and type(other) is type(value)
        ids[old] = new
    assert [ids[o] for o in graph.outputs] == parsed.outputs


def text(s: str) -> str:
    return textwrap.dedent(s).lstrip("\n")


# ---------------------------------------------------------------- round trips
def mlp(params, x):
    h = ops.relu(x @ params["W1"] + params["b1"])
    return ops.mean(ops.square(h @ params["W2"] - 1.0))


def test_spec_example_parses():
    graph = parse(text("""
        graph loss
          in_tree ({'W1': *, 'b1': *}, *, *)
          out_tree *
          %params.W1 = input : f32[784,256] param
          %params.b1 = input : f32[256] param
          %x = input : f32[64,784] data
          %y = input : i32[64] data
          %0 = matmul(%x, %params.W1) : f32[64,256]  # mlp.py:12
          %1 = add(%0, %params.b1) : f32[64,256]  # mlp.py:12
          %2 = full() {dtype='float32', shape=(), value=2.0} : f32[]  # mlp.py:13
          %3 = sum(%1) {axes=(0, 1), keepdims=False} : f32[]  # mlp.py:14
          return %3
        """))
    assert dump(parse(dump(graph))) == dump(graph)
    assert graph.name == "loss" and graph.input_names() == ["params.W1", "params.b1", "x", "y"]
    assert [graph.node(i).attrs["kind"] for i in graph.inputs] == ["param", "param", "data", "data"]
    assert graph.in_tree == ({"W1": LEAF, "b1": LEAF}, LEAF, LEAF) and graph.out_tree is LEAF
    out = graph.node(graph.outputs[0])
    assert (out.op, out.type, out.loc, dict(out.attrs)) == ("sum", TensorType((), "float32"), "mlp.py:14",
                                                             {"axes": (0, 1), "keepdims": False})
    assert graph.node(graph.inputs[0]).loc == ""  # as Graph.add_input leaves it


def test_traced_graphs_round_trip():
    specs = ({"W1": Spec((4, 8)), "b1": Spec((8,)), "W2": Spec((8, 1))}, Spec((16, 4)))
    graph = compiler.trace(mlp, *specs)
    assert_round_trip(graph)
    assert_round_trip(compiler.value_and_grad(graph))
    assert_round_trip(compiler.vjp(graph))


def test_round_trip_evaluates_identically():
    specs = ({"W1": Spec((4, 8)), "b1": Spec((8,)), "W2": Spec((8, 1))}, Spec((16, 4)))
    graph = compiler.value_and_grad(compiler.trace(mlp, *specs))
    rng = np.random.default_rng(1)
    params = {"W1": rng.normal(size=(4, 8)), "b1": rng.normal(size=8), "W2": rng.normal(size=(8, 1))}
    x = rng.normal(size=(16, 4))
    value, grads = compiler.evaluate(graph, params, x)
    value2, grads2 = compiler.evaluate(parse(dump(graph)), params, x)
    assert value == value2 and all(np.array_equal(grads[k], grads2[k]) for k in grads)


def test_repeated_operands_inputs_as_outputs_and_nested_trees():
    def fn(params, batch):
        sq = batch["x"] * batch["x"]
        return {"loss": ops.sum(sq * params[0]), "aux": [batch["x"], (sq, params[1])], "none": None}

    graph = compiler.trace(fn, [Spec(()), Spec((2,), "int32")], {"x": Spec((2, 3)), "n": Spec((3,), "int64")})
    parsed = assert_round_trip(graph)
    assert parsed.out_tree == {"aux": [LEAF, (LEAF, LEAF)], "loss": LEAF, "none": None}
    square = parsed.node(parsed.outputs[1])
    assert square.op == "mul" and square.operands[0] == square.operands[1]


def test_same_output_twice():
    graph = compiler.trace(lambda x: (ops.exp(x), x, x), Spec((2,)))
    graph.set_outputs(graph.outputs + [graph.outputs[0]], (LEAF, LEAF, [LEAF, LEAF]))
    parsed = assert_round_trip(graph)
    assert parsed.outputs[1] == parsed.outputs[2] == parsed.inputs[0] and parsed.outputs[0] == parsed.outputs[3]


def test_constants_round_trip_bit_exactly():
    def fn(x):
        values = [
            np.array([[0.1, np.inf], [np.nan, -0.0]], np.float32),
            np.array([0.1, 1 / 3, 5e-324, -np.inf, np.finfo(np.float64).max], np.float64),
            np.array([np.finfo(np.float32).tiny, np.finfo(np.float32).max, 1e-45, 16777217.0], np.float32),
            np.array([-np.nan, np.nan], np.float32),
            np.array([[1, -2], [2**31 - 1, -(2**31)]], np.int32),
            np.array([2**62, -(2**63)], np.int64),
            np.array([[True], [False]]),
            np.array(2.5, np.float32),
            np.zeros((0, 3), np.float32),
            np.zeros((2, 0), np.int64),
        ]
        return [ops.constant(v) for v in values] + [ops.full((2,), v, "float32") for v in (0.1, -np.inf, np.nan)] \
            + [ops.full((), 3, "int64"), ops.full((1, 1), False), x * 0.1]

    graph = compiler.trace(fn, Spec((2,)))
    parsed = assert_round_trip(graph)
    neg_nan = parsed.node(parsed.outputs[3]).attrs["value"]
    assert np.signbit(neg_nan[0]) and not np.signbit(neg_nan[1])


def test_many_op_families_round_trip():
    def fn(x, idx):
        t = ops.transpose(x, (1, 0)).reshape(3, 2)
        s = ops.softmax(t, axis=1) + ops.log_softmax(t, axis=0)
        p = ops.pad(x, ((0, 1), (1, 0)), constant_values=-np.inf) if hasattr(ops, "pad") else x
        return (ops.concatenate([s, s], axis=0), ops.take(x, idx, axis=1), ops.max(p, axis=0),
                ops.logsumexp(x, axis=1, keepdims=True), x[:, 1:], ops.expand_dims(x, 0), ops.broadcast_to(x, (4, 2, 3)))

    try:
        graph = compiler.trace(fn, Spec((2, 3)), Spec((4,), "int32"))
    except (AttributeError, TypeError) as exc:  # the shape ops' signatures are still settling
        pytest.skip(f"op family API differs: {exc}")
    assert_round_trip(graph)


def test_examples_round_trip():
    from compiler.models import load_model

    for name in ("mlp", "rnn", "lstm", "chain_rule"):
        graph = load_model(f"examples/{name}.py").trace()
        assert_round_trip(graph)
        assert_round_trip(compiler.value_and_grad(graph))


def test_odd_names_and_locations_round_trip():
    graph = Graph("my graph #1")
    graph.capture_locations = False
    x = graph.add_input("0", TensorType((2,), "float32"), "param", loc="  padded")
    y = graph.add_input("an input", TensorType((2,), "float32"), loc="it's \"quoted\"")
    z = graph.add_input("é.λ", TensorType((2,), "float32"))
    a = graph.add_node("add", (x, y), loc="two\nlines\u2028and a separator")
    b = graph.add_node("mul", (a, z), loc="# hash and 'quotes' = fine")
    c = graph.add_node("full", (), {"shape": (2,), "dtype": "float32", "value": 1.0}, loc="'")
    graph.in_tree = {"a": LEAF, "b": [LEAF, LEAF]}
    graph.set_outputs([b, c])
    parsed = assert_round_trip(graph)
    assert parsed.input_names() == ["0", "an input", "é.λ"]
    assert [parsed.node(n).loc for n in sorted(parsed.nx)] == [
        "  padded", "it's \"quoted\"", "", "two\nlines\u2028and a separator", "# hash and 'quotes' = fine", "'"]


def test_name_hints_parse_back():
    graph = compiler.trace(lambda x: ops.sum(ops.exp(x) * x), Spec((3,)))
    hints = {n: "d.x" for n in graph.nx}
    text = dump(graph, hints)
    assert "%d.x = exp(%x)" in text and "%d.x_1 = mul(%d.x, %x)" in text
    assert dump(parse(text)) == dump(graph)
    assert dump(parse(text), hints) == text


def test_lenient_spacing_comments_and_blank_lines():
    graph = parse("# a golden file\n\ngraph   g\nin_tree   (*,)\n  out_tree (*, *)\n"
                  "   # the inputs\n%x=input:f32[2]data\n\n%0 = exp( %x ){}:f32[ 2 ]#note\n"
                  "%1=add(%0,%x)  :  f32[2]  \t\nreturn %1 , %x\n\n# done\n")
    assert dump(graph) == text("""
        graph g
          in_tree (*,)
          out_tree (*, *)
          %x = input : f32[2] data
          %0 = exp(%x) : f32[2]  # note
          %1 = add(%0, %x) : f32[2]
          return %1, %x
        """)
    assert graph.node(graph.outputs[0]).loc is None  # no comment, no location
    assert dump(parse(dump(graph).replace("\n", "\r\n"))) == dump(graph)  # Windows line ends


def test_inputs_may_appear_after_ops_and_quoted_names_match_plain_ones():
    graph = parse(text("""
        graph g
          in_tree (*, *)
          out_tree *
          %'x' = input : f32[2] data
          %0 = exp(%x) : f32[2]
          %y = input : f32[2] data
          %1 = add(%0, %"y") : f32[2]
          return %1
        """))
    assert graph.input_names() == ["x", "y"]


def test_parse_gives_a_graph_that_keeps_building():
    graph = parse("graph g\n in_tree (*,)\n out_tree *\n %x = input : f32[2] data\n return %x\n")
    assert graph.capture_locations and graph.default_loc is None
    node = graph.add_node("exp", (graph.inputs[0],))
    assert graph.node(node).loc == f"test_parser.py:{test_parse_gives_a_graph_that_keeps_building.__code__.co_firstlineno + 3}"


# -------------------------------------------------------- random graphs
_SHAPES = [(), (3,), (1, 3), (2, 1), (2, 3)]  # all broadcast together to (2, 3)
_UNARY = {"float32": ["neg", "exp", "log", "tanh", "sigmoid", "relu", "abs", "sin", "square", "stop_gradient"],
          "float64": ["neg", "sqrt", "cos", "sign", "log1p"], "int32": ["neg", "abs", "square", "relu"]}
_BINARY = {"float32": ["add", "sub", "mul", "div", "pow", "maximum", "minimum"],
           "float64": ["add", "mul", "div", "minimum"], "int32": ["add", "sub", "mul", "maximum"]}
_FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.1, -0.0, 1e-45, 3.4e38]))
_LOCS = st.one_of(st.none(), st.just(""), st.text(max_size=12), st.sampled_from(["m.py:3", "grad exp @ m.py:3"]))


@st.composite
def random_graphs(draw):
    dtype = draw(st.sampled_from(["float32", "float64", "int32"]))
    graph = Graph(draw(st.sampled_from(["g", "<lambda>", "two words"])))
    graph.capture_locations = False
    names = draw(st.lists(st.text(alphabet="ab.0_ -'", min_size=1, max_size=4), min_size=1, max_size=3, unique=True))
    values = [graph.add_input(n, TensorType(draw(st.sampled_from(_SHAPES)), dtype),
                              draw(st.sampled_from(["param", "data"])), loc=draw(_LOCS)) for n in names]
    for _ in range(draw(st.integers(1, 8))):
        loc = draw(_LOCS)
        choice = draw(st.sampled_from(["unary", "binary", "binary", "full", "constant", "where", "cast"]))
        pick = st.sampled_from(values)
        if choice == "unary":
            values.append(graph.add_node(draw(st.sampled_from(_UNARY[dtype])), (draw(pick),), loc=loc))
        elif choice == "binary":
            values.append(graph.add_node(draw(st.sampled_from(_BINARY[dtype])), (draw(pick), draw(pick)), loc=loc))
        elif choice == "full":
            value = draw(_FLOATS) if dtype != "int32" else draw(st.integers(-(2**31), 2**31 - 1))
            with np.errstate(over="ignore"):
                value = float(np.asarray(value).astype(dtype)) if dtype != "int32" else value
            attrs = {"shape": draw(st.sampled_from(_SHAPES)), "dtype": dtype, "value": value}
            values.append(graph.add_node("full", (), attrs, loc=loc))
        elif choice == "constant":
            shape = draw(st.sampled_from(_SHAPES))
            size = int(np.prod(shape))
            elements = draw(st.lists(_FLOATS if dtype != "int32" else st.integers(-(2**31), 2**31 - 1),
                                     min_size=size, max_size=size))
            with np.errstate(over="ignore"):
                array = np.array(elements, dtype="float64" if dtype != "int32" else dtype).astype(dtype).reshape(shape)
            values.append(graph.add_node("constant", (), {"value": array}, loc=loc))
        elif choice == "where":
            a, b = draw(pick), draw(pick)
            cond = graph.add_node(draw(st.sampled_from(["lt", "eq", "ge"])), (a, b), loc=loc)
            values.append(graph.add_node("where", (cond, b, a), loc=loc))
        else:
            cast = graph.add_node("cast", (draw(pick),), {"dtype": "float64"}, loc=loc)
            values.append(graph.add_node("cast", (cast,), {"dtype": dtype}, loc=loc))
    outputs = draw(st.lists(st.sampled_from(values), min_size=1, max_size=4))
    graph.in_tree = draw(st.sampled_from([tuple(LEAF for _ in names), [LEAF] * len(names),
                                          {f"k{i}": LEAF for i in range(len(names))}]))
    out_tree = draw(st.sampled_from([None, [LEAF] * len(outputs), {f"o{i}": LEAF for i in range(len(outputs))}]))
    graph.set_outputs(outputs, out_tree)
    hints = draw(st.one_of(st.none(), st.dictionaries(st.sampled_from(values), st.sampled_from(["d.x", "g", "0", "x y"]))))
    return graph, hints


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graphs())
def test_random_graphs_round_trip_exactly(case):
    graph, hints = case
    compiler.verify(graph)
    assert_round_trip(graph, hints)


# ---------------------------------------------------------------- errors
BASE = text("""
    graph g
      in_tree (*, *)
      out_tree *
      %x = input : f32[3] param
      %y = input : f32[2,3] data
      %0 = mul(%x, %y) : f32[2,3]  # m.py:1
      %1 = sum(%0) {axes=(0, 1), keepdims=False} : f32[]
      return %1
    """)


def replace_line(number: int, new: str) -> str:
    lines = BASE.splitlines()
    lines[number - 1] = new
    return "\n".join(lines) + "\n"


def fails(source: str, line: int, *fragments: str) -> str:
    with pytest.raises(ParseError) as info:
        parse(source)
    message = str(info.value)
    assert message.startswith(f"line {line}: "), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_base_text_parses():
    assert dump(parse(BASE)) == BASE


@pytest.mark.parametrize("cut", [0, 1, 2, 3, 5, 7])
def test_truncated_text(cut):
    source = "".join(BASE.splitlines(keepends=True)[:cut])
    message = fails(source, max(cut, 1), "truncated?")
    assert ("return" in message) == (cut >= 3)


def test_not_a_string():
    with pytest.raises(ParseError, match="IR text must be a str, got bytes"):
        parse(BASE.encode())


def test_missing_return():
    fails(BASE.replace("  return %1\n", "\n\n"), 9, "ends without a `return` line")


def test_header_errors():
    fails("grap g\n", 1, "expected `graph ...`, got 'grap g'")
    fails(replace_line(1, "graph"), 1, "bad graph name ''")
    fails(replace_line(1, "graph two words"), 1, "bad graph name 'two words'")
    fails(replace_line(1, "graph 'unterminated"), 1, "bad graph name")
    fails(replace_line(2, "  out_tree *"), 2, "expected `in_tree ...`")
    fails(replace_line(3, "  %z = input : f32[3] data"), 3, "expected `out_tree ...`")


@pytest.mark.parametrize("tree, problem", [
    ("(*, ", "malformed tree"), ("(*, x)", "malformed tree"), ("(*, 1)", "unexpected 1"), ("", "malformed tree"),
    ("{'b': *, 'a': *}", "dict keys must be in sorted order, as in {'a': *, 'b': *}"),
    ("{*: *, 'a': *}", "dict keys must be strings or numbers"), ("(" * 500 + ")" * 500, "too many nested"),
])
def test_bad_trees(tree, problem):
    fails(replace_line(2, f"  in_tree {tree}"), 2, "bad in_tree", problem)
    fails(replace_line(3, f"  out_tree {tree}"), 3, "bad out_tree", problem)


def test_tree_leaf_counts():
    fails(replace_line(2, "  in_tree (*, *, *)"), 2, "in_tree has 3 leaves but the text defines 2 inputs")
    fails(replace_line(3, "  out_tree (*, *)"), 3, "out_tree has 2 leaves but `return` lists 1 values")


def test_unknown_op_names_the_op():
    fails(replace_line(6, "  %0 = frobnicate(%x, %y) : f32[2,3]"), 6, "unknown op 'frobnicate'")


def test_input_written_as_an_op():
    fails(replace_line(6, "  %0 = input() {kind='data', name='z'} : f32[2,3]"), 6, "an input is written `%name = input")


@pytest.mark.parametrize("type_text, problem", [
    ("f32[2,a]", "bad type: malformed type 'f32[2,a]'"), ("f16[2,3]", "malformed type 'f16[2,3]'"),
    ("float32", "expected a type like f32[64,10], got 'float32'"), ("f32[2,3", "expected a type like f32[64,10]"),
    ("", "expected a type like f32[64,10], got 'nothing'"), ("f32[-2,3]", "malformed type"),
])
def test_bad_type_text(type_text, problem):
    fails(replace_line(6, f"  %0 = mul(%x, %y) : {type_text}"), 6, problem)
    fails(replace_line(4, f"  %x = input : {type_text} param"), 4, "type")


def test_bad_input_kind():
    fails(replace_line(4, "  %x = input : f32[3] weights"), 4, "input kind must be one of param, data, got 'weights'")
    fails(replace_line(4, "  %x = input : f32[3]"), 4, "expected the input kind (param or data)")


def test_duplicate_value_names():
    fails(replace_line(6, "  %x = mul(%x, %y) : f32[2,3]"), 6, "value %x is already defined on line 4")
    fails(replace_line(5, "  %'x' = input : f32[2,3] data"), 5, "value %x is already defined on line 4")
    fails(replace_line(7, "  %0 = sum(%0) {axes=(0, 1), keepdims=False} : f32[]"), 7, "%0 is already defined on line 6")


def test_use_before_definition():
    fails(replace_line(6, "  %0 = mul(%x, %1) : f32[2,3]"), 6, "%1 is not defined (values must be defined before")
    fails(replace_line(6, "  %0 = mul(%x, %0) : f32[2,3]"), 6, "%0 is not defined")  # no cycles in text
    fails(replace_line(8, "  return %2"), 8, "%2 is not defined")
    fails(replace_line(6, "  %0 = mul(%x, %'never') : f32[2,3]"), 6, "%never is not defined")


def test_wrong_arity():
    fails(replace_line(6, "  %0 = mul(%x) : f32[2,3]"), 6, "mul", "takes 2 operand(s), got 1")
    fails(replace_line(6, "  %0 = mul(%x, %y, %y) : f32[2,3]"), 6, "takes 2 operand(s), got 3")
    fails(replace_line(6, "  %0 = mul() : f32[2,3]"), 6, "takes 2 operand(s), got 0")


def test_declared_type_must_match_the_inferred_one():
    fails(replace_line(6, "  %0 = mul(%x, %y) : f32[3,2]"), 6, "mul: declared type f32[3,2] but its operands give f32[2,3]")
    fails(replace_line(6, "  %0 = mul(%x, %y) : f64[2,3]"), 6, "declared type f64[2,3] but its operands give f32[2,3]")
    fails(replace_line(7, "  %1 = sum(%0) {axes=(0, 1), keepdims=True} : f32[]"), 7,
          "sum: declared type f32[] but its operands give f32[1,1]")


def test_operand_shapes_and_dtypes_are_checked():
    fails(replace_line(5, "  %y = input : f32[2,4] data"), 6, "mul at m.py:1", "do not broadcast")
    fails(replace_line(5, "  %y = input : i32[2,3] data"), 6, "operand dtypes differ (float32, int32)")


@pytest.mark.parametrize("attrs, problem", [
    ("axes=(0, 1)", "missing attribute(s) keepdims"),
    ("axes=(0, 1), keepdims=False, fast=True", "unknown attribute(s) fast"),
    ("axes=(0, 1), axes=(0,), keepdims=False", "'axes' is given twice"),
    ("axes=(0, 5), keepdims=False", "out of range"),
    ("axes='ab', keepdims=False", "axes must be a tuple of ints, got 'ab'"),
    ("(0, 1), False", "attributes must be written {name=value, ...}"),
    ("axes=(0, 1), **more", "attributes must be written {name=value, ...}"),
    ("axes=(0, 1), keepdims=False,,", "malformed attributes"),
    ("axes=(0, 1) keepdims=False", "malformed attributes"),
    ("axes=__import__('os').system('echo pwned'), keepdims=False", "is not a literal"),
    ("axes=(0, 1), keepdims=open", "'open' is not a literal"),
    ("axes=(0, 1), keepdims=1 + 1", "'1 + 1' is not a literal"),
    ("axes=(0, 1), keepdims=-True", "is not a literal"),
    ("axes=(0, 1), keepdims=b'x'", "is not a literal"),
    ("axes=(0, 1), keepdims=1j", "is not a literal"),
    ("axes=(0, 1), keepdims={'a': 1}", "is not a literal"),
    ("axes=(0, 1), keepdims=...", "is not a literal"),
    ("axes=(0, 1), keepdims=f'{1}'", "is not a literal"),
    ("axes=(0, 1), keepdims=x.y", "is not a literal"),
    ("axes=graph('nope'), keepdims=False", "graph('nope') refers to no section"),  # bodies: tests/ir/test_bodies.py
    ("axes=(0, 1), keepdims=graph(1)", "attribute keepdims: write a body as graph('name')"),
])
def test_bad_attributes(attrs, problem):
    fails(replace_line(7, f"  %1 = sum(%0) {{{attrs}}} : f32[]"), 7, problem)


def test_attributes_only_evaluate_literals(tmp_path):
    marker = tmp_path / "pwned"
    source = replace_line(7, f"  %1 = sum(%0) {{axes=open({str(marker)!r}, 'w'), keepdims=False}} : f32[]")
    fails(source, 7, "is not a literal")
    assert not marker.exists()


@pytest.mark.parametrize("value, problem", [
    ("array([1.0, 2.0])", "write arrays as array(<nested list>, dtype='float32')"),
    ("array([1.0, 2.0], 'float32')", "write arrays as"),
    ("array([1.0, 2.0], dtype='float32', order='C')", "write arrays as"),
    ("array([1.0, 2.0], dtype='float16')", "array dtype must be one of float32, float64, int32, int64, bool"),
    ("array([1.0, [2.0]], dtype='float32')", "bad float32 array"),
    ("array([[1.0], [2.0, 3.0]], dtype='float32')", "bad float32 array"),
    ("array([1.5, 2], dtype='int32')", "a int32 array cannot hold 1.5"),
    ("array([True, 2], dtype='int32')", "cannot hold True"),
    ("array([1, 0], dtype='bool')", "a bool array cannot hold 1"),
    ("array(['a'], dtype='float32')", "cannot hold 'a'"),
    ("array([2147483648], dtype='int32')", "bad int32 array"),
    ("array([1e39], dtype='float32')", "an array element overflows float32"),
    ("array([1.0], dtype='float32', shape=(2,))", "array data has shape (1,) but shape=(2,)"),
    ("array([], dtype='float32', shape=(-1,))", "array shape must be a tuple of non-negative ints"),
    ("array([], dtype='float32', shape=[0])", "array shape must be a tuple of non-negative ints"),
    ("numpy.array([1.0], dtype='float32')", "is not a literal"),
    ("[1.0, 2.0]", "value must be a numpy array, got list"),
])
def test_bad_arrays(value, problem):
    fails(replace_line(7, f"  %1 = constant() {{value={value}}} : f32[2]"), 7, problem)


def test_array_element_types():
    graph = parse(replace_line(7, "  %1 = constant() {value=array([1, -2.5, inf, -nan], dtype='float64')} : f64[4]"))
    value = graph.node(graph.outputs[0]).attrs["value"]
    assert value.dtype == np.float64 and value[0] == 1.0 and value[2] == np.inf and np.signbit(value[3])


@pytest.mark.parametrize("line_text, problem", [
    ("  %0 = mul(%x, %y) : f32[2,3] garbage", "unexpected text 'garbage' (a location comment starts with '#')"),
    ("  %0 = mul(%x, %y) : f32[2,3]  # 'unterminated", "bad quoted location"),
    ("  %0 = mul(%x, %y) : f32[2,3]  # 'a' 'b'", "bad quoted location"),
    ("  %0 = mul(%x, %y)", "expected ':' before the type, got 'the end of the line'"),
    ("  %0 mul(%x, %y) : f32[2,3]", "expected '=' after the value name"),
    ("  %0 = mul %x, %y : f32[2,3]", "expected '(' after the op name 'mul'"),
    ("  %0 = mul(%x, %y : f32[2,3]", "expected ')' to close the operand list"),
    ("  %0 = mul(%x, %y,) : f32[2,3]", "expected '%' before a value name"),
    ("  %0 = mul(x, y) : f32[2,3]", "expected '%' before a value name, got 'x, y)"),
    ("  %0 = 3mul(%x, %y) : f32[2,3]", "expected an op name, got '3mul"),
    ("  % = mul(%x, %y) : f32[2,3]", "expected a value name after '%'"),
    ("  %'bad\\N{nope}' = mul(%x, %y) : f32[2,3]", "bad quoted value name"),
    ("  %0 = mul(%x, %y) {axes=(0,} : f32[2,3]", "unbalanced brackets in attributes"),
    ("  %0 = mul(%x, %y) {name='} : f32[2,3]", "unterminated string in attributes"),
    ("  @@@", "expected a value definition `%name = op(...) : type` or `return`, got '@@@'"),
    ("  \x00", "expected a value definition"),
    ("  mul(%x, %y)", "expected a value definition"),
    ("  %0 = mul(%x, %y) : f32[2,3]  \x00 # loc", "unexpected text"),
])
def test_garbage(line_text, problem):
    fails(replace_line(6, line_text), 6, problem)


def test_return_errors():
    fails(replace_line(8, "  return"), 8, "`return` lists no values")
    fails(replace_line(8, "  return %1,"), 8, "expected '%' before a value name")
    fails(replace_line(8, "  return %1 %0"), 8, "unexpected text '%0' after the returned values")
    fails(replace_line(8, "  return 1"), 8, "expected '%' before a value name, got '1'")
    fails(BASE + "  %2 = exp(%1) : f32[]\n", 9, "unexpected text after `return`")
    fails(BASE + "  return %1\n", 9, "unexpected text after `return`")
    fails(replace_line(8, "  returns %1"), 8, "expected a value definition")


def test_op_rule_errors_become_parse_errors():
    fails(replace_line(7, "  %1 = full() {dtype='float32', shape=[[1]], value=1.0} : f32[1]"), 7,
          "full", "shape must be a tuple of ints")
    fails(replace_line(7, "  %1 = full() {dtype=3, shape=(), value=1.0} : f32[]"), 7, "unknown dtype 3")
    fails(replace_line(7, "  %1 = cast(%0) {dtype='complex64'} : f32[2,3]"), 7, "unsupported dtype 'complex64'")
    fails(replace_line(7, "  %1 = full() {dtype='float32', shape=(), value='one'} : f32[]"), 7,
          "value must be a Python bool, int or float, got str")


# ------------------------------------------------------------------ fuzzing
_FUZZ_BASE = dump(compiler.value_and_grad(compiler.trace(
    lambda p, x: ops.sum(ops.where(x @ p["W"] > 0, ops.tanh(x @ p["W"]), 0.5)) + ops.sum(ops.constant([[1.0, -np.inf]]) * p["b"]),
    {"W": Spec((3, 2)), "b": Spec((1, 2))}, Spec((4, 3)))))


@settings(max_examples=300, deadline=None)
@given(edits("%=(){}[]:,#'\"\\ \nab01.-_*xf32i64", 3))
def test_mutated_text_parses_or_raises_parse_error(changes):
    check_parses_or_raises_parse_error(mutate(_FUZZ_BASE, changes))
