"""Numerical robustness in float32: the softmax family, logsumexp, sigmoid, log1p, tanh and
the softmax-cross-entropy gradient stay finite and accurate at inputs of +-1e4 (and near
float32's exp overflow, 88) wherever the true value is finite. Ground truth is computed in
float64 with numpy; every path is checked: the interpreter on the traced graph, the
interpreter on the optimized graph, and native code at several opt levels."""
from __future__ import annotations

import numpy as np
import pytest

import compiler
from compiler import Spec, ops

# Rows exercise: huge spread, all equal and huge (either sign), beyond exp's float32 range
# (|x| > 88.7), ordinary values, and a row with a near tie at the top.
SMALL = np.array([
    [1e4, -1e4, 0.0, 1.0, -3.0],
    [-1e4, -1e4, -1e4, -1e4, -1e4],
    [1e4, 1e4, 1e4, 1e4, 1e4],
    [3e4, -3e4, 88.0, -88.0, 89.0],
    [-1e4, 1e4, -1e4, 1e4 - 1.0, 0.5],
    [0.1, -0.2, 0.3, -0.4, 0.5],
], np.float32)
# The same rows tiled to 24 x 65: long enough for the vectorized loops and their remainders.
WIDE = np.tile(SMALL, (4, 13)) * np.linspace(1.0, 0.999, 65, dtype=np.float32)
X = SMALL


def _weights(x):
    return np.linspace(-1.0, 2.0, x.size, dtype=np.float32).reshape(x.shape)


def _row_weights(x):
    return np.linspace(0.5, 1.5, x.shape[0], dtype=np.float32)


def _one_hot(x):
    labels = (np.arange(x.shape[0]) * 3 + 1) % x.shape[1]
    return np.eye(x.shape[1], dtype=np.float32)[labels]


def _log1p_input(x):
    # >= -1 + tiny, so the true value is finite
    near = np.resize(np.array([0.0, -0.5, 1e-7, -0.9999, 0.0], np.float32), x.shape[1])
    return np.abs(x) + near


# ------------------------------------------------------------ float64 ground truth
def _softmax64(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _lse64(x):
    m = x.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]


def _sigmoid64(x):
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


def truth(name: str, x: np.ndarray) -> tuple[float, np.ndarray]:
    """(value, gradient) in float64 of each case's scalar loss."""
    w, r, one_hot = _weights(x).astype(np.float64), _row_weights(x).astype(np.float64), _one_hot(x)
    x = x.astype(np.float64)
    if name == "softmax":
        s = _softmax64(x)
        return (w * s).sum(), s * (w - (w * s).sum(axis=1, keepdims=True))
    if name == "log_softmax":
        s = _softmax64(x)
        return (w * (x - _lse64(x)[:, None])).sum(), w - s * w.sum(axis=1, keepdims=True)
    if name == "logsumexp":
        return (r * _lse64(x)).sum(), r[:, None] * _softmax64(x)
    if name == "sigmoid":
        s = _sigmoid64(x)
        return (w * s).sum(), w * s * (1 - s)
    if name == "log1p":
        return (w * np.log1p(x)).sum(), w / (1 + x)
    if name == "tanh":
        t = np.tanh(x)
        return (w * t).sum(), w * (1 - t * t)
    if name == "cross_entropy":
        batch = x.shape[0]
        log_probs = x - _lse64(x)[:, None]
        return -(one_hot * log_probs).sum() / batch, (_softmax64(x) - one_hot) / batch
    raise KeyError(name)


def losses(x: np.ndarray) -> dict:
    w, r, one_hot = _weights(x), _row_weights(x), _one_hot(x)
    return {
        "softmax": lambda a: ops.sum(w * ops.softmax(a, axis=1)),
        "log_softmax": lambda a: ops.sum(w * ops.log_softmax(a, axis=1)),
        "logsumexp": lambda a: ops.sum(r * ops.logsumexp(a, axis=1)),
        "sigmoid": lambda a: ops.sum(w * ops.sigmoid(a)),
        "log1p": lambda a: ops.sum(w * ops.log1p(a)),
        "tanh": lambda a: ops.sum(w * ops.tanh(a)),
        "cross_entropy": lambda a: -ops.sum(one_hot * ops.log_softmax(a, axis=1)) / a.shape[0],
    }


LOSSES = losses(X)
DATA = {"small": SMALL, "wide": WIDE}


def inputs(name: str, data: str = "small") -> np.ndarray:
    x = DATA[data]
    return _log1p_input(x) if name == "log1p" else x


def step_graph(name: str, data: str = "small"):
    x = inputs(name, data)
    return compiler.value_and_grad(compiler.trace(losses(x)[name], Spec(x.shape)))


# Per-case gradient tolerances (default 1e-4). logsumexp needs none: its VJP recomputes the
# softmax from the shifted input (see test_logsumexp_gradient_is_accurate_at_large_inputs).
GRAD_RTOL: dict[str, float] = {}


def check(name: str, result, grad_rtol: float | None = None, data: str = "small") -> None:
    value, grad = result
    assert value.dtype == np.float32 and grad.dtype == np.float32
    assert np.isfinite(value), f"{name}: loss is {value}"
    bad = np.argwhere(~np.isfinite(grad))
    assert bad.size == 0, f"{name}: gradient not finite at {bad[:5].tolist()}: {grad[tuple(bad[0])]}"
    true_value, true_grad = truth(name, inputs(name, data))
    # float32 spacing at 4e4 is 0.004: compare relative to the magnitudes involved
    scale = max(1.0, float(np.abs(true_value)))
    np.testing.assert_allclose(value, true_value, rtol=2e-6, atol=2e-6 * scale, err_msg=f"{name} value")
    rtol = grad_rtol if grad_rtol is not None else GRAD_RTOL.get(name, 1e-4)
    np.testing.assert_allclose(grad, true_grad, rtol=rtol, atol=1e-5, err_msg=f"{name} gradient")


def test_ground_truth_is_finite():
    for data in DATA:
        for name in LOSSES:
            value, grad = truth(name, inputs(name, data))
            assert np.isfinite(value) and np.isfinite(grad).all(), (name, data)


@pytest.mark.parametrize("data", sorted(DATA))
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_interpreter(name, data):
    check(name, compiler.evaluate(step_graph(name, data), inputs(name, data)), data=data)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_interpreter_after_graph_optimization(name):
    optimize = pytest.importorskip("compiler.pipeline").optimize
    check(name, compiler.evaluate(optimize(step_graph(name), 2), inputs(name)))


@pytest.mark.parametrize("data", sorted(DATA))
@pytest.mark.parametrize("opt_level", [0, 2, 3])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_compiled(name, opt_level, data):
    codegen = pytest.importorskip("compiler.codegen")
    kernel = codegen.compile(step_graph(name, data), opt_level=opt_level)
    check(name, kernel(inputs(name, data)), data=data)


# The logsumexp gradient is the softmax recomputed from the shifted input, not exp(x - out)
# from the rounded forward value (which was off by ~2e-4 relative at |x| ~ 1e4 in float32).
@pytest.mark.parametrize("data", sorted(DATA))
def test_logsumexp_gradient_is_accurate_at_large_inputs(data):
    check("logsumexp", compiler.evaluate(step_graph("logsumexp", data), inputs("logsumexp", data)),
          grad_rtol=1e-5, data=data)
    codegen = pytest.importorskip("compiler.codegen")
    kernel = codegen.compile(step_graph("logsumexp", data), opt_level=2, cache=False)
    check("logsumexp", kernel(inputs("logsumexp", data)), grad_rtol=1e-5, data=data)


def test_logsumexp_gradient_over_several_axes_and_special_slices():
    """Several axes at once (one slice near 1e4, one with a tie), and an empty reduced axis."""
    x = np.array([[[1e4, 1e4 - 1], [0.5, -1.0]], [[-3e4, 2.0], [7.0, 7.0]]], np.float32)
    graph = compiler.value_and_grad(compiler.trace(lambda a: ops.sum(ops.logsumexp(a, axis=(0, 2))), Spec(x.shape)))
    _, grad = compiler.evaluate(graph, x)
    x64 = x.astype(np.float64).transpose(1, 0, 2).reshape(2, 4)
    want = _softmax64(x64).reshape(2, 2, 2).transpose(1, 0, 2)
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-7)
    empty = compiler.value_and_grad(compiler.trace(lambda a: ops.sum(ops.logsumexp(a, axis=1)), Spec((3, 0))))
    value, grad = compiler.evaluate(empty, np.zeros((3, 0), np.float32))
    assert value == -np.inf and grad.shape == (3, 0)


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp", "cross_entropy"])
def test_shift_invariance_at_large_offsets(name):
    """softmax(x + c) == softmax(x): adding 1e4 to a row must not change probabilities."""
    base = np.array([[0.5, -1.0, 2.0, 0.0, 1.0]], np.float32)
    shifted = base + np.float32(1e4)
    fn = {"softmax": lambda x: ops.softmax(x, axis=1), "log_softmax": lambda x: ops.log_softmax(x, axis=1),
          "logsumexp": lambda x: ops.logsumexp(x, axis=1) - ops.max(x, axis=1),
          "cross_entropy": lambda x: ops.softmax(x, axis=1) - ops.log_softmax(x, axis=1)}[name]
    graph = compiler.trace(fn, Spec(base.shape))
    paths = [lambda a: compiler.evaluate(graph, a)]
    try:
        from compiler.codegen import compile as compile_graph

        kernel = compile_graph(graph)
        paths.append(kernel)
    except ImportError:
        pass
    for run in paths:
        low, high = run(base), run(shifted)
        assert np.isfinite(high).all()
        # the shift itself rounds: 1e4 + 0.5 is exact in float32 but ulp(1e4) = 0.001
        np.testing.assert_allclose(high, low, rtol=0, atol=2e-3 if name != "softmax" else 1e-6)


def test_all_minus_inf_row_is_handled():
    """Documented: logsumexp of an all -inf slice is -inf (not nan); -inf entries get probability 0."""
    x = np.array([[-np.inf, -np.inf, -np.inf], [0.0, -np.inf, 1.0]], np.float32)
    graph = compiler.trace(lambda a: (ops.logsumexp(a, axis=1), ops.softmax(a, axis=1)), Spec(x.shape))
    lse, soft = compiler.evaluate(graph, x)
    assert lse[0] == -np.inf and np.isfinite(lse[1])
    assert soft[1, 1] == 0 and np.isfinite(soft[1]).all()
    try:
        from compiler.codegen import compile as compile_graph
    except ImportError:
        return
    c_lse, c_soft = compile_graph(graph)(x)
    np.testing.assert_array_equal(c_lse, lse)
    np.testing.assert_allclose(c_soft, soft, equal_nan=True, rtol=1e-6)


# ------------------------------------------------ special values, elementwise, native vs oracle
def _specials(dtype) -> np.ndarray:
    info = np.finfo(dtype)
    values = [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, info.tiny, -info.tiny, info.tiny / 8, -info.tiny / 8,
              info.max, -info.max, info.eps, 1.0, -1.0, 0.5, -0.5, 1e-30, -1e-30, 1e4, -1e4, 3e4, -3e4,
              88.7, -88.7, 89.0, -89.0, 103.9, -103.9, 709.0, -709.0, 710.0, -745.2, -0.9999999, -1 + info.eps,
              -1.0000001, -2.0, 20.0, -20.0, 9.01, -9.01, 0.55, -0.55, 0.549, 15.5, 44.4, 1e38]
    values = np.array(values, dtype=np.float64).astype(dtype)
    return np.concatenate([values, values[::-1], values[:13]])  # odd length: vector body + remainder


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", ["exp", "log", "log1p", "tanh", "sigmoid", "sqrt", "sin", "cos"])
def test_special_values_match_the_interpreter(op, dtype):
    """Native elementwise math (vectorized, remainder loops included) agrees with numpy on
    every special value: the same NaNs, the same signed infinities and zeros, and finite
    results within a few ulps."""
    codegen = pytest.importorskip("compiler.codegen")
    x = _specials(dtype)
    graph = compiler.trace(lambda a: getattr(ops, op)(a), Spec(x.shape, dtype))
    with np.errstate(all="ignore"):
        expected = compiler.evaluate(graph, x)
    for opt_level in (0, 2):
        got = codegen.compile(graph, opt_level=opt_level)(x)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected), err_msg=f"{op} NaN positions")
        infinite = np.isinf(expected)
        np.testing.assert_array_equal(got[infinite], expected[infinite], err_msg=f"{op} infinities")
        np.testing.assert_array_equal(np.isinf(got), infinite, err_msg=f"{op} inf positions")
        finite = np.isfinite(expected)
        eps = np.finfo(dtype).eps
        np.testing.assert_allclose(got[finite], expected[finite], rtol=8 * eps, atol=np.finfo(dtype).tiny,
                                   err_msg=f"{op} finite values at opt {opt_level}")
        zeros = finite & (expected == 0)
        np.testing.assert_array_equal(np.signbit(got[zeros]), np.signbit(expected[zeros]),
                                      err_msg=f"{op} signed zeros")
