"""A variational autoencoder with the reparameterization trick.

Data: 16-dimensional points on a curved 2-d manifold (x = tanh(u @ A) @ B + noise for
u ~ N(0, I), A and B fixed), standardized; each step takes a minibatch of them.

    encoder   h = tanh(x @ We + be);  mu = h @ Wmu + bmu;  log_sigma = h @ Wls + bls
    sample    z = mu + exp(log_sigma) * eps              eps ~ N(0, I) is a DATA input
    decoder   x_hat = tanh(z @ Wd + bd) @ Wo + bo
    loss      mean over the batch of  sum((x - x_hat)^2)                  (reconstruction)
                                    + 0.5 sum(mu^2 + sigma^2 - 1 - 2 log_sigma)   (KL)

Sampling is not differentiable, but with eps drawn outside the graph (in numpy, fresh
every step) z is a deterministic function of mu and log_sigma, so the chain rule
reaches the encoder through z: dz/dmu = 1 and dz/dlog_sigma = sigma * eps.

    pullback dump examples/vae.py --stage backward
    python examples/vae.py [--steps 500]
"""
import numpy as np

from compiler import Spec, ops

DIM, HIDDEN, LATENT, BATCH, DATASET = 16, 32, 2, 64, 1024


def loss(params, x, eps):
    h = ops.tanh(x @ params["We"] + params["be"])
    mu = h @ params["Wmu"] + params["bmu"]
    log_sigma = h @ params["Wls"] + params["bls"]
    z = mu + ops.exp(log_sigma) * eps
    x_hat = ops.tanh(z @ params["Wd"] + params["bd"]) @ params["Wo"] + params["bo"]
    batch = x.shape[0]
    reconstruction = ops.sum(ops.square(x - x_hat)) / batch
    kl = 0.5 * ops.sum(ops.square(mu) + ops.exp(2.0 * log_sigma) - 1.0 - 2.0 * log_sigma) / batch
    return reconstruction + kl


def _shapes(dim=DIM, hidden=HIDDEN, latent=LATENT):
    return {
        "We": (dim, hidden), "be": (hidden,),
        "Wmu": (hidden, latent), "bmu": (latent,), "Wls": (hidden, latent), "bls": (latent,),
        "Wd": (latent, hidden), "bd": (hidden,), "Wo": (hidden, dim), "bo": (dim,),
    }


def specs(dtype="float32", batch=BATCH, dim=DIM, hidden=HIDDEN, latent=LATENT):
    params = {name: Spec(shape, dtype) for name, shape in _shapes(dim, hidden, latent).items()}
    return params, Spec((batch, dim), dtype), Spec((batch, latent), dtype)


def init_params(seed, dim=DIM, hidden=HIDDEN, latent=LATENT):
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in _shapes(dim, hidden, latent).items():
        if len(shape) == 1:
            params[name] = np.zeros(shape, np.float32)
        else:
            params[name] = (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)
    params["Wls"] *= np.float32(0.1)  # start with sigma near 1 everywhere
    return params


def dataset(size=DATASET, dim=DIM):
    """The fixed training set: a noisy 2-d manifold in `dim` dimensions, standardized."""
    rng = np.random.default_rng(2024)
    a = rng.standard_normal((2, 8)) * 1.5
    b = rng.standard_normal((8, dim)) / np.sqrt(8)
    u = rng.standard_normal((size, 2))
    x = np.tanh(u @ a) @ b + 0.05 * rng.standard_normal((size, dim))
    return ((x - x.mean(axis=0)) / x.std(axis=0)).astype(np.float32)


_DATA = {}


def make_batch(seed, batch=BATCH, dim=DIM, latent=LATENT):
    """A minibatch of the dataset and the matching noise eps ~ N(0, I)."""
    if dim not in _DATA:
        _DATA[dim] = dataset(dim=dim)
    data = _DATA[dim]
    rng = np.random.default_rng(seed + 1000)
    x = data[rng.choice(len(data), batch, replace=False)]
    eps = rng.standard_normal((batch, latent)).astype(np.float32)
    return x, eps


def train_batch(step, seed=0):
    """A new minibatch and new noise every step."""
    return make_batch(1_000_000 * seed + 10_000 + step)


if __name__ == "__main__":
    import sys

    from training import main

    main(sys.modules[__name__], steps=500, lr=3e-3, optimizer="adam")
