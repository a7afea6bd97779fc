"""Elementwise ops: shape/dtype rules, references vs numpy, broadcasting, front-end dtype
promotion and the errors traced code gets for data-dependent use of a tensor."""
import numpy as np
import pytest

import compiler
from compiler import PullbackError, ShapeError, Spec, TensorType, TraceError, ops
from compiler.ops.elementwise import broadcast_shapes
from compiler.ops.registry import all_ops, get_op, infer_type

R = np.random.default_rng(0)


def run(fn, *args):
    return compiler.evaluate(compiler.trace(fn, *args), *args)


def out_type(fn, *specs):
    graph = compiler.trace(fn, *specs)
    return graph.type(graph.outputs[0])


def t(shape, dtype="float32"):
    return TensorType(shape, dtype)


def positive(*shape):
    return R.uniform(0.2, 2.0, size=shape)


def anywhere(*shape):
    return R.normal(size=shape)


# ------------------------------------------------------------------ unary ops
UNARY = [  # op, user function, numpy function, domain, allows ints in the IR
    ("neg", ops.negative, np.negative, anywhere, True),
    ("exp", ops.exp, np.exp, anywhere, False),
    ("log", ops.log, np.log, positive, False),
    ("log1p", ops.log1p, np.log1p, positive, False),
    ("sqrt", ops.sqrt, np.sqrt, positive, False),
    ("tanh", ops.tanh, np.tanh, anywhere, False),
    ("sigmoid", ops.sigmoid, lambda x: 1 / (1 + np.exp(-x)), anywhere, False),
    ("relu", ops.relu, lambda x: np.maximum(x, 0), anywhere, True),
    ("abs", ops.abs, np.abs, anywhere, True),
    ("sign", ops.sign, np.sign, anywhere, True),
    ("sin", ops.sin, np.sin, anywhere, False),
    ("cos", ops.cos, np.cos, anywhere, False),
    ("square", ops.square, np.square, anywhere, True),
]


def test_unary_table_covers_every_unary_op():
    registered = {n for n, o in all_ops().items() if o.kind == "elementwise" and o.arity == 1}
    assert registered - {"logical_not", "cast", "stop_gradient"} == {row[0] for row in UNARY}


@pytest.mark.parametrize("name, fn, reference, domain, ints", UNARY, ids=[row[0] for row in UNARY])
@pytest.mark.parametrize("shape", [(), (3,), (2, 3), (0, 2)], ids=str)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_unary_matches_numpy(name, fn, reference, domain, ints, shape, dtype):
    x = domain(*shape).astype(dtype)
    graph = compiler.trace(fn, x)
    assert [node.op for _, node in graph.nodes() if node.op != "input"] == [name]
    got = compiler.evaluate(graph, x)
    assert got.shape == shape and got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got, reference(x), rtol=1e-6 if dtype == "float32" else 1e-14)


@pytest.mark.parametrize("name, fn, reference, domain, ints", UNARY, ids=[row[0] for row in UNARY])
def test_unary_int_rules(name, fn, reference, domain, ints):
    x = np.array([[-3, 0, 2], [1, 4, 5]], dtype=np.int32)
    if ints:  # the op keeps the int dtype
        assert infer_type(name, [t((2, 3), "int32")], {}) == t((2, 3), "int32")
        got = run(fn, x)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, reference(x))
    else:  # the IR rejects ints; the front end casts them to float32 first
        with pytest.raises(ShapeError, match="dtype int32 not supported"):
            infer_type(name, [t((2, 3), "int32")], {})
        x = np.abs(x) + 1
        got = run(fn, x)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, reference(x.astype(np.float32)), rtol=1e-6)


@pytest.mark.parametrize("name", [row[0] for row in UNARY])
def test_unary_rejects_bool(name):
    with pytest.raises(ShapeError, match="dtype bool not supported"):
        infer_type(name, [t((2,), "bool")], {})


def test_sigmoid_is_stable_on_both_tails():
    x = np.array([-1e4, -30.0, 0.0, 100.0, 1e4], dtype=np.float32)
    with np.errstate(all="raise"):
        got = run(ops.sigmoid, x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [0.0, np.exp(-30.0), 0.5, 1.0, 1.0], rtol=1e-6, atol=0)


# ------------------------------------------------------------------ binary ops
BINARY = [  # op, user function, numpy function, allows ints
    ("add", ops.add, np.add, True),
    ("sub", ops.subtract, np.subtract, True),
    ("mul", ops.multiply, np.multiply, True),
    ("div", ops.divide, np.divide, False),
    ("pow", ops.power, np.power, False),
    ("maximum", ops.maximum, np.maximum, True),
    ("minimum", ops.minimum, np.minimum, True),
]
COMPARISONS = [
    ("eq", ops.equal, np.equal), ("ne", ops.not_equal, np.not_equal), ("lt", ops.less, np.less),
    ("le", ops.less_equal, np.less_equal), ("gt", ops.greater, np.greater), ("ge", ops.greater_equal, np.greater_equal),
]
BROADCASTS = [  # every flavour of numpy broadcasting
    ((2, 3), (2, 3)),
    ((), (2, 3)),
    ((2, 3), ()),
    ((2, 3), (3,)),
    ((3, 1), (1, 4)),
    ((2, 1, 4), (3, 1)),
    ((1,), (2, 3)),
    ((0, 3), (3,)),
    ((0, 3), (1, 1)),
    ((), ()),
]


@pytest.mark.parametrize("name, fn, reference, ints", BINARY, ids=[row[0] for row in BINARY])
@pytest.mark.parametrize("x_shape, y_shape", BROADCASTS, ids=str)
def test_binary_matches_numpy_with_broadcasting(name, fn, reference, ints, x_shape, y_shape):
    x, y = positive(*x_shape), anywhere(*y_shape)
    expected = reference(x, y)
    assert infer_type(name, [t(x_shape), t(y_shape)], {}) == t(np.shape(expected))
    graph = compiler.trace(fn, x, y)
    assert name in [node.op for _, node in graph.nodes()]
    got = compiler.evaluate(graph, x, y)
    assert got.shape == np.shape(expected) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-14)


@pytest.mark.parametrize("name, fn, reference, ints", BINARY, ids=[row[0] for row in BINARY])
def test_binary_int_rules(name, fn, reference, ints):
    x = np.array([[5, -3, 8]], dtype=np.int64)
    y = np.array([[2], [3]], dtype=np.int64)
    if ints:
        assert infer_type(name, [t((1, 3), "int64"), t((2, 1), "int64")], {}) == t((2, 3), "int64")
        got = run(fn, x, y)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, reference(x, y))
    else:  # div and pow are float-only in the IR; the front end makes int operands float32
        with pytest.raises(ShapeError, match="dtype int64 not supported"):
            infer_type(name, [t((1, 3), "int64"), t((2, 1), "int64")], {})
        got = run(fn, x, y)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, reference(x.astype(np.float32), y.astype(np.float32)), rtol=1e-6)


@pytest.mark.parametrize("name", [row[0] for row in BINARY] + [row[0] for row in COMPARISONS])
def test_binary_shape_errors(name):
    with pytest.raises(ShapeError, match=r"shapes \(3,\) and \(4,\) do not broadcast"):
        infer_type(name, [t((3,)), t((4,))], {})
    with pytest.raises(ShapeError, match=r"shapes \(2, 3\) and \(3, 3\) do not broadcast"):
        infer_type(name, [t((2, 3)), t((3, 3))], {})
    with pytest.raises(ShapeError, match=r"operand dtypes differ \(float32, float64\); cast first"):
        infer_type(name, [t((3,)), t((3,), "float64")], {})
    with pytest.raises(ShapeError, match=r"takes 2 operand\(s\), got 1"):
        infer_type(name, [t((3,))], {})


def test_front_end_shape_error_names_op_and_line():
    with pytest.raises(ShapeError, match=r"^add at test_elementwise.py:\d+: shapes \(3,\) and \(4,\) do not broadcast"):
        compiler.trace(lambda x, y: x + y, Spec((3,)), Spec((4,)))
    with pytest.raises(ShapeError, match=r"^mul at test_elementwise.py:\d+: shapes \(2, 3\) and \(2,\)"):
        compiler.trace(lambda x: x * np.ones(2, np.float32), Spec((2, 3)))


@pytest.mark.parametrize("shapes, expected", [
    ([(), ()], ()), ([(3,), ()], (3,)), ([(2, 1), (1, 3), (3,)], (2, 3)), ([(0,), (1,)], (0,)),
    ([(5, 1, 2), (4, 1)], (5, 4, 2)), ([], ()),
])
def test_broadcast_shapes(shapes, expected):
    assert broadcast_shapes(*shapes) == expected == np.broadcast_shapes(*shapes)


def test_broadcast_shapes_error():
    with pytest.raises(ShapeError, match=r"shapes \(2,\) and \(0,\) do not broadcast"):
        broadcast_shapes((2,), (0,))


# -------------------------------------------------------- comparisons, logic
@pytest.mark.parametrize("name, fn, reference", COMPARISONS, ids=[row[0] for row in COMPARISONS])
@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", "bool"])
def test_comparisons_give_bool(name, fn, reference, dtype):
    x = np.array([[0, 1, 2], [2, 1, 0]]).astype(dtype)
    y = np.array([1, 1, 0]).astype(dtype)
    assert infer_type(name, [t((2, 3), dtype), t((3,), dtype)], {}) == t((2, 3), "bool")
    got = run(fn, x, y)
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, reference(x, y))
    assert get_op(name).has_gradient is False


def test_comparison_operators_and_mixed_dtypes():
    x = np.array([0.5, 1.0, 2.0], dtype=np.float32)
    i = np.array([1, 1, 1], dtype=np.int32)
    got = run(lambda a, b: (a < b, a <= b, a > b, a >= b, a == b, a != b, b < 1.5), x, i)
    expected = (x < i, x <= i, x > i, x >= i, x == i, x != i, i < 1.5)
    for g, e in zip(got, expected):
        assert g.dtype == np.bool_
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("name, fn, reference", [
    ("logical_and", ops.logical_and, np.logical_and), ("logical_or", ops.logical_or, np.logical_or),
])
def test_logical_binary(name, fn, reference):
    a = np.array([[True, False], [True, True]])
    b = np.array([True, False])
    np.testing.assert_array_equal(run(fn, a, b), reference(a, b))
    with pytest.raises(ShapeError, match="dtype float32 not supported"):
        infer_type(name, [t((2,)), t((2,))], {})
    with pytest.raises(ShapeError, match=f"{name} at .*dtype float32 not supported"):
        compiler.trace(fn, Spec((2,)), Spec((2,)))


def test_logical_not():
    a = np.array([True, False])
    np.testing.assert_array_equal(run(ops.logical_not, a), [False, True])
    with pytest.raises(ShapeError, match="dtype int32 not supported"):
        infer_type("logical_not", [t((2,), "int32")], {})


# ------------------------------------------------------------------ where
def test_where_matches_numpy_with_three_way_broadcasting():
    c = np.array([[True], [False]])
    a, b = anywhere(3), anywhere(2, 1)
    assert infer_type("where", [t((2, 1), "bool"), t((3,)), t((2, 1))], {}) == t((2, 3))
    np.testing.assert_array_equal(run(ops.where, c, a, b), np.where(c, a, b))


def test_where_with_literals_and_arrays():
    x = anywhere(4)
    np.testing.assert_array_equal(run(lambda v: ops.where(v > 0, v, 0.0), x), np.where(x > 0, x, 0))
    got = run(lambda v: ops.where(np.array([True, False, True, False]), 1.0, v), x)
    np.testing.assert_array_equal(got, np.where([True, False, True, False], 1.0, x))
    assert out_type(lambda v: ops.where(v > 0, v, 0), Spec((4,), "float32")).dtype == "float32"
    assert out_type(lambda v: ops.where(v > 0, 1, 2), Spec((4,), "float32")) == t((4,), "int32")


def test_where_requires_a_bool_condition():
    with pytest.raises(ShapeError, match="where: condition must be bool, got float32"):
        compiler.trace(lambda c, x: ops.where(c, x, 0.0), Spec((3,)), Spec((3,)))
    with pytest.raises(ShapeError, match="where: condition must be bool, got int32"):
        compiler.trace(lambda x: ops.where(1, x, 0.0), Spec((3,)))
    with pytest.raises(ShapeError, match="condition must be bool, got float32"):
        infer_type("where", [t((3,)), t((3,)), t((3,))], {})
    with pytest.raises(ShapeError, match=r"operand dtypes differ \(float32, int32\)"):
        infer_type("where", [t((3,), "bool"), t((3,)), t((3,), "int32")], {})
    with pytest.raises(ShapeError, match="do not broadcast"):
        infer_type("where", [t((2,), "bool"), t((3,)), t((3,))], {})


# ------------------------------------------------------- cast, stop_gradient
@pytest.mark.parametrize("source", ["float32", "float64", "int32", "int64", "bool"])
@pytest.mark.parametrize("target", ["float32", "float64", "int32", "int64", "bool"])
def test_cast_matches_numpy_astype(source, target):
    x = np.array([-2.7, 0.0, 1.5, 3.0]).astype(source)
    got = run(lambda v: ops.cast(v, target), x)
    assert got.dtype == np.dtype(target)
    np.testing.assert_array_equal(got, x.astype(target))
    assert infer_type("cast", [t((4,), source)], {"dtype": target}) == t((4,), target)


def test_cast_spellings_and_no_op():
    for spelling in ["f64", "float64", np.float64, np.dtype("float64")]:
        assert out_type(lambda v: ops.cast(v, spelling), Spec((2,))).dtype == "float64"
    assert out_type(lambda v: v.astype("i32"), Spec((2,))).dtype == "int32"
    graph = compiler.trace(lambda v: ops.cast(v, "float32"), Spec((2,)))
    assert [node.op for _, node in graph.nodes()] == ["input"]  # casting to its own dtype adds nothing


@pytest.mark.parametrize("dtype, match", [
    ("complex64", "unsupported dtype 'complex64'"), ("foo", "unknown dtype 'foo'"), (np.float16, "unsupported dtype"),
])
def test_cast_to_unsupported_dtype(dtype, match):
    with pytest.raises(ShapeError, match=match):
        compiler.trace(lambda v: ops.cast(v, dtype), Spec((2,)))


def test_stop_gradient_is_identity_without_gradient():
    x = anywhere(3)
    np.testing.assert_array_equal(run(ops.stop_gradient, x), x)
    graph = compiler.trace(lambda v: ops.sum(v * ops.stop_gradient(v)), x)
    np.testing.assert_allclose(compiler.evaluate(compiler.grad(graph), x), x)  # d/dv v*c = c


def test_elementwise_subgradients():
    def grad_of(fn, *args):
        return compiler.evaluate(compiler.grad(compiler.trace(fn, *args)), *args)

    z = np.array([0.0, -1.0, 2.0])
    np.testing.assert_array_equal(grad_of(lambda v: ops.sum(ops.relu(v)), z), [0, 0, 1])
    np.testing.assert_array_equal(grad_of(lambda v: ops.sum(ops.abs(v)), z), [0, -1, 1])
    np.testing.assert_array_equal(grad_of(lambda v: ops.sum(ops.maximum(v, 0.0)), z), [0.5, 0, 1])
    np.testing.assert_array_equal(grad_of(lambda v: ops.sum(ops.minimum(v, 0.0)), z), [0.5, 1, 0])


# -------------------------------------------------------- front-end dtypes
@pytest.mark.parametrize("fn, spec_dtypes, expected", [
    (lambda x: x * 2.0, ["float32"], "float32"),          # float literal is weak
    (lambda x: 2 * x, ["float64"], "float64"),
    (lambda x: x + 1, ["int32"], "int32"),                # int literal is weak
    (lambda x: x + 1, ["int64"], "int64"),
    (lambda x: x + 1.5, ["int32"], "float32"),            # float literal with ints: float32
    (lambda x: x * np.float64(2), ["float32"], "float32"),  # numpy scalars are weak too
    (lambda x: np.float64(2) * x, ["float32"], "float32"),
    (lambda x, y: x + y, ["int32", "float32"], "float32"),
    (lambda x, y: x + y, ["int32", "float64"], "float64"),
    (lambda x, y: x + y, ["int64", "float32"], "float32"),  # JAX-style: not numpy's float64
    (lambda x, y: x + y, ["int32", "int64"], "int64"),
    (lambda x, y: x * y, ["float32", "float64"], "float64"),
    (lambda x, y: x + y, ["bool", "float32"], "float32"),
    (lambda x: x + 1, ["bool"], "int32"),
    (lambda x: x * 1.5, ["bool"], "float32"),
    (lambda x: x / 2, ["int32"], "float32"),              # true division of ints
    (lambda x: x * np.ones(2), ["float32"], "float64"),   # a float64 array is strongly typed
    (lambda x: x * [1.0, 2.0], ["float32"], "float32"),   # nested Python lists default to float32
    (lambda x: x * np.ones(2, np.int64), ["int32"], "int64"),
    (lambda x: x > 0.5, ["int32"], "bool"),
    (lambda x, y: ops.maximum(x, y), ["int32", "float32"], "float32"),
])
def test_front_end_dtype_promotion(fn, spec_dtypes, expected):
    specs = [Spec((2,), d) for d in spec_dtypes]
    assert out_type(fn, *specs).dtype == expected


def test_promotion_inserts_casts_and_computes_like_numpy():
    i = np.array([1, 2, 3], dtype=np.int32)
    x = np.array([0.5, 0.25, 2.0], dtype=np.float32)
    graph = compiler.trace(lambda a, b: a * b + 1, i, x)
    assert "cast" in [node.op for _, node in graph.nodes()]
    np.testing.assert_allclose(compiler.evaluate(graph, i, x), i * x + 1)


def test_numpy_arrays_on_the_left_defer_to_tensors():
    x = anywhere(3).astype(np.float32)
    w = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    got = run(lambda v: (w + v, w - v, w * v, w / (v * v + 1), w ** 2 * v), x)
    expected = (w + x, w - x, w * x, w / (x * x + 1), w ** 2 * x)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-6)


def test_operators_and_methods():
    x = positive(2, 3)
    got = run(lambda v: (-v, +v, abs(-v), 1 - v, 2 / v, v ** 2, 2.0 ** v, v.astype("float32")), x)
    expected = (-x, x, x, 1 - x, 2 / x, x ** 2, 2.0 ** x, x.astype(np.float32))
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-6)


def test_aliases():
    assert ops.sub is ops.subtract and ops.mul is ops.multiply and ops.div is ops.divide
    assert ops.pow is ops.power and ops.neg is ops.negative and ops.astype is ops.cast


def test_bool_arithmetic_is_a_clear_error():
    with pytest.raises(ShapeError, match="add at .*dtype bool not supported"):
        compiler.trace(lambda a, b: a + b, Spec((2,), "bool"), Spec((2,), "bool"))
    with pytest.raises(ShapeError, match="neg at .*dtype bool not supported"):
        compiler.trace(lambda a: -a, Spec((2,), "bool"))


# ---------------------------------------------------- data-dependent errors
@pytest.mark.parametrize("fn, match", [
    (lambda x: bool(x), "no concrete value: Python control flow"),
    (lambda x: x if x > 0 else -x, "Python control flow .*cannot depend on it; use ops.where"),
    (lambda x: x and x, "Python control flow"),
    (lambda x: float(x), "float\\(\\) is not possible while tracing"),
    (lambda x: int(x), "int\\(\\) is not possible while tracing"),
    (lambda x: np.asarray(x), "cannot be converted to a numpy array"),
    (lambda x: np.exp(x), "cannot be converted to a numpy array"),
    (lambda x: [1, 2, 3][x], "cannot be used as a Python index"),
    (lambda x: len(x), "len\\(\\) of a 0-d tensor"),
    (lambda x: x + None, "add: cannot use NoneType None as a tensor"),
    (lambda x: x * "a", "mul: cannot use str 'a' as a tensor"),
])
def test_data_dependent_use_is_a_trace_error(fn, match):
    with pytest.raises(TraceError, match=match):
        compiler.trace(fn, Spec(()))


def test_len_of_a_tensor():
    assert out_type(lambda x: x * len(x), Spec((5, 2))) == t((5, 2))


def test_ops_outside_a_trace():
    with pytest.raises(PullbackError, match="no graph is being built"):
        ops.zeros((2,))


def test_tensor_escaping_its_trace():
    leaked = []
    compiler.trace(lambda x: leaked.append(x) or x, Spec((2,)))
    with pytest.raises(TraceError, match="different graphs"):
        compiler.trace(lambda y: y + leaked[0], Spec((2,)))
    with pytest.raises(TraceError, match="returned a tensor from another trace"):
        compiler.trace(lambda y: leaked[0], Spec((2,)))


def test_int_literal_overflow_is_an_error():
    with pytest.raises(PullbackError):
        compiler.trace(lambda i: i + 2 ** 40, Spec((2,), "int32"))
