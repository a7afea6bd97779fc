"""Samples for reductions, the softmax family and matmul (samples.py collects no linalg file).

max/min arguments have distinct values (no ties), so central differences are valid.
"""
from __future__ import annotations

import numpy as np

from compiler import ops
from tests.ops.samples import Sample, rng


def _normal(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return rng(seed).normal(size=shape)


def _distinct(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Values at least 0.1 apart, shuffled: no ties for max/min."""
    size = int(np.prod(shape, dtype=np.int64))
    return rng(seed).permutation(np.arange(size) * 0.1 - 0.05 * size).reshape(shape)


_INT = np.array([[3, -1, 4], [1, -5, 9]], dtype=np.int32)

SAMPLES: list[Sample] = [
    Sample("sum", ops.sum, [_normal((3, 4), 0)], name="all"),
    Sample("sum", lambda x: ops.sum(x, axis=1), [_normal((3, 4), 1)], name="axis1"),
    Sample("sum", lambda x: ops.sum(x, axis=0), [_normal((3, 4), 2)], name="axis0"),
    Sample("sum", lambda x: ops.sum(x, axis=(0, 2), keepdims=True), [_normal((2, 3, 4), 3)], name="keepdims"),
    Sample("sum", lambda x: x.sum(axis=-1), [_normal((2, 3, 4), 4)], name="method-negative-axis"),
    Sample("sum", ops.sum, [_normal((), 5)], name="0d"),
    Sample("sum", lambda x: ops.sum(x, axis=1), [_INT], name="int32", differentiable=False),
    Sample("mean", ops.mean, [_normal((3, 4), 6)], name="all"),
    Sample("mean", lambda x: ops.mean(x, axis=(1, 2)), [_normal((2, 3, 4), 7)], name="axes"),
    Sample("mean", lambda x: x.mean(axis=0, keepdims=True), [_normal((3, 4), 8)], name="keepdims"),
    Sample("mean", lambda x: ops.mean(x, axis=1), [_INT], name="int-to-float", differentiable=False),
    Sample("max", ops.max, [_distinct((3, 4), 9)], name="all"),
    Sample("max", lambda x: ops.max(x, axis=1), [_distinct((3, 4), 10)], name="axis1"),
    Sample("max", lambda x: ops.max(x, axis=(0, 2), keepdims=True), [_distinct((2, 3, 4), 11)], name="keepdims"),
    Sample("max", lambda x: ops.max(x, axis=0), [_INT], name="int32", differentiable=False),
    Sample("min", ops.min, [_distinct((3, 4), 12)], name="all"),
    Sample("min", lambda x: x.min(axis=-1), [_distinct((2, 3, 4), 13)], name="axis-1"),
    Sample("min", lambda x: ops.amin(x, axis=0, keepdims=True), [_distinct((3, 4), 14)], name="keepdims"),
    Sample("logsumexp", ops.logsumexp, [_normal((3, 4), 15)], name="all"),
    Sample("logsumexp", lambda x: ops.logsumexp(x, axis=1), [_normal((3, 4), 16)], name="axis1"),
    Sample("logsumexp", lambda x: ops.logsumexp(x, axis=(0, 2), keepdims=True), [_normal((2, 3, 4), 17)],
           name="keepdims"),
    Sample("softmax", ops.softmax, [_normal((3, 4), 18)], name="last"),
    Sample("softmax", lambda x: ops.softmax(x, axis=0), [_normal((3, 4), 19)], name="axis0"),
    Sample("softmax", lambda x: ops.softmax(x, axis=1), [_normal((2, 3, 4), 20)], name="middle"),
    Sample("log_softmax", ops.log_softmax, [_normal((3, 4), 21)], name="last"),
    Sample("log_softmax", lambda x: ops.log_softmax(x, axis=0), [_normal((2, 3, 4), 22)], name="axis0"),
    # matmul: every operand-rank form, batch broadcasting, and int dtypes
    Sample("matmul", lambda a, b: a @ b, [_normal((3, 4), 23), _normal((4, 2), 24)], name="2d"),
    Sample("matmul", lambda a, b: a @ b, [_normal((2, 3, 4), 25), _normal((4, 5), 26)], name="batched-shared"),
    Sample("matmul", lambda a, b: a @ b, [_normal((3, 4), 27), _normal((2, 4, 5), 28)], name="shared-batched"),
    Sample("matmul", lambda a, b: a @ b, [_normal((2, 1, 3, 4), 29), _normal((5, 4, 2), 30)], name="broadcast"),
    Sample("matmul", lambda a, b: a @ b, [_normal((4,), 31), _normal((4, 3), 32)], name="vec-mat"),
    Sample("matmul", lambda a, b: a @ b, [_normal((3, 4), 33), _normal((4,), 34)], name="mat-vec"),
    Sample("matmul", lambda a, b: a @ b, [_normal((4,), 35), _normal((4,), 36)], name="vec-vec"),
    Sample("matmul", lambda a, b: a @ b, [_normal((2, 3, 4), 37), _normal((4,), 38)], name="batched-vec"),
    Sample("matmul", ops.dot, [_normal((3, 4), 39), _normal((2, 4, 5), 40)], name="dot-nd"),
    Sample("matmul", lambda a, b: a @ b, [_INT, _INT.T.copy()], name="int32", differentiable=False),
]
