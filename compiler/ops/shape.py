"""Shape and indexing ops: `transpose`, `reshape`, `broadcast_to`, `squeeze`, `expand_dims`,
`slice`, `pad`, `take`, `scatter_add` and `concatenate`; plus numpy's front ends on top
(swapaxes, moveaxis, ravel, stack, pad, take, and `getitem` behind Tensor.__getitem__).

IR attributes are normalized by the front end so equal graphs print equal:
- transpose `perm`: a permutation of range(rank); an identity perm is never emitted.
- reshape/broadcast_to `shape`: a fully resolved tuple (no -1).
- squeeze `axes`: sorted, unique, non-negative input axes, each of size 1.
- expand_dims `axes`: sorted, unique, non-negative positions in the OUTPUT.
- slice `starts`, `stops`, `steps`: one entry per axis; axis i reads
  range(starts[i], stops[i], steps[i]), every index of which must lie in [0, n). The front
  end emits the tight form: for a non-empty result, start is the first index read and
  stop = last index read + sign(step), so x[::-1] on n=5 is (4, -1, -1) and x[0:5:2] is
  (0, 5, 2); an empty result is (0, 0, 1). Unlike Python slicing, a negative stop never
  counts from the end.
- pad `low`, `high`, `interior`: non-negative ints per axis, `value` a float fill. Axis i
  of size n becomes low + n + max(n - 1, 0) * interior + high (XLA's pad): the transpose
  of a strided slice. Slice's VJP is a pad (after reversing negative-step axes); pad's is a slice.
- take(a, indices) `axis`, scatter_add(updates, indices) `axis`, `size`: integer indices;
  a negative index counts from the end (numpy), then indices are clipped into [0, n - 1]
  (JAX's mode='clip'), so nothing is read or written out of bounds; the reference and
  native code must agree on this. take's output is a.shape[:axis] + indices.shape +
  a.shape[axis+1:]. scatter_add is its transpose: for each index tuple j of `indices`,
  out[(:,)*axis + (idx[j],)] += updates[(:,)*axis + j], so duplicates accumulate.
- concatenate `axis`: non-negative; operands share dtype and rank.

Front-end index errors (a Python int or constant index array out of range, several array
indices, bool masks) raise TraceError worded like numpy's IndexError.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from compiler.errors import ShapeError, TraceError
from compiler.ir.types import INT_DTYPES, TensorType
from compiler.ops.registry import OpDef, register
from compiler.ops.tensor import Tensor, apply, as_tensors

__all__ = [
    "transpose", "swapaxes", "moveaxis", "reshape", "ravel", "broadcast_to", "squeeze", "expand_dims",
    "take", "concatenate", "stack", "pad", "getitem",
]


def _fmt(values: Sequence[int]) -> str:
    """A tuple as "(4,)" or "(0,0)": compact, like TensorType's text."""
    return "(" + ",".join(str(v) for v in values) + ("," if len(values) == 1 else "") + ")"


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _int_tuple(value: Any, what: str, length: int | None = None) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(_is_int(v) for v in value):
        raise ShapeError(f"{what} must be a tuple of ints, got {value!r}")
    if length is not None and len(value) != length:
        raise ShapeError(f"{what} {_fmt(value)} needs one entry per axis ({length})")
    return tuple(int(v) for v in value)


def _int_attr(value: Any, what: str) -> int:
    if not _is_int(value):
        raise ShapeError(f"{what} must be an int, got {value!r}")
    return int(value)


def _sorted_axes(value: Any, bound: int) -> tuple[int, ...]:
    axes = _int_tuple(value, "axes")
    if list(axes) != sorted(set(axes)) or any(not 0 <= a < bound for a in axes):
        raise ShapeError(f"axes {_fmt(axes)} must be sorted, unique and in [0, {bound})")
    return axes


def _slice_length(start: int, stop: int, step: int) -> int:
    return len(range(start, stop, step))


# ---------------------------------------------------------------- shape rules
def _infer_transpose(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> TensorType:
    (x,) = types
    perm = _int_tuple(attrs["perm"], "perm")
    if sorted(perm) != list(range(x.rank)):
        raise ShapeError(f"perm {_fmt(perm)} is not a permutation of {x.rank} axes")
    return TensorType(tuple(x.shape[p] for p in perm), x.dtype)


def _infer_reshape(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> TensorType:
    (x,) = types
    shape = _int_tuple(attrs["shape"], "shape")
    if any(d < 0 for d in shape) or TensorType(shape, x.dtype).size != x.size:
        raise ShapeError(f"cannot reshape {x} to {_fmt(shape)}")
    return TensorType(shape, x.dtype)


def _infer_broadcast_to(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> TensorType:
    (x,) = types
    shape = _int_tuple(attrs["shape"], "shape")
    lead = len(shape) - x.rank
    if any(d < 0 for d in shape) or lead < 0 or any(d not in (1, t) for d, t in zip(x.shape, shape[lead:])):
        raise ShapeError(f"cannot broadcast {x} to {_fmt(shape)}")
    return TensorType(shape, x.dtype)


def _infer_squeeze(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> TensorType:
    (x,) = types
    axes = _sorted_axes(attrs["axes"], x.rank)
    for a in axes:
        if x.shape[a] != 1:
            raise ShapeError(f"cannot squeeze axis {a} of {x}: its size is {x.shape[a]}, not 1")
    return TensorType(tuple(d for i, d in enumerate(x.shape) if i not in axes), x.dtype)


def _infer_expand_dims(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> TensorType:
    (x,) = types
    rank = x.rank + len(attrs["axes"]) if isinstance(attrs["axes"], tuple) else 0
    axes = _sorted_axes(attrs["axes"], rank)
    dims = iter(x.shape)
    return TensorType(tuple(1 if i in axes else next(dims) for i in range(rank)), x.dtype)


def _infer_slice(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> TensorType:
    (x,) = types
    starts, stops, steps = (_int_tuple(attrs[k], k, x.rank) for k in ("starts", "stops", "steps"))
    shape = []
    for axis, (n, start, stop, step) in enumerate(zip(x.shape, starts, stops, steps)):
        if step == 0:
            raise ShapeError(f"slice step of axis {axis} is 0")
        length = _slice_length(start, stop, step)
        last = start + (length - 1) * step
        if length and not (0 <= start < n and 0 <= last < n):
            raise ShapeError(f"range({start}, {stop}, {step}) reads outside axis {axis} of size {n} in {x}")
        shape.append(length)
    return TensorType(tuple(shape), x.dtype)


def _infer_pad(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> TensorType:
    (x,) = types
    low, high, interior = (_int_tuple(attrs[k], k, x.rank) for k in ("low", "high", "interior"))
    for name, values in (("low", low), ("high", high), ("interior", interior)):
        if any(v < 0 for v in values):
            raise ShapeError(f"{name} padding {_fmt(values)} must be non-negative")
    value = attrs["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ShapeError(f"value must be a Python float, got {value!r}")
    shape = tuple(lo + hi + n + max(n - 1, 0) * i for n, lo, hi, i in zip(x.shape, low, high, interior))
    return TensorType(shape, x.dtype)


def _check_indices(indices: TensorType) -> None:
    if indices.dtype not in INT_DTYPES:
        raise ShapeError(f"indices must be int32 or int64, got {indices}")


def _infer_take(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> TensorType:
    a, indices = types
    _check_indices(indices)
    axis = _int_attr(attrs["axis"], "axis")
    if not 0 <= axis < a.rank:
        raise ShapeError(f"axis {axis} is out of range for {a} (attrs must be non-negative)")
    if a.shape[axis] == 0 and indices.size:
        raise ShapeError(f"cannot take from axis {axis} of {a}: it is empty")
    return TensorType(a.shape[:axis] + indices.shape + a.shape[axis + 1:], a.dtype)


def _infer_scatter_add(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> TensorType:
    updates, indices = types
    _check_indices(indices)
    axis = _int_attr(attrs["axis"], "axis")
    size = _int_attr(attrs["size"], "size")
    if not 0 <= axis <= updates.rank - indices.rank:
        raise ShapeError(f"axis {axis} is out of range for updates {updates} with indices {indices}")
    if updates.shape[axis:axis + indices.rank] != indices.shape:
        raise ShapeError(f"updates {updates} do not have the indices' shape {_fmt(indices.shape)} at axis {axis}")
    if size < 0 or (size == 0 and indices.size):
        raise ShapeError(f"size {size} cannot receive {indices.size} indexed update(s)")
    return TensorType(updates.shape[:axis] + (size,) + updates.shape[axis + indices.rank:], updates.dtype)


def _infer_concatenate(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> TensorType:
    first = types[0]
    axis = _int_attr(attrs["axis"], "axis")
    if not 0 <= axis < first.rank:
        raise ShapeError(f"axis {axis} is out of range for {first} (attrs must be non-negative)")
    for t in types[1:]:
        if t.dtype != first.dtype:
            raise ShapeError(f"operand dtypes differ ({', '.join(t.dtype for t in types)}); cast first")
        if t.rank != first.rank or any(d != e for i, (d, e) in enumerate(zip(t.shape, first.shape)) if i != axis):
            raise ShapeError(f"cannot concatenate {first} and {t} along axis {axis}")
    total = sum(t.shape[axis] for t in types)
    return TensorType(first.shape[:axis] + (total,) + first.shape[axis + 1:], first.dtype)


# ----------------------------------------------------------------- references
def _read_index(starts: tuple, stops: tuple, steps: tuple) -> tuple:
    """numpy slices reading exactly range(start, stop, step) (a stop of -1 must become None)."""
    index = []
    for start, stop, step in zip(starts, stops, steps):
        length = _slice_length(start, stop, step)
        if not length:
            index.append(slice(0, 0))
            continue
        end = start + (length - 1) * step + (1 if step > 0 else -1)
        index.append(slice(start, end if end >= 0 else None, step))
    return tuple(index)


def _pad_ref(x: np.ndarray, *, low: tuple, high: tuple, interior: tuple, value: float) -> np.ndarray:
    shape = tuple(lo + hi + n + max(n - 1, 0) * i for n, lo, hi, i in zip(x.shape, low, high, interior))
    out = np.full(shape, value, dtype=x.dtype)
    out[tuple(slice(lo, lo + n + max(n - 1, 0) * i, i + 1)
              for n, lo, i in zip(x.shape, low, interior))] = x
    return out


def _normalize_indices(indices: np.ndarray, n: int) -> np.ndarray:
    indices = np.where(indices < 0, indices + n, indices)
    return np.clip(indices, 0, max(n - 1, 0))


def _take_ref(a: np.ndarray, indices: np.ndarray, *, axis: int) -> np.ndarray:
    return np.take(a, _normalize_indices(indices, a.shape[axis]), axis=axis)


def _scatter_add_ref(updates: np.ndarray, indices: np.ndarray, *, axis: int, size: int) -> np.ndarray:
    out = np.zeros(updates.shape[:axis] + (size,) + updates.shape[axis + indices.ndim:], dtype=updates.dtype)
    np.add.at(out, (slice(None),) * axis + (_normalize_indices(indices, size),), updates)
    return out


# ------------------------------------------------------------------ VJP rules
def _reverse(x: Tensor, axes: Sequence[int]) -> Tensor:
    """x[::-1] along `axes` (each non-empty)."""
    starts = tuple(n - 1 if a in axes else 0 for a, n in enumerate(x.shape))
    stops = tuple(-1 if a in axes else n for a, n in enumerate(x.shape))
    steps = tuple(-1 if a in axes else 1 for a in range(x.ndim))
    return apply("slice", x, starts=starts, stops=stops, steps=steps)


def _slice_vjp(g: Tensor, out: Tensor, xs: tuple, *, starts: tuple, stops: tuple, steps: tuple) -> tuple:
    low, high, interior, flipped = [], [], [], []
    for axis, (n, start, stop, step) in enumerate(zip(xs[0].shape, starts, stops, steps)):
        length = _slice_length(start, stop, step)
        # Read forwards from the lowest index, the step's size apart; pad fills the gaps.
        first = start if step > 0 else start + (length - 1) * step
        stride = abs(step) if length else 1
        if step < 0 and length:
            flipped.append(axis)
        low.append(first if length else n)  # nothing read: the whole axis gets zeros
        interior.append(stride - 1)
        high.append(n - 1 - (first + (length - 1) * stride) if length else 0)
    if flipped:
        g = _reverse(g, flipped)
    return (apply("pad", g, low=tuple(low), high=tuple(high), interior=tuple(interior), value=0.0),)


def _pad_vjp(g: Tensor, out: Tensor, xs: tuple, *, low: tuple, high: tuple, interior: tuple, value: float) -> tuple:
    read = [(lo, lo + (n - 1) * (i + 1) + 1, i + 1) if n else (0, 0, 1) for n, lo, i in zip(xs[0].shape, low, interior)]
    starts, stops, steps = (tuple(column) for column in zip(*read)) if read else ((), (), ())
    return (apply("slice", g, starts=starts, stops=stops, steps=steps),)


def _broadcast_to_vjp(g: Tensor, out: Tensor, xs: tuple, *, shape: tuple) -> tuple:
    import compiler.ops as ops

    x = xs[0]
    lead = len(shape) - x.ndim
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(x.shape) if d == 1 and shape[lead + i] != 1)
    summed = ops.sum(g, axis=axes) if axes else g
    return (reshape(summed, x.shape),)


def _concatenate_vjp(g: Tensor, out: Tensor, xs: tuple, *, axis: int) -> tuple:
    pieces, offset = [], 0
    for x in xs:
        n = x.shape[axis]
        begin = offset if n else 0  # the tight form of an empty range is (0, 0, 1)
        starts = tuple(begin if a == axis else 0 for a in range(g.ndim))
        stops = tuple(begin + n if a == axis else d for a, d in enumerate(g.shape))
        pieces.append(apply("slice", g, starts=starts, stops=stops, steps=(1,) * g.ndim))
        offset += n
    return tuple(pieces)


def _inverse(perm: tuple) -> tuple:
    return tuple(int(i) for i in np.argsort(perm))


def _register(name: str, arity: int | None, attrs: tuple, infer: Any, reference: Any, vjp: Any, doc: str) -> None:
    register(OpDef(name, arity=arity, attrs=attrs, infer=infer, reference=reference, vjp=vjp, kind="shape", doc=doc))


_register("transpose", 1, ("perm",), _infer_transpose, lambda x, *, perm: np.transpose(x, perm).copy(),
          lambda g, out, xs, *, perm: (transpose(g, _inverse(perm)),),
          "Permute axes: out axis i is operand axis perm[i].")
_register("reshape", 1, ("shape",), _infer_reshape, lambda x, *, shape: np.reshape(x, shape).copy(),
          lambda g, out, xs, *, shape: (reshape(g, xs[0].shape),), "Same elements (row-major order), new shape.")
_register("broadcast_to", 1, ("shape",), _infer_broadcast_to,
          lambda x, *, shape: np.broadcast_to(x, shape).copy(), _broadcast_to_vjp, "numpy broadcasting to `shape`.")
_register("squeeze", 1, ("axes",), _infer_squeeze, lambda x, *, axes: np.squeeze(x, axes).copy(),
          lambda g, out, xs, *, axes: (apply("expand_dims", g, axes=axes),), "Remove size-1 axes.")
_register("expand_dims", 1, ("axes",), _infer_expand_dims, lambda x, *, axes: np.expand_dims(x, axes).copy(),
          lambda g, out, xs, *, axes: (apply("squeeze", g, axes=axes),), "Insert size-1 axes at output positions.")
_register("slice", 1, ("starts", "stops", "steps"), _infer_slice,
          lambda x, *, starts, stops, steps: x[_read_index(starts, stops, steps)].copy(), _slice_vjp,
          "Strided slice: axis i reads range(starts[i], stops[i], steps[i]).")
_register("pad", 1, ("low", "high", "interior", "value"), _infer_pad, _pad_ref, _pad_vjp,
          "Edge and interior padding with a constant (XLA's pad; the transpose of slice).")
_register("take", 2, ("axis",), _infer_take, _take_ref,
          lambda g, out, xs, *, axis: (apply("scatter_add", g, xs[1], axis=axis, size=xs[0].shape[axis]), None),
          "Gather along `axis` (negative indices from the end, then clipped).")
_register("scatter_add", 2, ("axis", "size"), _infer_scatter_add, _scatter_add_ref,
          lambda g, out, xs, *, axis, size: (apply("take", g, xs[1], axis=axis), None),
          "Transpose of take: updates summed into `size` rows along `axis`.")
_register("concatenate", None, ("axis",), _infer_concatenate,
          lambda *xs, axis: np.concatenate(xs, axis=axis), _concatenate_vjp, "Join operands along `axis`.")


# ------------------------------------------------------ user-facing functions
def _tensor(x: Any, op: str) -> Tensor:
    return x if isinstance(x, Tensor) else as_tensors(x, op=op)[0]


def _axis(axis: Any, rank: int, op: str) -> int:
    if not _is_int(axis):
        raise ShapeError(f"{op}: axis must be an int, got {axis!r}")
    if not -rank <= axis < rank:
        raise ShapeError(f"{op}: axis {axis} is out of bounds for a tensor of rank {rank}")
    return int(axis) % rank


def _axes(axis: Any, rank: int, op: str) -> tuple[int, ...]:
    """An int or a sequence of ints, normalized (order kept); repeats are an error."""
    items = list(axis) if isinstance(axis, (tuple, list)) else [axis]
    axes = tuple(_axis(a, rank, op) for a in items)
    if len(set(axes)) != len(axes):
        raise ShapeError(f"{op}: repeated axis in {axis!r}")
    return axes


def _shape_arg(shape: Any, op: str) -> tuple[int, ...]:
    items = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    if not all(_is_int(d) for d in items):
        raise ShapeError(f"{op}: shape must be an int or a tuple of ints, got {shape!r}")
    return tuple(int(d) for d in items)


def transpose(x: Any, axes: Any = None) -> Tensor:
    """Permute axes (None: reverse them), as numpy.transpose."""
    x = _tensor(x, "transpose")
    items = axes if isinstance(axes, (tuple, list)) else [axes]
    perm = tuple(reversed(range(x.ndim))) if axes is None else tuple(_axis(a, x.ndim, "transpose") for a in items)
    return x if perm == tuple(range(x.ndim)) else apply("transpose", x, perm=perm)


def swapaxes(x: Any, axis1: int, axis2: int) -> Tensor:
    x = _tensor(x, "swapaxes")
    a, b = _axis(axis1, x.ndim, "swapaxes"), _axis(axis2, x.ndim, "swapaxes")
    perm = list(range(x.ndim))
    perm[a], perm[b] = b, a
    return transpose(x, perm)


def moveaxis(x: Any, source: Any, destination: Any) -> Tensor:
    """Move axes to new positions, the others keeping their order (numpy.moveaxis)."""
    x = _tensor(x, "moveaxis")
    src, dst = _axes(source, x.ndim, "moveaxis"), _axes(destination, x.ndim, "moveaxis")
    if len(src) != len(dst):
        raise ShapeError(f"moveaxis: source {source!r} and destination {destination!r} differ in length")
    order = [a for a in range(x.ndim) if a not in src]
    for d, s in sorted(zip(dst, src)):
        order.insert(d, s)
    return transpose(x, order)


def reshape(x: Any, shape: Any) -> Tensor:
    """numpy.reshape (row-major); one dimension may be -1."""
    x = _tensor(x, "reshape")
    shape = _shape_arg(shape, "reshape")
    unknown = [i for i, d in enumerate(shape) if d == -1]
    if len(unknown) > 1 or any(d < -1 for d in shape):
        raise ShapeError(f"reshape: cannot reshape {x.type} to {_fmt(shape)}: at most one dimension may be -1")
    if unknown:
        known = int(np.prod([d for d in shape if d != -1], dtype=np.int64))
        if known == 0 or x.size % known:
            raise ShapeError(f"reshape: cannot reshape {x.type} to {_fmt(shape)}")
        shape = tuple(x.size // known if d == -1 else d for d in shape)
    if shape == x.shape:
        return x
    return apply("reshape", x, shape=shape)


def ravel(x: Any) -> Tensor:
    x = _tensor(x, "ravel")
    return reshape(x, (x.size,))


def broadcast_to(x: Any, shape: Any) -> Tensor:
    x = _tensor(x, "broadcast_to")
    shape = _shape_arg(shape, "broadcast_to")
    return x if shape == x.shape else apply("broadcast_to", x, shape=shape)


def squeeze(x: Any, axis: Any = None) -> Tensor:
    """Remove size-1 axes (None: all of them); squeezing an axis of another size is an error."""
    x = _tensor(x, "squeeze")
    if axis is None:
        axes = tuple(i for i, d in enumerate(x.shape) if d == 1)
    else:
        axes = tuple(sorted(_axes(axis, x.ndim, "squeeze")))
    return apply("squeeze", x, axes=axes) if axes else x


def expand_dims(x: Any, axis: Any) -> Tensor:
    """Insert size-1 axes at `axis` (positions in the result; negatives count from its end)."""
    x = _tensor(x, "expand_dims")
    count = len(axis) if isinstance(axis, (tuple, list)) else 1
    axes = tuple(sorted(_axes(axis, x.ndim + count, "expand_dims")))
    return apply("expand_dims", x, axes=axes) if axes else x


def _as_array(value: Any, what: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except ValueError:  # ragged nested lists
        raise TraceError(f"{what}cannot use {value!r} as an index array") from None


def _index_tensor(indices: Any, op: str, size: int, axis: int, graph: Any) -> Tensor:
    """Integer indices as a tensor; constant ones are bounds-checked now, as numpy would."""
    from compiler.ops.constants import constant

    op = f"{op}: " if op else ""
    if isinstance(indices, Tensor):
        if indices.dtype not in INT_DTYPES:
            raise TraceError(f"{op}index tensors must be int32 or int64, got {indices.type}")
        return indices
    array = _as_array(indices, op)
    if array.size == 0 and array.dtype.kind == "f":
        array = array.astype(np.int32)  # [] is float64 to numpy
    if array.dtype.kind not in "iu":
        raise TraceError(f"{op}indices must be integers, got {array.dtype} {indices!r}")
    bad = array[(array < -size) | (array >= size)]
    if bad.size:
        raise TraceError(f"{op}index {int(bad.flat[0])} is out of bounds for axis {axis} with size {size}")
    fits = array.size == 0 or (array.min() >= -2**31 and array.max() < 2**31)
    return constant(array.astype(np.int32 if fits else np.int64), graph=graph)


def take(a: Any, indices: Any, axis: Any = None) -> Tensor:
    """numpy.take: gather along `axis` (None: from the flattened tensor).

    Constant indices out of range raise now; traced indices count from the end when
    negative and are clipped into range.
    """
    a = _tensor(a, "take")
    if axis is None:
        a, axis = ravel(a), 0
    elif a.ndim == 0:
        raise ShapeError("take: cannot take along an axis of a 0-d tensor")
    axis = _axis(axis, a.ndim, "take")
    index = _index_tensor(indices, "take", a.shape[axis], axis, a.graph)
    return apply("take", a, index, axis=axis)


def concatenate(tensors: Sequence[Any], axis: int = 0) -> Tensor:
    """Join tensors along an existing axis; dtypes are promoted as for arithmetic."""
    if isinstance(tensors, Tensor) or not isinstance(tensors, (list, tuple)) or not tensors:
        raise ShapeError(f"concatenate: expects a non-empty list of tensors, got {tensors!r}")
    items = as_tensors(*tensors, op="concatenate")
    if items[0].ndim == 0:
        raise ShapeError("concatenate: zero-dimensional tensors cannot be concatenated")
    axis = _axis(axis, items[0].ndim, "concatenate")
    return items[0] if len(items) == 1 else apply("concatenate", *items, axis=axis)


def stack(tensors: Sequence[Any], axis: int = 0) -> Tensor:
    """Join same-shaped tensors along a new axis (expand_dims + concatenate)."""
    if isinstance(tensors, Tensor) or not isinstance(tensors, (list, tuple)) or not tensors:
        raise ShapeError(f"stack: expects a non-empty list of tensors, got {tensors!r}")
    items = as_tensors(*tensors, op="stack")
    for item in items[1:]:
        if item.shape != items[0].shape:
            raise ShapeError(f"stack: all tensors must have the same shape, got {items[0].type} and {item.type}")
    axis = _axis(axis, items[0].ndim + 1, "stack")
    return concatenate([apply("expand_dims", t, axes=(axis,)) for t in items], axis=axis)


def pad(x: Any, pad_width: Any, constant_values: Any = 0) -> Tensor:
    """numpy.pad with mode='constant': pad_width is n, (before, after) or one pair per axis."""
    x = _tensor(x, "pad")
    try:
        widths = np.broadcast_to(np.asarray(pad_width), (x.ndim, 2))
    except (ValueError, TypeError):
        raise ShapeError(f"pad: pad_width {pad_width!r} does not give (before, after) for {x.ndim} axes") from None
    if widths.dtype.kind not in "iu" or (widths < 0).any():
        raise ShapeError(f"pad: pad_width must be non-negative ints, got {pad_width!r}")
    if isinstance(constant_values, (bool, np.bool_)) or not isinstance(constant_values, (int, float, np.number)):
        raise ShapeError(f"pad: constant_values must be a number, got {constant_values!r}")
    low, high = tuple(int(w) for w in widths[:, 0]), tuple(int(w) for w in widths[:, 1])
    if not any(low + high):
        return x
    return apply("pad", x, low=low, high=high, interior=(0,) * x.ndim, value=float(constant_values))


# ------------------------------------------------------------------- indexing
def _parse_index(item: Any) -> tuple[str, Any]:
    """One entry of an index as (kind, value): int, slice, new, ellipsis or array."""
    if item is None:
        return "new", None
    if item is Ellipsis:
        return "ellipsis", None
    if isinstance(item, slice):
        for bound in (item.start, item.stop, item.step):
            if bound is not None and not _is_int(bound):
                raise TraceError(f"slice bounds must be Python ints or None, got {bound!r} "
                                 f"(a traced tensor cannot be a slice bound)")
        return "slice", item
    if isinstance(item, (bool, np.bool_)) or (isinstance(item, Tensor) and item.dtype == "bool"):
        raise TraceError("boolean (mask) indices are not supported; use ops.where")
    if _is_int(item):
        return "int", int(item)
    if isinstance(item, Tensor):
        if item.dtype not in INT_DTYPES:
            raise TraceError(f"index tensors must be int32 or int64, got {item.type}")
        return "array", item
    if isinstance(item, (np.ndarray, list)):
        array = _as_array(item, "")
        if array.dtype == np.bool_:
            raise TraceError("boolean (mask) indices are not supported; use ops.where")
        if array.dtype.kind not in "iu" and not (array.size == 0 and array.dtype.kind == "f"):
            raise TraceError(f"arrays used as indices must be of integer type, got {array.dtype}")
        return ("int", int(array)) if array.ndim == 0 else ("array", array)
    raise TraceError(f"unsupported index {item!r} of type {type(item).__name__}: use ints, slices, None, "
                     f"... or one integer tensor/array")


def _normalize_slice(item: slice, n: int) -> tuple[int, int, int]:
    """A Python slice of an axis of size n in the tight (start, stop, step) form of the docstring."""
    if item.step == 0:
        raise TraceError("slice step cannot be zero")
    start, stop, step = item.indices(n)
    length = _slice_length(start, stop, step)
    if not length:
        return 0, 0, 1
    return start, start + (length - 1) * step + (1 if step > 0 else -1), step


def getitem(x: Any, index: Any) -> Tensor:
    """numpy basic indexing (ints, slices with steps, None, ...) plus one integer array index."""
    x = _tensor(x, "getitem")
    entries = [_parse_index(item) for item in (index if isinstance(index, tuple) else (index,))]
    kinds = [kind for kind, _ in entries]
    if kinds.count("ellipsis") > 1:
        raise TraceError("an index can only have a single ellipsis ('...')")
    if kinds.count("array") > 1:
        raise TraceError(f"only one integer-array index is supported, got {kinds.count('array')}; "
                         f"index in several steps or use ops.take")
    consumed = sum(kind in ("int", "slice", "array") for kind in kinds)
    if consumed > x.ndim:
        raise TraceError(f"too many indices for tensor: tensor is {x.ndim}-dimensional, but {consumed} were indexed")
    # numpy puts the array's dims first when advanced entries (ints, the array) are separated
    advanced = [i for i, kind in enumerate(kinds) if kind in ("int", "array")]
    array_first = "array" in kinds and advanced[-1] - advanced[0] + 1 != len(advanced)
    if "ellipsis" in kinds:
        at = kinds.index("ellipsis")
        entries[at:at + 1] = [("slice", slice(None))] * (x.ndim - consumed)
    else:
        entries += [("slice", slice(None))] * (x.ndim - consumed)

    reads, int_axes, new_axes = [], [], []
    array_axis, array, array_dims, axis, produced = None, None, 0, 0, 0
    for kind, value in entries:
        if kind == "new":
            new_axes.append(produced)
            produced += 1
            continue
        n = x.shape[axis]
        if kind == "int":
            if not -n <= value < n:
                raise TraceError(f"index {value} is out of bounds for axis {axis} with size {n}")
            bounds = (value % n, value % n + 1, 1)
            int_axes.append(axis)
        elif kind == "slice":
            bounds = _normalize_slice(value, n)
            produced += 1
        else:
            bounds = _normalize_slice(slice(None), n)
            array_axis, array = axis, _index_tensor(value, "", n, axis, x.graph)
            array_dims = array.ndim
            produced += 0 if array_first else array_dims
        reads.append(bounds)
        axis += 1

    if reads != [_normalize_slice(slice(None), n) for n in x.shape]:
        starts, stops, steps = zip(*reads)
        x = apply("slice", x, starts=starts, stops=stops, steps=steps)
    x = squeeze(x, tuple(int_axes)) if int_axes else x
    if array is not None:
        position = array_axis - sum(a < array_axis for a in int_axes)
        x = apply("take", x, array, axis=position)
        if array_first:
            dims = list(range(position, position + array_dims))
            x = transpose(x, dims + [d for d in range(x.ndim) if d not in dims])
            new_axes = [a + array_dims for a in new_axes]
    return expand_dims(x, tuple(new_axes)) if new_axes else x
