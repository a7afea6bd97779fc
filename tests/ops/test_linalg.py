"""matmul and dot: shape rule, numpy semantics of the front end, errors and VJPs."""
import numpy as np
import pytest

import compiler
from compiler import ShapeError, Spec, TensorType, ops
from compiler.ops.registry import get_op, infer_type
from tests.gradcheck import check_grad

R = np.random.default_rng(0)


def run(fn, *args):
    return compiler.evaluate(compiler.trace(fn, *args), *args)


def normal(*shape):
    return R.normal(size=shape)


def t(shape, dtype="float32"):
    return TensorType(shape, dtype)


# ------------------------------------------------------------------ shape rule
@pytest.mark.parametrize("a, b, out", [
    ((3, 4), (4, 5), (3, 5)),
    ((2, 3, 4), (2, 4, 5), (2, 3, 5)),
    ((2, 3, 4), (4, 5), (2, 3, 5)),
    ((3, 4), (7, 4, 5), (7, 3, 5)),
    ((2, 1, 3, 4), (5, 4, 6), (2, 5, 3, 6)),
    ((1, 3, 4), (6, 1, 4, 2), (6, 1, 3, 2)),
    ((0, 4), (4, 5), (0, 5)),
    ((3, 0), (0, 5), (3, 5)),
])
def test_matmul_shape_rule(a, b, out):
    assert infer_type("matmul", [t(a), t(b)], {}) == t(out)


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
def test_matmul_dtypes(dtype):
    assert infer_type("matmul", [t((2, 3), dtype), t((3, 1), dtype)], {}) == t((2, 1), dtype)


@pytest.mark.parametrize("a, b, match", [
    (t((4,)), t((4, 5)), r"rank >= 2 .*f32\[4\] and f32\[4,5\]"),
    (t((3, 4)), t(()), "rank >= 2"),
    (t((3, 4)), t((4, 5), "float64"), r"operand dtypes differ \(float32, float64\)"),
    (t((3, 4), "bool"), t((4, 5), "bool"), "dtype bool not supported"),
    (t((3, 4)), t((5, 6)), r"contraction dims differ: f32\[3,4\] @ f32\[5,6\] contracts 4 with 5"),
    (t((2, 3, 4)), t((3, 4, 5)), r"batch dims \(2,\) and \(3,\) .* do not broadcast"),
])
def test_matmul_shape_errors(a, b, match):
    with pytest.raises(ShapeError, match=match):
        infer_type("matmul", [a, b], {})


def test_matmul_errors_name_the_op_and_line():
    with pytest.raises(ShapeError, match=r"matmul: shapes \(3, 4\) and \(5, 6\) do not align: 4 .* != 5"):
        compiler.trace(lambda a, b: a @ b, Spec((3, 4)), Spec((5, 6)))
    with pytest.raises(ShapeError, match=r"matmul: shapes \(4,\) and \(3,\) do not align"):
        compiler.trace(lambda a, b: a @ b, Spec((4,)), Spec((3,)))
    with pytest.raises(ShapeError, match=r"matmul at test_linalg.py:\d+: batch dims"):
        compiler.trace(lambda a, b: a @ b, Spec((2, 3, 4)), Spec((3, 4, 5)))
    with pytest.raises(ShapeError, match="matmul: operands need at least one dimension"):
        compiler.trace(lambda a, b: ops.matmul(a, b), Spec(()), Spec((3,)))
    with pytest.raises(ShapeError, match="matmul: bool operands are not supported"):
        compiler.trace(lambda a, b: a @ b, Spec((2, 2), "bool"), Spec((2, 2), "bool"))


def test_kind_and_rules():
    opdef = get_op("matmul")
    assert opdef.kind == "matmul" and opdef.vjp is not None and opdef.attrs == ()


# ---------------------------------------------------------- numpy semantics
SHAPES = [
    ((3, 4), (4, 5)),
    ((4,), (4, 5)),
    ((3, 4), (4,)),
    ((4,), (4,)),
    ((2, 3, 4), (4,)),
    ((4,), (2, 4, 5)),
    ((2, 3, 4), (4, 5)),
    ((3, 4), (2, 4, 5)),
    ((2, 1, 3, 4), (5, 4, 2)),
    ((1, 3, 4), (6, 1, 4, 2)),
    ((0, 4), (4, 2)),
    ((3, 0), (0, 2)),
]


@pytest.mark.parametrize("a_shape, b_shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matmul_matches_numpy(a_shape, b_shape, dtype):
    a, b = normal(*a_shape).astype(dtype), normal(*b_shape).astype(dtype)
    got = run(lambda x, y: x @ y, a, b)
    expected = a @ b
    assert got.shape == expected.shape and got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got, expected, rtol=1e-5 if dtype == "float32" else 1e-12, atol=1e-6)
    np.testing.assert_allclose(run(ops.matmul, a, b), expected, rtol=1e-5, atol=1e-6)


def test_vector_forms_record_one_matmul():
    graph = compiler.trace(lambda x, y: x @ y, Spec((4,)), Spec((4,)))
    matmuls = [node for _, node in graph.nodes() if node.op == "matmul"]
    assert len(matmuls) == 1 and matmuls[0].type == t((1, 1))
    assert graph.type(graph.outputs[0]) == t(())


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_int_matmul(dtype):
    a = np.arange(6, dtype=dtype).reshape(2, 3)
    b = np.arange(12, dtype=dtype).reshape(3, 4) - 5
    got = run(lambda x, y: x @ y, a, b)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, a @ b)


def test_matmul_promotes_mixed_operands():
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    graph = compiler.trace(lambda x, y: x @ y, a, Spec((3, 2), "float64"))
    assert graph.type(graph.outputs[0]) == t((2, 2), "float64")
    w = np.ones((3, 2))
    np.testing.assert_allclose(compiler.evaluate(graph, a, w), a @ w)
    # numpy arrays and nested lists on either side become constants
    x = normal(2, 3).astype(np.float32)
    np.testing.assert_allclose(run(lambda v: v @ np.ones((3, 2), np.float32), x), x @ np.ones((3, 2)), rtol=1e-6)
    np.testing.assert_allclose(run(lambda v: np.ones((4, 2), np.float32) @ v, x), np.ones((4, 2)) @ x, rtol=1e-6)
    np.testing.assert_allclose(run(lambda v: ops.matmul([1.0, 2.0], v), x), np.array([1.0, 2.0]) @ x, rtol=1e-6)


@pytest.mark.parametrize("a_shape, b_shape", [
    ((), (3,)), ((3,), ()), ((4,), (4,)), ((3, 4), (4,)), ((4,), (4, 2)), ((3, 4), (4, 2)),
    ((2, 3, 4), (4, 5)), ((2, 3, 4), (4,)), ((3, 4), (2, 4, 5)), ((4,), (2, 4, 5)), ((6, 3, 4), (2, 4, 5)),
], ids=str)
def test_dot_matches_numpy(a_shape, b_shape):
    a, b = normal(*a_shape), normal(*b_shape)
    got = run(ops.dot, a, b)
    expected = np.dot(a, b)
    assert got.shape == np.shape(expected)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_dot_errors():
    with pytest.raises(ShapeError, match=r"dot: shapes \(3, 4\) and \(2, 5, 6\) do not align: 4 != 5"):
        compiler.trace(ops.dot, Spec((3, 4)), Spec((2, 5, 6)))
    with pytest.raises(ShapeError, match="matmul: shapes"):
        compiler.trace(ops.dot, Spec((3, 4)), Spec((5,)))


# ------------------------------------------------------------------ VJPs
@pytest.mark.parametrize("a_shape, b_shape", [s for s in SHAPES if 0 not in s[0] + s[1]], ids=str)
def test_matmul_vjp_against_finite_differences(a_shape, b_shape):
    check_grad(lambda x, y: x @ y, [normal(*a_shape), normal(*b_shape)], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("a_shape, b_shape", [((3, 4), (2, 4, 5)), ((6, 3, 4), (2, 4, 5)), ((2, 3), (3,))], ids=str)
def test_dot_vjp_against_finite_differences(a_shape, b_shape):
    check_grad(ops.dot, [normal(*a_shape), normal(*b_shape)], rtol=1e-6, atol=1e-8)


def test_matmul_vjp_matches_handwritten_formula_with_broadcast_batch():
    a, b = normal(2, 1, 3, 4), normal(5, 4, 2)
    g = normal(2, 5, 3, 2)
    graph = compiler.trace(lambda x, y: x @ y, a, b)
    da, db = compiler.evaluate(compiler.vjp(graph, argnums=(0, 1)), a, b, g)
    np.testing.assert_allclose(da, (g @ np.swapaxes(b, -1, -2)).sum(axis=1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(db, (np.swapaxes(a, -1, -2) @ g).sum(axis=0), rtol=1e-12)


def test_shared_weight_gradient_is_one_matrix_product():
    """x (B, T, D) @ W (D, H): dW is a (D, H) product over the flattened batch, not (B, D, H) summed."""
    graph = compiler.trace(lambda p, x: ops.sum(ops.tanh(x @ p)), Spec((4, 3), "float64"), Spec((5, 6, 4), "float64"))
    backward = compiler.grad(graph)
    matmul_types = [node.type for _, node in backward.nodes() if node.op == "matmul"]
    assert TensorType((4, 3), "float64") in matmul_types
    assert all(typ.rank == 2 or typ.shape == (5, 6, 3) for typ in matmul_types), matmul_types
    check_grad(lambda w, x: ops.tanh(x @ w), [normal(4, 3), normal(5, 6, 4)], rtol=1e-6, atol=1e-8)


def test_matmul_is_differentiable_twice():
    a0, b0 = normal(2, 3, 4), normal(4, 2)

    def loss(a, b):
        return ops.sum(ops.tanh(a @ b) ** 2)

    grad_graph = compiler.grad(compiler.trace(loss, a0, b0), argnums=(0, 1))
    hvp_graph = compiler.vjp(grad_graph, argnums=0)
    va, vb = normal(*a0.shape), normal(*b0.shape)
    hvp = compiler.evaluate(hvp_graph, a0, b0, (va, vb))
    eps = 1e-6
    plus = compiler.evaluate(grad_graph, a0, b0 + eps * vb)
    minus = compiler.evaluate(grad_graph, a0, b0 - eps * vb)
    plus_a = compiler.evaluate(grad_graph, a0 + eps * va, b0)
    minus_a = compiler.evaluate(grad_graph, a0 - eps * va, b0)
    # d/da <grad, v> = H_aa va + H_ab vb; combine both directional differences
    numeric = (plus[0] - minus[0] + plus_a[0] - minus_a[0]) / (2 * eps)
    np.testing.assert_allclose(hvp, numeric, rtol=1e-5, atol=1e-7)
