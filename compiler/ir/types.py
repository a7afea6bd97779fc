"""Tensor types: a static shape and a dtype."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from compiler.errors import ShapeError

DTYPES = ("float32", "float64", "int32", "int64", "bool")
FLOAT_DTYPES = ("float32", "float64")
INT_DTYPES = ("int32", "int64")

_SHORT = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64", "bool": "bool"}
_LONG = {short: long for long, short in _SHORT.items()}
_ITEMSIZE = {"float32": 4, "float64": 8, "int32": 4, "int64": 8, "bool": 1}
# Sizes are computed with Python ints and bounded here so .size/.nbytes (and every offset the code
# generator derives from them) fit int64; a bigger tensor could not be allocated anyway.
MAX_NBYTES = 2**63 - 1
_TYPE_TEXT = re.compile(r"^\s*(f32|f64|i32|i64|bool)\[\s*(\d+(?:\s*,\s*\d+)*)?\s*\]\s*$")


def canonical_dtype(dtype: object) -> str:
    """Accept 'float32', 'f32', np.float32, np.dtype(...) and return the canonical name."""
    if dtype is None:
        raise ShapeError(f"dtype is None; supported: {', '.join(DTYPES)}")
    if isinstance(dtype, str):
        if dtype in _SHORT:
            return dtype
        if dtype in _LONG:
            return _LONG[dtype]
    try:
        name = np.dtype(dtype).name  # type: ignore[arg-type]
    except TypeError:
        raise ShapeError(f"unknown dtype {dtype!r}; supported: {', '.join(DTYPES)}") from None
    if name not in DTYPES:
        raise ShapeError(f"unsupported dtype {name!r}; supported: {', '.join(DTYPES)}")
    return name


def _check_nbytes(shape: tuple[int, ...], dtype: str) -> None:
    count = math.prod(shape)
    if count * _ITEMSIZE[dtype] > MAX_NBYTES:
        raise ShapeError(f"shape {shape} has more than 2**63-1 bytes")
    # An empty tensor still has strides (the product of the dimensions to the right of
    # each): bound them too, so (0, 10**30) cannot overflow the code generator.
    if count == 0 and math.prod(max(d, 1) for d in shape) * _ITEMSIZE[dtype] > MAX_NBYTES:
        raise ShapeError(f"shape {shape} spans more than 2**63-1 bytes (its strides would overflow)")


@dataclass(frozen=True)
class TensorType:
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        if type(self.shape) is tuple and self.dtype in _SHORT and all(type(d) is int and d >= 0 for d in self.shape):
            _check_nbytes(self.shape, self.dtype)
            return  # the common case, already canonical
        if not isinstance(self.shape, tuple) or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in self.shape
        ):
            raise ShapeError(f"shape must be a tuple of non-negative ints, got {self.shape!r}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        _check_nbytes(self.shape, self.dtype)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * _ITEMSIZE[self.dtype]

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    def __str__(self) -> str:
        return f"{_SHORT[self.dtype]}[{','.join(str(d) for d in self.shape)}]"

    @staticmethod
    def parse(text: str) -> "TensorType":
        match = _TYPE_TEXT.match(text)
        if not match:
            raise ShapeError(f"malformed type {text!r}; expected e.g. f32[64,10] or f64[]")
        dims = match.group(2)
        shape = tuple(int(d) for d in dims.split(",")) if dims else ()
        return TensorType(shape, _LONG[match.group(1)])
