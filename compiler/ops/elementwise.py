"""Elementwise ops: unary math, binary arithmetic with numpy broadcasting, comparisons,
`where`, `cast` and `stop_gradient`.

Operands of one op share a dtype (the front end inserts casts); shapes broadcast as in
numpy. VJP rules return cotangents in the broadcast shape; the adjoint driver sums them
back to each operand's shape.

Subgradients (the same rules as PyTorch and JAX): relu'(0) = 0, abs'(0) = 0, and where
maximum/minimum tie, each operand gets half the cotangent.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from compiler.errors import ShapeError
from compiler.ir.types import DTYPES, FLOAT_DTYPES, TensorType, canonical_dtype
from compiler.ops.registry import OpDef, register
from compiler.ops.tensor import Tensor, apply, as_tensors


def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    """numpy's broadcasting rule; raises ShapeError naming the shapes that clash."""
    rank = max((len(s) for s in shapes), default=0)
    result = []
    for axis in range(rank):
        dims = {s[len(s) - rank + axis] for s in shapes if len(s) - rank + axis >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise ShapeError(f"shapes {' and '.join(str(s) for s in shapes)} do not broadcast")
        result.append(dims.pop() if dims else 1)
    return tuple(result)


def _same_dtype(types: Sequence[TensorType]) -> str:
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        raise ShapeError(f"operand dtypes differ ({', '.join(t.dtype for t in types)}); cast first")
    return dtypes.pop()


def _elementwise_rule(allowed: tuple[str, ...], result_dtype: str | None = None) -> Callable:
    def infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> TensorType:
        dtype = _same_dtype(types)
        if dtype not in allowed:
            raise ShapeError(f"dtype {dtype} not supported (needs one of {', '.join(allowed)})")
        return TensorType(broadcast_shapes(*(t.shape for t in types)), result_dtype or dtype)

    return infer


__all__ = [
    "negative", "exp", "log", "log1p", "sqrt", "tanh", "sigmoid", "relu", "abs", "sign", "sin", "cos", "square",
    "add", "subtract", "multiply", "divide", "power", "maximum", "minimum", "equal", "not_equal", "less",
    "less_equal", "greater", "greater_equal", "logical_and", "logical_or", "logical_not", "where", "cast",
    "astype", "stop_gradient", "sub", "mul", "div", "pow", "neg", "broadcast_shapes",
]

NUMERIC = ("float32", "float64", "int32", "int64")


def _unary(name: str, numpy_fn: Callable, vjp: Callable | None, allowed: tuple[str, ...] = FLOAT_DTYPES,
           has_gradient: bool = True) -> OpDef:
    return register(OpDef(
        name, arity=1, attrs=(), infer=_elementwise_rule(allowed), reference=lambda x: numpy_fn(x),
        vjp=vjp, has_gradient=has_gradient, kind="elementwise", extra={"numpy": numpy_fn},
    ))


def _binary(name: str, numpy_fn: Callable, vjp: Callable | None, allowed: tuple[str, ...] = NUMERIC,
            result_dtype: str | None = None) -> OpDef:
    return register(OpDef(
        name, arity=2, attrs=(), infer=_elementwise_rule(allowed, result_dtype),
        reference=lambda x, y: numpy_fn(x, y), vjp=vjp, has_gradient=result_dtype is None,
        kind="elementwise", extra={"numpy": numpy_fn},
    ))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # Stable on both tails: exp is only taken of non-positive numbers.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.zeros((), x.dtype))


# --------------------------------------------------------------------- unary
_unary("neg", np.negative, lambda g, out, xs: (-g,), NUMERIC)
_unary("exp", np.exp, lambda g, out, xs: (g * out,))
_unary("log", np.log, lambda g, out, xs: (g / xs[0],))
_unary("log1p", np.log1p, lambda g, out, xs: (g / (xs[0] + 1.0),))
_unary("sqrt", np.sqrt, lambda g, out, xs: (g / (out * 2.0),))
_unary("tanh", np.tanh, lambda g, out, xs: (g * (1.0 - out * out),))
_unary("sigmoid", _sigmoid, lambda g, out, xs: (g * (out * (1.0 - out)),))
_unary("relu", _relu, lambda g, out, xs: (where(xs[0] > 0, g, 0.0),), NUMERIC)
_unary("abs", np.abs, lambda g, out, xs: (g * sign(xs[0]),), NUMERIC)
_unary("sign", np.sign, lambda g, out, xs: (None,), NUMERIC)
_unary("sin", np.sin, lambda g, out, xs: (g * cos(xs[0]),))
_unary("cos", np.cos, lambda g, out, xs: (-(g * sin(xs[0])),))
_unary("square", np.square, lambda g, out, xs: (g * (xs[0] * 2.0),), NUMERIC)


# -------------------------------------------------------------------- binary
def _pow_vjp(g: Tensor, out: Tensor, xs: tuple) -> tuple:
    x, y = xs
    dx = g * (y * power(x, y - 1.0))
    # d/dy x**y = x**y log x; defined as 0 where x <= 0 (as JAX does at x == 0).
    dy = g * where(x > 0, out * log(where(x > 0, x, 1.0)), 0.0)
    return dx, dy


def _maximum_vjp(g: Tensor, out: Tensor, xs: tuple) -> tuple:
    x, y = xs
    half = g * 0.5
    dx = where(x > y, g, where(x == y, half, 0.0))
    dy = where(y > x, g, where(x == y, half, 0.0))
    return dx, dy


def _minimum_vjp(g: Tensor, out: Tensor, xs: tuple) -> tuple:
    x, y = xs
    half = g * 0.5
    dx = where(x < y, g, where(x == y, half, 0.0))
    dy = where(y < x, g, where(x == y, half, 0.0))
    return dx, dy


_binary("add", np.add, lambda g, out, xs: (g, g))
_binary("sub", np.subtract, lambda g, out, xs: (g, -g))
_binary("mul", np.multiply, lambda g, out, xs: (g * xs[1], g * xs[0]))
_binary("div", np.divide, lambda g, out, xs: (g / xs[1], -(g * out) / xs[1]), FLOAT_DTYPES)
_binary("pow", np.power, _pow_vjp, FLOAT_DTYPES)
_binary("maximum", np.maximum, _maximum_vjp)
_binary("minimum", np.minimum, _minimum_vjp)

for _name, _fn in [("eq", np.equal), ("ne", np.not_equal), ("lt", np.less), ("le", np.less_equal),
                   ("gt", np.greater), ("ge", np.greater_equal)]:
    _binary(_name, _fn, None, DTYPES, result_dtype="bool")
for _name, _fn in [("logical_and", np.logical_and), ("logical_or", np.logical_or)]:
    _binary(_name, _fn, None, ("bool",), result_dtype="bool")
_unary("logical_not", np.logical_not, None, ("bool",), has_gradient=False)


# ------------------------------------------------------- where, cast, stop_gradient
def _infer_where(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> TensorType:
    cond, a, b = types
    if cond.dtype != "bool":
        raise ShapeError(f"condition must be bool, got {cond.dtype}")
    dtype = _same_dtype([a, b])
    return TensorType(broadcast_shapes(cond.shape, a.shape, b.shape), dtype)


def _where_vjp(g: Tensor, out: Tensor, xs: tuple) -> tuple:
    cond = xs[0]
    return None, where(cond, g, 0.0), where(cond, 0.0, g)


register(OpDef(
    "where", arity=3, attrs=(), infer=_infer_where, reference=lambda c, a, b: np.where(c, a, b),
    vjp=_where_vjp, kind="elementwise", extra={"numpy": np.where},
))


def _infer_cast(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> TensorType:
    return TensorType(types[0].shape, canonical_dtype(attrs["dtype"]))


def _cast_vjp(g: Tensor, out: Tensor, xs: tuple, dtype: str) -> tuple:
    source = xs[0].dtype
    return (cast(g, source),) if source in FLOAT_DTYPES else (None,)


def _cast_reference(x: np.ndarray, *, dtype: str) -> np.ndarray:
    # numpy leaves float->int of NaN/Inf/out-of-range values platform-defined (INT_MIN on x86);
    # native code uses llvm.fptosi.sat, and the oracle must agree with it exactly.
    if np.asarray(x).dtype.kind != "f" or dtype not in ("int32", "int64"):
        return x.astype(dtype)
    info = np.iinfo(dtype)
    bound = 2.0 ** (info.bits - 1)  # exact in float32/64, unlike float(info.max), which rounds up
    hi, lo = x >= bound, x < -bound
    out = np.asarray(np.where(np.isnan(x) | hi | lo, 0, x)).astype(dtype)
    out[hi] = info.max
    out[lo] = info.min
    return out


register(OpDef(
    "cast", arity=1, attrs=("dtype",), infer=_infer_cast,
    reference=_cast_reference, vjp=_cast_vjp, kind="elementwise",
    doc="Convert to `dtype`. float -> int truncates toward zero and saturates: NaN -> 0, values "
        "beyond the int range -> its min or max (like llvm.fptosi.sat). int -> int wraps; "
        "-> bool is `!= 0`.",
))
register(OpDef(
    "stop_gradient", arity=1, attrs=(), infer=lambda types, attrs: types[0],
    reference=lambda x: x.copy(), vjp=lambda g, out, xs: (None,), kind="elementwise",
    doc="Identity whose operand receives no gradient.",
))


# ------------------------------------------------------ user-facing functions
def _apply_elementwise(op: str, *values: Any, float_only: bool = False) -> Tensor:
    tensors = as_tensors(*values, op=op)
    if float_only and tensors[0].dtype not in FLOAT_DTYPES:
        tensors = [cast(t, "float32") for t in tensors]
    return apply(op, *tensors)


def negative(x: Any) -> Tensor: return _apply_elementwise("neg", x)
def exp(x: Any) -> Tensor: return _apply_elementwise("exp", x, float_only=True)
def log(x: Any) -> Tensor: return _apply_elementwise("log", x, float_only=True)
def log1p(x: Any) -> Tensor: return _apply_elementwise("log1p", x, float_only=True)
def sqrt(x: Any) -> Tensor: return _apply_elementwise("sqrt", x, float_only=True)
def tanh(x: Any) -> Tensor: return _apply_elementwise("tanh", x, float_only=True)
def sigmoid(x: Any) -> Tensor: return _apply_elementwise("sigmoid", x, float_only=True)
def relu(x: Any) -> Tensor: return _apply_elementwise("relu", x)
def abs(x: Any) -> Tensor: return _apply_elementwise("abs", x)  # noqa: A001 - numpy's name
def sign(x: Any) -> Tensor: return _apply_elementwise("sign", x)
def sin(x: Any) -> Tensor: return _apply_elementwise("sin", x, float_only=True)
def cos(x: Any) -> Tensor: return _apply_elementwise("cos", x, float_only=True)
def square(x: Any) -> Tensor: return _apply_elementwise("square", x)
def add(x: Any, y: Any) -> Tensor: return _apply_elementwise("add", x, y)
def subtract(x: Any, y: Any) -> Tensor: return _apply_elementwise("sub", x, y)
def multiply(x: Any, y: Any) -> Tensor: return _apply_elementwise("mul", x, y)
def divide(x: Any, y: Any) -> Tensor: return _apply_elementwise("div", x, y, float_only=True)
def power(x: Any, y: Any) -> Tensor: return _apply_elementwise("pow", x, y, float_only=True)
def maximum(x: Any, y: Any) -> Tensor: return _apply_elementwise("maximum", x, y)
def minimum(x: Any, y: Any) -> Tensor: return _apply_elementwise("minimum", x, y)
def equal(x: Any, y: Any) -> Tensor: return _apply_elementwise("eq", x, y)
def not_equal(x: Any, y: Any) -> Tensor: return _apply_elementwise("ne", x, y)
def less(x: Any, y: Any) -> Tensor: return _apply_elementwise("lt", x, y)
def less_equal(x: Any, y: Any) -> Tensor: return _apply_elementwise("le", x, y)
def greater(x: Any, y: Any) -> Tensor: return _apply_elementwise("gt", x, y)
def greater_equal(x: Any, y: Any) -> Tensor: return _apply_elementwise("ge", x, y)
def logical_and(x: Any, y: Any) -> Tensor: return apply("logical_and", *as_tensors(x, y, op="logical_and"))
def logical_or(x: Any, y: Any) -> Tensor: return apply("logical_or", *as_tensors(x, y, op="logical_or"))
def logical_not(x: Any) -> Tensor: return apply("logical_not", *as_tensors(x, op="logical_not"))


def where(condition: Any, x: Any, y: Any) -> Tensor:
    """Elementwise select; `condition` must be bool (comparisons produce bool)."""
    (cond,) = [condition] if isinstance(condition, Tensor) else as_tensors(condition, op="where")
    if cond.dtype != "bool":
        raise ShapeError(f"where: condition must be bool, got {cond.dtype}")
    a, b = as_tensors(x, y, op="where", graph=cond.graph)
    return apply("where", cond, a, b)


def cast(x: Any, dtype: Any) -> Tensor:
    (tensor,) = as_tensors(x, op="cast")
    dtype = canonical_dtype(dtype)
    return tensor if tensor.dtype == dtype else apply("cast", tensor, dtype=dtype)


def stop_gradient(x: Tensor) -> Tensor:
    return apply("stop_gradient", *as_tensors(x, op="stop_gradient"))


# numpy-style aliases
astype = cast
sub, mul, div, pow, neg = subtract, multiply, divide, power, negative  # noqa: A001
