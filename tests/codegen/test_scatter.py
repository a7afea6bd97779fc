"""The scatter_add kernel (compiler/codegen/kernels.py) against the interpreter (np.add.at).

Updates are added in their own order, one element after another per output element, so
even float results must equal numpy's bitwise. Indices wrap once when negative and then
clip into range, as the reference does: native code never writes outside the result."""
from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compiler
from compiler import ops
from compiler.codegen import compile as compile_graph
from compiler.codegen import llvm_ir
from compiler.ops.tensor import apply

DTYPES = ["float32", "float64", "int32", "int64"]


def scatter(updates, idx, axis, size):
    return apply("scatter_add", updates, idx, axis=axis, size=size)


def check_exact(fn, *args):
    graph = compiler.trace(fn, *args, name="scatter")
    kernel = compile_graph(graph, opt_level=2, cache=False)
    actual, expected = kernel(*args), compiler.evaluate(graph, *args)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    np.testing.assert_array_equal(actual, expected)
    return kernel


def values(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if dtype.startswith("float"):
        return (rng.normal(size=shape) * 10.0 ** rng.integers(-3, 8, size=shape)).astype(dtype)  # order shows
    return rng.integers(-2**20, 2**20, size=shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("features", [1, 3, 10, 64, 100])
def test_rows_with_repeated_negative_and_out_of_range_indices(dtype, features):
    size = 7
    idx = np.array([3, 3, -1, 100, -100, 0, 6, 3, -7, 7, -8, 2**31 - 1, -2**31], np.int64)
    updates = values((len(idx), features), dtype)
    check_exact(lambda u, i: scatter(u, i, 0, size), updates, idx)
    check_exact(lambda u, i: scatter(u, i, 0, size), updates[:-2], idx[:-2].astype(np.int32))


def test_float_updates_accumulate_in_their_order():
    """Every order of 1e8, 1, -1e8 gives another float32 sum: only the updates' own order
    gives numpy's."""
    updates = np.array([[1e8] * 20, [1.0] * 20, [-1e8] * 20, [1.0] * 20], np.float32)
    idx = np.array([1, 1, 1, 1], np.int32)
    out = check_exact(lambda u, i: scatter(u, i, 0, 2), updates, idx)(updates, idx)
    assert (out[1] == 1.0).all() and (out[0] == 0).all()  # (1e8 + 1) rounds to 1e8, then + -1e8, + 1


@pytest.mark.parametrize("dtype", ["float32", "int64"])
def test_middle_axis_two_dimensional_indices_and_strided_updates(dtype):
    idx = np.array([[0, 4, -1], [2, 2, 9]], np.int32)
    updates = values((3, 2, 3, 5), dtype)
    base = values((5, 3, 3, 2), dtype, 1)

    def f(u, v, i):
        transposed = ops.transpose(v, (2, 3, 1, 0))  # [3, 2, 3, 5] through strides
        return scatter(u, i, 1, 6), scatter(transposed, i, 1, 6), scatter(u[:, :, :, ::-2], i, 1, 4)

    graph = compiler.trace(f, updates, base, idx)
    kernel = compile_graph(graph, opt_level=2, cache=False)
    for a, e in zip(kernel(updates, base, idx), compiler.evaluate(graph, updates, base, idx), strict=True):
        np.testing.assert_array_equal(a, e)


def test_empty_updates_and_a_single_row_result():
    empty = np.zeros((0, 4), np.float32)
    check_exact(lambda u, i: scatter(u, i, 0, 3), empty, np.zeros(0, np.int32))
    updates = values((6, 5), "float64")
    check_exact(lambda u, i: scatter(u, i, 0, 1), updates, np.array([0, -1, 5, -9, 0, 1], np.int32))


def test_feature_rows_are_added_in_vectors():
    """One index per row, then the F-wide row add vectorized (here by LLVM's loop vectorizer)."""
    updates, idx = np.zeros((100, 64), np.float32), np.zeros(100, np.int32)
    text = llvm_ir(compiler.trace(lambda u, i: scatter(u, i, 0, 20), updates, idx))
    body = re.search(r"define internal [^\n]*@k\.scatter_add\(.*?\n}", text, re.S).group(0)
    assert re.search(r"fadd <\d+ x float>", body)


@st.composite
def problems(draw):
    axis = draw(st.integers(0, 2))
    lead = tuple(draw(st.lists(st.integers(1, 4), min_size=axis, max_size=axis)))
    idx_shape = tuple(draw(st.lists(st.integers(0, 9), min_size=1, max_size=2)))
    tail = tuple(draw(st.lists(st.integers(1, 20), min_size=0, max_size=2)))
    size = draw(st.integers(1, 8))
    dtype = draw(st.sampled_from(DTYPES))
    return lead, idx_shape, tail, axis, size, dtype, draw(st.integers(0, 2**16))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_random_shapes_and_indices(problem):
    lead, idx_shape, tail, axis, size, dtype, seed = problem
    rng = np.random.default_rng(seed)
    idx = rng.integers(-2 * size, 2 * size, size=idx_shape).astype(np.int32 if seed % 2 else np.int64)
    updates = values(lead + idx_shape + tail, dtype, seed)
    check_exact(lambda u, i: scatter(u, i, axis, size), updates, idx)
