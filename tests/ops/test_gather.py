"""segment_sum, one_hot and arange: against naive loops, JAX's edge cases, gradients."""
import numpy as np
import pytest

import compiler
from compiler import Spec, ops
from compiler.errors import ShapeError, TraceError
from compiler.ops import gather
from tests.gradcheck import check_grad
from tests.ops.samples import ALL_SAMPLES  # noqa: F401 - before samples_gather: avoids an import cycle


def _run(fn, *arrays):
    return compiler.evaluate(compiler.trace(fn, *arrays), *arrays)


def naive_segment_sum(data, ids, num_segments):
    out = np.zeros((num_segments,) + data.shape[ids.ndim:], data.dtype)
    for index in np.ndindex(*ids.shape):
        if 0 <= ids[index] < num_segments:  # JAX drops ids outside [0, num_segments)
            out[ids[index]] += data[index]
    return out


def naive_one_hot(labels, n):
    out = np.zeros(labels.shape + (n,))
    for index in np.ndindex(*labels.shape):
        if 0 <= labels[index] < n:
            out[index + (labels[index],)] = 1.0
    return out


# ------------------------------------------------------------- segment_sum
SEGMENT_CASES = [
    # (data shape, ids, num_segments)
    ((5, 3), [0, 3, 0, 1, 3], 4),  # segment 2 empty
    ((6, 2), [2, -1, 0, 3, 7, 2], 3),  # negative and too-large ids are dropped
    ((4,), [1, 1, 1, 1], 3),
    ((2, 3, 2), [[0, 2, 2], [5, 0, -2]], 3),  # ids label two leading axes
    ((3, 2), [0, 1, 2], 5),
    ((0, 2), [], 2),  # no data: all segments empty
]


@pytest.mark.parametrize("shape, ids, n", SEGMENT_CASES)
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_segment_sum_matches_loops(shape, ids, n, dtype):
    data = np.random.default_rng(0).normal(size=shape)
    ids = np.array(ids, dtype=dtype).reshape(shape[:max(np.ndim(ids), 1)])
    out = _run(lambda d, i: gather.segment_sum(d, i, n), data, ids)
    np.testing.assert_allclose(out, naive_segment_sum(data, ids, n), atol=1e-12)
    # the same ids as a constant (no mask is emitted when they are all in range)
    np.testing.assert_allclose(_run(lambda d: gather.segment_sum(d, ids, n), data), out, atol=1e-12)


@pytest.mark.parametrize("shape, ids, n", SEGMENT_CASES[:5])
def test_segment_sum_gradient(shape, ids, n):
    data = np.random.default_rng(1).normal(size=shape)
    ids = np.array(ids, np.int32)
    grads = check_grad(lambda d, i: gather.segment_sum(d, i, n), [data, ids])
    dropped = (ids < 0) | (ids >= n)
    assert not grads[0][dropped].any()  # dropped rows get no gradient


def test_message_passing_gradient():
    """A GNN layer: gather source nodes, transform, sum into destination nodes."""
    rng = np.random.default_rng(3)
    h, w = rng.normal(size=(5, 3)), rng.normal(size=(3, 2))
    src, dst = np.array([0, 1, 1, 4, 2, 3], np.int32), np.array([1, 0, 2, 2, 4, 9], np.int32)
    check_grad(lambda h, w, s, d: gather.segment_sum(ops.tanh(ops.take(h, s, axis=0) @ w), d, 5), [h, w, src, dst])


def test_segment_sum_dropped_rows_do_not_leak_nan():
    data = np.array([[1.0, 2.0], [np.nan, np.inf], [3.0, 4.0]])
    out = _run(lambda d, i: gather.segment_sum(d, i, 2), data, np.array([1, 2, 1], np.int32))
    assert out.tolist() == [[0.0, 0.0], [4.0, 6.0]]


def test_segment_sum_constant_ids_default_count_and_no_mask():
    data = np.arange(8.0).reshape(4, 2)
    graph = compiler.trace(lambda d: gather.segment_sum(d, [1, 1, 0, 3]), data)
    assert compiler.evaluate(graph, data).tolist() == [[4, 5], [2, 4], [0, 0], [6, 7]]
    assert "where" not in {node.op for _, node in graph.nodes()}


def test_segment_sum_int_and_bool_data():
    ints = np.array([[1, 2], [3, 4], [5, 6]], np.int32)
    out = _run(lambda d, i: gather.segment_sum(d, i, 2), ints, np.array([1, -1, 1], np.int32))
    assert out.dtype == np.int32 and out.tolist() == [[0, 0], [6, 8]]
    flags = np.array([True, False, True, True])
    assert _run(lambda d: gather.segment_sum(d, [0, 0, 1, 1], 2), flags).tolist() == [1, 2]


def test_segment_sum_zero_segments():
    out = _run(lambda d, i: gather.segment_sum(d, i, 0), np.ones((3, 2)), np.zeros(3, np.int32))
    assert out.shape == (0, 2)


@pytest.mark.parametrize("fn, message", [
    (lambda d, i: gather.segment_sum(d, i), "num_segments is required when segment_ids are traced"),
    (lambda d, i: gather.segment_sum(d, i, -1), "num_segments must be a non-negative int, got -1"),
    (lambda d, i: gather.segment_sum(d, i, 2.0), "num_segments must be a non-negative int"),
    (lambda d, i: gather.segment_sum(d, i[:2], 3), "segment_ids i32[2] must label the leading axes of data f64[3,2]"),
    (lambda d, i: gather.segment_sum(d, i.astype("float32"), 3), "segment_ids must be int32 or int64"),
    (lambda d, i: gather.segment_sum(d, [0.0, 1.0, 1.0], 3), "segment_ids must be integers"),
    (lambda d, i: gather.segment_sum(d, 0, 3), "must label the leading axes"),
])
def test_segment_sum_errors(fn, message):
    with pytest.raises(ShapeError) as info:
        compiler.trace(fn, Spec((3, 2), "float64"), Spec((3,), "int32"))
    assert message in str(info.value)


# ----------------------------------------------------------------- one_hot
def test_one_hot_matches_loops_and_jax_edge_cases():
    labels = np.array([[0, 3], [-1, 4], [2, 2]], np.int32)
    out = _run(lambda y: gather.one_hot(y, 4), labels)
    assert out.dtype == np.float32 and out.shape == (3, 2, 4)
    np.testing.assert_array_equal(out, naive_one_hot(labels, 4))  # -1 and 4 give all-zero rows
    axis0 = _run(lambda y: gather.one_hot(y, 4, axis=0), labels)
    np.testing.assert_array_equal(axis0, np.moveaxis(naive_one_hot(labels, 4), -1, 0))
    axis1 = _run(lambda y: gather.one_hot(y, 4, axis=-2), labels)
    np.testing.assert_array_equal(axis1, np.moveaxis(naive_one_hot(labels, 4), -1, 1))
    wide = np.array([1, 5], np.int64)
    np.testing.assert_array_equal(_run(lambda y: gather.one_hot(y, 6, dtype="int32"), wide),
                                  naive_one_hot(wide, 6).astype(np.int32))
    assert _run(lambda y: gather.one_hot(y, 2, dtype=bool), wide).tolist() == [[False, True], [False, False]]
    assert _run(lambda y: gather.one_hot(y, 0), wide).shape == (2, 0)


def test_one_hot_in_a_differentiable_loss():
    logits, labels = np.random.default_rng(2).normal(size=(3, 4)), np.array([0, 3, 9], np.int32)
    grads = check_grad(lambda x, y: -ops.sum(gather.one_hot(y, 4) * ops.log_softmax(x)), [logits, labels],
                       scalarize=False)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(grads[0], p * naive_one_hot(labels, 4).sum(1, keepdims=True) - naive_one_hot(labels, 4))


@pytest.mark.parametrize("fn, message", [
    (lambda y: gather.one_hot(y.astype("float32"), 3), "one_hot: labels must be an integer tensor"),
    (lambda y: gather.one_hot(y, -1), "num_classes must be a non-negative int, got -1"),
    (lambda y: gather.one_hot(y, 3, axis=2), "axis 2 is out of bounds for a result of rank 2"),
])
def test_one_hot_errors(fn, message):
    with pytest.raises(ShapeError) as info:
        compiler.trace(fn, Spec((3,), "int32"))
    assert message in str(info.value)


# ------------------------------------------------------------------ arange
def test_arange():
    x = np.zeros(1)
    assert _run(lambda x: gather.arange(4) + 0 * x[0].astype("int32"), x).tolist() == [0, 1, 2, 3]
    graph = compiler.trace(lambda x: gather.arange(2, 8, 3), x)
    assert graph.node(graph.outputs[0]).type == compiler.TensorType((2,), "int32")
    assert compiler.evaluate(graph, x).tolist() == [2, 5]
    floats = _run(lambda x: gather.arange(0.5, 2.0, 0.5), x)
    assert floats.dtype == np.float32 and floats.tolist() == [0.5, 1.0, 1.5]
    assert _run(lambda x: gather.arange(3, dtype="float64"), x).dtype == np.float64
    assert _run(lambda x: gather.arange(0), x).shape == (0,)
    with pytest.raises(ShapeError, match="step cannot be zero"):
        compiler.trace(lambda x: gather.arange(0, 3, 0), x)
    with pytest.raises(TraceError, match="arange: bounds must be Python numbers"):
        compiler.trace(lambda x: gather.arange(x[0]), x)
