"""Samples for segment_sum, one_hot and arange (compiler/ops/gather.py).

These are composites: segment_sum is a masked scatter_add, one_hot an equality against
an arange constant. The ids repeat, leave segments empty and fall out of range (those
rows are dropped, so their gradient is zero).
"""
from __future__ import annotations

import numpy as np

from compiler import ops
from compiler.ops import gather
from tests.ops.samples import Sample, rng


def _normal(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return rng(seed).normal(size=shape)


def _ints(values: list, dtype: type = np.int32) -> np.ndarray:
    return np.array(values, dtype=dtype)


SAMPLES: list[Sample] = [
    Sample("scatter_add", lambda d, i: gather.segment_sum(d, i, 4),
           [_normal((5, 3), 0), _ints([0, 3, 0, 1, 3])], name="segment-sum-empty-segment"),
    Sample("scatter_add", lambda d, i: gather.segment_sum(d, i, 3),
           [_normal((6, 2), 1), _ints([2, -1, 0, 3, 7, 2], np.int64)], name="segment-sum-dropped-ids"),
    Sample("scatter_add", lambda d: gather.segment_sum(d, [1, 1, 0, 3]),
           [_normal((4, 2, 2), 2)], name="segment-sum-constant-ids"),
    Sample("scatter_add", lambda d, i: gather.segment_sum(d, i, 3),
           [_normal((2, 3, 2), 3), _ints([[0, 2, 2], [5, 0, -2]])], name="segment-sum-2d-ids"),
    Sample("scatter_add", lambda d, i: gather.segment_sum(d, i, 3),
           [_ints([[1, 2], [3, 4], [5, 6]]), _ints([2, 2, -1])], name="segment-sum-int", differentiable=False),
    Sample("eq", lambda x, y: -ops.sum(gather.one_hot(y, 4) * ops.log_softmax(x)),
           [_normal((3, 4), 4), _ints([0, 3, 5])], name="one-hot-cross-entropy"),
    Sample("eq", lambda y: gather.one_hot(y, 3, axis=0), [_ints([[2, -1], [0, 1]])], name="one-hot-axis0",
           differentiable=False),
    Sample("constant", lambda x: x * gather.arange(4) - gather.arange(0.5, 2.5, 0.5),
           [_normal((2, 4), 5)], name="arange"),
]
