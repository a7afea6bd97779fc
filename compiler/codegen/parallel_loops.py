"""Loop nests of elementwise-like kernels run on a libgomp team (parallel.region).

`split_nest(ctx, shape, strides, body)` is `with nest(...) as offsets: body(ctx, offsets)`
for kernels whose output elements are independent: when the nest moves at least
MIN_BYTES and threads are configured, one level of the (simplified) nest is cut into
contiguous chunks, each run by one thread through a `range` function that has the
kernel's own pointer arguments and noalias attributes (so LLVM vectorizes it as it does
the kernel). A level is only cut where every written operand has a non-zero stride:
chunks then write disjoint elements, and each element is computed by the same body, in
the same order over the levels below, as in serial code; a cut of the innermost
contiguous level falls on multiples of VECTOR_BLOCK elements, so no element moves
between a vectorized loop and its remainder. Results are bitwise those of serial code.
Scatter kernels (scatter_add, hence segment_sum) stay serial: measured on the 2-core VM,
neither cutting the result's rows by ownership (each thread reads every index, and the
prefetchers pull every update row into both cores) nor its columns (each thread walks
every update) came out faster than one thread for 10,000 x 64 float32 updates.

In-place kernels stay correct: an element is read and written by one thread only.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from llvmlite import ir

from compiler.codegen import parallel
from compiler.codegen.loops import I64, const, for_range, nest, simplify
from compiler.codegen.scalar import ITEMSIZE

PTR = ir.PointerType()
# A nest moving fewer bytes stays serial. Measured on the 2-core Zen 4 VM (busy with other
# work), f32 a + b over n elements (12 bytes each), 2 threads vs 1 called back to back,
# best of 21 x 50 calls: n=8K 0.84x, 16K 1.0x, 32K 1.1x, 48K 1.3x, 64K 1.4x, 128K 1.4-1.5x.
# A worker that has gone to sleep costs ~10+ µs more to wake, hence the margin.
MIN_BYTES = 1 << 19
OVERSPLIT = 4  # chunks per thread: a preempted thread holds up little work
CHUNK_BYTES = 1 << 17  # ... but no fewer bytes per chunk than this (unless that leaves one per thread)
VECTOR_BLOCK = 256  # elements: a multiple of every vector loop's step (64 x i8 lanes, unrolled x4)

Body = Callable[[Any, list[ir.Value]], None]


def _team() -> int:
    return parallel.max_threads()


def _distinct(values: Sequence[ir.Value]) -> tuple[list[ir.Value], list[int]]:
    """The distinct values (by identity) and each value's index among them."""
    unique: list[ir.Value] = []
    where: list[int] = []
    for v in values:
        for i, u in enumerate(unique):
            if u is v:
                where.append(i)
                break
        else:
            where.append(len(unique))
            unique.append(v)
    return unique, where


class _Rebind:
    """Kernel pointers passed to an outlined function, and the ctx that reads them there."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        pointers = [ctx.out.ptr] + [o.ptr for o in ctx.ins]
        if ctx.scratch is not None:
            pointers.append(ctx.scratch)
        self.pointers, self.where = _distinct(pointers)

    def function(self, name: str, extra: Sequence[ir.Type]) -> ir.Function:
        """An internal function (distinct pointers..., *extra) with the kernel's noalias facts."""
        module = self.ctx.b.module
        fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR] * len(self.pointers) + list(extra)), name=name)
        fn.linkage = "internal"
        fn.attributes.add("nounwind")
        fn.attributes.add("noinline")
        for value, arg in zip(self.pointers, fn.args):
            arg.add_attribute("captures(none)")
            if isinstance(value, ir.Argument) and "noalias" in value.attributes:
                arg.add_attribute("noalias")
        return fn

    def bind(self, b: ir.IRBuilder, args: Sequence[ir.Value], entry: ir.Block) -> Any:
        """The kernel ctx over `args` (the function's leading pointer arguments)."""
        ctx = self.ctx
        ptrs = [args[i] for i in self.where]
        out = dataclasses.replace(ctx.out, ptr=ptrs[0])
        ins = [dataclasses.replace(o, ptr=p) for o, p in zip(ctx.ins, ptrs[1:])]
        scratch = ptrs[-1] if ctx.scratch is not None else None
        return dataclasses.replace(ctx, b=b, out=out, ins=ins, scratch=scratch, entry_block=entry)


def _name(ctx: Any, stem: str) -> str:
    # not "k." first: compile.py counts the module's kernels by that prefix
    return ctx.module_builder.unique(f"part.{ctx.b.function.name}.{stem}")


def plan_split(dims: Sequence[int], strides: Sequence[Sequence[int]], written: Sequence[int], nbytes: int,
               threads: int | None = None, unit: int = VECTOR_BLOCK) -> tuple[int, int, int] | None:
    """(level, elements per chunk, chunks) of a nest over simplified `dims`, or None for serial.
    A cut of the innermost contiguous level falls on multiples of `unit` elements."""
    threads = _team() if threads is None else threads
    if threads <= 1 or nbytes < MIN_BYTES:
        return None
    wanted = max(threads, min(threads * OVERSPLIT, nbytes // CHUNK_BYTES))
    for level, n in enumerate(dims):
        if any(strides[w][level] == 0 for w in written):
            continue
        innermost_contiguous = level == len(dims) - 1 and all(s[level] in (0, 1) for s in strides)
        step = unit if innermost_contiguous else 1
        units = -(-n // step)
        if units < 2:
            continue
        per = -(-units // min(wanted, units)) * step
        return level, per, -(-n // per)
    return None


def split_nest(ctx: Any, shape: Sequence[int], strides_list: Sequence[Sequence[int]], body: Body,
               nbytes: int, written: Sequence[int] = (0,), stem: str = "part") -> None:
    """body(ctx, offsets) at every point of the nest (loops.nest), on a team when it pays.

    `written`: indices in strides_list of the operands the body stores to (every other
    operand is only read); `nbytes`: about how many bytes the nest moves. body must not
    use values of the kernel function other than through the ctx it is given."""
    dims, strides = simplify(shape, strides_list)
    plan = plan_split(dims, strides, written, nbytes) if dims else None
    if plan is None:
        with nest(ctx.b, shape, strides_list) as offsets:
            body(ctx, offsets)
        return
    level, per, chunks = plan
    n = dims[level]
    rebind = _Rebind(ctx)
    fn = rebind.function(_name(ctx, stem), [I64, I64])
    entry = fn.append_basic_block("entry")
    rb = ir.IRBuilder(entry)
    *args, start, count = fn.args
    inner = rebind.bind(rb, args, entry)
    bases: list[ir.Value | int] = [rb.mul(start, const(s[level])) if s[level] else 0 for s in strides]
    with nest(rb, dims[:level], [s[:level] for s in strides], bases=bases, merge=False) as outer:
        with for_range(rb, count, "chunk") as i:
            here = [rb.add(o, rb.mul(i, const(s[level]))) if s[level] else o for o, s in zip(outer, strides)]
            with nest(rb, dims[level + 1:], [s[level + 1:] for s in strides], bases=here, merge=False) as offsets:
                body(inner, offsets)
    rb.ret_void()

    def chunk(b: ir.IRBuilder, values: list[ir.Value], tid: ir.Value, index: ir.Value) -> None:
        first = b.mul(index, const(per))
        size = b.select(b.icmp_signed("<", index, const(chunks - 1)), const(per), const(n - (chunks - 1) * per))
        b.call(fn, list(values) + [first, size])

    team = parallel.region(ctx.b.module, f"{fn.name}.par{chunks}x{per}", len(rebind.pointers), chunks, _team(), chunk)
    ctx.b.call(team, list(rebind.pointers))


def nest_bytes(ctx: Any, size: int) -> int:
    """About the bytes a nest of `size` points over all of ctx's operands moves."""
    return size * sum(ITEMSIZE[o.dtype] for o in [ctx.out, *ctx.ins])


__all__ = ["MIN_BYTES", "split_nest", "plan_split", "nest_bytes"]
