"""The vectorized conv2d and max-pool kernels (compiler/codegen/conv*.py) against the interpreter.

Cases cover the op samples (tests/ops/samples_conv.py), every conv of the bench CNN's
training step (forward, input and weight gradients), stride, padding, dilation, groups,
odd sizes, both kernel orders (conv_direct, conv_reduce), the loop-nest fallbacks, and
operands that are strided views (transposed, sliced, flipped, broadcast). All convs of one
dtype are compiled as ONE graph (one LLVM run). conv tolerance: each output may differ
from the interpreter by a few ulps of the sum of |x * w| over its taps (summation order).
Pools are exact, so they are compared bitwise (NaN where NaN).

Padding taps are never multiplied: with an infinite weight or a NaN pixel, exactly the
outputs whose real taps meet it turn non-finite (a reference that skips padding taps
defines them here, independently of the interpreter).
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

import compiler
from compiler import ops
from compiler.codegen import compile as compile_graph
from compiler.codegen import conv as conv_kernels
from compiler.codegen import conv_direct, conv_pool, conv_reduce, parallel
from compiler.codegen.compile import build
from compiler.codegen.conv_simd import Conv, lanes_and_registers
from compiler.ir.types import TensorType
from compiler.ops.conv import conv2d, max_pool2d
from compiler.ops.registry import infer_type
from compiler.ops.tensor import apply
from runtime import elf

ULPS = {"float32": 2e-6, "float64": 4e-15}


def _attrs(stride=1, padding=0, dilation=1, groups=1) -> dict:
    pair = lambda v: tuple(v) if isinstance(v, tuple) else (v, v)  # noqa: E731
    return dict(stride=pair(stride), padding=pair(padding), dilation=pair(dilation), groups=groups)


# (name, x shape, w shape, attrs)
CONVS = [
    # tests/ops/samples_conv.py
    ("sample-bias", (2, 3, 5, 5), (4, 3, 3, 3), _attrs()),
    ("sample-stride-padding", (1, 2, 6, 6), (3, 2, 3, 2), _attrs((2, 1), (1, 2))),
    ("sample-dilation", (1, 2, 6, 5), (2, 2, 2, 2), _attrs(padding=1, dilation=(2, 1))),
    ("sample-groups2-leftover", (2, 4, 6, 5), (4, 2, 3, 3), _attrs(2, 1, groups=2)),
    ("sample-depthwise", (1, 4, 5, 5), (4, 1, 3, 3), _attrs(padding=1, groups=4)),
    ("sample-depth-multiplier", (1, 2, 4, 5), (4, 1, 2, 2), _attrs((1, 2), groups=2)),
    ("sample-pad-wider-than-kernel", (1, 2, 4, 3), (3, 2, 1, 1), _attrs(3, (2, 1))),
    ("sample-avg-pool", (2, 2, 4, 5), (2, 1, 2, 2), _attrs(2, groups=2)),
    ("sample-avg-pool-padded", (1, 3, 5, 6), (3, 1, 3, 3), _attrs(2, 1, groups=3)),
    # the bench CNN's training step: forward, input gradients, weight gradients
    ("cnn-conv1", (16, 1, 28, 28), (8, 1, 3, 3), _attrs(padding=1)),
    ("cnn-depthwise", (16, 8, 14, 14), (8, 1, 3, 3), _attrs(padding=1, groups=8)),
    ("cnn-pointwise", (16, 8, 14, 14), (16, 8, 1, 1), _attrs()),
    ("cnn-pointwise-dx", (16, 16, 14, 14), (8, 16, 1, 1), _attrs()),
    ("cnn-pointwise-dw", (8, 16, 14, 14), (16, 16, 14, 14), _attrs()),
    ("cnn-depthwise-dw", (1, 128, 14, 14), (8, 16, 14, 14), _attrs(padding=1, groups=8)),
    ("cnn-conv1-dw", (1, 16, 28, 28), (8, 16, 28, 28), _attrs(padding=1)),
    # odd sizes, strides (wide loads up to 4, scalar lanes beyond), dilation, remainders
    ("odd-dilated", (3, 5, 13, 29), (7, 5, 3, 5), _attrs(padding=(2, 1), dilation=(1, 2))),
    ("stride3-groups3", (2, 6, 17, 33), (6, 2, 5, 5), _attrs((1, 3), 2, groups=3)),
    ("stride5", (2, 3, 9, 23), (4, 3, 3, 3), _attrs((2, 5))),
    ("channel-remainders", (2, 19, 10, 10), (13, 19, 3, 3), _attrs(padding=1)),
    ("pointwise-strided", (2, 8, 9, 9), (5, 8, 1, 1), _attrs(2)),
    ("pointwise-padded", (2, 3, 5, 5), (4, 3, 1, 1), _attrs(padding=1)),
    ("wide-rows", (1, 2, 3, 70), (3, 2, 2, 3), _attrs(padding=(0, 1))),
    ("big-padding", (1, 2, 3, 4), (2, 2, 2, 2), _attrs(padding=3)),
    ("reduce-padded", (2, 3, 6, 6), (4, 3, 6, 6), _attrs(padding=1)),
    ("reduce-dilated", (3, 2, 11, 11), (4, 2, 5, 5), _attrs(padding=1, dilation=2)),
    ("reduce-strided", (2, 4, 12, 12), (3, 4, 5, 5), _attrs(2, 1)),
    ("reduce-grouped", (5, 6, 9, 9), (6, 2, 8, 7), _attrs(padding=(1, 2), groups=3)),
    ("reduce-long-rows", (2, 3, 4, 45), (2, 3, 3, 40), _attrs(padding=(1, 0))),
    ("many-taps-fallback", (1, 2, 12, 12), (2, 2, 9, 9), _attrs(padding=4)),
    ("view-dilated", (2, 3, 7, 21), (4, 3, 2, 3), _attrs(padding=1, dilation=(1, 2))),
]
VIEWS = ["transposed", "sliced", "flipped", "broadcast", "flipped-weight", "broadcast-weight", "batch-as-channels"]


def _arrays(x_shape, w_shape, dtype, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype)


def _viewed(view, x, w, attrs):
    """conv2d of a strided view of x or w; returns (function, x argument, w argument)."""
    if view == "transposed":  # lanes read x with the stride of a whole row
        fn = lambda a, b: apply("conv2d", ops.transpose(a, (0, 1, 3, 2)), b, **attrs)  # noqa: E731
        return fn, np.swapaxes(x, 2, 3).copy(), w
    if view == "sliced":  # every other column: stride 2 (a wide load and a shuffle)
        wide = np.repeat(x, 2, axis=3)
        return (lambda a, b: apply("conv2d", a[:, :, :, ::2], b, **attrs)), wide, w
    if view == "flipped":  # negative lane stride
        return (lambda a, b: apply("conv2d", a[:, :, :, ::-1], b, **attrs)), x[:, :, :, ::-1].copy(), w
    if view == "broadcast":  # stride-0 batch and row axes
        row = x[:1, :, :1, :]
        return (lambda a, b: apply("conv2d", ops.broadcast_to(a, x.shape), b, **attrs)), row, w
    if view == "flipped-weight":
        return (lambda a, b: apply("conv2d", a, b[:, :, ::-1, ::-1], **attrs)), x, w[:, :, ::-1, ::-1].copy()
    if view == "batch-as-channels":  # the weight gradient's view: images and channels swapped
        swap = lambda t: ops.transpose(t, (1, 0, 2, 3))  # noqa: E731
        return (lambda a, b: apply("conv2d", swap(a), swap(b), **attrs)), np.swapaxes(x, 0, 1).copy(), \
            np.swapaxes(w, 0, 1).copy()
    if view == "broadcast-weight":
        one = w[:1, :1, :1, :1]
        return (lambda a, b: apply("conv2d", a, ops.broadcast_to(b, w.shape), **attrs)), x, one
    raise AssertionError(view)


def _cases(dtype):
    cases = []
    for k, (name, xs, ws, attrs) in enumerate(CONVS):
        x, w = _arrays(xs, ws, dtype, k)
        cases.append((name, lambda a, b, at=attrs: apply("conv2d", a, b, **at), x, w))
    for k, view in enumerate(VIEWS):
        for base in ("view-dilated", "reduce-strided", "cnn-pointwise-dw"):
            _, xs, ws, attrs = next(c for c in CONVS if c[0] == base)
            x, w = _arrays(xs, ws, dtype, 100 + k)
            cases.append((f"{view}-{base}", *_viewed(view, x, w, attrs)))
    return cases


CASE_NAMES = [name for name, *_ in _cases("float32")]


@functools.cache
def _compiled(dtype):
    """(cases, compiled outputs, interpreter outputs, bounds) for all convs of dtype in one graph."""
    cases = _cases(dtype)
    fns = [fn for _, fn, _, _ in cases]

    def everything(*arrays):
        return tuple(fn(arrays[2 * k], arrays[2 * k + 1]) for k, fn in enumerate(fns))

    args = [a for _, _, x, w in cases for a in (x, w)]
    graph = compiler.trace(everything, *args, name=f"convs_{dtype}")
    kernel = compile_graph(graph, opt_level=2, cache=False)
    bounds = compiler.evaluate(graph, *[np.abs(a) for a in args])
    return cases, kernel(*args), compiler.evaluate(graph, *args), bounds, _ir(graph)


def _ir(graph) -> str:
    """The module's LLVM IR as emitted (before LLVM's passes): kernel and tile functions."""
    return build(graph, 2).ir_text


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", CASE_NAMES)
def test_conv_matches_interpreter(name, dtype):
    cases, got, expected, bounds, _ = _compiled(dtype)
    k = CASE_NAMES.index(name)
    assert got[k].shape == expected[k].shape and got[k].dtype == np.dtype(dtype)
    error = np.abs(got[k].astype(np.float64) - expected[k])
    assert np.all(error <= ULPS[dtype] * bounds[k] + 1e-30), f"{name}: max error {error.max()}"


def test_cnn_convs_take_the_vectorized_kernels():
    text = _compiled("float32")[4]
    assert "conv.tile." in text and "conv.wtile." in text
    shapes = {name: (xs, ws, attrs) for name, xs, ws, attrs in CONVS}
    for name in [n for n in shapes if n.startswith("cnn-")]:
        xs, ws, attrs = shapes[name]
        cv = _conv(xs, ws, attrs)
        module = conv_reduce if cv.plane < cv.kh * cv.kw else conv_direct
        assert module.supported(cv), name
    assert not conv_direct.supported(_conv(*shapes["many-taps-fallback"]))


def _conv(xs, ws, attrs, dtype="float32"):
    out = infer_type("conv2d", [TensorType(xs, dtype), TensorType(ws, dtype)], attrs)
    strides = lambda s: tuple(int(np.prod(s[k + 1:])) for k in range(4))  # noqa: E731
    return Conv.of(xs, strides(xs), ws, strides(ws), out.shape, attrs, dtype)


def test_plans_fit_the_registers():
    """Accumulators plus the operands one step keeps live never exceed the vector registers
    (spills would halve the speed); every tile has at least one accumulator."""
    for name, xs, ws, attrs in CONVS:
        for dtype in ("float32", "float64"):
            cv = _conv(xs, ws, attrs, dtype)
            _, regs = lanes_and_registers(dtype)
            if cv.plane < cv.kh * cv.kw:
                nb, ob, rb, cb = conv_reduce.plan(cv.flat_full_window())
                assert nb * ob * rb * cb + min(ob, nb * rb * cb) + 2 <= regs, name
            else:
                ob, hb, wv = conv_direct.plan(cv.flat_pointwise())
                assert (ob + 1) * hb * wv + ob + 1 <= regs and min(ob, hb, wv) >= 1, name


def test_loop_nest_fallback_agrees(monkeypatch):
    """PULLBACK_NAIVE_CONV=1 (the before/after switch) compiles the loop nests: same results."""
    x, w = _arrays((2, 4, 9, 11), (6, 2, 3, 3), "float64", 7)
    fn = lambda a, b: apply("conv2d", a, b, **_attrs((1, 2), 1, groups=2))  # noqa: E731
    graph = compiler.trace(fn, x, w)
    fast = compile_graph(graph, cache=False)(x, w)
    monkeypatch.setenv(conv_kernels.NAIVE_ENV, "1")
    assert "conv.tile." not in _ir(graph)
    np.testing.assert_allclose(compile_graph(graph, cache=False)(x, w), fast, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kernel_row_loops_agree(dtype, monkeypatch):
    """Big kernels loop over kernel rows in interior tiles (border rows get tiles of their
    own); forced here on small convs, with stride, dilation, padding and a channel remainder."""
    monkeypatch.setattr(conv_direct, "MAX_UNROLLED", 8)
    for k, (xs, ws, attrs) in enumerate([((2, 3, 17, 21), (5, 3, 5, 5), _attrs((2, 1), (2, 3), (1, 2))),
                                         ((1, 2, 30, 9), (3, 2, 4, 3), _attrs(padding=(3, 1)))]):
        cv = _conv(xs, ws, attrs, dtype)
        ob, hb, wv = conv_direct.plan(cv)
        assert conv_direct.row_loop(cv, ob * hb * wv)
        x, w = _arrays(xs, ws, dtype, 20 + k)
        graph = compiler.trace(lambda a, b, at=attrs: apply("conv2d", a, b, **at), x, w)
        error = np.abs(compile_graph(graph, cache=False)(x, w) - compiler.evaluate(graph, x, w))
        assert np.all(error <= ULPS[dtype] * compiler.evaluate(graph, np.abs(x), np.abs(w)) + 1e-30)


# ---------------------------------------------------------------- padding never multiplies
def _skip_padding_reference(x, w, stride, padding, dilation, groups):
    """conv2d summing only taps that read real pixels (float64)."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, o, ho, wo))
    og = o // groups
    for oc in range(o):
        for ic in range(cg):
            ch = (oc // og) * cg + ic
            for i in range(kh):
                for j in range(kw):
                    for r in range(ho):
                        row = r * sh + i * dh - ph
                        if not 0 <= row < h:
                            continue
                        for q in range(wo):
                            col = q * sw + j * dw - pw
                            if 0 <= col < wd:
                                out[:, oc, r, q] += x[:, ch, row, col].astype(np.float64) * w[oc, ic, i, j]
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", ["direct", "reduce", "pointwise-padded"])
def test_padding_taps_are_skipped_with_inf_weights_and_nan_pixels(case, dtype):
    rng = np.random.default_rng(3)
    shapes = {"direct": ((2, 3, 7, 19), (4, 3, 3, 3), _attrs(padding=1)),
              "reduce": ((2, 3, 7, 19), (4, 3, 6, 17), _attrs(padding=(1, 2))),
              "pointwise-padded": ((2, 3, 5, 5), (4, 3, 1, 1), _attrs(padding=1))}
    xs, ws, attrs = shapes[case]
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    w[0, 0, 0, 0] = np.inf  # a corner tap: reads padding for the first output row and column
    w[1, 1, -1, -1] = -np.inf
    x[1, 2, 0, -1] = np.nan  # a border pixel
    graph = compiler.trace(lambda a, b: apply("conv2d", a, b, **attrs), x, w)
    got = compile_graph(graph, cache=False)(x, w)
    expected = _skip_padding_reference(x, w, attrs["stride"], attrs["padding"], attrs["dilation"], attrs["groups"])
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    assert np.array_equal(np.isposinf(got), np.isposinf(expected))
    assert np.array_equal(np.isneginf(got), np.isneginf(expected))
    assert np.isfinite(expected).sum() > expected.size // 2  # the test means something
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- threads
needs_two_threads = pytest.mark.skipif(parallel.max_threads() < 2, reason="one CPU: no parallel code")


@needs_two_threads
@pytest.mark.parametrize("shapes", [((4, 16, 20, 20), (16, 16, 3, 3)), ((1, 16, 40, 40), (8, 16, 40, 40))],
                         ids=["direct", "reduce"])
def test_big_convs_run_on_threads_bitwise_like_serial(shapes, monkeypatch):
    monkeypatch.setenv(parallel.ENV, "2")
    x, w = _arrays(*shapes, "float32", 11)
    graph = compiler.trace(lambda a, b: apply("conv2d", a, b, **_attrs(padding=1)), x, w)
    assert 2 * np.prod(graph.type(graph.outputs[0]).shape) * np.prod(w.shape[1:]) >= parallel.MIN_FLOPS
    par = compile_graph(graph, cache=False, parallel=True)
    ser = compile_graph(graph, cache=False, parallel=False)
    assert "GOMP_parallel" in elf.read_symbols(par.object_code).undefined
    assert not any(s.startswith(("GOMP_", "omp_")) for s in elf.read_symbols(ser.object_code).undefined)
    for _ in range(3):
        assert par(x, w).tobytes() == ser(x, w).tobytes()
    bound = compiler.evaluate(graph, np.abs(x), np.abs(w))
    assert np.all(np.abs(ser(x, w) - compiler.evaluate(graph, x, w)) <= 2e-6 * bound)


# ---------------------------------------------------------------- gradients
def _cnn_loss(x, w1, wd, wp, w2):
    """conv, pool, depthwise, pointwise, then a strided, dilated conv: every kernel kind."""
    h = max_pool2d(ops.relu(conv2d(x, w1, padding=1)), 2)
    h = ops.tanh(conv2d(conv2d(h, wd, padding=1, groups=h.shape[1]), wp))
    h = conv2d(h, w2, stride=2, padding=1, dilation=(1, 2))
    return ops.sum(h * h)


def _cnn_args(dtype):
    rng = np.random.default_rng(5)
    shapes = [(3, 2, 12, 14), (4, 2, 3, 3), (4, 1, 3, 3), (6, 4, 1, 1), (5, 6, 3, 2)]
    return [(rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(dtype) for s in shapes]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_compiled_cnn_gradients_match_interpreter(dtype):
    args = _cnn_args(dtype)
    graph = compiler.value_and_grad(compiler.trace(_cnn_loss, *args), argnums=(0, 1, 2, 3, 4))
    got = compile_graph(graph, cache=False)(*args)
    expected = compiler.evaluate(graph, *args)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == "float32" else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[0], expected[0], **tol)
    for g, e in zip(got[1], expected[1], strict=True):
        np.testing.assert_allclose(g, e, **tol)


def test_compiled_cnn_gradient_matches_finite_differences():
    args = _cnn_args("float64")
    forward = compiler.trace(_cnn_loss, *args)
    loss = compile_graph(forward, cache=False)
    grads = compile_graph(compiler.grad(forward, argnums=(0, 1, 2, 3, 4)), cache=False)(*args)
    rng = np.random.default_rng(9)
    for _ in range(3):
        direction = [rng.standard_normal(a.shape) for a in args]
        eps = 1e-6
        plus = loss(*[a + eps * d for a, d in zip(args, direction)])
        minus = loss(*[a - eps * d for a, d in zip(args, direction)])
        numeric = (plus - minus) / (2 * eps)
        analytic = sum(float(np.sum(g * d)) for g, d in zip(grads, direction))
        assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic))


# ---------------------------------------------------------------- pools
POOLS = [
    ("k2", (2, 3, 8, 8), (2, 2), (2, 2), (0, 0)),
    ("k2-odd-leftovers", (2, 3, 9, 7), (2, 2), (2, 2), (0, 0)),
    ("k3-s2-padded-overlap", (1, 2, 5, 6), (3, 3), (2, 2), (1, 1)),
    ("k3x2-s3-padded-gaps", (1, 2, 7, 37), (3, 2), (3, 3), (1, 1)),
    ("k2-s2x5-gaps", (1, 2, 7, 37), (2, 2), (2, 5), (1, 0)),
    ("cnn-pool1", (16, 8, 28, 28), (2, 2), (2, 2), (0, 0)),
    ("cnn-pool2", (16, 16, 14, 14), (2, 2), (2, 2), (0, 0)),
    ("rect-stride1-overlap", (1, 2, 4, 4), (3, 2), (1, 1), (1, 0)),
    ("wide", (1, 1, 3, 70), (1, 3), (1, 3), (0, 1)),
    # lanes over pixel pairs (conv_pool.pairs): rows of at most one vector of pixels
    ("pairs-padded-rows", (2, 3, 7, 10), (2, 2), (2, 2), (1, 0)),
    ("pairs-k3x2-row-gaps", (1, 2, 11, 9), (3, 2), (4, 2), (1, 0)),
    ("pairs-k1x2", (1, 2, 3, 12), (1, 2), (1, 2), (0, 0)),
    ("pairs-one-window", (3, 2, 4, 3), (2, 2), (2, 2), (0, 0)),
]


def _pool_input(shape, dtype, seed, special):
    rng = np.random.default_rng(seed)
    x = np.round(rng.standard_normal(shape), 1).astype(dtype)  # many ties
    if special:
        flat = x.reshape(-1)
        flat[::7] = np.nan
        flat[3::11] = -np.inf
        flat[5::13] = np.inf
        flat[1::17] = -0.0
    return x


@pytest.mark.parametrize("special", [False, True], ids=["ties", "nan-inf"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", ["max_pool2d", "max_pool2d_grad", "max_pool2d_select"])
@pytest.mark.parametrize("case", POOLS, ids=[c[0] for c in POOLS])
def test_pool_matches_interpreter_bitwise(case, op, dtype, special):
    _, shape, kernel, stride, padding = case
    attrs = dict(kernel=kernel, stride=stride, padding=padding)
    x = _pool_input(shape, dtype, 1, special)
    pooled_shape = infer_type("max_pool2d", [TensorType(shape, dtype)], attrs).shape
    rng = np.random.default_rng(2)
    if op == "max_pool2d":
        fn, args = (lambda a: apply(op, a, **attrs)), (x,)
    elif op == "max_pool2d_grad":
        fn, args = (lambda a, g: apply(op, a, g, **attrs)), (x, rng.standard_normal(pooled_shape).astype(dtype))
    else:
        fn, args = (lambda a, v: apply(op, a, v, **attrs)), (x, rng.standard_normal(shape).astype(dtype))
    graph = compiler.trace(fn, *args)
    got = compile_graph(graph, cache=False)(*args)
    expected = compiler.evaluate(graph, *args)
    assert got.dtype == expected.dtype and np.array_equal(got, expected, equal_nan=True)
    if op == "max_pool2d":  # the vectorized kernel, not the loop nest
        assert "llvm.maximum.v" in _ir(graph)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pairs_cover_the_short_rows_of_2_wide_pools(dtype):
    """Which pools take lanes over pixel pairs (conv_pool.pairs): 2-wide, 2-apart, unpadded
    columns, disjoint windows, contiguous rows that fit one vector of pixels."""
    lanes = lanes_and_registers(dtype)[0]
    contiguous = (0, 0, 0, 1)

    def pairs(shape, kernel, stride, padding, strides=contiguous):
        pool = conv_pool.Pool.of(shape, dict(kernel=kernel, stride=stride, padding=padding))
        return conv_pool.pairs(pool, strides, dtype)

    assert pairs((1, 1, 14, 2 * (lanes // 2)), (2, 2), (2, 2), (0, 0))
    assert pairs((1, 1, 14, 2 * (lanes // 2) + 1), (2, 2), (2, 2), (1, 0))  # the odd column is in no window
    assert not pairs((1, 1, 14, 2 * lanes), (2, 2), (2, 2), (0, 0))  # two vectors of pixels
    assert not pairs((1, 1, 14, 8), (2, 2), (2, 2), (0, 1))
    assert not pairs((1, 1, 14, 8), (2, 2), (1, 2), (0, 0))  # overlapping rows
    assert not pairs((1, 1, 14, 8), (2, 3), (2, 3), (0, 0))
    assert not pairs((1, 1, 14, 8), (2, 2), (2, 2), (0, 0), (0, 0, 1, 14))  # transposed rows


@pytest.mark.parametrize("op", ["max_pool2d", "max_pool2d_grad", "max_pool2d_select"])
def test_pool_pairs_of_strided_views_match_interpreter_bitwise(op):
    """Pixel pairs with x a column slice (an odd offset) and the second operand flipped."""
    attrs = dict(kernel=(2, 2), stride=(2, 2), padding=(0, 0))
    x = _pool_input((2, 3, 8, 11), "float32", 7, True)  # the kernel sees (2, 3, 8, 10)
    rng = np.random.default_rng(8)
    other = rng.standard_normal((2, 3, 4, 5) if op == "max_pool2d_grad" else (2, 3, 8, 10)).astype(np.float32)

    def fn(a, b):
        image = a[:, :, :, 1:]
        return apply(op, image, **attrs) if op == "max_pool2d" else apply(op, image, b[:, :, :, ::-1], **attrs)

    graph = compiler.trace(fn, x, other)
    got = compile_graph(graph, cache=False)(x, other)
    assert np.array_equal(got, compiler.evaluate(graph, x, other), equal_nan=True)


@pytest.mark.parametrize("op", ["max_pool2d", "max_pool2d_grad", "max_pool2d_select"])
def test_pool_of_strided_views_matches_interpreter_bitwise(op):
    """x transposed (lanes read with a row's stride), the second operand a flipped view."""
    attrs = dict(kernel=(2, 3), stride=(2, 3), padding=(1, 1))
    x = _pool_input((2, 3, 19, 10), "float32", 4, True)  # the kernel sees (2, 3, 10, 19)
    pooled = infer_type("max_pool2d", [TensorType((2, 3, 10, 19), "float32")], attrs).shape
    rng = np.random.default_rng(6)
    other = rng.standard_normal(pooled if op == "max_pool2d_grad" else (2, 3, 10, 19)).astype(np.float32)

    def fn(a, b):
        image = ops.transpose(a, (0, 1, 3, 2))
        return apply(op, image, **attrs) if op == "max_pool2d" else apply(op, image, b[:, :, :, ::-1], **attrs)

    graph = compiler.trace(fn, x, other)
    got = compile_graph(graph, cache=False)(x, other)
    assert np.array_equal(got, compiler.evaluate(graph, x, other), equal_nan=True)
