"""Reductions and the softmax family: shape rules, references vs numpy, errors, numerics, VJPs."""
import numpy as np
import pytest

import compiler
from compiler import ShapeError, Spec, TensorType, ops
from compiler.ops.registry import get_op, infer_type
from tests.gradcheck import check_grad


def run(fn, *args):
    return compiler.evaluate(compiler.trace(fn, *args), *args)


def ops_of(graph):
    return [node for _, node in graph.nodes() if node.op != "input"]


def f32(*shape):
    return TensorType(shape, "float32")


X = np.random.default_rng(0).normal(size=(2, 3, 4))


# ------------------------------------------------------------------ shape rules
@pytest.mark.parametrize("op", ["sum", "mean", "max", "min", "logsumexp"])
@pytest.mark.parametrize("axes, keepdims, expected", [
    ((0, 1, 2), False, ()),
    ((0, 1, 2), True, (1, 1, 1)),
    ((1,), False, (2, 4)),
    ((1,), True, (2, 1, 4)),
    ((0, 2), False, (3,)),
    ((), False, (2, 3, 4)),
])
def test_reduction_shape_rule(op, axes, keepdims, expected):
    assert infer_type(op, [f32(2, 3, 4)], {"axes": axes, "keepdims": keepdims}) == f32(*expected)


def test_reduction_of_0d():
    assert infer_type("sum", [f32()], {"axes": (), "keepdims": False}) == f32()
    assert infer_type("max", [f32()], {"axes": (), "keepdims": True}) == f32()


@pytest.mark.parametrize("op, dtype", [("sum", "int32"), ("sum", "int64"), ("max", "int32"), ("min", "int64")])
def test_int_reductions_keep_dtype(op, dtype):
    assert infer_type(op, [TensorType((3, 2), dtype)], {"axes": (0,), "keepdims": False}) == TensorType((2,), dtype)


@pytest.mark.parametrize("op, attrs, match", [
    ("mean", None, "dtype int32 not supported"),
    ("logsumexp", None, "dtype int32 not supported"),
    ("softmax", {"axis": 0}, "dtype int32 not supported"),
    ("log_softmax", {"axis": 0}, "dtype int32 not supported"),
])
def test_float_only_ops_reject_ints(op, attrs, match):
    attrs = attrs or {"axes": (0,), "keepdims": False}
    with pytest.raises(ShapeError, match=match):
        infer_type(op, [TensorType((3,), "int32")], attrs)


@pytest.mark.parametrize("op", ["sum", "max", "min"])
def test_bool_reductions_are_rejected_by_the_ir(op):
    with pytest.raises(ShapeError, match="dtype bool not supported"):
        infer_type(op, [TensorType((3,), "bool")], {"axes": (0,), "keepdims": False})


@pytest.mark.parametrize("attrs, match", [
    ({"axes": [0], "keepdims": False}, "axes must be a tuple"),
    ({"axes": 0, "keepdims": False}, "axes must be a tuple"),
    ({"axes": (3,), "keepdims": False}, "axis 3 is out of range for rank 3"),
    ({"axes": (-1,), "keepdims": False}, "axis -1 is out of range.*non-negative"),
    ({"axes": (2, 0), "keepdims": False}, r"sorted and unique, got \(2, 0\)"),
    ({"axes": (1, 1), "keepdims": False}, "sorted and unique"),
    ({"axes": (0.5,), "keepdims": False}, "each axis must be an int"),
    ({"axes": (True,), "keepdims": False}, "each axis must be an int"),
    ({"axes": (0,), "keepdims": 1}, "keepdims must be a bool"),
    ({"axes": (0,)}, "missing attribute.*keepdims"),
    ({"axes": (0,), "keepdims": False, "axis": 0}, "unknown attribute.*axis"),
])
def test_reduction_attr_errors(attrs, match):
    with pytest.raises(ShapeError, match=match):
        infer_type("sum", [f32(2, 3, 4)], attrs)


@pytest.mark.parametrize("op", ["max", "min"])
def test_max_min_of_zero_size_axis_is_a_shape_error(op):
    with pytest.raises(ShapeError, match=r"cannot reduce zero-size axis 1 of shape \(3, 0\)"):
        infer_type(op, [f32(3, 0)], {"axes": (1,), "keepdims": False})
    # reducing a non-empty axis of an empty tensor is fine (numpy agrees)
    assert infer_type(op, [f32(0, 3)], {"axes": (1,), "keepdims": False}) == f32(0)
    with pytest.raises(ShapeError, match=f"{op} at .*zero-size axis"):
        compiler.trace(lambda x: getattr(ops, op)(x), Spec((3, 0)))


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_shape_rule(op):
    assert infer_type(op, [f32(2, 3)], {"axis": 1}) == f32(2, 3)
    assert infer_type(op, [TensorType((4,), "float64")], {"axis": 0}) == TensorType((4,), "float64")
    with pytest.raises(ShapeError, match="axis 2 is out of range for rank 2"):
        infer_type(op, [f32(2, 3)], {"axis": 2})
    with pytest.raises(ShapeError, match="axis -1 is out of range"):
        infer_type(op, [f32(2, 3)], {"axis": -1})
    with pytest.raises(ShapeError, match="axis must be an int"):
        infer_type(op, [f32(2, 3)], {"axis": (1,)})
    with pytest.raises(ShapeError, match="axis 0 is out of range for rank 0"):
        infer_type(op, [f32()], {"axis": 0})


def test_kinds():
    for name in ["sum", "mean", "max", "min", "logsumexp", "softmax", "log_softmax"]:
        assert get_op(name).kind == "reduction"
        assert get_op(name).vjp is not None


# ---------------------------------------------------------- front end: attrs
@pytest.mark.parametrize("axis, axes", [
    (None, (0, 1, 2)), (0, (0,)), (-1, (2,)), ((-1, 0), (0, 2)), ([2, 1], (1, 2)), (np.int64(1), (1,)), ((), ()),
])
def test_front_end_normalizes_axes(axis, axes):
    graph = compiler.trace(lambda x: ops.sum(x, axis=axis), Spec((2, 3, 4)))
    (node,) = ops_of(graph)
    assert node.attrs == {"axes": axes, "keepdims": False}


@pytest.mark.parametrize("fn, match", [
    (lambda x: ops.sum(x, axis=3), "sum: axis 3 is out of bounds for a tensor of rank 3"),
    (lambda x: ops.mean(x, axis=-4), "mean: axis -4 is out of bounds"),
    (lambda x: ops.max(x, axis=(0, -3)), "max: repeated axis"),
    (lambda x: ops.min(x, axis=1.0), "min: axis must be an int, got 1.0"),
    (lambda x: ops.sum(x, axis=True), "sum: axis must be an int"),
    (lambda x: ops.logsumexp(x, axis=(5,)), "logsumexp: axis 5 is out of bounds"),
    (lambda x: ops.softmax(x, axis=3), "softmax: axis 3 is out of bounds"),
    (lambda x: ops.log_softmax(x, axis=(0, 1)), r"log_softmax: axis must be an int, got \(0, 1\)"),
    (lambda x: ops.softmax(ops.sum(x), axis=-1), "softmax: axis -1 is out of bounds for a tensor of rank 0"),
])
def test_front_end_axis_errors(fn, match):
    with pytest.raises(ShapeError, match=match):
        compiler.trace(fn, Spec((2, 3, 4)))


def test_sum_of_0d_and_axis_on_0d():
    assert run(lambda x: ops.sum(x), np.float64(2.5)) == 2.5
    assert run(lambda x: ops.max(x, axis=None, keepdims=True), np.float64(2.5)) == 2.5
    with pytest.raises(ShapeError, match="axis 0 is out of bounds for a tensor of rank 0"):
        compiler.trace(lambda x: ops.sum(x, axis=0), Spec(()))


def test_tensor_methods_and_aliases():
    graph = compiler.trace(lambda x: (x.sum(0), x.mean(axis=1), x.max(-1, keepdims=True), x.min(),
                                      ops.amax(x, 0), ops.amin(x, 1)), X)
    got = compiler.evaluate(graph, X)
    expected = (X.sum(0), X.mean(axis=1), X.max(-1, keepdims=True), X.min(), X.max(0), X.min(1))
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-12)


# ---------------------------------------------------------- reference vs numpy
AXES = [None, 0, 1, -1, (0, 2), (-1, -2), ()]


def _np_logsumexp(x, axis, keepdims):
    m = np.max(x, axis=axis, keepdims=True)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis if axis is not None else tuple(range(x.ndim)))


@pytest.mark.parametrize("name, reference", [
    ("sum", np.sum), ("mean", np.mean), ("max", np.max), ("min", np.min), ("logsumexp", _np_logsumexp),
])
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reductions_match_numpy(name, reference, axis, keepdims, dtype):
    x = X.astype(dtype)
    got = run(lambda t: getattr(ops, name)(t, axis=axis, keepdims=keepdims), x)
    expected = reference(x, axis=axis, keepdims=keepdims)
    assert got.dtype == np.dtype(dtype) and got.shape == np.shape(expected)
    np.testing.assert_allclose(got, expected, rtol=1e-6 if dtype == "float32" else 1e-12)


@pytest.mark.parametrize("name", ["sum", "max", "min"])
@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_int_reductions_match_numpy(name, dtype):
    x = np.array([[3, -1, 4], [1, -5, 9]], dtype=dtype)
    for axis in [None, 0, 1]:
        got = run(lambda t: getattr(ops, name)(t, axis=axis), x)
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, getattr(np, name)(x, axis=axis))


def test_int_mean_is_float32_and_bool_reductions():
    x = np.array([[3, -1, 4], [1, -5, 8]], dtype=np.int32)
    got = run(lambda t: ops.mean(t, axis=1), x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [2.0, 4.0 / 3])
    b = np.array([[True, False, True], [False, False, False]])
    count = run(lambda t: ops.sum(t, axis=1), b)
    assert count.dtype == np.int32 and count.tolist() == [2, 0]
    anything = run(lambda t: ops.max(t, axis=1), b)
    assert anything.dtype == np.bool_ and anything.tolist() == [True, False]
    everything = run(lambda t: ops.min(t, axis=0), b)
    assert everything.tolist() == [False, False, False]
    assert run(lambda t: ops.max(np.array([False, True])) + t, np.int32(0)) == 1  # constants: bool -> any()
    softmax_of_ints = run(lambda t: ops.softmax(t), x)
    assert softmax_of_ints.dtype == np.float32


def test_reductions_of_python_values():
    graph = compiler.trace(lambda x: x * ops.sum([1.0, 2.0, 3.0]), Spec(()))
    assert compiler.evaluate(graph, np.float32(2)) == 12.0


def test_zero_size_reductions():
    empty = np.zeros((3, 0), dtype=np.float32)
    np.testing.assert_array_equal(run(lambda x: ops.sum(x, axis=1), empty), np.zeros(3))
    assert np.isnan(run(lambda x: ops.mean(x, axis=1), empty)).all()
    np.testing.assert_array_equal(run(lambda x: ops.logsumexp(x, axis=1), empty), np.full(3, -np.inf))
    assert run(lambda x: ops.softmax(x, axis=1), empty).shape == (3, 0)
    assert run(lambda x: ops.max(x, axis=0), empty).shape == (0,)


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_family_matches_numpy(axis, dtype):
    x = X[0].astype(dtype)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    expected = e / e.sum(axis=axis, keepdims=True)
    softmax = run(lambda t: ops.softmax(t, axis=axis), x)
    log_softmax = run(lambda t: ops.log_softmax(t, axis=axis), x)
    assert softmax.dtype == log_softmax.dtype == np.dtype(dtype)
    tol = 1e-6 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(softmax, expected, rtol=tol)
    np.testing.assert_allclose(log_softmax, np.log(expected), rtol=tol, atol=tol)


# ------------------------------------------------------------------ numerics
BIG = np.array([[1e4, -1e4, 0.0], [1e4, 1e4 - 1, -1e4], [-1e4, -1e4, -1e4 + 2]], dtype=np.float32)


def test_stable_at_plus_minus_1e4_in_float32():
    lse = run(lambda x: ops.logsumexp(x, axis=1), BIG)
    np.testing.assert_allclose(lse, [1e4, 1e4 + np.log1p(np.exp(-1.0)), -1e4 + 2 + np.log1p(2 * np.exp(-2.0))],
                               rtol=1e-6)
    softmax = run(lambda x: ops.softmax(x, axis=1), BIG)
    log_softmax = run(lambda x: ops.log_softmax(x, axis=1), BIG)
    assert np.isfinite(softmax).all() and np.isfinite(log_softmax).all()
    np.testing.assert_allclose(softmax.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(softmax[0], [1.0, 0.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(log_softmax[0], [0.0, -2e4, -1e4], rtol=1e-6)
    np.testing.assert_allclose(log_softmax[1, :2], [-np.log1p(np.exp(-1.0)), -1 - np.log1p(np.exp(-1.0))], rtol=1e-5)
    assert run(lambda x: ops.logsumexp(x), BIG) == pytest.approx(1e4 + np.log(2 + np.exp(-1.0)), rel=1e-6)


def test_minus_inf_handling():
    x = np.array([[-np.inf, -np.inf, -np.inf], [0.0, -np.inf, np.log(3.0)]], dtype=np.float32)
    lse = run(lambda t: ops.logsumexp(t, axis=1), x)
    assert lse[0] == -np.inf  # not nan
    assert lse[1] == pytest.approx(np.log(4.0))
    softmax = run(lambda t: ops.softmax(t, axis=1), x)
    np.testing.assert_allclose(softmax[1], [0.25, 0.0, 0.75], rtol=1e-6)  # masked entries get probability 0
    log_softmax = run(lambda t: ops.log_softmax(t, axis=1), x)
    assert log_softmax[1, 1] == -np.inf
    np.testing.assert_allclose(log_softmax[1, [0, 2]], np.log([0.25, 0.75]), rtol=1e-6)
    assert run(lambda t: ops.logsumexp(t), np.array([np.inf, 0.0])) == np.inf


# ------------------------------------------------------------------ VJPs
def grad_of(fn, x):
    graph = compiler.trace(fn, x)
    return compiler.evaluate(compiler.grad(graph), x)


@pytest.mark.parametrize("op", ["max", "min"])
def test_ties_split_the_gradient_evenly(op):
    x = np.array([[1.0, 3.0, 3.0, -1.0], [2.0, 2.0, 2.0, 2.0], [-1.0, 0.0, -1.0, 5.0]])
    sign = 1.0 if op == "max" else -1.0
    g = grad_of(lambda t: ops.sum(getattr(ops, op)(t * sign, axis=1) * np.array([1.0, 2.0, 3.0])), x)
    if op == "max":
        expected = [[0, 0.5, 0.5, 0], [0.5, 0.5, 0.5, 0.5], [0, 0, 0, 3]]
    else:  # min of -x: ties at the original maxima, cotangent * -1 through the scaling
        expected = [[0, -0.5, -0.5, 0], [-0.5, -0.5, -0.5, -0.5], [0, 0, 0, -3]]
    np.testing.assert_allclose(g, expected)
    g_all = grad_of(lambda t: getattr(ops, op)(t * sign), np.array([[1.0, 3.0], [3.0, 3.0]]))
    np.testing.assert_allclose(g_all, np.array([[0, 1.0], [1.0, 1.0]]) / 3 * sign)


def test_min_ties_split_evenly_direct():
    x = np.array([[1.0, 1.0, 3.0]])
    np.testing.assert_allclose(grad_of(lambda t: ops.min(t), x), [[0.5, 0.5, 0.0]])
    np.testing.assert_allclose(grad_of(lambda t: ops.sum(ops.min(t, axis=0, keepdims=True)), x), [[1, 1, 1]])


def test_sum_and_mean_gradients_are_exact():
    x = X.copy()
    np.testing.assert_array_equal(grad_of(lambda t: ops.sum(ops.sum(t, axis=(0, 2))), x), np.ones_like(x))
    np.testing.assert_allclose(grad_of(lambda t: ops.mean(t), x), np.full_like(x, 1 / 24))
    np.testing.assert_allclose(grad_of(lambda t: ops.sum(ops.mean(t, axis=1) * 3.0), x), np.full_like(x, 1.0))


def test_logsumexp_gradient_is_softmax():
    x = X[0]
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(grad_of(lambda t: ops.sum(ops.logsumexp(t, axis=1)), x),
                               e / e.sum(axis=1, keepdims=True), rtol=1e-12)


def test_softmax_gradients_finite_at_1e4_in_float32():
    weights = np.arange(9, dtype=np.float32).reshape(3, 3)
    for op in ["softmax", "log_softmax"]:
        g = grad_of(lambda t: ops.sum(getattr(ops, op)(t, axis=1) * weights), BIG)
        assert g.dtype == np.float32 and np.isfinite(g).all(), op
    g = grad_of(lambda t: ops.sum(ops.logsumexp(t, axis=1)), BIG)
    assert np.isfinite(g).all()


@pytest.mark.parametrize("fn", [
    lambda t: ops.sum(t, axis=1),
    lambda t: ops.sum(t, axis=(0, 2), keepdims=True),
    lambda t: ops.sum(t, axis=-1),
    lambda t: ops.mean(t, axis=(1, 2)),
    lambda t: ops.mean(t, axis=1, keepdims=True),
    lambda t: ops.max(t, axis=1),
    lambda t: ops.min(t, axis=(0, 2), keepdims=True),
    lambda t: ops.logsumexp(t, axis=(0, 1)),
    lambda t: ops.logsumexp(t, axis=2, keepdims=True),
    lambda t: ops.softmax(t, axis=0),
    lambda t: ops.softmax(t, axis=1),
    lambda t: ops.log_softmax(t, axis=2),
    lambda t: ops.log_softmax(t, axis=1) * ops.softmax(t, axis=1),
], ids=lambda f: "")
def test_vjp_rules_against_finite_differences(fn):
    check_grad(fn, [X], rtol=1e-6, atol=1e-8)


def test_backward_graphs_are_differentiable_again():
    """Hessian-vector products (vjp of the gradient graph) against differences of gradients."""
    w = np.random.default_rng(1).normal(size=(3, 4))

    def loss(t):
        return ops.sum(ops.softmax(t, axis=1) * w) + ops.logsumexp(t) + ops.sum(ops.log_softmax(t, axis=0) ** 2) \
            + ops.mean(ops.max(t, axis=1) ** 2) + ops.sum(ops.min(t, axis=0) ** 3)

    x = X[1]
    grad_graph = compiler.grad(compiler.trace(loss, x))
    hvp_graph = compiler.vjp(grad_graph)
    v = np.random.default_rng(2).normal(size=x.shape)
    hvp = compiler.evaluate(hvp_graph, x, v)
    eps = 1e-6
    numeric = (compiler.evaluate(grad_graph, x + eps * v) - compiler.evaluate(grad_graph, x - eps * v)) / (2 * eps)
    np.testing.assert_allclose(hvp, numeric, rtol=1e-5, atol=1e-7)
