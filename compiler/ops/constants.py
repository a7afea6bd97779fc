"""Constant ops: `full` (a scalar repeated to a shape) and `constant` (a dense array)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from compiler.errors import ShapeError
from compiler.ir.graph import Graph, current_graph
from compiler.ir.types import TensorType, canonical_dtype
from compiler.ops.registry import OpDef, register
from compiler.ops.tensor import Tensor


def _shape_attr(value: Any) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)):
        value = (value,)
    try:
        shape = tuple(int(d) for d in value)
    except TypeError:
        raise ShapeError(f"shape must be a tuple of ints, got {value!r}") from None
    if any(d < 0 for d in shape):
        raise ShapeError(f"shape must be non-negative, got {shape}")
    return shape


def _infer_full(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> TensorType:
    value = attrs["value"]
    if not isinstance(value, (bool, int, float)):
        raise ShapeError(f"value must be a Python bool, int or float, got {type(value).__name__}")
    dtype = canonical_dtype(attrs["dtype"])
    _check_fits(value, dtype)
    return TensorType(_shape_attr(attrs["shape"]), dtype)


def _check_fits(value: Any, dtype: str) -> None:
    # An integer fill that does not fit would wrap in native code but raise in numpy: the
    # oracle and the compiler must never disagree, so refuse it where the op is built.
    if dtype not in ("int32", "int64"):
        return
    if isinstance(value, float) and not value.is_integer():
        raise ShapeError(f"value {value!r} is not an integer, so it does not fit {dtype}")
    info = np.iinfo(dtype)
    if not info.min <= int(value) <= info.max:
        raise ShapeError(f"value {value!r} does not fit {dtype} (range {info.min}..{info.max})")


def _infer_constant(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> TensorType:
    value = attrs["value"]
    if not isinstance(value, np.ndarray):
        raise ShapeError(f"value must be a numpy array, got {type(value).__name__}")
    return TensorType(value.shape, canonical_dtype(value.dtype))


register(OpDef(
    "full", arity=0, attrs=("shape", "dtype", "value"), infer=_infer_full,
    reference=lambda *, shape, dtype, value: np.full(shape, value, dtype=dtype),
    has_gradient=False, kind="source", doc="A tensor filled with one scalar value.",
))
register(OpDef(
    "constant", arity=0, attrs=("value",), infer=_infer_constant,
    reference=lambda *, value: np.array(value),
    has_gradient=False, kind="source", doc="A dense array embedded in the graph.",
))
register(OpDef(
    "input", arity=0, attrs=("name", "kind"), infer=None, reference=None,
    kind="source", doc="A graph input; its type is declared, not inferred.",
))


def full(shape: Any, fill_value: Any, dtype: Any = None, *, graph: Graph | None = None) -> Tensor:
    graph = graph or current_graph()
    if dtype is None:
        dtype = "bool" if isinstance(fill_value, bool) else "int32" if isinstance(fill_value, int) else "float32"
    dtype = canonical_dtype(dtype)
    if isinstance(fill_value, (int, np.integer)) and not isinstance(fill_value, (bool, np.bool_)):
        _check_fits(int(fill_value), dtype)  # astype would wrap it silently
    elif isinstance(fill_value, (float, np.floating)) and dtype in ("int32", "int64"):
        if not np.isfinite(fill_value):
            raise ShapeError(f"value {fill_value!r} does not fit {dtype}")
        _check_fits(float(np.trunc(fill_value)), dtype)  # astype truncates toward zero
    value = np.asarray(fill_value).astype(dtype).item()
    return Tensor(graph, graph.add_node("full", (), {"shape": _shape_attr(shape), "dtype": dtype, "value": value}))


def zeros(shape: Any, dtype: Any = "float32") -> Tensor:
    return full(shape, 0, dtype)


def ones(shape: Any, dtype: Any = "float32") -> Tensor:
    return full(shape, 1, dtype)


def zeros_like(x: Tensor, dtype: Any = None) -> Tensor:
    return full(x.shape, 0, dtype or x.dtype, graph=x.graph)


def ones_like(x: Tensor, dtype: Any = None) -> Tensor:
    return full(x.shape, 1, dtype or x.dtype, graph=x.graph)


def full_like(x: Tensor, fill_value: Any, dtype: Any = None) -> Tensor:
    return full(x.shape, fill_value, dtype or x.dtype, graph=x.graph)


def constant(value: Any, dtype: Any = None, *, graph: Graph | None = None) -> Tensor:
    """Embed a numpy array (or nested list) in the graph. float64 lists become float32."""
    graph = graph or current_graph()
    array = np.array(value, dtype=canonical_dtype(dtype) if dtype is not None else None)
    array = array.astype(canonical_dtype(array.dtype), copy=False)
    array.setflags(write=False)
    return Tensor(graph, graph.add_node("constant", (), {"value": array}))
