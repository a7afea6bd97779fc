"""A tanh RNN unrolled over T = 32 steps, with an output at every step.

    h_t = tanh(x_t @ Wx + h_{t-1} @ Wh + b),   h_0 = 0
    y_t = h_t @ Wy + by
    loss = mean over t of mean((y_t - target_t)^2)

The Python loop unrolls at trace time, so Wx, Wh and b are each used T times
(backpropagation through time): their gradients are sums of T contributions.

    pullback dump examples/rnn.py --stage backward
    python examples/rnn.py
"""
import numpy as np

from compiler import Spec, ops

T, BATCH, N_IN, HIDDEN, N_OUT = 32, 16, 8, 32, 4


def loss(params, xs, targets):
    steps, batch, _ = xs.shape
    h = ops.zeros((batch, params["Wh"].shape[0]))
    total = 0.0
    for t in range(steps):
        h = ops.tanh(xs[t] @ params["Wx"] + h @ params["Wh"] + params["b"])
        y = h @ params["Wy"] + params["by"]
        total = total + ops.mean(ops.square(y - targets[t]))
    return total / steps


def specs(steps=T, batch=BATCH, n_in=N_IN, hidden=HIDDEN, n_out=N_OUT):
    params = {
        "Wx": Spec((n_in, hidden)), "Wh": Spec((hidden, hidden)), "b": Spec((hidden,)),
        "Wy": Spec((hidden, n_out)), "by": Spec((n_out,)),
    }
    return params, Spec((steps, batch, n_in)), Spec((steps, batch, n_out))


def init_params(seed, n_in=N_IN, hidden=HIDDEN, n_out=N_OUT):
    rng = np.random.default_rng(seed)

    def dense(fan_in, fan_out):
        return (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)

    return {
        "Wx": dense(n_in, hidden), "Wh": dense(hidden, hidden) * np.float32(0.5),
        "b": np.zeros(hidden, np.float32), "Wy": dense(hidden, n_out), "by": np.zeros(n_out, np.float32),
    }


def make_batch(seed, steps=T, batch=BATCH, n_in=N_IN, n_out=N_OUT):
    rng = np.random.default_rng(seed + 1000)
    xs = rng.standard_normal((steps, batch, n_in)).astype(np.float32)
    targets = rng.standard_normal((steps, batch, n_out)).astype(np.float32)
    return xs, targets


if __name__ == "__main__":
    from compiler.models import script_main

    script_main(__file__)
