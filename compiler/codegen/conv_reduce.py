"""conv2d whose kernel plane is larger than its output plane: the weight gradient.

conv2d's VJP computes dw as a correlation of the images with the output gradients: the
"kernel" is a whole gradient plane and the output is (kH x kW) of the forward conv, e.g.
3x3. Each output element is then one long dot product, over channels and kernel pixels,
so here the vectors run along the kernel's width instead of the output's. A tile of NB
images x OB output channels x RB output rows x CB output columns keeps one vector
accumulator per output; a loop runs over channels and kernel rows (and vector chunks of
a kernel row), and per chunk OB kernel vectors and NB*RB*CB x vectors (the image row and
column shift each output reads) feed NB*OB*RB*CB fused multiply-adds. At the end each
accumulator is summed by a fixed shuffle tree and stored.

As in conv_direct.py, padding is resolved at compile time: for each output row of a tile
the kernel rows reading a real image row form a range, the kernel-row loop is split where
that set changes, and lanes reading a padding column are masked out (never multiplied).
A kernel covering the whole unpadded image (dw of a 1x1 conv) is one dot product over
channels and pixels (Conv.flat_full_window).
"""
from __future__ import annotations

from typing import Callable

from llvmlite import ir

from compiler.codegen.conv_simd import (Conv, Vec, carry_loop, lanes_and_registers, lanes_for, run_items, runs,
                                          tile_function, variant_name)
from compiler.codegen.loops import I64, const

MAX_TILES = 64  # distinct tile patterns (one function each); more uses the loop nest
MAX_POSITIONS = 4096  # tile positions (cases of a switch)
MAX_ACC = 24


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def plan(cv: Conv) -> tuple[int, int, int, int]:
    """(NB, OB, RB, CB): fewest loads per multiply-add under the register budget (the
    accumulators, plus the kernel vectors or the x vectors of one step, whichever are
    fewer), then fewest tiles."""
    _, regs = lanes_and_registers(cv.dtype)
    budget = min(MAX_ACC, regs - 4)
    best = None
    for nb in range(1, min(cv.n, budget) + 1):
        for ob in range(1, min(cv.og, budget // nb) + 1):
            for rb in range(1, min(cv.ho, budget // (nb * ob)) + 1):
                for cb in range(1, min(cv.wo, budget // (nb * ob * rb)) + 1):
                    x_vectors = nb * rb * cb
                    if ob * x_vectors + min(ob, x_vectors) + 2 > regs:
                        continue
                    tiles = _ceil(cv.n, nb) * _ceil(cv.og, ob) * _ceil(cv.ho, rb) * _ceil(cv.wo, cb)
                    loads = tiles * (ob + x_vectors)  # per channel, kernel row and chunk
                    rank = (loads + 2 * tiles, tiles)
                    if best is None or rank < best[0]:
                        best = (rank, (nb, ob, rb, cb))
    assert best is not None
    return best[1]


def _positions(cv: Conv, rb: int, cb: int, vl: int) -> list[tuple[int, int, tuple]]:
    """(first output row, first output column, tile pattern) of each tile position. The
    pattern (what the tile function is specialized to) is the tile's size, the runs of
    kernel rows with the same tile rows reading real image rows, and the runs of kernel
    row chunks with the same lane masks: interior positions share one."""
    out = []
    for i0 in range(0, cv.ho, rb):
        rows = min(rb, cv.ho - i0)
        row_sets = tuple(runs([tuple(r for r in range(rows) if cv.row_valid(i0 + r, p)) for p in range(cv.kh)]))
        for j0 in range(0, cv.wo, cb):
            cols = min(cb, cv.wo - j0)
            out.append((i0, j0, (rows, cols, row_sets, tuple(runs(_chunks(cv, j0, cols, vl))))))
    return out


def supported(cv: Conv) -> bool:
    cv = cv.flat_full_window()
    if cv.cg == 0:
        return False
    _, _, rb, cb = plan(cv)
    positions = _positions(cv, rb, cb, lanes_for(cv.dtype, cv.kw))
    return len(positions) <= MAX_POSITIONS and len({pattern for *_, pattern in positions}) <= MAX_TILES


def _chunks(cv: Conv, j0: int, cols: int, vl: int) -> list:
    """Per vector chunk u of a kernel row: (kernel lanes, per tile column: (x lanes, kept lanes))."""
    out = []
    for u in range(_ceil(cv.kw, vl)):
        qs = [u * vl + lane for lane in range(vl)]
        kernel = tuple(q < cv.kw for q in qs)
        per_col = tuple((tuple(q < cv.kw and cv.col_valid(j0 + cj, q) for q in qs),
                         tuple(q >= cv.kw or cv.col_valid(j0 + cj, q) for q in qs)) for cj in range(cols))
        out.append((kernel, per_col))
    return out


def _tile(module: ir.Module, cv: Conv, nb: int, ob: int, pattern: tuple) -> ir.Function:
    """tile(x, w, out, i0, j0): out[n, o, i0:i0+rows, j0:j0+cols] for NB images and OB
    output channels; x at (first image, group), w at the first output channel, out at both."""
    fn, new = tile_function(module, "conv.wtile", cv, nb, ob, pattern)
    if not new:
        return fn
    x, w, out, i0, j0 = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    vec = Vec(b, cv.dtype, lanes_for(cv.dtype, cv.kw))
    vl = vec.vl
    xs, ws = cv.xs, cv.ws
    rows, cols, row_sets, chunk_runs = pattern
    x_tile = vec.offset(0, (i0, cv.sh * xs[2]), (j0, cv.sw * xs[3]))

    def index(n: int, o: int, r: int, c: int) -> int:
        return ((n * ob + o) * rows + r) * cols + c

    def chunk(acc: list, c: ir.Value | int, p: ir.Value | int, u: ir.Value | int, pattern: tuple,
              live: tuple) -> list:
        acc = list(acc)
        kernel, per_col = pattern
        q0 = vec.offset(0, (u, vl))

        def kernel_vector(o: int) -> ir.Value:
            return vec.load(w, vec.offset(0, (o, ws[0]), (c, ws[1]), (p, ws[2]), (q0, ws[3])), kernel, ws[3])

        x_at = {}
        for n in range(nb):
            for r in live:
                row = vec.offset(r * cv.sh - cv.ph, (p, cv.dh))
                for cc in range(cols):
                    load, keep = per_col[cc]
                    if any(load):
                        at = vec.offset((cc * cv.sw - cv.pw) * xs[3] + n * xs[0], (x_tile, 1), (c, xs[1]),
                                        (row, xs[2]), (q0, cv.dw * xs[3]))
                        x_at[n, r, cc] = (at, load, keep)
        # keep whichever set is smaller live: OB kernel vectors while x streams, or the x vectors
        if ob <= len(x_at):
            kv = [kernel_vector(o) for o in range(ob)]
            for (n, r, cc), (at, load, keep) in x_at.items():
                xv = vec.load(x, at, load, cv.dw * xs[3])
                for o in range(ob):
                    k = index(n, o, r, cc)
                    acc[k] = vec.fma(vec.keep(kv[o], keep), xv, acc[k])
        else:
            loaded = {key: (vec.load(x, at, load, cv.dw * xs[3]), keep) for key, (at, load, keep) in x_at.items()}
            for o in range(ob):
                k_vector = kernel_vector(o)
                for (n, r, cc), (xv, keep) in loaded.items():
                    k = index(n, o, r, cc)
                    acc[k] = vec.fma(vec.keep(k_vector, keep), xv, acc[k])
        return acc

    def kernel_row(acc: list, c: ir.Value | int, p: ir.Value | int, live: tuple) -> list:
        for u_first, u_count, pattern in chunk_runs:
            acc = carry_loop(b, u_count, acc, lambda a, u, f=u_first, pt=pattern:
                             chunk(a, c, p, vec.offset(f, (u, 1)), pt, live))
        return acc

    def channel(acc: list, c: ir.Value | int) -> list:
        for p_first, p_count, live in row_sets:
            if live:
                acc = carry_loop(b, p_count, acc, lambda a, p, f=p_first, lv=live:
                                 kernel_row(a, c, vec.offset(f, (p, 1)), lv))
        return acc

    acc = carry_loop(b, cv.cg, [vec.zeros()] * (nb * ob * rows * cols), channel)
    out_tile = vec.offset(0, (i0, cv.wo), (j0, 1))
    for n in range(nb):
        for o in range(ob):
            for r in range(rows):
                for cc in range(cols):
                    at = vec.offset(n * cv.o * cv.plane + o * cv.plane + r * cv.wo + cc, (out_tile, 1))
                    b.store(vec.hsum(acc[index(n, o, r, cc)]), vec.at(out, at), align=vec.size)
    b.ret_void()
    return fn


def _blocks(total: int, size: int) -> tuple[int, int, int]:
    """(full blocks, size of the last partial block or 0, number of blocks)."""
    full, rest = divmod(total, size)
    return full, rest, full + (1 if rest else 0)


def _by_size(b: ir.IRBuilder, block: ir.Value, full: int, size: int, rest: int,
             body: Callable[[int], None]) -> None:
    """body(size) for the full blocks, body(rest) for the last partial one."""
    if not rest:
        body(size)
        return
    if not full:
        body(rest)
        return
    with b.if_else(b.icmp_unsigned("<", block, const(full))) as (whole, last):
        with whole:
            body(size)
        with last:
            body(rest)


def emit(b: ir.IRBuilder, cv: Conv, x: ir.Value, w: ir.Value, out: ir.Value) -> None:
    """The kernel body: out (contiguous) = conv2d(x, w) by output-stationary dot products.
    The work items are (block of images, group, block of output channels, tile position),
    run by threads when the conv is big."""
    cv = cv.flat_full_window()
    nb, ob, rb, cb = plan(cv)
    vl = lanes_for(cv.dtype, cv.kw)
    positions = _positions(cv, rb, cb, vl)
    n_full, n_rest, n_blocks = _blocks(cv.n, nb)
    o_full, o_rest, o_blocks = _blocks(cv.og, ob)
    spots = len(positions)

    def item(ib: ir.IRBuilder, args: list, index: ir.Value) -> None:
        xp, wp, op = args
        vec = Vec(ib, cv.dtype, vl)
        n_blk = ib.udiv(index, const(cv.groups * o_blocks * spots))
        g = ib.urem(ib.udiv(index, const(o_blocks * spots)), const(cv.groups))
        o_blk = ib.urem(ib.udiv(index, const(spots)), const(o_blocks))
        where = ib.urem(index, const(spots))
        n0 = vec.offset(0, (n_blk, nb))
        o0 = vec.offset(0, (g, cv.og), (o_blk, ob))
        pointers = [vec.at(xp, vec.offset(0, (n0, cv.xs[0]), (g, cv.x_group))),
                    vec.at(wp, vec.offset(0, (o0, cv.ws[0]))),
                    vec.at(op, vec.offset(0, (n0, cv.o * cv.plane), (o0, cv.plane)))]

        def calls(n_size: int, o_size: int) -> None:
            tiles = [(_tile(ib.module, cv, n_size, o_size, pattern), i0, j0) for i0, j0, pattern in positions]
            if len(tiles) == 1:
                ib.call(tiles[0][0], pointers + [const(tiles[0][1]), const(tiles[0][2])])
                return
            done = ib.append_basic_block("tile.done")
            switch = ib.switch(where, done)
            for k, (tile, i0, j0) in enumerate(tiles):
                case = ib.append_basic_block(f"tile.{k}")
                switch.add_case(ir.Constant(I64, k), case)
                ib.position_at_end(case)
                ib.call(tile, pointers + [const(i0), const(j0)])
                ib.branch(done)
            ib.position_at_end(done)

        _by_size(ib, n_blk, n_full, nb, n_rest,
                 lambda n_size: _by_size(ib, o_blk, o_full, ob, o_rest, lambda o_size: calls(n_size, o_size)))

    run_items(b, variant_name("conv.reduce", cv, nb, ob, rb, cb), n_blocks * cv.groups * o_blocks * spots, cv.flops,
              [x, w, out], item)


__all__ = ["emit", "plan", "supported"]
