"""Matrix multiplication: the `matmul` op, and numpy's `matmul`/`dot` (and Tensor @) on top.

The IR op is strict: two operands of rank >= 2 and one numeric dtype; the last axis of `a`
contracts with the second-to-last of `b`; leading (batch) axes broadcast numpy-style.
The front end handles vectors as numpy does: a 1-D left operand becomes a row
(expand_dims), a 1-D right operand a column, and the added axis is squeezed off the result.

VJP: da = g @ swapaxes(b), db = swapaxes(a) @ g, in the broadcast batch shape; the adjoint
driver sums broadcast batch axes back to each operand's shape. When `b` is one matrix
shared by a batched `a` (a linear layer applied to a batch of sequences), db is one matrix
product over the flattened batch instead, so no per-batch (B, k, p) gradient is built.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from compiler.errors import ShapeError
from compiler.ir.types import FLOAT_DTYPES, INT_DTYPES, TensorType
from compiler.ops.elementwise import broadcast_shapes
from compiler.ops.registry import OpDef, register
from compiler.ops.tensor import Tensor, apply, as_tensors

__all__ = ["matmul", "dot"]

NUMERIC = FLOAT_DTYPES + INT_DTYPES


def _infer_matmul(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> TensorType:
    a, b = types
    if a.rank < 2 or b.rank < 2:
        raise ShapeError(f"operands need rank >= 2 (the front end expands vectors), got {a} and {b}")
    if a.dtype != b.dtype:
        raise ShapeError(f"operand dtypes differ ({a.dtype}, {b.dtype}); cast first")
    if a.dtype not in NUMERIC:
        raise ShapeError(f"dtype {a.dtype} not supported (needs one of {', '.join(NUMERIC)})")
    if a.shape[-1] != b.shape[-2]:
        raise ShapeError(f"contraction dims differ: {a} @ {b} contracts {a.shape[-1]} with {b.shape[-2]}")
    try:
        batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ShapeError:
        raise ShapeError(f"batch dims {a.shape[:-2]} and {b.shape[:-2]} of {a} @ {b} do not broadcast") from None
    return TensorType(batch + (a.shape[-2], b.shape[-1]), a.dtype)


def _swap_last(x: Tensor) -> Tensor:
    import compiler.ops as ops

    return ops.swapaxes(x, -1, -2)


def _matmul_vjp(g: Tensor, out: Tensor, xs: tuple) -> tuple:
    import compiler.ops as ops

    a, b = xs
    da = apply("matmul", g, _swap_last(b))
    if b.ndim == 2 and a.ndim > 2:
        rows = int(np.prod(a.shape[:-1], dtype=np.int64))
        flat_a = ops.reshape(a, (rows, a.shape[-1]))
        flat_g = ops.reshape(g, (rows, g.shape[-1]))
        return da, apply("matmul", _swap_last(flat_a), flat_g)
    return da, apply("matmul", _swap_last(a), g)


register(OpDef(
    "matmul", arity=2, attrs=(), infer=_infer_matmul, reference=lambda a, b: np.matmul(a, b),
    vjp=_matmul_vjp, kind="matmul", doc="Batched matrix product; batch dims broadcast.",
))


# ------------------------------------------------------ user-facing functions
def _operands(a: Any, b: Any, op: str) -> tuple[Tensor, Tensor]:
    x, y = as_tensors(a, b, op=op)
    if x.dtype == "bool":
        raise ShapeError(f"{op}: bool operands are not supported; cast them to a number type first")
    return x, y


def matmul(a: Any, b: Any) -> Tensor:
    """numpy's matmul: batched matrix product; 1-D operands act as a row / a column."""
    import compiler.ops as ops

    x, y = _operands(a, b, "matmul")
    if x.ndim == 0 or y.ndim == 0:
        raise ShapeError(f"matmul: operands need at least one dimension (use multiply for scalars), "
                         f"got shapes {x.shape} and {y.shape}")
    contracted = y.shape[-2] if y.ndim >= 2 else y.shape[0]
    if x.shape[-1] != contracted:
        raise ShapeError(f"matmul: shapes {x.shape} and {y.shape} do not align: "
                         f"{x.shape[-1]} (last axis of a) != {contracted} (contracted axis of b)")
    squeeze = []
    if x.ndim == 1:
        x = ops.expand_dims(x, 0)
        squeeze.append(-2)
    if y.ndim == 1:
        y = ops.expand_dims(y, 1)
        squeeze.append(-1)
    out = apply("matmul", x, y)
    return ops.squeeze(out, tuple(squeeze)) if squeeze else out


def dot(a: Any, b: Any) -> Tensor:
    """numpy's dot: a product of 0-d operands, else the last axis of a contracted with
    the second-to-last of b (the only axis of a vector), without batch broadcasting."""
    import compiler.ops as ops

    x, y = _operands(a, b, "dot")
    if x.ndim == 0 or y.ndim == 0:
        return ops.multiply(x, y)
    if y.ndim <= 2:
        return matmul(x, y)  # here numpy's dot and matmul agree
    k = y.shape[-2]
    if x.shape[-1] != k:
        raise ShapeError(f"dot: shapes {x.shape} and {y.shape} do not align: {x.shape[-1]} != {k}")
    # Bring b's contracted axis to the front and flatten the rest: one matrix product.
    perm = (y.ndim - 2,) + tuple(range(y.ndim - 2)) + (y.ndim - 1,)
    rest = int(np.prod(y.shape[:-2] + y.shape[-1:], dtype=np.int64))
    flat_y = ops.reshape(ops.transpose(y, perm), (k, rest))
    return ops.reshape(matmul(x, flat_y), x.shape[:-1] + y.shape[:-2] + y.shape[-1:])
