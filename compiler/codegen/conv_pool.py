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

Short rows of the common 2x2/stride-2 pool (`pairs`: at most one vector of pixels, e.g.
14 -> 7) use lanes over input pixels instead: a window's two columns are a lane and its
neighbour, so a row is one plain load and one in-lane shuffle, with no de- or interleaving;
both lanes of a window compute its max or argmax. Window vectors would be half empty there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from llvmlite import ir

from compiler.codegen.conv_simd import Vec, indices, lanes_and_registers, lanes_for, runs
from compiler.codegen.loops import I32, const, for_range
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


def _walk(ctx: KernelCtx, p: Pool, vec: Vec, body: Callable[..., None], patterns: list | None = None) -> None:
    """body(n, c, ho, taps, col0, chunk pattern) for every output row and vector of columns
    (of `patterns`, one per vector: by default _chunk_patterns); col0 = vector index * lanes."""
    b = ctx.b
    vl = vec.vl
    with for_range(b, p.n, "n") as n, for_range(b, p.c, "c") as c:
        for r_first, r_count, taps in runs([p.row_taps(ho) for ho in range(p.ho)]):
            with for_range(b, r_count, "ho") as t:
                ho = vec.offset(r_first, (t, 1))
                for c_first, c_count, pattern in runs(_chunk_patterns(p, vl) if patterns is None else patterns):
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
    if pairs(p, x.strides, out.dtype):
        return _emit_pool_pairs(ctx, p)
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
    if pairs(p, x.strides, out.dtype):
        return _emit_grad_pairs(ctx, p)
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


def pairs(p: Pool, x_strides: tuple, dtype: str) -> bool:
    """Windows two pixels wide and two apart from column 0, on contiguous rows that fit one
    vector: lanes over pixels then hold whole windows, each pixel's row partner one lane
    over. (Longer rows take more pixel vectors than window vectors: not worth it.)"""
    return ((p.kw, p.sw, p.pw) == (2, 2, 0) and p.disjoint() and x_strides[3] == 1
            and 2 * p.wo <= lanes_and_registers(dtype)[0])


class _Pairs:
    """Lanes over the input pixels of whole windows (Pool pairs): lane l's window row is its
    own pixel and its partner l ^ 1, one in-lane shuffle away; no de- or interleaving."""

    def __init__(self, ctx: KernelCtx, p: Pool) -> None:
        self.p, self.b = p, ctx.b
        self.vec = Vec(ctx.b, ctx.out.dtype, lanes_for(ctx.out.dtype, 2 * p.wo))
        vl = self.vec.vl
        self.even = Vec.mask([lane % 2 == 0 for lane in range(vl)])
        self.swap = indices([lane ^ 1 for lane in range(vl)])
        # per vector: pixel lanes inside windows (an odd last column is in none)
        self.widths = [min(vl, 2 * p.wo - c0) for c0 in range(0, 2 * p.wo, vl)]

    def at(self, strides: tuple, n: Any, c: Any, ho: Any, i: int, col0: Any) -> Any:
        """Offset of pixel (row ho*sh + i - ph, column col0)."""
        return self.vec.offset((i - self.p.ph) * strides[2], (n, strides[0]), (c, strides[1]),
                               (ho, self.p.sh * strides[2]), (col0, strides[3]))

    def row(self, x: Any, n: Any, c: Any, ho: Any, i: int, col0: Any, lanes: int) -> ir.Value:
        valid = tuple(lane < lanes for lane in range(self.vec.vl))
        return self.vec.load(x.ptr, self.at(x.strides, n, c, ho, i, col0), valid, 1, fill=-np.inf)

    def window_row(self, row: ir.Value) -> list[ir.Value]:
        """Window columns 0 and 1 of every lane's window row."""
        partner = self.b.shuffle_vector(row, row, self.swap)
        return [self.b.select(self.even, row, partner), self.b.select(self.even, partner, row)]

    def window(self, col0: Any) -> Any:
        """The window column of pixel column col0 (even)."""
        return col0 // 2 if isinstance(col0, int) else self.b.udiv(col0, const(2))

    def by_window(self, v: ir.Value) -> ir.Value:
        """Window vector v (lane q: window q) spread over pixel lanes (2q and 2q + 1)."""
        return self.b.shuffle_vector(v, v, indices([lane // 2 for lane in range(self.vec.vl)]))


def _emit_pool_pairs(ctx: KernelCtx, p: Pool) -> None:
    """max_pool2d (Pool pairs): the window maximum reaches both lanes of a window by one
    more shuffle, and the even lanes are stored."""
    (x,) = ctx.ins
    out = ctx.out
    k = _Pairs(ctx, p)
    vec, vl = k.vec, k.vec.vl
    firsts = indices([2 * q for q in range(vl // 2)])

    def body(n: Any, c: Any, ho: Any, taps: tuple, col0: Any, lanes: int) -> None:
        best = None
        for i in taps:
            row = k.row(x, n, c, ho, i, col0, lanes)
            best = row if best is None else vec.maximum(best, row)
        best = vec.maximum(best, ctx.b.shuffle_vector(best, best, k.swap))
        window = k.window(col0)
        vec.store(ctx.b.shuffle_vector(best, best, firsts), out.ptr,
                  vec.offset(0, (n, p.c * p.ho * p.wo), (c, p.ho * p.wo), (ho, p.wo), (window, 1)), lanes // 2)

    _walk(ctx, p, vec, body, k.widths)


def _emit_grad_pairs(ctx: KernelCtx, p: Pool) -> None:
    """max_pool2d_grad (Pool pairs): every lane of a window finds the window's argmax and
    keeps g where that is its own pixel; rows of pixels are stored as they are."""
    x, g = ctx.ins
    out = ctx.out
    b = ctx.b
    k = _Pairs(ctx, p)
    vec, vl = k.vec, k.vec.vl
    if not p.covering():
        ctx.fill(out, ir.Constant(vec.t, 0.0))
    out_strides = (p.c * p.h * p.w, p.h * p.w, p.w, 1)
    itype = ir.VectorType(I32, vl)

    def body(n: Any, c: Any, ho: Any, taps: tuple, col0: Any, lanes: int) -> None:
        values = [v for i in taps for v in k.window_row(k.row(x, n, c, ho, i, col0, lanes))]
        best, index = values[0], ir.Constant(itype, None)
        for position, v in enumerate(values[1:], 1):  # as _argmax: first maximum, or first NaN
            take = b.and_(b.fcmp_unordered(">", v, best), b.fcmp_ordered("ord", best, best))
            best = b.select(take, v, best)
            index = b.select(take, ir.Constant(itype, [ir.Constant(I32, position)] * vl), index)
        window = k.window(col0)
        half = tuple(q < lanes // 2 for q in range(vl // 2))
        gv = vec.load(g.ptr, vec.offset(0, (n, g.strides[0]), (c, g.strides[1]), (ho, g.strides[2]),
                                        (window, g.strides[3])), half, g.strides[3])
        gv = k.by_window(gv)
        for t, i in enumerate(taps):
            mine = ir.Constant(itype, [ir.Constant(I32, 2 * t + lane % 2) for lane in range(vl)])
            hit = b.icmp_signed("==", index, mine)
            vec.store(b.select(hit, gv, vec.zeros()), out.ptr, k.at(out_strides, n, c, ho, i, col0), lanes)

    _walk(ctx, p, vec, body, k.widths)


__all__ = ["Pool", "pairs", "emit_max_pool2d", "emit_max_pool2d_grad", "emit_max_pool2d_select"]
