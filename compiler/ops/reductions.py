"""Reductions (`sum`, `mean`, `max`, `min`, `logsumexp`) and the softmax family
(`softmax`, `log_softmax`).

IR attributes: reductions take `axes` (a tuple of non-negative, sorted, unique ints; the
front end turns axis=None into every axis and negative axes into positive ones) and
`keepdims` (bool); `softmax`/`log_softmax` take one non-negative `axis`.

Dtypes: sum/max/min keep an int dtype (the front end casts bool to int32, as JAX does);
mean, logsumexp and the softmax family need floats (the front end casts ints to float32).
Reducing a zero-size axis with max/min is a ShapeError (numpy raises too); sum gives 0,
mean nan, logsumexp -inf.

Numerics: logsumexp and the softmax family subtract the maximum along the axis, so they
are finite for inputs of +-1e4 in float32; a slice that is all -inf gives -inf from
logsumexp (not nan), and -inf entries get probability 0.

Subgradient (the rule of JAX and of torch.amax): where several elements tie for the
maximum (minimum), the cotangent is split EVENLY among them, so the gradient of
max([1, 3, 3]) is [0, 0.5, 0.5].
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from compiler.errors import ShapeError
from compiler.ir.types import FLOAT_DTYPES, INT_DTYPES, TensorType
from compiler.ops.registry import OpDef, register
from compiler.ops.tensor import Tensor, apply, as_tensors

__all__ = ["sum", "mean", "max", "min", "amax", "amin", "logsumexp", "softmax", "log_softmax"]

NUMERIC = FLOAT_DTYPES + INT_DTYPES


# ------------------------------------------------------------- axis handling
def _check_int(value: Any, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ShapeError(f"{what} must be an int, got {value!r}")
    return int(value)


def normalize_axes(axis: Any, rank: int) -> tuple[int, ...]:
    """numpy's `axis` argument (None, int or sequence, negatives allowed) as sorted attrs."""
    if axis is None:
        return tuple(range(rank))
    items = list(axis) if isinstance(axis, (tuple, list)) else [axis]
    axes = []
    for item in items:
        value = _check_int(item, "axis")
        if not -rank <= value < rank:
            raise ShapeError(f"axis {value} is out of bounds for a tensor of rank {rank}")
        axes.append(value % rank)
    if len(set(axes)) != len(axes):
        raise ShapeError(f"repeated axis in {axis!r}")
    return tuple(sorted(axes))


def _check_axes_attr(axes: Any, rank: int) -> tuple[int, ...]:
    if not isinstance(axes, tuple):
        raise ShapeError(f"axes must be a tuple of ints, got {axes!r}")
    for axis in axes:
        if _check_int(axis, "each axis") >= rank or axis < 0:
            raise ShapeError(f"axis {axis} is out of range for rank {rank} (attrs must be non-negative)")
    if list(axes) != sorted(set(axes)):
        raise ShapeError(f"axes must be sorted and unique, got {axes}")
    return axes


def _check_keepdims(keepdims: Any) -> bool:
    if not isinstance(keepdims, (bool, np.bool_)):
        raise ShapeError(f"keepdims must be a bool, got {keepdims!r}")
    return bool(keepdims)


def _reduced_shape(shape: tuple[int, ...], axes: tuple[int, ...], keepdims: bool) -> tuple[int, ...]:
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


# ---------------------------------------------------------------- shape rules
def _reduction_rule(allowed: tuple[str, ...], needs_identity: bool = False) -> Callable:
    def infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> TensorType:
        (x,) = types
        if x.dtype not in allowed:
            raise ShapeError(f"dtype {x.dtype} not supported (needs one of {', '.join(allowed)})")
        axes = _check_axes_attr(attrs["axes"], x.rank)
        if needs_identity:
            empty = [a for a in axes if x.shape[a] == 0]
            if empty:
                raise ShapeError(f"cannot reduce zero-size axis {empty[0]} of shape {x.shape}: it has no identity")
        return TensorType(_reduced_shape(x.shape, axes, _check_keepdims(attrs["keepdims"])), x.dtype)

    return infer


def _infer_softmax(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> TensorType:
    (x,) = types
    if x.dtype not in FLOAT_DTYPES:
        raise ShapeError(f"dtype {x.dtype} not supported (needs one of {', '.join(FLOAT_DTYPES)})")
    axis = _check_int(attrs["axis"], "axis")
    if not 0 <= axis < x.rank:
        raise ShapeError(f"axis {axis} is out of range for rank {x.rank} (attrs must be non-negative)")
    return x


# ----------------------------------------------------------------- references
def _stable_max(x: np.ndarray, axis: Any) -> np.ndarray:
    """Max with keepdims, replaced by 0 where it is not finite (all -inf, or inf, slices)."""
    m = np.max(x, axis=axis, keepdims=True, initial=-np.inf)
    return np.where(np.isfinite(m), m, 0).astype(x.dtype)


def _logsumexp(x: np.ndarray, *, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    m = _stable_max(x, axes)
    with np.errstate(divide="ignore"):  # log(0) = -inf for all -inf slices, as intended
        out = np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axes)


def _softmax(x: np.ndarray, *, axis: int) -> np.ndarray:
    e = np.exp(x - _stable_max(x, axis))
    with np.errstate(invalid="ignore"):
        return e / np.sum(e, axis=axis, keepdims=True)


def _log_softmax(x: np.ndarray, *, axis: int) -> np.ndarray:
    shifted = x - _stable_max(x, axis)
    with np.errstate(divide="ignore"):
        return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def _mean(x: np.ndarray, *, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    # sum/count rather than np.mean: an empty slice gives nan without a warning, and
    # float32 stays float32.
    count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    with np.errstate(invalid="ignore"):
        return np.sum(x, axis=axes, keepdims=keepdims) / x.dtype.type(count)


# ------------------------------------------------------------------ VJP rules
def _broadcastable(t: Tensor, shape: tuple[int, ...], axes: tuple[int, ...], keepdims: bool) -> Tensor:
    """A reduction's output (or cotangent) in a shape that broadcasts against the operand's."""
    import compiler.ops as ops

    if not keepdims and axes == tuple(range(len(axes))):
        return t  # leading axes reduced away: numpy broadcasting lines the rest up already
    return ops.reshape(t, _reduced_shape(shape, axes, True))


def _unreduce(g: Tensor, shape: tuple[int, ...], axes: tuple[int, ...], keepdims: bool) -> Tensor:
    """`g` of a reduction's output shape, broadcast back to the operand's `shape`."""
    import compiler.ops as ops

    return ops.broadcast_to(_broadcastable(g, shape, axes, keepdims), shape)


def _sum_vjp(g: Tensor, out: Tensor, xs: tuple, *, axes: tuple[int, ...], keepdims: bool) -> tuple:
    return (_unreduce(g, xs[0].shape, axes, keepdims),)


def _mean_vjp(g: Tensor, out: Tensor, xs: tuple, *, axes: tuple[int, ...], keepdims: bool) -> tuple:
    count = int(np.prod([xs[0].shape[a] for a in axes], dtype=np.int64))
    scaled = g * (1.0 / count) if count else g  # count 0: the operand is empty anyway
    return (_unreduce(scaled, xs[0].shape, axes, keepdims),)


def _extremum_vjp(g: Tensor, out: Tensor, xs: tuple, *, axes: tuple[int, ...], keepdims: bool) -> tuple:
    import compiler.ops as ops

    (x,) = xs
    mask = ops.cast(ops.equal(x, _broadcastable(out, x.shape, axes, keepdims)), x.dtype)
    ties = apply("sum", mask, axes=axes, keepdims=True)
    return (mask * (_broadcastable(g, x.shape, axes, keepdims) / ties),)


def _logsumexp_vjp(g: Tensor, out: Tensor, xs: tuple, *, axes: tuple[int, ...], keepdims: bool) -> tuple:
    import compiler.ops as ops

    (x,) = xs
    if any(x.shape[a] == 0 for a in axes):
        return (None,)  # an empty operand: nothing to differentiate (and max has no identity)
    # The softmax, recomputed from the shifted input: exp(x - out) would carry the rounding
    # error of out = logsumexp(x), ~ulp(out)/2 absolute, into every probability (2e-4 relative
    # at |x| ~ 1e4 in float32). The shift cancels exactly, so it needs no gradient.
    m = apply("max", ops.stop_gradient(x), axes=axes, keepdims=True)
    m = ops.where(ops.less(ops.abs(m), np.inf), m, 0.0)  # non-finite max (all -inf, or inf): shift by 0
    e = ops.exp(x - m)
    probs = e / apply("sum", e, axes=axes, keepdims=True)
    return (_broadcastable(g, x.shape, axes, keepdims) * probs,)


def _softmax_vjp(g: Tensor, out: Tensor, xs: tuple, *, axis: int) -> tuple:
    return (out * (g - apply("sum", g * out, axes=(axis,), keepdims=True)),)


def _log_softmax_vjp(g: Tensor, out: Tensor, xs: tuple, *, axis: int) -> tuple:
    import compiler.ops as ops

    return (g - ops.exp(out) * apply("sum", g, axes=(axis,), keepdims=True),)


def _register_reduction(name: str, reference: Callable, vjp: Callable, allowed: tuple[str, ...],
                        needs_identity: bool = False, doc: str = "") -> None:
    register(OpDef(
        name, arity=1, attrs=("axes", "keepdims"), infer=_reduction_rule(allowed, needs_identity),
        reference=reference, vjp=vjp, kind="reduction", doc=doc,
    ))


_register_reduction("sum", lambda x, *, axes, keepdims: np.sum(x, axis=axes, keepdims=keepdims, dtype=x.dtype),
                    _sum_vjp, NUMERIC, doc="Sum over `axes`.")
_register_reduction("mean", _mean, _mean_vjp, FLOAT_DTYPES, doc="Mean over `axes` (nan for an empty slice).")
_register_reduction("max", lambda x, *, axes, keepdims: np.max(x, axis=axes, keepdims=keepdims),
                    _extremum_vjp, NUMERIC, needs_identity=True, doc="Maximum over `axes`; ties share the gradient.")
_register_reduction("min", lambda x, *, axes, keepdims: np.min(x, axis=axes, keepdims=keepdims),
                    _extremum_vjp, NUMERIC, needs_identity=True, doc="Minimum over `axes`; ties share the gradient.")
_register_reduction("logsumexp", _logsumexp, _logsumexp_vjp, FLOAT_DTYPES,
                    doc="log(sum(exp(x))) over `axes`, computed stably.")
for _name, _ref, _vjp in [("softmax", _softmax, _softmax_vjp), ("log_softmax", _log_softmax, _log_softmax_vjp)]:
    register(OpDef(_name, arity=1, attrs=("axis",), infer=_infer_softmax, reference=_ref, vjp=_vjp,
                   kind="reduction", doc=f"{_name} along `axis`, computed stably."))


# ------------------------------------------------------ user-facing functions
def _operand(x: Any, op: str, float_only: bool = False) -> Tensor:
    import compiler.ops as ops

    (tensor,) = as_tensors(x, op=op)
    if float_only and tensor.dtype not in FLOAT_DTYPES:
        return ops.cast(tensor, "float32")
    if tensor.dtype == "bool":
        return ops.cast(tensor, "int32")
    return tensor


def _reduce(op: str, x: Any, axis: Any, keepdims: bool, float_only: bool = False) -> Tensor:
    tensor = _operand(x, op, float_only)
    try:
        axes = normalize_axes(axis, tensor.ndim)
    except ShapeError as exc:
        raise ShapeError(f"{op}: {exc}") from None
    return apply(op, tensor, axes=axes, keepdims=bool(keepdims))


def sum(x: Any, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001 - numpy's name
    """Sum over `axis` (None: all). Ints stay ints; bool counts as int32."""
    return _reduce("sum", x, axis, keepdims)


def mean(x: Any, axis: Any = None, keepdims: bool = False) -> Tensor:
    """Mean over `axis` (None: all); ints are cast to float32 first."""
    return _reduce("mean", x, axis, keepdims, float_only=True)


def _extremum(op: str, x: Any, axis: Any, keepdims: bool) -> Tensor:
    import compiler.ops as ops

    (tensor,) = as_tensors(x, op=op)
    result = _reduce(op, tensor, axis, keepdims)
    return ops.cast(result, "bool") if tensor.dtype == "bool" else result  # max of bools is any(), as in numpy


def max(x: Any, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001 - numpy's name
    """Maximum over `axis` (None: all). Tied maxima share the gradient evenly."""
    return _extremum("max", x, axis, keepdims)


def min(x: Any, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001 - numpy's name
    """Minimum over `axis` (None: all). Tied minima share the gradient evenly."""
    return _extremum("min", x, axis, keepdims)


amax, amin = max, min


def logsumexp(x: Any, axis: Any = None, keepdims: bool = False) -> Tensor:
    """log(sum(exp(x))) over `axis`, stable for large inputs; ints are cast to float32."""
    return _reduce("logsumexp", x, axis, keepdims, float_only=True)


def _along_axis(op: str, x: Any, axis: Any) -> Tensor:
    tensor = _operand(x, op, float_only=True)
    try:
        (axis,) = normalize_axes(_check_int(axis, "axis"), tensor.ndim)
    except ShapeError as exc:
        raise ShapeError(f"{op}: {exc}") from None
    return apply(op, tensor, axis=axis)


def softmax(x: Any, axis: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along one axis, stable for large inputs."""
    return _along_axis("softmax", x, axis)


def log_softmax(x: Any, axis: int = -1) -> Tensor:
    """x - logsumexp(x) along one axis, stable for large inputs."""
    return _along_axis("log_softmax", x, axis)
