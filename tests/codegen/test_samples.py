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
