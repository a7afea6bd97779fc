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
def test_pieces_available_together_become_one_add_n():
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


def test_pieces_are_summed_in_the_order_they_are_produced():
    # between b, c and the two products lie only constants and inputs: one point, one add_n
    graph = compiler.trace(lambda a, b, c, d: (a * 2.0 + b) + (c + d * 3.0), *[Spec(())] * 4)
    assert run(ACCUMULATE, graph)
    assert body(graph) == expected("""
        %a = input : f32[] param
        %b = input : f32[] data
        %c = input : f32[] data
        %d = input : f32[] data
        %0 = full() {dtype='float32', shape=(), value=2.0} : f32[]
        %1 = mul(%a, %0) : f32[]
        %2 = full() {dtype='float32', shape=(), value=3.0} : f32[]
        %3 = mul(%d, %2) : f32[]
        %4 = add_n(%b, %c, %1, %3) : f32[]
        return %4
    """)


# Pieces p1..p4 produced along a chain h1 -> h2 -> h3, summed in a scrambled tree whose
# sums sit among them (as the adjoint's do). h2 and h3 are needed after p1 and p2, so a
# running sum adds p1 + p2 at the inner sum's place; p3 and p4 come together (nothing in
# between) and share the root's add_n. The last spare sum id is dropped.
RUNNING_BEFORE = """
graph g
  in_tree (*,)
  out_tree *
  %x = input : f32[3] param
  %0 = sin(%x) : f32[3]
  %1 = exp(%0) : f32[3]
  %2 = sin(%0) : f32[3]
  %3 = exp(%2) : f32[3]
  %4 = add(%3, %1) : f32[3]
  %5 = sin(%2) : f32[3]
  %6 = exp(%5) : f32[3]
  %7 = cos(%5) : f32[3]
  %8 = add(%6, %4) : f32[3]
  %9 = add(%7, %8) : f32[3]
  return %9
"""


def test_pieces_produced_apart_become_a_running_sum():
    graph = compiler.parse(RUNNING_BEFORE)
    assert run(ACCUMULATE, graph)
    assert body(graph) == expected("""
        %x = input : f32[3] param
        %0 = sin(%x) : f32[3]
        %1 = exp(%0) : f32[3]
        %2 = sin(%0) : f32[3]
        %3 = exp(%2) : f32[3]
        %4 = add(%1, %3) : f32[3]
        %5 = sin(%2) : f32[3]
        %6 = exp(%5) : f32[3]
        %7 = cos(%5) : f32[3]
        %8 = add_n(%4, %6, %7) : f32[3]
        return %8
    """)
    assert not run(ACCUMULATE, graph)  # a running sum is its own rewrite
    x = np.array([0.3, -1.2, 2.5], np.float32)
    h1 = np.sin(x)
    h2 = np.sin(h1)
    h3 = np.sin(h2)
    pieces = [np.exp(h1), np.exp(h2), np.exp(h3), np.cos(h3)]  # production order, left to right
    np.testing.assert_array_equal(compiler.evaluate(graph, x), ((pieces[0] + pieces[1]) + pieces[2]) + pieces[3])


def test_a_tree_written_after_all_its_pieces_stays_one_add_n():
    # The pieces come apart (h2, h3 are needed after p1, p2), but the only spare sum id
    # comes after p3: an addition there would run after p3 anyway, so p3 joins it.
    def f(x):
        h1 = ops.sin(x)
        p1 = ops.exp(h1)
        h2 = ops.sin(h1)
        p2 = ops.exp(h2)
        p3 = ops.exp(ops.sin(h2))
        return p3 + (p2 + p1)

    graph = compiler.trace(f, Spec((3,)))
    assert run(ACCUMULATE, graph)
    assert body(graph) == expected("""
        %x = input : f32[3] param
        %0 = sin(%x) : f32[3]
        %1 = exp(%0) : f32[3]
        %2 = sin(%0) : f32[3]
        %3 = exp(%2) : f32[3]
        %4 = sin(%2) : f32[3]
        %5 = exp(%4) : f32[3]
        %6 = add_n(%1, %3, %5) : f32[3]
        return %6
    """)


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
        %1 = add_n(%c, %0, %0) : f32[]
        return %1
    """)


def test_the_tree_stops_at_a_value_an_output_also_returns():
    graph = compiler.trace(lambda a, b, c, d: (a + b, ((a + b) + c) + d), *[Spec(())] * 4)
    run(CommonSubexpressionElimination(), graph)
    assert run(ACCUMULATE, graph)
    total = graph.node(graph.outputs[1])
    assert total.op == "add_n" and total.operands == (graph.inputs[2], graph.inputs[3], graph.outputs[0])


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


def test_x_used_by_four_consumers_gets_one_add_n():
    # the four cotangent pieces of x are computed from values that exist at one point
    # (cos(x) only for its own piece), so fusion can make one loop of them
    def f(x):
        return ops.sum(ops.exp(x) + ops.sin(x) + x * 2.0 + ops.tanh(x))

    graph = compiler.grad(compiler.trace(f, Spec((4,))))
    fan_in = [n for _, n in graph.nodes() if (n.loc or "").startswith("fan-in of x")]
    assert [n.op for n in fan_in] == ["add"] * 3
    assert run(ACCUMULATE, graph)
    (total,) = [n for _, n in graph.nodes() if (n.loc or "").startswith("fan-in of x")]
    assert total.op == "add_n" and [graph.node(o).op for o in total.operands] == ["mul"] * 4


def _rnn_loss(params, xs):
    h = ops.zeros((xs.shape[1], params["Wh"].shape[0]))
    for t in range(xs.shape[0]):
        h = ops.tanh(xs[t] @ params["Wx"] + h @ params["Wh"])
    return ops.sum(h)


def test_tied_weight_fan_in_stays_a_running_sum_of_the_step_products():
    """The adjoint adds each step's product as it arrives: already the running sum."""
    T = 12
    graph = compiler.trace(_rnn_loss, {"Wx": Spec((3, 4)), "Wh": Spec((4, 4))}, Spec((T, 2, 3)))
    backward = compiler.grad(graph)
    before = compiler.dump(backward)
    assert not run(ACCUMULATE, backward)
    assert compiler.dump(backward) == before
    for name in ("params.Wh", "params.Wx"):
        chain = [n for n, node in backward.nodes() if node.op == "add" and node.loc == f"fan-in of {name}"]
        assert len(chain) == T - 1
        for previous, current in zip(chain, chain[1:]):
            first, piece = backward.node(current).operands
            assert first == previous and backward.node(piece).op == "matmul" and piece < current
            assert backward.uses(piece) == [(current, 1)]  # each product dies at the next addition


def test_collapsing_the_adjoint_chains_is_bitwise_exact():
    graph = compiler.trace(_rnn_loss, {"Wx": Spec((3, 4)), "Wh": Spec((4, 4))}, Spec((6, 2, 3)))
    backward = compiler.grad(graph)
    rng = np.random.default_rng(1)
    args = ({"Wx": rng.normal(size=(3, 4)).astype(np.float32), "Wh": rng.normal(size=(4, 4)).astype(np.float32)},
            rng.normal(size=(6, 2, 3)).astype(np.float32))
    before = compiler.evaluate(backward, *args)
    after = compiler.evaluate(optimize(backward), *args)
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-5, atol=1e-6)
    scrambled = _scramble_fan_in(backward)
    summed = scrambled.copy()
    assert run(ACCUMULATE, summed)
    after = compiler.evaluate(summed, *args)
    for name in before:  # back to the production order: the adjoint's own order
        np.testing.assert_array_equal(after[name], before[name])


def _scramble_fan_in(graph):
    """Each fan-in chain re-summed right-to-left (pieces reversed) at the chain's own ids."""
    scrambled = graph.copy()
    for name in ("params.Wh", "params.Wx"):
        chain = [n for n, node in scrambled.nodes() if node.op == "add" and node.loc == f"fan-in of {name}"]
        pieces = [scrambled.node(chain[0]).operands[0]] + [scrambled.node(n).operands[1] for n in chain]
        acc = pieces[-1]
        for node_id, piece in zip(chain, reversed(pieces[:-1])):
            scrambled.replace_node(node_id, operands=(acc, piece))
            acc = node_id
    compiler.verify(scrambled)
    return scrambled


def test_a_running_sum_keeps_fewer_pieces_alive_than_one_add_n():
    from compiler.codegen.emit import GraphEmitter, ModuleBuilder
    from compiler.passes.accumulate import collect_tree

    T = 8
    graph = compiler.trace(_rnn_loss, {"Wx": Spec((3, 16)), "Wh": Spec((16, 16))}, Spec((T, 2, 3)))
    backward = compiler.grad(graph)
    collapsed = backward.copy()  # what the pass did before: one add_n of all T products
    outputs = set(collapsed.outputs)
    for root in collapsed.outputs:
        leaves, inner = collect_tree(collapsed, root, outputs)
        collapsed.replace_node(root, op="add_n", operands=tuple(leaves))
        for node_id in inner:
            collapsed.nx.remove_node(node_id)
    summed = _scramble_fan_in(backward)
    run(ACCUMULATE, summed)

    def workspace(g):
        return GraphEmitter(ModuleBuilder("w"), g, in_place=False).workspace_bytes

    # the Wh products are 1 KiB each: all T live at the end of the add_n form, at most three
    # Wh-sized values (the partial sum, the next product, the new sum) in the running sum
    assert workspace(summed) <= workspace(collapsed) - (T - 4) * 1024
