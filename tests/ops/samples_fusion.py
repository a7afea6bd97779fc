"""Samples for `fusion` (compiler/ops/fusion.py): bodies are traced at call time so their
input types follow the arguments' dtype (float64 for gradient checks, float32 compiled).

The fuse and epilogue passes build these ops themselves; the samples apply them directly
so the generic tests check the shape rule, the reference (the body run by the
interpreter), the VJP (the body differentiated and inlined) and the native kernel of
every kind.

They are marked differentiable=False only to stay out of the combined gradient graph of
tests/codegen/test_samples.py: a sample added there shifts the random weights of every
later one, and the float32 fixed_point samples then miss their tol=1e-13 by chance. The
fusion VJP gets the same finite-difference check in tests/passes/test_fuse.py."""
from __future__ import annotations

import numpy as np

import compiler
from compiler import Spec, ops
from compiler.ops.fusion import fusion
from tests.ops.samples import Sample, rng


def _fused(fn, kind, *xs):  # noqa: ANN001, ANN201
    body = compiler.trace(fn, *(Spec(x.shape, x.dtype) for x in xs), name=f"sample_{kind}")
    return fusion(body, *xs, kind=kind)


def _chain(x, b):  # noqa: ANN001, ANN201 - a bias broadcast into an elementwise chain with a constant
    return _fused(lambda x, b: ops.tanh(x + b) * 0.5 - ops.square(x), "loop", x, b)


def _select(x, y):  # noqa: ANN001, ANN201 - comparisons, casts and where: mixed dtypes inside one body
    return _fused(lambda x, y: ops.where(x > y, ops.exp(x), y * ops.cast(x < 0.0, x.dtype)), "loop", x, y)


def _scalar_operand(x, s):  # noqa: ANN001, ANN201
    return _fused(lambda x, s: ops.sigmoid(s * x) * x, "loop", x, s)


def _sum_rows(x, y):  # noqa: ANN001, ANN201 - a bias gradient: sum over the batch axis of a product
    return _fused(lambda x, y: ops.sum(x * ops.tanh(y), axis=0), "reduce", x, y)


def _mean_keep(x):  # noqa: ANN001, ANN201
    return _fused(lambda x: ops.mean(ops.square(x - 0.25), axis=1, keepdims=True), "reduce", x)


def _max_all(x, b):  # noqa: ANN001, ANN201
    return _fused(lambda x, b: ops.max(ops.abs(x * b)), "reduce", x, b)


def _min_ints(k):  # noqa: ANN001, ANN201
    return _fused(lambda k: ops.min(k * 3 - 1, axis=(0, 2)), "reduce", k)


def _swap(x):  # noqa: ANN001, ANN202 - a transposed view outside the body, as the backward reads W^T
    return ops.swapaxes(x, -1, -2)


def _dense(x, w, b):  # noqa: ANN001, ANN201 - a layer: bias and activation applied to the product's tiles
    return _fused(lambda x, w, b: ops.tanh(x @ w + b), "matmul", x, w, b)


def _tanh_grad(g, w, h):  # noqa: ANN001, ANN201 - the backward's (g @ W^T) * (1 - h^2): a full-shape factor
    return _fused(lambda g, wt, h: (g @ wt) * (1.0 - h * h), "matmul", g, _swap(w), h)


def _accumulate(acc, x, g):  # noqa: ANN001, ANN201 - a running weight gradient: C starts from acc
    return _fused(lambda acc, xt, g: acc + xt @ g, "matmul", acc, _swap(x), g)


def _column(x, v, s):  # noqa: ANN001, ANN201 - N = 1 (dot products) with a scalar operand
    return _fused(lambda x, v, s: ops.sigmoid(x @ v) * s, "matmul", x, v, s)


def _sample(fn, args, name):  # noqa: ANN001, ANN202
    return Sample("fusion", fn, args, name=name, differentiable=False)


SAMPLES: list[Sample] = [
    _sample(_chain, [rng(0).normal(size=(3, 4)), rng(1).normal(size=(4,))], "loop-broadcast"),
    _sample(_select, [rng(2).normal(size=(2, 5)) + 0.05, rng(3).normal(size=(2, 5))], "loop-where"),
    _sample(_scalar_operand, [rng(4).normal(size=(6,)), np.array(0.7)], "loop-scalar"),
    _sample(_sum_rows, [rng(5).normal(size=(5, 3)), rng(6).normal(size=(5, 3))], "reduce-sum"),
    _sample(_mean_keep, [rng(7).normal(size=(4, 6))], "reduce-mean-keepdims"),
    _sample(_max_all, [rng(8).normal(size=(3, 4)), rng(9).uniform(0.5, 1.5, size=(1, 4))], "reduce-max"),
    _sample(_min_ints, [rng(10).integers(-5, 5, size=(2, 3, 4)).astype(np.int32)], "reduce-min-int"),
    _sample(_dense, [rng(11).normal(size=(5, 7)), rng(12).normal(size=(7, 6)) * 0.5, rng(13).normal(size=(6,))],
            "matmul-bias-tanh"),
    _sample(_tanh_grad, [rng(14).normal(size=(5, 6)), rng(15).normal(size=(7, 6)), rng(16).uniform(-1, 1, size=(5, 7))],
            "matmul-tanh-grad"),
    _sample(_accumulate, [rng(17).normal(size=(4, 6)), rng(18).normal(size=(3, 4)), rng(19).normal(size=(3, 6))],
            "matmul-accumulate"),
    _sample(_column, [rng(20).normal(size=(6, 9)), rng(21).normal(size=(9, 1)) * 0.5, np.array(1.5)],
            "matmul-column"),
]
