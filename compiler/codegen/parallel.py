"""Parallel regions through libgomp, GCC's OpenMP runtime (no thread pool of our own).

Generated code does what GCC emits for `#pragma omp parallel`: the region's body is
outlined into an internal `void body(void *data)` whose argument points at the values it
uses (an array of pointers on the caller's stack), and the caller runs

    GOMP_parallel(body, data, num_threads, 0)

which runs `body` on a team of num_threads threads, the caller included, and returns when
all of them have finished. Each thread reads omp_get_thread_num() / omp_get_num_threads()
and claims chunks of the work from a shared counter; the chunks are fixed at compile time,
so the thread count decides only *who* computes an output element, never *how*: results
are bitwise those of serial code.

Thread count at run time: libgomp's own rules, i.e. OMP_NUM_THREADS when set (read once,
when libgomp is loaded), else the CPUs the process may run on; the team is further capped
by the number of work parts compiled in (see max_threads). With one thread (or one part)
the body is called directly and libgomp starts no threads. On a machine whose cores are
busy with other processes a team waits for descheduled workers; region() notices such
stalls and backs off to serial regions for a while (set OMP_NUM_THREADS to the free cores
to avoid the stalls altogether, as with any OpenMP program).

Compile time: PULLBACK_THREADS=N compiles code split for at most N threads (per-thread
scratch space is sized for N); PULLBACK_THREADS=1 compiles serial code that never calls
libgomp. The default is the number of CPUs this process may use (at most MAX_THREADS).
`configured(False)` (what compile(..., parallel=False) uses) forces serial code.

Users: matmul.py (row tiles / column slivers of a product), conv_simd.py, and
parallel_loops.py (elementwise, fused loop/reduce/siblings and gather kernels: one level
of their loop nest cut into chunks).

An artifact that calls libgomp lists it in manifest["extra"]["needs"] (see needs()); the
runtime loads it with RTLD_GLOBAL before linking the object (runtime/loader.py).
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Callable, Iterator, Sequence

from llvmlite import ir

from compiler.codegen.loops import I32, I64, const

ENV = "PULLBACK_THREADS"
LIBRARY = "libgomp.so.1"
MAX_THREADS = 64
# Work below this many flops stays serial. Measured on a 2-core AMD EPYC (Zen 4, AVX-512)
# VM, fp32 n x n x n, 2 threads vs 1 back to back (libgomp's workers still spinning): n=32
# 0.83x, 48 1.0x, 64 (0.5 MFLOP) 1.2x, 80 (1 MFLOP) 1.4x, 96 (1.8 MFLOP) 1.6x, 128 1.8x,
# 192 1.9x. A worker that has gone to sleep costs ~10+ µs more to wake, hence the margin.
MIN_FLOPS = 2_000_000

PTR = ir.PointerType()
_override: contextvars.ContextVar[bool | None] = contextvars.ContextVar("pullback_parallel", default=None)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def max_threads() -> int:
    """Threads the code being compiled is split for (1 = serial code)."""
    if _override.get() is False:
        return 1
    text = os.environ.get(ENV, "").strip().lower()
    if text in ("", "0", "auto"):
        return max(1, min(_cpus(), MAX_THREADS))
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 1:
        raise ValueError(f"{ENV} must be a positive integer (1 = serial code) or 'auto', got {text!r}")
    return min(count, MAX_THREADS)


def enabled() -> bool:
    return max_threads() > 1


@contextlib.contextmanager
def configured(parallel: bool | None) -> Iterator[None]:
    """Within the block, parallel=False compiles serial code; None/True follow PULLBACK_THREADS."""
    token = _override.set(None if parallel is None else bool(parallel))
    try:
        yield
    finally:
        _override.reset(token)


def cache_token() -> str:
    """What the compile cache key must include: the code depends on it."""
    from compiler.codegen.parallel_loops import MIN_BYTES  # it builds on this module

    return f"threads<={max_threads()} min_flops={MIN_FLOPS} min_bytes={MIN_BYTES}"


def needs(ir_text: str) -> list[str]:
    """Shared libraries the module's code calls into (for manifest['extra']['needs'])."""
    return [LIBRARY] if "@GOMP_parallel(" in ir_text or "@\"GOMP_parallel\"(" in ir_text else []


def _declare(module: ir.Module, name: str, ret: ir.Type, args: Sequence[ir.Type]) -> ir.Function:
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    fn = ir.Function(module, ir.FunctionType(ret, list(args)), name=name)
    fn.attributes.add("nounwind")
    return fn


BACKOFF_FIRST, BACKOFF_MAX = 16, 1024  # regions run serially after a team stalled
STALL_SLACK = 50_000  # cycle-counter ticks (~20 µs at 2.5 GHz) a region may take beyond its share


def _state(module: ir.Module, name: str) -> ir.GlobalVariable:
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    gv = ir.GlobalVariable(module, I32, name=name)
    gv.linkage = "internal"
    gv.initializer = ir.Constant(I32, 0)
    gv.align = 4
    return gv


def region(module: ir.Module, name: str, nargs: int, chunks: int, team_cap: int,
           chunk: Callable[[ir.IRBuilder, list[ir.Value], ir.Value, ir.Value], None]) -> ir.Function:
    """An internal function `name`(ptr x nargs) that runs chunk(builder, args, tid, index) for
    index in 0..chunks-1 on a team of min(omp_get_max_threads(), team_cap, chunks) threads;
    emitted once per name.

    Threads claim chunks from a shared counter (an atomic add, OpenMP's schedule(dynamic)):
    a thread the OS preempts delays one chunk, not a whole static share, and which thread
    runs a chunk never changes its result.

    Busy machines: a region ends only when every thread of the team has run, so when other
    processes occupy the cores a worker that is not scheduled holds the caller for a
    scheduler time slice (milliseconds, where the work took microseconds), at the start
    (libgomp's dock barrier), the end, or in between. The sign, read from the CPU's cycle
    counter: the region took more than twice the caller's own busy time plus STALL_SLACK.
    Then the module's next BACKOFF_FIRST regions run serially in the caller (no team),
    doubling up to BACKOFF_MAX while stalls recur; a region without a stall halves the next
    backoff. Either way the results are the same.
    """
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    # the work of thread tid, given explicitly: called directly for a team of one, where
    # omp_get_thread_num() would describe an enclosing parallel region, if any
    work = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, I32]), name=f"{name}.work")
    work.linkage = "internal"
    work.attributes.add("nounwind")
    b = ir.IRBuilder(work.append_basic_block("entry"))
    data, tid = work.args
    args = [b.load(b.gep(data, [const(i)], inbounds=True, source_etype=PTR), typ=PTR) for i in range(nargs + 1)]
    counter = args.pop()
    claim = work.append_basic_block("claim")
    run = work.append_basic_block("run")
    done = work.append_basic_block("done")
    b.branch(claim)
    b.position_at_end(claim)
    index = b.atomic_rmw("add", counter, const(1), "monotonic")
    b.cbranch(b.icmp_signed("<", index, const(chunks)), run, done)
    b.position_at_end(run)
    chunk(b, args, tid, index)
    b.branch(claim)
    b.position_at_end(done)
    b.ret_void()

    outlined = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR]), name=f"{name}.omp_fn")
    outlined.linkage = "internal"
    outlined.attributes.add("nounwind")
    b = ir.IRBuilder(outlined.append_basic_block("entry"))
    data = outlined.args[0]
    clock = _declare(module, "llvm.readcyclecounter", I64, [])
    thread = b.call(_declare(module, "omp_get_thread_num", I32, []), [])
    start = b.call(clock, [])
    b.call(work, [data, thread])
    with b.if_then(b.icmp_signed("==", thread, ir.Constant(I32, 0))):  # the caller's own busy time
        b.store(b.sub(b.call(clock, []), start),
                b.load(b.gep(data, [const(nargs + 1)], inbounds=True, source_etype=PTR), typ=PTR))
    b.ret_void()

    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR] * nargs), name=name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    fn.attributes.add("noinline")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    slot = b.alloca(PTR, size=ir.Constant(I32, nargs + 2), name="omp.data")
    next_chunk = b.alloca(I64, name="omp.next")
    busy = b.alloca(I64, name="omp.busy")
    b.store(const(0), next_chunk)
    b.store(const(0), busy)
    for i, arg in enumerate([*fn.args, next_chunk, busy]):
        b.store(arg, b.gep(slot, [const(i)], inbounds=True, source_etype=PTR))
    backoff = _state(module, "pullback.omp.backoff")
    penalty = _state(module, "pullback.omp.penalty")
    wanted = b.call(_declare(module, "omp_get_max_threads", I32, []), [])
    cap = ir.Constant(I32, max(1, min(team_cap, chunks)))
    team = b.select(b.icmp_signed("<", wanted, cap), wanted, cap)
    remaining = b.load_atomic(backoff, "monotonic", 4)
    serial = b.or_(b.icmp_signed("<=", team, ir.Constant(I32, 1)), b.icmp_signed(">", remaining, ir.Constant(I32, 0)))
    with b.if_else(serial) as (otherwise, then):
        with otherwise:  # one thread, or backing off: no team at all (also keeps a forked child safe)
            with b.if_then(b.icmp_signed(">", remaining, ir.Constant(I32, 0))):
                b.store_atomic(b.sub(remaining, ir.Constant(I32, 1)), backoff, "monotonic", 4)
            b.call(work, [slot, ir.Constant(I32, 0)])
        with then:
            gomp = _declare(module, "GOMP_parallel", ir.VoidType(), [PTR, PTR, I32, I32])
            before = b.call(clock, [])
            b.call(gomp, [outlined, slot, team, ir.Constant(I32, 0)])
            took = b.sub(b.call(clock, []), before)
            alone = b.icmp_unsigned(">", took, b.add(b.mul(b.load(busy, typ=I64), const(2)), const(STALL_SLACK)))
            last = b.load_atomic(penalty, "monotonic", 4)
            doubled = b.shl(last, ir.Constant(I32, 1))
            grown = b.select(b.icmp_signed("<", doubled, ir.Constant(I32, BACKOFF_FIRST)),
                             ir.Constant(I32, BACKOFF_FIRST), doubled)
            grown = b.select(b.icmp_signed(">", grown, ir.Constant(I32, BACKOFF_MAX)),
                             ir.Constant(I32, BACKOFF_MAX), grown)
            b.store_atomic(b.select(alone, grown, b.lshr(last, ir.Constant(I32, 1))), penalty, "monotonic", 4)
            with b.if_then(alone):
                b.store_atomic(grown, backoff, "monotonic", 4)
    b.ret_void()
    return fn


__all__ = ["ENV", "LIBRARY", "MIN_FLOPS", "max_threads", "enabled", "configured", "cache_token", "needs",
           "region"]
