"""Algebraic simplification: one golden before/after test per rule, and the IEEE promise:
every rewrite but the two documented ones gives bitwise the same values on nan, +-inf and
signed zeros."""
import numpy as np
import pytest

import compiler
from compiler import Spec, ops
from compiler.ops.tensor import apply
from compiler.passes import AlgebraicSimplification, DeadCodeElimination
from compiler.passes.simplify import RULES
from tests.passes.support import body, expected, ops_of, run, simplified

SIMPLIFY = AlgebraicSimplification()


def test_multiplicative_identities_and_negation():
    graph = simplified(lambda x: (x * 1.0, 1.0 * x, x * -1.0, x / 1.0, x / -1.0), Spec((3,)))
    assert body(graph) == expected("""
        %x = input : f32[3] param
        %0 = neg(%x) : f32[3]
        %1 = neg(%x) : f32[3]
        return %x, %x, %0, %x, %1
    """)


def test_only_exact_additive_identities():
    # x + 0.0 turns -0.0 into +0.0, and x - (-0.0) likewise: both stay.
    graph = simplified(lambda x, n: (x + -0.0, -0.0 + x, x + 0.0, x - 0.0, x - -0.0, n + 0, n - 0),
                       Spec((3,)), Spec((3,), "int32"))
    assert body(graph) == expected("""
        %x = input : f32[3] param
        %n = input : i32[3] data
        %0 = full() {dtype='float32', shape=(), value=0.0} : f32[]
        %1 = add(%x, %0) : f32[3]
        %2 = full() {dtype='float32', shape=(), value=-0.0} : f32[]
        %3 = sub(%x, %2) : f32[3]
        return %x, %x, %1, %x, %3, %n, %n
    """)


def test_double_negation_and_subtracting_a_negation():
    graph = simplified(lambda x, y: (-(-x), x - (-y)), Spec(()), Spec(()))
    assert body(graph) == expected("""
        %x = input : f32[] param
        %y = input : f32[] data
        %0 = add(%x, %y) : f32[]
        return %x, %0
    """)


def test_small_integer_powers():
    graph = simplified(lambda x: (x ** 2.0, x ** 1.0, x ** 0.5, x ** ops.full((2, 3), 2.0)), Spec((3,)))
    assert body(graph) == expected("""
        %x = input : f32[3] param
        %0 = full() {dtype='float32', shape=(), value=0.5} : f32[]
        %1 = pow(%x, %0) : f32[3]
        %2 = full() {dtype='float32', shape=(2, 3), value=2.0} : f32[2,3]
        %3 = pow(%x, %2) : f32[2,3]
        %4 = square(%x) : f32[3]
        return %4, %x, %1, %3
    """)


def test_log_of_exp_but_not_the_unsafe_ones():
    graph = simplified(lambda x: (ops.log(ops.exp(x)), ops.exp(ops.log(x)), x * 0.0, x - x), Spec((3,)))
    assert body(graph) == expected("""
        %x = input : f32[3] param
        %0 = log(%x) : f32[3]
        %1 = exp(%0) : f32[3]
        %2 = full() {dtype='float32', shape=(), value=0.0} : f32[]
        %3 = mul(%x, %2) : f32[3]
        %4 = sub(%x, %x) : f32[3]
        return %x, %1, %3, %4
    """)


def test_transposes_compose():
    graph = simplified(lambda x: (ops.transpose(ops.transpose(x, (1, 2, 0)), (2, 0, 1)),
                                  ops.transpose(ops.transpose(x, (1, 0, 2)), (0, 2, 1))), Spec((2, 3, 4)))
    assert body(graph) == expected("""
        %x = input : f32[2,3,4] param
        %0 = transpose(%x) {perm=(1, 2, 0)} : f32[3,4,2]
        return %x, %0
    """)


def test_reshape_chains_become_one_reshape():
    graph = simplified(lambda x: (ops.reshape(ops.reshape(x, (6, 4)), (4, 6)),
                                  ops.reshape(ops.reshape(x, (24,)), (2, 3, 4)),
                                  ops.squeeze(ops.expand_dims(x, 0), 0),
                                  ops.expand_dims(ops.reshape(x, (6, 4)), 1)), Spec((2, 3, 4)))
    assert body(graph) == expected("""
        %x = input : f32[2,3,4] param
        %0 = reshape(%x) {shape=(4, 6)} : f32[4,6]
        %1 = reshape(%x) {shape=(6, 1, 4)} : f32[6,1,4]
        return %0, %x, %x, %1
    """)


def test_broadcasts_compose_and_identity_casts_vanish():
    graph = simplified(lambda x: (ops.broadcast_to(ops.broadcast_to(x, (2, 3)), (4, 2, 3)),
                                  apply("broadcast_to", x, shape=(3,)), apply("cast", x, dtype="float32")),
                       Spec((3,)))
    assert body(graph) == expected("""
        %x = input : f32[3] param
        %0 = broadcast_to(%x) {shape=(4, 2, 3)} : f32[4,2,3]
        return %0, %x, %x
    """)


def test_sum_of_a_broadcast_reads_the_small_tensor():
    def f(x, s):
        return (ops.sum(ops.broadcast_to(x, (4, 2, 3)), axis=(0, 2)),
                ops.sum(ops.broadcast_to(s, (5, 3)), axis=0),
                ops.sum(ops.broadcast_to(x, (4, 2, 3)), axis=(0, 1), keepdims=True))

    graph = compiler.trace(f, Spec((2, 1)), Spec(()))
    args = (np.array([[0.5], [-2.0]], np.float32), np.float32(0.75))
    before = compiler.evaluate(graph, *args)
    run(SIMPLIFY, graph)
    run(DeadCodeElimination(), graph)
    assert body(graph) == expected("""
        %x = input : f32[2,1] param
        %s = input : f32[] data
        %0 = full() {dtype='float32', shape=(), value=12.0} : f32[]
        %1 = mul(%x, %0) : f32[2,1]
        %2 = reshape(%1) {shape=(2,)} : f32[2]
        %3 = full() {dtype='float32', shape=(), value=5.0} : f32[]
        %4 = mul(%s, %3) : f32[]
        %5 = broadcast_to(%4) {shape=(3,)} : f32[3]
        %6 = sum(%x) {axes=(0,), keepdims=True} : f32[1,1]
        %7 = full() {dtype='float32', shape=(), value=4.0} : f32[]
        %8 = mul(%6, %7) : f32[1,1]
        %9 = broadcast_to(%8) {shape=(1, 1, 3)} : f32[1,1,3]
        return %2, %5, %9
    """)
    for got, want in zip(compiler.evaluate(graph, *args), before):
        np.testing.assert_array_equal(got, want)  # these small sums happen to round the same


def test_sum_of_an_empty_broadcast_is_left_alone():
    # 0 copies of inf sum to 0, but inf * 0 is nan.
    graph = simplified(lambda s: ops.sum(ops.broadcast_to(s, (0, 3)), axis=0), Spec(()))
    assert "broadcast_to" in body(graph)


def test_selects_with_equal_branches_or_a_constant_condition():
    graph = simplified(lambda x, c: (ops.where(c, x, x), ops.where(ops.full((), True), x, x * 2.0),
                                     ops.where(ops.full((3,), False), x * 2.0, x)),
                       Spec((3,)), Spec((3,), "bool"))
    assert body(graph) == expected("""
        %x = input : f32[3] param
        %c = input : bool[3] data
        return %x, %x, %x
    """)


def test_broadcast_constants_become_scalars():
    graph = simplified(lambda x: (x * ops.full((3,), 2.0), ops.maximum(x, ops.zeros((2, 3))),
                                  x * ops.ones((2, 3))), Spec((2, 3)))
    assert body(graph) == expected("""
        %x = input : f32[2,3] param
        %0 = full() {dtype='float32', shape=(), value=2.0} : f32[]
        %1 = mul(%x, %0) : f32[2,3]
        %2 = full() {dtype='float32', shape=(), value=0.0} : f32[]
        %3 = maximum(%x, %2) : f32[2,3]
        return %1, %3, %x
    """)


def test_rewritten_nodes_are_simplified_again():
    # -(x * -1) -> -(-x) -> x, and a chain of four transposes collapses in one run.
    graph = simplified(lambda x: (-(x * -1.0), x.T.T.T.T), Spec((2, 3)))
    assert body(graph) == expected("""
        %x = input : f32[2,3] param
        return %x, %x
    """)


def test_new_nodes_keep_the_source_location():
    graph = compiler.trace(lambda x: x ** 2.0, Spec(()))
    loc = graph.node(graph.outputs[0]).loc
    run(SIMPLIFY, graph)
    assert graph.node(graph.outputs[0]).op == "square" and graph.node(graph.outputs[0]).loc == loc


def test_zero_pads_tiling_one_axis_become_a_concatenate():
    # The slice VJP's shape: slabs [0, 2), [2, 4) and [5, 8) of axis 1, summed by a chain of
    # adds; the gap [4, 5) becomes zeros, and each piece gets + 0.0 (-0.0 + 0.0 is +0.0).
    def f(a, b, c):
        return (ops.pad(a, ((0, 0), (0, 6))) + ops.pad(b, ((0, 0), (5, 0)))) + ops.pad(c, ((0, 0), (2, 4)))

    graph = simplified(f, Spec((3, 2)), Spec((3, 3)), Spec((3, 2)))
    assert body(graph) == expected("""
        %a = input : f32[3,2] param
        %b = input : f32[3,3] data
        %c = input : f32[3,2] data
        %0 = full() {dtype='float32', shape=(), value=0.0} : f32[]
        %1 = add(%a, %0) : f32[3,2]
        %2 = add(%c, %0) : f32[3,2]
        %3 = full() {dtype='float32', shape=(3, 1), value=0.0} : f32[3,1]
        %4 = add(%b, %0) : f32[3,3]
        %5 = concatenate(%1, %2, %3, %4) {axis=1} : f32[3,8]
        return %5
    """)


def test_integer_add_n_of_zero_pads_needs_no_plus_zero():
    # An empty operand pads to all zeros and drops out.
    graph = simplified(lambda a, b: apply("add_n", ops.pad(a, (1, 0)), ops.pad(b, (0, 2)), ops.pad(a[:0], (0, 3))),
                       Spec((2,), "int32"), Spec((1,), "int32"))
    assert body(graph) == expected("""
        %a = input : i32[2] data
        %b = input : i32[1] data
        %0 = concatenate(%b, %a) {axis=0} : i32[3]
        return %0
    """)


def _pad(x, low, high, interior=None, value=0.0):
    return apply("pad", x, low=low, high=high, interior=interior or (0,) * len(low), value=value)


PADS_LEFT_ALONE = {
    "overlapping slabs": lambda a, b: _pad(a, (0, 0), (0, 2)) + _pad(b, (0, 1), (0, 1)),
    "slabs of two axes": lambda a, b: _pad(a, (0, 0), (1, 2)) + _pad(b, (1, 2), (0, 0)),
    "interior padding": lambda a, b: _pad(a, (0, 0), (0, 1), (0, 1)) + _pad(b[:, :1], (0, 3), (0, 0)),
    "a fill of 1.0": lambda a, b: _pad(a, (0, 0), (0, 2), value=1.0) + _pad(b, (0, 2), (0, 0)),
    "a fill of -0.0": lambda a, b: _pad(a, (0, 0), (0, 2), value=-0.0) + _pad(b, (0, 2), (0, 0)),
    "a leaf that is no pad": lambda a, b: apply("add_n", _pad(a, (0, 0), (0, 2)), _pad(b, (0, 2), (0, 0)),
                                                ops.zeros((1, 4))),
    "a broadcasting add": lambda a, b: _pad(a[:, :1], (0, 0), (0, 3)) + _pad(b[:1, :1], (0, 0), (3, 0)),
}


@pytest.mark.parametrize("name", sorted(PADS_LEFT_ALONE))
def test_sums_of_pads_that_do_not_tile_one_axis_are_left_alone(name):
    graph = compiler.trace(PADS_LEFT_ALONE[name], Spec((1, 2)), Spec((1, 2)))
    before = body(graph)
    assert not run(SIMPLIFY, graph)
    assert body(graph) == before


def test_only_the_root_of_an_add_tree_is_rewritten():
    # The inner add is read twice, so it is a leaf of the outer tree: that is not a pad.
    def f(a, b, c):
        inner = ops.pad(a, (0, 2)) + ops.pad(b, (1, 1))
        return inner + ops.pad(c, (2, 0)), inner

    graph = simplified(f, Spec((1,)), Spec((1,)), Spec((1,)))
    assert body(graph).count("concatenate") == 1 and body(graph).count("pad") == 1


def test_slicing_gradients_concatenate_and_keep_their_values():
    # The LSTM's shape: gates cut from one pre-activation, their cotangents padded back.
    def f(z):
        return ops.sum(ops.sigmoid(z[:, :2]) * ops.tanh(z[:, 2:4])) + ops.sum(ops.exp(z[:, 5:]))

    graph = compiler.grad(compiler.trace(f, Spec((3, 8), "float64")))
    z = np.random.default_rng(0).standard_normal((3, 8))
    z[0, 1] = -0.0
    want = compiler.evaluate(graph, z)
    for level in (1, 2):
        optimized = compiler.optimize(graph, opt_level=level)
        assert "pad" not in ops_of(optimized) and "concatenate" in ops_of(optimized)
        got = compiler.evaluate(optimized, z)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


SPECIALS = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.5, -2.5, 3e38], np.float32)

EXACT_REWRITES = {
    "x*1": lambda x, y: x * 1.0,
    "x*-1": lambda x, y: x * -1.0,
    "x/1": lambda x, y: x / 1.0,
    "x/-1": lambda x, y: x / -1.0,
    "x+(-0)": lambda x, y: x + -0.0,
    "x-0": lambda x, y: x - 0.0,
    "--x": lambda x, y: -(-x),
    "x-(-y)": lambda x, y: x - (-y),
    "x**1": lambda x, y: x ** 1.0,
    "x**2": lambda x, y: x ** 2.0,
    "where(c,x,x)": lambda x, y: ops.where(x > y, x, x),
    "transpose2": lambda x, y: ops.reshape(x, (2, 4)).T.T,
    "reshape2": lambda x, y: ops.reshape(ops.reshape(x, (2, 4)), (8,)),
    "scalar full": lambda x, y: ops.maximum(x, ops.full((8,), -1.0)),
    "sum of pads": lambda x, y: ops.pad(x[:3], (0, 5)) + ops.pad(y[4:], (4, 0)),  # x[1] is -0.0
    "add_n of one pad": lambda x, y: apply("add_n", ops.pad(x[:5], (3, 0))),  # nothing adds 0.0 to -0.0
}


@pytest.mark.parametrize("name", sorted(EXACT_REWRITES))
def test_rewrites_are_bitwise_exact_on_special_values(name):
    graph = compiler.trace(EXACT_REWRITES[name], Spec((8,)), Spec((8,)))
    y = SPECIALS[::-1].copy()
    before = compiler.evaluate(graph, SPECIALS, y)
    assert run(SIMPLIFY, graph), f"{name} did not fire"
    after = compiler.evaluate(graph, SPECIALS, y)
    np.testing.assert_array_equal(after, before)  # nan matches nan
    np.testing.assert_array_equal(np.signbit(after[~np.isnan(after)]), np.signbit(before[~np.isnan(before)]))


def test_every_rule_is_a_function_in_the_table():
    assert all(callable(rule) for rules in RULES.values() for rule in rules)
