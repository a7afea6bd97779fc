"""Vector building blocks of the convolution and pooling kernels (conv_direct.py,
conv_reduce.py, conv_pool.py).

Everything here works on static lane masks: the kernels know at compile time which lanes
of a vector read a real pixel (not padding, not past the end of a row), so a mask is a
tuple of bools and becomes an LLVM constant. A lane outside its mask is never read from
memory (masked loads) and never written (masked stores). In a multiply-add both factors
of such a lane are zero (the loaded one by the masked load, the other by Vec.keep), so it
adds exactly +0 and the padding tap stays out of the sum: 0 * inf would be NaN.

Threads: run_items splits a kernel into independent items (disjoint outputs) and, for
big kernels, runs chunks of them on a libgomp team (parallel.py), bitwise like serial code.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from llvmlite import ir

from compiler.codegen import matmul, parallel
from compiler.codegen.loops import I1, I32, I64, carry_loop, const, declare, for_range
from compiler.codegen.scalar import ITEMSIZE, LLVM_TYPES

PTR = ir.PointerType()
Mask = tuple[bool, ...]
WIDE_STRIDE = 4  # lane strides up to this are one wide load + a shuffle; larger ones scalar loads


def lanes_and_registers(dtype: str) -> tuple[int, int]:
    """(lanes of one vector register for dtype, number of vector registers) of the host."""
    vbytes, regs = matmul.simd()
    return max(1, vbytes // ITEMSIZE[dtype]), regs


def lanes_for(dtype: str, extent: int) -> int:
    """Vector width for rows of `extent` elements: the host's, or the smallest power of two
    holding a shorter row (half-width vectors cost half on CPUs that split wide ones)."""
    vl = lanes_and_registers(dtype)[0]
    width = 1
    while width < min(extent, vl):
        width *= 2
    return width


def runs(patterns: Sequence[object]) -> list[tuple[int, int, object]]:
    """Consecutive equal patterns as (first index, count, pattern)."""
    out: list[tuple[int, int, object]] = []
    for index, pattern in enumerate(patterns):
        if out and out[-1][2] == pattern:
            out[-1] = (out[-1][0], out[-1][1] + 1, pattern)
        else:
            out.append((index, 1, pattern))
    return out


def indices(values: Sequence[int]) -> ir.Constant:
    """A shufflevector mask."""
    return ir.Constant(ir.VectorType(I32, len(values)), [ir.Constant(I32, v) for v in values])


@dataclass(frozen=True)
class Conv:
    """A conv2d problem with static shapes and operand strides (elements); out is contiguous."""

    dtype: str
    n: int
    channels: int
    h: int
    w: int
    o: int
    cg: int
    kh: int
    kw: int
    ho: int
    wo: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    groups: int
    xs: tuple[int, int, int, int]
    ws: tuple[int, int, int, int]
    x_group: int  # x elements from one group's first channel to the next's

    @property
    def og(self) -> int:
        return self.o // self.groups

    @property
    def plane(self) -> int:
        return self.ho * self.wo

    @property
    def flops(self) -> int:
        return 2 * self.n * self.o * self.cg * self.kh * self.kw * self.plane

    @staticmethod
    def of(x_shape: Sequence[int], x_strides: Sequence[int], w_shape: Sequence[int], w_strides: Sequence[int],
           out_shape: Sequence[int], attrs: dict, dtype: str) -> "Conv":
        (sh, sw), (ph, pw), (dh, dw), groups = attrs["stride"], attrs["padding"], attrs["dilation"], attrs["groups"]
        n, channels, h, w = x_shape
        o, cg, kh, kw = w_shape
        return Conv(dtype, n, channels, h, w, o, cg, kh, kw, out_shape[2], out_shape[3], sh, sw, ph, pw, dh, dw,
                    groups, tuple(x_strides), tuple(w_strides), cg * x_strides[1])

    def row_valid(self, out_row: int, tap: int) -> bool:
        return 0 <= out_row * self.sh + tap * self.dh - self.ph < self.h

    def col_valid(self, out_col: int, tap: int) -> bool:
        return 0 <= out_col * self.sw + tap * self.dw - self.pw < self.w

    def flat_pointwise(self) -> "Conv":
        """A 1x1, stride-1, unpadded conv whose image rows follow each other in memory, as
        one image row of H*W pixels (longer vectors, no per-row edges); else self."""
        if (self.kh, self.kw, self.sh, self.sw, self.ph, self.pw) != (1, 1, 1, 1, 0, 0) or self.h == 1:
            return self
        if self.xs[2] != self.w * self.xs[3]:
            return self
        size = self.h * self.w
        return replace(self, h=1, w=size, ho=1, wo=size, xs=(self.xs[0], self.xs[1], 0, self.xs[3]))

    def flat_full_window(self) -> "Conv":
        """A conv whose kernel covers the whole unpadded image (a 1x1 output: the weight
        gradient of a 1x1 conv) as dot products over long rows: each channel's pixels as
        one row when image rows follow each other in memory, and all of a group's channels
        as one row when the channels do too; else self."""
        if (self.ho, self.wo, self.ph, self.pw, self.kh, self.kw) != (1, 1, 0, 0, self.h, self.w):
            return self
        if self.dh != 1 and self.kh > 1 or self.dw != 1 and self.kw > 1:
            return self
        if self.h > 1 and (self.xs[2] != self.w * self.xs[3] or self.ws[2] != self.kw * self.ws[3]):
            return self
        size = self.h * self.w
        if self.cg > 1 and self.xs[1] == size * self.xs[3] and self.ws[1] == size * self.ws[3]:  # channels too
            return replace(self, cg=1, h=1, w=self.cg * size, kh=1, kw=self.cg * size, dh=1, dw=1,
                           xs=(self.xs[0], 0, 0, self.xs[3]), ws=(self.ws[0], 0, 0, self.ws[3]))
        if self.h == 1:
            return self
        return replace(self, h=1, w=size, kh=1, kw=size, dh=1, dw=1, xs=(self.xs[0], self.xs[1], 0, self.xs[3]),
                       ws=(self.ws[0], self.ws[1], 0, self.ws[3]))


class Vec:
    """Vector code of one dtype inside one function (builder `b`)."""

    def __init__(self, b: ir.IRBuilder, dtype: str, lanes: int | None = None) -> None:
        self.b = b
        self.module = b.module
        self.dtype = dtype
        self.t = LLVM_TYPES[dtype]
        self.size = ITEMSIZE[dtype]
        self.vl, self.regs = lanes_and_registers(dtype)
        self.vl = lanes or self.vl
        self.tag = "f32" if dtype == "float32" else "f64"

    # ---- declarations and constants
    def declare(self, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
        return declare(self.module, name, ret, args)

    def vtype(self, w: int | None = None) -> ir.VectorType:
        return ir.VectorType(self.t, w or self.vl)

    def zeros(self, w: int | None = None) -> ir.Constant:
        return ir.Constant(self.vtype(w), None)

    def full(self, value: float, w: int | None = None) -> ir.Constant:
        return ir.Constant(self.vtype(w), [ir.Constant(self.t, value)] * (w or self.vl))

    @staticmethod
    def mask(bits: Sequence[bool]) -> ir.Constant:
        return ir.Constant(ir.VectorType(I1, len(bits)), [ir.Constant(I1, int(bool(x))) for x in bits])

    # ---- addresses
    def at(self, ptr: ir.Value, offset: ir.Value | int) -> ir.Value:
        """ptr + offset elements. Not `inbounds`: a masked vector's first lane may lie before
        the tensor (left padding), which is fine as long as it is never accessed."""
        if isinstance(offset, int):
            if offset == 0:
                return ptr
            offset = const(offset)
        return self.b.gep(ptr, [offset], source_etype=self.t)

    def offset(self, base: ir.Value | int, *terms: tuple[ir.Value | int, int]) -> ir.Value | int:
        """base + sum(index * scale), folding constants."""
        total: ir.Value | int = base
        static = 0
        parts: list[ir.Value] = []
        if isinstance(total, int):
            static, total = total, 0
        else:
            parts.append(total)
        for index, scale in terms:
            if scale == 0:
                continue
            if isinstance(index, int):
                static += index * scale
            else:
                parts.append(index if scale == 1 else self.b.mul(index, const(scale)))
        if not parts:
            return static
        value = parts[0]
        for part in parts[1:]:
            value = self.b.add(value, part)
        return self.b.add(value, const(static)) if static else value

    # ---- memory
    def scalar(self, ptr: ir.Value, offset: ir.Value | int) -> ir.Value:
        return self.b.load(self.at(ptr, offset), typ=self.t, align=self.size)

    def splat(self, x: ir.Value, w: int | None = None) -> ir.Value:
        w = w or self.vl
        undef = ir.Constant(self.vtype(w), ir.Undefined)
        zeros = ir.Constant(ir.VectorType(I32, w), None)  # prints as zeroinitializer: short IR text
        return self.b.shuffle_vector(self.b.insert_element(undef, x, ir.Constant(I32, 0)), undef, zeros)

    def load(self, ptr: ir.Value, offset: ir.Value | int, valid: Mask, stride: int = 1,
             fill: float = 0.0) -> ir.Value:
        """A vector of len(valid) lanes: lane l = ptr[offset + l * stride] where valid[l],
        `fill` elsewhere (those addresses are never read)."""
        w = len(valid)
        if not any(valid):
            return self.full(fill, w) if fill else self.zeros(w)
        base = self.at(ptr, offset)
        if stride == 0:  # a broadcast axis
            out = self.splat(self.scalar(base, 0), w)
            return out if all(valid) else self.b.select(self.mask(valid), out, self.full(fill, w))
        if stride == 1:
            return self._contiguous(base, valid, fill)
        if 1 < stride <= WIDE_STRIDE:
            wide = [False] * (w * stride)
            for lane, ok in enumerate(valid):
                wide[lane * stride] = ok
            while wide and not wide[-1]:  # never read past the last lane we need
                wide.pop()
            span = 1
            while span < len(wide):
                span *= 2
            wide += [False] * (span - len(wide))
            vector = self._contiguous(base, tuple(wide), fill)
            # a lane's element was loaded iff the lane is valid (else it is `fill`); lanes
            # past the loaded span pick `fill` from the second shuffle operand
            picks = [lane * stride if lane * stride < span else span for lane in range(w)]
            return self.b.shuffle_vector(vector, self.full(fill, span) if fill else self.zeros(span), indices(picks))
        out = self.full(fill, w) if fill else self.zeros(w)
        for lane, ok in enumerate(valid):
            if ok:
                out = self.b.insert_element(out, self.scalar(base, lane * stride), ir.Constant(I32, lane))
        return out

    def load_taps(self, ptr: ir.Value, offset: ir.Value | int, stride: int, valid: Sequence[Mask],
                  fill: float = 0.0) -> list[ir.Value]:
        """load(ptr, offset + j, valid[j], stride, fill) for j in range(len(valid)): with a small
        stride and at most `stride` taps, one wide load that every tap shuffles its lanes from."""
        taps = len(valid)
        w = len(valid[0])
        if not 1 < stride <= WIDE_STRIDE or taps > stride:
            return [self.load(ptr, self.offset(offset, (1, j)), m, stride, fill) for j, m in enumerate(valid)]
        wide = [False] * (w * stride)
        for j, mask in enumerate(valid):
            for lane, ok in enumerate(mask):
                wide[lane * stride + j] = ok
        while wide and not wide[-1]:
            wide.pop()
        if not wide:
            return [self.full(fill, w) if fill else self.zeros(w) for _ in valid]
        span = 1
        while span < len(wide):
            span *= 2
        wide += [False] * (span - len(wide))
        vector = self._contiguous(self.at(ptr, offset), tuple(wide), fill)
        rest = self.full(fill, span) if fill else self.zeros(span)
        out = []
        for j in range(taps):  # each loaded element belongs to one (tap, lane): no selects needed
            picks = [lane * stride + j if lane * stride + j < span else span for lane in range(w)]
            out.append(self.b.shuffle_vector(vector, rest, indices(picks)))
        return out

    def _contiguous(self, base: ir.Value, valid: Mask, fill: float) -> ir.Value:
        w = len(valid)
        vt = self.vtype(w)
        if all(valid):
            return self.b.load(base, typ=vt, align=self.size)
        fn = self.declare(f"llvm.masked.load.v{w}{self.tag}.p0", vt, [PTR, I32, ir.VectorType(I1, w), vt])
        passthru = self.full(fill, w) if fill else self.zeros(w)
        return self.b.call(fn, [base, ir.Constant(I32, self.size), self.mask(valid), passthru])

    def store(self, value: ir.Value, ptr: ir.Value, offset: ir.Value | int, lanes: int) -> None:
        """The first `lanes` lanes of value to ptr + offset (contiguous)."""
        w = value.type.count
        base = self.at(ptr, offset)
        if lanes >= w:
            self.b.store(value, base, align=self.size)
        elif lanes > 0:
            mask = self.mask([i < lanes for i in range(w)])
            fn = self.declare(f"llvm.masked.store.v{w}{self.tag}.p0", ir.VoidType(),
                              [value.type, PTR, I32, mask.type])
            self.b.call(fn, [value, base, ir.Constant(I32, self.size), mask])

    def store_interleaved(self, vectors: Sequence[ir.Value], ptr: ir.Value, offset: ir.Value | int, stride: int,
                          valid: Sequence[Mask]) -> None:
        """ptr[offset + l * stride + j] = vectors[j][l] where valid[j][l] (len(vectors) <= stride)."""
        w = vectors[0].type.count
        base = self.at(ptr, offset)
        if stride > WIDE_STRIDE:
            for j, (vector, mask) in enumerate(zip(vectors, valid)):
                for lane, ok in enumerate(mask):
                    if ok:
                        self.b.store(self.b.extract_element(vector, ir.Constant(I32, lane)),
                                     self.at(base, lane * stride + j), align=self.size)
            return
        parts = list(vectors)
        while len(parts) & (len(parts) - 1) or len(parts) < 2:  # a power of two, at least 2
            parts.append(self.zeros(w))
        while len(parts) > 1:  # concatenate pairwise: part k's lane l lands at k * w + l
            width = parts[0].type.count
            parts = [self.b.shuffle_vector(parts[k], parts[k + 1], indices(range(2 * width)))
                     for k in range(0, len(parts), 2)]
        span = 1
        while span < w * stride:
            span *= 2
        picks, bits = [], []
        for position in range(span):
            lane, j = divmod(position, stride)
            inside = lane < w and j < len(vectors)
            picks.append(j * w + lane if inside else 0)
            bits.append(inside and valid[j][lane])
        while bits and not bits[-1]:
            bits.pop()
            picks.pop()
        if not bits:
            return
        width = 1
        while width < len(bits):
            width *= 2
        picks += [0] * (width - len(picks))
        bits += [False] * (width - len(bits))
        wide = self.b.shuffle_vector(parts[0], parts[0], indices(picks))
        if all(bits):
            self.b.store(wide, base, align=self.size)
            return
        mask = self.mask(bits)
        fn = self.declare(f"llvm.masked.store.v{width}{self.tag}.p0", ir.VoidType(), [wide.type, PTR, I32, mask.type])
        self.b.call(fn, [wide, base, ir.Constant(I32, self.size), mask])

    # ---- arithmetic
    def maximum(self, x: ir.Value, y: ir.Value) -> ir.Value:
        """numpy.maximum: NaN propagates."""
        fn = self.declare(f"llvm.maximum.v{x.type.count}{self.tag}", x.type, [x.type, x.type])
        return self.b.call(fn, [x, y])

    def fma(self, x: ir.Value, y: ir.Value, acc: ir.Value) -> ir.Value:
        """x * y + acc, rounded once."""
        w = x.type.count
        fn = self.declare(f"llvm.fma.v{w}{self.tag}", x.type, [x.type] * 3)
        return self.b.call(fn, [x, y, acc])

    def keep(self, x: ir.Value, lanes: Mask) -> ir.Value:
        """x with the lanes outside `lanes` zeroed. A multiplicand masked so, times an x
        vector whose padding lanes were not loaded (zero), adds exactly +0 there, even
        where x held inf or NaN: padding taps never enter a sum."""
        if all(lanes):
            return x
        return self.b.select(self.mask(lanes), x, self.zeros(x.type.count))

    def hsum(self, v: ir.Value) -> ir.Value:
        """Sum of the lanes by a fixed halving tree (deterministic order)."""
        w = v.type.count
        while w > 1:
            w //= 2
            lo = self.b.shuffle_vector(v, v, indices(range(w)))
            hi = self.b.shuffle_vector(v, v, indices(range(w, 2 * w)))
            v = self.b.fadd(lo, hi)
        return self.b.extract_element(v, ir.Constant(I32, 0))


def variant_name(prefix: str, *key: object) -> str:
    """A symbol for one specialization: the same key (shapes, blocking) gives the same name."""
    return f"{prefix}.{hashlib.sha256(repr(key).encode()).hexdigest()[:16]}"


def tile_function(module: ir.Module, prefix: str, *key: object) -> tuple[ir.Function, bool]:
    """The internal tile(x, w, out, i0, j0) function of this key (x, w, out never alias)."""
    fn, new = internal_function(module, variant_name(prefix, *key), [PTR, PTR, PTR, I64, I64])
    if new:
        for arg in fn.args[:3]:
            arg.add_attribute("noalias")
    return fn, new


def internal_function(module: ir.Module, name: str, args: Sequence[ir.Type]) -> tuple[ir.Function, bool]:
    """(function, True) for a new internal void function `name`, (existing, False) otherwise."""
    existing = module.globals.get(name)
    if existing is not None:
        return existing, False
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), list(args)), name=name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    fn.attributes.add("noinline")
    return fn, True


OVERSPLIT = 4  # chunks per thread: a preempted thread holds up little work


def run_items(b: ir.IRBuilder, name: str, items: int, flops: int, args: Sequence[ir.Value],
              item: Callable[[ir.IRBuilder, list[ir.Value], ir.Value], None]) -> None:
    """item(builder, args, index) for index in 0..items-1, items being independent pieces of
    the kernel (disjoint outputs). With at least parallel.MIN_FLOPS flops and threads to
    use, a libgomp team runs contiguous chunks of them (parallel.region); each output is
    computed by the same code either way, so results are bitwise those of serial code."""
    threads = parallel.max_threads()
    if threads <= 1 or flops < parallel.MIN_FLOPS or items < 2:
        with for_range(b, items, "item") as index:
            item(b, list(args), index)
        return
    chunks = min(items, threads * OVERSPLIT)
    per = -(-items // chunks)
    chunks = -(-items // per)

    def chunk(cb: ir.IRBuilder, values: list, tid: ir.Value, index: ir.Value) -> None:
        first = cb.mul(index, const(per))
        with for_range(cb, per, "item") as k:
            current = cb.add(first, k)
            with cb.if_then(cb.icmp_signed("<", current, const(items))):
                item(cb, values, current)

    fn = parallel.region(b.module, f"{name}.par{chunks}x{per}", len(args), chunks, threads, chunk)
    b.call(fn, list(args))


__all__ = ["Conv", "Vec", "Mask", "PTR", "I64", "run_items", "lanes_for", "lanes_and_registers", "runs", "carry_loop",
           "internal_function", "indices", "tile_function", "variant_name"]
