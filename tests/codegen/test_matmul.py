"""The generated float matmul (compiler/codegen/matmul.py) against numpy in float64.

Shapes cover every edge of the blocking: 1x1x1, sizes below/at/above the vector width
and the micro-tile, several K blocks and N blocks, batches (broadcast, folded into M or
looped), transposed and strided views of either operand, B packed or read in place.
Accuracy is normwise, as for a BLAS: max |C - C_ref| <= rtol * max(|A| @ |B|).
"""
from __future__ import annotations

import numpy as np
import pytest

import compiler
from compiler import Spec, ops
from compiler.codegen import build, compile as compile_graph
from compiler.codegen import matmul as mm
from compiler.ops.tensor import apply

RTOL = {"float32": 1e-5, "float64": 1e-12}
DTYPES = ["float32", "float64"]


def normal(shape, dtype, seed):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def check_close(actual, a, b, dtype):
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ref = np.matmul(a64, b64)
    assert actual.shape == ref.shape and actual.dtype == np.dtype(dtype)
    scale = np.matmul(np.abs(a64), np.abs(b64)).max(initial=0.0)
    err = np.abs(actual - ref).max(initial=0.0)
    assert err <= RTOL[dtype] * max(scale, np.finfo(dtype).tiny), (err, scale)


def run(fn, *args, opt_level=2):
    graph = compiler.trace(fn, *args, name=getattr(fn, "__name__", "f"))
    return compile_graph(graph, opt_level=opt_level, cache=False)(*args)


def swap(x):
    return ops.swapaxes(x, -1, -2)


# (m, k, n): tiny, odd edges, around vector widths / micro-tiles, K and N blocking
SHAPES = [(1, 1, 1), (7, 13, 5), (2, 3, 4), (1, 9, 17), (17, 9, 1), (5, 1, 7), (3, 2, 33),
          (8, 16, 16), (12, 32, 32), (13, 31, 49), (16, 17, 15), (25, 8, 65), (33, 40, 48),
          (5, 40, 1), (1, 40, 7), (33, 100, 1), (1, 70, 1), (6, 37, 2), (2, 50, 70)]  # vector results


@pytest.mark.parametrize("dtype", DTYPES)
def test_shapes_and_transposed_views(dtype):
    """Every shape as a @ b, a^T-view @ b, a @ b^T-view and a^T @ b^T, in one graph."""
    args = []
    for i, (m, k, n) in enumerate(SHAPES):
        args += [normal((m, k), dtype, i), normal((k, n), dtype, 100 + i),
                 normal((k, m), dtype, 200 + i), normal((n, k), dtype, 300 + i)]

    def products(*xs):
        outs = []
        for j in range(0, len(xs), 4):
            a, b, at, bt = xs[j:j + 4]
            outs += [a @ b, swap(at) @ b, a @ swap(bt), swap(at) @ swap(bt)]
        return tuple(outs)

    results = run(products, *args)
    for j in range(len(SHAPES)):
        a, b, at, bt = args[4 * j:4 * j + 4]
        for r, (x, y) in zip(results[4 * j:4 * j + 4], [(a, b), (at.T, b), (a, bt.T), (at.T, bt.T)]):
            check_close(r, x, y, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_benchmark_shapes(dtype):
    """The MLP's forward and backward products, at full size."""
    x, w1, w2, w3 = (normal((64, 784), dtype, 0), normal((784, 256), dtype, 1), normal((256, 256), dtype, 2),
                     normal((256, 10), dtype, 3))
    g = normal((64, 256), dtype, 4)

    def mlp(x, w1, w2, w3, g):
        return x @ w1, g @ w2, g @ w3, swap(x) @ g, g @ swap(w1)

    r = run(mlp, x, w1, w2, w3, g)
    for actual, (a, b) in zip(r, [(x, w1), (g, w2), (g, w3), (x.T, g), (g, w1.T)]):
        check_close(actual, a, b, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_several_k_and_n_blocks(dtype):
    """K and N large enough for several cache blocks (first block stores, the rest add)."""
    a, b, bt = normal((20, 1100), dtype, 0), normal((1100, 900), dtype, 1), normal((900, 1100), dtype, 2)
    p = mm.plan(mm.Problem(dtype, 20, 1100, 900, 1100, 1, 900, 1, 900))
    assert p.kc < 1100 and p.nc < 900  # the shapes do exercise the blocking
    r1, r2 = run(lambda a, b, bt: (a @ b, a @ swap(bt)), a, b, bt)
    check_close(r1, a, b, dtype)
    check_close(r2, a, bt.T, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_and_broadcast(dtype):
    a3, b2 = normal((3, 10, 20), dtype, 0), normal((20, 18), dtype, 1)  # B shared: folded into M
    a2, b3 = normal((10, 20), dtype, 2), normal((4, 20, 18), dtype, 3)  # A shared: batch loop
    a4, b4 = normal((2, 1, 5, 7), dtype, 4), normal((3, 7, 33), dtype, 5)  # both broadcast
    at3 = normal((3, 20, 10), dtype, 6)  # transposed batched A
    bt3 = normal((3, 18, 20), dtype, 7)  # transposed batched B
    v3 = normal((3, 20, 1), dtype, 8)  # batched vectors

    def batched(a3, b2, a2, b3, a4, b4, at3, bt3, v3):
        return (a3 @ b2, a2 @ b3, a4 @ b4, swap(at3) @ b2, a3 @ swap(bt3), swap(at3) @ swap(bt3),
                a3[:, ::2] @ b2, ops.transpose(a3, (1, 0, 2))[1:] @ b2, a3 @ v3, swap(v3) @ b2,
                a3 @ b2[:, :1], swap(at3) @ v3)

    r = run(batched, a3, b2, a2, b3, a4, b4, at3, bt3, v3)
    at = np.swapaxes(at3, -1, -2)
    bt = np.swapaxes(bt3, -1, -2)
    expected = [(a3, b2), (a2, b3), (a4, b4), (at, b2), (a3, bt), (at, bt), (a3[:, ::2], b2),
                (np.transpose(a3, (1, 0, 2))[1:], b2), (a3, v3), (np.swapaxes(v3, -1, -2), b2),
                (a3, b2[:, :1]), (at, v3)]
    for actual, (x, y) in zip(r, expected, strict=True):
        check_close(actual, x, y, dtype)


def test_vector_results_take_the_better_orientation():
    layout = compiler.codegen.loops.Layout
    # x @ w with w (K, 1): dot products along A's contiguous rows
    spec = mm.describe(layout((33, 100), (100, 1)), layout((100, 1), (1, 1)), (33, 1), "float32")
    assert mm.plan(spec.problem).gemv and not spec.swapped
    # a row vector @ W^T: C^T = W @ x^T, dot products again
    spec = mm.describe(layout((1, 100), (100, 1)), layout((100, 7), (1, 100)), (1, 7), "float32")
    assert spec.swapped and mm.plan(spec.problem).gemv
    # X^T @ g with g (M, 1): vectors run along X^T's contiguous columns
    spec = mm.describe(layout((30, 20), (1, 30)), layout((20, 1), (1, 1)), (30, 1), "float32")
    assert spec.swapped and spec.problem.n == 30 and spec.problem.b_cs == 1


def test_batch_folded_into_rows():
    layout = lambda shape: compiler.codegen.loops.Layout.contiguous(shape)  # noqa: E731
    folded = mm.describe(layout((3, 10, 20)), layout((20, 18)), (3, 10, 18), "float32")
    assert folded.batch == () and folded.problem.m == 30
    looped = mm.describe(layout((10, 20)), layout((4, 20, 18)), (4, 10, 18), "float32")
    assert looped.batch == (4,) and looped.problem.m == 10


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_operands(dtype):
    """Neither stride unit (slices with steps): the general packing path and strided broadcasts."""
    x, y = normal((30, 40), dtype, 0), normal((40, 50), dtype, 1)

    def strided(x, y):
        return x[::2, ::2] @ y[::2, ::3], x[::-1, 1:] @ y[1:, ::-1], swap(y[:, ::2])[::3] @ y[:, 3:]

    r = run(strided, x, y)
    for actual, (a, b) in zip(r, [(x[::2, ::2], y[::2, ::3]), (x[::-1, 1:], y[1:, ::-1]),
                                  (y[:, ::2].T[::3], y[:, 3:])]):
        check_close(actual, a, b, dtype)


@pytest.mark.parametrize("pack_min_m", [0, 10**9])
def test_b_packed_or_in_place(monkeypatch, pack_min_m):
    monkeypatch.setitem(mm.TUNING, "pack_b_min_m", pack_min_m)
    for dtype in DTYPES:
        a, b = normal((37, 45), dtype, 0), normal((45, 70), dtype, 1)
        check_close(run(lambda a, b: a @ b, a, b), a, b, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_propagate(dtype):
    a, b = normal((9, 21), dtype, 0), normal((21, 35), dtype, 1)
    a[2, 3] = np.nan
    a[5, 0] = np.inf
    b[4, 7] = -np.inf
    b[6, :] = 0.0
    a[7, 6] = np.inf  # inf * 0 = nan
    r = run(lambda a, b: (a @ b, swap(b) @ swap(a)), a, b)
    with np.errstate(invalid="ignore", over="ignore"):
        ref = np.matmul(a.astype(np.float64), b.astype(np.float64))
    for actual, expected in [(r[0], ref), (r[1], ref.T)]:
        np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
        np.testing.assert_array_equal(np.isposinf(actual), np.isposinf(expected))
        np.testing.assert_array_equal(np.isneginf(actual), np.isneginf(expected))
        finite = np.isfinite(expected)
        np.testing.assert_allclose(actual[finite], expected[finite], rtol=1e-4, atol=1e-4)


def test_empty_and_zero_contraction():
    def f(a, b, c, d):
        return a @ b, c @ d

    a, b = np.ones((3, 0), np.float32), np.ones((0, 4), np.float32)
    c, d = np.ones((0, 5), np.float64), np.ones((5, 2), np.float64)
    r = run(f, a, b, c, d)
    np.testing.assert_array_equal(r[0], np.zeros((3, 4), np.float32))
    assert r[1].shape == (0, 2)


def test_opt_level_0():
    a, b = normal((11, 19), "float32", 0), normal((19, 40), "float32", 1)
    check_close(run(lambda a, b: a @ swap(swap(b)), a, b, opt_level=0), a, b, "float32")


def test_ir_uses_vector_fma_and_naive_switch(monkeypatch):
    graph = compiler.trace(lambda a, b: a @ b, Spec((16, 32), "float32"), Spec((32, 48), "float32"))
    assert "llvm.fma.v" in build(graph, 2).ir_text
    monkeypatch.setenv(mm.NAIVE_ENV, "1")
    text = build(graph, 2).ir_text
    assert "llvm.fma.v" not in text and "mm.uk." not in text
    a, b = normal((16, 32), "float32", 0), normal((32, 48), "float32", 1)
    check_close(compile_graph(graph, cache=False)(a, b), a, b, "float32")


def test_integer_matmul_keeps_the_loop():
    a = np.arange(12, dtype=np.int32).reshape(3, 4)
    b = np.arange(20, dtype=np.int32).reshape(4, 5) - 7
    np.testing.assert_array_equal(run(lambda a, b: (a @ b, apply("matmul", a, swap(swap(b)))), a, b)[0], a @ b)


def test_backward_products():
    """value_and_grad of a linear layer: the backward's g @ W^T and X^T @ g run through here."""
    x, w = normal((24, 40), "float32", 0), normal((40, 36), "float32", 1)

    def loss(w, x):
        return ops.sum(ops.tanh(x @ w))

    graph = compiler.value_and_grad(compiler.trace(loss, w, x))
    value, grad = compile_graph(graph, cache=False)(w, x)
    expected_value, expected_grad = compiler.evaluate(graph, w, x)
    np.testing.assert_allclose(value, expected_value, rtol=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("simd", [(16, 16), (32, 16)], ids=["sse-width", "avx2-width"])
def test_other_vector_widths(monkeypatch, simd):
    """The generator at other hosts' widths (LLVM legalizes the vectors here): tiles, edges,
    the in-register transpose at 2, 4 and 8 lanes."""
    monkeypatch.setattr(mm, "simd", lambda: simd)
    for dtype in DTYPES:
        a, b, bt, at = (normal((13, 21), dtype, 0), normal((21, 11), dtype, 1), normal((11, 21), dtype, 2),
                        normal((21, 13), dtype, 3))
        r = run(lambda a, b, bt, at: (a @ b, a @ swap(bt), swap(at)[:, 1:] @ b[1:]), a, b, bt, at)
        for actual, (x, y) in zip(r, [(a, b), (a, bt.T), (at.T[:, 1:], b[1:])]):
            check_close(actual, x, y, dtype)
