"""The chain rule on scalars: the worked examples of the seed documents, as one model.

Three independent scalar functions, summed into one loss so that a single gradient
call differentiates all of them (each parameter feeds exactly one term):

    h(x) = (x^2 + 5)^3             dh/dx = 3(x^2 + 5)^2 * 2x = 6x(x^2 + 5)^2
    g(s) = e^(3s)                  dg/ds = e^(3s) * 3 = 3e^(3s)
    z(t) = f(x(t), y(t))  with  f(x, y) = x*y + sin(x),  x(t) = t^2,  y(t) = e^t
                                   dz/dt = df/dx * dx/dt + df/dy * dy/dt
                                         = (y + cos x) * 2t + x * e^t

z reaches t along two paths (through x and through y); the gradient is the sum of the
two path products, which is exactly what the adjoint pass computes by summing a value's
cotangents over its uses.

    pullback dump examples/chain_rule.py                   the traced IR
    pullback dump examples/chain_rule.py --stage backward  the IR of value and gradients
    python examples/chain_rule.py                          evaluate, compare with closed forms
"""
import numpy as np

from compiler import Spec, ops


def h(x):
    return (x * x + 5.0) ** 3


def g(s):
    return ops.exp(3.0 * s)


def z(t):
    x = t * t  # x(t) = t^2
    y = ops.exp(t)  # y(t) = e^t
    return x * y + ops.sin(x)  # f(x, y) = x*y + sin(x)


def loss(params):
    return h(params["x"]) + g(params["s"]) + z(params["t"])


def specs():
    return ({"x": Spec(()), "s": Spec(()), "t": Spec(())},)


def init_params(seed):
    rng = np.random.default_rng(seed)
    x, s, t = rng.uniform(-1.0, 1.0, size=3)
    return {"x": np.float32(x), "s": np.float32(s), "t": np.float32(t)}


def closed_form_gradient(params):
    """The derivatives worked out by hand (float64), to check autodiff against."""
    x, s, t = (np.float64(params[k]) for k in ("x", "s", "t"))
    xt, yt = t * t, np.exp(t)
    return {
        "x": 6.0 * x * (x * x + 5.0) ** 2,
        "s": 3.0 * np.exp(3.0 * s),
        "t": (yt + np.cos(xt)) * 2.0 * t + xt * np.exp(t),
    }


if __name__ == "__main__":
    import compiler
    from compiler.models import script_main

    model, graph, value = script_main(__file__)
    params = init_params(0)
    expected = closed_form_gradient(params)
    grad = getattr(compiler, "grad", None)
    if grad is None:
        print("closed-form gradient:", {k: round(float(v), 6) for k, v in expected.items()})
    else:
        got = compiler.evaluate(grad(graph, argnums=0), params)
        for key in ("x", "s", "t"):
            print(f"d loss/d {key}: autodiff {float(got[key]):.6g}, closed form {float(expected[key]):.6g}")
