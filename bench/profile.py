"""Where a workload's training step spends its time, kernel by kernel, next to its forward pass.

    python -m bench.profile --workload rnn,lstm [--calls 200] [--preset full] [--top 20] [--steps 32]

For each workload, the forward kernel (the loss graph alone) and the training step
(value_and_grad of it) are compiled twice: as usual and with profile=True (cycle counters
around every kernel call, compiler/codegen/profiling.py). The plain builds are timed
round-robin (median per call), then the profiled ones are run in rounds (per step: the
median over rounds of its time per call) and their tables printed: per step (op, fusion
kind, shapes, IR node and source line), per kernel function, and per op. The backward/forward ratio is given from both the plain
timings and the profiles' native totals.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any, Callable

from bench.workloads import BUILDERS, PullbackOps, build


def _median_us(fn: Callable[[], Any], calls: int, rounds: int = 5) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls)
    return statistics.median(samples) * 1e6


def profile_workload(name: str, preset: str, calls: int, top: int, opt_level: int, rounds: int = 5,
                     **sizes: Any) -> str:
    import compiler
    import compiler.codegen as codegen
    from compiler.codegen import profiling

    wl = build(name, preset, **sizes)
    forward = compiler.trace(wl.model(PullbackOps()), *wl.args(), name=wl.name)
    step = compiler.value_and_grad(forward)
    args = wl.args()
    # cache=False: what the code generator makes now, whatever switches a caller has flipped
    graphs = (("forward", forward), ("step", step))
    plain = {label: codegen.compile(g, opt_level, cache=False) for label, g in graphs}
    profiled = {label: codegen.compile(g, opt_level, cache=False, profile=True) for label, g in graphs}
    for kernel in (*plain.values(), *profiled.values()):
        kernel(*args)  # warm: pages, caches, the OpenMP team
    # round-robin so drift hits all four alike
    timings: dict[str, list[float]] = {}
    for _ in range(3):
        for label, kernel in (*(("plain " + k, v) for k, v in plain.items()),
                              *(("profiled " + k, v) for k, v in profiled.items())):
            timings.setdefault(label, []).append(_median_us(lambda k=kernel: k(*args), max(calls // 5, 1)))
    med = {k: statistics.median(v) for k, v in timings.items()}
    lines = [f"== {name}: {wl.description}",
             f"plain build: step {med['plain step']:.1f} us, forward {med['plain forward']:.1f} us, "
             f"ratio {med['plain step'] / med['plain forward']:.2f} (median per call, Python call overhead included)",
             f"profiled build: step {med['profiled step']:.1f} us, forward {med['profiled forward']:.1f} us"]
    native, steps = {}, {}
    for label, kernel in profiled.items():
        profile = profiling.measure(kernel, lambda k=kernel: k(*args), max(calls // rounds, 1), rounds)
        native[label] = profile.seconds * 1e6
        steps[label] = sum(r.seconds for r in profile.rows) * 1e6
        lines += ["", f"-- {label}", profiling.report(profile, top)]
    # the per-step medians shrug off a preempted round; the entry's total does not
    lines.append(f"\nnative totals: step {native['step']:.1f} us / forward {native['forward']:.1f} us "
                 f"= ratio {native['step'] / native['forward']:.2f}; sums of per-step medians: "
                 f"{steps['step']:.1f} / {steps['forward']:.1f} us = ratio {steps['step'] / steps['forward']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="rnn", help=f"comma-separated, from: {', '.join(BUILDERS)}")
    parser.add_argument("--preset", default="full", choices=("full", "quick", "test"))
    parser.add_argument("--calls", type=int, default=200, help="profiled calls per kernel (default 200)")
    parser.add_argument("--top", type=int, default=20, help="rows per table (default 20)")
    parser.add_argument("--rounds", type=int, default=5, help="per-step medians over this many rounds (default 5)")
    parser.add_argument("--opt-level", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="override T (rnn, lstm)")
    args = parser.parse_args(argv)
    names = [w.strip() for w in args.workload.split(",") if w.strip()]
    bad = [w for w in names if w not in BUILDERS]
    if bad or not names:
        parser.error(f"unknown workload(s) {', '.join(bad) or '(none)'}; choose from {', '.join(BUILDERS)}")
    if args.calls < 1 or args.rounds < 1:
        parser.error("--calls and --rounds must be at least 1")
    sizes = {"steps": args.steps} if args.steps is not None else {}
    for name in names:
        print(profile_workload(name, args.preset, args.calls, args.top, args.opt_level, args.rounds, **sizes), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
