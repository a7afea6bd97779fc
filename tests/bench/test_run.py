"""The bench command's backward/forward ratio: measured on the step and the forward-only kernel
alone, after the mixed run with the peers (whose ratio stays in the record as *_mixed)."""
from __future__ import annotations

import pytest

from bench import contenders, harness, report, run
from bench.workloads import Unavailable, build

SETTINGS = run.Settings(calls=3, warmup=1, min_sample_s=0.0, opt_level=2, preset="test",
                        contenders=("pullback", "numpy"))
PEAK = {"all_cores_gflops": 10.0, "best_gflops": 10.0, "single_thread_gflops": 5.0}


def _fake_pullback(log: list[str] | None = None, serial: bool = False):
    def setup(wl, opt_level):
        def result():
            loss, grads = wl.numpy_step(*wl.args())
            return float(loss), grads

        def step(name):
            return (lambda: log.append(name)) if log is not None else (lambda: None)

        info = {"trace_s": 0.0, "autodiff_s": 0.0, "compile_cold_s": 0.1, "compile_cached_s": 0.01,
                "workspace_bytes": 1024}
        return (contenders.Contender("pullback", step("pullback"), result, 0.1, info,
                                     serial=step("pullback-serial") if serial else None),
                contenders.Contender("pullback-fwd", step("pullback-fwd"), result, 0.05))
    return setup


@pytest.fixture
def timings(monkeypatch):
    """round_robin replaced: records what it was asked to time and answers fixed medians, the
    step 3x the forward in the mixed run but 2x when the pair runs alone."""
    asked = []

    def fake(fns, calls=30, warmup=3, min_sample_s=0.0, hooks=None, seed=0):
        asked.append({"names": sorted(fns), "calls": calls, "warmup": warmup, "min_sample_s": min_sample_s})
        alone = "numpy" not in fns
        medians = {"pullback": 2e-3 if alone else 3e-3, "pullback-fwd": 1e-3, "numpy": 5e-3, "pullback-serial": 3e-3}
        return {name: harness.summarize([medians[name]] * calls) for name in fns}

    monkeypatch.setattr(harness, "round_robin", fake)
    monkeypatch.setattr(run, "SETTLE_S", 0.0)
    return asked


def test_bwd_fwd_is_timed_alone_after_the_peers(monkeypatch, timings):
    monkeypatch.setattr(run, "setup_pullback", _fake_pullback())
    record = run.run_workload(build("mlp", "test"), SETTINGS, PEAK)
    assert record["status"] == "ok"
    assert [t["names"] for t in timings] == [["numpy", "pullback", "pullback-fwd"], ["pullback", "pullback-fwd"]]
    assert timings[0] == {**timings[1], "names": timings[0]["names"]}  # the same calls/warm-up/batching
    pb = record["pullback"]
    assert pb["backward_forward_ratio"] == pytest.approx(2.0)
    assert pb["backward_forward_ratio_mixed"] == pytest.approx(3.0)
    assert pb["alone_step_median_ms"] == pytest.approx(2.0) and pb["alone_forward_median_ms"] == pytest.approx(1.0)
    # the timing table's rows stay those of the mixed run
    assert record["contenders"]["pullback"]["median_ms"] == pytest.approx(3.0)
    assert record["contenders"]["numpy"]["pullback_ratio"] == pytest.approx(0.6)
    assert report.pullback_rows([record])[0][5:7] == ["2.00", "-"]  # no serial build: no thread speedup


def test_the_serial_build_is_timed_with_the_pair_for_the_thread_speedup(monkeypatch, timings):
    monkeypatch.setattr(run, "setup_pullback", _fake_pullback(serial=True))
    record = run.run_workload(build("mlp", "test"), SETTINGS, PEAK)
    assert [t["names"] for t in timings] == [["numpy", "pullback", "pullback-fwd"],
                                             ["pullback", "pullback-fwd", "pullback-serial"]]
    pb = record["pullback"]
    assert pb["backward_forward_ratio"] == pytest.approx(2.0)
    assert pb["serial_step_median_ms"] == pytest.approx(3.0) and pb["parallel_speedup"] == pytest.approx(1.5)
    assert report.pullback_rows([record])[0][6] == "1.50x"


def test_no_second_run_without_pullback(monkeypatch, timings):
    def unavailable(wl, opt_level):
        raise Unavailable("not written yet")

    monkeypatch.setattr(run, "setup_pullback", unavailable)
    record = run.run_workload(build("mlp", "test"), SETTINGS, PEAK)
    assert [t["names"] for t in timings] == [["numpy"]]
    assert "backward_forward_ratio" not in record["pullback"]


def test_rnn_scaling_jobs_get_the_alone_ratio_too(monkeypatch):
    """Real timing on a scaling job (it goes through run_workload too): the two kernels are
    timed twice, with numpy and then alone."""
    log: list[str] = []
    monkeypatch.setattr(run, "setup_pullback", _fake_pullback(log))
    monkeypatch.setattr(run, "SETTLE_S", 0.0)
    job = {"workload": "rnn-scaling", "preset": "quick", "steps": 4}
    record = run.guarded(lambda: run.job_workload(job), SETTINGS, PEAK)
    assert record["name"] == "rnn-T4" and record["status"] == "ok", record["messages"]
    per_run = SETTINGS.warmup + SETTINGS.calls
    assert log.count("pullback") == log.count("pullback-fwd") == 2 * per_run
    assert record["pullback"]["backward_forward_ratio"] > 0
    assert record["pullback"]["backward_forward_ratio_mixed"] > 0
    assert report.pullback_rows([record])[0][0] == "rnn-T4"
