"""compile(graph, profile=True): per-kernel cycle counters, read back and reported."""
from __future__ import annotations

import sys
import time

import numpy as np
import pytest

import compiler
from compiler import ops
from compiler.codegen import compile as compile_graph
from compiler.codegen import emit, profiling
from compiler.frontend.trace import Spec
from runtime.pytree import flatten

codegen_compile = sys.modules["compiler.codegen.compile"]


def mlp_graph(n=96):
    def loss(x, w1, w2):
        return ops.sum(ops.tanh(ops.tanh(x @ w1) @ w2))

    return compiler.trace(loss, Spec((n, n)), Spec((n, n)), Spec((n, n)), name="prof")


def arrays(graph, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(graph.type(i).shape).astype(np.float32) * 0.1 for i in graph.inputs]


def test_profile_false_is_the_default_build_byte_for_byte():
    graph = compiler.value_and_grad(mlp_graph())
    default = codegen_compile.build(graph, 2)
    off = codegen_compile.build(graph, 2, profile=False)
    on = codegen_compile.build(graph, 2, profile=True)
    assert off.ir_text == default.ir_text and off.profile is None
    assert "readcyclecounter" not in default.ir_text
    assert "readcyclecounter" in on.ir_text and on.ir_text != default.ir_text
    # the counters sit after every planned buffer
    assert on.profile["offset"] >= default.workspace_bytes
    assert on.workspace_bytes == on.profile["offset"] + 16 * (len(on.profile["steps"]) + 1)
    plain = compile_graph(graph, cache=False)
    assert plain.object_code == compile_graph(graph, cache=False, profile=False).object_code
    assert plain.extra("profile") is None and plain.profile_counters() is None


def test_profiled_results_equal_the_plain_build():
    graph = compiler.value_and_grad(mlp_graph())
    args = arrays(graph)
    plain = compile_graph(graph, cache=False)(*args)
    profiled = compile_graph(graph, cache=False, profile=True)(*args)
    for a, b in zip(flatten(plain)[0], flatten(profiled)[0], strict=True):
        np.testing.assert_array_equal(a, b)


def test_profile_names_each_step_and_counts_its_calls():
    graph = mlp_graph()
    kernel = compile_graph(graph, cache=False, profile=True, opt_level=0)  # no fusion: one op per step
    args = arrays(graph)
    for _ in range(7):
        kernel(*args)
    p = profiling.collect(kernel)
    assert p.calls == 7
    ops_run = [r.op for r in p.rows]
    assert ops_run.count("matmul") == 2 and ops_run.count("tanh") == 2 and "sum" in ops_run
    assert all(r.calls == 7 for r in p.rows)
    matmul = next(r for r in p.rows if r.op == "matmul")
    assert matmul.shapes == "96x96, 96x96 -> 96x96"
    assert matmul.label.startswith("%") and "test_profile.py" in matmul.label  # the IR node and source line
    assert matmul.kernel.startswith("k.matmul")
    text = profiling.report(p)
    assert "by kernel function" in text and "k.matmul" in text and "test_profile.py" in text
    slowest = max(p.rows, key=lambda r: r.seconds)
    assert text.splitlines()[2].endswith(slowest.label)  # the table is sorted by time
    profiling.reset(kernel)
    assert profiling.collect(kernel).calls == 0


def test_fusion_kind_is_reported():
    graph = compiler.value_and_grad(mlp_graph())
    kernel = compile_graph(graph, cache=False, profile=True)
    kernel(*arrays(graph))
    kinds = {r.kind for r in profiling.collect(kernel).rows if r.op == "fusion"}
    assert "matmul" in kinds


def test_profile_sums_to_the_measured_call_time():
    graph = mlp_graph(256)
    kernel = compile_graph(graph, cache=False, profile=True, parallel=False)
    args = arrays(graph)
    kernel(*args)
    ratios, covered = [], []
    for _ in range(5):
        profiling.reset(kernel)
        start = time.perf_counter()
        for _ in range(20):
            kernel(*args)
        wall = (time.perf_counter() - start) / 20
        p = profiling.collect(kernel)
        ratios.append(p.seconds / wall)
        covered.append(sum(r.seconds for r in p.rows) / p.seconds)
    # native time is most of a call of this size (the rest: argument checks, output arrays)
    # and never more than the call; the steps are nearly all of the native time
    assert 0.6 < max(ratios) and min(ratios) <= 1.02
    assert 0.9 < np.median(covered) <= 1.0


def test_chunked_entries_keep_each_step_in_its_own_slot(monkeypatch):
    monkeypatch.setattr(emit, "CHUNK", 2)
    graph = mlp_graph(16)
    kernel = compile_graph(graph, cache=False, profile=True, opt_level=0)
    args = arrays(graph)
    np.testing.assert_allclose(kernel(*args), compiler.evaluate(graph, *args), rtol=1e-5)
    kernel(*args)
    p = profiling.collect(kernel)
    assert len(p.rows) > 2 and all(r.calls == 2 for r in p.rows)
    assert [r.op for r in p.rows if r.op in ("matmul", "tanh")] == ["matmul", "tanh", "matmul", "tanh"]


def test_cache_keeps_profiled_and_plain_builds_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("PULLBACK_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("PULLBACK_NO_CACHE", raising=False)
    graph = mlp_graph(8)
    profiled = compile_graph(graph, profile=True)
    plain = compile_graph(graph)
    assert profiled.extra("profile") is not None and plain.extra("profile") is None
    assert compile_graph(graph, profile=True).extra("profile") is not None  # a hit of its own entry
    assert len(list(tmp_path.glob("*.pullback"))) == 2


def test_reading_a_plain_kernel_is_a_clear_error():
    kernel = compile_graph(mlp_graph(8), cache=False)
    with pytest.raises(ValueError, match="profile=True"):
        profiling.collect(kernel)
    with pytest.raises(ValueError, match="profile=True"):
        profiling.reset(kernel)


def test_measure_takes_medians_over_rounds():
    graph = mlp_graph(32)
    kernel = compile_graph(graph, cache=False, profile=True)
    args = arrays(graph)
    p = profiling.measure(kernel, lambda: kernel(*args), calls=5, rounds=3)
    assert p.calls == 15 and all(r.calls == 15 for r in p.rows)
    assert 0 < sum(r.seconds for r in p.rows) <= p.seconds * 1.05
    with pytest.raises(ValueError):
        profiling.measure(kernel, lambda: kernel(*args), calls=0)


def test_a_manifest_pointing_outside_the_workspace_gives_no_counters():
    import runtime

    kernel = compile_graph(mlp_graph(8), cache=False, profile=True)
    manifest = kernel.manifest
    manifest["extra"]["profile"]["offset"] = manifest["workspace_bytes"]
    hostile = runtime.Kernel.from_parts(manifest, kernel.object_code)
    assert hostile.profile_counters() is None


def test_a_failing_step_still_raises_and_is_counted():
    import runtime
    from compiler.ops.implicit import fixed_point

    def slow(x):  # converges, but not within 3 steps: the fixed_point step returns status 1
        return ops.exp(fixed_point(lambda z, x: 0.9 * z + x, ops.zeros_like(x), x, tol=1e-12, max_iter=3))

    x = np.array([1.0, 2.0])
    kernel = compile_graph(compiler.trace(slow, x), cache=False, profile=True)
    for _ in range(2):
        with pytest.raises(runtime.KernelError, match="error code 1"):
            kernel(x)
    p = profiling.collect(kernel)
    assert p.calls == 2
    calls = {r.op: r.calls for r in p.rows}
    assert calls["fixed_point"] == 2 and calls["exp"] == 0  # nothing after the failure ran


def test_a_fixed_point_body_is_timed_inside_its_step():
    from compiler.ops.implicit import fixed_point

    def f(x):
        return fixed_point(lambda z, x: 0.5 * ops.sin(z) + x, x, x, tol=1e-10, max_iter=100) * 2.0

    x = np.array([0.5, 1.0, 2.0])
    graph = compiler.trace(f, x)
    kernel = compile_graph(graph, cache=False, profile=True)
    np.testing.assert_allclose(kernel(x), compiler.evaluate(graph, x), rtol=1e-9)
    rows = profiling.collect(kernel).rows
    assert [r.op for r in rows].count("fixed_point") == 1 and all(r.calls == 1 for r in rows)
