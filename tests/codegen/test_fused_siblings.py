"""The "siblings" fusion kernel (compiler/codegen/fused_siblings.py): compiled against the
interpreter and against the unfused kernels, over f32/f64/ints, keepdims, different axes
per sibling, NaN, strided and broadcast operands and empty shapes; then through the
siblings pass on the example training steps (kernel calls, workspace) and random graphs.

Hand-built fusions compile at opt_level 0 (no passes run, the graph is lowered as it is)."""
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
from compiler.ops.fusion import fusion
from compiler.pipeline import PIPELINES
from compiler.passes.siblings import Siblings
from tests.passes.test_properties import SHAPES, step
from tests.passes.test_properties import build as build_program

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
F32 = dict(rtol=1e-5, atol=1e-6)
F64 = dict(rtol=1e-12, atol=1e-12)


def leaves(tree):
    return runtime.pytree.flatten(tree)[0]


def without_siblings() -> list:
    return [p for p in PIPELINES[2] if p.name != "siblings"]


@pytest.fixture
def with_siblings(monkeypatch):
    """opt_level 2 ending in the siblings pass, whether or not the default pipeline has it
    (compile with cache=False: the cache is keyed by opt_level)."""
    monkeypatch.setitem(PIPELINES, 2, without_siblings() + [Siblings()])


def siblings_graph(members, *specs):
    """fusion(kind='siblings') of a body returning `members(*inputs)`, and the unfused graph
    computing the same 1-D value (each reduction raveled, concatenated)."""
    body = compiler.trace(lambda *xs: tuple(members(*xs)), *specs)
    fused = compiler.trace(lambda *xs: fusion(body, *xs, kind="siblings"), *specs)
    unfused = compiler.trace(lambda *xs: ops.concatenate([ops.reshape(r, (-1,)) for r in members(*xs)]), *specs)
    return fused, unfused


def check(members, *args, tol=None, exact=False):
    specs = [Spec(a.shape, str(a.dtype)) for a in args]
    fused, unfused = siblings_graph(members, *specs)
    expected = compiler.evaluate(fused, *args)
    np.testing.assert_array_equal(expected, compiler.evaluate(unfused, *args))
    actual = compile_graph(fused, 0, cache=False)(*args)
    separate = compile_graph(unfused, 0, cache=False)(*args)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if exact or expected.dtype.kind != "f":
        np.testing.assert_array_equal(actual, expected)
        np.testing.assert_array_equal(actual, separate)
    else:
        np.testing.assert_allclose(actual, expected, **(tol or (F32 if expected.dtype == np.float32 else F64)))
        np.testing.assert_allclose(actual, separate, **(tol or (F32 if expected.dtype == np.float32 else F64)))
    return actual


def normal(shape, dtype="float64", seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


# ------------------------------------------------------------------ hand-built fusions
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_different_axes_keepdims_and_reductions_in_one_loop(dtype):
    x, b = normal((6, 5, 4), dtype), normal((5, 1), dtype, seed=1)
    check(lambda x, b: [ops.sum(x * b, axis=(0, 2)), ops.mean(x, axis=1, keepdims=True), ops.max(ops.exp(x)),
                        ops.min(x - b, axis=0, keepdims=True), ops.sum(x * x, axis=2), ops.mean(ops.tanh(x))],
          x, b)


def test_layer_norm_and_batch_norm_statistics():
    x, g = normal((64, 257), "float32"), normal((64, 257), "float32", seed=1)
    check(lambda x: [ops.mean(x, axis=1, keepdims=True), ops.mean(x * x, axis=1, keepdims=True)], x)
    check(lambda g, x: [ops.sum(g, axis=0), ops.sum(g * x, axis=0)], g, x)


def test_max_and_min_propagate_nan_and_inf():
    x = normal((4, 7), "float32")
    x[1, 3], x[2, 0], x[3, 5] = np.nan, np.inf, -np.inf
    out = check(lambda x: [ops.max(x, axis=0), ops.min(x, axis=1), ops.max(x)], x, exact=True)
    assert np.isnan(out[3]) and np.isnan(out[7 + 1]) and np.isnan(out[11])  # column 3, row 1, all
    assert out[7 + 3] == -np.inf and out[0] == np.inf
    out = check(lambda x: [ops.sum(x, axis=1), ops.mean(x, axis=0)], x)
    assert np.isnan(out[1]) and out[2] == np.inf and out[3] == -np.inf and np.isnan(out[4 + 3])


def test_integer_siblings_are_exact():
    x = np.random.default_rng(2).integers(-50, 50, size=(9, 5)).astype(np.int32)
    check(lambda x: [ops.sum(x, axis=0), ops.max(x * x, axis=1, keepdims=True), ops.min(x)], x)


def test_strided_and_broadcast_operands():
    """A transposed view, a slice at an offset and a broadcast row: read through strides."""
    body = compiler.trace(lambda t, r, c: (ops.sum(t * c, axis=1), ops.max(t * r, axis=0), ops.min(t + r)),
                          Spec((8, 5), "float64"), Spec((5,), "float64"), Spec((8, 1), "float64"))
    outer = compiler.trace(lambda x, row: fusion(body, ops.transpose(x), row[2:7], ops.reshape(row, (8, 1)),
                                                 kind="siblings"),
                           Spec((5, 8), "float64"), Spec((8,), "float64"))
    x, row = normal((5, 8)), normal((8,), seed=1)
    np.testing.assert_allclose(compile_graph(outer, 0, cache=False)(x, row), compiler.evaluate(outer, x, row), **F64)


def test_empty_loops_give_identities_and_empty_parts():
    x = np.zeros((0, 3), np.float32)
    out = check(lambda x: [ops.sum(x, axis=0), ops.mean(x, axis=1), ops.max(x, axis=1)], x)
    np.testing.assert_array_equal(out, np.zeros(3, np.float32))


def test_one_kernel_replaces_the_separate_reductions():
    x = normal((32, 16), "float32")
    fused, unfused = siblings_graph(lambda x: [ops.sum(x, axis=0), ops.sum(x * x, axis=0), ops.max(x, axis=1)],
                                    Spec((32, 16)))
    assert build(fused, 0).kernel_calls == 1
    assert build(unfused, 0).kernel_calls > 3


# ------------------------------------------------------------------ through the pass
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_example_training_steps_run_one_call_fewer_in_no_more_workspace(name, with_siblings, monkeypatch):
    model = load_model(EXAMPLES / f"{name}.py")
    graph = compiler.value_and_grad(model.trace())
    grouped = build(graph, 2)
    assert sum(n.op == "fusion" and n.attrs["kind"] == "siblings" for _, n in grouped.graph.nodes()) == 1
    args = model.example_args(0)
    actual = leaves(compile_graph(graph, 2, cache=False)(*args))
    for a, e in zip(actual, leaves(compiler.evaluate(graph, *args)), strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5)
    monkeypatch.setitem(PIPELINES, 2, without_siblings())
    plain = build(graph, 2)
    assert grouped.kernel_calls == plain.kernel_calls - 1
    assert grouped.workspace_bytes <= plain.workspace_bytes


def test_layer_norm_training_step_through_the_pass(with_siblings):
    def loss(x, w):
        h = x * w
        m = ops.mean(h, axis=1, keepdims=True)
        v = ops.mean(h * h, axis=1, keepdims=True) - m * m
        return ops.sum(ops.square((h - m) / ops.sqrt(v + 1e-5)) * ops.constant(np.arange(17.0, dtype=np.float32)))

    graph = compiler.value_and_grad(compiler.trace(loss, Spec((8, 17)), Spec((17,))), argnums=(0, 1))
    assert any(n.op == "fusion" and n.attrs["kind"] == "siblings" for _, n in build(graph, 2).graph.nodes())
    args = normal((8, 17), "float32"), normal((17,), "float32", seed=1)
    for a, e in zip(leaves(compile_graph(graph, 2, cache=False)(*args)), leaves(compiler.evaluate(graph, *args))):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=st.lists(step, min_size=2, max_size=12), seed=st.integers(0, 2 ** 16))
def test_random_graphs_with_siblings_compile_to_what_the_interpreter_computes(program, seed):
    default = PIPELINES[2]
    PIPELINES[2] = without_siblings() + [Siblings()]  # not the fixture: hypothesis runs many examples per call
    try:
        forward = compiler.trace(build_program(program), *[Spec(s, "float64") for s in SHAPES])
        graph = compiler.value_and_grad(forward, argnums=(0, 1, 2, 3))
        rng = np.random.default_rng(seed)
        args = [rng.uniform(-1.5, 1.5, size=s) for s in SHAPES]
        actual = leaves(compile_graph(graph, 2, cache=False)(*args))
    finally:
        PIPELINES[2] = default
    for a, e in zip(actual, leaves(compiler.evaluate(graph, *args)), strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-9)
