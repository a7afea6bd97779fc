"""Convolution and pooling over NCHW images: `conv2d`, `max_pool2d`, `avg_pool2d`.

Semantics are PyTorch's (torch.nn.functional): cross-correlation, not flipped; x is
(N, C, H, W), w is (O, C/groups, kH, kW); each spatial size becomes
    floor((H + 2*pad - dil*(k - 1) - 1) / stride) + 1,
which must be at least 1. groups splits C and O into equal groups (groups == C is
depthwise). Pools have no dilation and no ceil_mode; stride defaults to the kernel size
and padding may be at most half the kernel (PyTorch's limits, which also make every
window hold at least one real pixel).

IR ops and attributes (all pairs are (height, width) tuples of ints):
- conv2d(x, w)               stride, padding, dilation, groups
- max_pool2d(x)              kernel, stride, padding
- max_pool2d_grad(x, g)      kernel, stride, padding: scatters g (pooled shape) to the
                             argmax of each window of x; overlapping windows accumulate
- max_pool2d_select(x, v)    kernel, stride, padding: reads v (x's shape) at the argmax
                             of each window of x. It is the transpose of max_pool2d_grad
                             and only appears when differentiating twice.
avg_pool2d is not an op: it is a depthwise conv2d with a constant 1/(kH*kW) kernel,
which is exactly PyTorch's count_include_pad=True average.

Argmax rule (ties): the FIRST maximal real pixel in row-major window order gets the
whole gradient, as in PyTorch's CPU kernel, which records one index per window. Padding
(-inf) is never selected; a window holding a nan selects its first nan.

Gradients: conv2d's VJP is two conv2d ops, so it can be differentiated again.
- dx is a transposed convolution: g dilated by the stride (pad interior), edge-padded,
  correlated with the spatially flipped kernel whose in/out channels are swapped per group.
- dw correlates x with g, batch and channel roles swapped: a conv2d whose stride is the
  forward dilation and whose dilation is the forward stride, cropped to (kH, kW).
max_pool2d's VJP is max_pool2d_grad; that op is linear in g with the transpose
max_pool2d_select (and back), and piecewise constant in x (zero gradient), so
second-order gradients through max-pool are exact too.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from compiler.errors import ShapeError
from compiler.ir.types import FLOAT_DTYPES, TensorType
from compiler.ops.registry import OpDef, register
from compiler.ops.tensor import Tensor, apply, as_tensors

__all__ = ["conv2d", "max_pool2d", "avg_pool2d"]


def _fmt(values: Sequence[int]) -> str:
    return "(" + ",".join(str(v) for v in values) + ")"


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


# ------------------------------------------------------------- attribute checks
def _pair_attr(attrs: Mapping[str, Any], name: str, minimum: int) -> tuple[int, int]:
    value = attrs[name]
    if not isinstance(value, tuple) or len(value) != 2 or not all(_is_int(v) for v in value):
        raise ShapeError(f"{name} must be a pair of ints (height, width), got {value!r}")
    if any(v < minimum for v in value):
        raise ShapeError(f"{name} {_fmt(value)} must be at least {minimum}")
    return int(value[0]), int(value[1])


def _check_image(t: TensorType, what: str) -> None:
    if t.rank != 4:
        raise ShapeError(f"{what} must be rank 4 (N, C, H, W), got {t}")
    if t.dtype not in FLOAT_DTYPES:
        raise ShapeError(f"{what} must be float32 or float64, got {t}")


def _out_size(size: int, kernel: int, stride: int, pad: int, dilation: int, axis: str) -> int:
    reach = dilation * (kernel - 1) + 1
    if size + 2 * pad < reach:
        raise ShapeError(f"the kernel reaches {reach} pixels along {axis} but the padded input has only "
                         f"{size + 2 * pad} (size {size} + 2*padding {pad}): the output would be empty")
    return (size + 2 * pad - reach) // stride + 1


def _infer_conv2d(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> TensorType:
    x, w = types
    _check_image(x, "input x")
    _check_image(w, "weight w (O, C/groups, kH, kW)")
    if x.dtype != w.dtype:
        raise ShapeError(f"operand dtypes differ ({x.dtype}, {w.dtype}); cast first")
    stride, padding, dilation = (_pair_attr(attrs, k, m) for k, m in (("stride", 1), ("padding", 0), ("dilation", 1)))
    groups = attrs["groups"]
    if not _is_int(groups) or groups < 1:
        raise ShapeError(f"groups must be a positive int, got {groups!r}")
    (n, c, h, wd), (o, cg, kh, kw) = x.shape, w.shape
    if c % groups or o % groups:
        raise ShapeError(f"groups={groups} must divide both the input channels ({c}) and the output channels ({o})")
    if cg != c // groups:
        raise ShapeError(f"weight {w} must have C/groups = {c}/{groups} = {c // groups} input channels "
                         f"(axis 1) for input {x}, got {cg}")
    if kh < 1 or kw < 1:
        raise ShapeError(f"kernel size must be at least 1x1, got {kh}x{kw} in weight {w}")
    ho = _out_size(h, kh, stride[0], padding[0], dilation[0], "H")
    wo = _out_size(wd, kw, stride[1], padding[1], dilation[1], "W")
    return TensorType((n, o, ho, wo), x.dtype)


def _pool_attrs(attrs: Mapping[str, Any]) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    kernel, stride, padding = (_pair_attr(attrs, k, m) for k, m in (("kernel", 1), ("stride", 1), ("padding", 0)))
    if any(2 * p > k for p, k in zip(padding, kernel)):
        raise ShapeError(f"padding {_fmt(padding)} must be at most half the kernel {_fmt(kernel)}")
    return kernel, stride, padding


def _pooled_type(x: TensorType, attrs: Mapping[str, Any]) -> TensorType:
    _check_image(x, "input x")
    kernel, stride, padding = _pool_attrs(attrs)
    n, c, h, w = x.shape
    ho = _out_size(h, kernel[0], stride[0], padding[0], 1, "H")
    wo = _out_size(w, kernel[1], stride[1], padding[1], 1, "W")
    return TensorType((n, c, ho, wo), x.dtype)


def _infer_max_pool2d(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> TensorType:
    return _pooled_type(types[0], attrs)


def _infer_max_pool2d_grad(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> TensorType:
    x, g = types
    pooled = _pooled_type(x, attrs)
    if g != pooled:
        raise ShapeError(f"cotangent g must have the pooled type {pooled} of input {x}, got {g}")
    return x


def _infer_max_pool2d_select(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> TensorType:
    x, v = types
    pooled = _pooled_type(x, attrs)
    if v != x:
        raise ShapeError(f"values v must have the type of input {x}, got {v}")
    return pooled


# ----------------------------------------------------------------- references
def _windows(x: np.ndarray, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple,
             fill: float = 0.0) -> np.ndarray:
    """im2col as a strided view: (N, C, Ho, Wo, kH, kW), padding filled with `fill`."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    view = sliding_window_view(xp, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
    return view[:, :, ::sh, ::sw, ::dh, ::dw]


def _valid_taps(size: int, out: int, offset: int, stride: int) -> tuple[int, int]:
    """(first t, count) of t in [0, out) with 0 <= t * stride + offset < size: the outputs
    whose tap at `offset` reads a real pixel."""
    first = max(0, -(offset // stride))  # ceil(-offset / stride)
    last = min(out - 1, (size - 1 - offset) // stride)
    return first, max(0, last - first + 1)


def _conv2d_ref(x: np.ndarray, w: np.ndarray, *, stride: tuple, padding: tuple, dilation: tuple,
                groups: int) -> np.ndarray:
    """Tap by tap over the outputs whose tap reads a real pixel, as the native kernel does:
    padding contributes nothing (a non-finite weight times padding is not 0 * inf = nan)."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, groups, o // groups, ho, wo), dtype=np.result_type(x, w))
    xg = x.reshape(n, groups, cg, h, wd)
    wg = w.reshape(groups, o // groups, cg, kh, kw)
    for i in range(kh):
        r0, rows = _valid_taps(h, ho, i * dh - ph, sh)
        for j in range(kw):
            c0, cols = _valid_taps(wd, wo, j * dw - pw, sw)
            if not rows or not cols:
                continue
            top, left = r0 * sh + i * dh - ph, c0 * sw + j * dw - pw
            pixels = xg[:, :, :, top:top + (rows - 1) * sh + 1:sh, left:left + (cols - 1) * sw + 1:sw]
            # (groups, o/g, cg) @ (n, groups, cg, rows * cols): every image, channel and pixel at once
            taps = wg[:, :, :, i, j] @ pixels.reshape(n, groups, cg, rows * cols)
            out[:, :, :, r0:r0 + rows, c0:c0 + cols] += taps.reshape(n, groups, o // groups, rows, cols)
    return out.reshape(n, o, ho, wo)


def _max_pool2d_ref(x: np.ndarray, *, kernel: tuple, stride: tuple, padding: tuple) -> np.ndarray:
    return _windows(x, kernel, stride, padding, (1, 1), -np.inf).max(axis=(-2, -1))


def _argmax_pixels(x: np.ndarray, kernel: tuple, stride: tuple, padding: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Row and column (in x, unpadded) of each window's first maximal real pixel: (N, C, Ho, Wo) each."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c, h, w = x.shape
    cols = _windows(x, kernel, stride, padding, (1, 1), -np.inf)
    ho, wo = cols.shape[2:4]
    cols = cols.reshape(n, c, ho, wo, kh * kw)
    real = _windows(np.ones((1, 1, h, w), bool), kernel, stride, padding, (1, 1), False).reshape(ho, wo, kh * kw)
    peak = cols.max(axis=-1, keepdims=True)
    # Masking pads keeps an all -inf window on a real pixel; a nan window picks its first nan.
    hit = ((cols == peak) | np.isnan(cols)) & real
    first = np.argmax(hit, axis=-1)  # argmax of bools: the first True
    rows = np.arange(ho)[:, None] * sh + first // kw - ph
    columns = np.arange(wo)[None, :] * sw + first % kw - pw
    return rows, columns


def _max_pool2d_grad_ref(x: np.ndarray, g: np.ndarray, *, kernel: tuple, stride: tuple,
                         padding: tuple) -> np.ndarray:
    rows, columns = _argmax_pixels(x, kernel, stride, padding)
    n, c = x.shape[:2]
    batch, channel = np.indices((n, c))
    dx = np.zeros_like(x)
    np.add.at(dx, (batch[:, :, None, None], channel[:, :, None, None], rows, columns), g)
    return dx


def _max_pool2d_select_ref(x: np.ndarray, v: np.ndarray, *, kernel: tuple, stride: tuple,
                           padding: tuple) -> np.ndarray:
    rows, columns = _argmax_pixels(x, kernel, stride, padding)
    batch, channel = np.indices(x.shape[:2])
    return v[batch[:, :, None, None], channel[:, :, None, None], rows, columns]


# ------------------------------------------------------------------ VJP rules
def _unread(size: int, out: int, k: int, s: int, p: int, d: int) -> int:
    """Padded pixels past the end of the last window (stride leftovers): no output reads them."""
    return size + 2 * p - ((out - 1) * s + 1 + d * (k - 1))


def _conv2d_input_grad(g: Tensor, w: Tensor, x_shape: tuple[int, ...], stride: tuple, padding: tuple,
                       dilation: tuple, groups: int) -> Tensor:
    import compiler.ops as ops

    o, cg, kh, kw = w.shape
    # Swap in/out channels within each group: (G*Og, Cg) -> (G*Cg, Og), then flip space. With
    # one group, or one channel on either side of each group, that is a view (no copy).
    og = o // groups
    if groups == 1:
        flipped = ops.transpose(w, (1, 0, 2, 3))
    elif cg == 1 or og == 1:
        flipped = ops.reshape(w, (groups * cg, og, kh, kw))
    else:
        flipped = ops.reshape(ops.transpose(ops.reshape(w, (groups, og, cg, kh, kw)), (0, 2, 1, 3, 4)),
                              (groups * cg, og, kh, kw))
    flipped = flipped[:, :, ::-1, ::-1]
    low, high, crop = [], [], []
    for axis, k, s, p, d in zip((2, 3), (kh, kw), stride, padding, dilation):
        reach = d * (k - 1)
        lo, hi = reach - p, reach - p + _unread(x_shape[axis], g.shape[axis], k, s, p, d)
        # A negative edge pad (padding wider than the kernel's reach) becomes a crop of the result.
        low.append(max(lo, 0))
        high.append(max(hi, 0))
        crop.append(max(-lo, 0))
    if stride == (1, 1) and low == high:
        # Nothing to dilate and symmetric edges: the conv's own padding does it, no pad op.
        dx = apply("conv2d", g, flipped, stride=(1, 1), padding=tuple(low), dilation=dilation, groups=groups)
    else:
        spread = apply("pad", g, low=(0, 0, *low), high=(0, 0, *high),
                       interior=(0, 0, stride[0] - 1, stride[1] - 1), value=0.0)
        dx = apply("conv2d", spread, flipped, stride=(1, 1), padding=(0, 0), dilation=dilation, groups=groups)
    h, wd = x_shape[2:]
    return dx[:, :, crop[0]:crop[0] + h, crop[1]:crop[1] + wd]


def _conv2d_weight_grad(g: Tensor, x: Tensor, w_shape: tuple[int, ...], stride: tuple, padding: tuple,
                        dilation: tuple, groups: int) -> Tensor:
    import compiler.ops as ops

    n, c, h, wd = x.shape
    o, cg, kh, kw = w_shape
    _, _, ho, wo = g.shape
    # Images become channels (grouped), channels become the batch: out[c, o] = sum_n x[n, c] * g[n, o].
    # Plain transposes where they suffice: they are strided views, a reshape of one is a copy.
    if groups == 1:
        images = ops.transpose(x, (1, 0, 2, 3))
    elif cg == 1:  # depthwise: channel k = (group, image) is no single stride of x, so one copy
        images = ops.reshape(ops.transpose(x, (1, 0, 2, 3)), (1, groups * n, h, wd))
    else:
        images = ops.reshape(ops.transpose(ops.reshape(x, (n, groups, cg, h, wd)), (2, 1, 0, 3, 4)),
                             (cg, groups * n, h, wd))
    kernels = ops.transpose(g, (1, 0, 2, 3))  # (O, N, Ho, Wo): output channel o's group is o // (O/groups)
    unread = tuple(_unread(size, out, k, s, p, d) for size, out, k, s, p, d
                   in zip((h, wd), (ho, wo), (kh, kw), stride, padding, dilation))
    if unread == (0, 0):
        dw = apply("conv2d", images, kernels, stride=dilation, padding=padding, dilation=stride, groups=groups)
    else:
        # Stride leftovers would make the correlation longer than the kernel: drop them first
        # (from the high padding, then from the image) so no cropped output is computed.
        keep = [size - max(u - p, 0) for size, u, p in zip((h, wd), unread, padding)]
        images = images[:, :, :keep[0], :keep[1]]
        high = tuple(max(p - u, 0) for u, p in zip(unread, padding))
        if any(padding) or any(high):
            images = apply("pad", images, low=(0, 0, *padding), high=(0, 0, *high), interior=(0, 0, 0, 0), value=0.0)
        dw = apply("conv2d", images, kernels, stride=dilation, padding=(0, 0), dilation=stride, groups=groups)
    return ops.transpose(dw, (1, 0, 2, 3))


def _conv2d_vjp(g: Tensor, out: Tensor, xs: tuple, *, stride: tuple, padding: tuple, dilation: tuple,
                groups: int) -> tuple:
    x, w = xs
    return (_conv2d_input_grad(g, w, x.shape, stride, padding, dilation, groups),
            _conv2d_weight_grad(g, x, w.shape, stride, padding, dilation, groups))


def _max_pool2d_vjp(g: Tensor, out: Tensor, xs: tuple, **attrs: Any) -> tuple:
    return (apply("max_pool2d_grad", xs[0], g, **attrs),)


def _max_pool2d_grad_vjp(g: Tensor, out: Tensor, xs: tuple, **attrs: Any) -> tuple:
    # Linear in the cotangent operand; the argmax positions are piecewise constant in x.
    return None, apply("max_pool2d_select", xs[0], g, **attrs)


def _max_pool2d_select_vjp(g: Tensor, out: Tensor, xs: tuple, **attrs: Any) -> tuple:
    return None, apply("max_pool2d_grad", xs[0], g, **attrs)


POOL_ATTRS = ("kernel", "stride", "padding")

register(OpDef(
    "conv2d", arity=2, attrs=("stride", "padding", "dilation", "groups"), infer=_infer_conv2d,
    reference=_conv2d_ref, vjp=_conv2d_vjp, kind="other",
    doc="2-d cross-correlation of x (N,C,H,W) with w (O,C/groups,kH,kW), PyTorch semantics.",
))
register(OpDef(
    "max_pool2d", arity=1, attrs=POOL_ATTRS, infer=_infer_max_pool2d, reference=_max_pool2d_ref,
    vjp=_max_pool2d_vjp, kind="other", doc="Window maximum over NCHW images; padding is -inf.",
))
register(OpDef(
    "max_pool2d_grad", arity=2, attrs=POOL_ATTRS, infer=_infer_max_pool2d_grad, reference=_max_pool2d_grad_ref,
    vjp=_max_pool2d_grad_vjp, kind="other",
    doc="Scatter g to the first argmax of each window of x (overlaps accumulate).",
))
register(OpDef(
    "max_pool2d_select", arity=2, attrs=POOL_ATTRS, infer=_infer_max_pool2d_select,
    reference=_max_pool2d_select_ref, vjp=_max_pool2d_select_vjp, kind="other",
    doc="v read at the first argmax of each window of x; the transpose of max_pool2d_grad.",
))


# ------------------------------------------------------ user-facing functions
def _pair(value: Any, name: str, op: str) -> tuple[int, int]:
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2 or not all(_is_int(v) for v in items):
        raise ShapeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    return int(items[0]), int(items[1])


def _image(x: Any, op: str) -> Tensor:
    import compiler.ops as ops

    (tensor,) = as_tensors(x, op=op)
    if tensor.ndim != 4:
        raise ShapeError(f"{op}: input must be rank 4 (N, C, H, W), got {tensor.type}")
    return tensor if tensor.dtype in FLOAT_DTYPES else ops.cast(tensor, "float32")


def conv2d(x: Any, w: Any, b: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
           groups: int = 1) -> Tensor:
    """torch.nn.functional.conv2d: x (N,C,H,W), w (O,C/groups,kH,kW), optional bias b (O,).

    stride, padding and dilation are ints or (height, width) pairs; ints become float32.
    """
    import compiler.ops as ops

    # x, w and b promote together, as for arithmetic (PyTorch would insist they match).
    x, w, *bias = as_tensors(x, w, *([] if b is None else [b]), op="conv2d")
    if x.dtype not in FLOAT_DTYPES:
        x, w, *bias = (ops.cast(t, "float32") for t in (x, w, *bias))
    if not _is_int(groups):
        raise ShapeError(f"conv2d: groups must be an int, got {groups!r}")
    out = apply("conv2d", x, w, stride=_pair(stride, "stride", "conv2d"), padding=_pair(padding, "padding", "conv2d"),
                dilation=_pair(dilation, "dilation", "conv2d"), groups=int(groups))
    if not bias:
        return out
    if bias[0].shape != (out.shape[1],):
        raise ShapeError(f"conv2d: bias must have shape ({out.shape[1]},) (one per output channel), got {bias[0].type}")
    return out + ops.reshape(bias[0], (1, out.shape[1], 1, 1))


def _pool_args(kernel_size: Any, stride: Any, padding: Any, op: str) -> dict[str, tuple[int, int]]:
    kernel = _pair(kernel_size, "kernel_size", op)
    return {"kernel": kernel, "stride": kernel if stride is None else _pair(stride, "stride", op),
            "padding": _pair(padding, "padding", op)}


def max_pool2d(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0) -> Tensor:
    """torch.nn.functional.max_pool2d (NCHW; stride defaults to kernel_size; pads with -inf).

    On ties the first maximal pixel of a window (row-major) gets the gradient.
    """
    return apply("max_pool2d", _image(x, "max_pool2d"), **_pool_args(kernel_size, stride, padding, "max_pool2d"))


def avg_pool2d(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0) -> Tensor:
    """torch.nn.functional.avg_pool2d with count_include_pad=True: zero-padded windows / (kH*kW).

    Emitted as a depthwise conv2d with a constant kernel, so it needs no op of its own.
    """
    import compiler.ops as ops

    x = _image(x, "avg_pool2d")
    attrs = _pool_args(kernel_size, stride, padding, "avg_pool2d")
    # The pool's own limits (padding at most half the kernel) before the conv's.
    try:
        _pooled_type(x.type, attrs)
    except ShapeError as exc:
        raise ShapeError(f"avg_pool2d: {exc}") from None
    kh, kw = attrs["kernel"]
    channels = x.shape[1]
    weights = ops.full((channels, 1, kh, kw), 1.0 / (kh * kw), x.dtype, graph=x.graph)
    return apply("conv2d", x, weights, stride=attrs["stride"], padding=attrs["padding"], dilation=(1, 1),
                 groups=max(channels, 1))
