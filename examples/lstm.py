"""An LSTM unrolled over T = 32 steps; the loss looks only at the last step.

One fused gate matrix W maps [x_t, h_{t-1}] to all four gates at once:

    z = [x_t, h_{t-1}] @ W + b                 (batch, 4 * hidden)
    i, f, o = sigmoid(z_i), sigmoid(z_f), sigmoid(z_o);   g = tanh(z_g)
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)
    loss = mean((h_T @ Wy + by - target)^2)

The forget-gate bias starts at 1 so early gradients flow through the cell state.

The task (recall a marked value): the input has N_OUT value channels of uniform noise
in [-1, 1] and N_OUT marker channels; marker k is 1 at one random step and 0 elsewhere.
Target k is what value channel k held when marker k fired, which may be as early as
the first step. Predicting 0 scores 1/3; the LSTM has to learn to open its input
gate on the marker and then hold the value in its cell. Every step draws a fresh batch.

    pullback dump examples/lstm.py --stage backward
    python examples/lstm.py [--steps 600]
"""
import numpy as np

from compiler import Spec, ops

T, BATCH, N_IN, HIDDEN, N_OUT = 32, 32, 8, 32, 4  # N_IN = 2 * N_OUT: values, then markers


def loss(params, xs, target):
    steps, batch, _ = xs.shape
    hidden = params["W"].shape[1] // 4
    h = ops.zeros((batch, hidden), xs.dtype)
    c = ops.zeros((batch, hidden), xs.dtype)
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


def specs(steps=T, batch=BATCH, n_in=N_IN, hidden=HIDDEN, n_out=N_OUT, dtype="float32"):
    params = {
        "W": Spec((n_in + hidden, 4 * hidden), dtype), "b": Spec((4 * hidden,), dtype),
        "Wy": Spec((hidden, n_out), dtype), "by": Spec((n_out,), dtype),
    }
    return params, Spec((steps, batch, n_in), dtype), Spec((batch, n_out), dtype)


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
    if n_in != 2 * n_out:
        raise ValueError(f"the recall task needs n_in = 2 * n_out (values and markers), got n_in={n_in}, n_out={n_out}")
    rng = np.random.default_rng(seed + 1000)
    values = rng.uniform(-1.0, 1.0, (steps, batch, n_out))
    when = rng.integers(0, steps, (batch, n_out))  # the marked step of each channel
    rows, channels = np.meshgrid(np.arange(batch), np.arange(n_out), indexing="ij")
    markers = np.zeros((steps, batch, n_out))
    markers[when, rows, channels] = 1.0
    xs = np.concatenate([values, markers], axis=2)
    target = values[when, rows, channels]
    return xs.astype(np.float32), target.astype(np.float32)


def train_batch(step, seed=0):
    """A fresh batch every training step (the task has unlimited data)."""
    return make_batch(1_000_000 * seed + 10_000 + step)


if __name__ == "__main__":
    import sys

    from training import main

    main(sys.modules[__name__], steps=600, lr=1e-2, optimizer="adam")
