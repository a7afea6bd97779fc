"""The verifier: one test per invariant, each checking the message names the node, op and problem.

Every test runs twice: on a graph broken straight after it was built, and on one that was
verified sound first, so verify() kept what it worked out (Graph.derived, Node.checked)
and must still see each change."""
import copy
import pickle
import re
import sys

import networkx as nx
import numpy as np
import pytest

import compiler
from compiler import Spec, TensorType, VerifyError, ops, verify
from compiler.ir.graph import Graph, Node
from compiler.ir.state import RevisedMultiDiGraph
from runtime.pytree import LEAF

F3 = TensorType((3,), "float32")
VERIFY_FIRST = False


@pytest.fixture(autouse=True, params=["fresh", "verified first"])
def verify_first(request, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "VERIFY_FIRST", request.param == "verified first")


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
    if VERIFY_FIRST:
        verify(graph)
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


# ------------------------------------------------------------------ what verify keeps
def test_an_operand_changing_type_reruns_its_users_rules():
    graph, x, y, e, s = small_graph()
    # %e becomes a sound f64 value; %s itself is untouched, but its rule now fails
    graph.replace_node(e, op="cast", operands=(x,), attrs={"dtype": "float64"}, type=TensorType((3,), "float64"))
    rejects(graph, f"%{s} = add (model.py:8)", "operand dtypes differ (float64, float32); cast first")


def test_an_equal_type_object_is_as_good_as_the_same_one():
    graph, x, y, e, s = small_graph()
    graph.replace_node(e, type=TensorType((3,), "float32"))  # a new node and type object, same meaning
    assert verify(graph) is None


def count_node_passes(monkeypatch):
    import compiler.ir.soundness as soundness

    calls = []
    real = soundness._nodes_sound
    monkeypatch.setattr(soundness, "_nodes_sound", lambda *args: (calls.append(1), real(*args))[1])
    return calls


@pytest.mark.parametrize("change", ["add_edge", "remove_edge", "swap_edge_keys", "node_data", "replace_node",
                                    "add_node", "nx_add_node", "remove_node"])
def test_the_kept_result_is_dropped_when_the_graph_changes(monkeypatch, change):
    graph, x, y, e, s = small_graph()
    calls = count_node_passes(monkeypatch)
    verify(graph)
    verify(graph)
    assert len(calls) == (0 if VERIFY_FIRST else 1)  # the second call, at least, reused the first
    if change == "add_edge":
        graph.nx.add_edge(x, s, key=2)
    elif change == "remove_edge":
        graph.nx.remove_edge(y, s, key=1)
    elif change == "swap_edge_keys":
        graph.nx.remove_edges_from([(e, s, 0), (y, s, 1)])
        graph.nx.add_edges_from([(e, s, 1), (y, s, 0)])
    elif change == "node_data":
        graph.nx.nodes[s]["node"] = Node("add", (e, e), TensorType((4,), "float32"), {}, "model.py:8")
    elif change == "replace_node":
        graph.replace_node(s, type=TensorType((4,), "float32"))
    elif change == "add_node":
        graph.add_node("exp", (s,), type=TensorType((4,), "float32"))
    elif change == "nx_add_node":
        graph.nx.add_node(99)
    else:
        graph.nx.remove_node(e)
    with pytest.raises(VerifyError):
        verify(graph)
    assert len(calls) >= (1 if VERIFY_FIRST else 2)


def test_list_and_tree_changes_are_checked_every_time():
    graph, x, y, e, s = small_graph()
    verify(graph)
    graph.outputs.append(e)
    rejects(graph, "out_tree has 1 leaves but the graph has 2 outputs")
    graph.outputs.pop()
    graph.inputs.reverse()
    verify(graph)  # still sound: order of the input list is not an invariant
    graph.inputs.pop()
    rejects(graph, "input node is missing from the graph's input list")


def test_graphs_with_mutable_attributes_are_not_kept():
    graph = compiler.trace(lambda x: x + ops.constant(np.ones(3, np.float32)), Spec((3,)))
    verify(graph)
    assert graph.derived.get("verify") is None  # an array can change in place
    plain = compiler.trace(lambda x: ops.exp(x) * 2.0, Spec((3,)))
    verify(plain)
    assert plain.derived.get("verify") is not None


def test_a_new_op_registry_is_noticed(monkeypatch):
    from compiler.ops import registry

    graph, x, y, e, s = small_graph()
    verify(graph)
    monkeypatch.delitem(registry._REGISTRY, "exp")
    rejects(graph, f"%{e} = exp", "unknown op 'exp'")


def test_node_attributes_are_read_only():
    graph, x, y, e, s = small_graph()
    c = graph.add_node("cast", (e,), {"dtype": "float64"})
    attrs = graph.node(c).attrs
    for change in (lambda: attrs.__setitem__("dtype", "int32"), lambda: attrs.update(dtype="int32"),
                   lambda: attrs.pop("dtype"), attrs.clear, lambda: attrs.setdefault("x", 1)):
        with pytest.raises(TypeError, match="read-only"):
            change()
    assert attrs == {"dtype": "float64"} and isinstance(attrs, dict)
    graph.replace_node(c, attrs={**attrs, "dtype": "float32"})  # the way to change them
    assert graph.node(c).attrs == {"dtype": "float32"}


def test_graphs_survive_pickle_and_deepcopy():
    graph, x, y, e, s = small_graph()
    verify(graph)
    for clone in (pickle.loads(pickle.dumps(graph)), copy.deepcopy(graph)):
        assert verify(clone) is None
        assert clone.node(s).checked is None or clone.node(s).checked[1] is clone.node(e).type
        assert str(clone) == str(graph)
        clone.nx.add_edge(x, s, key=2)
        rejects(clone, "disagree with operands")


def test_sparse_and_unusual_ids_are_verified_and_kept():
    graph, x, y, e, s = small_graph()
    far = graph.add_node("exp", (s,))
    graph.nx = nx.MultiDiGraph(nx.relabel_nodes(graph.nx, {far: 10**9}))  # a plain networkx graph: never kept
    graph.set_outputs([10**9])
    assert verify(graph) is None and graph.derived.get("verify") is None
    graph.nx = RevisedMultiDiGraph(graph.nx)
    assert verify(graph) is None and graph.derived.get("verify") is not None
    graph.nx.nodes[10**9]["node"] = Node("exp", (e, y), F3, {}, None)
    rejects(graph, "operand edges", "disagree")
