"""TensorType: construction, canonical dtypes, text form and its errors."""
import numpy as np
import pytest

from compiler import ShapeError, TensorType
from compiler.ir.types import DTYPES, canonical_dtype


@pytest.mark.parametrize("text, shape, dtype", [
    ("f32[64,10]", (64, 10), "float32"),
    ("f64[]", (), "float64"),
    ("i32[3]", (3,), "int32"),
    ("i64[0,5]", (0, 5), "int64"),
    ("bool[2,3,4]", (2, 3, 4), "bool"),
    (" f32[ 2 , 3 ] ", (2, 3), "float32"),  # spaces are tolerated, as hand-written text has them
])
def test_parse(text, shape, dtype):
    assert TensorType.parse(text) == TensorType(shape, dtype)


@pytest.mark.parametrize("type_, text", [
    (TensorType((64, 10), "float32"), "f32[64,10]"),
    (TensorType((), "float64"), "f64[]"),
    (TensorType((1,), "int32"), "i32[1]"),
    (TensorType((0, 2), "int64"), "i64[0,2]"),
    (TensorType((2, 3), "bool"), "bool[2,3]"),
])
def test_str_round_trips(type_, text):
    assert str(type_) == text
    assert TensorType.parse(str(type_)) == type_


@pytest.mark.parametrize("text", [
    "", "f32", "f32[", "f32]", "f16[3]", "F32[3]", "float32[3]", "f32[-1]", "f32[1.5]", "f32[a]",
    "f32 [3]", "f32[3]x", "f32[3][4]", "f32(3)", "[3]",
])
def test_parse_errors_name_the_text(text):
    with pytest.raises(ShapeError, match=r"malformed type .*expected e\.g\. f32\[64,10\] or f64\[\]"):
        TensorType.parse(text)


@pytest.mark.parametrize("text", ["f32[64,,10]", "f32[,]", "f32[3,]", "f32[,3]"])
def test_parse_rejects_empty_dimensions(text):
    with pytest.raises(ShapeError, match="malformed type"):
        TensorType.parse(text)


def test_dtype_spellings_are_canonical():
    assert TensorType((2,), "f32") == TensorType((2,), "float32") == TensorType((2,), np.float32)
    assert TensorType((2,), np.dtype("int64")).dtype == "int64"
    assert TensorType((2,), np.bool_).dtype == "bool"
    assert TensorType((np.int64(2), np.int32(3)), "f64").shape == (2, 3)
    assert type(TensorType((np.int64(2),), "f64").shape[0]) is int
    for dtype in DTYPES:
        assert canonical_dtype(dtype) == dtype


def test_types_are_values():
    a, b = TensorType((2, 3), "float32"), TensorType((2, 3), "f32")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != TensorType((3, 2), "float32") and a != TensorType((2, 3), "float64")
    with pytest.raises(Exception):
        a.shape = (1,)  # frozen


def test_properties():
    t = TensorType((2, 3), "float32")
    assert (t.rank, t.size, t.nbytes, t.is_float) == (2, 6, 24, True)
    assert TensorType((), "float64").size == 1 and TensorType((), "float64").nbytes == 8
    assert TensorType((0, 4), "int32").size == 0
    assert not TensorType((3,), "int64").is_float and not TensorType((3,), "bool").is_float
    assert TensorType((5,), "bool").nbytes == 5


@pytest.mark.parametrize("shape", [[2], (2.0,), (True,), (-1,), (2, -3), "23", None])
def test_bad_shapes(shape):
    with pytest.raises(ShapeError, match="shape must be a tuple of non-negative ints"):
        TensorType(shape, "float32")


@pytest.mark.parametrize("dtype, message", [
    ("float16", "unsupported dtype 'float16'"),
    (np.complex64, "unsupported dtype 'complex64'"),
    (object, "unsupported dtype 'object'"),
    ("nope", "unknown dtype 'nope'; supported: float32, float64, int32, int64, bool"),
])
def test_bad_dtypes(dtype, message):
    with pytest.raises(ShapeError, match=message):
        TensorType((2,), dtype)


def test_none_is_not_a_dtype():
    with pytest.raises(ShapeError):
        TensorType((2,), None)
