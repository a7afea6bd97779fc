"""Scale: long unrolled loops, deep networks and 100,000-node graphs go through every stage
without recursion errors and in time linear in their size. Timings are printed (run with
-s or look at the terminal: they bypass capture); heavy tests are marked slow."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import compiler
from compiler import Spec, ops
from compiler.ir.graph import Graph
from compiler.ir.types import TensorType
from tests.reliability.crashproof import assert_ok, run_python

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def timed(label: str, capsys, sink: dict | None = None, nodes: int | None = None):
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    if sink is not None:
        sink[label] = seconds
    per_node = f" ({seconds / nodes * 1e6:.1f} us/node over {nodes:,} nodes)" if nodes else ""
    with capsys.disabled():
        print(f"\n    [scale] {label}: {seconds:.2f} s{per_node}", end="", flush=True)


def rnn_model():
    from compiler.models import load_model

    return load_model(ROOT / "examples" / "rnn.py")


def rnn_args(model, steps: int):
    rng = np.random.default_rng(0)
    params = model.module.init_params(0, n_in=3, hidden=4, n_out=2)
    xs = rng.standard_normal((steps, 2, 3)).astype(np.float32)
    targets = rng.standard_normal((steps, 2, 2)).astype(np.float32)
    return params, xs, targets


def rnn_graph(model, steps: int):
    return compiler.trace(model.loss, *model.module.specs(steps=steps, batch=2, n_in=3, hidden=4, n_out=2))


def assert_step_close(result, expected, rtol=2e-4, atol=1e-6):
    value, grads = result
    ref_value, ref_grads = expected
    np.testing.assert_allclose(value, ref_value, rtol=rtol, atol=atol)
    for got, want in zip(_leaves(grads), _leaves(ref_grads)):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def _leaves(tree):
    from runtime.pytree import flatten

    return flatten(tree)[0]


# ------------------------------------------------------------------- RNN, T = 2000
def test_rnn_300_steps_end_to_end(capsys):
    """The quick version of the T=2000 test: every stage, compiled result equals the interpreter."""
    model = rnn_model()
    with timed("rnn T=300 trace", capsys):
        graph = rnn_graph(model, 300)
    with timed("rnn T=300 value_and_grad", capsys):
        step = compiler.value_and_grad(graph)
    compiler.verify(step)
    args = rnn_args(model, 300)
    expected = compiler.evaluate(step, *args)
    try:
        from compiler.codegen import compile as compile_graph
    except ImportError:
        pytest.skip("compiler.codegen.compile is unavailable")
    with timed("rnn T=300 compile", capsys):
        kernel = compile_graph(step, opt_level=2, cache=False)
    assert_step_close(kernel(*args), expected)


@pytest.mark.slow
def test_rnn_2000_steps_trace_grad_verify_optimize(capsys):
    model = rnn_model()
    times: dict = {}
    with timed("rnn T=2000 trace", capsys, times):
        graph = rnn_graph(model, 2000)
    with timed("rnn T=2000 value_and_grad", capsys, times, nodes=len(graph)):
        step = compiler.value_and_grad(graph)
    with timed("rnn T=2000 verify", capsys, times, nodes=len(step)):
        compiler.verify(step)
    with timed("rnn T=2000 dump + parse", capsys, times, nodes=len(step)):
        again = compiler.parse(compiler.dump(step))
    assert len(again) == len(step)
    args = rnn_args(model, 2000)
    with timed("rnn T=2000 evaluate", capsys, times, nodes=len(step)):
        expected = compiler.evaluate(step, *args)
    assert np.isfinite(expected[0])
    pipeline = pytest.importorskip("compiler.pipeline")
    with timed("rnn T=2000 optimize -O2", capsys, times, nodes=len(step)):
        optimized = pipeline.optimize(step, 2)
    assert len(optimized) < len(step)
    assert_step_close(compiler.evaluate(optimized, *args), expected)
    with capsys.disabled():
        print(f"\n    [scale] rnn T=2000: forward {len(graph):,} nodes, backward {len(step):,}, "
              f"optimized {len(optimized):,}", end="")
    assert times["rnn T=2000 value_and_grad"] < 120 and times["rnn T=2000 optimize -O2"] < 120


@pytest.mark.slow
def test_rnn_2000_steps_compile(capsys):
    try:
        from compiler.codegen import compile as compile_graph
    except ImportError:
        pytest.skip("compiler.codegen.compile is unavailable")
    model = rnn_model()
    step = compiler.value_and_grad(rnn_graph(model, 2000))
    times: dict = {}
    with timed("rnn T=2000 compile -O2", capsys, times, nodes=len(step)):
        kernel = compile_graph(step, opt_level=2, cache=False)
    args = rnn_args(model, 2000)
    assert_step_close(kernel(*args), compiler.evaluate(step, *args))
    start = time.perf_counter()
    for _ in range(10):
        kernel(*args)
    with capsys.disabled():
        print(f"\n    [scale] rnn T=2000 native call: {(time.perf_counter() - start) / 10 * 1e3:.2f} ms, "
              f"build timings {kernel.manifest['extra'].get('timings')}", end="")
    assert times["rnn T=2000 compile -O2"] < 180


# ---------------------------------------------------------------- 200-layer MLP
def deep_mlp(params, x, y):
    h = x
    for layer in params:
        h = ops.tanh(h @ layer["W"] + layer["b"])
    return ops.mean(ops.square(h - y))


def test_mlp_200_layers_every_stage(capsys):
    layers, width = 200, 16
    specs = [{"W": Spec((width, width)), "b": Spec((width,))} for _ in range(layers)]
    with timed("mlp 200 layers trace", capsys):
        graph = compiler.trace(deep_mlp, specs, Spec((8, width)), Spec((8, width)))
    with timed("mlp 200 layers value_and_grad", capsys):
        step = compiler.value_and_grad(graph)
    compiler.verify(step)
    rng = np.random.default_rng(0)
    params = [{"W": (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32),
               "b": np.zeros(width, np.float32)} for _ in range(layers)]
    args = (params, rng.standard_normal((8, width)).astype(np.float32), rng.standard_normal((8, width)).astype(np.float32))
    expected = compiler.evaluate(step, *args)
    assert len(expected[1]) == layers and np.isfinite(expected[0])
    pipeline = pytest.importorskip("compiler.pipeline")
    with timed("mlp 200 layers optimize", capsys):
        optimized = pipeline.optimize(step, 2)
    assert_step_close(compiler.evaluate(optimized, *args), expected)
    try:
        from compiler.codegen import compile as compile_graph
    except ImportError:
        return
    with timed("mlp 200 layers compile", capsys):
        kernel = compile_graph(step, opt_level=2, cache=False)
    assert_step_close(kernel(*args), expected)


# ------------------------------------------------------------ 100,000-node graph
def chain_graph(size: int) -> tuple[Graph, int]:
    """x -> tanh -> *w -> +w -> sin -> ... : a `size`-node chain (one path, depth ~size)
    whose every other op also reads the shared input w (fan-out ~size/2)."""
    graph = Graph("chain")
    f32 = TensorType((4,), "float32")
    x = graph.add_input("x", f32, "param")
    w = graph.add_input("w", f32, "data")
    graph.in_tree = (..., ...)
    current, index = x, 0
    while len(graph) < size - 1:
        op = ("tanh", "mul", "add", "sin")[index % 4]
        current = graph.add_node(op, (current, w) if op in ("mul", "add") else (current,))
        index += 1
    graph.set_outputs([graph.add_node("sum", (current,), {"axes": (0,), "keepdims": False})])
    return graph, x


def measure(size: int) -> dict:
    graph, _ = chain_graph(size)
    out = {}
    start = time.perf_counter()
    compiler.verify(graph)
    out["verify"] = (time.perf_counter() - start) / len(graph) * 1e6
    start = time.perf_counter()
    step = compiler.value_and_grad(graph)
    out["adjoint"] = (time.perf_counter() - start) / len(graph) * 1e6
    out["nodes"], out["backward nodes"] = len(graph), len(step)
    return out


@pytest.mark.slow
def test_100k_node_graph_verify_and_adjoint(capsys):
    times: dict = {}
    with timed("100k build", capsys, times):
        graph, _ = chain_graph(100_000)
    assert len(graph) == 100_000
    with timed("100k verify", capsys, times, nodes=len(graph)):
        compiler.verify(graph)
    with timed("100k value_and_grad (adjoint pass)", capsys, times, nodes=len(graph)):
        step = compiler.value_and_grad(graph)
    with timed("100k verify backward", capsys, times, nodes=len(step)):
        compiler.verify(step)
    with timed("100k evaluate backward", capsys, times, nodes=len(step)):
        value, grad = compiler.evaluate(step, np.full(4, 0.1, np.float32), np.full(4, 0.9, np.float32))
    assert np.isfinite(value) and np.isfinite(grad).all()
    # generous bounds (~10x what a linear implementation takes): a quadratic one blows them
    assert times["100k verify"] / len(graph) * 1e6 < 200
    assert times["100k value_and_grad (adjoint pass)"] / len(graph) * 1e6 < 2000


@pytest.mark.slow
def test_verify_and_adjoint_scale_linearly(capsys):
    small, large = measure(12_500), measure(50_000)
    with capsys.disabled():
        print(f"\n    [scale] us/node at 12.5k: {small}, at 50k: {large}", end="")
    for stage in ("verify", "adjoint"):
        # linear: the per-node cost stays flat; quadratic: it grows 4x from 12.5k to 50k
        assert large[stage] < 2.5 * small[stage] + 20, (stage, small, large)


def test_20k_node_graph_quickly(capsys):
    """The non-slow guard: a 20,000-node chain through verify and the adjoint pass."""
    with timed("20k build+verify+adjoint", capsys):
        result = measure(20_000)
    with capsys.disabled():
        print(f"\n    [scale] 20k: {result}", end="")
    assert result["verify"] < 200 and result["adjoint"] < 2000


# The accumulate pass tests single use in O(1) and checks _is_sum first: a value read by n
# adds once cost O(n^2) there (10k adds sharing one operand took 5 s).
def test_accumulate_pass_is_linear_in_fan_out():
    """20,000 adds that all read one shared value: a linear pass needs well under a second
    (the quadratic one takes ~20 s, so the child is stopped at 12 s)."""
    code = """
        import time
        from compiler.ir.graph import Graph
        from compiler.ir.types import TensorType
        from compiler.passes.accumulate import Accumulate
        g = Graph("fan")
        f32 = TensorType((4,), "float32")
        x, w = g.add_input("x", f32, "param"), g.add_input("w", f32, "data")
        g.in_tree = (..., ...)
        current = x
        for _ in range(20_000):
            current = g.add_node("tanh", (g.add_node("add", (current, w)),))
        g.set_outputs([current])
        start = time.perf_counter()
        changed = Accumulate().apply(g)
        fan = time.perf_counter() - start
        # and a tree of 20,000 single-use adds over one shared leaf: collapses into one add_n
        h = Graph("tree")
        y, v = h.add_input("y", f32, "param"), h.add_input("v", f32, "data")
        h.in_tree = (..., ...)
        total = h.add_node("add", (y, v))
        for _ in range(20_000):
            total = h.add_node("add", (total, v))
        h.set_outputs([total])
        start = time.perf_counter()
        assert Accumulate().apply(h)
        tree = time.perf_counter() - start
        (root,) = h.outputs
        assert h.node(root).op == "add_n" and len(h.node(root).operands) == 20_002
        print(f"{int(changed)} {fan:.2f} {tree:.2f}")
    """
    result = run_python(code, timeout=12)
    changed, fan, tree = assert_ok(result).strip().splitlines()[-1].split()
    assert changed == "0", "no add there has a single-use sum operand"
    assert float(fan) < 3 and float(tree) < 3, (fan, tree)


def test_deep_chain_has_no_recursion_in_printing_parsing_and_dot(capsys):
    """A 4k-deep dependency chain under a recursion limit of ~400: nothing may recurse per node."""
    graph, _ = chain_graph(4_000)
    step = compiler.value_and_grad(graph)
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(400, len(__import__("inspect").stack()) + 300))
    try:
        with timed("4k-deep dump+parse+dot+verify+optimize", capsys):
            text = compiler.dump(step)
            again = compiler.parse(text)
            compiler.to_dot(again)
            compiler.verify(again)
            pipeline = pytest.importorskip("compiler.pipeline")
            pipeline.optimize(again, 1)
    finally:
        sys.setrecursionlimit(old)
    assert len(again) == len(step)
