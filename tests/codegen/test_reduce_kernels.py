"""The vectorized reduction kernels (compiler/codegen/reduce.py) against the interpreter:
row and column layouts, short and long runs, batched outputs and their remainders, every
dtype, NaN/Inf/-0.0, strided and broadcast operands, and random shapes."""
from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compiler
from compiler import ops
from compiler.codegen import build, compile as compile_graph
from compiler.codegen import llvm_ir
from compiler.ops.tensor import apply
from tests.codegen.test_codegen import check as compare_compiled

TOL = {"float64": dict(rtol=1e-10, atol=1e-10), "float32": dict(rtol=1e-4, atol=2e-4)}
DTYPES = ["float32", "float64", "int32", "int64"]

# (shape, axes): rows (innermost axis reduced) short, long and in batches with remainders,
# columns (innermost axis kept), whole-tensor reductions, and runs too short to vectorize
CASES = [
    ((16, 16, 7, 7), (2, 3)), ((16, 8, 28, 28), (0, 2, 3)), ((64, 10), (1,)), ((2000, 64), (0,)),
    ((5, 32, 7, 7), (0, 2, 3)), ((23, 49), (1,)), ((7, 5, 33), (1,)), ((3, 4), (1,)), ((19, 17), (1,)),
    ((6, 100), (1,)), ((3, 1000), (1,)), ((64, 10), (0,)), ((50, 3, 37), (0, 1)), ((9, 130), (0,)),
    ((4, 6, 5), (0, 2)), ((1000,), (0,)), ((13, 6), (0, 1)), ((9, 3), (1,)), ((9, 3), (0,)), ((5, 1, 8), (1,)),
]


def check(fn, *args, tol=None):
    """Compile at opt_level 2 and compare with the interpreter. Each reduction must read its
    own input: reductions of one value become one sibling fusion (fused_siblings.py)."""
    optimized = build(compiler.trace(fn, *args, name="reduce"), 2).graph
    assert not any(node.op == "fusion" for _, node in optimized.nodes()), compiler.dump(optimized)
    return compare_compiled(fn, *args, tol=tol, name="reduce", tols=TOL)


def data(shape, dtype, seed=0):
    values = np.random.default_rng(seed).normal(size=shape)
    return values.astype(dtype) if dtype.startswith("float") else (values * 50).astype(dtype)


def reduce(op, x, axes, keepdims=False):
    return apply(op, x, axes=tuple(axes), keepdims=keepdims)


def ops_for(dtype):
    return ["sum", "mean", "max", "min"] if dtype.startswith("float") else ["sum", "max", "min"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_layout_class_matches_the_interpreter(dtype):
    problems = [(op, shape, axes) for shape, axes in CASES for op in ops_for(dtype)]
    xs = [data(shape, dtype, seed) for seed, (_, shape, _) in enumerate(problems)]

    def f(*xs):
        return [reduce(op, x, axes, keepdims=(i % 3 == 0)) for i, (x, (op, _, axes)) in enumerate(zip(xs, problems))]

    check(f, *xs)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_max_and_min_propagate_nan_and_inf_in_every_lane_position(dtype):
    rows = np.random.default_rng(1).normal(size=(37, 49)).astype(dtype)
    rows[0, 0] = np.nan          # first lane of the first vector
    rows[1, 48] = np.nan         # the masked tail (49 = 3 x 16 + 1)
    rows[2, 20] = np.nan         # inside a batch of outputs
    rows[3, :] = -np.inf         # all -inf: the identity must not win
    rows[4, :] = np.inf
    rows[5, 7] = np.inf
    rows[6, 9] = -np.inf
    rows[36, 30] = np.nan        # the remainder outputs past the last full batch
    rows[7, :] = np.nan
    short = rows[:, :10].copy()  # rows under one vector
    cols = np.ascontiguousarray(rows.T)  # the same values as columns: lanes are outputs

    def f(rows, short, cols, *copies):
        r2, r3, r4, s2, c2, c3, c4 = copies  # one input per reduction: no sibling fusion
        return (ops.max(rows, axis=1), ops.min(r2, axis=1), ops.max(short, axis=1), ops.min(s2, axis=1),
                ops.max(cols, axis=0), ops.min(c2, axis=0), ops.sum(r3, axis=1), ops.sum(c3, axis=0),
                ops.max(r4), ops.min(c4))

    args = (rows, short, cols, rows, rows, rows, short, cols, cols, cols)
    out = check(f, *args)(*args)
    assert np.isnan(out[0][[0, 1, 2, 7, 36]]).all() and not np.isnan(out[0][[3, 4, 5, 6]]).any()
    assert out[0][3] == -np.inf and out[1][4] == np.inf and out[0][5] == np.inf and out[1][6] == -np.inf
    np.testing.assert_array_equal(out[0], out[4])  # rows and columns agree exactly on max


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_element_and_empty_reductions(dtype):
    one, empty_rows, empty_cols = np.ones((1, 1), dtype), np.zeros((4, 0), dtype), np.zeros((0, 5), dtype)

    def f(one, one2, empty_rows, empty_rows2, empty_cols):
        return (ops.sum(one), ops.max(one2, axis=1), ops.sum(empty_rows, axis=1), ops.sum(empty_cols, axis=0),
                ops.sum(empty_rows2, axis=0))

    check(f, one, one, empty_rows, empty_rows, empty_cols)


def test_int_sums_wrap_like_the_reference():
    big = np.full((5, 40), 2**31 - 7, np.int32)
    big[2, 5] = -2**31
    check(lambda a, b, c, d: (ops.sum(a, axis=1), ops.sum(b, axis=0), ops.max(c, axis=1), ops.min(d, axis=0)),
          big, big, big, big)


def test_strided_broadcast_and_reversed_operands():
    xs = [data((12, 40, 9), "float64", seed) for seed in range(8)]

    def f(*xs):
        t = [ops.transpose(x, (2, 0, 1)) for x in xs[:2]]  # the innermost axis has stride 9: the loop nest
        b = [ops.broadcast_to(x[:1, :, :1], (12, 40, 9)) for x in xs[2:4]]  # stride-0 axes
        return (ops.sum(t[0], axis=2), ops.max(t[1], axis=(0, 1)), ops.sum(xs[4][::-1, :, ::-1], axis=2),
                ops.sum(xs[5][:, 3:37, :], axis=(0, 2)), ops.mean(b[0], axis=0), ops.min(b[1], axis=(1, 2)),
                ops.sum(xs[6][:, ::2, :], axis=1), ops.max(xs[7][1:, 1:, 1:], axis=(0, 1), keepdims=True))

    check(f, *xs)


def test_an_output_does_not_depend_on_its_batch():
    """Outputs folded together (B of them in one vector) equal the same row reduced alone."""
    x = np.random.default_rng(3).uniform(-1, 1, size=(19, 49)).astype(np.float32) * 1e3
    together = compile_graph(compiler.trace(lambda x: ops.sum(x, axis=1), x), opt_level=2, cache=False)(x)
    alone = compile_graph(compiler.trace(lambda r: ops.sum(r, axis=1), x[:1]), opt_level=2, cache=False)
    for i in range(len(x)):
        assert alone(x[i:i + 1])[0] == together[i]


def test_long_sums_stay_accurate_in_float32():
    x = np.random.default_rng(0).uniform(0, 1, size=(3, 1 << 15)).astype(np.float32)
    kernel = check(lambda x, y, z: (ops.sum(x, axis=1), ops.sum(y.T, axis=0), ops.mean(z)), x, x, x,
                   tol=dict(rtol=1e-5, atol=0))
    exact = x.astype(np.float64).sum(axis=1)
    np.testing.assert_allclose(kernel(x, x, x)[0], exact, rtol=2e-6)


def _kernel_ir(fn, *args, name):
    text = llvm_ir(compiler.trace(fn, *args))
    match = re.search(r"define internal [^\n]*@k\." + name + r"\(.*?\n}", text, re.S)
    assert match, text[:2000]
    return match.group(0)


def test_short_rows_and_columns_take_the_vector_kernels():
    x = np.zeros((16, 16, 7, 7), np.float32)
    rows = _kernel_ir(lambda x: ops.sum(x, axis=(2, 3)), x, name="sum")
    assert re.search(r"fadd <\d+ x float>", rows) and "llvm.masked.load" in rows  # 49 = vectors + a masked tail
    cols = _kernel_ir(lambda x: ops.max(x, axis=0), np.zeros((2000, 10)), name="max")
    assert re.search(r"llvm\.maximum\.v\d+f64", cols)
    strided = _kernel_ir(lambda x: ops.sum(ops.transpose(x, (1, 0)), axis=1), np.zeros((5, 40)), name="sum")
    assert "llvm.masked.load" not in strided  # the loop nest


# ------------------------------------------------------------------ random shapes
@st.composite
def problems(draw):
    rank = draw(st.integers(1, 4))
    shape, size = [], 1
    for _ in range(rank):  # at most 40,000 elements
        shape.append(draw(st.sampled_from([n for n in (1, 2, 3, 5, 7, 8, 16, 17, 33, 49, 100) if size * n <= 40000])))
        size *= shape[-1]
    shape = tuple(shape)
    axes = tuple(sorted(draw(st.sets(st.integers(0, rank - 1), min_size=1))))
    perm = tuple(draw(st.permutations(range(rank))))
    dtype = draw(st.sampled_from(DTYPES))
    keepdims = draw(st.booleans())
    return shape, axes, perm, dtype, keepdims, draw(st.integers(0, 2**16))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_random_shapes_views_and_axes(problem):
    shape, axes, perm, dtype, keepdims, seed = problem
    problems = [(op, view) for op in ops_for(dtype) for view in (False, True)]
    xs = [data(shape, dtype, seed)] * len(problems)

    def f(*xs):  # each op on the operand and on a transposed view of it (another layout)
        return [reduce(op, ops.transpose(x, perm) if view else x, axes, keepdims)
                for x, (op, view) in zip(xs, problems)]

    check(f, *xs)
