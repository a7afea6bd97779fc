"""The add_n op and the accumulate pass: add trees -> one add_n."""
import numpy as np
import pytest

import compiler
from compiler import Spec, ops
from compiler.errors import ShapeError
from compiler.ops.accumulate import add_n
from compiler.ops.tensor import apply
from compiler.passes import Accumulate, CommonSubexpressionElimination, DeadCodeElimination
from compiler.pipeline import optimize
from tests.gradcheck import check_grad
from tests.passes.support import body, expected, ops_of, run

ACCUMULATE = Accumulate()


# ------------------------------------------------------------------ the op
def test_add_n_sums_left_to_right_without_broadcasting():
    graph = compiler.trace(lambda a, b, c: add_n(a, b, c), Spec((2,)), Spec((2,)), Spec((2,)))
    a, b, c = np.array([1e8, 1.0], np.float32), np.array([-1e8, 2.0], np.float32), np.array([1.0, 3.0], np.float32)
    np.testing.assert_array_equal(compiler.evaluate(graph, a, b, c), (a + b) + c)
    with pytest.raises(ShapeError, match=r"operand 1 is f32\[3\], operand 0 is f32\[2\]"):
        compiler.trace(lambda a, b: add_n([a, b]), Spec((2,)), Spec((3,)))
    with pytest.raises(ShapeError, match=r"operand 1 is f64\[2\]"):  # the IR op does not promote
        compiler.trace(lambda a, b: apply("add_n", a, b), Spec((2,)), Spec((2,), "float64"))


def test_add_n_gradient_reaches_every_operand():
    rng = np.random.default_rng(0)
    check_grad(lambda a, b, c: add_n(a, b * b, c), [rng.normal(size=(2, 3)) for _ in range(3)])


# ---------------------------------------------------------------- the pass
def test_a_chain_of_adds_becomes_one_add_n():
    graph = compiler.trace(lambda a, b, c, d: ((a + b) + c) + d, *[Spec((3,))] * 4)
    assert run(ACCUMULATE, graph)
    assert body(graph) == expected("""
        %a = input : f32[3] param
        %b = input : f32[3] data
        %c = input : f32[3] data
        %d = input : f32[3] data
        %0 = add_n(%a, %b, %c, %d) : f32[3]
        return %0
    """)


def test_balanced_trees_keep_the_leaf_order():
    graph = compiler.trace(lambda a, b, c, d: (a * 2.0 + b) + (c + d * 3.0), *[Spec(())] * 4)
    assert run(ACCUMULATE, graph)
    root = graph.node(graph.outputs[0])
    assert root.op == "add_n" and [graph.node(o).op for o in root.operands] == ["mul", "input", "input", "mul"]


def test_shared_intermediates_broadcasts_and_lone_adds_stay():
    def f(a, b, c, row):
        shared = a + b  # read twice: a leaf of each tree that reads it
        return ((shared + c) * shared, (a + row) + c, a + c)

    graph = compiler.trace(f, Spec((2, 3)), Spec((2, 3)), Spec((2, 3)), Spec((3,)))
    assert not run(ACCUMULATE, graph)
    assert "add_n" not in ops_of(graph)


def test_a_value_read_twice_is_a_leaf():
    graph = compiler.trace(lambda a, b, c: ((a + b) + c) + (a + b), *[Spec(())] * 3)
    run(CommonSubexpressionElimination(), graph)
    assert run(ACCUMULATE, graph)
    assert body(graph) == expected("""
        %a = input : f32[] param
        %b = input : f32[] data
        %c = input : f32[] data
        %0 = add(%a, %b) : f32[]
        %1 = add_n(%0, %c, %0) : f32[]
        return %1
    """)


def test_the_tree_stops_at_a_value_an_output_also_returns():
    graph = compiler.trace(lambda a, b, c, d: (a + b, ((a + b) + c) + d), *[Spec(())] * 4)
    run(CommonSubexpressionElimination(), graph)
    assert run(ACCUMULATE, graph)
    total = graph.node(graph.outputs[1])
    assert total.op == "add_n" and total.operands == (graph.outputs[0], graph.inputs[2], graph.inputs[3])


def test_an_add_n_absorbs_adds_and_add_ns_below_it():
    graph = compiler.trace(lambda a, b, c, d, e: add_n(add_n(a, b) + c, d) + e, *[Spec(())] * 5)
    assert run(ACCUMULATE, graph)
    assert body(graph) == expected("""
        %a = input : f32[] param
        %b = input : f32[] data
        %c = input : f32[] data
        %d = input : f32[] data
        %e = input : f32[] data
        %0 = add_n(%a, %b, %c, %d, %e) : f32[]
        return %0
    """)


def _rnn_loss(params, xs):
    h = ops.zeros((xs.shape[1], params["Wh"].shape[0]))
    for t in range(xs.shape[0]):
        h = ops.tanh(xs[t] @ params["Wx"] + h @ params["Wh"])
    return ops.sum(h)


def test_tied_weight_fan_in_becomes_one_add_n_with_t_operands():
    T = 12
    graph = compiler.trace(_rnn_loss, {"Wx": Spec((3, 4)), "Wh": Spec((4, 4))}, Spec((T, 2, 3)))
    backward = compiler.grad(graph)
    fan_in = [n for _, n in backward.nodes() if n.op == "add" and (n.loc or "").startswith("fan-in of params.Wh")]
    assert len(fan_in) == T - 1
    run(ACCUMULATE, backward)
    run(DeadCodeElimination(), backward)
    grad_wh = backward.node(backward.outputs[0])
    assert grad_wh.op == "add_n" and len(grad_wh.operands) == T
    assert grad_wh.loc == "fan-in of params.Wh"
    assert not [n for _, n in backward.nodes() if n.op == "add" and (n.loc or "").startswith("fan-in of params")]


def test_collapsing_the_adjoint_chains_is_bitwise_exact():
    graph = compiler.trace(_rnn_loss, {"Wx": Spec((3, 4)), "Wh": Spec((4, 4))}, Spec((6, 2, 3)))
    backward = compiler.grad(graph)
    rng = np.random.default_rng(1)
    args = ({"Wx": rng.normal(size=(3, 4)).astype(np.float32), "Wh": rng.normal(size=(4, 4)).astype(np.float32)},
            rng.normal(size=(6, 2, 3)).astype(np.float32))
    before = compiler.evaluate(backward, *args)
    collapsed = backward.copy()
    run(ACCUMULATE, collapsed)
    after = compiler.evaluate(collapsed, *args)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])
    assert ops_of(optimize(backward)).count("add_n") == 2
