"""Accumulation: `add_n`, the sum of k operands of one shape and dtype.

The optimizer's `accumulate` pass turns a tree of binary `add`s into additions made as
the pieces arrive, and groups into one `add_n` the pieces that are all available at the
same point (x read by 4 consumers): the code generator then runs one loop that reads k
buffers and writes one, instead of k - 1 loops and temporaries, without keeping pieces
alive longer than the addition that consumes them.

Unlike `add`, `add_n` does not broadcast: every operand has exactly the result's type.
The numpy reference sums left to right, ((x0 + x1) + x2) + ..., so replacing a left-deep
chain of adds with `add_n` gives bitwise the same result.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from compiler.errors import ShapeError
from compiler.ir.types import FLOAT_DTYPES, INT_DTYPES, TensorType
from compiler.ops.registry import OpDef, register
from compiler.ops.tensor import Tensor, apply, as_tensors

__all__ = ["add_n"]

NUMERIC = FLOAT_DTYPES + INT_DTYPES


def _infer_add_n(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> TensorType:
    first = types[0]
    if first.dtype not in NUMERIC:
        raise ShapeError(f"dtype {first.dtype} not supported (needs one of {', '.join(NUMERIC)})")
    for index, t in enumerate(types[1:], start=1):
        if t != first:
            raise ShapeError(f"operands must share one shape and dtype (no broadcasting): "
                             f"operand {index} is {t}, operand 0 is {first}")
    return first


def _add_n(*xs: np.ndarray) -> np.ndarray:
    total = np.array(xs[0], copy=True)
    for x in xs[1:]:
        np.add(total, x, out=total)
    return total


register(OpDef(
    "add_n", arity=None, attrs=(), infer=_infer_add_n, reference=_add_n,
    vjp=lambda g, out, xs: tuple(g for _ in xs), kind="elementwise",
    doc="Sum of one or more operands of one type, accumulated left to right.",
))


def add_n(*values: Any) -> Tensor:
    """Sum of tensors of one shape and dtype: add_n(a, b, c) or add_n([a, b, c])."""
    if len(values) == 1 and isinstance(values[0], (list, tuple)):
        values = tuple(values[0])
    if not values:
        raise ShapeError("add_n: needs at least one operand")
    return apply("add_n", *as_tensors(*values, op="add_n"))
