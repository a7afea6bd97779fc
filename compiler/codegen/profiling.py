"""Opt-in per-kernel profiling: `compile(graph, profile=True)`.

A profiled build's entry function reads the CPU cycle counter (llvm.readcyclecounter:
RDTSC on x86, a constant-rate clock) around every kernel call and adds the ticks and one
call to that step's slot of a counter region appended to the workspace, plus one slot
for the whole entry. The manifest's extra["profile"] says where the region is and what
each slot is (label, op, fusion kind, shapes, kernel function), so the runtime can hand
the counters back (`Kernel.profile_counters()`) and `report()` can explain them.

The counters are plain loads and stores, not atomics: a Kernel's calls are serialized by
its lock, and a profile is per Kernel. Without profile=True none of this is emitted, so
the default build is unchanged.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from llvmlite import ir

from compiler.codegen.loops import I64, I8, const

SLOT_BYTES = 16  # uint64 ticks, uint64 calls
ALIGN = 64


def region_offset(workspace_bytes: int) -> int:
    return -(-workspace_bytes // ALIGN) * ALIGN


def region_bytes(steps: int) -> int:
    return SLOT_BYTES * (steps + 1)  # slot 0: the whole entry


def _clock(module: ir.Module) -> ir.Function:
    name = "llvm.readcyclecounter"
    if name in module.globals:
        return module.globals[name]
    return ir.Function(module, ir.FunctionType(I64, []), name=name)


def _accumulate(b: ir.IRBuilder, workspace: ir.Value, offset: int, ticks: ir.Value) -> None:
    ticks_at = b.gep(workspace, [const(offset)], source_etype=I8)
    calls_at = b.gep(workspace, [const(offset + 8)], source_etype=I8)
    b.store(b.add(b.load(ticks_at, typ=I64), ticks), ticks_at)
    b.store(b.add(b.load(calls_at, typ=I64), const(1)), calls_at)


def timed_call(b: ir.IRBuilder, workspace: ir.Value, region: int, index: int, fn: ir.Function,
               args: list[ir.Value]) -> ir.Value:
    """b.call(fn, args), its cycles added to step `index`'s slot of the region at `region`."""
    clock = _clock(b.module)
    start = b.call(clock, [])
    result = b.call(fn, args)
    _accumulate(b, workspace, region + SLOT_BYTES * (index + 1), b.sub(b.call(clock, []), start))
    return result


def timed_entry(module: ir.Module, name: str, linkage: str, inner: ir.Function, region: int) -> ir.Function:
    """The entry `name`: calls `inner` (same ABI) and adds its cycles to slot 0."""
    from compiler.codegen.emit import _entry_function

    fn = _entry_function(module, name, linkage)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    clock = _clock(module)
    start = b.call(clock, [])
    status = b.call(inner, list(fn.args))
    _accumulate(b, fn.args[2], region, b.sub(b.call(clock, []), start))
    b.ret(status)
    return fn


def describe(step: Any, kernel: str) -> dict:
    """A step's manifest entry: what the report prints for its slot."""
    label = step.label or f"copy to output {step.out.buffer.index}"
    return {"label": label, "op": step.op, "kind": str(step.attrs.get("kind", "")) if step.op == "fusion" else "",
            "kernel": kernel, "out": list(step.out.layout.shape),
            "ins": [list(v.layout.shape) for v in step.ins]}


# ---- reading back -------------------------------------------------------------------------
@functools.cache
def cycles_per_second() -> float:
    """The cycle counter's rate, measured against time.perf_counter over ~50 ms."""
    from compiler.codegen import target

    binding = target.llvm()
    module = ir.Module(name="clock")
    fn = ir.Function(module, ir.FunctionType(I64, []), name="pullback_clock")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    b.ret(b.call(_clock(module), []))
    with target._lock:
        parsed = binding.parse_assembly(str(module))
        engine = binding.create_mcjit_compiler(parsed, target.target_machine(0))
        engine.finalize_object()
        address = engine.get_function_address("pullback_clock")
    import ctypes

    read = ctypes.CFUNCTYPE(ctypes.c_uint64)(address)
    rates = []
    for _ in range(3):
        t0, c0 = time.perf_counter(), read()
        while time.perf_counter() - t0 < 0.015:
            pass
        t1, c1 = time.perf_counter(), read()
        rates.append((c1 - c0) / (t1 - t0))
    cycles_per_second._engine = engine  # the JIT owns the code `read` points into
    return float(np.median(rates))


@dataclass
class Row:
    label: str
    op: str
    kind: str
    kernel: str
    shapes: str
    calls: int
    seconds: float
    share: float


def _shapes(entry: dict) -> str:
    def text(shape: list) -> str:
        return "x".join(map(str, shape)) or "scalar"

    ins = [text(s) for s in entry["ins"]]
    if len(ins) > 4:  # a big fusion's operand list would swamp the table
        ins = ins[:3] + [f"+{len(ins) - 3} more"]
    return f"{', '.join(ins)} -> {text(entry['out'])}"


@dataclass
class Profile:
    name: str
    calls: int
    seconds: float  # per call, the whole entry
    rows: list[Row]  # seconds per call


def collect(kernel: Any) -> Profile:
    """The counters of a profiled Kernel so far, per call."""
    info = kernel.extra("profile")
    counters = kernel.profile_counters()
    if info is None or counters is None:
        raise ValueError(f"kernel {kernel.name!r} was not compiled with profile=True")
    hz = cycles_per_second()
    total_ticks, calls = (int(x) for x in counters[0])
    per = max(calls, 1) * hz
    rows = [Row(entry["label"], entry["op"], entry["kind"], entry["kernel"], _shapes(entry), int(n),
                int(ticks) / per, int(ticks) / total_ticks if total_ticks else 0.0)
            for entry, (ticks, n) in zip(info["steps"], counters[1:])]
    return Profile(kernel.name, calls, total_ticks / per, rows)


def measure(kernel: Any, call: Callable[[], Any], calls: int = 200, rounds: int = 5) -> Profile:
    """Run `call` (a call of `kernel`) rounds x calls times; per step the median over rounds
    of its time per call, so a round the OS preempted does not skew the table."""
    if calls < 1 or rounds < 1:
        raise ValueError("calls and rounds must be at least 1")
    samples = []
    for _ in range(rounds):
        reset(kernel)
        for _ in range(calls):
            call()
        samples.append(collect(kernel))
    total = float(np.median([s.seconds for s in samples]))
    rows = []
    for i, row in enumerate(samples[0].rows):
        seconds = float(np.median([s.rows[i].seconds for s in samples]))
        rows.append(dataclasses.replace(row, calls=sum(s.rows[i].calls for s in samples), seconds=seconds,
                                        share=seconds / total if total else 0.0))
    return Profile(kernel.name, rounds * calls, total, rows)


def reset(kernel: Any) -> None:
    counters = kernel.profile_counters()
    if counters is None:
        raise ValueError(f"kernel {kernel.name!r} was not compiled with profile=True")
    counters[...] = 0


def _op(r: Row) -> str:
    return f"{r.op}[{r.kind}]" if r.kind else r.op


def report(profile: "Profile | Any", top: int = 25) -> str:
    """Tables of a Profile (or a profiled Kernel's counters so far): per step, per kernel
    function and per op, by time."""
    p = profile if isinstance(profile, Profile) else collect(profile)
    if not p.calls:
        return f"{p.name}: no calls profiled yet"
    covered = sum(r.seconds for r in p.rows) / p.seconds * 100 if p.seconds else 0.0
    # well under 100%: time between the calls, or (measure()'s medians) rounds the OS preempted
    lines = [f"{p.name}: {p.seconds * 1e6:.1f} us per call in native code ({p.calls} calls, {len(p.rows)} steps; "
             f"the steps' times add up to {covered:.1f}% of it)",
             f"{'us/call':>8} {'share':>6}  {'op':<16} {'shapes':<40} step"]
    for r in sorted(p.rows, key=lambda r: -r.seconds)[:top]:
        lines.append(f"{r.seconds * 1e6:8.2f} {r.share * 100:5.1f}%  {_op(r):<16} {r.shapes:<40} {r.label}")
    groups: dict[str, list[Row]] = {}
    for r in p.rows:
        groups.setdefault(r.kernel, []).append(r)
    lines.append(f"by kernel function:\n{'us/call':>8} {'share':>6} {'steps':>5}  {'kernel':<14} op, shapes")
    for name, members in sorted(groups.items(), key=lambda kv: -sum(r.seconds for r in kv[1]))[:top]:
        seconds = sum(r.seconds for r in members)
        lines.append(f"{seconds * 1e6:8.2f} {seconds / p.seconds * 100:5.1f}% {len(members):5d}"
                     f"  {name:<14} {_op(members[0])}, {members[0].shapes}")
    by_op: dict[str, float] = {}
    for r in p.rows:
        by_op[_op(r)] = by_op.get(_op(r), 0.0) + r.seconds
    lines.append("by op: " + ", ".join(f"{k} {v * 1e6:.1f} us ({v / p.seconds * 100:.0f}%)"
                                       for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])))
    return "\n".join(lines)


__all__ = ["region_offset", "region_bytes", "timed_call", "timed_entry", "describe", "cycles_per_second",
           "collect", "measure", "reset", "report", "Row", "Profile"]
