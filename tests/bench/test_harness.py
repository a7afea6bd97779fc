"""The timing harness and the bench command's plumbing, on trivial callables and tiny
workloads (no timing assertions)."""
from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import asdict

import numpy as np
import pytest

from bench import contenders, harness, report, run
from bench.workloads import Unavailable, build


def test_summarize_percentiles():
    stats = harness.summarize([float(v) for v in range(1, 11)], number=3)
    assert stats.median == pytest.approx(5.5)
    assert stats.p10 == pytest.approx(1.9)
    assert stats.p90 == pytest.approx(9.1)
    assert stats.min == 1.0 and stats.samples == 10 and stats.number == 3
    with pytest.raises(ValueError):
        harness.summarize([])


def test_ratio():
    assert harness.ratio(3.0, 1.5) == 2.0
    assert harness.ratio(None, 1.0) is None
    assert harness.ratio(1.0, 0.0) is None


def test_round_robin_calls_everyone_alike():
    counts = {"a": 0, "b": 0}

    def bump(key):
        def call():
            counts[key] += 1
        return call

    stats = harness.round_robin({"a": bump("a"), "b": bump("b")}, calls=7, warmup=2)
    assert counts == {"a": 9, "b": 9}
    assert set(stats) == {"a", "b"}
    assert all(s.samples == 7 and s.number == 1 and s.p10 <= s.median <= s.p90 for s in stats.values())
    with pytest.raises(ValueError):
        harness.round_robin({"a": bump("a")}, calls=0)


def test_round_robin_hooks_wrap_every_sample_untimed():
    log = []
    harness.round_robin({"a": lambda: log.append("call"), "b": lambda: None}, calls=2, warmup=1,
                        hooks={"a": (lambda: log.append("enter"), lambda: log.append("leave"))})
    assert log == ["enter", "call", "leave"] * 3  # warm-up, two samples


def _logged_round_robin(names, calls, **kwargs):
    """(the shared call log of a timed run, its stats)."""
    log = []
    stats = harness.round_robin({name: (lambda n=name: log.append(n)) for name in names}, calls=calls,
                                warmup=0, **kwargs)
    return log, stats


def test_round_robin_draws_a_fresh_order_each_round():
    names = ["a", "b", "c", "d"]
    log, stats = _logged_round_robin(names, calls=40)
    rounds = [tuple(log[i:i + 4]) for i in range(0, len(log), 4)]
    assert len(rounds) == 40 and all(sorted(r) == names for r in rounds)
    assert len(set(rounds)) > 10  # a rotation would give only 4 distinct orders
    assert all(s.samples == 40 and s.number == 1 for s in stats.values())
    assert all(log.count(name) == 40 for name in names)


def test_round_robin_every_contender_follows_every_other():
    """A contender slows down the one after it (spinning thread pools): with a fixed cyclic
    order "a" would always follow "d" (or "c" at round boundaries)."""
    log, _ = _logged_round_robin(["a", "b", "c", "d"], calls=200)
    before_a = Counter(prev for prev, cur in zip(log, log[1:]) if cur == "a")
    total = sum(before_a.values())
    for other in "bcd":
        assert 0.2 < before_a[other] / total < 0.45, before_a


def test_round_robin_order_is_reproducible_from_the_seed():
    names = ["a", "b", "c"]
    assert _logged_round_robin(names, calls=20)[0] == _logged_round_robin(names, calls=20, seed=0)[0]
    assert _logged_round_robin(names, calls=20, seed=5)[0] == _logged_round_robin(names, calls=20, seed=5)[0]
    assert _logged_round_robin(names, calls=20, seed=5)[0] != _logged_round_robin(names, calls=20, seed=6)[0]


def test_calibrate_batches_short_calls():
    assert harness.calibrate(lambda: None, 0.0) == 1
    assert harness.calibrate(lambda: None, 1e-3) > 1


def test_machine_info():
    info = harness.machine_info()
    assert info["cores"] >= 1 and info["cpu"] and info["numpy"] == np.__version__


def test_grad_error():
    ref = (1.0, {"w": np.array([1.0, -2.0])})
    assert contenders.grad_error((1.0, {"w": np.array([1.0, -2.0])}), ref)[0] == 0.0
    err, where = contenders.grad_error((1.0, {"w": np.array([1.0, -1.0])}), ref)
    assert err == pytest.approx(0.5) and where == "dw"
    assert contenders.grad_error((1.0, {"v": np.zeros(2)}), ref)[0] == float("inf")
    assert contenders.grad_error((1.0, {"w": np.array([np.nan, 0.0])}), ref)[0] == float("inf")


def test_parse_args_rejects_unknown_names(capsys):
    with pytest.raises(SystemExit):
        run.parse_args(["--workloads", "mlp,transformer"])
    assert "transformer" in capsys.readouterr().err
    args = run.parse_args(["--quick", "--workloads", "mlp, gnn", "--contenders", "numpy"])
    assert args.workloads == ["mlp", "gnn"] and args.contenders == ["numpy"]
    assert "torch.compile" not in run.parse_args(["--quick"]).contenders
    assert "torch.compile" in run.parse_args([]).contenders


SETTINGS = run.Settings(calls=2, warmup=1, min_sample_s=0.0, opt_level=2, preset="test",
                        contenders=("pullback", "numpy"))
PEAK = {"all_cores_gflops": 10.0, "best_gflops": 10.0, "single_thread_gflops": 5.0}


def test_workload_without_pullback_still_times_numpy(monkeypatch):
    def unavailable(wl, opt_level):
        raise Unavailable("the code generator (compiler.codegen) is not written yet")

    monkeypatch.setattr(run, "setup_pullback", unavailable)
    record = run.run_workload(build("mlp", "test"), SETTINGS, PEAK)
    assert record["status"] == "ok"
    reason = "the code generator (compiler.codegen) is not written yet"
    assert record["pullback"] == {"available": False, "reason": reason}
    assert record["contenders"]["numpy"]["median_ms"] > 0
    rows = report.timing_rows([record]) + report.pullback_rows([record])
    assert any("not available" in cell for row in rows for cell in row)


def _fake_pullback(grads_scale):
    def setup(wl, opt_level):
        def result():
            loss, grads = wl.numpy_step(*wl.args())
            return float(loss), {k: v * grads_scale for k, v in grads.items()}

        info = {"trace_s": 0.0, "autodiff_s": 0.0, "compile_cold_s": 0.1, "compile_cached_s": 0.01,
                "workspace_bytes": 1024}
        return (contenders.Contender("pullback", lambda: None, result, 0.1, info),
                contenders.Contender("pullback-fwd", lambda: None, result, 0.05))
    return setup


def test_gradient_mismatch_aborts_the_workload(monkeypatch):
    monkeypatch.setattr(run, "setup_pullback", _fake_pullback(1.5))
    record = run.run_workload(build("rnn", "test"), SETTINGS, PEAK)
    assert record["status"] == "aborted"
    assert record["grad_failures"][0]["contender"] == "pullback"
    assert "numpy" not in record["contenders"]  # nothing was timed


def test_report_and_json(monkeypatch, tmp_path):
    monkeypatch.setattr(run, "setup_pullback", _fake_pullback(1.0))
    record = run.run_workload(build("lstm", "test"), SETTINGS, PEAK)
    assert record["status"] == "ok"
    pb = record["contenders"]["pullback"]
    assert pb["pullback_ratio"] == 1.0 and pb["gflops"] > 0
    assert record["pullback"]["backward_forward_ratio"] > 0
    headers = ["workload", "contender", "median ms", "p10 ms", "p90 ms", "pb/x", "GFLOP/s", "peak", "1t peak",
               "setup s"]
    rows = report.timing_rows([record])
    assert all(len(row) == len(headers) for row in rows)
    text = report.table(headers, rows)
    assert "lstm" in text and "pullback-fwd" in text
    path = tmp_path / "out.json"
    path.write_text(json.dumps(report.jsonable({"workloads": [record], "bad": float("inf")})))
    assert json.loads(path.read_text())["bad"] is None


def test_real_pullback_step_if_the_code_generator_exists(monkeypatch, tmp_path):
    monkeypatch.setenv("PULLBACK_CACHE_DIR", str(tmp_path))
    try:
        contenders._codegen_compile()
    except Unavailable as exc:
        pytest.skip(str(exc))
    settings = run.Settings(calls=2, warmup=1, min_sample_s=0.0, opt_level=0, preset="test",
                            contenders=("pullback", "numpy"))  # -O0: the fastest compiles
    record = run.run_workload(build("mlp", "test"), settings, PEAK)
    if not record["pullback"]["available"]:
        pytest.skip(f"pullback: not available: {record['pullback']['reason']}")
    assert record["status"] == "ok", record["messages"]
    assert record["pullback"]["grad_max_rel_err"] <= run.GRAD_RTOL


def test_a_failing_workload_is_reported_not_raised(monkeypatch):
    def broken(wl, settings, peak):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(run, "run_workload", broken)
    record = run.guarded(lambda: build("rnn", "test"), SETTINGS, PEAK)
    assert record["status"] == "error" and "kernel exploded" in record["messages"][0]
    assert report.timing_rows([record])[0][1] == "(error)"
    assert report.scaling_rows([record])[0][1] == "error"


ABORT = "import os, sys; print('child running', flush=True); os.abort()"


@pytest.mark.parametrize("script, status", [
    (ABORT, "crashed"),
    ("import sys; sys.exit(3)", "crashed"),
    ("import time; time.sleep(30)", "timeout"),
])
def test_a_dying_child_process_becomes_the_workload_status(monkeypatch, script, status):
    monkeypatch.setattr(run, "child_command", lambda payload: [sys.executable, "-c", script])
    job = {"workload": "rnn-scaling", "preset": "quick", "steps": 4}
    record = run.run_isolated(job, SETTINGS, PEAK, timeout=0.5)
    assert record["name"] == "rnn-T4" and record["status"] == status
    assert report.scaling_rows([record])[0][:2] == ["4", status]


def test_child_process_round_trip(monkeypatch, tmp_path):
    """A real child: the mlp job at test sizes, numpy only (no compiler, no peers)."""
    monkeypatch.setattr(run, "job_workload", lambda job: build("mlp", "test"))
    settings = run.Settings(calls=2, warmup=0, min_sample_s=0.0, opt_level=2, preset="test", contenders=("numpy",))
    payload = tmp_path / "job.json"
    out = tmp_path / "record.json"
    payload.write_text(json.dumps({"job": {"workload": "mlp", "preset": "test", "steps": None},
                                   "settings": asdict(settings), "peak": PEAK, "out": str(out)}))
    assert run.main(["--child", str(payload)]) == 0
    record = json.loads(out.read_text())
    assert record["status"] == "ok" and record["contenders"]["numpy"]["calls"] == 2


def test_a_slow_peer_setup_is_dropped(monkeypatch):
    def hang(wl):
        while True:
            pass

    monkeypatch.setattr(run, "setup_jax", hang)
    settings = run.Settings(calls=2, warmup=0, min_sample_s=0.0, opt_level=2, preset="test",
                            contenders=("numpy", "jax"), setup_timeout=0.2)
    record = run.run_workload(build("mlp", "test"), settings, PEAK)
    assert record["status"] == "ok"
    assert record["contenders"]["jax"] == {"available": False,
                                           "reason": "setup took longer than 0.2 s (--setup-timeout)"}
    assert record["contenders"]["numpy"]["available"]


def test_time_limit_interrupts_python_code():
    with pytest.raises(contenders.SetupTimeout, match="longer than 0.05 s"):
        with contenders.time_limit(0.05):
            while True:
                pass
    with contenders.time_limit(None):
        pass
