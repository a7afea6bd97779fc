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
    python examples/chain_rule.py [--steps 300]            evaluate, compare with closed forms,
                                                           then descend the loss

The script ends with plain gradient descent on the loss, through the compiled value and
gradient: x goes to 0 (h's minimum, 125), t to 0 (a local minimum of z, 0), and s keeps
sliding down, ever slower (e^(3s) > 0 falls towards 0 but has no minimizer).
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


def main(argv=None):
    import argparse
    import sys

    import compiler
    from compiler.models import script_main, summary

    parser = argparse.ArgumentParser(description="The chain rule on scalars: derivatives, then gradient descent.")
    parser.add_argument("--ir", action="store_true", help="print the forward IR")
    parser.add_argument("--seed", type=int, default=0, help="seed for the start point (default 0)")
    parser.add_argument("--steps", type=int, default=300, help="gradient descent steps, 0 for none (default 300)")
    parser.add_argument("--lr", type=float, default=4e-3, help="gradient descent step size (default 0.004)")
    args = parser.parse_args(argv)
    if args.steps < 0:
        parser.error("--steps must not be negative")
    model, graph, value = script_main(__file__, ["--seed", str(args.seed)] + (["--ir"] if args.ir else []))

    params = init_params(args.seed)
    expected = closed_form_gradient(params)
    got = compiler.evaluate(compiler.grad(graph, argnums=0), params)
    for key in ("x", "s", "t"):
        print(f"d loss/d {key}: autodiff {float(got[key]):.6g}, closed form {float(expected[key]):.6g}")
    if not args.steps:
        return
    from training import train

    print(f"gradient descent from x = {params['x']:.4f}, s = {params['s']:.4f}, t = {params['t']:.4f}:")
    shown = summary(graph)

    def say(text):
        if text != shown:  # script_main printed the summary already
            print(text)

    # The loss takes no data: every step calls the kernel on the params alone.
    result = train(sys.modules[__name__], args.steps, args.lr, "sgd", seed=args.seed, batch_fn=lambda step: (),
                   log=say)
    end = result.params
    print(f"after {args.steps} steps: x = {end['x']:.4f}, s = {end['s']:.4f}, t = {end['t']:.4f} "
          "(h is least at x = 0, z has a local minimum at t = 0, e^(3s) has no minimum)")


if __name__ == "__main__":
    main()
