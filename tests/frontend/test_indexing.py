"""Tensor.__getitem__ against numpy: basic indexing, one integer-array index, and errors."""
import numpy as np
import pytest

import compiler
from compiler import Spec, ops
from compiler.errors import TraceError

X = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)
V = np.arange(6, dtype=np.float64) * 1.5
S = np.float64(2.5)

BASIC = [
    # (name, array, index)
    ("int", X, 1),
    ("negative-int", X, -1),
    ("ints", X, (1, -2, 3)),
    ("all-ints", X, (1, 2, 3, 4)),
    ("slice", V, slice(1, 4)),
    ("step", V, slice(None, None, 2)),
    ("negative-step", V, slice(None, None, -1)),
    ("negative-step-bounds", V, slice(4, 1, -2)),
    ("negative-step-to-start", V, slice(3, None, -1)),
    ("negative-bounds", V, slice(-4, -1)),
    ("out-of-range-bounds", V, slice(-100, 100)),
    ("out-of-range-reverse", V, slice(100, -100, -3)),
    ("empty", V, slice(4, 2)),
    ("empty-reverse", V, slice(2, 4, -1)),
    ("empty-past-end", V, slice(10, 20)),
    ("multi-axis", X, (slice(None, None, -1), slice(1, None), slice(None, 3, 2))),
    ("newaxis", X, None),
    ("newaxis-middle", X, (0, None, slice(1, 3))),
    ("newaxis-several", V, (None, slice(None), None, None)),
    ("ellipsis", X, Ellipsis),
    ("ellipsis-last", X, (Ellipsis, 2)),
    ("ellipsis-middle", X, (1, Ellipsis, slice(None, None, -2))),
    ("ellipsis-empty", X, (0, 1, Ellipsis, 2, 3)),
    ("ellipsis-newaxis", X, (None, Ellipsis, None, 0)),
    ("empty-tuple", X, ()),
    ("numpy-int", X, (np.int64(1), np.int32(-1))),
    ("numpy-0d-array", X, np.array(1)),
    ("slice-numpy-bounds", V, slice(np.int64(1), np.int32(5), np.int64(2))),
    ("int-and-step", X, (slice(None), 0, slice(None, None, -1))),
    ("0d-ellipsis", S, Ellipsis),
    ("0d-newaxis", S, (None, Ellipsis, None)),
    ("0d-empty-tuple", S, ()),
    ("size-1-axis", np.ones((1, 3)), (0, slice(None))),
    ("zero-size-tensor", np.zeros((0, 3)), (slice(None), 1)),
]

ARRAY = [
    ("list", X, [1, 0, 1]),
    ("numpy-array", X, np.array([[0, 1], [1, 1]])),
    ("negative-entries", V, np.array([-1, -6, 0])),
    ("empty-list", V, []),
    ("array-axis-1", X, (slice(None), [2, 0])),
    ("array-after-ellipsis", X, (Ellipsis, [4, 0, 4])),
    ("array-with-slices", X, (slice(None, None, -1), slice(1, None), [0, 3], slice(None, 2))),
    ("array-with-newaxis", X, (None, slice(None), [2, 1])),
    ("adjacent-int", X, (slice(None), 0, [1, 2])),
    ("adjacent-int-after", X, (slice(None), [1, 2], 0)),
    ("separated-by-slice", X, (0, slice(None), [0, 3])),
    ("separated-by-newaxis", X, (0, None, [0, 2])),
    ("separated-by-ellipsis", X, ([0, 1], Ellipsis, 0)),
    ("separated-by-empty-ellipsis", X, (slice(None), 0, Ellipsis, [[0, 1]], slice(None))),
    ("separated-2d-with-newaxes", X, (None, 1, slice(None, None, 2), None, np.array([[3], [0]]), slice(1, 3))),
]


def _check(array, index):
    graph = compiler.trace(lambda x: x[index], array)
    result = compiler.evaluate(graph, array)
    expected = np.asarray(array)[index]
    assert result.shape == expected.shape, (result.shape, expected.shape)
    np.testing.assert_array_equal(result, expected)
    return graph


@pytest.mark.parametrize("name, array, index", BASIC, ids=[c[0] for c in BASIC])
def test_basic_indexing_matches_numpy(name, array, index):
    graph = _check(array, index)
    assert {node.op for _, node in graph.nodes()} <= {"input", "slice", "squeeze", "expand_dims"}


@pytest.mark.parametrize("name, array, index", ARRAY, ids=[c[0] for c in ARRAY])
def test_constant_array_index_matches_numpy(name, array, index):
    graph = _check(array, index)
    assert "take" in {node.op for _, node in graph.nodes()}


TENSOR = [
    # (name, fn, index array): the index is a traced int input
    ("vector", lambda x, i: x[i], np.array([1, 0, 1], np.int32)),
    ("matrix", lambda x, i: x[i], np.array([[0, 1], [1, 1]], np.int64)),
    ("0d", lambda x, i: x[i], np.array(1, np.int32)),
    ("0d-with-slices", lambda x, i: x[:, i, ::-1], np.array(2, np.int32)),
    ("axis-2", lambda x, i: x[..., i, :], np.array([3, 0, 3], np.int32)),
    ("separated", lambda x, i: x[1, :, i], np.array([[3, 0]], np.int32)),
    ("negative", lambda x, i: x[:, :, :, i], np.array([-1, -5, 2], np.int32)),
]


@pytest.mark.parametrize("name, fn, index", TENSOR, ids=[c[0] for c in TENSOR])
def test_tensor_index_matches_numpy(name, fn, index):
    graph = compiler.trace(fn, X, index)
    np.testing.assert_array_equal(compiler.evaluate(graph, X, index), fn(X, index))


def test_tensor_index_out_of_range_is_clipped():
    graph = compiler.trace(lambda v, i: v[i], V, Spec((5,), "int32"))
    i = np.array([6, 100, -7, -100, -6], np.int32)
    np.testing.assert_array_equal(compiler.evaluate(graph, V, i), V[[5, 5, 0, 0, 0]])


def test_indexing_composes_and_differentiates():
    from tests.gradcheck import check_grad

    check_grad(lambda x, i: x[1:, i][::-1, None, 0] * x[0, 0, 0, 0], [X / 100.0, np.array([2, 0, 2], np.int32)])


def test_python_list_index_of_ints_is_a_gather_not_a_tuple():
    graph = _check(V, [0, 1])  # numpy: a list is an array index, not a multi-axis index
    assert graph.type(graph.outputs[0]).shape == (2,)


ERRORS = [
    (lambda x: x[2], r"index 2 is out of bounds for axis 0 with size 2"),
    (lambda x: x[0, -4], r"index -4 is out of bounds for axis 1 with size 3"),
    (lambda x: x[..., 5], r"index 5 is out of bounds for axis 3 with size 5"),
    (lambda x: x[0, 0, 0, 0, 0], r"too many indices for tensor: tensor is 4-dimensional, but 5 were indexed"),
    (lambda x: x[..., ...], r"an index can only have a single ellipsis"),
    (lambda x: x[[0, 1], [0, 1]], r"only one integer-array index is supported, got 2"),
    (lambda x: x[[0], :, [1]], r"only one integer-array index is supported"),
    (lambda x: x[True], r"boolean \(mask\) indices are not supported"),
    (lambda x: x[np.array([True, False])], r"boolean \(mask\) indices are not supported"),
    (lambda x: x[x > 0], r"boolean \(mask\) indices are not supported"),
    (lambda x: x[1.0], r"unsupported index 1.0 of type float"),
    (lambda x: x["a"], r"unsupported index 'a' of type str"),
    (lambda x: x[np.array([0.5])], r"arrays used as indices must be of integer type, got float64"),
    (lambda x: x[ops.sum(x)], r"index tensors must be int32 or int64, got f32\[\]"),
    (lambda x: x[[0, 2]], r"index 2 is out of bounds for axis 0 with size 2"),
    (lambda x: x[:, np.array([[-4]])], r"index -4 is out of bounds for axis 1 with size 3"),
    (lambda x: x[::0], r"slice step cannot be zero"),
    (lambda x: x[[[0], [0, 1]]], r"cannot use \[\[0\], \[0, 1\]\] as an index array"),
    (lambda x: x[:1.5], r"slice bounds must be Python ints or None, got 1.5"),
    (lambda x: x[: ops.cast(ops.sum(x), "int32")], r"a traced tensor cannot be a slice bound"),
]


@pytest.mark.parametrize("fn, message", ERRORS, ids=[m[:30] for _, m in ERRORS])
def test_bad_indices_raise_trace_errors(fn, message):
    with pytest.raises(TraceError, match=message):
        compiler.trace(fn, Spec(X.shape, "float32"))


def test_indexing_a_0d_tensor_with_an_int_fails_like_numpy():
    with pytest.raises(TraceError, match="tensor is 0-dimensional, but 1 were indexed"):
        compiler.trace(lambda s: s[0], Spec((), "float32"))


def test_iterating_a_tensor_unrolls_its_rows():
    graph = compiler.trace(lambda x: ops.stack([row * 2.0 for row in x][::-1]), X[0])
    np.testing.assert_array_equal(compiler.evaluate(graph, X[0]), np.stack([r * 2 for r in X[0]][::-1]))
