"""Samples for the shape and indexing ops.

Shape ops are linear, so any float64 values do; index arguments are int data. The take
samples repeat indices (and use negative and out-of-range ones) so the gradient's
scatter_add has to accumulate and clip.
"""
from __future__ import annotations

import numpy as np

from compiler import ops
from compiler.ops.tensor import apply
from tests.ops.samples import Sample, rng


def _normal(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return rng(seed).normal(size=shape)


def _ints(values: list, dtype: type = np.int32) -> np.ndarray:
    return np.array(values, dtype=dtype)


SAMPLES: list[Sample] = [
    # transpose
    Sample("transpose", lambda x: x.T, [_normal((3, 4), 0)], name="T"),
    Sample("transpose", lambda x: ops.transpose(x, (1, 2, 0)), [_normal((2, 3, 4), 1)], name="perm"),
    Sample("transpose", lambda x: ops.moveaxis(x, 0, -1), [_normal((2, 3, 4), 2)], name="moveaxis"),
    Sample("transpose", lambda x: ops.swapaxes(x, 0, 1), [np.arange(6, dtype=np.int32).reshape(2, 3)],
           name="int32", differentiable=False),
    # reshape
    Sample("reshape", lambda x: ops.reshape(x, (4, -1)), [_normal((2, 3, 2), 3)], name="infer"),
    Sample("reshape", lambda x: ops.ravel(x), [_normal((2, 3), 4)], name="ravel"),
    Sample("reshape", lambda x: ops.reshape(x, (1, 1)), [_normal((), 5)], name="0d"),
    # broadcast_to
    Sample("broadcast_to", lambda x: ops.broadcast_to(x, (2, 3, 4)), [_normal((3, 1), 6)], name="lead-and-one"),
    Sample("broadcast_to", lambda x: ops.broadcast_to(x, (3,)), [_normal((), 7)], name="0d"),
    # squeeze / expand_dims
    Sample("squeeze", lambda x: ops.squeeze(x), [_normal((1, 3, 1, 2), 8)], name="all"),
    Sample("squeeze", lambda x: ops.squeeze(x, -1), [_normal((3, 1), 9)], name="negative"),
    Sample("expand_dims", lambda x: ops.expand_dims(x, (0, -1)), [_normal((2, 3), 10)], name="two"),
    Sample("expand_dims", lambda x: x[None], [_normal((), 11)], name="0d"),
    # slice (through indexing)
    Sample("slice", lambda x: x[1:, ::2], [_normal((3, 5), 12)], name="strided"),
    Sample("slice", lambda x: x[::-1, 3:0:-2], [_normal((3, 5), 13)], name="reversed"),
    Sample("slice", lambda x: x[..., 1, None], [_normal((2, 3, 4), 14)], name="int-index"),
    Sample("slice", lambda x: x[-1], [_normal((4, 2), 15)], name="negative-int"),
    # pad
    Sample("pad", lambda x: ops.pad(x, ((1, 0), (2, 1)), 0.5), [_normal((2, 3), 16)], name="edges"),
    Sample("pad", lambda x: apply("pad", x, low=(1, 0), high=(0, 2), interior=(2, 1), value=0.0),
           [_normal((2, 3), 17)], name="interior"),
    # take / scatter_add
    Sample("take", lambda x, i: ops.take(x, i, axis=0), [_normal((4, 3), 18), _ints([0, 2, 0, 3, 2])],
           name="duplicates"),
    Sample("take", lambda x, i: ops.take(x, i, axis=1), [_normal((2, 4, 3), 19), _ints([[1, -1], [1, 9]], np.int64)],
           name="negative-and-clipped"),
    Sample("take", lambda x, i: x[i], [_normal((5, 2), 20), _ints([4, 4, 0])], name="getitem"),
    Sample("take", lambda x, i: x[:, i], [_normal((3, 5), 21), _ints(2)], name="0d-index"),
    Sample("take", lambda x, i: ops.take(x, i, axis=0), [np.arange(6, dtype=np.int32), _ints([5, 0, 5])],
           name="int32", differentiable=False),
    Sample("scatter_add", lambda u, i: apply("scatter_add", u, i, axis=1, size=4),
           [_normal((2, 5, 3), 22), _ints([0, 3, 0, -1, 7])], name="duplicates"),
    Sample("scatter_add", lambda u, i: apply("scatter_add", u, i, axis=0, size=3),
           [_normal((2, 2), 23), _ints([[2, 2], [0, 2]], np.int64)], name="2d-indices"),
    # concatenate / stack
    Sample("concatenate", lambda x, y: ops.concatenate([x, y, x], axis=1),
           [_normal((2, 3), 24), _normal((2, 1), 25)], name="three"),
    Sample("concatenate", lambda x, y: ops.stack([x, y], axis=-1), [_normal((3,), 26), _normal((3,), 27)],
           name="stack"),
]
