"""The stack-products pass: a sum of thin products -> one product over stacked operands."""
from collections import Counter

import numpy as np
import pytest

import compiler
from compiler import Spec, ops
from compiler.codegen import compile as compile_graph
from compiler.passes import DeadCodeElimination, StackProducts
from compiler.passes import stack_products
from tests.gradcheck import check_grad
from tests.passes.support import body, expected, run

STACK = StackProducts()


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """The graphs here are tiny: let any block stack (the size rule has its own test)."""
    monkeypatch.setattr(stack_products, "MIN_BLOCK_FLOPS", 0)


def _sum_of_products(n: int):
    """f(hs, gs) = sum_i hs[i]^T @ gs[i], written as the adjoint writes weight gradients."""
    def f(hs, gs):
        total = ops.transpose(hs[0]) @ gs[0]
        for h, g in zip(hs[1:], gs[1:]):
            total = total + ops.transpose(h) @ g
        return total
    return f


def _traced(n: int, k: int = 3, m: int = 2, width: int = 5, dtype: str = "float32"):
    specs = ([Spec((k, m), dtype)] * n, [Spec((k, width), dtype)] * n)
    return compiler.trace(_sum_of_products(n), *specs)


def _args(n: int, k: int = 3, m: int = 2, width: int = 5, dtype: str = "float32", seed: int = 0):
    rng = np.random.default_rng(seed)
    return ([rng.normal(size=(k, m)).astype(dtype) for _ in range(n)],
            [rng.normal(size=(k, width)).astype(dtype) for _ in range(n)])


def test_four_transposed_products_become_one_stacked_product():
    graph = _traced(4)
    assert run(STACK, graph)
    run(DeadCodeElimination(), graph)
    assert body(graph) == expected("""
        %hs.0 = input : f32[3,2] param
        %hs.1 = input : f32[3,2] param
        %hs.2 = input : f32[3,2] param
        %hs.3 = input : f32[3,2] param
        %gs.0 = input : f32[3,5] data
        %gs.1 = input : f32[3,5] data
        %gs.2 = input : f32[3,5] data
        %gs.3 = input : f32[3,5] data
        %0 = concatenate(%hs.0, %hs.1, %hs.2, %hs.3) {axis=0} : f32[12,2]
        %1 = transpose(%0) {perm=(1, 0)} : f32[2,12]
        %2 = concatenate(%gs.0, %gs.1, %gs.2, %gs.3) {axis=0} : f32[12,5]
        %3 = matmul(%1, %2) : f32[2,5]
        return %3
    """)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_stacked_sum_equals_the_sum_of_products(dtype):
    graph = _traced(9, dtype=dtype)
    args = _args(9, dtype=dtype)
    want = sum(h.T.astype(np.float64) @ g.astype(np.float64) for h, g in zip(*args))
    stacked = graph.copy()
    run(STACK, stacked)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(compiler.evaluate(stacked, *args), want, rtol=tol, atol=tol)
    np.testing.assert_allclose(compile_graph(graph, 2, cache=False)(*args), want, rtol=tol, atol=tol)


def test_gradients_through_the_optimized_sum():
    rng = np.random.default_rng(1)
    hs = [rng.normal(size=(3, 2)) for _ in range(5)]
    gs = [rng.normal(size=(3, 4)) for _ in range(5)]
    f = _sum_of_products(5)
    check_grad(lambda *xs: ops.sum(ops.tanh(f(list(xs[:5]), list(xs[5:])))), hs + gs)


def test_blocks_are_bounded_by_depth(monkeypatch):
    monkeypatch.setattr(stack_products, "BLOCK_K", 12)  # four pieces of depth 3 per block
    graph = _traced(10)
    args = _args(10)
    want = compiler.evaluate(graph, *args)
    assert run(STACK, graph)
    run(DeadCodeElimination(), graph)
    products = [n for _, n in graph.nodes() if n.op == "matmul"]
    # pieces 1-4 and 5-8 stacked; 9 and 10 are too few for a block and stay products
    assert sorted(graph.type(p.operands[1]).shape[0] for p in products) == [3, 3, 12, 12]
    np.testing.assert_allclose(compiler.evaluate(graph, *args), want, rtol=1e-5, atol=1e-6)


def test_small_blocks_stay_products(monkeypatch):
    monkeypatch.setattr(stack_products, "MIN_BLOCK_FLOPS", 2_000_000)
    assert not run(STACK, _traced(8, k=16, m=64, width=64))  # 2*64*64*128 = 1.0 MFLOP
    assert run(STACK, _traced(16, k=16, m=64, width=64))  # 2*64*64*256 = 2.1 MFLOP


def test_what_stays_alone():
    # fewer than MIN_PIECES products
    graph = _traced(stack_products.MIN_PIECES - 1)
    assert not run(STACK, graph)
    # a deep contraction gains nothing from stacking
    graph = _traced(6, k=stack_products.PIECE_K + 1)
    assert not run(STACK, graph)
    # a product some other op also reads must stay as it is
    def shared(hs, gs):
        products = [ops.transpose(h) @ g for h, g in zip(hs, gs)]
        total = products[0]
        for p in products[1:]:
            total = total + p
        return total, ops.tanh(products[2])
    graph = compiler.trace(shared, [Spec((3, 2))] * 5, [Spec((3, 5))] * 5)
    assert run(STACK, graph)
    run(DeadCodeElimination(), graph)
    stacked = [n for _, n in graph.nodes() if n.op == "matmul" and graph.type(n.operands[1]).shape[0] == 12]
    assert len(stacked) == 1  # the other four
    assert Counter(n.op for _, n in graph.nodes())["matmul"] == 2


def test_untransposed_and_zero_operands_are_stacked_as_they_are():
    def f(a, bs):
        zero = ops.zeros((2, 3))  # h_0 of an RNN: a fill, stacked as a fill of the transposed shape
        total = zero @ bs[0]
        for x, b in zip(a, bs[1:]):
            total = total + ops.transpose(x) @ b
        return total
    graph = compiler.trace(f, [Spec((3, 2))] * 4, [Spec((3, 5))] * 5)
    args = ([np.ones((3, 2), np.float32) * i for i in range(4)], [np.ones((3, 5), np.float32)] * 5)
    want = compiler.evaluate(graph, *args)
    assert run(STACK, graph)
    run(DeadCodeElimination(), graph)
    ops_after = Counter(n.op for _, n in graph.nodes())
    assert ops_after["matmul"] == 1 and ops_after["full"] == 1
    full = next(n for _, n in graph.nodes() if n.op == "full")
    assert full.type.shape == (3, 2)
    np.testing.assert_allclose(compiler.evaluate(graph, *args), want)

    def plain(a, bs):  # operands that are not transposes: stacked along the contraction directly
        total = a[0] @ bs[0]
        for x, b in zip(a[1:], bs[1:]):
            total = total + x @ b
        return total
    graph = compiler.trace(plain, [Spec((2, 3))] * 4, [Spec((3, 5))] * 4)
    assert run(STACK, graph)
    run(DeadCodeElimination(), graph)
    concats = [n for _, n in graph.nodes() if n.op == "concatenate"]
    assert sorted(n.attrs["axis"] for n in concats) == [0, 1]


def test_the_rest_of_the_sum_keeps_its_other_values():
    def f(hs, gs, c):
        total = c
        for h, g in zip(hs, gs):
            total = total + ops.transpose(h) @ g
        return total * 2.0
    graph = compiler.trace(f, [Spec((3, 2))] * 5, [Spec((3, 5))] * 5, Spec((2, 5)))
    args = (*_args(5), np.full((2, 5), 7.0, np.float32))
    want = compiler.evaluate(graph, *args)
    assert run(STACK, graph)
    run(DeadCodeElimination(), graph)
    counts = Counter(n.op for _, n in graph.nodes())
    assert counts["matmul"] == 1 and counts["add"] == 1
    np.testing.assert_allclose(compiler.evaluate(graph, *args), want, rtol=1e-5)
