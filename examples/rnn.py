"""A tanh RNN unrolled over T = 32 steps, with an output at every step, trained to echo.

    h_t = tanh(x_t @ Wx + h_{t-1} @ Wh + b),   h_0 = 0
    y_t = h_t @ Wy + by
    loss = mean over t of mean((y_t - target_t)^2)

The task: the inputs are uniform noise in [-1, 1] on N_IN channels; output k must
repeat input channel k, k + 1 steps late (delays 1, 2, 3, 4; zero before the sequence
has run that long). The network can only do it by carrying the last few inputs in its
hidden state. Every step draws a fresh batch.

The Python loop unrolls at trace time, so Wx, Wh and b are each used T times
(backpropagation through time): their gradients are sums of T contributions.

    pullback dump examples/rnn.py --stage backward
    python examples/rnn.py [--steps 500]
"""
import numpy as np

from compiler import Spec, ops

T, BATCH, N_IN, HIDDEN, N_OUT = 32, 16, 8, 32, 4


def loss(params, xs, targets):
    steps, batch, _ = xs.shape
    h = ops.zeros((batch, params["Wh"].shape[0]), xs.dtype)
    total = 0.0
    for t in range(steps):
        h = ops.tanh(xs[t] @ params["Wx"] + h @ params["Wh"] + params["b"])
        y = h @ params["Wy"] + params["by"]
        total = total + ops.mean(ops.square(y - targets[t]))
    return total / steps


def specs(steps=T, batch=BATCH, n_in=N_IN, hidden=HIDDEN, n_out=N_OUT, dtype="float32"):
    params = {
        "Wx": Spec((n_in, hidden), dtype), "Wh": Spec((hidden, hidden), dtype), "b": Spec((hidden,), dtype),
        "Wy": Spec((hidden, n_out), dtype), "by": Spec((n_out,), dtype),
    }
    return params, Spec((steps, batch, n_in), dtype), Spec((steps, batch, n_out), dtype)


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
    xs = rng.uniform(-1.0, 1.0, (steps, batch, n_in))
    targets = np.zeros((steps, batch, n_out))
    for k in range(n_out):
        delay = k + 1
        targets[delay:, :, k] = xs[:steps - delay, :, k % n_in]  # (wraps round if n_out > n_in)
    return xs.astype(np.float32), targets.astype(np.float32)


def train_batch(step, seed=0):
    """A fresh batch every training step (the task has unlimited data)."""
    return make_batch(1_000_000 * seed + 10_000 + step)


if __name__ == "__main__":
    import sys

    from training import main

    main(sys.modules[__name__], steps=500, lr=1e-2, optimizer="adam")
