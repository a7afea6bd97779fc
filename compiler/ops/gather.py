"""Gather-style helpers for graph networks: `segment_sum`, `one_hot` and `arange`.

None of them registers an op; each is a short composite of existing ones, so the code
generator has nothing new to lower and the gradients come from the parts:
- segment_sum(data, ids, num_segments) is JAX's jax.ops.segment_sum: out[s] sums the
  data rows whose id is s, and ids outside [0, num_segments) are DROPPED (negative ones
  too). scatter_add would clip them into range instead, so the rows they label are
  zeroed with `where` first (skipped when the ids are a constant known to be in range).
  Its gradient is therefore take(g, ids) masked to zero at the dropped rows.
- one_hot(labels, n) is jax.nn.one_hot: labels == arange(n) along a new axis, cast to
  `dtype`; a label outside [0, n) gives an all-zero row.
- arange(...) is numpy.arange as an embedded constant.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from compiler.errors import ShapeError, TraceError
from compiler.ir.graph import Graph
from compiler.ir.types import INT_DTYPES, canonical_dtype
from compiler.ops.tensor import Tensor, apply, as_tensors

__all__ = ["segment_sum", "one_hot", "arange"]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def arange(start: Any, stop: Any = None, step: Any = 1, dtype: Any = None, *, graph: Graph | None = None) -> Tensor:
    """numpy.arange(start, stop, step) as a constant; int32 for int bounds, else float32."""
    from compiler.ops.constants import constant

    bounds = (start, stop, step) if stop is not None else (0, start, step)
    if not all(isinstance(b, (int, float, np.integer, np.floating)) and not isinstance(b, (bool, np.bool_))
               for b in bounds):
        raise TraceError(f"arange: bounds must be Python numbers, got {bounds!r} (a traced tensor has no value)")
    if dtype is None:
        dtype = "int32" if all(_is_int(b) for b in bounds) else "float32"
    if bounds[2] == 0:
        raise ShapeError("arange: step cannot be zero")
    return constant(np.arange(*bounds).astype(canonical_dtype(dtype)), graph=graph)


def _ids_tensor(segment_ids: Any, graph: Graph) -> tuple[Tensor, np.ndarray | None]:
    """The ids as an int tensor, plus their values when they are a constant."""
    from compiler.ops.constants import constant

    if isinstance(segment_ids, Tensor):
        if segment_ids.dtype not in INT_DTYPES:
            raise ShapeError(f"segment_sum: segment_ids must be int32 or int64, got {segment_ids.type}")
        return segment_ids, None
    array = np.asarray(segment_ids)
    if array.size == 0 and array.dtype.kind == "f":
        array = array.astype(np.int32)  # [] is float64 to numpy
    if array.dtype.kind not in "iu":
        raise ShapeError(f"segment_sum: segment_ids must be integers, got {array.dtype} {segment_ids!r}")
    fits = array.size == 0 or (array.min() >= -2**31 and array.max() < 2**31)
    return constant(array.astype(np.int32 if fits else np.int64), graph=graph), array


def segment_sum(data: Any, segment_ids: Any, num_segments: int | None = None) -> Tensor:
    """jax.ops.segment_sum: out[s] = sum of data[i] over i with segment_ids[i] == s.

    segment_ids (int, the shape of a prefix of data's axes, usually 1-d) need not be
    sorted; ids outside [0, num_segments) are dropped. The result has shape
    (num_segments,) + data.shape[ids.ndim:]; empty segments are 0. num_segments must be
    given unless the ids are a constant (then max(ids) + 1, as in JAX).
    """
    import compiler.ops as ops

    (data,) = as_tensors(data, op="segment_sum")
    if data.dtype == "bool":
        data = ops.cast(data, "int32")
    ids, known = _ids_tensor(segment_ids, data.graph)
    if num_segments is None:
        if known is None:
            raise ShapeError("segment_sum: num_segments is required when segment_ids are traced "
                             "(the output shape must be static)")
        num_segments = int(known.max()) + 1 if known.size else 0
    if not _is_int(num_segments) or num_segments < 0:
        raise ShapeError(f"segment_sum: num_segments must be a non-negative int, got {num_segments!r}")
    num_segments = int(num_segments)
    if ids.ndim == 0 or data.shape[:ids.ndim] != ids.shape:
        raise ShapeError(f"segment_sum: segment_ids {ids.type} must label the leading axes of data {data.type} "
                         f"(their shapes must match)")
    rest = data.shape[ids.ndim:]
    if num_segments == 0:
        return ops.full((0,) + rest, 0, data.dtype, graph=data.graph)
    if known is None or known.size and (known.min() < 0 or known.max() >= num_segments):
        kept = ops.logical_and(ids >= 0, ids < num_segments)
        data = ops.where(ops.reshape(kept, ids.shape + (1,) * len(rest)), data, 0)
    return apply("scatter_add", data, ids, axis=0, size=num_segments)


def one_hot(labels: Any, num_classes: int, dtype: Any = "float32", axis: int = -1) -> Tensor:
    """jax.nn.one_hot: a new axis (default last) of size num_classes, 1 where it equals the label.

    Labels must be integers; a label outside [0, num_classes) gives all zeros.
    """
    import compiler.ops as ops

    (labels,) = as_tensors(labels, op="one_hot")
    if labels.dtype not in INT_DTYPES:
        raise ShapeError(f"one_hot: labels must be an integer tensor, got {labels.type}")
    if not _is_int(num_classes) or num_classes < 0:
        raise ShapeError(f"one_hot: num_classes must be a non-negative int, got {num_classes!r}")
    rank = labels.ndim + 1
    if not _is_int(axis) or not -rank <= axis < rank:
        raise ShapeError(f"one_hot: axis {axis!r} is out of bounds for a result of rank {rank}")
    axis = int(axis) % rank
    classes = arange(int(num_classes), dtype=labels.dtype, graph=labels.graph)
    classes = ops.reshape(classes, (int(num_classes),) + (1,) * (rank - 1 - axis))
    hits = ops.equal(ops.expand_dims(labels, axis), classes)
    return ops.cast(hits, dtype)
