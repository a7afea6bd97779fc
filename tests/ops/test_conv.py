"""conv2d, max_pool2d, avg_pool2d: references against naive loops, shape rules, gradients."""
import itertools

import numpy as np
import pytest

import compiler
from compiler import ops
from compiler.errors import ShapeError
from compiler.ir.types import TensorType
from compiler.ops import conv
from compiler.ops.registry import infer_type
from compiler.ops.tensor import apply
from tests.gradcheck import check_grad
from tests.ops.samples import ALL_SAMPLES  # noqa: F401 - before samples_conv: avoids an import cycle
from tests.ops.samples_conv import distinct


def _run(fn, *arrays):
    return compiler.evaluate(compiler.trace(fn, *arrays), *arrays)


def _ops_in(fn, *arrays):
    return [node.op for _, node in compiler.trace(fn, *arrays).nodes()]


# ------------------------------------------------------------ naive loops
def _padded(x, padding, fill):
    (ph, pw) = padding
    n, c, h, w = x.shape
    out = np.full((n, c, h + 2 * ph, w + 2 * pw), fill, dtype=x.dtype)
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def naive_conv2d(x, w, stride, padding, dilation, groups):
    (sh, sw), (dh, dw) = stride, dilation
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = _padded(x, padding, 0.0)
    ho = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, o, ho, wo))
    per_group = o // groups
    for b, oc, i, j in itertools.product(range(n), range(o), range(ho), range(wo)):
        group = oc // per_group
        for ic, a, e in itertools.product(range(cg), range(kh), range(kw)):
            out[b, oc, i, j] += xp[b, group * cg + ic, i * sh + a * dh, j * sw + e * dw] * w[oc, ic, a, e]
    return out


def _pool_windows(x, kernel, stride, padding):
    """Yield (b, ch, i, j, [(row, col) of the window's real pixels, row-major])."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c, h, w = x.shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    for b, ch, i, j in itertools.product(range(n), range(c), range(ho), range(wo)):
        pixels = [(i * sh + a - ph, j * sw + e - pw) for a in range(kh) for e in range(kw)]
        yield b, ch, i, j, [(r, q) for r, q in pixels if 0 <= r < h and 0 <= q < w], kh * kw, (ho, wo)


def naive_max_pool(x, kernel, stride, padding):
    results = {}
    for b, ch, i, j, pixels, _, shape in _pool_windows(x, kernel, stride, padding):
        results[b, ch, i, j] = max(x[b, ch, r, q] for r, q in pixels)  # pads are -inf: never the max
    return _fill(results, x.shape[:2] + shape)


def naive_avg_pool(x, kernel, stride, padding):
    results = {}
    for b, ch, i, j, pixels, count, shape in _pool_windows(x, kernel, stride, padding):
        results[b, ch, i, j] = sum(x[b, ch, r, q] for r, q in pixels) / count  # pads count as zeros
    return _fill(results, x.shape[:2] + shape)


def naive_max_pool_grad(x, g, kernel, stride, padding):
    dx = np.zeros_like(x)
    for b, ch, i, j, pixels, _, _ in _pool_windows(x, kernel, stride, padding):
        best = pixels[0]
        for r, q in pixels:  # strict '>': the first maximal pixel wins ties
            if x[b, ch, r, q] > x[b, ch][best]:
                best = (r, q)
        dx[b, ch][best] += g[b, ch, i, j]
    return dx


def _fill(results, shape):
    out = np.zeros(shape)
    for key, value in results.items():
        out[key] = value
    return out


# ---------------------------------------------------------------- conv2d
CONV_CASES = [
    # (x shape, w shape, stride, padding, dilation, groups)
    ((2, 3, 5, 5), (4, 3, 3, 3), (1, 1), (0, 0), (1, 1), 1),
    ((1, 2, 6, 6), (3, 2, 3, 2), (2, 1), (1, 2), (1, 1), 1),
    ((1, 2, 6, 5), (2, 2, 2, 2), (1, 1), (1, 1), (2, 1), 1),
    ((2, 4, 6, 5), (4, 2, 3, 3), (2, 2), (1, 1), (1, 1), 2),  # groups=2, stride leftovers
    ((1, 4, 5, 5), (4, 1, 3, 3), (1, 1), (1, 1), (1, 1), 4),  # depthwise
    ((1, 2, 4, 5), (6, 1, 2, 2), (1, 2), (0, 0), (1, 1), 2),  # depthwise, multiplier 3
    ((1, 2, 4, 3), (3, 2, 1, 1), (3, 3), (2, 1), (1, 1), 1),  # padding wider than the kernel
    ((2, 4, 6, 6), (2, 2, 2, 3), (3, 2), (2, 0), (2, 1), 2),
]


@pytest.mark.parametrize("xs, ws, stride, padding, dilation, groups", CONV_CASES)
def test_conv2d_reference_matches_loops(xs, ws, stride, padding, dilation, groups):
    x, w = np.random.default_rng(0).normal(size=xs), np.random.default_rng(1).normal(size=ws)
    out = _run(lambda x, w: conv.conv2d(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups), x, w)
    np.testing.assert_allclose(out, naive_conv2d(x, w, stride, padding, dilation, groups), atol=1e-12)


@pytest.mark.parametrize("xs, ws, stride, padding, dilation, groups", CONV_CASES)
def test_conv2d_gradients(xs, ws, stride, padding, dilation, groups):
    x, w = np.random.default_rng(2).normal(size=xs), np.random.default_rng(3).normal(size=ws)
    b = np.random.default_rng(4).normal(size=ws[0])
    check_grad(lambda x, w, b: conv.conv2d(x, w, b, stride, padding, dilation, groups), [x, w, b])


@pytest.mark.parametrize("case", [CONV_CASES[1], CONV_CASES[3], CONV_CASES[6], CONV_CASES[7]])
def test_conv2d_second_order(case):
    """The VJP rule is itself differentiable IR: check the gradient of its output."""
    xs, ws, stride, padding, dilation, groups = case
    attrs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    x, w = np.random.default_rng(5).normal(size=xs), np.random.default_rng(6).normal(size=ws)
    g = np.random.default_rng(7).normal(size=infer_type("conv2d", [TensorType(xs, "float64"),
                                                                   TensorType(ws, "float64")], attrs).shape)

    def cotangents(x, w, g):
        dx, dw = conv._conv2d_vjp(g, apply("conv2d", x, w, **attrs), (x, w), **attrs)
        return ops.sum(ops.tanh(dx)) + ops.sum(dw * dw)

    check_grad(cotangents, [x, w, g])


def test_conv2d_vjp_is_conv2d_without_waste():
    """Stride-1 'same' conv: dx is one conv2d (padding folded in), dw one conv2d; no pad op.

    (The forward conv is dead: the gradient of a sum does not read it.)"""
    x, w = np.zeros((2, 3, 5, 5)), np.zeros((4, 3, 3, 3))
    graph = compiler.grad(compiler.trace(lambda p: ops.sum(conv.conv2d(p[0], p[1], padding=1)), [x, w]))
    kinds = [node.op for _, node in graph.nodes()]
    assert kinds.count("conv2d") == 2 and "pad" not in kinds and "slice" in kinds  # the slice flips w


@pytest.mark.parametrize("xs, ws, groups, copies", [
    ((2, 3, 5, 5), (4, 3, 3, 3), 1, 0),  # images, gradients and the flipped kernel are views
    ((2, 4, 5, 5), (4, 1, 3, 3), 4, 1),  # depthwise: (group, image) channels need a copy of x
    ((2, 4, 5, 5), (2, 2, 3, 3), 2, 1),  # one output channel per group: w's channel swap is a view
    ((2, 4, 5, 5), (4, 2, 3, 3), 2, 2),  # general groups: x and w regrouped by copies
])
def test_conv2d_vjp_reads_operands_through_views(xs, ws, groups, copies):
    """A reshape of a transposed value is a copy at run time: the VJP makes one only
    where no strided view can do."""
    x, w = np.zeros(xs), np.zeros(ws)
    graph = compiler.grad(compiler.trace(lambda x, w: ops.sum(conv.conv2d(x, w, padding=1, groups=groups)), x, w),
                          argnums=(0, 1))
    made = [n for _, n in graph.nodes() if n.op == "reshape" and graph.node(n.operands[0]).op == "transpose"]
    assert len(made) == copies


def test_conv2d_shapes_and_dtypes():
    f32 = lambda *s: TensorType(s, "float32")  # noqa: E731
    attrs = dict(stride=(2, 3), padding=(1, 0), dilation=(1, 2), groups=2)
    assert infer_type("conv2d", [f32(2, 4, 7, 9), f32(6, 2, 3, 2)], attrs) == f32(2, 6, 4, 3)
    graph = compiler.trace(lambda x: conv.conv2d(x, np.ones((1, 1, 2, 2), np.float32)),
                           np.ones((1, 1, 3, 3), np.float32))
    assert graph.node(graph.outputs[0]).type == f32(1, 1, 2, 2)
    with_bias = compiler.trace(lambda x: conv.conv2d(x, np.ones((2, 1, 2, 2), np.float32), np.arange(2)),
                               np.ones((1, 1, 3, 3), np.float32))
    assert with_bias.node(with_bias.outputs[0]).type == f32(1, 2, 2, 2)  # an int bias follows x's dtype
    ints = np.arange(9, dtype=np.int32).reshape(1, 1, 3, 3)
    out = _run(lambda x: conv.conv2d(x, np.ones((1, 1, 2, 2), np.int32)), ints)
    assert out.dtype == np.float32 and out[0, 0].tolist() == [[8, 12], [20, 24]]


def test_conv2d_empty_batch():
    f64 = lambda *s: TensorType(s, "float64")  # noqa: E731
    attrs = dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1)
    assert infer_type("conv2d", [f64(0, 2, 3, 3), f64(1, 2, 2, 2)], attrs) == f64(0, 1, 2, 2)


@pytest.mark.parametrize("x, w, attrs, message", [
    ((2, 3, 5), (4, 3, 3, 3), {}, "input x must be rank 4"),
    ((2, 3, 5, 5), (4, 3, 3), {}, "weight w (O, C/groups, kH, kW) must be rank 4"),
    ((2, 4, 5, 5), (4, 4, 3, 3), {"groups": 3}, "groups=3 must divide both the input channels (4)"),
    ((2, 4, 5, 5), (4, 4, 3, 3), {"groups": 2}, "must have C/groups = 4/2 = 2 input channels"),
    ((2, 3, 5, 5), (4, 3, 6, 3), {}, "the kernel reaches 6 pixels along H but the padded input has only 5"),
    ((2, 3, 5, 5), (4, 3, 3, 3), {"dilation": (3, 1)}, "the kernel reaches 7 pixels along H"),
    ((2, 3, 5, 5), (4, 3, 3, 3), {"stride": (0, 1)}, "stride (0,1) must be at least 1"),
    ((2, 3, 5, 5), (4, 3, 3, 3), {"padding": (-1, 0)}, "padding (-1,0) must be at least 0"),
    ((2, 3, 5, 5), (4, 3, 3, 3), {"padding": 1}, "padding must be a pair of ints"),
    ((2, 3, 5, 5), (4, 3, 3, 3), {"groups": 0}, "groups must be a positive int"),
    ((2, 3, 5, 5), (4, 3, 0, 3), {"padding": (1, 1)}, "kernel size must be at least 1x1"),
])
def test_conv2d_shape_errors(x, w, attrs, message):
    full = dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1) | attrs
    with pytest.raises(ShapeError) as info:
        infer_type("conv2d", [TensorType(x, "float32"), TensorType(w, "float32")], full)
    assert message in str(info.value)


def test_conv2d_rejects_mixed_dtypes_and_ints():
    with pytest.raises(ShapeError, match="dtypes differ"):
        infer_type("conv2d", [TensorType((1, 1, 3, 3), "float32"), TensorType((1, 1, 2, 2), "float64")],
                   dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1))
    with pytest.raises(ShapeError, match="must be float32 or float64"):
        infer_type("conv2d", [TensorType((1, 1, 3, 3), "int32"), TensorType((1, 1, 2, 2), "int32")],
                   dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1))


def test_conv2d_front_end_errors():
    x, w = np.zeros((1, 2, 4, 4)), np.zeros((3, 2, 2, 2))
    with pytest.raises(ShapeError, match=r"conv2d: bias must have shape \(3,\)"):
        compiler.trace(lambda x, w: conv.conv2d(x, w, np.zeros(2)), x, w)
    with pytest.raises(ShapeError, match="conv2d: stride must be an int or a pair of ints"):
        compiler.trace(lambda x, w: conv.conv2d(x, w, stride=(1, 1, 1)), x, w)
    with pytest.raises(ShapeError, match="conv2d: groups must be an int"):
        compiler.trace(lambda x, w: conv.conv2d(x, w, groups=1.0), x, w)
    with pytest.raises(ShapeError, match=r"conv2d at .*: the kernel reaches 3 pixels"):
        compiler.trace(lambda x, w: conv.conv2d(x, w, dilation=2, stride=1), np.zeros((1, 2, 2, 2)), w)


# ----------------------------------------------------------------- pooling
POOL_CASES = [
    # (x shape, kernel, stride, padding)
    ((2, 2, 4, 6), 2, None, 0),
    ((1, 3, 5, 6), 3, 2, 1),  # overlapping windows with padding
    ((1, 2, 4, 4), (3, 2), 1, (1, 0)),
    ((2, 1, 5, 5), 2, 1, 1),
    ((1, 2, 6, 5), (2, 3), (3, 1), (1, 1)),
]


@pytest.mark.parametrize("shape, kernel, stride, padding", POOL_CASES)
def test_pool_references_match_loops(shape, kernel, stride, padding):
    x = np.random.default_rng(8).normal(size=shape)
    pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
    k, s, p = pair(kernel), pair(kernel if stride is None else stride), pair(padding)
    np.testing.assert_allclose(_run(lambda x: conv.max_pool2d(x, kernel, stride, padding), x),
                               naive_max_pool(x, k, s, p), atol=1e-12)
    np.testing.assert_allclose(_run(lambda x: conv.avg_pool2d(x, kernel, stride, padding), x),
                               naive_avg_pool(x, k, s, p), atol=1e-12)
    g = np.random.default_rng(9).normal(size=naive_max_pool(x, k, s, p).shape)
    grad = _run(lambda x, g: apply("max_pool2d_grad", x, g, kernel=k, stride=s, padding=p), x, g)
    np.testing.assert_allclose(grad, naive_max_pool_grad(x, g, k, s, p), atol=1e-12)


@pytest.mark.parametrize("shape, kernel, stride, padding", POOL_CASES)
def test_pool_gradients(shape, kernel, stride, padding):
    x = distinct(shape, 10)
    check_grad(lambda x: conv.max_pool2d(x, kernel, stride, padding), [x])
    check_grad(lambda x: conv.avg_pool2d(x, kernel, stride, padding), [x])


def test_max_pool_ties_go_to_the_first_pixel():
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 2] = x[0, 0, 2, 1] = 1.0  # two maxima share the bottom-right window
    graph = compiler.grad(compiler.trace(lambda x: ops.sum(conv.max_pool2d(x, 2, stride=1)), x))
    dx = compiler.evaluate(graph, x)
    # window (0,0) is all zeros and window (1,1) holds both maxima: each tie goes to the first pixel
    expected = naive_max_pool_grad(x, np.ones((1, 1, 2, 2)), (2, 2), (1, 1), (0, 0))
    np.testing.assert_array_equal(dx, expected)
    assert dx[0, 0].tolist() == [[1, 0, 0], [0, 0, 2], [0, 1, 0]]
    flat = compiler.evaluate(graph, np.zeros((1, 1, 3, 3)))  # all equal: each window's top-left pixel
    assert flat[0, 0].tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 0]]


def test_max_pool_padding_is_never_selected():
    x = np.full((1, 1, 2, 2), -np.inf)
    x[0, 0, 1, 1] = -5.0
    out = _run(lambda x: conv.max_pool2d(x, 2, stride=1, padding=1), x)
    assert out[0, 0].tolist() == [[-np.inf, -np.inf, -np.inf], [-np.inf, -5.0, -5.0], [-np.inf, -5.0, -5.0]]
    g = np.arange(9.0).reshape(1, 1, 3, 3)
    dx = _run(lambda x, g: apply("max_pool2d_grad", x, g, kernel=(2, 2), stride=(1, 1), padding=(1, 1)), x, g)
    # windows of only -inf pixels route to their first REAL pixel, never to the padding
    assert dx[0, 0].tolist() == [[0 + 1 + 3, 2], [6, 4 + 5 + 7 + 8]]


def test_max_pool_nan_window_selects_the_nan():
    x = np.array([[[[1.0, np.nan], [3.0, 2.0]]]])
    assert np.isnan(_run(lambda x: conv.max_pool2d(x, 2), x)).all()
    dx = _run(lambda x, g: apply("max_pool2d_grad", x, g, kernel=(2, 2), stride=(2, 2), padding=(0, 0)),
              x, np.ones((1, 1, 1, 1)))
    assert dx[0, 0].tolist() == [[0, 1], [0, 0]]


def test_max_pool_select_is_the_pool_and_the_transpose_of_grad():
    x, v = distinct((2, 2, 5, 4), 11), np.random.default_rng(12).normal(size=(2, 2, 5, 4))
    attrs = dict(kernel=(3, 2), stride=(2, 1), padding=(1, 1))
    pooled = _run(lambda x: apply("max_pool2d", x, **attrs), x)
    np.testing.assert_array_equal(_run(lambda x: apply("max_pool2d_select", x, x, **attrs), x), pooled)
    g = np.random.default_rng(13).normal(size=pooled.shape)
    scattered = _run(lambda x, g: apply("max_pool2d_grad", x, g, **attrs), x, g)
    picked = _run(lambda x, v: apply("max_pool2d_select", x, v, **attrs), x, v)
    assert np.sum(scattered * v) == pytest.approx(np.sum(g * picked))  # <J^T g, v> == <g, J v>


def test_max_pool_second_order():
    x = distinct((1, 2, 4, 4), 14)
    check_grad(lambda x: ops.sum(ops.exp(conv.max_pool2d(ops.sin(x), 2, stride=1, padding=1))), [x])

    def grad_of_pool(x, g):  # differentiate the VJP (max_pool2d_grad -> max_pool2d_select)
        dx = conv._max_pool2d_vjp(g, None, (ops.sin(x),), kernel=(3, 3), stride=(1, 1), padding=(1, 1))[0]
        return ops.sum(dx * dx * x)

    check_grad(grad_of_pool, [distinct((1, 1, 4, 3), 15), np.random.default_rng(16).normal(size=(1, 1, 4, 3))])


def test_pool_defaults_and_front_end():
    x = np.random.default_rng(17).normal(size=(1, 1, 4, 4))
    kinds = _ops_in(lambda x: conv.avg_pool2d(x, 2), x)
    assert "conv2d" in kinds and "max_pool2d" not in kinds  # avg pool is a depthwise conv
    assert _run(lambda x: conv.max_pool2d(x, 2), x).shape == (1, 1, 2, 2)  # stride defaults to the kernel
    ints = np.arange(16, dtype=np.int32).reshape(1, 1, 4, 4)
    out = _run(lambda x: conv.avg_pool2d(x, 2), ints)
    assert out.dtype == np.float32 and out[0, 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]
    assert _run(lambda x: conv.max_pool2d(x, 2), ints)[0, 0].tolist() == [[5, 7], [13, 15]]


@pytest.mark.parametrize("fn, shape, message", [
    (lambda x: conv.max_pool2d(x, 2, padding=2), (1, 1, 4, 4), "padding (2,2) must be at most half the kernel (2,2)"),
    (lambda x: conv.avg_pool2d(x, 3, padding=(0, 2)), (1, 1, 4, 4), "avg_pool2d: padding (0,2) must be at most half"),
    (lambda x: conv.max_pool2d(x, 5), (1, 1, 4, 6), "the kernel reaches 5 pixels along H"),
    (lambda x: conv.max_pool2d(x, 2, stride=0), (1, 1, 4, 4), "stride (0,0) must be at least 1"),
    (lambda x: conv.max_pool2d(x, (2, 2, 2)), (1, 1, 4, 4), "max_pool2d: kernel_size must be an int or a pair"),
    (lambda x: conv.max_pool2d(x, 2), (4, 4), "max_pool2d: input must be rank 4 (N, C, H, W)"),
])
def test_pool_errors(fn, shape, message):
    with pytest.raises(ShapeError) as info:
        compiler.trace(fn, np.zeros(shape))
    assert message in str(info.value)


def test_max_pool_grad_checks_the_cotangent_shape():
    attrs = dict(kernel=(2, 2), stride=(2, 2), padding=(0, 0))
    with pytest.raises(ShapeError, match=r"cotangent g must have the pooled type f32\[1,1,2,2\]"):
        infer_type("max_pool2d_grad", [TensorType((1, 1, 4, 4), "float32"), TensorType((1, 1, 4, 4), "float32")],
                   attrs)
    with pytest.raises(ShapeError, match=r"values v must have the type of input f32\[1,1,4,4\]"):
        infer_type("max_pool2d_select", [TensorType((1, 1, 4, 4), "float32"), TensorType((1, 1, 2, 2), "float32")],
                   attrs)
