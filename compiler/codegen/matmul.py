"""Float matrix products specialized to their static shapes, dtypes and operand layouts.

The structure is GotoBLAS/BLIS's, written out for one problem at compile time:

    for each K block (KC deep):                  C = first block, C += the others
      for each N block (NC wide):
        pack B[K block, N block] into scratch as NR-wide slivers (when it pays)
        for each MR-row tile of A:               A's sliver (MR x KC) stays in L1
          for each NR-column sliver of B:        the block of B (KC x NC) stays in L2
            micro-kernel: C[MR x NR] (+)= A[MR x KC] @ B[KC x NR]

The micro-kernel keeps the MR x NR tile of C in MR * NV vector registers (NR = NV
vectors of the host width, e.g. <16 x float> with AVX-512) for the whole k loop,
innermost: per k it loads NV vectors of B and, per row, broadcasts one element of A
and issues NV llvm.fma calls. Broadcasts are scalar loads, so A is read in place
whatever its strides (a transposed view included) and is never packed. B is packed
when its rows are not contiguous (a transposed view such as the backward's g @ W^T:
VL x VL tiles are transposed in registers with shuffles, so no separate copy) or when
M is large enough (TUNING["pack_b_min_m"]) that a contiguous, zero-padded copy pays;
otherwise the micro-kernel reads B's rows in place (measured faster for M <= 64).
A transposed B that several products read (an RNN backward's g @ W^T, once per time
step) is instead copied once by the entry function (emit.py, `transposed_copy` here: the
same register transposes), and every product reads the copy in place.

Edges: the last row tile is a micro-kernel with fewer rows; the last column sliver
uses fewer vectors, the last of them the narrowest power of two that holds the
remaining columns (8 + 2 doubles, not 8 + 8), masked where needed (masked loads and
stores, or zero-padded packed B). Every variant is its own internal function, emitted
once per module. MR and NV come from the register count: MR * NV accumulators + NV
vectors of B + a broadcast fit in the registers, with MR preferably dividing M and NV
raised for few rows (enough independent FMA chains to hide the FMA latency).

Vector results (M = 1 or N = 1) are computed in whichever orientation of C = A @ B or
C^T = B^T @ A^T suits the layouts; N = 1 with contiguous rows of A and a contiguous
column B (x @ w) becomes dot products: vector partial sums along k, then a fixed
shuffle tree.

Batch axes: when B is shared by every batch element and A's batch and row axes merge,
the batch is folded into M (one bigger product); otherwise a loop over the batch calls
the 2-D product. Integer products keep the plain loop nest in kernels.py.

Rounding: each output is a chain of fused multiply-adds over k (K blocks chained
through C; dot products: VL * NV interleaved chains then the tree), an ordering of the
same sum numpy's BLAS computes; NaN and Inf propagate (no fast-math flags). Zero
padding only feeds lanes that are never stored.

Threads: a product of at least parallel.MIN_FLOPS flops is cut into chunks of whole row
tiles or column slivers of C (split()), about OVERSPLIT per thread, each an independent
sub-product with the whole product's plan, and run by a libgomp team (parallel.py:
GOMP_parallel, threads claim chunks from a shared counter; each thread packs B into its
own slice of the scratch). Each element is still one FMA chain over k in the same order,
so results are bitwise those of the serial kernel whatever the thread count. The team has
min(OMP_NUM_THREADS or the CPU count, compiled-for threads, chunks) threads;
PULLBACK_THREADS=1 or compile(..., parallel=False) compiles serial code.

Epilogues (a "matmul" fusion, fused.py): elementwise work on the product runs inside the
kernel. The micro-kernel of the last K block stores its tile, then runs the epilogue over
the tile (a loop nest LLVM vectorizes, C hot in L1) and stores the result in place of
the product; the first K block may start C from an accumulator operand instead of zeros
(beta = 1), read tile by tile before the tile is stored, so `out` may be that operand's
buffer. Dot products apply it to each sum before their one store. The operands travel as
extra pointer arguments, offset with the tiles, the K/N blocks and the threads' chunks;
middle K blocks reuse the plain product's micro-kernels.

PULLBACK_NAIVE_MATMUL=1 in the environment selects the old loop nest (for before/after
measurements). The compile cache does not see the variable: use PULLBACK_NO_CACHE=1 (or
compile(..., cache=False)) when switching it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from llvmlite import ir

from compiler.codegen import parallel, target
from compiler.codegen.loops import I32, I64, I8, Layout, carry_loop, const, declare, for_range, nest, simplify
from compiler.codegen.lower import KernelCtx, Operand
from compiler.codegen.scalar import ITEMSIZE, LLVM_TYPES

PTR = ir.PointerType()
I1 = ir.IntType(1)
NAIVE_ENV = "PULLBACK_NAIVE_MATMUL"
FLOAT = ("float32", "float64")

# Cache budgets (bytes): A's sliver should sit in L1 next to the B vectors streaming
# through; the block of B in (half of) a typical L2.
L1_SLIVER = 16 * 1024
L2_BLOCK = 512 * 1024


def naive() -> bool:
    """PULLBACK_NAIVE_MATMUL=1 selects the plain loop nest (before/after measurements)."""
    return os.environ.get(NAIVE_ENV, "").strip().lower() in ("1", "true", "yes")


def supported(dtype: str) -> bool:
    return dtype in FLOAT and not naive()


@functools.cache
def simd() -> tuple[int, int]:
    """(bytes per vector register, number of vector registers) of the host target."""
    host = target.host()
    features = {f[1:] for f in host["features"].split(",") if f.startswith("+")}
    if host["triple"].startswith(("x86_64", "i686", "i386")):
        if "avx512f" in features:
            return 64, 32
        if "avx" in features:
            return 32, 16
        return 16, 16
    if host["triple"].startswith(("aarch64", "arm64")):
        return 16, 32
    return 16, 16


# ---------------------------------------------------------------- the problem and its plan
@dataclass(frozen=True)
class Problem:
    """One 2-D product C[m, n] = A[m, k] @ B[k, n]; strides in elements, C row-major."""

    dtype: str
    m: int
    k: int
    n: int
    a_rs: int  # A[i, p] at i * a_rs + p * a_cs
    a_cs: int
    b_rs: int  # B[p, j] at p * b_rs + j * b_cs
    b_cs: int
    ldc: int


@dataclass(frozen=True)
class Plan:
    vl: int  # lanes per vector
    mr: int  # rows per micro-tile
    nv: int  # vectors per micro-tile row: NR = nv * vl
    kc: int  # K block depth
    nc: int  # N block width (a multiple of NR)
    pack_b: bool
    gemv: bool = False  # N = 1 with contiguous rows of A and column of B: dot products

    @property
    def nr(self) -> int:
        return self.nv * self.vl


# Tunables (tests and benchmarks may override them)
TUNING = {"nv": 2, "mr_cap": 12, "pack_b_min_m": 128}
GEMV_ROWS, GEMV_VECTORS = 4, 2  # dot products: rows per tile, vectors per row and k step


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def gemv_shaped(p: Problem) -> bool:
    return p.n == 1 and p.a_cs == 1 and p.b_rs == 1 and p.k >= simd()[0] // ITEMSIZE[p.dtype]


def plan(p: Problem) -> Plan:
    vbytes, regs = simd()
    size = ITEMSIZE[p.dtype]
    vl = vbytes // size
    if gemv_shaped(p):
        return Plan(vl, min(GEMV_ROWS, p.m), GEMV_VECTORS, p.k, 1, False, gemv=True)
    nv_max = _ceil(p.n, vl)
    nv = max(1, min(TUNING["nv"], nv_max))
    if p.m < 8:  # few rows: more vectors per row, so that enough FMA chains hide the latency
        nv = max(nv, min(nv_max, _ceil(16, p.m), 8, (regs - 1) // (p.m + 1)))
    mr_max = max(1, min(TUNING["mr_cap"], (regs - nv - 1) // nv, p.m))
    # one row-tile size if some mr >= mr_max / 2 divides M (one micro-kernel less), else balanced tiles
    divisors = [d for d in range(mr_max, (mr_max - 1) // 2, -1) if p.m % d == 0]
    mr = divisors[0] if divisors else _ceil(p.m, _ceil(p.m, mr_max))
    kc_max = max(1, L1_SLIVER // (mr * size))
    kc = _ceil(p.k, _ceil(p.k, kc_max)) if p.k else 0
    nr = nv * vl
    nc_max = max(nr, L2_BLOCK // (max(kc, 1) * size) // nr * nr)
    nc = _ceil(_ceil(p.n, _ceil(p.n, nc_max)), nr) * nr
    pack_b = (p.n > 1 and p.b_cs != 1) or (p.m >= TUNING["pack_b_min_m"] and p.n > nr)
    return Plan(vl, mr, nv, kc, min(nc, _ceil(p.n, nr) * nr), pack_b)


@dataclass(frozen=True)
class Batched:
    """The op: `problem` once per point of `batch` (element offsets by the strides)."""

    problem: Problem
    batch: tuple[int, ...]
    out_strides: tuple[int, ...]
    a_strides: tuple[int, ...]
    b_strides: tuple[int, ...]
    swapped: bool = False  # the problem computes C^T = B^T @ A^T (A is the op's b operand)


@dataclass(frozen=True)
class Epilogue:
    """Elementwise work applied to each finished tile of C (a "matmul" fusion, fused.py).

    apply(builder, c, load, initialized) returns the output element for C's element c, where
    load(k) is operand k's element at the same row and column, and `initialized` says
    whether C started from operand `init` (beta = 1: the add of that accumulator is then
    already in c). Operands are extra pointer arguments, `strides` (row, column) in
    elements over the op's output; `tag` names this epilogue's functions (one per kernel).
    """

    tag: str
    dtypes: tuple[str, ...]
    strides: tuple[tuple[int, int], ...]
    apply: Callable[[ir.IRBuilder, ir.Value, Callable[[int], ir.Value], bool], ir.Value]
    init: int | None = None


def _broadcast(layout: Layout, shape: Sequence[int]) -> tuple[int, ...]:
    lead = len(shape) - len(layout.shape)
    return (0,) * lead + tuple(0 if d == 1 and n != 1 else s
                               for d, s, n in zip(layout.shape, layout.strides, shape[lead:]))


def describe(a: Layout, b: Layout, out_shape: Sequence[int], dtype: str) -> Batched:
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    batch = tuple(out_shape[:-2])
    out_bs = tuple(Layout.contiguous(out_shape).strides[:-2])
    a_bs, b_bs = _broadcast(Layout(a.shape[:-2], a.strides[:-2]), batch), \
        _broadcast(Layout(b.shape[:-2], b.strides[:-2]), batch)
    a_rs, a_cs = a.strides[-2], a.strides[-1]
    b_rs, b_cs = b.strides[-2], b.strides[-1]
    if m == 1:
        a_rs = k  # any value: the row stride of a one-row A is never used
    if n == 1:
        b_cs = 1
    if k == 1:
        a_cs, b_rs = 1, n
    spec = Batched(Problem(dtype, m, k, n, a_rs, a_cs, b_rs, b_cs, n), batch, out_bs, a_bs, b_bs)
    if batch and all(s == 0 for s in b_bs):
        # B shared by the whole batch: fold the batch into M when A's rows then have one stride
        dims, (strides,) = simplify(batch + (m,), [a_bs + (a_rs,)])
        if len(dims) <= 1:
            rows = m
            for d in batch:
                rows *= d
            folded = Problem(dtype, rows, k, n, strides[0] if dims else a_rs, a_cs, b_rs, b_cs, n)
            spec = Batched(folded, (), (), (), ())
    p = spec.problem
    if p.m == 1 or p.n == 1:
        # a vector result is also C^T = B^T @ A^T: take the orientation with the better kernel
        q = Problem(dtype, p.n, p.k, p.m, p.b_cs, p.b_rs, p.a_cs, 1 if p.m == 1 else p.a_rs, 1 if p.m == 1 else p.m)
        if _orientation_score(q) > _orientation_score(p):
            return Batched(q, spec.batch, spec.out_strides, spec.b_strides, spec.a_strides, swapped=True)
    return spec


def _orientation_score(p: Problem) -> int:
    if gemv_shaped(p):
        return 2
    return 1 if p.n > 1 and p.b_cs == 1 else 0


# ---------------------------------------------------------------- splitting across threads
@dataclass(frozen=True)
class Split:
    """The product as `chunks` independent sub-products along rows (axis "m") or columns
    ("n") of C, `size` rows/columns each (a multiple of MR / NR), the last `last`."""

    axis: str
    size: int
    chunks: int
    last: int

    def problem(self, p: Problem, width: int) -> Problem:
        return dataclasses.replace(p, **{self.axis: width})

    def plan(self, pl: Plan, width: int) -> Plan:
        """A chunk keeps the whole product's plan (so its micro-kernels), N blocks clipped."""
        if self.axis == "n":
            return dataclasses.replace(pl, nc=min(pl.nc, _ceil(width, pl.nr) * pl.nr))
        return pl

    def steps(self, p: Problem) -> tuple[int, int, int]:
        """Element offsets of A, B and C from one chunk to the next."""
        if self.axis == "m":
            return self.size * p.a_rs, 0, self.size * p.ldc
        return 0, self.size * p.b_cs, self.size


OVERSPLIT = 4  # chunks per thread (when the product is big enough): evens out preempted threads
CHUNK_FLOPS = 1_000_000  # fewer, bigger chunks below this much work each


def split(p: Problem, pl: Plan, threads: int | None = None) -> Split | None:
    """How to run the product on up to `threads` threads (default: parallel.max_threads()),
    or None to keep it serial (one thread, or too few flops to pay for waking a team).

    Chunks are whole row tiles or column slivers, so every element of C is computed by the
    same micro-kernel step sequence as in serial code (bitwise equal results). About
    OVERSPLIT chunks per thread, so that a thread the OS preempts holds up little work. The
    axis is the one whose busiest thread gets the smallest share; on a tie columns when B
    is packed (each chunk packs only its own columns of B; row chunks would all pack B
    whole), else rows.
    """
    threads = parallel.max_threads() if threads is None else threads
    flops = 2 * p.m * p.n * p.k
    if threads <= 1 or flops < parallel.MIN_FLOPS:
        return None
    wanted = max(threads, min(threads * OVERSPLIT, flops // CHUNK_FLOPS))
    best = None
    for axis, total, unit in (("m", p.m, pl.mr), ("n", p.n, pl.nr)):
        if pl.gemv and axis == "n":
            continue
        units = _ceil(total, unit)
        if units < 2:
            continue
        per = _ceil(units, min(wanted, units))
        chunks = _ceil(units, per)
        size = per * unit
        preferred = axis == ("n" if pl.pack_b else "m")
        rank = (_ceil(chunks, threads) * size / total, not preferred)
        if best is None or rank < best[0]:
            best = (rank, Split(axis, size, chunks, total - (chunks - 1) * size))
    return best[1] if best else None


def _team(sp: Split, threads: int | None = None) -> int:
    """Most threads a split runs on (scratch slices)."""
    return min(sp.chunks, parallel.max_threads() if threads is None else threads)


def _thread_scratch(p: Problem, pl: Plan, sp: Split | None) -> int:
    """Packed-B bytes one thread needs (a multiple of 64: threads never share a cache line)."""
    if sp is not None:
        pl = sp.plan(pl, sp.size)
    return -(-pl.kc * pl.nc * ITEMSIZE[p.dtype] // 64) * 64 if pl.pack_b else 0


def scratch_bytes(a: Layout, b: Layout, out_shape: Sequence[int], dtype: str) -> int:
    """Bytes of workspace the product needs (packed B, once per thread), 0 if none."""
    if not supported(dtype) or 0 in out_shape or a.shape[-1] == 0:
        return 0
    p = describe(a, b, out_shape, dtype).problem
    pl = plan(p)
    sp = split(p, pl)
    return _thread_scratch(p, pl, sp) * (_team(sp) if sp else 1)


# ---------------------------------------------------------------- code generation
@contextlib.contextmanager
def _loop(b: ir.IRBuilder, count: int, name: str) -> Iterator[ir.Value]:
    """count > 0 iterations; no loop at all for one."""
    if count == 1:
        yield const(0)
    else:
        with for_range(b, count, name=name) as i:
            yield i


def _lin(b: ir.IRBuilder, base: int, *terms: tuple) -> ir.Value:
    """base + sum(index * scale) over (index, scale) terms as an i64, constants folded."""
    total, parts = base, []
    for index, scale in terms:
        if scale == 0:
            continue
        if isinstance(index, int):
            total += index * scale
        elif isinstance(index, ir.Constant):
            total += index.constant * scale
        else:
            parts.append(index if scale == 1 else b.mul(index, const(scale), flags=("nsw",)))
    if not parts:
        return const(total)
    value = parts[0]
    for part in parts[1:]:
        value = b.add(value, part, flags=("nsw",))
    return b.add(value, const(total), flags=("nsw",)) if total else value


def _indices(values: Sequence[int]) -> ir.Constant:
    """A shufflevector mask."""
    return ir.Constant(ir.VectorType(I32, len(values)), [ir.Constant(I32, v) for v in values])


def _k_loop(b: ir.IRBuilder, trips: int, acc: list, step: Callable) -> list:
    """acc = step(acc, k) for k in 0..trips-1; acc (lists of vectors) lives in phis, i.e.
    registers, through the loop. LLVM may unroll it."""
    widths = [len(row) for row in acc]

    def rows(flat: list) -> list:
        starts = [sum(widths[:r]) for r in range(len(widths))]
        return [flat[s:s + w] for s, w in zip(starts, widths)]

    flat = carry_loop(b, trips, [v for row in acc for v in row],
                      lambda state, k: [v for row in step(rows(state), k) for v in row])
    return rows(flat)


class Generator:
    """Emits the product's functions into one module (each variant once, by name).

    With an epilogue, `es` are its operands' (row, column) strides over this problem's C
    (transposed when the problem computes C^T). Functions that read the operands take
    them as extra arguments at the tile's corner; the others are the plain product's."""

    def __init__(self, module: ir.Module, p: Problem, pl: Plan, epi: Epilogue | None = None,
                 es: tuple[tuple[int, int], ...] = ()) -> None:
        self.module, self.p, self.pl = module, p, pl
        self.t = LLVM_TYPES[p.dtype]
        self.size = ITEMSIZE[p.dtype]
        self.suffix = f"v{pl.vl}{'f32' if p.dtype == 'float32' else 'f64'}"
        self.epi, self.es = epi, es
        self.ne = len(es) if epi is not None else 0

    # ---- small helpers
    def _declare(self, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
        return declare(self.module, name, ret, args)

    def _function(self, name: str, nargs: int, epilogue: bool = False) -> tuple[ir.Function, bool]:
        """An internal function of `nargs` pointers, then the epilogue's operands if `epilogue`."""
        existing = self.module.globals.get(name)
        if existing is not None:
            return existing, False
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR] * (nargs + (self.ne if epilogue else 0))),
                         name=name)
        fn.linkage = "internal"
        fn.attributes.add("nounwind")
        # C and the accumulator may be one buffer (in-place accumulation): neither is
        # noalias where both are arguments; the other operands are only ever read
        init = self.epi.init if epilogue and self.epi is not None else None
        for index, arg in enumerate(fn.args):
            if init is None or index not in (2, nargs + init):
                arg.add_attribute("noalias")
        return fn, True

    def _tag(self, epilogue: bool) -> str:
        return f".{self.epi.tag}" if epilogue and self.epi is not None else ""

    def _at(self, b: ir.IRBuilder, es: Sequence[ir.Value], row: ir.Value | int, col: ir.Value | int,
            row_scale: int = 1, col_scale: int = 1, row_base: int = 0, col_base: int = 0) -> list[ir.Value]:
        """The epilogue operands moved by (row_base + row * row_scale, col_base + col * col_scale) elements of C."""
        moved = []
        for k, (e, (rs, cs)) in enumerate(zip(es, self.es)):
            offset = _lin(b, row_base * rs + col_base * cs, (row, row_scale * rs), (col, col_scale * cs))
            moved.append(self._gep_typed(b, e, offset, self.epi.dtypes[k]))
        return moved

    @staticmethod
    def _gep_typed(b: ir.IRBuilder, ptr: ir.Value, offset: ir.Value, dtype: str) -> ir.Value:
        if isinstance(offset, ir.Constant) and offset.constant == 0:
            return ptr
        return b.gep(ptr, [offset], inbounds=True, source_etype=LLVM_TYPES[dtype])

    def _finish(self, b: ir.IRBuilder, c: ir.Value, es: Sequence[ir.Value], rows: int, width: int,
                initialized: bool) -> None:
        """C[rows, width] (stored) -> the epilogue's output, element by element: a loop
        nest over the tile that LLVM vectorizes like any elementwise loop."""
        epi, p = self.epi, self.p
        with nest(b, (rows, width), [(p.ldc, 1)] + list(self.es)) as offsets:
            ptr = self.gep(b, c, offsets[0])

            def load(k: int) -> ir.Value:
                dtype = epi.dtypes[k]
                return b.load(self._gep_typed(b, es[k], offsets[1 + k], dtype), typ=LLVM_TYPES[dtype])

            b.store(epi.apply(b, b.load(ptr, typ=self.t), load, initialized), ptr)

    def _init_tile(self, b: ir.IRBuilder, e: ir.Value, rows: int, vectors: list[tuple[int, int]]) -> list:
        """The accumulator's tile as C's first value (beta = 1), lanes past the edge zero."""
        rs, cs = self.es[self.epi.init]
        out = []
        for i in range(rows):
            row = []
            for v, (lanes, w) in enumerate(vectors):
                base = self.gep(b, e, i * rs + v * self.pl.vl * cs)
                if cs == 1:
                    row.append(self.vload(b, base, lanes, w))
                    continue
                vec = self.zeros(w)
                for lane in range(lanes):
                    x = b.load(self.gep(b, base, lane * cs), typ=self.t, align=self.size)
                    vec = b.insert_element(vec, x, ir.Constant(I32, lane))
                row.append(vec)
            out.append(row)
        return out

    def gep(self, b: ir.IRBuilder, ptr: ir.Value, offset: ir.Value | int) -> ir.Value:
        if isinstance(offset, int):
            offset = const(offset)
        if isinstance(offset, ir.Constant) and offset.constant == 0:
            return ptr
        return b.gep(ptr, [offset], inbounds=True, source_etype=self.t)

    def vtype(self, w: int) -> ir.VectorType:
        return ir.VectorType(self.t, w)

    def zeros(self, w: int) -> ir.Constant:
        return ir.Constant(self.vtype(w), None)

    def _suffix(self, w: int) -> str:
        return f"v{w}{'f32' if self.p.dtype == 'float32' else 'f64'}"

    def _mask(self, lanes: int, w: int) -> ir.Constant:
        return ir.Constant(ir.VectorType(I1, w), [ir.Constant(I1, int(i < lanes)) for i in range(w)])

    def vload(self, b: ir.IRBuilder, ptr: ir.Value, lanes: int, w: int | None = None) -> ir.Value:
        """A <w x T> vector from ptr, lanes past `lanes` zero (masked, never read)."""
        w = w or self.pl.vl
        vt = self.vtype(w)
        if lanes >= w:
            return b.load(ptr, typ=vt, align=self.size)
        if lanes <= 0:
            return self.zeros(w)
        mask = self._mask(lanes, w)
        fn = self._declare(f"llvm.masked.load.{self._suffix(w)}.p0", vt, [PTR, I32, mask.type, vt])
        return b.call(fn, [ptr, ir.Constant(I32, self.size), mask, self.zeros(w)])

    def vstore(self, b: ir.IRBuilder, value: ir.Value, ptr: ir.Value, lanes: int) -> None:
        """The first `lanes` lanes of value to ptr."""
        w = value.type.count
        if lanes >= w:
            b.store(value, ptr, align=self.size)
        elif lanes > 0:
            mask = self._mask(lanes, w)
            fn = self._declare(f"llvm.masked.store.{self._suffix(w)}.p0", ir.VoidType(),
                               [value.type, PTR, I32, mask.type])
            b.call(fn, [value, ptr, ir.Constant(I32, self.size), mask])

    def splat(self, b: ir.IRBuilder, x: ir.Value, w: int) -> ir.Value:
        undef = ir.Constant(self.vtype(w), ir.Undefined)
        v = b.insert_element(undef, x, ir.Constant(I32, 0))
        return b.shuffle_vector(v, undef, _indices([0] * w))

    def fma(self, b: ir.IRBuilder, x: ir.Value, y: ir.Value, z: ir.Value) -> ir.Value:
        w = x.type.count
        return b.call(self._declare(f"llvm.fma.{self._suffix(w)}", x.type, [x.type] * 3), [x, y, z])

    def _vectors(self, width: int) -> list[tuple[int, int]]:
        """(valid lanes, vector width) of the vectors covering `width` columns: full vectors,
        then the smallest power of two holding the rest (on a CPU whose FMA units are narrower
        than its registers, 8 + 2 columns cost 1.5 full-width FMAs instead of 2)."""
        vl, out = self.pl.vl, []
        while width > 0:
            lanes = min(vl, width)
            w = 1
            while w < lanes:
                w *= 2
            out.append((lanes, min(w, vl)))
            width -= lanes
        return out

    # ---- the micro-kernel
    def ukernel(self, mr: int, width: int, kc: int, accumulate: bool, init: bool = False,
                finish: bool = False) -> ir.Function:
        """C[mr, width] (+)= A[mr, kc] @ B[kc, width]: args (a, b, c) at the tile's corner, then
        the epilogue's operands there if C starts from the accumulator (`init`, instead of
        zeros) or this is the last K block (`finish`: the epilogue runs on the tile)."""
        p, pl = self.p, self.pl
        vectors = self._vectors(width)
        nv = len(vectors)
        b_ks = pl.nr if pl.pack_b else p.b_rs
        extra = init or finish
        name = (f"mm.uk.{self.suffix}.{mr}x{width}.k{kc}.a{p.a_rs}_{p.a_cs}.b{b_ks}{'p' if pl.pack_b else ''}"
                f".c{p.ldc}{'.acc' if accumulate else ''}{'.init' if init else ''}{'.fin' if finish else ''}"
                f"{self._tag(extra)}")
        fn, new = self._function(name, 3, extra)
        if not new:
            return fn
        fn.attributes.add("noinline")
        a, bp, c, *es = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        widths = [w for _, w in vectors]
        lanes = [n for n, _ in vectors]
        b_lanes = widths if pl.pack_b else lanes  # packed slivers are zero-padded to NR
        c_ptrs = [[self.gep(b, c, i * p.ldc + v * pl.vl) for v in range(nv)] for i in range(mr)]
        if init:
            acc = self._init_tile(b, es[self.epi.init], mr, vectors)
        else:
            acc = [[self.vload(b, c_ptrs[i][v], lanes[v], widths[v]) if accumulate else self.zeros(widths[v])
                    for v in range(nv)] for i in range(mr)]

        def step(acc: list, k: ir.Value | int) -> list:
            b_row = self.gep(b, bp, _lin(b, 0, (k, b_ks)))
            a_col = self.gep(b, a, _lin(b, 0, (k, p.a_cs)))
            bvec = [self.vload(b, self.gep(b, b_row, v * pl.vl), b_lanes[v], widths[v]) for v in range(nv)]
            out = []
            for i in range(mr):
                x = b.load(self.gep(b, a_col, i * p.a_rs), typ=self.t, align=self.size)
                splats = {w: self.splat(b, x, w) for w in sorted(set(widths))}
                out.append([self.fma(b, splats[widths[v]], bvec[v], acc[i][v]) for v in range(nv)])
            return out

        acc = _k_loop(b, kc, acc, step)
        for i in range(mr):
            for v in range(nv):
                self.vstore(b, acc[i][v], c_ptrs[i][v], lanes[v])
        if finish:
            self._finish(b, c, es, mr, width, self.epi.init is not None)
        b.ret_void()
        return fn

    # ---- packing B
    def _pack(self, b: ir.IRBuilder, src: ir.Value, dst: ir.Value, kc: int, nc: int) -> None:
        """B[kc, nc] at src -> dst as ceil(nc / NR) slivers [kc][NR], zero-padded."""
        p, pl = self.p, self.pl
        nr = pl.nr
        full, rem = divmod(nc, nr)
        if p.b_rs == 1 and p.b_cs != 1 and pl.vl > 1:
            self._pack_transposed(b, src, dst, kc, nc)
            return
        # rows (or general strides): a strided copy LLVM vectorizes when rows are contiguous
        if full:
            with nest(b, (full, kc, nr), [(kc * nr, nr, 1), (nr * p.b_cs, p.b_rs, p.b_cs)]) as (d, s):
                b.store(b.load(self.gep(b, src, s), typ=self.t), self.gep(b, dst, d))
        if rem:
            base = full * kc * nr
            with nest(b, (kc, nr - rem), [(nr, 1)], bases=[base + rem]) as (d,):
                b.store(ir.Constant(self.t, 0.0), self.gep(b, dst, d))
            with nest(b, (kc, rem), [(nr, 1), (p.b_rs, p.b_cs)], bases=[base, full * nr * p.b_cs]) as (d, s):
                b.store(b.load(self.gep(b, src, s), typ=self.t), self.gep(b, dst, d))

    def _pack_transposed(self, b: ir.IRBuilder, src: ir.Value, dst: ir.Value, kc: int, nc: int) -> None:
        """B's columns are contiguous (B = W^T): VL x VL tiles transposed in registers."""
        p, pl = self.p, self.pl
        vl, nr, ld = pl.vl, pl.nr, p.b_cs
        full, rem = divmod(nc, nr)
        k_tiles, k_rem = divmod(kc, vl)
        align = self.size

        def sliver(s: ir.Value, width: int) -> None:
            s_src = self.gep(b, src, _lin(b, 0, (s, nr * ld)))
            s_dst = self.gep(b, dst, _lin(b, 0, (s, kc * nr)))
            for v in range(pl.nv):
                rows = max(0, min(vl, width - v * vl))

                def tile(t: ir.Value | int, depth: int) -> None:
                    t_src = self.gep(b, s_src, _lin(b, v * vl * ld, (t, vl)))
                    t_dst = self.gep(b, s_dst, _lin(b, v * vl, (t, vl * nr)))
                    vecs = [self.vload(b, self.gep(b, t_src, r * ld), depth) if r < rows else self.zeros(vl)
                            for r in range(vl)]
                    for q, vec in enumerate(self._transpose(b, vecs)[:depth]):
                        b.store(vec, self.gep(b, t_dst, q * nr), align=align)

                if k_tiles:
                    with _loop(b, k_tiles, "t") as t:
                        tile(t, vl)
                if k_rem:
                    tile(k_tiles, k_rem)

        if full:
            with _loop(b, full, "s") as s:
                sliver(s, nr)
        if rem:
            sliver(const(full), rem)

    def _transpose(self, b: ir.IRBuilder, rows: list[ir.Value]) -> list[ir.Value]:
        return transpose_tile(b, rows)

    # ---- dot products (N = 1)
    def gemv(self) -> ir.Function:
        """C[i] = A[i, :] . B[:, 0], A's rows and B contiguous: args (a, b, c, scratch), then
        the epilogue's operands."""
        p, pl = self.p, self.pl
        epi = self.epi is not None
        name = f"mm.gemv.{self.suffix}.{p.m}x{p.k}.a{p.a_rs}.c{p.ldc}{self._tag(epi)}"
        fn, new = self._function(name, 4, epi)
        if not new:
            return fn
        a, bv, c, _, *es = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        full, rem = divmod(p.m, pl.mr)
        for base, rows, count in ([(0, pl.mr, full)] if full else []) + ([(full * pl.mr, rem, 1)] if rem else []):
            kernel = self._dots(rows)
            with _loop(b, count, "ir") as i:
                b.call(kernel, [self.gep(b, a, _lin(b, base * p.a_rs, (i, pl.mr * p.a_rs))), bv,
                                self.gep(b, c, _lin(b, base * p.ldc, (i, pl.mr * p.ldc)))]
                       + self._at(b, es, i, 0, row_scale=pl.mr, row_base=base))
        b.ret_void()
        return fn

    def _dots(self, rows: int) -> ir.Function:
        """`rows` dot products of length K: vector partial sums, then a fixed shuffle tree;
        the epilogue (if any) on each sum before its one store."""
        p, pl = self.p, self.pl
        vl, nv = pl.vl, pl.nv
        epi = self.epi is not None
        name = f"mm.dot.{self.suffix}.{rows}x{p.k}.a{p.a_rs}.c{p.ldc}{self._tag(epi)}"
        fn, new = self._function(name, 3, epi)
        if not new:
            return fn
        fn.attributes.add("noinline")
        a, bv, c, *es = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))

        def step(acc: list, k: ir.Value | int, lanes: Sequence[int] = (vl,) * nv) -> list:
            k0 = _lin(b, 0, (k, nv * vl))
            bvec = [self.vload(b, self.gep(b, bv, _lin(b, u * vl, (k0, 1))), lanes[u]) for u in range(nv)]
            return [[self.fma(b, self.vload(b, self.gep(b, a, _lin(b, r * p.a_rs + u * vl, (k0, 1))), lanes[u]),
                              bvec[u], acc[r][u]) if lanes[u] > 0 else acc[r][u] for u in range(nv)]
                    for r in range(rows)]

        trips, rem = divmod(p.k, nv * vl)
        acc = _k_loop(b, trips, [[self.zeros(vl)] * nv for _ in range(rows)], step)
        if rem:
            acc = step(acc, trips, [max(0, min(vl, rem - u * vl)) for u in range(nv)])
        for r in range(rows):
            total = acc[r][0]
            for part in acc[r][1:]:
                total = b.fadd(total, part)
            w = vl
            while w > 1:  # halve: lanes [0, w/2) + lanes [w/2, w)
                w //= 2
                lo = b.shuffle_vector(total, total, _indices(range(w)))
                hi = b.shuffle_vector(total, total, _indices(range(w, 2 * w)))
                total = b.fadd(lo, hi)
            value = b.extract_element(total, ir.Constant(I32, 0))
            if epi:  # the dot product is the whole sum: the accumulator, if any, is added here
                here = self._at(b, es, r, 0)
                value = self.epi.apply(b, value, lambda k: b.load(here[k], typ=LLVM_TYPES[self.epi.dtypes[k]]), False)
            b.store(value, self.gep(b, c, r * p.ldc), align=self.size)
        b.ret_void()
        return fn

    # ---- the 2-D product
    def gemm(self) -> ir.Function:
        """The whole 2-D product: args (a, b, c, scratch), then the epilogue's operands."""
        p, pl = self.p, self.pl
        epi = self.epi is not None
        name = (f"mm.gemm.{self.suffix}.{p.m}x{p.k}x{p.n}.a{p.a_rs}_{p.a_cs}.b{p.b_rs}_{p.b_cs}.c{p.ldc}"
                f".{pl.mr}x{pl.nv}.kc{pl.kc}.nc{pl.nc}{'.p' if pl.pack_b else ''}{self._tag(epi)}")
        fn, new = self._function(name, 4, epi)
        if not new:
            return fn
        a, bm, c, scratch, *es = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        kc, nc = pl.kc, pl.nc
        nk, k_last = divmod(p.k, kc)
        k_groups = [[0, kc, 1]] if nk else []
        if nk > 1:
            k_groups.append([kc, kc, nk - 1])
        if k_last:
            k_groups.append([nk * kc, k_last, 1])
        if epi and k_groups[-1][2] > 1:  # the epilogue follows the last K block: its own group
            base, depth, count = k_groups[-1]
            k_groups[-1][2] = count - 1
            k_groups.append([base + (count - 1) * depth, depth, 1])
        nn, n_last = divmod(p.n, nc)
        n_groups = [(0, nc, nn)] if nn else []
        if n_last:
            n_groups.append((nn * nc, n_last, 1))
        for number, (k_base, depth, k_count) in enumerate(k_groups):
            init = epi and number == 0 and self.epi.init is not None
            finish = epi and number == len(k_groups) - 1
            with _loop(b, k_count, "pc") as pc:
                k0 = _lin(b, k_base, (pc, kc))
                for n_base, width, n_count in n_groups:
                    with _loop(b, n_count, "jc") as jc:
                        j0 = _lin(b, n_base, (jc, nc))
                        b_src = self.gep(b, bm, _lin(b, 0, (k0, p.b_rs), (j0, p.b_cs)))
                        if pl.pack_b:
                            self._pack(b, b_src, scratch, depth, width)
                            b_panel = scratch
                        else:
                            b_panel = b_src
                        a_panel = self.gep(b, a, _lin(b, 0, (k0, p.a_cs)))
                        c_panel = self.gep(b, c, j0)
                        e_panel = self._at(b, es, 0, j0) if init or finish else []
                        self._tiles(b, a_panel, b_panel, c_panel, depth, width, number > 0, init, finish, e_panel)
        b.ret_void()
        return fn

    def _tiles(self, b: ir.IRBuilder, a: ir.Value, bp: ir.Value, c: ir.Value, kc: int, nc: int,
               accumulate: bool, init: bool = False, finish: bool = False, es: Sequence[ir.Value] = ()) -> None:
        p, pl = self.p, self.pl
        mr, nr = pl.mr, pl.nr
        m_full, m_rem = divmod(p.m, mr)
        n_full, n_rem = divmod(nc, nr)
        row_groups = [(0, mr, m_full)] if m_full else []
        if m_rem:
            row_groups.append((m_full * mr, m_rem, 1))
        col_groups = [(0, nr, n_full)] if n_full else []
        if n_rem:
            col_groups.append((n_full * nr, n_rem, 1))
        sliver = kc * nr if pl.pack_b else nr * p.b_cs
        for m_base, rows, m_count in row_groups:
            with _loop(b, m_count, "ir") as i:
                a_tile = self.gep(b, a, _lin(b, m_base * p.a_rs, (i, mr * p.a_rs)))
                c_row = self.gep(b, c, _lin(b, m_base * p.ldc, (i, mr * p.ldc)))
                e_row = self._at(b, es, i, 0, row_scale=mr, row_base=m_base) if es else []
                for n_base, width, n_count in col_groups:
                    kernel = self.ukernel(rows, width, kc, accumulate, init, finish)
                    with _loop(b, n_count, "jr") as j:
                        s = n_base // nr
                        e_tile = self._at(b, e_row, 0, j, col_scale=nr, col_base=n_base) if es else []
                        b.call(kernel, [a_tile, self.gep(b, bp, _lin(b, s * sliver, (j, sliver))),
                                        self.gep(b, c_row, _lin(b, s * nr, (j, nr)))] + e_tile)


def transpose_tile(b: ir.IRBuilder, rows: list[ir.Value]) -> list[ir.Value]:
    """rows[r][c] -> out[c][r] for a VL x VL tile: log2(VL) rounds of pairwise interleaving."""
    n = len(rows)
    h = n // 2
    lo = _indices([(i // 2) + (n if i % 2 else 0) for i in range(n)])
    hi = _indices([h + (i // 2) + (n if i % 2 else 0) for i in range(n)])
    while n > 1:
        new = []
        for i in range(h):
            new.append(b.shuffle_vector(rows[i], rows[i + h], lo))
            new.append(b.shuffle_vector(rows[i], rows[i + h], hi))
        rows = new
        n //= 2
    return rows


def transposed_copy(ctx: KernelCtx) -> bool:
    """out = a float matrix stored column by column (strides (1, ld), e.g. W^T), copied
    VL x VL tiles at a time, transposed in registers; the edges element by element. A
    scalar strided copy of W^T runs at a few elements per ns; this is a vector load and
    store per VL elements. False (nothing emitted) when the operand is not such a matrix."""
    (src,), out, b = ctx.ins, ctx.out, ctx.b
    if src.dtype not in FLOAT or out.dtype != src.dtype or len(out.layout.shape) != 2:
        return False
    rows, cols = out.layout.shape
    if src.layout.strides[0] != 1 or src.layout.strides[1] < rows or rows == 0 or cols == 0:
        return False
    ld = src.layout.strides[1]
    vl = simd()[0] // ITEMSIZE[src.dtype]
    t = LLVM_TYPES[src.dtype]
    vt = ir.VectorType(t, vl)
    row_tiles, col_tiles = rows // vl, cols // vl
    if row_tiles and col_tiles:
        with _loop(b, col_tiles, "tc") as tc, _loop(b, row_tiles, "tr") as tr:
            corner_src = b.gep(src.ptr, [_lin(b, 0, (tc, vl * ld), (tr, vl))], source_etype=t)
            corner_out = b.gep(out.ptr, [_lin(b, 0, (tr, vl * cols), (tc, vl))], source_etype=t)
            vecs = [b.load(b.gep(corner_src, [const(j * ld)], source_etype=t), typ=vt, align=ITEMSIZE[src.dtype])
                    for j in range(vl)]
            for q, vec in enumerate(transpose_tile(b, vecs)):
                b.store(vec, b.gep(corner_out, [const(q * cols)], source_etype=t), align=ITEMSIZE[src.dtype])
    done_rows, done_cols = row_tiles * vl, col_tiles * vl

    def scalar(shape: tuple[int, int], row0: int, col0: int) -> None:
        if 0 in shape:
            return
        with nest(b, shape, [(cols, 1), (1, ld)], bases=[row0 * cols + col0, row0 + col0 * ld]) as (o, i):
            value = b.load(b.gep(src.ptr, [i], source_etype=t), typ=t)
            b.store(value, b.gep(out.ptr, [o], source_etype=t))

    scalar((rows, cols - done_cols), 0, done_cols)  # the last columns, every row
    scalar((rows - done_rows, done_cols), done_rows, 0)  # the last rows, the tiled columns
    return True


def parallel_product(module: ir.Module, p: Problem, pl: Plan, sp: Split, epi: Epilogue | None = None,
                     es: tuple[tuple[int, int], ...] = ()) -> ir.Function:
    """(a, b, c, scratch, epilogue operands...) -> the product, its chunks run by a libgomp
    team; the thread with id t packs B into scratch slice t."""
    full = sp.chunks if sp.last == sp.size else sp.chunks - 1
    gens = [Generator(module, sp.problem(p, w), sp.plan(pl, w), epi, es) for w in (sp.size, sp.last)]
    regular, last = [g.gemv() if pl.gemv else g.gemm() for g in gens]
    per_thread = _thread_scratch(p, pl, sp)
    steps = list(sp.steps(p)) + [sp.size * (rs if sp.axis == "m" else cs) for rs, cs in es]
    gen = gens[0]
    ne = gen.ne

    def chunk(b: ir.IRBuilder, args: list, tid: ir.Value, index: ir.Value) -> None:
        a, bm, c, scratch, *rest = args
        if per_thread:
            scratch = b.gep(scratch, [_lin(b, 0, (b.sext(tid, I64), per_thread))], inbounds=True, source_etype=I8)
        moved = [a, bm, c] + rest
        dtypes = [p.dtype] * 3 + list(epi.dtypes if epi is not None else ())

        def call(fn: ir.Function) -> None:
            ptrs = [gen._gep_typed(b, ptr, _lin(b, 0, (index, step)), dtype)
                    for ptr, step, dtype in zip(moved, steps, dtypes)]
            b.call(fn, ptrs[:3] + [scratch] + ptrs[3:])

        if full == sp.chunks:
            call(regular)
            return
        with b.if_else(b.icmp_signed("<", index, const(full))) as (then, otherwise):
            with then:
                call(regular)
            with otherwise:
                call(last)

    name = (f"mm.par.{gen.suffix}.{p.m}x{p.k}x{p.n}.a{p.a_rs}_{p.a_cs}.b{p.b_rs}_{p.b_cs}.c{p.ldc}"
            f".{sp.axis}{sp.size}x{sp.chunks}.t{_team(sp)}{gen._tag(True)}")
    return parallel.region(module, name, 4 + ne, sp.chunks, _team(sp), chunk)


def emit(ctx: KernelCtx) -> None:
    """The matmul kernel body for a float dtype (supported(dtype) is true)."""
    a, bm = ctx.ins
    out = ctx.out
    if out.layout.size == 0:
        return
    if describe(a.layout, bm.layout, out.shape, out.dtype).problem.k == 0:
        ctx.fill(out, ir.Constant(LLVM_TYPES[out.dtype], 0.0))
        return
    emit_product(ctx, a, bm)


def emit_product(ctx: KernelCtx, a: Operand, bm: Operand, epi: Epilogue | None = None,
                 operands: Sequence[ir.Value] = ()) -> None:
    """out = A @ B (K > 0, out not empty), then `epi` on every finished tile when given;
    `operands` are the epilogue's pointers (out's shape and element order, by epi.strides)."""
    out = ctx.out
    spec = describe(a.layout, bm.layout, out.shape, out.dtype)
    p = spec.problem
    pl = plan(p)
    sp = split(p, pl)
    es: tuple[tuple[int, int], ...] = ()
    if epi is not None:
        if spec.batch:
            raise ValueError("a matmul epilogue needs a 2-D product")
        es = tuple((cs, rs) if spec.swapped else (rs, cs) for rs, cs in epi.strides)
    if sp is not None:
        fn = parallel_product(ctx.b.module, p, pl, sp, epi, es)
    else:
        gen = Generator(ctx.b.module, p, pl, epi, es)
        fn = gen.gemv() if pl.gemv else gen.gemm()
    scratch = ctx.scratch if ctx.scratch is not None else ir.Constant(PTR, None)
    if spec.swapped:
        a, bm = bm, a
    if not spec.batch:
        ctx.b.call(fn, [a.ptr, bm.ptr, out.ptr, scratch] + list(operands))
        return
    with nest(ctx.b, spec.batch, [spec.out_strides, spec.a_strides, spec.b_strides]) as (o, ao, bo):
        ctx.b.call(fn, [ctx.address(a, ao), ctx.address(bm, bo), ctx.address(out, o), scratch])


__all__ = ["emit", "emit_product", "Epilogue", "scratch_bytes", "supported", "naive", "plan", "describe", "split",
           "Problem", "Plan", "Split", "TUNING"]
