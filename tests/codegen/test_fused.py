"""Fusion kernels (compiler/codegen/fused.py) against the interpreter and the unfused kernels:
the example models at every opt level, both fusion kinds over strided and broadcast
operands, NaN/Inf, ints, empty shapes, and kernel sharing across unrolled steps.

Tolerances as in test_codegen.py; a loop fusion must equal the unfused kernels bitwise."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compiler
import runtime
from compiler import Spec, ops
from compiler.codegen import build, compile as compile_graph
from compiler.models import load_model
from compiler.pipeline import PIPELINES
from tests.passes.test_properties import SHAPES, step
from tests.passes.test_properties import build as build_program

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
F32 = dict(rtol=1e-4, atol=1e-5)


def leaves(tree):
    return runtime.pytree.flatten(tree)[0]


def _count(graph, op):
    return sum(node.op == op for _, node in graph.nodes())


def check(fn, *args, tol=None, fusions=None):
    """Compile at opt_level 2, compare with the interpreter; returns (kernel, optimized graph)."""
    graph = compiler.trace(fn, *args)
    optimized = build(graph, 2).graph
    if fusions is not None:
        assert _count(optimized, "fusion") == fusions, compiler.dump(optimized)
    kernel = compile_graph(graph, 2, cache=False)
    actual, expected = kernel(*args), compiler.evaluate(graph, *args)
    for a, e in zip(leaves(actual), leaves(expected), strict=True):
        assert a.shape == e.shape and a.dtype == e.dtype, (a.dtype, a.shape, e.dtype, e.shape)
        if e.dtype.kind == "f":
            np.testing.assert_allclose(a, e, **(tol or dict(rtol=1e-12, atol=0)))
        else:
            np.testing.assert_array_equal(a, e)
    return kernel, optimized


def normal(shape, dtype="float64", seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


# ------------------------------------------------------------------ models
@pytest.mark.parametrize("name", ["mlp", "rnn", "lstm"])
def test_example_training_steps_match_the_interpreter_at_every_opt_level(name):
    model = load_model(EXAMPLES / f"{name}.py")
    graph = compiler.value_and_grad(model.trace())
    args = model.example_args(0)
    expected = leaves(compiler.evaluate(graph, *args))
    for opt_level in (0, 1, 2):
        actual = leaves(compile_graph(graph, opt_level, cache=False)(*args))
        for a, e in zip(actual, expected, strict=True):
            np.testing.assert_allclose(a, e, **F32, err_msg=f"{name} at opt_level {opt_level}")


@pytest.mark.parametrize("name", ["mlp", "rnn", "lstm"])
def test_fusion_runs_fewer_loops_without_growing_the_workspace(name, monkeypatch):
    model = load_model(EXAMPLES / f"{name}.py")
    graph = compiler.value_and_grad(model.trace())
    fused = build(graph, 2)
    # opt_level 2 minus fuse and epilogue (the compile cache is keyed by opt_level: compile with cache=False)
    monkeypatch.setitem(PIPELINES, 2, [p for p in PIPELINES[2] if p.name not in ("fuse", "epilogue")])
    unfused = build(graph, 2)
    assert _count(fused.graph, "fusion") > 0 and _count(unfused.graph, "fusion") == 0
    assert fused.kernel_calls < 0.8 * unfused.kernel_calls
        # members need no buffers; operands read by a later group live longer (+5% on the RNN)
    assert fused.workspace_bytes <= unfused.workspace_bytes * 1.10


def test_unrolled_steps_share_fusion_kernels():
    model = load_model(EXAMPLES / "rnn.py")
    kernels = []
    for steps in (8, 24):  # (both stack their weight-gradient products: one block each)
        graph = compiler.value_and_grad(compiler.trace(model.loss, *model.module.specs(steps), name="rnn"))
        result = build(graph, 2)
        assert result.kernel_calls > 9 * steps
        kernels.append(result.kernels)
    assert kernels[0] == kernels[1]


# ------------------------------------------------------------------ loop fusions
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_loop_fusion_equals_the_unfused_kernels_bitwise(dtype, monkeypatch):
    def f(x, b, s):
        return ops.tanh(x * s + b) * ops.sigmoid(x) - ops.exp(-ops.square(x)) / (ops.abs(b) + 1.0)

    args = normal((33, 17), dtype), normal((17,), dtype, 1), normal((), dtype, 2)
    graph = compiler.trace(f, *args)
    monkeypatch.setitem(PIPELINES, 2, [p for p in PIPELINES[2] if p.name not in ("fuse", "epilogue")])
    unfused = compile_graph(graph, 2, cache=False)(*args)
    monkeypatch.undo()
    optimized = build(graph, 2).graph
    assert [n.op for _, n in optimized.nodes()] == ["input"] * 3 + ["fusion"] * 2  # |b| + 1 is broadcast: its own
    fused = compile_graph(graph, 2, cache=False)(*args)
    np.testing.assert_array_equal(fused, unfused)
    np.testing.assert_allclose(fused, compiler.evaluate(graph, *args), rtol=1e-12 if dtype == "float64" else 1e-5)


def test_strided_and_broadcast_operands_and_mixed_dtypes():
    def f(x, y, k):
        xt = x.T[1:, ::2]  # a transposed, sliced view as an operand
        mask = ops.cast(k, "float64") > 0.0
        return ops.where(ops.logical_and(mask, xt > 0.0), xt * y, ops.cast(k * 2 - 1, "float64") + xt)

    x = normal((6, 5))
    y = normal((1, 3), seed=1)
    k = np.random.default_rng(3).integers(-3, 3, size=(4, 1)).astype(np.int32)
    check(f, x, y, k, fusions=3)  # the [4,1] mask and cast are broadcast: each is its own group


def test_nan_and_inf_propagate_through_fused_chains():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -2.5], np.float32)
    check(lambda x: (ops.maximum(x * 2.0, 0.0) + ops.minimum(x, 1.0), ops.sum(ops.abs(x) * 2.0),
                     ops.max(x + 1.0), ops.min(ops.where(x > 0.0, x, -x) * 1.0)), x,
          tol=dict(rtol=1e-6), fusions=2)  # the three reductions share one siblings loop


def test_int_and_bool_chains():
    a = np.arange(-6, 6, dtype=np.int64).reshape(3, 4)
    b = np.array([1, -2, 3, 0], np.int64)
    check(lambda a, b: (ops.logical_not((a * b - 1) > (b + 2)), ops.sum(a * b + 1, axis=0),
                        ops.max(ops.abs(a - b), axis=1, keepdims=True), ops.min(a + b - 3)), a, b, fusions=2)  # the reductions share one loop


def test_zero_dimensional_and_empty_shapes():
    check(lambda s, e: (ops.exp(s) * 2.0 + s, ops.sum(ops.square(e) + 1.0, axis=1), ops.tanh(e) * 3.0 + e,
                        ops.mean(e * 2.0 + 1.0, axis=0)), normal(()), np.zeros((0, 3)), fusions=4)


# ------------------------------------------------------------------ reduce fusions
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("axes,keepdims", [((0,), False), ((1,), True), ((0, 2), False), ((0, 1, 2), True), (None, False)])
@pytest.mark.parametrize("op", ["sum", "mean", "max", "min"])
def test_reduce_fusions(op, axes, keepdims, dtype):
    reduce = getattr(ops, op)

    def f(x, b):
        return reduce(ops.tanh(x) * b + x, axis=axes, keepdims=keepdims)

    tol = dict(rtol=1e-10, atol=1e-12) if dtype == "float64" else dict(rtol=1e-4, atol=1e-5)
    check(f, normal((4, 5, 6), dtype), normal((5, 1), dtype, 1), tol=tol, fusions=1)


def test_bias_gradient_and_loss_reductions_read_fused_elements():
    def loss(x, w, t):
        y = x @ w
        return ops.mean(ops.square(y - t)), ops.sum(y * (y > 0.0), axis=0)

    check(loss, normal((8, 3)), normal((3, 5), seed=1), normal((8, 5), seed=2),
          tol=dict(rtol=1e-10, atol=1e-12), fusions=1)  # both sums share one siblings loop


# ------------------------------------------------------------------ random graphs
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=st.lists(step, min_size=2, max_size=12), seed=st.integers(0, 2 ** 16))
def test_random_fused_graphs_compile_to_what_the_interpreter_computes(program, seed):
    """tests/passes/test_properties.py's random graphs, value_and_grad, compiled at opt_level 2."""
    forward = compiler.trace(build_program(program), *[Spec(s, "float64") for s in SHAPES])
    graph = compiler.value_and_grad(forward, argnums=(0, 1, 2, 3))
    rng = np.random.default_rng(seed)
    args = [rng.uniform(-1.5, 1.5, size=s) for s in SHAPES]
    actual = leaves(compile_graph(graph, 2, cache=False)(*args))
    for a, e in zip(actual, leaves(compiler.evaluate(graph, *args)), strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------ in place
def test_loop_fusions_run_in_place_over_a_dying_operand():
    """The loop reads every operand of an element before storing it, so the planner may
    give the result the buffer of an operand read at the output's own index."""
    from compiler.codegen.emit import GraphEmitter, ModuleBuilder
    from compiler.codegen.fused import fusion_in_place
    from compiler.pipeline import optimize

    def f(x, b):
        z = ops.log_softmax(x, axis=1)  # a kernel of its own: its result is a workspace buffer
        y = ops.tanh(z) * 2.0 + z * b  # b broadcasts: never overwritten
        return ops.log_softmax(y, axis=1)

    args = normal((33, 17)), normal((17,), seed=1)
    graph = compiler.trace(f, *args)
    optimized = optimize(graph, 2)
    (node,) = [n for _, n in optimized.nodes() if n.op == "fusion"]
    layouts = [compiler.codegen.loops.Layout.contiguous(optimized.type(o).shape) for o in node.operands]
    assert fusion_in_place(node.attrs, layouts, [optimized.type(o) for o in node.operands], node.type) == (0,)
    steps = [s for s in GraphEmitter(ModuleBuilder("t"), optimized).steps if s.op == "fusion"]
    assert [s.aliased for s in steps] == [(0,)]
    check(f, *args, tol=dict(rtol=1e-12, atol=1e-12))
