"""Kernels of conv2d and the max-pool ops (NCHW; semantics in compiler/ops/conv.py).

Float kernels are vectorized and specialized to their static shapes and operand strides:
- conv_direct.py: register tiles along the output width (forward convs, input gradients;
  1x1 convs as matrix products over whole images);
- conv_reduce.py: dot products along the kernel width, for kernels larger than the output
  plane (the weight gradient's correlation of images with output gradients);
- conv_pool.py: max_pool2d, max_pool2d_select, and max_pool2d_grad for disjoint windows;
with conv_simd.py's masked vector loads and stores. Padding taps are never multiplied
(0 * inf would be NaN): rows are skipped, lanes masked.

The loop nests below are the fallback for what those do not cover (kernels of more than
conv_direct.MAX_TAPS taps, many distinct edge tiles, overlapping windows in
max_pool2d_grad), and all of it when PULLBACK_NAIVE_CONV=1 is set (for before/after
measurements; the compile cache does not see the variable, so use cache=False).

conv2d loop nest: for each image n and output channel o, the output plane is zeroed,
then for each input channel c of o's group and kernel tap (i, j) the plane gets
w[o, c, i, j] * (the shifted, strided input plane). The valid output rows and columns
of a tap (those reading a real, not padding, pixel) are computed with integer
arithmetic, so the inner loop has no bounds checks. When the kernel is larger than the
output plane, the order flips: each output element is a dot product over channels and
valid taps, accumulated in a register.

Max pools walk each window's real pixels (the clamped window; padding is -inf and never
wins). The window argmax is the FIRST maximal pixel in row-major order, or the first
NaN if there is one: a pixel replaces the best so far when it is greater, or when it is
NaN and the best is not. max_pool2d_grad accumulates g at that pixel window by window in
row-major order, so duplicates sum in numpy.add.at's order.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
from llvmlite import ir

from compiler.codegen import conv_direct, conv_pool, conv_reduce
from compiler.codegen import scalar as S
from compiler.codegen.conv_simd import Conv
from compiler.codegen.loops import I64, const, for_range
from compiler.codegen.lower import KernelCtx, Lowering, register


NAIVE_ENV = "PULLBACK_NAIVE_CONV"


def _smax(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.select(b.icmp_signed(">", x, y), x, y)


def _smin(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.select(b.icmp_signed("<", x, y), x, y)


def _floor_div(b: ir.IRBuilder, a: ir.Value, d: int) -> ir.Value:
    if d == 1:
        return a
    q, r = b.sdiv(a, const(d)), b.srem(a, const(d))
    adjust = b.and_(b.icmp_signed("!=", r, const(0)), b.icmp_signed("<", a, const(0)))
    return b.sub(q, b.zext(adjust, I64))


def valid_range(b: ir.IRBuilder, offset: ir.Value, stride: int, size: int, count: int) -> tuple[ir.Value, ir.Value]:
    """(first t, number of t) in [0, count) with 0 <= t*stride + offset < size."""
    first = b.sub(const(0), _floor_div(b, offset, stride))  # ceil(-offset / stride)
    first = _smax(b, first, const(0))
    last = _smin(b, _floor_div(b, b.sub(const(size - 1), offset), stride), const(count - 1))
    return first, _smax(b, b.add(b.sub(last, first), const(1)), const(0))


def _at(b: ir.IRBuilder, strides: tuple[int, ...], *indices: ir.Value | int) -> ir.Value:
    total: ir.Value = const(0)
    for index, stride in zip(indices, strides):
        if stride == 0 or (isinstance(index, int) and index == 0):
            continue
        term = const(index * stride) if isinstance(index, int) else b.mul(index, const(stride))
        total = b.add(total, term)
    return total


def naive() -> bool:
    """PULLBACK_NAIVE_CONV=1 selects the plain loop nests (before/after measurements)."""
    return os.environ.get(NAIVE_ENV, "").strip().lower() in ("1", "true", "yes")


def _emit_conv2d(ctx: KernelCtx) -> None:
    x, w = ctx.ins
    out = ctx.out
    if out.layout.size == 0:
        return
    if not naive():
        cv = Conv.of(x.shape, x.strides, w.shape, w.strides, out.shape, ctx.attrs, out.dtype)
        if cv.cg == 0:  # no input channels: an empty sum
            ctx.fill(out, ctx.scalar().const(0.0))
            return
        by_output = cv.plane < cv.kh * cv.kw
        module = conv_reduce if by_output else conv_direct
        if module.supported(cv):
            module.emit(ctx.b, cv, x.ptr, w.ptr, out.ptr)
            return
    if out.shape[2] * out.shape[3] < w.shape[2] * w.shape[3]:
        return _emit_conv2d_by_output(ctx)
    b = ctx.b
    sc = ctx.scalar()
    a = ctx.attrs
    (sh, sw), (ph, pw), (dh, dw), groups = a["stride"], a["padding"], a["dilation"], a["groups"]
    n_images, channels, height, width = x.shape
    o_count, cg, kh, kw = w.shape
    _, _, ho_count, wo_count = out.shape
    og = o_count // groups
    flags = ("contract",)
    with for_range(b, n_images, "n") as n, for_range(b, o_count, "o") as o:
        plane = _at(b, out.strides, n, o)
        with for_range(b, ho_count * wo_count, "p") as p:
            ctx.store(out, b.add(plane, p), sc.const(0.0))
        if cg == 0:
            return
        group = b.udiv(o, const(og)) if og > 1 else o
        with for_range(b, cg, "c") as c, for_range(b, kh, "ki") as i, for_range(b, kw, "kj") as j:
            channel = b.add(b.mul(group, const(cg)), c) if groups > 1 else c
            weight = ctx.load(w, _at(b, w.strides, o, c, i, j))
            x_plane = _at(b, x.strides, n, channel)
            row_off = b.sub(b.mul(i, const(dh)), const(ph))
            col_off = b.sub(b.mul(j, const(dw)), const(pw))
            row0, rows = valid_range(b, row_off, sh, height, ho_count)
            col0, cols = valid_range(b, col_off, sw, width, wo_count)
            with for_range(b, rows, "r") as r:
                ho = b.add(row0, r)
                x_row = b.add(x_plane, b.mul(b.add(b.mul(ho, const(sh)), row_off), const(x.strides[2])))
                out_row = b.add(plane, b.mul(ho, const(out.strides[2])))
                with for_range(b, cols, "q") as q:
                    wo = b.add(col0, q)
                    xi = b.add(x_row, b.mul(b.add(b.mul(wo, const(sw)), col_off), const(x.strides[3])))
                    oi = b.add(out_row, wo)
                    product = b.fmul(weight, ctx.load(x, xi), flags=flags)
                    ctx.store(out, oi, b.fadd(ctx.load(out, oi), product, flags=flags))


def _emit_conv2d_by_output(ctx: KernelCtx) -> None:
    """Output-stationary order, for kernels larger than the output plane (weight gradients):
    each output is one dot product over channels and the taps that hit real pixels."""
    x, w = ctx.ins
    out = ctx.out
    b = ctx.b
    sc = ctx.scalar()
    a = ctx.attrs
    (sh, sw), (ph, pw), (dh, dw), groups = a["stride"], a["padding"], a["dilation"], a["groups"]
    _, _, height, width = x.shape
    o_count, cg, kh, kw = w.shape
    n_images, _, ho_count, wo_count = out.shape
    og = o_count // groups
    flags = ("reassoc", "contract")
    with for_range(b, n_images, "n") as n, for_range(b, o_count, "o") as o, \
            for_range(b, ho_count, "ho") as ho, for_range(b, wo_count, "wo") as wo:
        acc = ctx.local(sc.type, sc.const(0.0), "acc")
        top = b.sub(b.mul(ho, const(sh)), const(ph))
        left = b.sub(b.mul(wo, const(sw)), const(pw))
        row0, rows = valid_range(b, top, dh, height, kh)  # taps i reading a real row top + i*dh
        col0, cols = valid_range(b, left, dw, width, kw)
        group = (b.udiv(o, const(og)) if og > 1 else o) if groups > 1 else const(0)
        if cg:
            with for_range(b, cg, "c") as c, for_range(b, rows, "r") as r:
                i = b.add(row0, r)
                channel = b.add(b.mul(group, const(cg)), c) if groups > 1 else c
                x_row = b.add(_at(b, x.strides, n, channel), b.mul(b.add(top, b.mul(i, const(dh))), const(x.strides[2])))
                w_row = _at(b, w.strides, o, c, i)
                with for_range(b, cols, "q") as q:
                    j = b.add(col0, q)
                    xi = b.add(x_row, b.mul(b.add(left, b.mul(j, const(dw))), const(x.strides[3])))
                    wi = b.add(w_row, b.mul(j, const(w.strides[3])))
                    product = b.fmul(ctx.load(x, xi), ctx.load(w, wi), flags=flags)
                    b.store(b.fadd(b.load(acc, typ=sc.type), product, flags=flags), acc)
        ctx.store(out, _at(b, out.strides, n, o, ho, wo), b.load(acc, typ=sc.type))


register(Lowering("conv2d", emit=_emit_conv2d))


# ---------------------------------------------------------------- pools
def _windows(ctx: KernelCtx, x: Any, body: Any) -> None:
    """Call body(n, c, ho, wo, rows: (first, count), cols: (first, count), origin) per window."""
    b = ctx.b
    (kh, kw), (sh, sw), (ph, pw) = ctx.attrs["kernel"], ctx.attrs["stride"], ctx.attrs["padding"]
    n_images, channels, height, width = x.shape
    ho_count = (height + 2 * ph - kh) // sh + 1
    wo_count = (width + 2 * pw - kw) // sw + 1
    with for_range(b, n_images, "n") as n, for_range(b, channels, "c") as c, \
            for_range(b, ho_count, "ho") as ho, for_range(b, wo_count, "wo") as wo:
        top = b.sub(b.mul(ho, const(sh)), const(ph))
        left = b.sub(b.mul(wo, const(sw)), const(pw))
        rows = valid_range(b, top, 1, height, kh)  # window rows i with a real pixel top + i
        cols = valid_range(b, left, 1, width, kw)
        body(n, c, ho, wo, top, left, rows, cols)


def _argmax(ctx: KernelCtx, x: Any, n: ir.Value, c: ir.Value, top: ir.Value, left: ir.Value,
            rows: tuple, cols: tuple) -> tuple[ir.Value, ir.Value]:
    """(row, column) in x of the window's first maximal (or first NaN) real pixel."""
    b = ctx.b
    sc = ctx.scalar([x.dtype])
    plane = _at(b, x.strides, n, c)
    best = ctx.local(sc.type, sc.const(-np.inf), "best")
    best_row = ctx.local(I64, b.add(top, rows[0]), "row")
    best_col = ctx.local(I64, b.add(left, cols[0]), "col")
    with for_range(b, rows[1], "i") as ri, for_range(b, cols[1], "j") as rj:
        row, col = b.add(top, b.add(rows[0], ri)), b.add(left, b.add(cols[0], rj))
        value = ctx.load(x, b.add(plane, _at(b, x.strides[2:], row, col)))
        current = b.load(best, typ=sc.type)
        greater = b.fcmp_ordered(">", value, current)
        first_nan = b.and_(b.fcmp_unordered("uno", value, value), b.fcmp_ordered("ord", current, current))
        take = b.or_(greater, first_nan)
        b.store(b.select(take, value, current), best)
        b.store(b.select(take, row, b.load(best_row, typ=I64)), best_row)
        b.store(b.select(take, col, b.load(best_col, typ=I64)), best_col)
    return b.load(best_row, typ=I64), b.load(best_col, typ=I64)


def _emit_max_pool2d(ctx: KernelCtx) -> None:
    (x,) = ctx.ins
    out = ctx.out
    if out.layout.size == 0:
        return
    b = ctx.b
    sc = ctx.scalar()

    def body(n, c, ho, wo, top, left, rows, cols):  # noqa: ANN001, ANN202
        m = ctx.local(sc.type, sc.const(-np.inf), "max")
        plane = _at(b, x.strides, n, c)
        with for_range(b, rows[1], "i") as ri, for_range(b, cols[1], "j") as rj:
            at = b.add(plane, _at(b, x.strides[2:], b.add(top, b.add(rows[0], ri)), b.add(left, b.add(cols[0], rj))))
            b.store(S.maximum(sc, b.load(m, typ=sc.type), ctx.load(x, at)), m)
        ctx.store(out, _at(b, out.strides, n, c, ho, wo), b.load(m, typ=sc.type))

    _windows(ctx, x, body)


def _emit_max_pool2d_grad(ctx: KernelCtx) -> None:
    x, g = ctx.ins
    out = ctx.out
    if out.layout.size == 0:
        return
    b = ctx.b
    sc = ctx.scalar([out.dtype])
    ctx.fill(out, sc.const(0.0))

    def body(n, c, ho, wo, top, left, rows, cols):  # noqa: ANN001, ANN202
        row, col = _argmax(ctx, x, n, c, top, left, rows, cols)
        target = _at(b, out.strides, n, c, row, col)
        value = ctx.load(g, _at(b, g.strides, n, c, ho, wo))
        ctx.store(out, target, b.fadd(ctx.load(out, target), value))

    _windows(ctx, x, body)


def _emit_max_pool2d_select(ctx: KernelCtx) -> None:
    x, v = ctx.ins
    out = ctx.out
    if out.layout.size == 0:
        return
    b = ctx.b

    def body(n, c, ho, wo, top, left, rows, cols):  # noqa: ANN001, ANN202
        row, col = _argmax(ctx, x, n, c, top, left, rows, cols)
        ctx.store(out, _at(b, out.strides, n, c, ho, wo), ctx.load(v, _at(b, v.strides, n, c, row, col)))

    _windows(ctx, x, body)


def _pool_rule(vectorized: Any, loop_nest: Any, disjoint_only: bool = False) -> Any:
    def emit(ctx: KernelCtx) -> None:
        if ctx.out.layout.size == 0:
            return
        if naive() or disjoint_only and not conv_pool.Pool.of(ctx.ins[0].shape, ctx.attrs).disjoint():
            return loop_nest(ctx)
        return vectorized(ctx)
    return emit


register(Lowering("max_pool2d", emit=_pool_rule(conv_pool.emit_max_pool2d, _emit_max_pool2d)))
register(Lowering("max_pool2d_grad", emit=_pool_rule(conv_pool.emit_max_pool2d_grad, _emit_max_pool2d_grad, True)))
register(Lowering("max_pool2d_select", emit=_pool_rule(conv_pool.emit_max_pool2d_select, _emit_max_pool2d_select)))
