"""A hypernetwork: a small network generates the weights of another, per task.

T regression tasks y = a_t sin(x + phi_t) share one hypernetwork. Each task has a
learned embedding e_t; the hypernetwork maps it to all the parameters theta_t of a
1 -> 16 -> 1 target MLP, which is then run on that task's points:

    theta_t = tanh(e_t @ H1 + c1) @ H2 + c2                (T, 49)
    W1_t, b1_t, W2_t, b2_t = slices of theta_t, reshaped    (1,16) (16) (16,1) (1)
    y_hat = tanh(x_t @ W1_t + b1_t) @ W2_t + b2_t           batched over tasks
    loss = mean((y_hat - y)^2)

Only the embeddings and H1, c1, H2, c2 are parameters. The gradient reaches them in two
stages: backpropagation through the target network gives dL/dtheta, which is then the
upstream gradient of the hypernetwork.

    pullback dump examples/hypernetwork.py --stage backward
    python examples/hypernetwork.py [--steps 400]
"""
import numpy as np

from compiler import Spec, ops

TASKS, POINTS, EMBED, HYPER_HIDDEN, TARGET_HIDDEN = 8, 16, 8, 32, 16


def n_target_params(hidden=TARGET_HIDDEN):
    return 3 * hidden + 1  # W1 (1, h), b1 (h), W2 (h, 1), b2 (1)


def target_network(theta, x):
    """The target MLP, batched over tasks: theta (T, 3h+1), x (T, B, 1) -> (T, B, 1)."""
    tasks = theta.shape[0]
    hidden = (theta.shape[1] - 1) // 3
    w1 = ops.reshape(theta[:, 0:hidden], (tasks, 1, hidden))
    b1 = ops.reshape(theta[:, hidden:2 * hidden], (tasks, 1, hidden))
    w2 = ops.reshape(theta[:, 2 * hidden:3 * hidden], (tasks, hidden, 1))
    b2 = ops.reshape(theta[:, 3 * hidden:], (tasks, 1, 1))
    return ops.tanh(x @ w1 + b1) @ w2 + b2


def loss(params, x, y):
    hyper = ops.tanh(params["embed"] @ params["H1"] + params["c1"])
    theta = hyper @ params["H2"] + params["c2"]
    return ops.mean(ops.square(target_network(theta, x) - y))


def _shapes(tasks=TASKS, embed=EMBED, hyper_hidden=HYPER_HIDDEN, target_hidden=TARGET_HIDDEN):
    n = n_target_params(target_hidden)
    return {"embed": (tasks, embed), "H1": (embed, hyper_hidden), "c1": (hyper_hidden,),
            "H2": (hyper_hidden, n), "c2": (n,)}


def specs(dtype="float32", tasks=TASKS, points=POINTS, embed=EMBED, hyper_hidden=HYPER_HIDDEN,
          target_hidden=TARGET_HIDDEN):
    params = {name: Spec(shape, dtype) for name, shape in _shapes(tasks, embed, hyper_hidden, target_hidden).items()}
    return params, Spec((tasks, points, 1), dtype), Spec((tasks, points, 1), dtype)


def init_params(seed, tasks=TASKS, embed=EMBED, hyper_hidden=HYPER_HIDDEN, target_hidden=TARGET_HIDDEN):
    rng = np.random.default_rng(seed)
    h = target_hidden
    # c2 holds a standard init of the target network; H2 starts small so every task
    # begins near it and the embeddings pull the tasks apart.
    c2 = np.concatenate([rng.standard_normal(h), rng.uniform(-np.pi, np.pi, h) * 0.5,
                         rng.standard_normal(h) / np.sqrt(h), np.zeros(1)])
    h2 = rng.standard_normal((hyper_hidden, n_target_params(h))) * 0.1 / np.sqrt(hyper_hidden)
    return {
        "embed": rng.standard_normal((tasks, embed)).astype(np.float32),
        "H1": (rng.standard_normal((embed, hyper_hidden)) / np.sqrt(embed)).astype(np.float32),
        "c1": np.zeros(hyper_hidden, np.float32),
        "H2": h2.astype(np.float32),
        "c2": c2.astype(np.float32),
    }


def task_family(count=TASKS):
    """The fixed task family: amplitudes a_t and phases phi_t."""
    rng = np.random.default_rng(12345)
    return rng.uniform(0.5, 2.0, count), rng.uniform(0.0, np.pi, count)


def make_batch(seed, tasks=TASKS, points=POINTS):
    rng = np.random.default_rng(seed + 1000)
    amplitude, phase = task_family(tasks)
    x = rng.uniform(-np.pi, np.pi, (tasks, points, 1))
    y = amplitude[:, None, None] * np.sin(x + phase[:, None, None])
    return x.astype(np.float32), y.astype(np.float32)


def train_batch(step, seed=0):
    """New sample points of the same tasks every step."""
    return make_batch(1_000_000 * seed + 10_000 + step)


if __name__ == "__main__":
    import sys

    from training import main

    main(sys.modules[__name__], steps=400, lr=1e-2, optimizer="adam")
