"""Samples for conv2d and the pools (compiler/ops/conv.py).

Dims stay tiny (N <= 2, C <= 4, H, W <= 6). Max-pool inputs are a shuffled ramp plus
small noise, so no window holds a tie and central differences see a smooth function.
The "vjp" samples differentiate the VJP rules themselves (second order).
"""
from __future__ import annotations

import numpy as np

from compiler import ops
from compiler.ops import conv
from compiler.ops.tensor import apply
from tests.ops.samples import Sample, rng


def _normal(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return rng(seed).normal(size=shape)


def distinct(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Values at least 0.09 apart in a random order: no ties, no kinks near them."""
    ramp = rng(seed).permutation(int(np.prod(shape))).reshape(shape) * 0.1
    return ramp + 0.01 * rng(seed + 1).random(shape) - 1.0


def _conv_vjp(stride, padding, dilation, groups):
    """Both cotangents of conv2d as one traced output (a weighted sum of their sums)."""
    def fn(x, w, g):
        attrs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        out = apply("conv2d", x, w, **attrs)
        dx, dw = conv._conv2d_vjp(g, out, (x, w), **attrs)
        return ops.sum(dx * dx) + ops.sum(dw * ops.sin(dw))
    return fn


def _pool_attrs(kernel, stride, padding):
    return conv._pool_args(kernel, stride, padding, "sample")


SAMPLES: list[Sample] = [
    # conv2d
    Sample("conv2d", lambda x, w, b: conv.conv2d(x, w, b), [_normal((2, 3, 5, 5), 0), _normal((4, 3, 3, 3), 1),
                                                            _normal((4,), 2)], name="bias"),
    Sample("conv2d", lambda x, w: conv.conv2d(x, w, stride=(2, 1), padding=(1, 2)),
           [_normal((1, 2, 6, 6), 3), _normal((3, 2, 3, 2), 4)], name="stride-padding"),
    Sample("conv2d", lambda x, w: conv.conv2d(x, w, padding=1, dilation=(2, 1)),
           [_normal((1, 2, 6, 5), 5), _normal((2, 2, 2, 2), 6)], name="dilation"),
    Sample("conv2d", lambda x, w: conv.conv2d(x, w, stride=2, padding=1, groups=2),
           [_normal((2, 4, 6, 5), 7), _normal((4, 2, 3, 3), 8)], name="groups2-leftover"),
    Sample("conv2d", lambda x, w: conv.conv2d(x, w, padding=1, groups=4),
           [_normal((1, 4, 5, 5), 9), _normal((4, 1, 3, 3), 10)], name="depthwise"),
    Sample("conv2d", lambda x, w: conv.conv2d(x, w, stride=(1, 2), groups=2),
           [_normal((1, 2, 4, 5), 11), _normal((4, 1, 2, 2), 12)], name="depth-multiplier"),
    Sample("conv2d", lambda x, w: conv.conv2d(x, w, stride=3, padding=(2, 1)),
           [_normal((1, 2, 4, 3), 13), _normal((3, 2, 1, 1), 14)], name="pad-wider-than-kernel"),
    Sample("conv2d", _conv_vjp((2, 1), (1, 0), (1, 2), 2),
           [_normal((1, 4, 5, 6), 15), _normal((2, 2, 2, 2), 16), _normal((1, 2, 3, 4), 17)], name="vjp"),
    Sample("conv2d", lambda x: conv.avg_pool2d(x, 2), [_normal((2, 2, 4, 5), 18)], name="avg-pool"),
    Sample("conv2d", lambda x: conv.avg_pool2d(x, 3, stride=2, padding=1), [_normal((1, 3, 5, 6), 19)],
           name="avg-pool-padded-overlap"),
    # max_pool2d and its gradient ops
    Sample("max_pool2d", lambda x: conv.max_pool2d(x, 2), [distinct((2, 2, 4, 5), 20)], name="k2"),
    Sample("max_pool2d", lambda x: conv.max_pool2d(x, 3, stride=2, padding=1), [distinct((1, 3, 5, 6), 21)],
           name="padded-overlap"),
    Sample("max_pool2d", lambda x: conv.max_pool2d(x, (3, 2), stride=1, padding=(1, 0)),
           [distinct((1, 2, 4, 4), 22)], name="rect-stride1"),
    Sample("max_pool2d_grad", lambda x, g: apply("max_pool2d_grad", x, g, **_pool_attrs(3, 1, 1)),
           [distinct((1, 2, 4, 4), 23), _normal((1, 2, 4, 4), 24)], name="overlap"),
    Sample("max_pool2d_select", lambda x, v: apply("max_pool2d_select", x, v, **_pool_attrs(2, 1, 1)),
           [distinct((2, 1, 3, 4), 25), _normal((2, 1, 3, 4), 26)], name="padded"),
    Sample("max_pool2d", lambda x: ops.sum(ops.square(conv.max_pool2d(x * x, 2, 1))),
           [distinct((1, 2, 3, 4), 27) + 2.0], name="through-square"),
]
