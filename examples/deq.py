"""A deep equilibrium model: an implicit layer z* = tanh(z* @ W + x @ U + b), then a readout.

    W = 0.5 * tanh(V) / n                    every |W_ij| < 0.5/n: the map is a contraction
    z* = ops.fixed_point(f, 0, x @ U + b, W)  with f(z, xu, W) = tanh(z @ W + xu)
    loss = mean((z* @ R + c - y)^2)

Each row of W sums to less than 0.5 in absolute value and tanh is 1-Lipschitz, so f
halves distances (max-norm) and the iteration converges from any start, for any V.

There is no graph of the iterations to backpropagate through. The fixed_point op is
differentiated by the implicit function theorem: with J = df/dz at z*, the adjoint
u = (I - J)^-T g is itself a fixed-point solve (u <- g + J^T u), and then the
gradients of xu and W are (df/dxu)^T u and (df/dW)^T u; from there ordinary
backpropagation reaches U, b and V.

The data is a fixed regression set: y = sin(x @ a) + 0.5 cos(x @ b) for x ~ N(0, I).

    pullback dump examples/deq.py --stage backward
    python examples/deq.py [--steps 300]
"""
import numpy as np

from compiler import Spec, ops

BATCH, N_IN, HIDDEN = 64, 4, 16
# Stop when max|z_k - z_(k-1)| <= tol * (1 + max|z_k|): near float32 rounding, and near
# float64 rounding for gradient checks (finite differences need a very exact z*).
TOL = {"float32": 1e-6, "float64": 1e-14}
MAX_ITER = 200


def cell(z, xu, w):
    return ops.tanh(z @ w + xu)


def loss(params, x, y):
    n = params["V"].shape[0]
    w = 0.5 * ops.tanh(params["V"]) / n
    xu = x @ params["U"] + params["b"]
    z0 = ops.zeros(xu.shape, xu.dtype)
    z = ops.fixed_point(cell, z0, xu, w, tol=TOL[xu.dtype], max_iter=MAX_ITER)
    pred = z @ params["R"] + params["c"]
    return ops.mean(ops.square(pred - y))


def _shapes(n_in=N_IN, hidden=HIDDEN):
    return {"U": (n_in, hidden), "b": (hidden,), "V": (hidden, hidden), "R": (hidden, 1), "c": (1,)}


def specs(dtype="float32", batch=BATCH, n_in=N_IN, hidden=HIDDEN):
    params = {name: Spec(shape, dtype) for name, shape in _shapes(n_in, hidden).items()}
    return params, Spec((batch, n_in), dtype), Spec((batch, 1), dtype)


def init_params(seed, n_in=N_IN, hidden=HIDDEN):
    rng = np.random.default_rng(seed)
    return {
        "U": (rng.standard_normal((n_in, hidden)) / np.sqrt(n_in)).astype(np.float32),
        "b": np.zeros(hidden, np.float32),
        "V": rng.standard_normal((hidden, hidden)).astype(np.float32),
        "R": (rng.standard_normal((hidden, 1)) / np.sqrt(hidden)).astype(np.float32),
        "c": np.zeros(1, np.float32),
    }


def make_batch(seed, batch=BATCH, n_in=N_IN):
    rng = np.random.default_rng(seed + 1000)
    x = rng.standard_normal((batch, n_in))
    a, b = (np.random.default_rng(7).standard_normal((2, n_in)) / np.sqrt(n_in))
    y = np.sin(x @ a) + 0.5 * np.cos(x @ b)
    return x.astype(np.float32), y[:, None].astype(np.float32)


if __name__ == "__main__":
    import sys

    from training import main

    main(sys.modules[__name__], steps=300, lr=1e-2, optimizer="adam")
