"""The seed documents' worked examples, against their closed forms."""
import numpy as np
import pytest

import compiler
from compiler import Spec, ops
from tests.gradcheck import check_grad

XS = [-2.3, -0.4, 0.0, 0.7, 1.9]


def _grad_at(fn, x):
    graph = compiler.trace(fn, Spec((), "float64"))
    return float(compiler.evaluate(compiler.grad(graph), np.float64(x)))


@pytest.mark.parametrize("x", XS)
def test_power_of_square_plus_five(x):
    # h(x) = (x^2 + 5)^3  =>  h'(x) = 6x (x^2 + 5)^2
    assert _grad_at(lambda x: (x ** 2 + 5) ** 3, x) == pytest.approx(6 * x * (x * x + 5) ** 2, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("x", XS)
def test_exp_three_x(x):
    # h(x) = e^{3x}  =>  h'(x) = 3 e^{3x}
    assert _grad_at(lambda x: ops.exp(3 * x), x) == pytest.approx(3 * np.exp(3 * x), rel=1e-12)


@pytest.mark.parametrize("t", [0.3, 1.1, -0.8])
def test_two_path_chain_rule(t):
    # z = f(x(t), y(t)) with f = x*y + sin(x), x = t^2, y = e^t:
    # dz/dt = (y + cos x) * 2t + x * e^t  (the sum over both paths)
    def z(t):
        x, y = t * t, ops.exp(t)
        return x * y + ops.sin(x)

    x, y = t * t, np.exp(t)
    assert _grad_at(z, t) == pytest.approx((y + np.cos(x)) * 2 * t + x * np.exp(t), rel=1e-12)


def test_fan_out_counts_every_use():
    # micrograd's classic: a value used three times gets three contributions.
    graph = compiler.trace(lambda a: a * a + a, Spec((), "float64"))
    assert float(compiler.evaluate(compiler.grad(graph), np.float64(3.0))) == 7.0


def test_swish_with_learnable_beta():
    # s(x) = x * sigmoid(beta x); ds/dbeta = x^2 sigma(bx)(1 - sigma(bx)),
    # ds/dx = sigma(bx) + b x sigma(bx)(1 - sigma(bx))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3))
    beta = np.array(1.3)

    def swish_sum(params, x):
        return ops.sum(x * ops.sigmoid(params["beta"] * x))

    graph = compiler.trace(swish_sum, {"beta": Spec((), "float64")}, Spec((4, 3), "float64"))
    dbeta = compiler.evaluate(compiler.grad(graph), {"beta": beta}, x)["beta"]
    s = 1 / (1 + np.exp(-beta * x))
    assert dbeta == pytest.approx(np.sum(x * x * s * (1 - s)), rel=1e-12)
    dx = compiler.evaluate(compiler.grad(graph, argnums=1), {"beta": beta}, x)
    np.testing.assert_allclose(dx, s + beta * x * s * (1 - s), rtol=1e-12)
    check_grad(lambda b, x: x * ops.sigmoid(b * x), [beta, x])
