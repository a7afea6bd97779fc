"""The generated float matmul (compiler/codegen/matmul.py) against numpy in float64.

Shapes cover every edge of the blocking: 1x1x1, sizes below/at/above the vector width
and the micro-tile, several K blocks and N blocks, batches (broadcast, folded into M or
looped), transposed and strided views of either operand, B packed or read in place.
Accuracy is normwise, as for a BLAS: max |C - C_ref| <= rtol * max(|A| @ |B|).
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import compiler
from compiler import Spec, ops
from compiler.codegen import build, compile as compile_graph
from compiler.codegen import matmul as mm
from compiler.codegen.fused import matmul_parts
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


# ---------------------------------------------------------------- epilogues (matmul fusions)
# Each pattern reads its own weight (so no two products are merged by cse) as w or as a
# transposed view of wt (the backward's g @ W^T: B packed from its columns).
PATTERNS = {
    "bias-relu": lambda x, w, b, acc, h: ops.relu(x @ w + b),
    "bias-tanh": lambda x, w, b, acc, h: ops.tanh(x @ w + b),
    "sigmoid-scaled": lambda x, w, b, acc, h: ops.sigmoid(x @ w) * 0.5 - 1.0,
    "tanh-grad": lambda x, w, b, acc, h: (x @ w) * (1.0 - h * h),
    "relu-grad": lambda x, w, b, acc, h: (x @ w) * ops.cast(h > 0.0, h.dtype),
    "accumulate": lambda x, w, b, acc, h: acc + x @ w,
    "accumulate-tanh": lambda x, w, b, acc, h: ops.tanh((x @ w + acc) + b),
}
ACCUMULATING = ("accumulate", "accumulate-tanh")  # C starts from acc: rounding differs from unfused
EPILOGUE_SHAPES = [(1, 1, 1), (7, 13, 5), (1, 9, 17), (17, 9, 1), (5, 1, 7), (13, 31, 49), (33, 40, 48),
                   (5, 40, 1), (1, 40, 7), (33, 100, 1), (1, 70, 1), (2, 50, 70), (20, 1100, 300)]


def _pattern_graph(m, k, n, dtype, transposed):
    names = list(PATTERNS)

    def all_patterns(x, b, acc, h, *ws):
        return tuple(PATTERNS[p](x, swap(w) if transposed else w, b, acc, h) for p, w in zip(names, ws))

    wshape = (n, k) if transposed else (k, n)
    args = [normal((m, k), dtype, 0), normal((n,), dtype, 1), normal((m, n), dtype, 2), normal((m, n), dtype, 3)]
    args += [normal(wshape, dtype, 10 + i) for i in range(len(names))]
    return compiler.trace(all_patterns, *args, name="patterns"), args


def _tolerance(x, w, h, dtype):
    """Normwise, as check_close: the product's error bound (times the largest factor an
    epilogue multiplies it by, 1 - h^2), plus the epilogue's own few ulps."""
    scale = np.matmul(np.abs(x.astype(np.float64)), np.abs(w.astype(np.float64))).max(initial=0.0)
    factor = max(1.0, float(np.abs(1.0 - h.astype(np.float64) ** 2).max(initial=0.0)))
    return dict(rtol=8 * RTOL[dtype], atol=RTOL[dtype] * scale * factor)


def _without_epilogue(monkeypatch):
    from compiler.pipeline import PIPELINES

    monkeypatch.setitem(PIPELINES, 2, [p for p in PIPELINES[2] if p.name != "epilogue"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transposed", [False, True], ids=["w", "wT"])
def test_epilogues_equal_the_interpreter_and_the_unfused_kernels(dtype, transposed, monkeypatch):
    """Every pattern at every edge shape: masked tiles, M or N = 1 (dot products), one and
    several K and N blocks. The tiles' epilogue is the loop fusion's scalar code on the
    same product, so it is bitwise the unfused result, except where C starts from acc."""
    for m, k, n in EPILOGUE_SHAPES:
        graph, args = _pattern_graph(m, k, n, dtype, transposed)
        optimized = build(graph, 2).graph
        kinds = [node.attrs["kind"] for _, node in optimized.nodes() if node.op == "fusion"]
        assert kinds == ["matmul"] * len(PATTERNS)
        fused = compile_graph(graph, cache=False)(*args)
        expected = compiler.evaluate(graph, *args)
        with monkeypatch.context() as patch:
            _without_epilogue(patch)
            unfused = compile_graph(graph, cache=False)(*args)
        for name, f, u, e, w in zip(PATTERNS, fused, unfused, expected, args[4:], strict=True):
            what = f"{name} at {(m, k, n)}"
            tol = _tolerance(args[0], w.T if transposed else w, args[3], dtype)
            np.testing.assert_allclose(f, e, **tol, err_msg=what)
            if name in ACCUMULATING:
                np.testing.assert_allclose(f, u, **tol, err_msg=what)
            else:
                np.testing.assert_array_equal(f, u, err_msg=what)


@pytest.mark.parametrize("dtype", DTYPES)
def test_epilogues_at_other_vector_widths_and_packing(dtype, monkeypatch):
    monkeypatch.setitem(mm.TUNING, "pack_b_min_m", 0)
    monkeypatch.setattr(mm, "simd", lambda: (32, 16))
    graph, args = _pattern_graph(13, 21, 11, dtype, False)
    expected = compiler.evaluate(graph, *args)
    for f, e, w in zip(compile_graph(graph, cache=False)(*args), expected, args[4:], strict=True):
        np.testing.assert_allclose(f, e, **_tolerance(args[0], w, args[3], dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_epilogue_operands_in_any_layout(dtype):
    """An accumulator that is a transposed view (C starts from a gather), a reversed strided
    slice, a column broadcast along rows; tiles, several K blocks, dot products, a row
    vector computed transposed (C^T = B^T A^T)."""
    def f(x, w, acc_t, h, c):
        return (swap(acc_t) + x @ w) * h[::-2] + c

    for m, k, n in [(13, 21, 11), (20, 1100, 300), (33, 100, 1), (1, 70, 9)]:
        args = [normal((m, k), dtype, 0), normal((k, n), dtype, 1), normal((n, m), dtype, 2),
                normal((2 * m, n), dtype, 3), normal((m, 1), dtype, 4)]
        graph = compiler.trace(f, *args)
        (node,) = [n for _, n in build(graph, 2).graph.nodes() if n.op == "fusion"]
        assert node.attrs["kind"] == "matmul" and matmul_parts(node.attrs["body"]).init is not None
        x, w, acc_t, h, _ = args
        tol = _tolerance(x, w, np.zeros_like(h), dtype)
        tol["atol"] *= float(np.abs(h).max())
        np.testing.assert_allclose(compile_graph(graph, cache=False)(*args), compiler.evaluate(graph, *args),
                                   **tol, err_msg=str((m, k, n)))


def test_epilogue_nan_and_inf_propagate():
    x, w, b = normal((9, 21), "float32", 0), normal((21, 35), "float32", 1), normal((35,), "float32", 2)
    x[2, 3], x[5, 0], w[4, 7] = np.nan, np.inf, -np.inf
    got = run(lambda x, w, b: ops.relu(x @ w + b), x, w, b)
    with np.errstate(invalid="ignore", over="ignore"):
        want = np.maximum(x.astype(np.float64) @ w + b, 0.0)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_epilogues_in_parallel_are_bitwise_the_serial_ones(dtype, monkeypatch):
    from compiler.codegen import parallel

    monkeypatch.setenv(parallel.ENV, "2")
    # rows split (B in place), columns split (B packed from a transposed view), dot products
    shapes = [((96, 300), (300, 200), False), ((64, 256), (256, 256), True), ((2048, 600), (600, 1), False)]
    for (m, k), (_, n), transposed in shapes:
        graph, args = _pattern_graph(m, k, n, dtype, transposed)
        par = compile_graph(graph, cache=False, parallel=True)
        assert "GOMP_parallel" in build(graph, 2).ir_text
        ser = compile_graph(graph, cache=False, parallel=False)
        expected = compiler.evaluate(graph, *args)
        for p, s, e, w in zip(par(*args), ser(*args), expected, args[4:], strict=True):
            assert p.tobytes() == s.tobytes()
            np.testing.assert_allclose(p, e, **_tolerance(args[0], w.T if transposed else w, args[3], dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_epilogues_under_the_naive_switch_and_at_k_0(dtype, monkeypatch):
    """The loop-nest fallback: PULLBACK_NAIVE_MATMUL=1, and K = 0 (the product is zeros)."""
    graph, args = _pattern_graph(7, 13, 5, dtype, True)
    monkeypatch.setenv(mm.NAIVE_ENV, "1")
    assert "mm.uk." not in build(graph, 2).ir_text
    expected = compiler.evaluate(graph, *args)
    for f, e, w in zip(compile_graph(graph, cache=False)(*args), expected, args[4:], strict=True):
        np.testing.assert_allclose(f, e, **_tolerance(args[0], w.T, args[3], dtype))
    monkeypatch.delenv(mm.NAIVE_ENV)
    graph, args = _pattern_graph(4, 0, 3, dtype, False)
    for f, e in zip(compile_graph(graph, cache=False)(*args), compiler.evaluate(graph, *args), strict=True):
        np.testing.assert_allclose(f, e, rtol=4 * np.finfo(dtype).eps, atol=0)  # vecmath's ulps


def test_integer_matmul_fusions_use_the_loop_nest():
    """The pass joins float products only, but the op takes any numeric dtype."""
    from compiler.ops.fusion import fusion

    body = compiler.trace(lambda a, b, c: (a @ b) * 3 - c, Spec((3, 4), "int64"), Spec((4, 5), "int64"),
                          Spec((5,), "int64"))
    a, b, c = (np.arange(12).reshape(3, 4) - 5, np.arange(20).reshape(4, 5) % 7, np.arange(5))
    got = run(lambda a, b, c: fusion(body, a, b, c, kind="matmul"), a, b, c)
    np.testing.assert_array_equal(got, (a @ b) * 3 - c)


# ---------------------------------------------------------------- in place (out aliasing the accumulator)
def _in_place_steps(graph):
    from compiler.codegen.emit import GraphEmitter, ModuleBuilder
    from compiler.pipeline import optimize

    emitter = GraphEmitter(ModuleBuilder("t"), optimize(graph, 2))
    return [s for s in emitter.steps if s.op == "fusion" and s.attrs["kind"] == "matmul" and s.aliased]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mkn,threads", [((7, 13, 5), "1"), ((20, 1100, 300), "1"), ((96, 700, 200), "2"),
                                         ((64, 900, 1), "1")], ids=["small", "k-blocks", "parallel", "gemv"])
def test_accumulating_in_place(dtype, mkn, threads, monkeypatch):
    """A running sum of products whose partial sums die where the next product adds on:
    the planner writes each step over the previous one (the kernel reads acc through
    `out` itself), in the tiled kernel, with several K blocks, in parallel, as dot
    products and in the loop-nest fallback."""
    from compiler.codegen import parallel

    monkeypatch.setenv(parallel.ENV, threads)
    m, k, n = mkn

    def steps(x1, w1, x2, w2, x3, w3, b):
        s = x1 @ w1 + x2 @ w2 + x3 @ w3  # a chain: the 2nd and 3rd products add onto the sum so far
        a = ops.log_softmax(s, axis=1)  # (log_softmax: a kernel of its own, so the sums are workspace)
        y = ops.tanh(a + x2 @ w1 + b)  # C starts from a, then more epilogue work
        return ops.log_softmax(y, axis=1)

    args = [normal(s, dtype, i) for i in range(3) for s in ((m, k), (k, n))] + [normal((n,), dtype, 9)]
    graph = compiler.trace(steps, *args)
    for naive in (False, True):
        if naive:
            monkeypatch.setenv(mm.NAIVE_ENV, "1")
        assert len(_in_place_steps(graph)) == 3
        got = compile_graph(graph, cache=False)(*args)
        np.testing.assert_allclose(got, compiler.evaluate(graph, *args), rtol=8 * RTOL[dtype], atol=4 * k * RTOL[dtype])


# ---------------------------------------------------------------- transposed operands made contiguous
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,cut", [((128, 128), None), ((160, 512), (32, None)), ((37, 19), None),
                                       ((5, 3), None), ((40, 33), (3, 30)), ((16, 17), (1, 16))])
def test_a_transposed_copy_is_exact(dtype, shape, cut):
    # W^T (or a column range of it) copied out: the vector tiles, and the scalar edges
    def f(w):
        t = ops.transpose(w)
        return t if cut is None else t[:, cut[0]:cut[1]]

    w = normal(shape, dtype, 3)
    want = w.T if cut is None else w.T[:, cut[0]:cut[1]]
    np.testing.assert_array_equal(run(f, w), want)


def copies(result):
    return len(re.findall(r'call void @"?k\.copy', result.ir_text))


def rnn_like(w_t_uses):
    def f(h, w):
        g = h
        for _ in range(w_t_uses):
            g = ops.tanh(g @ ops.transpose(w))  # the backward's g @ W^T, once per time step
        return g
    return f


def test_a_transposed_b_read_by_several_matmuls_is_copied_once():
    h, w = normal((16, 48), "float32", 1) * 0.2, normal((48, 48), "float32", 2) * 0.2
    graph = compiler.trace(rnn_like(5), h, w, name="rnn_like")
    result = build(graph, 2)
    assert copies(result) == 1  # one contiguous copy of W^T
    np.testing.assert_allclose(compile_graph(graph, cache=False)(h, w), compiler.evaluate(graph, h, w),
                               rtol=1e-5, atol=1e-6)
    once = build(compiler.trace(rnn_like(1), h, w, name="once"), 2)
    assert copies(once) == 0  # one product packs it itself: no copy


def test_the_copied_operand_lives_until_its_last_matmul():
    # products interleaved with other work that wants workspace: the planner must keep the
    # copy alive across all of them (a reuse would feed later steps garbage)
    def f(x, w, v):
        outs = []
        g = x
        for i in range(6):
            g = ops.tanh(g @ ops.transpose(w) + ops.exp(g * float(i)) @ v)
            outs.append(ops.sum(g))
        return ops.stack(outs)

    args = [normal((8, 24), "float64", 5) * 0.3, normal((24, 24), "float64", 6) * 0.3,
            normal((24, 24), "float64", 7) * 0.3]
    graph = compiler.trace(f, *args, name="interleaved")
    assert copies(build(graph, 2)) == 1
    for opt_level in (0, 2):
        got = compile_graph(graph, opt_level=opt_level, cache=False)(*args)
        np.testing.assert_allclose(got, compiler.evaluate(graph, *args), rtol=1e-12)
