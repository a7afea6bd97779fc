"""Timing: round-robin sampling of several contenders, statistics, machine description and
this machine's measured sgemm peak.

Contenders are timed in one process, interleaved: every round calls each contender once,
so drift in clock speed or background load hits all of them alike instead of whichever
happened to run during it. Each round draws a fresh order from a seeded generator (the
same seed, the same orders): a contender slows down whichever one comes next (thread
pools left spinning, caches evicted), and a fixed cyclic order would charge that cost to
the same successor every round; shuffled, every contender follows every other about
equally often. Calls too short for the clock are batched (`number` calls per sample) and
reported per call.
"""
from __future__ import annotations

import gc
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np


@dataclass
class Stats:
    """Per-call seconds of one contender."""

    median: float
    p10: float
    p90: float
    mean: float
    min: float
    samples: int  # how many samples the statistics summarize
    number: int  # calls per sample

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(per_call: list[float], number: int = 1) -> Stats:
    if not per_call:
        raise ValueError("summarize: no samples")
    a = np.asarray(per_call, dtype=np.float64)
    p10, median, p90 = np.percentile(a, [10, 50, 90])
    return Stats(float(median), float(p10), float(p90), float(a.mean()), float(a.min()), len(per_call), number)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator <= 0 or not math.isfinite(denominator):
        return None
    return numerator / denominator


def calibrate(fn: Callable[[], Any], min_sample_s: float) -> int:
    """How many calls make one sample at least `min_sample_s` long (1 if one call is)."""
    if min_sample_s <= 0:
        return 1
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    if once >= min_sample_s:
        return 1
    return max(1, min(1000, math.ceil(min_sample_s / max(once, 1e-7))))


Hooks = dict[str, tuple[Callable[[], Any], Callable[[], Any]]]


def round_robin(contenders: dict[str, Callable[[], Any]], calls: int = 30, warmup: int = 3,
                min_sample_s: float = 0.0, hooks: Hooks | None = None, seed: int = 0) -> dict[str, Stats]:
    """Time every contender `calls` times (after `warmup` untimed calls each), interleaved,
    in an order drawn afresh each round from numpy's generator seeded with `seed`.

    hooks[name] = (enter, leave) run untimed around each of that contender's samples
    (e.g. to cap BLAS threads for it alone).
    """
    if calls < 1:
        raise ValueError(f"calls must be at least 1, got {calls}")
    names = list(contenders)
    hooks = hooks or {}
    nothing = (lambda: None, lambda: None)
    for _ in range(warmup):
        for name in names:
            enter, leave = hooks.get(name, nothing)
            enter()
            try:
                contenders[name]()
            finally:
                leave()
    number = dict.fromkeys(names, 1)
    for name in names if min_sample_s > 0 else ():
        enter, leave = hooks.get(name, nothing)
        enter()
        try:
            number[name] = calibrate(contenders[name], min_sample_s)
        finally:
            leave()
    samples: dict[str, list[float]] = {name: [] for name in names}
    rng = np.random.default_rng(seed)
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # collections happen between rounds, never inside a sample
    try:
        for r in range(calls):
            for i in rng.permutation(len(names)):
                name = names[i]
                fn, n = contenders[name], number[name]
                enter, leave = hooks.get(name, nothing)
                enter()
                try:
                    start = time.perf_counter()
                    for _ in range(n):
                        fn()
                    samples[name].append((time.perf_counter() - start) / n)
                finally:
                    leave()
            if r % 10 == 9:
                gc.collect()  # untimed; a full collection per round costs more than it saves
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: summarize(samples[name], number[name]) for name in names}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), seconds it took)."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


# ------------------------------------------------------------------ the machine
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def blas_description() -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = np.show_config(mode="dicts")
        blas = config.get("Build Dependencies", {}).get("blas", {})
        text = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
        detail = blas.get("openblas configuration")
        return f"{text} ({detail})" if detail else text
    except Exception:  # noqa: BLE001 - old numpy or odd builds: describing is best effort
        return "unknown"


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def thread_settings() -> dict[str, str]:
    """The thread-count variables set in the environment (they cap BLAS and XLA threads)."""
    return {name: os.environ[name] for name in _SINGLE_THREAD_ENV if name in os.environ}


def machine_info() -> dict[str, Any]:
    return {
        "cpu": cpu_name(),
        "cores": usable_cores(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas_description(),
        "thread_env": thread_settings(),
        "load_average_1min": load_average(),
    }


def sgemm_gflops(size: int = 2048, reps: int = 3) -> float:
    """Best-of-`reps` float32 matmul rate at size x size, in GFLOP/s (threads as BLAS has them)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(np.float32)
    b = rng.standard_normal((size, size)).astype(np.float32)
    out = np.empty((size, size), np.float32)
    np.matmul(a, b, out=out)  # warm-up: thread pool start, page faults
    best = min(timed(lambda: np.matmul(a, b, out=out))[1] for _ in range(max(1, reps)))
    return 2.0 * size ** 3 / best / 1e9


_SINGLE_THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                      "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def single_thread_sgemm_gflops(size: int = 2048, reps: int = 3) -> tuple[float | None, str]:
    """(rate, how it was measured): threadpoolctl when installed, else a child process with
    the BLAS thread variables set to 1 (BLAS reads them only at start-up)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        pass
    else:
        with threadpool_limits(limits=1, user_api="blas"):
            return sgemm_gflops(size, reps), "threadpoolctl"
    env = dict(os.environ, **{name: "1" for name in _SINGLE_THREAD_ENV})
    code = f"from bench.harness import sgemm_gflops; print(sgemm_gflops({int(size)}, {int(reps)}))"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        if done.returncode == 0:
            return float(done.stdout.strip().splitlines()[-1]), "child process with *_NUM_THREADS=1"
        return None, f"skipped: child process failed: {done.stderr.strip().splitlines()[-1:]}"
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired) as exc:
        return None, f"skipped: {exc}"


def measure_peak(size: int = 2048, reps: int = 3) -> dict[str, Any]:
    multi = sgemm_gflops(size, reps)
    single, how = single_thread_sgemm_gflops(size, reps)
    # On a busy machine the threaded rate can come out below the single-threaded one; the
    # peak is the best rate this machine showed.
    return {"sgemm_size": size, "all_cores_gflops": multi, "single_thread_gflops": single,
            "single_thread_method": how, "best_gflops": max(multi, single or 0.0)}
