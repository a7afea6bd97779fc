"""Finite-difference gradient checking in float64, shared by the test suites."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

import compiler
from compiler import ops
from runtime.pytree import flatten, unflatten


def numerical_grad(f: Callable[[list[np.ndarray]], float], args: list[np.ndarray], index: int,
                   eps: float = 1e-6) -> np.ndarray:
    """Central differences of scalar f with respect to args[index]."""
    base = [np.array(a, dtype=np.float64, copy=True) for a in args]
    x = base[index]
    result = np.zeros_like(x)
    flat_x = x.reshape(-1)
    flat_result = result.reshape(-1)
    for i in range(flat_x.size):
        saved = flat_x[i]
        flat_x[i] = saved + eps
        plus = f(base)
        flat_x[i] = saved - eps
        minus = f(base)
        flat_x[i] = saved
        flat_result[i] = (plus - minus) / (2 * eps)
    return result


def weighted_scalar(fn: Callable, out_shape_probe: Sequence[np.ndarray], seed: int = 1) -> Callable:
    """Wrap fn so its output is reduced to a scalar by a fixed random weighting.

    A random weighting (not a plain sum) catches transposed or permuted cotangents.
    """
    weights: dict = {}

    def scalar_fn(*xs):
        out = fn(*xs)
        if out.dtype not in ("float32", "float64"):
            raise TypeError("output is not float")
        if out.shape not in weights:
            weights[out.shape] = np.random.default_rng(seed).normal(size=out.shape).astype(out.dtype)
        return ops.sum(out * ops.constant(weights[out.shape]))

    return scalar_fn


def check_grad(fn: Callable, args: list[np.ndarray], rtol: float = 1e-5, atol: float = 1e-7,
               scalarize: bool = True) -> list[np.ndarray]:
    """Compare compiler.grad of fn (w.r.t. every float arg) with central differences.

    fn takes positional tensors; args are numpy arrays (floats become float64).
    Returns the analytic gradients.
    """
    args = [np.asarray(a, dtype=np.float64) if np.asarray(a).dtype.kind == "f" else np.asarray(a) for a in args]
    float_positions = [i for i, a in enumerate(args) if a.dtype == np.float64]
    scalar_fn = weighted_scalar(fn, args) if scalarize else fn

    def packed(float_args, *data):  # one params argument holding all float args
        full_args = list(data)
        for pos, value in zip(float_positions, float_args):
            full_args.insert(pos, value)
        return scalar_fn(*full_args)

    data_args = [a for i, a in enumerate(args) if i not in float_positions]
    float_args = [args[i] for i in float_positions]
    graph = compiler.trace(packed, list(float_args), *data_args)
    grad_graph = compiler.grad(graph, argnums=0)
    analytic = compiler.evaluate(grad_graph, list(float_args), *data_args)

    def f(current: list[np.ndarray]) -> float:
        return float(compiler.evaluate(graph, current, *data_args))

    for k, value in enumerate(analytic):
        numeric = numerical_grad(f, float_args, k)
        np.testing.assert_allclose(value, numeric, rtol=rtol, atol=atol,
                                   err_msg=f"gradient of float argument {k} disagrees with finite differences")
    return analytic
