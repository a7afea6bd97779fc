"""conv2d as register tiles of output rows (the forward convolution and the input gradient).

The output is cut into tiles of OB output channels (of one group) x HB output rows x WV
vectors along the output width. A tile's OB*HB*WV vector accumulators stay in registers
while a loop runs over the group's input channels; per channel every kernel tap (i, j) is
unrolled: OB weights are broadcast, and each of the tile's x vectors (the input row that
tap reads for an output row, shifted by the tap column) feeds OB fused multiply-adds.
Then the tile is stored once: the output is never zero-filled or read back.

Edges are decided at compile time. Which taps of a tile row read a real (not padding)
input row, and which lanes of a vector read a real column, follow from the tile's
position; equal patterns (all of the interior) share one tile function, called from a
loop, and the others (the borders) get their own. A padding tap is skipped (rows) or
masked out (lanes: the load does not read it and the broadcast weight is zeroed there,
so the lane adds exactly +0), never multiplied by the weight: 0 * inf would be NaN.

A 1x1 unstrided, unpadded conv reads each image as one row of H*W pixels (Conv.
flat_pointwise), which is a matrix product with full vectors. Lanes read x with stride
stride[1] * x.strides[3] (wide loads and a shuffle for small strides).
"""
from __future__ import annotations

from typing import Any

from llvmlite import ir

from compiler.codegen.conv_simd import (Conv, Vec, carry_loop, lanes_and_registers, lanes_for, run_items, runs,
                                          tile_function, variant_name)
from compiler.codegen.loops import const, for_range

MAX_TAPS = 64  # kernels with more taps than this use the plain loop nest (code size)
MAX_ACC = 28
MAX_UNROLLED = 1024  # multiply-adds per input channel in a tile function before kernel rows loop
MAX_TILE_KINDS = 48  # distinct edge patterns (row kinds x column kinds); more uses the loop nest


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def plan(cv: Conv) -> tuple[int, int, int]:
    """(OB, HB, WV) by a cost model: multiply-adds are fixed by the problem, so it weighs
    the loads (weights per tile and channel, x rows per tile) and per-tile overhead, under
    the register budget: the accumulators, OB broadcast weights, and one tap row's x
    vectors (reused by the next tap row)."""
    _, regs = lanes_and_registers(cv.dtype)
    vl = lanes_for(cv.dtype, cv.wo)
    chunks = _ceil(cv.wo, vl)
    best: tuple[float, tuple[int, int, int]] | None = None
    fmas = cv.n * cv.o * cv.cg * cv.kh * cv.kw * cv.ho * chunks
    budget = min(MAX_ACC, regs - 3)
    for ob in range(1, min(cv.og, budget) + 1):
        for wv in range(1, min(chunks, budget // ob) + 1):
            for hb in range(1, min(cv.ho, budget // (ob * wv)) + 1):
                if (ob + 1) * wv * hb + ob + 1 > regs:
                    continue
                tiles = cv.n * cv.groups * _ceil(cv.og, ob) * _ceil(cv.ho, hb) * _ceil(chunks, wv)
                if row_loop(cv, ob * hb * wv):  # each kernel row loads its own x vectors
                    rows = hb * cv.kh
                else:  # unrolled kernel rows share the x rows they have in common
                    rows = len({r * cv.sh + i * cv.dh for r in range(hb) for i in range(cv.kh)})
                x_loads = tiles * cv.cg * rows * cv.kw * wv
                w_loads = tiles * cv.cg * cv.kh * cv.kw * ob
                cost = fmas + 0.5 * (x_loads + w_loads) + tiles * (ob * hb * wv + 30)
                if cv.og % ob:  # a partial channel block doubles the tile functions (compile time)
                    cost *= 1.03
                if best is None or cost < best[0]:
                    best = (cost, (ob, hb, wv))
    assert best is not None
    return best[1]


def row_loop(cv: Conv, accumulators: int) -> bool:
    """Loop over kernel rows (rather than unroll them) in tiles whose rows all read real
    image rows: for big kernels, where unrolled code would be large and slow to compile."""
    return cv.kh > 1 and cv.kh * cv.kw * accumulators > MAX_UNROLLED


def _row_pattern(cv: Conv, row0: int, rows: int) -> tuple[tuple[bool, ...], ...]:
    return tuple(tuple(cv.row_valid(row0 + r, i) for i in range(cv.kh)) for r in range(rows))


def _col_pattern(cv: Conv, col0: int, vectors: int, vl: int) -> tuple:
    """Per vector: (lanes stored, per tap j: (lanes loaded, lanes accumulated))."""
    out = []
    for v in range(vectors):
        cols = [col0 + v * vl + lane for lane in range(vl)]
        taps = []
        for j in range(cv.kw):
            load = tuple(c < cv.wo and cv.col_valid(c, j) for c in cols)
            keep = tuple(c >= cv.wo or cv.col_valid(c, j) for c in cols)
            taps.append((load, keep))
        out.append((min(vl, cv.wo - cols[0]), tuple(taps)))
    return tuple(out)


def _tile(module: ir.Module, cv: Conv, ob: int, rows: tuple, cols: tuple) -> ir.Function:
    """tile(x, w, out, row0, col0): out[o, row0 + r, col0 + ...] for OB channels from x at
    (image, group) and w at the block's first output channel."""
    fn, new = tile_function(module, "conv.tile", cv, ob, rows, cols)
    if not new:
        return fn
    x, w, out, row0, col0 = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    vec = Vec(b, cv.dtype, lanes_for(cv.dtype, cv.wo))
    vl = vec.vl
    xs, ws = cv.xs, cv.ws
    x_base = vec.offset(0, (row0, cv.sh * xs[2]), (col0, cv.sw * xs[3]))
    lane_stride = cv.sw * xs[3]
    nrows, nvec = len(rows), len(cols)
    looped = row_loop(cv, ob * nrows * nvec) and all(all(taps) for taps in rows)

    def index(o: int, r: int, v: int) -> int:
        return (o * nrows + r) * nvec + v

    def tap_row(acc: list, xc: ir.Value | int, wc: ir.Value | int, i: ir.Value | int, j: int, live: list,
                loaded: dict) -> None:
        """Kernel tap (i, j) into the accumulators of the tile rows `live`; x vectors by
        (row, vector) in `loaded`, shared with the other taps of column j."""
        weights = [vec.splat(vec.scalar(w, vec.offset(wc, (o, ws[0]), (i, ws[2]), (j, ws[3])))) for o in range(ob)]
        for v in range(nvec):
            load, keep = cols[v][1][j]
            if not any(load):
                continue
            masked = [vec.keep(weight, keep) for weight in weights]
            for r in live:
                row = vec.offset(r * cv.sh - cv.ph, (i, cv.dh))
                key = (row if isinstance(row, int) else (r, "i"), v)
                if key not in loaded:
                    at = vec.offset(xc, (row, xs[2]), (v * vl * cv.sw + j * cv.dw - cv.pw, xs[3]))
                    loaded[key] = vec.load(x, at, load, lane_stride)
                for o in range(ob):
                    k = index(o, r, v)
                    acc[k] = vec.fma(masked[o], loaded[key], acc[k])

    def channel(acc: list, c: ir.Value | int) -> list:
        acc = list(acc)
        xc = vec.offset(x_base, (c, xs[1]))
        wc = vec.offset(0, (c, ws[1]))
        if looped:
            def kernel_row(state: list, i: ir.Value | int) -> list:
                state = list(state)
                for j in range(cv.kw):
                    tap_row(state, xc, wc, i, j, list(range(nrows)), {})
                return state

            return carry_loop(b, cv.kh, acc, kernel_row)
        # tap columns outermost: the x vectors one tap row loads are the next tap row's
        # (shifted by a row), so those stay live across kernel rows, not across columns
        for j in range(cv.kw):
            loaded: dict = {}
            for i in range(cv.kh):
                live = [r for r in range(nrows) if rows[r][i]]
                if live:
                    tap_row(acc, xc, wc, i, j, live, loaded)
        return acc

    acc = carry_loop(b, cv.cg, [vec.zeros()] * (ob * nrows * nvec), channel)
    out_base = vec.offset(0, (row0, cv.wo), (col0, 1))
    for o in range(ob):
        for r in range(nrows):
            for v in range(nvec):
                at = vec.offset(out_base, (o * cv.plane + r * cv.wo + v * vl, 1))
                vec.store(acc[index(o, r, v)], out, at, cols[v][0])
    b.ret_void()
    return fn


def _row_tiles(cv: Conv, hb: int, looped: bool) -> list[tuple[int, tuple]]:
    """(first row, pattern) of each row tile. With kernel-row loops, the border rows (some
    tap reads padding) are tiles of their own, so that every other tile loops."""
    if not looped:
        return [(r0, _row_pattern(cv, r0, min(hb, cv.ho - r0))) for r0 in range(0, cv.ho, hb)]
    inside = [r for r in range(cv.ho) if all(cv.row_valid(r, i) for i in range(cv.kh))]
    bounds = [0, inside[0], inside[-1] + 1, cv.ho] if inside else [0, cv.ho]
    tiles = []
    for start, stop in zip(bounds, bounds[1:]):
        tiles += [(r0, _row_pattern(cv, r0, min(hb, stop - r0))) for r0 in range(start, stop, hb)]
    return tiles


def _layout(cv: Conv) -> tuple:
    """(OB, HB, WV, lanes, row tiles (first row, pattern), column tile patterns) of a
    (flattened) conv."""
    ob, hb, wv = plan(cv)
    vl = lanes_for(cv.dtype, cv.wo)
    rows = _row_tiles(cv, hb, row_loop(cv, ob * hb * wv))
    cols = [_col_pattern(cv, c0, min(wv, _ceil(cv.wo - c0, vl)), vl) for c0 in range(0, cv.wo, wv * vl)]
    return ob, hb, wv, vl, rows, cols


def supported(cv: Conv) -> bool:
    """Few enough taps and distinct edge tiles (each is a function) for code size."""
    cv = cv.flat_pointwise()
    if cv.kh * cv.kw > MAX_TAPS or cv.cg == 0:
        return False
    *_, rows, cols = _layout(cv)
    return len({pattern for _, pattern in rows}) * len(set(cols)) <= MAX_TILE_KINDS


def emit(b: ir.IRBuilder, cv: Conv, x: ir.Value, w: ir.Value, out: ir.Value) -> None:
    """The kernel body: out (contiguous) = conv2d(x, w) by register tiles. The work items are
    (image, group, block of output channels), run by threads when the conv is big."""
    cv = cv.flat_pointwise()
    ob, hb, wv, vl, row_tiles, col_tiles = _layout(cv)
    span = wv * vl
    full, rest = divmod(cv.og, ob)
    blocks = full + (1 if rest else 0)

    def item(ib: ir.IRBuilder, args: list, index: ir.Value) -> None:
        xp, wp, op = args
        vec = Vec(ib, cv.dtype, vl)
        n = ib.udiv(index, const(cv.groups * blocks))
        g = ib.urem(ib.udiv(index, const(blocks)), const(cv.groups))
        blk = ib.urem(index, const(blocks))
        o0 = vec.offset(0, (g, cv.og), (blk, ob))
        x_ng = vec.at(xp, vec.offset(0, (n, cv.xs[0]), (g, cv.x_group)))
        w_o = vec.at(wp, vec.offset(0, (o0, cv.ws[0])))
        out_o = vec.at(op, vec.offset(0, (n, cv.o * cv.plane), (o0, cv.plane)))
        if not rest:
            _tiles(ib, cv, ob, row_tiles, col_tiles, hb, span, x_ng, w_o, out_o)
            return
        with ib.if_else(ib.icmp_unsigned("<", blk, const(full))) as (whole, last):
            with whole:
                if full:
                    _tiles(ib, cv, ob, row_tiles, col_tiles, hb, span, x_ng, w_o, out_o)
            with last:
                _tiles(ib, cv, rest, row_tiles, col_tiles, hb, span, x_ng, w_o, out_o)

    run_items(b, variant_name("conv.direct", cv, ob, hb, wv), cv.n * cv.groups * blocks, cv.flops, [x, w, out], item)


def _tiles(b: ir.IRBuilder, cv: Conv, ob: int, row_tiles: list, col_tiles: list, hb: int, span: int,
           x: ir.Value, w: ir.Value, out: ir.Value) -> None:
    module: Any = b.module
    for r_first, r_count, r_pattern in runs([pattern for _, pattern in row_tiles]):
        start = row_tiles[r_first][0]  # equal patterns have equal heights: the tiles of a run are hb apart
        with for_range(b, r_count, "rt") as rt:
            row0 = b.add(b.mul(rt, const(hb)), const(start)) if r_count > 1 else const(start)
            for c_first, c_count, c_pattern in runs(col_tiles):
                with for_range(b, c_count, "ct") as ct:
                    col0 = b.mul(b.add(ct, const(c_first)), const(span)) if c_count > 1 else const(c_first * span)
                    b.call(_tile(module, cv, ob, r_pattern, c_pattern), [x, w, out, row0, col0])


__all__ = ["emit", "plan", "supported"]
