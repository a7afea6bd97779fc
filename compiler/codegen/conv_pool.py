"""Vectorized max pools: max_pool2d, max_pool2d_select, and max_pool2d_grad for disjoint windows.

Vectors run along the output width; lane l of a vector is output column col0 + l and
reads, for window column j, input column (col0 + l) * stride + j - padding: one load
(a wide load and a shuffle when the stride is small) per window pixel. Which window
rows are real is fixed per output row and which lanes read a real column per vector,
both at compile time; runs of equal patterns (the interior) become loops. Padding lanes
read as -inf, which never wins.

The argmax is tracked per lane like the scalar kernels do (conv.py): the best value and
its window position (row-major index) are replaced when a pixel is greater, or is NaN
while the best is not; the start is -inf at the lane's first real pixel. So the FIRST
maximal pixel, or the first NaN, is selected.

max_pool2d_grad here needs windows that never overlap (stride >= kernel on both axes,
the usual pool), so each input pixel gets at most one window's g and is written exactly
once: the window's g where it is the argmax, else 0, window columns interleaved back into
one masked store per window row. Pixels of no window are zero-filled first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from llvmlite import ir

from compiler.codegen.conv_simd import Vec, lanes_for, runs
from compiler.codegen.loops import I32, for_range
from compiler.codegen.lower import KernelCtx


@dataclass(frozen=True)
class Pool:
    n: int
    c: int
    h: int
    w: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    ho: int
    wo: int

    @staticmethod
    def of(x_shape: tuple, attrs: dict) -> "Pool":
        (kh, kw), (sh, sw), (ph, pw) = attrs["kernel"], attrs["stride"], attrs["padding"]
        n, c, h, w = x_shape
        return Pool(n, c, h, w, kh, kw, sh, sw, ph, pw, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)

    def row_taps(self, ho: int) -> tuple[int, ...]:
        return tuple(i for i in range(self.kh) if 0 <= ho * self.sh + i - self.ph < self.h)

    def col_valid(self, wo: int, j: int) -> bool:
        return wo < self.wo and 0 <= wo * self.sw + j - self.pw < self.w

    def disjoint(self) -> bool:
        return self.sh >= self.kh and self.sw >= self.kw

    def covering(self) -> bool:
        """Every input pixel is in exactly one window."""
        return (self.sh, self.sw, self.ph, self.pw) == (self.kh, self.kw, 0, 0) and \
            (self.h, self.w) == (self.ho * self.sh, self.wo * self.sw)


def _chunk_patterns(p: Pool, vl: int) -> list[tuple]:
    """Per vector of output columns: (lanes stored, per window column j: lanes reading a real pixel)."""
    out = []
    for col0 in range(0, p.wo, vl):
        masks = tuple(tuple(p.col_valid(col0 + lane, j) for lane in range(vl)) for j in range(p.kw))
        out.append((min(vl, p.wo - col0), masks))
    return out


def _walk(ctx: KernelCtx, p: Pool, vec: Vec, body: Callable[..., None]) -> None:
    """body(n, c, ho, taps, col0, chunk pattern) for every output row and vector of columns."""
    b = ctx.b
    vl = vec.vl
    with for_range(b, p.n, "n") as n, for_range(b, p.c, "c") as c:
        for r_first, r_count, taps in runs([p.row_taps(ho) for ho in range(p.ho)]):
            with for_range(b, r_count, "ho") as t:
                ho = vec.offset(r_first, (t, 1))
                for c_first, c_count, pattern in runs(_chunk_patterns(p, vl)):
                    with for_range(b, c_count, "wo") as u:
                        body(n, c, ho, taps, vec.offset(c_first * vl, (u, vl)), pattern)


def _x_offset(vec: Vec, p: Pool, strides: tuple, n: Any, c: Any, ho: Any, i: int, col0: Any, j: int) -> Any:
    """Element offset of input pixel (row ho*sh + i - ph, column col0*sw + j - pw)."""
    return vec.offset((i - p.ph) * strides[2] + (j - p.pw) * strides[3], (n, strides[0]), (c, strides[1]),
                      (ho, p.sh * strides[2]), (col0, p.sw * strides[3]))


def _window_row(vec: Vec, p: Pool, x: Any, at: Any, masks: tuple) -> list[ir.Value]:
    """The kw vectors of one window row (padding lanes -inf); `at` is the offset of tap j = 0."""
    if x.strides[3] == 1:
        return vec.load_taps(x.ptr, at, p.sw, masks, fill=-np.inf)
    return [vec.load(x.ptr, vec.offset(at, (j, x.strides[3])), masks[j], p.sw * x.strides[3], fill=-np.inf)
            for j in range(p.kw)]


def _argmax(vec: Vec, p: Pool, x: Any, taps: tuple, pattern: tuple, at: Callable[[int, int], Any]) -> ir.Value:
    """<vl x i32> of each lane's window position i * kw + j (first max or first NaN)."""
    b, vl = vec.b, vec.vl
    masks = pattern[1]
    first = []
    for lane in range(vl):
        real = [i * p.kw + j for i in taps for j in range(p.kw) if masks[j][lane]]
        first.append(real[0] if real else 0)
    index = ir.Constant(ir.VectorType(I32, vl), [ir.Constant(I32, v) for v in first])
    best = vec.full(-np.inf)
    for i in taps:
        row = _window_row(vec, p, x, at(i, 0), masks)
        for j in range(p.kw):
            if not any(masks[j]):
                continue
            v = row[j]
            # v > best, or v is the first NaN: unordered-or-greater while best is not NaN
            take = b.and_(b.fcmp_unordered(">", v, best), b.fcmp_ordered("ord", best, best))
            best = b.select(take, v, best)
            index = b.select(take, ir.Constant(index.type, [ir.Constant(I32, i * p.kw + j)] * vl), index)
    return index


def emit_max_pool2d(ctx: KernelCtx) -> None:
    (x,) = ctx.ins
    out = ctx.out
    p = Pool.of(x.shape, ctx.attrs)
    vec = Vec(ctx.b, out.dtype, lanes_for(out.dtype, p.wo))

    def body(n: Any, c: Any, ho: Any, taps: tuple, col0: Any, pattern: tuple) -> None:
        lanes, masks = pattern
        best = vec.full(-np.inf)
        for i in taps:
            first = _x_offset(vec, p, x.strides, n, c, ho, i, col0, 0)
            for j, value in enumerate(_window_row(vec, p, x, first, masks)):
                if any(masks[j]):
                    best = vec.maximum(best, value)
        vec.store(best, out.ptr, vec.offset(0, (n, p.c * p.ho * p.wo), (c, p.ho * p.wo), (ho, p.wo), (col0, 1)), lanes)

    _walk(ctx, p, vec, body)


def emit_max_pool2d_select(ctx: KernelCtx) -> None:
    x, v = ctx.ins
    out = ctx.out
    p = Pool.of(x.shape, ctx.attrs)
    vec = Vec(ctx.b, out.dtype, lanes_for(out.dtype, p.wo))
    b = ctx.b

    def body(n: Any, c: Any, ho: Any, taps: tuple, col0: Any, pattern: tuple) -> None:
        lanes, masks = pattern
        index = _argmax(vec, p, x, taps, pattern, lambda i, j: _x_offset(vec, p, x.strides, n, c, ho, i, col0, j))
        picked = vec.zeros()
        for i in taps:
            for j in range(p.kw):
                if any(masks[j]):
                    value = vec.load(v.ptr, _x_offset(vec, p, v.strides, n, c, ho, i, col0, j), masks[j],
                                     p.sw * v.strides[3])
                    hit = b.icmp_signed("==", index, ir.Constant(index.type, [ir.Constant(I32, i * p.kw + j)] * vec.vl))
                    picked = b.select(hit, value, picked)
        vec.store(picked, out.ptr, vec.offset(0, (n, p.c * p.ho * p.wo), (c, p.ho * p.wo), (ho, p.wo), (col0, 1)),
                  lanes)

    _walk(ctx, p, vec, body)


def emit_max_pool2d_grad(ctx: KernelCtx) -> None:
    """Disjoint windows only (Pool.disjoint)."""
    x, g = ctx.ins
    out = ctx.out
    p = Pool.of(x.shape, ctx.attrs)
    vec = Vec(ctx.b, out.dtype, lanes_for(out.dtype, p.wo))
    b = ctx.b
    if not p.covering():
        ctx.fill(out, ir.Constant(vec.t, 0.0))
    out_strides = (p.c * p.h * p.w, p.h * p.w, p.w, 1)

    def body(n: Any, c: Any, ho: Any, taps: tuple, col0: Any, pattern: tuple) -> None:
        lanes, masks = pattern
        index = _argmax(vec, p, x, taps, pattern, lambda i, j: _x_offset(vec, p, x.strides, n, c, ho, i, col0, j))
        gv = vec.load(g.ptr, vec.offset(0, (n, g.strides[0]), (c, g.strides[1]), (ho, g.strides[2]),
                                        (col0, g.strides[3])),
                      tuple(lane < lanes for lane in range(vec.vl)), g.strides[3])
        for i in taps:
            values = []
            for j in range(p.kw):
                hit = b.icmp_signed("==", index, ir.Constant(index.type, [ir.Constant(I32, i * p.kw + j)] * vec.vl))
                values.append(b.select(hit, gv, vec.zeros()))
            vec.store_interleaved(values, out.ptr, _x_offset(vec, p, out_strides, n, c, ho, i, col0, 0), p.sw,
                                  masks)

    _walk(ctx, p, vec, body)


__all__ = ["Pool", "emit_max_pool2d", "emit_max_pool2d_grad", "emit_max_pool2d_select"]
