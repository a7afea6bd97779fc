"""The benchmark command.

    python -m bench.run [--quick] [--json out.json] [--workloads mlp,rnn,lstm,cnn,gnn,rnn-scaling]

For each workload, in one process: build the contenders that can run it (pullback's
compiled training step, the hand-written numpy step, and JAX / PyTorch when importable;
see contenders.py), check that their gradients agree with the numpy baseline, then time
them round-robin, in a fresh random order each round (harness.py), and print the tables
(report.py). pullback's backward/forward ratio comes from a second round-robin of its
training step and forward-only kernel alone, after the peers.
A contender that cannot run says why ("pullback: not available: ...") and the rest go on.
Each workload runs in a child process of its own (all its contenders together), so a
native crash or a hang in one is reported as that workload's status instead of ending
the suite; --in-process runs everything here instead.
Exit status: 0, or 1 when some contender's gradients disagreed with the numpy baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from bench import harness
from bench.contenders import (
    Contender,
    SetupTimeout,
    time_limit,
    grad_error,
    importable_peers,
    one_line,
    setup_jax,
    setup_numpy,
    setup_numpy_single_thread,
    setup_pullback,
    setup_torch,
    warm_up_compiler,
)
from bench.report import jsonable, pullback_rows, scaling_rows, table, timing_rows
from bench.workloads import SCALING_STEPS, Unavailable, Workload, build, make_rnn

WORKLOADS = ("mlp", "rnn", "lstm", "cnn", "gnn", "rnn-scaling")
PEERS = ("numpy-1t", "jax", "torch", "torch.compile")
CONTENDERS = ("pullback", "numpy") + PEERS
QUICK_SKIPS = ("torch.compile",)  # left out of --quick unless named in --contenders
GRAD_RTOL = 2e-3  # float32: max |a - b| / max |b| per gradient leaf


@dataclass
class Settings:
    calls: int
    warmup: int
    min_sample_s: float
    opt_level: int
    preset: str
    contenders: tuple[str, ...]
    setup_timeout: float | None = None  # seconds a peer's jit/compile may take before it is dropped


def say(text: str = "") -> None:
    print(text, flush=True)


# ------------------------------------------------------------------ one workload
def run_workload(wl: Workload, settings: Settings, peak: dict) -> dict[str, Any]:
    record: dict[str, Any] = {"name": wl.name, "description": wl.description, "sizes": wl.sizes,
                              "flops": wl.flops, "status": "ok", "messages": [], "contenders": {}}

    def note(text: str) -> None:
        record["messages"].append(text)
        say(f"  {text}")

    say(f"\n== {wl.name}: {wl.description}")
    contenders: list[Contender] = []
    if "pullback" in settings.contenders:
        try:
            step, fwd = setup_pullback(wl, settings.opt_level)
            contenders += [step, fwd]
            record["pullback"] = {"available": True, **step.info}
            i = step.info
            say(f"  pullback: front end {i['trace_s'] + i['autodiff_s']:.2f} s, compile {i['compile_cold_s']:.2f} s "
                f"cold / {i['compile_cached_s']:.3f} s cached, workspace {i['workspace_bytes']:,} bytes")
        except Unavailable as exc:
            record["pullback"] = {"available": False, "reason": str(exc)}
            note(f"pullback: not available: {exc}")
    numpy_contender = setup_numpy(wl)
    contenders.append(numpy_contender)
    setups = {"numpy-1t": setup_numpy_single_thread, "jax": setup_jax, "torch": setup_torch,
              "torch.compile": lambda w: setup_torch(w, compiled=True)}
    for name in PEERS:
        if name not in settings.contenders:
            continue
        try:
            with time_limit(settings.setup_timeout):
                contenders.append(setups[name](wl))
        except SetupTimeout as exc:
            record["contenders"][name] = {"available": False, "reason": str(exc)}
            note(f"{name}: not available: {exc}")
        except Unavailable as exc:
            record["contenders"][name] = {"available": False, "reason": str(exc)}
            note(f"{name}: not available: {exc}")

    reference = numpy_contender.result()
    checked = []
    for c in contenders:
        if c.name in ("numpy", "numpy-1t"):
            checked.append(c)
            continue
        try:
            err, where = grad_error(c.result(), reference)
        except Exception as exc:  # noqa: BLE001
            err, where = float("inf"), f"the step raised {one_line(exc)}"
        line = f"{c.name} vs numpy: max relative error {err:.1e} ({where}), tolerance {GRAD_RTOL:.0e}"
        if err <= GRAD_RTOL:
            note(f"{'loss matches' if c.name == 'pullback-fwd' else 'gradients match'}: {line}")
            checked.append(c)
            if c.name == "pullback":
                record["pullback"]["grad_max_rel_err"] = err
            continue
        record.setdefault("grad_failures", []).append({"contender": c.name, "error": err, "where": where})
        if c.name == "pullback":
            record["status"] = "aborted"
            record["pullback"]["grad_max_rel_err"] = err
            note(f"ABORTED: pullback's gradients disagree with the numpy baseline: {line}")
            return record
        record["contenders"][c.name] = {"available": False, "reason": f"gradients disagree with numpy: {line}"}
        note(f"{c.name}: dropped, gradients disagree with the numpy baseline: {line}")
    contenders = [c for c in checked if c.name != "pullback-fwd" or any(x.name == "pullback" for x in checked)]

    stats = harness.round_robin({c.name: c.step for c in contenders}, settings.calls, settings.warmup,
                                settings.min_sample_s, {c.name: c.hooks for c in contenders if c.hooks})
    pb = stats.get("pullback")
    for c in contenders:
        s = stats[c.name]
        entry: dict[str, Any] = {"available": True, "median_ms": s.median * 1e3, "p10_ms": s.p10 * 1e3,
                                 "p90_ms": s.p90 * 1e3, "calls": s.samples, "calls_per_sample": s.number}
        if c.name != "pullback-fwd":
            entry["gflops"] = wl.flops / s.median / 1e9
            entry["peak_fraction"] = harness.ratio(entry["gflops"], peak.get("best_gflops"))
            entry["single_thread_peak_fraction"] = harness.ratio(entry["gflops"], peak.get("single_thread_gflops"))
            entry["pullback_ratio"] = harness.ratio(pb.median, s.median) if pb else None
        if c.setup_s is not None:
            entry["setup_s"] = c.setup_s
        entry.update({k: v for k, v in c.info.items() if k in ("jax", "backend", "torch", "threads", "blas_threads")})
        record["contenders"][c.name] = entry
    if pb and "pullback-fwd" in stats:
        by_name = {c.name: c for c in contenders}
        record["pullback"].update(backward_forward_alone(by_name["pullback"], by_name["pullback-fwd"], settings))
        record["pullback"]["backward_forward_ratio_mixed"] = harness.ratio(pb.median, stats["pullback-fwd"].median)
    return record


SETTLE_S = 0.25  # peers' idle pool threads (OpenBLAS, OpenMP, XLA) spin a while after a call before they sleep


def backward_forward_alone(step: Contender, fwd: Contender, settings: Settings) -> dict[str, Any]:
    """The bwd/fwd ratio from the step and the forward-only kernel timed alternately on their
    own: in the mixed run each of them often comes right after a peer whose thread pools
    are still spinning, and whichever follows the peers more often looks slower. The serial
    build of the step (when there is one) joins them: serial / threaded is the speedup the
    threads give."""
    time.sleep(SETTLE_S)
    fns = {step.name: step.step, fwd.name: fwd.step}
    if step.serial is not None:
        fns[SERIAL] = step.serial
    stats = harness.round_robin(fns, settings.calls, settings.warmup, settings.min_sample_s,
                                {c.name: c.hooks for c in (step, fwd) if c.hooks})
    s, f = stats[step.name], stats[fwd.name]
    result = {"backward_forward_ratio": harness.ratio(s.median, f.median),
              "alone_step_median_ms": s.median * 1e3, "alone_forward_median_ms": f.median * 1e3}
    if SERIAL in stats:
        result["serial_step_median_ms"] = stats[SERIAL].median * 1e3
        result["parallel_speedup"] = harness.ratio(stats[SERIAL].median, s.median)
    return result


SERIAL = "pullback-serial"


def guarded(make: Callable[[], Workload], settings: Settings, peak: dict) -> dict[str, Any]:
    """run_workload, with any unexpected failure reported as the workload's status."""
    wl = None
    try:
        wl = make()
        return run_workload(wl, settings, peak)
    except Exception as exc:  # noqa: BLE001 - one broken workload must not stop the suite
        name = wl.name if wl is not None else "workload"
        say(f"  ERROR: {name} failed: {one_line(exc)}")
        return {"name": name, "description": getattr(wl, "description", ""), "sizes": getattr(wl, "sizes", {}),
                "status": "error", "messages": [f"failed: {one_line(exc)}"], "contenders": {}}


# ------------------------------------------------------------------ jobs: one workload each
def job_label(job: dict) -> str:
    return f"rnn-T{job['steps']}" if job["workload"] == "rnn-scaling" else job["workload"]


def job_workload(job: dict) -> Workload:
    if job["workload"] == "rnn-scaling":
        return make_rnn(steps=job["steps"], name=job_label(job))
    return build(job["workload"], job["preset"])


def child_command(payload_path: str) -> list[str]:
    return [sys.executable, "-m", "bench.run", "--child", payload_path]


def run_isolated(job: dict, settings: Settings, peak: dict, timeout: float | None) -> dict[str, Any]:
    """The job in a child process; a crash or timeout becomes the record's status."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory(prefix="pullback-bench-") as tmp:
        payload, out = os.path.join(tmp, "job.json"), os.path.join(tmp, "record.json")
        with open(payload, "w", encoding="utf-8") as handle:
            json.dump({"job": job, "settings": asdict(settings), "peak": peak, "out": out}, handle)
        sys.stdout.flush()
        code: int | None = None
        start_error: OSError | None = None
        try:
            # Its own process group, so a timeout also ends the workers it started (torch.compile has some).
            child = subprocess.Popen(child_command(payload), env=env, start_new_session=True)
        except OSError as exc:
            start_error = exc
        else:
            try:
                code = child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(child)
            except BaseException:  # Ctrl-C: the child is not in the terminal's process group
                _kill_group(child)
                raise
        if os.path.exists(out):
            with open(out, encoding="utf-8") as handle:
                return json.load(handle)
    if start_error is not None:
        status, why = "error", f"could not start its process: {start_error}"
    elif code is None:
        status, why = "timeout", f"did not finish within {timeout:g} s (--timeout); its process was killed"
    elif code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        status, why = "crashed", f"its process died of {name} (a native crash; see the message above)"
    else:
        status, why = "crashed", f"its process exited with status {code} without a result"
    say(f"  ERROR: {job_label(job)}: {why}")
    return {"name": job_label(job), "description": "", "sizes": {"steps": job["steps"]} if job.get("steps") else {},
            "status": status, "messages": [why], "contenders": {}}


def _kill_group(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except OSError:
        child.kill()
    child.wait()


def child_main(payload_path: str) -> int:
    with open(payload_path, encoding="utf-8") as handle:
        payload = json.load(handle)
    settings = Settings(**{**payload["settings"], "contenders": tuple(payload["settings"]["contenders"])})
    startup = warm_up_compiler(settings.opt_level) if "pullback" in settings.contenders else None
    record = guarded(lambda: job_workload(payload["job"]), settings, payload["peak"])
    record["pullback_startup_s"] = startup
    with open(payload["out"], "w", encoding="utf-8") as handle:
        json.dump(jsonable(record), handle)
    return 0

# ------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Time pullback's compiled training steps against hand-written numpy, JAX and PyTorch.")
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer calls, smaller T (under a minute)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--workloads", metavar="LIST", default=",".join(WORKLOADS),
                        help=f"comma-separated, from: {', '.join(WORKLOADS)} (default: all)")
    parser.add_argument("--contenders", metavar="LIST",
                        help=f"comma-separated, from: {', '.join(CONTENDERS)} (numpy always runs; default: all, "
                        "but --quick leaves out torch.compile, whose compiles take tens of seconds)")
    parser.add_argument("--calls", type=int, help="timed calls per contender (default 30, --quick 10)")
    parser.add_argument("--warmup", type=int, help="untimed calls per contender first (default 5, --quick 2)")
    parser.add_argument("--min-sample-ms", type=float, default=0.0,
                        help="batch calls so each timed sample lasts at least this long (default 0: one call each)")
    parser.add_argument("--opt-level", type=int, default=2, choices=(0, 1, 2, 3), help="pullback -O level (2)")
    parser.add_argument("--in-process", action="store_true",
                        help="run every workload in this process (default: one child process per workload, "
                        "so a native crash ends only that workload)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="per-workload time limit in child processes (default 1800, --quick 300)")
    parser.add_argument("--setup-timeout", type=float, metavar="SECONDS",
                        help="drop a peer whose jit/compile takes longer (default 300, --quick 60)")
    parser.add_argument("--child", metavar="PAYLOAD", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return args
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    bad = [w for w in args.workloads if w not in WORKLOADS]
    if bad or not args.workloads:
        parser.error(f"unknown workload(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(WORKLOADS)}")
    if args.contenders is None:
        args.contenders = [c for c in CONTENDERS if not (args.quick and c in QUICK_SKIPS)]
    else:
        args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    bad = [c for c in args.contenders if c not in CONTENDERS]
    if bad:
        parser.error(f"unknown contender(s) {', '.join(bad)}; choose from {', '.join(CONTENDERS)}")
    if args.calls is not None and args.calls < 1:
        parser.error("--calls must be at least 1")
    if args.warmup is not None and args.warmup < 0:
        parser.error("--warmup must be at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    preset = "quick" if args.quick else "full"
    settings = Settings(calls=args.calls or (10 if args.quick else 30), warmup=args.warmup if args.warmup is not None
                        else (2 if args.quick else 5), min_sample_s=args.min_sample_ms / 1e3,
                        opt_level=args.opt_level, preset=preset, contenders=tuple(args.contenders),
                        setup_timeout=args.setup_timeout or (60.0 if args.quick else 300.0))
    machine = harness.machine_info()
    say(f"pullback benchmark suite ({preset}: {settings.calls} timed calls after {settings.warmup} warm-up, "
        "contenders interleaved round-robin, in a fresh seeded random order each round)")
    say(f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['platform']}")
    say(f"         Python {machine['python']}, numpy {machine['numpy']}, BLAS {machine['blas']}")
    if machine["thread_env"]:
        say(f"         thread limits from the environment: {machine['thread_env']}")
    load = machine["load_average_1min"]
    if load is not None and load > 0.5 * machine["cores"]:
        say(f"warning: the machine is busy (1-minute load average {load:.2f} on {machine['cores']} cores): "
            "timings will be noisy, and multi-threaded contenders (BLAS, XLA) suffer most")
    size, reps = 2048, (1 if args.quick else 3)
    peak = harness.measure_peak(size, reps)
    single = peak["single_thread_gflops"]
    say(f"peak sgemm {size}x{size} float32: {peak['all_cores_gflops']:.1f} GFLOP/s all cores, "
        + (f"{single:.1f} GFLOP/s single thread ({peak['single_thread_method']})" if single is not None
           else f"single thread {peak['single_thread_method']}"))

    missing = importable_peers(settings.contenders)
    if missing:
        say("not available: " + "; ".join(f"{name}: {why}" for name, why in missing.items()))
        settings.contenders = tuple(c for c in settings.contenders if c not in missing)
    say(f"contenders: {', '.join(c for c in settings.contenders if c != 'numpy')}, numpy (the reference)")
    if "pullback" in settings.contenders and args.in_process:
        startup = warm_up_compiler(settings.opt_level)
        if startup is not None:
            say(f"pullback: compiler start-up (LLVM initialization, first compile) {startup:.2f} s, "
                "not counted in the per-workload compile times")
            machine["pullback_startup_s"] = startup
    timeout = args.timeout or (300.0 if args.quick else 1800.0)

    def run_job(job: dict) -> dict[str, Any]:
        if args.in_process:
            return guarded(lambda: job_workload(job), settings, peak)
        return run_isolated(job, settings, peak, timeout)

    records, scaling = [], []
    for name in args.workloads:
        if name == "rnn-scaling":
            for steps in SCALING_STEPS[preset]:
                scaling.append(run_job({"workload": name, "preset": preset, "steps": steps}))
        else:
            records.append(run_job({"workload": name, "preset": preset, "steps": None}))

    say("\nStep time per contender (median of calls; pb/x = pullback median / this contender's; "
        "GFLOP/s of matmul+conv flops of forward+backward; peak / 1t peak = fraction of the best / the single-thread "
        "sgemm rate measured above; setup s = jit/compile)")
    say(table(["workload", "contender", "median ms", "p10 ms", "p90 ms", "pb/x", "GFLOP/s", "peak", "1t peak",
               "setup s"],
              timing_rows(records + scaling)))
    rows = pullback_rows(records + scaling)
    if rows:
        say("\npullback (front end = trace + value_and_grad; compile = codegen, cold with the cache off, then cached; "
            "bwd/fwd = training step / forward-only kernel, timed alternately on their own after the peers, "
            "medians; threads = the step built serial (compile(..., parallel=False)) / the threaded step, "
            "timed with them; workspace = training step kernel)")
        say(table(["workload", "status", "front end s", "compile s", "cached s", "bwd/fwd", "threads",
                   "workspace MiB", "grad err"], rows))
    if scaling:
        say("\nRNN scaling with T (batch 16, 32->128->32)")
        say(table(["T", "status", "front end s", "compile s", "cached s", "pullback ms", "numpy ms", "pb/numpy",
                   "jax ms", "jax jit s", "torch ms"], scaling_rows(scaling)))

    failed = [r for r in records + scaling if r.get("grad_failures")]
    broken = [r for r in records + scaling if r["status"] in ("crashed", "timeout", "error")]
    if args.json:
        out = {"suite": "pullback bench", "preset": preset, "machine": machine, "peak": peak,
               "settings": {"calls": settings.calls, "warmup": settings.warmup, "min_sample_s": settings.min_sample_s,
                            "opt_level": settings.opt_level, "contenders": list(settings.contenders),
                            "grad_rtol": GRAD_RTOL, "round_order": "shuffled each round, seed 0",
                            "backward_forward_ratio": "step and forward-only kernel timed alone after the peers; "
                            "backward_forward_ratio_mixed: from the run with the peers"},
               "unavailable_contenders": missing, "workloads": records, "rnn_scaling": scaling}
        try:
            with open(args.json, "w", encoding="utf-8") as handle:
                json.dump(jsonable(out), handle, indent=2)
                handle.write("\n")
        except OSError as exc:
            say(f"error: cannot write {args.json}: {exc}")
            return 2
        say(f"\nwrote {args.json}")
    if broken:
        listing = ", ".join(f"{r['name']} ({r['status']})" for r in broken)
        say(f"\ndid not finish: {listing}")
    if failed:
        say(f"\ngradient check FAILED for: {', '.join(r['name'] for r in failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
