"""An LSTM unrolled over T = 32 steps; the loss looks only at the last step.

One fused gate matrix W maps [x_t, h_{t-1}] to all four gates at once:

    z = [x_t, h_{t-1}] @ W + b                 (batch, 4 * hidden)
    i, f, o = sigmoid(z_i), sigmoid(z_f), sigmoid(z_o);   g = tanh(z_g)
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)
    loss = mean((h_T @ Wy + by - target)^2)

The forget-gate bias starts at 1 so early gradients flow through the cell state.

    pullback dump examples/lstm.py --stage backward
    python examples/lstm.py
"""
import numpy as np

from compiler import Spec, ops

T, BATCH, N_IN, HIDDEN, N_OUT = 32, 16, 8, 32, 4


def loss(params, xs, target):
    steps, batch, _ = xs.shape
    hidden = params["W"].shape[1] // 4
    h = ops.zeros((batch, hidden))
    c = ops.zeros((batch, hidden))
    for t in range(steps):
        z = ops.concatenate([xs[t], h], axis=1) @ params["W"] + params["b"]
        i = ops.sigmoid(z[:, 0 * hidden:1 * hidden])
        f = ops.sigmoid(z[:, 1 * hidden:2 * hidden])
        g = ops.tanh(z[:, 2 * hidden:3 * hidden])
        o = ops.sigmoid(z[:, 3 * hidden:4 * hidden])
        c = f * c + i * g
        h = o * ops.tanh(c)
    y = h @ params["Wy"] + params["by"]
    return ops.mean(ops.square(y - target))


def specs(steps=T, batch=BATCH, n_in=N_IN, hidden=HIDDEN, n_out=N_OUT):
    params = {
        "W": Spec((n_in + hidden, 4 * hidden)), "b": Spec((4 * hidden,)),
        "Wy": Spec((hidden, n_out)), "by": Spec((n_out,)),
    }
    return params, Spec((steps, batch, n_in)), Spec((batch, n_out))


def init_params(seed, n_in=N_IN, hidden=HIDDEN, n_out=N_OUT):
    rng = np.random.default_rng(seed)
    b = np.zeros(4 * hidden, np.float32)
    b[hidden:2 * hidden] = 1.0  # forget gate
    return {
        "W": (rng.standard_normal((n_in + hidden, 4 * hidden)) / np.sqrt(n_in + hidden)).astype(np.float32),
        "b": b,
        "Wy": (rng.standard_normal((hidden, n_out)) / np.sqrt(hidden)).astype(np.float32),
        "by": np.zeros(n_out, np.float32),
    }


def make_batch(seed, steps=T, batch=BATCH, n_in=N_IN, n_out=N_OUT):
    rng = np.random.default_rng(seed + 1000)
    xs = rng.standard_normal((steps, batch, n_in)).astype(np.float32)
    target = rng.standard_normal((batch, n_out)).astype(np.float32)
    return xs, target


if __name__ == "__main__":
    from compiler.models import script_main

    script_main(__file__)
