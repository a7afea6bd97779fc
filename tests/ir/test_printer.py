"""The IR printer: golden text for small graphs, attribute and name formatting, odd graphs."""
import textwrap

import numpy as np
import pytest

import compiler
from compiler import PullbackError, Spec, TensorType, ops
from compiler.ir.graph import Graph
from compiler.ir.printer import dump, format_loc, format_name, format_value
from runtime.pytree import LEAF

F3 = TensorType((3,), "float32")


def golden(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def line(fn, offset: int) -> str:
    """The loc tracing records for the line `offset` lines below `def fn`."""
    return f"test_printer.py:{fn.__code__.co_firstlineno + offset}"


# ------------------------------------------------------------ traced goldens
def mlp(params, x):
    h = x @ params["W1"] + params["b1"]
    return ops.sum(h * 2.0)


def test_mlp_golden():
    graph = compiler.trace(mlp, {"W1": Spec((784, 256)), "b1": Spec((256,))}, Spec((64, 784)))
    l1, l2 = line(mlp, 1), line(mlp, 2)
    assert dump(graph) == golden(f"""
        graph mlp
          in_tree ({{'W1': *, 'b1': *}}, *)
          out_tree *
          %params.W1 = input : f32[784,256] param
          %params.b1 = input : f32[256] param
          %x = input : f32[64,784] data
          %0 = matmul(%x, %params.W1) : f32[64,256]  # {l1}
          %1 = add(%0, %params.b1) : f32[64,256]  # {l1}
          %2 = full() {{dtype='float32', shape=(), value=2.0}} : f32[]  # {l2}
          %3 = mul(%1, %2) : f32[64,256]  # {l2}
          %4 = sum(%3) {{axes=(0, 1), keepdims=False}} : f32[]  # {l2}
          return %4
        """)
    assert str(graph) == dump(graph)


def nested(params, batch):
    a = batch["x"] * batch["x"]
    b = ops.where(a > 1.0, a, 0.0)
    c = ops.cast(batch["n"], "float32") + 1
    return {"loss": ops.sum(b), "aux": [batch["x"], (c, params)]}


def test_nested_trees_repeated_operands_and_inputs_as_outputs():
    graph = compiler.trace(nested, Spec((3,)), {"x": Spec((2, 3)), "n": Spec((3,), "int32")})
    l1, l2, l3, l4 = (line(nested, k) for k in (1, 2, 3, 4))
    assert dump(graph) == golden(f"""
        graph nested
          in_tree (*, {{'n': *, 'x': *}})
          out_tree {{'aux': [*, (*, *)], 'loss': *}}
          %params = input : f32[3] param
          %batch.n = input : i32[3] data
          %batch.x = input : f32[2,3] data
          %0 = mul(%batch.x, %batch.x) : f32[2,3]  # {l1}
          %1 = full() {{dtype='float32', shape=(), value=1.0}} : f32[]  # {l2}
          %2 = gt(%0, %1) : bool[2,3]  # {l2}
          %3 = full() {{dtype='float32', shape=(), value=0.0}} : f32[]  # {l2}
          %4 = where(%2, %0, %3) : f32[2,3]  # {l2}
          %5 = cast(%batch.n) {{dtype='float32'}} : f32[3]  # {l3}
          %6 = full() {{dtype='float32', shape=(), value=1.0}} : f32[]  # {l3}
          %7 = add(%5, %6) : f32[3]  # {l3}
          %8 = sum(%4) {{axes=(0, 1), keepdims=False}} : f32[]  # {l4}
          return %batch.x, %7, %params, %8
        """)


def test_tracing_twice_prints_the_same_text():
    specs = ({"W1": Spec((4, 3)), "b1": Spec((3,))}, Spec((2, 4)))
    assert dump(compiler.trace(mlp, *specs)) == dump(compiler.trace(mlp, *specs))


# ------------------------------------------------------ hand-built goldens
def built(name="g"):
    graph = Graph(name)
    graph.capture_locations = False
    return graph


def test_constants_golden():
    graph = built("consts")
    values = [
        np.array([[0.1, np.inf], [np.nan, -0.0]], np.float32),
        np.array([1e-45, 3.4028235e38, -np.inf, 0.3], np.float32),
        np.array([0.1, 1 / 3, 5e-324], np.float64),
        np.array([[1, -2], [2**31 - 1, -(2**31)]], np.int32),
        np.array([2**40], np.int64),
        np.array([[True], [False]]),
        np.array(2.5, np.float32),
        np.zeros((0, 3), np.float32),
    ]
    ids = [graph.add_node("constant", (), {"value": v}) for v in values]
    graph.set_outputs(ids)
    assert dump(graph) == golden("""
        graph consts
          in_tree ()
          out_tree (*, *, *, *, *, *, *, *)
          %0 = constant() {value=array([[0.1, inf], [nan, -0.0]], dtype='float32')} : f32[2,2]
          %1 = constant() {value=array([1e-45, 3.4028235e+38, -inf, 0.3], dtype='float32')} : f32[4]
          %2 = constant() {value=array([0.1, 0.3333333333333333, 5e-324], dtype='float64')} : f64[3]
          %3 = constant() {value=array([[1, -2], [2147483647, -2147483648]], dtype='int32')} : i32[2,2]
          %4 = constant() {value=array([1099511627776], dtype='int64')} : i64[1]
          %5 = constant() {value=array([[True], [False]], dtype='bool')} : bool[2,1]
          %6 = constant() {value=array(2.5, dtype='float32')} : f32[]
          %7 = constant() {value=array([], dtype='float32', shape=(0, 3))} : f32[0,3]
          return %0, %1, %2, %3, %4, %5, %6, %7
        """)


def test_full_values_and_locations_golden():
    graph = built()
    x = graph.add_input("x", F3, "param", loc="data.py:1")
    a = graph.add_node("full", (), {"value": float("-inf"), "shape": (3,), "dtype": "float32"}, loc="max pool")
    b = graph.add_node("full", (), {"value": 7, "shape": (2, 1), "dtype": "int32"})
    c = graph.add_node("full", (), {"value": True, "shape": (), "dtype": "bool"}, loc="")
    d = graph.add_node("maximum", (x, a), loc="grad maximum @ m.py:3")
    graph.in_tree = (LEAF,)
    graph.set_outputs([d, b, c, x], {"y": LEAF, "z": [LEAF, LEAF], "w": LEAF})
    assert dump(graph) == golden("""
        graph g
          in_tree (*,)
          out_tree {'y': *, 'z': [*, *], 'w': *}
          %x = input : f32[3] param  # data.py:1
          %0 = full() {dtype='float32', shape=(3,), value=-inf} : f32[3]  # max pool
          %1 = full() {dtype='int32', shape=(2, 1), value=7} : i32[2,1]
          %2 = full() {dtype='bool', shape=(), value=True} : bool[]
          %3 = maximum(%x, %0) : f32[3]  # grad maximum @ m.py:3
          return %3, %1, %2, %x
        """)


def test_attributes_are_sorted_whatever_their_insertion_order():
    a, b = built(), built()
    for graph, attrs in ((a, {"value": 1.0, "dtype": "float32", "shape": ()}),
                         (b, {"shape": (), "dtype": "float32", "value": 1.0})):
        graph.set_outputs([graph.add_node("full", (), attrs)])
    assert dump(a) == dump(b)
    assert "{dtype='float32', shape=(), value=1.0}" in dump(a)


# ------------------------------------------------------------ formatting
@pytest.mark.parametrize("value, text", [
    (0, "0"), (-3, "-3"), (np.int64(5), "5"), (True, "True"), (np.bool_(False), "False"), (None, "None"),
    (0.1, "0.1"), (-0.0, "-0.0"), (1e300, "1e+300"), (float("inf"), "inf"), (float("-inf"), "-inf"),
    (float("nan"), "nan"), (-float("nan"), "-nan"), (np.float32(0.5), "0.5"),
    ("float32", "'float32'"), ("it's \"x\"\n", repr("it's \"x\"\n")),
    ((), "()"), ((3,), "(3,)"), ((0, 1), "(0, 1)"), (((1, 2), (3,)), "((1, 2), (3,))"), ([1, 2.5], "[1, 2.5]"),
])
def test_format_value(value, text):
    assert format_value(value) == text


def test_format_value_rejects_other_objects():
    with pytest.raises(PullbackError, match="cannot print attribute value .* of type dict"):
        format_value({"a": 1})
    with pytest.raises(PullbackError, match="cannot print a numpy array of dtype complex64"):
        format_value(np.zeros(2, np.complex64))


def test_float32_elements_are_shortest_and_exact():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, size=20000, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    values = values[~np.isnan(values)]  # only the sign of a nan is kept, not its payload
    text = format_value(values)
    assert "0.1," in format_value(np.array([0.1, 1.0], np.float32))
    parsed = compiler.parse(f"graph g\n in_tree ()\n out_tree *\n %0 = constant() {{value={text}}} : f32[{values.size}]\n"
                            " return %0\n")
    back = parsed.node(parsed.outputs[0]).attrs["value"]
    assert back.dtype == np.float32 and np.array_equal(back.view(np.uint32), values.view(np.uint32))


@pytest.mark.parametrize("loc, text", [
    (None, ""), ("", ""), ("mlp.py:12", "  # mlp.py:12"), ("seed: d(out)/d(out) = 1", "  # seed: d(out)/d(out) = 1"),
    ("a # b", "  # a # b"), ("two\nlines", "  # 'two\\nlines'"), (" padded ", "  # ' padded '"),
    ("'quoted'", "  # \"'quoted'\""), ("tab\there", "  # 'tab\\there'"),
])
def test_format_loc(loc, text):
    assert format_loc(loc) == text


@pytest.mark.parametrize("name, text", [
    ("x", "%x"), ("params.W1", "%params.W1"), ("layers.0.b", "%layers.0.b"), ("0", "%0"), ("ct.0", "%ct.0"),
    ("été", "%été"), ("my x", "%'my x'"), ("a-b", "%'a-b'"), ("", "%''"),
])
def test_format_name(name, text):
    assert format_name(name) == text


# ------------------------------------------------------------------ names
def hinted_graph():
    graph = built()
    x = graph.add_input("x", F3)
    a = graph.add_node("exp", (x,))
    b = graph.add_node("neg", (a,))
    c = graph.add_node("mul", (a, b))
    d = graph.add_node("add", (c, x))
    graph.in_tree = (LEAF,)
    graph.set_outputs([d])
    return graph, x, a, b, c, d


def test_name_hints():
    graph, x, a, b, c, d = hinted_graph()
    text = dump(graph, names={x: "ignored", a: "d.x", b: "d.x", c: "grad of mul!", d: None})
    assert text == golden("""
        graph g
          in_tree (*,)
          out_tree *
          %x = input : f32[3] data
          %d.x = exp(%x) : f32[3]
          %d.x_1 = neg(%d.x) : f32[3]
          %grad_of_mul_ = mul(%d.x, %d.x_1) : f32[3]
          %0 = add(%grad_of_mul_, %x) : f32[3]
          return %0
        """)
    assert dump(graph, names={}) == dump(graph)


def test_hints_and_numbers_never_clash():
    graph, x, a, b, c, d = hinted_graph()
    text = dump(graph, names={a: "1", b: "x"})  # "x" is an input's name; "1" a number
    assert "%1 = exp(%x)" in text and "%x_1 = neg(%1)" in text
    assert "%0 = mul(%1, %x_1)" in text and "%2 = add(%0, %x)" in text


def test_input_named_like_a_number_is_skipped_by_the_numbering():
    graph = built()
    x = graph.add_input("0", F3)
    y = graph.add_input("my input", F3)
    s = graph.add_node("add", (x, y))
    graph.in_tree = (LEAF, LEAF)
    graph.set_outputs([graph.add_node("exp", (s,))])
    assert dump(graph).splitlines()[3:] == [
        "  %0 = input : f32[3] data",
        "  %'my input' = input : f32[3] data",
        "  %1 = add(%0, %'my input') : f32[3]",
        "  %2 = exp(%1) : f32[3]",
        "  return %2",
    ]


@pytest.mark.parametrize("name, header", [
    ("loss", "graph loss"), ("<lambda>", "graph <lambda>"), ("my graph", "graph 'my graph'"),
    ("", "graph ''"), ("'q", "graph \"'q\""), ("#x", "graph '#x'"),
])
def test_graph_names(name, header):
    graph = built(name)
    graph.set_outputs([graph.add_node("full", (), {"shape": (), "dtype": "float32", "value": 0.0})])
    assert dump(graph).splitlines()[0] == header


# ------------------------------------------------------------- odd graphs
def test_unsorted_ids_print_in_topological_order():
    graph, x, a, b, c, d = hinted_graph()
    e = graph.add_node("exp", (x,))
    graph.replace_node(a, operands=(e,))  # now a (id 1) reads e (id 5)
    lines = dump(graph).splitlines()
    assert lines[4:7] == ["  %0 = exp(%x) : f32[3]", "  %1 = exp(%0) : f32[3]", "  %2 = neg(%1) : f32[3]"]


def test_broken_graphs_still_print():
    graph, x, a, b, c, d = hinted_graph()
    graph.replace_node(a, operands=(b,))  # a cycle a -> b -> a: printed in id order
    text = dump(graph)
    assert "%0 = exp(%1) : f32[3]" in text and "%1 = neg(%0) : f32[3]" in text
    graph, x, a, b, c, d = hinted_graph()
    graph.remove_node(d)
    assert dump(graph).endswith("  return %<undefined 4>\n")
    graph.outputs = []
    assert dump(graph).endswith("  return\n")


def test_unprintable_graphs_raise_clear_errors():
    graph, *_ = hinted_graph()
    graph.nx.add_node(50)
    with pytest.raises(PullbackError, match="cannot print graph 'g': %50 carries no op"):
        dump(graph)
    graph, x, a, *_ = hinted_graph()
    graph.inputs.append(a)
    with pytest.raises(PullbackError, match=f"input %{a} is not a named input node"):
        dump(graph)
    graph, *_ = hinted_graph()
    graph.in_tree = (LEAF, object())
    with pytest.raises(PullbackError, match="cannot print graph 'g': in_tree not a treedef node"):
        dump(graph)


def test_odd_input_nodes_print_in_full():
    graph, x, *_ = hinted_graph()
    graph.replace_node(x, attrs={"name": "x", "kind": "weights"})
    assert "  %x = input() {kind='weights', name='x'} : f32[3]\n" in dump(graph)
