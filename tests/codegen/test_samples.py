"""Every op sample (tests/ops/samples_*.py) compiled and run, against the interpreter.

To keep LLVM's share of the test time small, all samples of one dtype are traced into
ONE graph and compiled once; each sample's test then checks its own outputs. A sample
whose reference raises (a fixed_point that cannot converge in float32) is compiled on
its own and must fail at run time too.

Tolerances: float64 rtol 1e-10 (atol 1e-12): libm vs numpy's SIMD transcendentals
differ by a few ulp and sums are accumulated in another order; float32 rtol 2e-5
(atol 1e-6) for the same reasons at float32 precision.
"""
from __future__ import annotations

import numpy as np
import pytest

import compiler
import runtime
from compiler.codegen import compile as compile_graph
from tests.ops.samples import ALL_SAMPLES

TOLERANCE = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=2e-5, atol=1e-6)}


def _args(sample, dtype: str) -> list[np.ndarray]:
    arrays = [np.asarray(a) for a in sample.args]
    return [a.astype(dtype) if a.dtype.kind == "f" else a for a in arrays]


def _evaluate(sample, args):
    graph = compiler.trace(sample.fn, *args)
    try:
        return graph, compiler.evaluate(graph, *args), None
    except compiler.EvalError as exc:
        return graph, None, exc


class _Combined:
    """All evaluable samples of one dtype in one compiled graph."""

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype
        self.samples = []
        for sample in ALL_SAMPLES:
            args = _args(sample, dtype)
            _, expected, error = _evaluate(sample, args)
            if error is None:
                self.samples.append((sample, args))
        self.index = {id(sample): i for i, (sample, _) in enumerate(self.samples)}
        fns = [sample.fn for sample, _ in self.samples]

        def combined(*groups):
            return tuple(fn(*group) for fn, group in zip(fns, groups))

        groups = [list(args) for _, args in self.samples]
        self.graph = compiler.trace(combined, *groups, name=f"samples_{dtype}")
        self.error = None
        try:
            kernel = compile_graph(self.graph, opt_level=2)
            self.outputs = kernel(*groups)
        except Exception as exc:  # noqa: BLE001 - reported per sample, which then compiles alone
            self.error = exc


_COMBINED: dict[str, _Combined] = {}


def combined(dtype: str) -> _Combined:
    if dtype not in _COMBINED:
        _COMBINED[dtype] = _Combined(dtype)
    return _COMBINED[dtype]


def _check(actual, expected, dtype: str, what: str) -> None:
    actual_leaves = runtime.pytree.flatten(actual)[0]
    expected_leaves = runtime.pytree.flatten(expected)[0]
    assert len(actual_leaves) == len(expected_leaves)
    for a, e in zip(actual_leaves, expected_leaves):
        assert a.shape == e.shape and a.dtype == e.dtype, f"{what}: {a.dtype}{a.shape} vs {e.dtype}{e.shape}"
        if e.dtype.kind == "f":
            np.testing.assert_allclose(a, e, **TOLERANCE[dtype], err_msg=what)
        else:
            np.testing.assert_array_equal(a, e, err_msg=what)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("sample", ALL_SAMPLES, ids=lambda s: s.id)
def test_sample_compiled_matches_interpreter(sample, dtype):
    args = _args(sample, dtype)
    group = combined(dtype)
    if id(sample) in group.index and group.error is None:
        graph, expected, _ = _evaluate(sample, args)
        _check(group.outputs[group.index[id(sample)]], expected, dtype, sample.id)
        return
    graph, expected, error = _evaluate(sample, args)
    kernel = compile_graph(graph, opt_level=2)
    if error is not None:
        with pytest.raises(runtime.KernelError):
            kernel(*args)
        return
    _check(kernel(*args), expected, dtype, sample.id)


class _CombinedGrad:
    """value_and_grad of sum_i <sample_i(args_i), c_i> over every differentiable sample."""

    def __init__(self, dtype: str) -> None:
        from compiler import ops

        picked = [(s, a) for s, a in combined(dtype).samples if s.differentiable
                  and any(np.asarray(x).dtype.kind == "f" for x in a)]
        self.ids = [s.id for s, _ in picked]
        floats = [[x for x in a if x.dtype.kind == "f"] for _, a in picked]
        others = [[x for x in a if x.dtype.kind != "f"] for _, a in picked]
        rng = np.random.default_rng(0)

        def loss(float_groups, other_groups):
            total = 0.0
            for (sample, args), fl, ot in zip(picked, float_groups, other_groups):
                fl, ot = iter(fl), iter(ot)
                call = [next(fl) if np.asarray(a).dtype.kind == "f" else next(ot) for a in args]
                out = sample.fn(*call)
                weights = rng.normal(size=out.shape).astype(dtype)
                total = total + ops.sum(out * ops.constant(weights))
            return total

        self.args = (floats, others)
        forward = compiler.trace(loss, floats, others, name=f"grad_samples_{dtype}")
        self.graph = compiler.value_and_grad(forward, argnums=0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gradients_of_all_samples_compiled_match_interpreter(dtype):
    """The backward graphs use ops forward graphs rarely do (pad interior, scatter_add, pool grads)."""
    grad = _CombinedGrad(dtype)
    expected = compiler.evaluate(grad.graph, *grad.args)
    actual = compile_graph(grad.graph, opt_level=1)(*grad.args)  # O1: 400 kernels, half the LLVM time
    tol = {"float64": dict(rtol=1e-9, atol=1e-10), "float32": dict(rtol=1e-3, atol=1e-4)}[dtype]
    np.testing.assert_allclose(actual[0], expected[0], **tol)
    for i, (a, e) in enumerate(zip(actual[1], expected[1])):
        for x, y in zip(runtime.pytree.flatten(a)[0], runtime.pytree.flatten(e)[0]):
            np.testing.assert_allclose(x, y, **tol, err_msg=f"gradient of {grad.ids[i]}")
