"""The verifier: one test per invariant, each checking the message names the node, op and problem."""
import re

import numpy as np
import pytest

import compiler
from compiler import Spec, TensorType, VerifyError, ops, verify
from compiler.ir.graph import Graph, Node
from runtime.pytree import LEAF

F3 = TensorType((3,), "float32")


def small_graph():
    """x, y inputs; %2 = exp(x); %3 = add(%2, y); output %3."""
    graph = Graph("small")
    graph.capture_locations = False
    x = graph.add_input("x", F3, "param")
    y = graph.add_input("y", F3)
    e = graph.add_node("exp", (x,), loc="model.py:7")
    s = graph.add_node("add", (e, y), loc="model.py:8")
    graph.in_tree = (LEAF, LEAF)
    graph.set_outputs([s])
    return graph, x, y, e, s


def rejects(graph, *fragments):
    with pytest.raises(VerifyError) as info:
        verify(graph)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_sound_graphs_pass():
    graph, *_ = small_graph()
    assert verify(graph) is None
    traced = compiler.trace(lambda p, x: ops.sum(ops.tanh(x @ p["W"]) * 2.0), {"W": Spec((4, 2))}, Spec((5, 4)))
    assert verify(traced) is None
    assert verify(compiler.trace(lambda x: (x, x * x), Spec((2,)))) is None  # outputs may be inputs, repeated operands


def test_node_without_data():
    graph, *_ = small_graph()
    graph.nx.add_node(99)
    rejects(graph, "%99", "carries no op", "dangling")


def test_type_must_be_a_tensor_type():
    graph, x, y, e, s = small_graph()
    graph.replace_node(e, type="f32[3]")
    rejects(graph, f"%{e} = exp (model.py:7)", "type is not a TensorType")


def test_dangling_operand():
    graph, x, y, e, s = small_graph()
    graph.nx.nodes[s]["node"] = Node("add", (e, 42), F3, {}, "model.py:8")
    rejects(graph, f"%{s} = add (model.py:8)", "operand %42 is not defined")


def test_edges_must_match_operands():
    graph, x, y, e, s = small_graph()
    graph.nx.add_edge(x, s, key=2)  # a third edge into a binary op
    rejects(graph, f"%{s} = add", "operand edges", "disagree with operands")
    graph, x, y, e, s = small_graph()
    graph.nx.remove_edge(y, s, key=1)
    rejects(graph, f"%{s} = add", "disagree")


def test_cycle():
    graph, x, y, e, s = small_graph()
    f = graph.add_node("exp", (e,))
    graph.replace_node(e, operands=(f,))  # e -> f -> e
    message = rejects(graph, "graph 'small' has a cycle")
    assert re.search(rf"%{e} -> %{f} -> %{e}|%{f} -> %{e} -> %{f}", message), message


def test_self_loop_cycle():
    graph, x, y, e, s = small_graph()
    graph.replace_node(e, operands=(e,))
    rejects(graph, "has a cycle", f"%{e} -> %{e}")


def test_unknown_op():
    graph, x, y, e, s = small_graph()
    graph.replace_node(e, op="frobnicate")
    rejects(graph, f"%{e} = frobnicate (model.py:7)", "unknown op 'frobnicate'")


def test_wrong_arity():
    graph, x, y, e, s = small_graph()
    graph.replace_node(e, operands=(x, y))
    rejects(graph, f"%{e} = exp", "takes 1 operand(s), got 2")
    graph, x, y, e, s = small_graph()
    graph.replace_node(s, operands=(e,))
    rejects(graph, f"%{s} = add", "takes 2 operand(s), got 1")


def test_variadic_op_needs_an_operand():
    graph, x, y, e, s = small_graph()
    graph.replace_node(s, op="concatenate", operands=(), attrs={"axis": 0})
    rejects(graph, f"%{s} = concatenate", "needs at least one operand, got 0")


def test_missing_attribute():
    graph, x, y, e, s = small_graph()
    c = graph.add_node("cast", (e,), {"dtype": "float64"})
    graph.replace_node(c, attrs={})
    rejects(graph, f"%{c} = cast", "missing attribute(s) dtype")


def test_unknown_attribute():
    graph, x, y, e, s = small_graph()
    graph.replace_node(e, attrs={"fast": True})
    rejects(graph, f"%{e} = exp", "unknown attribute(s) fast")


def test_shape_mismatch():
    graph, x, y, e, s = small_graph()
    graph.replace_node(s, type=TensorType((4,), "float32"))
    rejects(graph, f"%{s} = add (model.py:8)", "declared type f32[4] but its operands give f32[3]")


def test_declared_dtype_mismatch():
    graph, x, y, e, s = small_graph()
    graph.replace_node(e, type=TensorType((3,), "float64"))
    rejects(graph, f"%{e} = exp", "declared type f64[3] but its operands give f32[3]")


def test_operand_dtypes_differ():
    graph, x, y, e, s = small_graph()
    c = graph.add_node("cast", (y,), {"dtype": "float64"})
    graph.replace_node(s, operands=(e, c))
    rejects(graph, f"%{s} = add", "operand dtypes differ (float32, float64); cast first")


def test_operands_do_not_broadcast():
    graph, x, y, e, s = small_graph()
    z = graph.add_input("z", TensorType((4,), "float32"))
    graph.in_tree = (LEAF, LEAF, LEAF)
    graph.replace_node(s, operands=(e, z))
    rejects(graph, f"%{s} = add", "shapes (3,) and (4,) do not broadcast")


def test_bad_attribute_value():
    graph, x, y, e, s = small_graph()
    k = graph.add_node("full", (), {"shape": (3,), "dtype": "float32", "value": 1.0})
    graph.replace_node(k, attrs={"shape": (3,), "dtype": "float32", "value": "one"})
    rejects(graph, f"%{k} = full", "value must be a Python bool, int or float, got str")


def test_constant_value_must_be_an_array():
    graph, x, y, e, s = small_graph()
    k = graph.add_node("constant", (), {"value": np.ones(3, np.float32)})
    graph.replace_node(k, attrs={"value": [1.0, 1.0, 1.0]})
    rejects(graph, f"%{k} = constant", "value must be a numpy array, got list")


def test_input_missing_from_input_list():
    graph, x, y, e, s = small_graph()
    graph.inputs.remove(y)
    rejects(graph, f"%{y} = input", "input node is missing from the graph's input list")


def test_input_list_entry_is_not_an_input():
    graph, x, y, e, s = small_graph()
    graph.inputs.append(e)
    rejects(graph, f"graph input %{e} is not an input node")
    graph, *_ = small_graph()
    graph.inputs.append(77)
    rejects(graph, "graph input %77 is not an input node")


def test_input_kind():
    graph, x, y, e, s = small_graph()
    graph.replace_node(x, attrs={"name": "x", "kind": "weights"})
    rejects(graph, "input 'x': kind must be one of ('param', 'data'), got 'weights'")


def test_duplicate_input_names():
    graph, x, y, e, s = small_graph()
    graph.replace_node(y, attrs={"name": "x", "kind": "data"})
    rejects(graph, "duplicate input name 'x'")


def test_no_outputs():
    graph, *_ = small_graph()
    graph.outputs = []
    rejects(graph, "graph 'small' has no outputs")


def test_undefined_output():
    graph, *_ = small_graph()
    graph.outputs = [123]
    rejects(graph, "graph output %123 is not defined in the graph")


def test_in_tree_leaf_count():
    graph, *_ = small_graph()
    graph.in_tree = (LEAF, LEAF, LEAF)
    rejects(graph, "in_tree has 3 leaves but the graph has 2 inputs")


def test_out_tree_leaf_count():
    graph, x, y, e, s = small_graph()
    graph.outputs = [s, e]
    rejects(graph, "out_tree has 1 leaves but the graph has 2 outputs")


def test_first_problem_in_topological_order_is_reported():
    graph, x, y, e, s = small_graph()
    graph.replace_node(e, op="frobnicate")
    graph.replace_node(s, type=TensorType((4,), "float32"))
    rejects(graph, "unknown op 'frobnicate'")


# ------------------------------------------------------------------ bodies
def implicit_graph():
    """%3 = fixed_point(x, x) with body 'outer', whose own fixed_point holds the body '<lambda>'."""
    from compiler.ops.implicit import fixed_point

    def outer(z, x):
        return 0.5 * ops.tanh(fixed_point(lambda v, x: 0.5 * ops.sin(v) + x, z, x)) + x

    graph = compiler.trace(lambda x: fixed_point(outer, x, x), Spec((3,), "float64"))
    (op,) = [n for n, node in graph.nodes() if node.op == "fixed_point"]
    outer_body = graph.node(op).attrs["body"]
    (inner_op,) = [n for n, node in outer_body.nodes() if node.op == "fixed_point"]
    return graph, op, outer_body, inner_op, outer_body.node(inner_op).attrs["body"]


def test_sound_bodies_pass():
    graph, *_ = implicit_graph()
    assert verify(graph) is None
    assert verify(compiler.grad(compiler.trace(lambda x: ops.sum(ops.exp(x)), Spec((2,))))) is None


def test_errors_in_a_body_name_the_op_and_the_body():
    graph, op, body, inner_op, inner = implicit_graph()
    (tanh,) = [n for n, node in body.nodes() if node.op == "tanh"]
    body.replace_node(tanh, type=TensorType((3,), "float32"))
    message = rejects(graph, f"%{op} = fixed_point (test_verify.py:", "): body 'outer': ",
                      f"%{tanh} = tanh (test_verify.py:", "declared type f32[3] but its operands give f64[3]")
    assert message.startswith(f"%{op} = fixed_point")


def test_errors_in_a_nested_body_name_every_level():
    graph, op, body, inner_op, inner = implicit_graph()
    inner.outputs = []
    message = rejects(graph, "body 'outer': ", f"%{inner_op} = fixed_point", "body '<lambda>': ",
                      "graph '<lambda>' has no outputs")
    assert message.index("body 'outer'") < message.index("body '<lambda>'")
    graph, op, body, inner_op, inner = implicit_graph()
    inner.nx.add_node(99)
    rejects(graph, "body 'outer'", "body '<lambda>'", "%99: node carries no op")


def test_a_broken_body_is_reported_before_its_op_rule_runs():
    graph, op, body, *_ = implicit_graph()
    body.outputs = [12345]  # the op's shape rule would choke on this body
    rejects(graph, f"%{op} = fixed_point", "body 'outer'", "graph output %12345 is not defined")


def test_a_body_may_not_contain_itself():
    graph, op, body, inner_op, inner = implicit_graph()
    body.replace_node(inner_op, attrs={**body.node(inner_op).attrs, "body": body})
    rejects(graph, f"%{inner_op} = fixed_point", "a body may not contain itself: 'outer' -> 'outer'")
    graph, op, body, inner_op, inner = implicit_graph()
    inner.add_node("fixed_point", inner.inputs, {"body": body, "tol": 0.1, "max_iter": 2})
    rejects(graph, "a body may not contain itself: 'outer' -> '<lambda>' -> 'outer'")
    graph, op, body, *_ = implicit_graph()
    body.add_node("fixed_point", body.inputs[:1], {"body": graph, "tol": 0.1, "max_iter": 2})
    rejects(graph, "a body may not contain itself: '<lambda>' -> 'outer' -> '<lambda>'")


def test_a_shared_body_is_verified_once(monkeypatch):
    import compiler.ir.verify as verify_module

    graph, op, body, *_ = implicit_graph()
    for _ in range(3):
        graph.add_node("fixed_point", (op, graph.inputs[0]), graph.node(op).attrs)
    calls = []
    real = verify_module._verify
    monkeypatch.setattr(verify_module, "_verify", lambda g, *rest: (calls.append(g.name), real(g, *rest))[1])
    verify(graph)
    assert sorted(calls) == ["<lambda>", "<lambda>", "outer"]  # the graph itself, outer once, its body once
