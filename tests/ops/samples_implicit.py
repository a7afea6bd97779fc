"""Samples for implicit layers: `fixed_point` on contractions (so the iteration converges).

tol is far below the finite-difference step's effect (1e-6), so central differences of
the converged fixed point are accurate; the iteration counts stay around 30-60.
"""
from __future__ import annotations

import numpy as np

from compiler import ops
from compiler.ops.implicit import fixed_point
from tests.ops.samples import Sample, rng


def contraction(shape: tuple[int, int], norm: float, seed: int) -> np.ndarray:
    """A random matrix with spectral norm `norm`."""
    w = rng(seed).normal(size=shape)
    return w * (norm / np.linalg.norm(w, 2))


def cell(z, x, W):  # noqa: ANN001, ANN201 - a DEQ cell: tanh(z W + x) contracts when ||W|| < 1
    return ops.tanh(z @ W + x)


def _deq(x, W):  # noqa: ANN001, ANN201
    return fixed_point(cell, ops.zeros(x.shape, x.dtype), x, W, tol=1e-13, max_iter=200)


def _cosine(a, z0):  # noqa: ANN001, ANN201 - a 0-d arg broadcast in the body; z0 gets no gradient
    return fixed_point(lambda z, c: 0.5 * ops.cos(z) + c, z0, a, tol=1e-13, max_iter=200)


def _mixed(x, idx):  # noqa: ANN001, ANN201 - an int arg rides along without a gradient
    return fixed_point(lambda z, x, k: 0.3 * ops.sin(z * ops.cast(k, z.dtype)) + x, ops.zeros_like(x), x, idx,
                       tol=1e-13, max_iter=200)


SAMPLES: list[Sample] = [
    Sample("fixed_point", _deq, [rng(1).normal(size=(3, 4)), contraction((4, 4), 0.5, 2)], name="deq-tanh"),
    Sample("fixed_point", _cosine, [np.array(0.3), rng(3).normal(size=(5,))], name="scalar-arg-z0"),
    Sample("fixed_point", _mixed, [rng(4).normal(size=(2, 3)), np.array([[1, 2, 0], [2, 1, 1]], dtype=np.int32)],
           name="int-arg"),
]
