"""Samples for the elementwise ops (and the constant ops `full` and `constant`).

Float arguments are float64 and kept away from kinks and ties: relu/abs/sign away from 0,
log/sqrt/pow bases positive, maximum/minimum operands distinct.
"""
from __future__ import annotations

import numpy as np

from compiler import ops
from tests.ops.samples import Sample, rng


def _away_from_zero(shape: tuple[int, ...], seed: int) -> np.ndarray:
    x = rng(seed).uniform(0.2, 1.5, size=shape)
    signs = np.where(rng(seed + 100).random(size=shape) < 0.5, -1.0, 1.0)
    return x * signs


def _positive(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return rng(seed).uniform(0.3, 2.0, size=shape)


def _normal(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return rng(seed).normal(size=shape)


_UNARY_DOMAINS = {
    "neg": (ops.negative, _normal),
    "exp": (ops.exp, _normal),
    "log": (ops.log, _positive),
    "log1p": (ops.log1p, _positive),
    "sqrt": (ops.sqrt, _positive),
    "tanh": (ops.tanh, _normal),
    "sigmoid": (ops.sigmoid, _normal),
    "relu": (ops.relu, _away_from_zero),
    "abs": (ops.abs, _away_from_zero),
    "sign": (ops.sign, _away_from_zero),
    "sin": (ops.sin, _normal),
    "cos": (ops.cos, _normal),
    "square": (ops.square, _normal),
}

SAMPLES: list[Sample] = []
for _i, (_op, (_fn, _domain)) in enumerate(_UNARY_DOMAINS.items()):
    SAMPLES.append(Sample(_op, _fn, [_domain((3, 4), _i)], name="matrix"))
    SAMPLES.append(Sample(_op, _fn, [_domain((), _i + 50)], name="scalar"))

SAMPLES += [
    Sample("neg", lambda x: -x, [np.arange(6, dtype=np.int32).reshape(2, 3)], name="int32", differentiable=False),
    Sample("abs", abs, [np.array([-3, 2, 0, -1], dtype=np.int64)], name="int64", differentiable=False),
    Sample("relu", ops.relu, [np.array([-3, 2, 5], dtype=np.int32)], name="int32", differentiable=False),
    Sample("square", ops.square, [np.array([-3, 2, 5], dtype=np.int32)], name="int32", differentiable=False),
    # binary arithmetic, with broadcasting of every flavour
    Sample("add", lambda x, y: x + y, [_normal((3, 4), 1), _normal((4,), 2)], name="row"),
    Sample("add", lambda x, y: x + y, [_normal((3, 1), 3), _normal((1, 4), 4)], name="outer"),
    Sample("add", lambda x: x + 2.5, [_normal((2, 3), 5)], name="scalar-literal"),
    Sample("add", lambda x, y: x + y, [np.arange(6, dtype=np.int32).reshape(2, 3), np.int32(7)],
           name="int32", differentiable=False),
    Sample("sub", lambda x, y: x - y, [_normal((2, 3, 4), 6), _normal((3, 1), 7)], name="rank-mismatch"),
    Sample("sub", lambda x: 1.0 - x, [_normal((3,), 8)], name="rsub"),
    Sample("mul", lambda x, y: x * y, [_normal((3, 4), 9), _normal((3, 4), 10)], name="same"),
    Sample("mul", lambda x, y: x * y, [_normal((), 11), _normal((2, 3), 12)], name="0d"),
    Sample("div", lambda x, y: x / y, [_normal((3, 4), 13), _away_from_zero((4,), 14)], name="row"),
    Sample("div", lambda x: 2.0 / x, [_away_from_zero((3,), 15)], name="rdiv"),
    Sample("pow", lambda x, y: x ** y, [_positive((3, 4), 16), _normal((3, 4), 17)], name="both"),
    Sample("pow", lambda x: x ** 3.0, [_normal((5,), 18)], name="cube"),
    Sample("maximum", ops.maximum, [np.array([[0.1, 2.0, -1.0], [3.0, -2.0, 0.5]]),
                                    np.array([1.0, -0.5, 0.0])], name="bcast"),
    Sample("minimum", ops.minimum, [np.array([[0.1, 2.0, -1.0], [3.0, -2.0, 0.5]]),
                                    np.array([1.0, -0.5, 0.0])], name="bcast"),
    Sample("maximum", ops.maximum, [np.array([1, 5, -2], dtype=np.int32), np.array([3, 0, -2], dtype=np.int32)],
           name="int32", differentiable=False),
]

# comparisons and logic: bool results, no gradient
_A = np.array([[0.5, -1.0, 2.0], [0.0, 3.0, -2.0]])
_B = np.array([0.5, 1.0, -2.0])
for _op, _fn in [("eq", ops.equal), ("ne", ops.not_equal), ("lt", ops.less), ("le", ops.less_equal),
                 ("gt", ops.greater), ("ge", ops.greater_equal)]:
    SAMPLES.append(Sample(_op, _fn, [_A, _B], name="bcast", differentiable=False))
SAMPLES += [
    Sample("lt", lambda x, y: x < y, [np.array([1, 5, 2], dtype=np.int32), np.array([3, 0, 2], dtype=np.int32)],
           name="int32", differentiable=False),
    Sample("eq", lambda x, y: ops.equal(x, y), [np.array([True, False]), np.array([True, True])],
           name="bool", differentiable=False),
    Sample("logical_and", ops.logical_and, [np.array([[True, False], [True, True]]), np.array([True, False])],
           differentiable=False),
    Sample("logical_or", ops.logical_or, [np.array([[True, False], [False, False]]), np.array([False, True])],
           differentiable=False),
    Sample("logical_not", ops.logical_not, [np.array([True, False, True])], differentiable=False),
    # where: the condition is bool data; both branches get gradients
    Sample("where", ops.where, [np.array([[True, False, True], [False, False, True]]),
                                _normal((2, 3), 20), _normal((3,), 21)], name="bcast"),
    Sample("where", lambda x: ops.where(x > 0, x, 0.1 * x), [_away_from_zero((3, 4), 22)], name="leaky"),
    # cast: int data into a float computation (differentiable in x), and casts without gradient
    Sample("cast", lambda x, i: x * ops.cast(i, "float64"), [_normal((3,), 23), np.array([1, -2, 3], dtype=np.int32)],
           name="int-to-float"),
    Sample("cast", lambda x: ops.cast(x, "int32"), [np.array([0.5, 1.5, -2.5, 3.9])], name="float-to-int",
           differentiable=False),
    Sample("cast", lambda x: ops.cast(x, "float32"), [np.array([0.5, 1.5, -2.5])], name="f64-to-f32",
           differentiable=False),  # float32 is too coarse for float64 central differences
    Sample("cast", lambda b: ops.cast(b, "float64"), [np.array([True, False])], name="bool-to-float",
           differentiable=False),
    # stop_gradient: the analytic gradient deliberately differs from finite differences
    Sample("stop_gradient", lambda x: x * ops.stop_gradient(x), [_normal((3,), 24)], differentiable=False),
    # constants
    Sample("full", lambda x: x * ops.full((2, 3), 0.5, "float64"), [_normal((2, 3), 25)]),
    Sample("constant", lambda x: x + ops.constant(np.arange(3.0)), [_normal((2, 3), 26)]),
]
