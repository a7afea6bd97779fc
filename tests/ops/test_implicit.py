"""fixed_point: forward iteration, implicit-function-theorem gradients, errors, IR shape."""
import numpy as np
import pytest

import compiler
from compiler import EvalError, ShapeError, Spec, TensorType, TraceError, ops
from compiler.ops.implicit import fixed_point, inline
from compiler.ops.registry import get_op, infer_type
from tests.gradcheck import numerical_grad
from tests.ops.samples_implicit import cell, contraction

R = np.random.default_rng(0)
X = R.normal(size=(3, 4))
Y = R.normal(size=(3, 4))
W = contraction((4, 4), 0.5, 7)


def numpy_fixed_point(x, w, z0=None, tol=1e-6, max_iter=100):
    """The documented rule: stop at z_k once max|z_k - z_(k-1)| <= tol * (1 + max|z_k|)."""
    z = np.zeros_like(x) if z0 is None else z0
    for k in range(1, max_iter + 1):
        z_next = np.tanh(z @ w + x)
        done = np.max(np.abs(z_next - z)) <= tol * (1 + np.max(np.abs(z_next)))
        z = z_next
        if done:
            return z, k
    raise AssertionError("numpy loop did not converge")


def deq_loss(tol=1e-13, max_iter=200):
    def loss(params, y):
        w, x = params
        z = fixed_point(cell, ops.zeros(x.shape, x.dtype), x, w, tol=tol, max_iter=max_iter)
        return ops.sum((z - y) ** 2)
    return loss


def count(graph, op, recursive=False):
    total = 0
    for _, node in graph.nodes():
        total += node.op == op
        if recursive and node.op == "fixed_point":
            total += count(node.attrs["body"], op, recursive=True)
    return total


# ------------------------------------------------------------------ forward
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 1e-6)])
def test_forward_matches_numpy_loop(dtype, tol):
    x, w = X.astype(dtype), W.astype(dtype)
    graph = compiler.trace(lambda x, w: fixed_point(cell, ops.zeros_like(x), x, w, tol=tol), x, w)
    got = compiler.evaluate(graph, x, w)
    expected, iterations = numpy_fixed_point(X, W, tol=tol)
    assert got.dtype == np.dtype(dtype) and 5 < iterations < 100
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-11 if dtype == "float64" else 1e-5)
    np.testing.assert_allclose(got, np.tanh(got @ w + x), rtol=0, atol=10 * tol)  # it is a fixed point


def test_op_in_the_graph_holds_a_traced_body():
    graph = compiler.trace(lambda x, w: fixed_point(cell, ops.zeros_like(x), x, w), Spec((3, 4)), Spec((4, 4)))
    (node,) = [n for _, n in graph.nodes() if n.op == "fixed_point"]
    body = node.attrs["body"]
    assert isinstance(body, compiler.Graph) and body.name == "cell"
    assert body.input_names() == ["z", "x", "W"]
    assert {body.node(i).attrs["kind"] for i in body.inputs} == {"data"}
    assert node.attrs["tol"] == 1e-6 and node.attrs["max_iter"] == 100 and node.type == TensorType((3, 4), "float32")
    assert get_op("fixed_point").kind == "other" and get_op("fixed_point").vjp is not None
    copy = graph.copy()
    compiler.verify(copy)
    assert [n for _, n in copy.nodes() if n.op == "fixed_point"][0].attrs["body"] is body


def test_result_does_not_depend_on_z0():
    graph = compiler.trace(lambda z0, x, w: fixed_point(cell, z0, x, w, tol=1e-13, max_iter=200), Y, X, W)
    a = compiler.evaluate(graph, Y, X, W)
    b = compiler.evaluate(graph, np.zeros_like(Y), X, W)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_numpy_and_scalar_operands_become_constants():
    graph = compiler.trace(lambda x: fixed_point(lambda z, c, w: ops.tanh(z @ w + c), np.zeros((3, 4)), x, W), X)
    np.testing.assert_allclose(compiler.evaluate(graph, X), numpy_fixed_point(X, W)[0], atol=1e-5)
    # a Python float arg takes z's dtype (weak typing, as for any literal)
    graph = compiler.trace(lambda z0: fixed_point(lambda z, a: 0.5 * ops.cos(z) + a, z0, 0.25), Spec((2,), "float64"))
    (node,) = [n for _, n in graph.nodes() if n.op == "fixed_point"]
    assert graph.type(node.operands[1]) == TensorType((), "float64")


def test_nested_fixed_point_in_a_body():
    def outer(z, x):
        inner = fixed_point(lambda v, z, x: 0.5 * ops.sin(v + z) + x, ops.zeros_like(z), z, x, tol=1e-13)
        return 0.5 * ops.tanh(inner) + x
    graph = compiler.trace(lambda x: fixed_point(outer, ops.zeros_like(x), x, tol=1e-12), Spec((4,), "float64"))
    x = R.normal(size=4)
    z = compiler.evaluate(graph, x)
    v = np.zeros(4)
    for _ in range(200):
        v = 0.5 * np.sin(v + z) + x
    np.testing.assert_allclose(z, 0.5 * np.tanh(v) + x, atol=1e-10)
    # gradients go through both implicit layers (the outer body's VJP holds the inner op)
    loss = compiler.trace(lambda x: ops.sum(fixed_point(outer, ops.zeros_like(x), x, tol=1e-13) ** 2), x)
    got = compiler.evaluate(compiler.grad(loss), x)
    expected = numerical_grad(lambda c: float(compiler.evaluate(loss, c[0])), [x], 0)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------ gradients
def test_grad_matches_finite_differences():
    graph = compiler.trace(deq_loss(), (W, X), Y)
    g_w, g_x = compiler.evaluate(compiler.grad(graph), (W, X), Y)

    def f(current):
        return float(compiler.evaluate(graph, tuple(current), Y))

    np.testing.assert_allclose(g_w, numerical_grad(f, [W, X], 0), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(g_x, numerical_grad(f, [W, X], 1), rtol=1e-6, atol=1e-8)


def test_grad_matches_the_implicit_function_theorem():
    """dz*/dθ = (I - ∂F/∂z)^-1 ∂F/∂θ, with every Jacobian written out and solved densely."""
    z, _ = numpy_fixed_point(X, W, tol=1e-14, max_iter=500)
    b, n = z.shape
    s = (1 - z**2).reshape(-1)  # tanh' at the fixed point, flattened (b, i) row-major
    jz = np.zeros((b * n, b * n))  # ∂F_bi/∂z_bj = s_bi W_ji
    jw = np.zeros((b * n, n * n))  # ∂F_bi/∂W_jk = s_bi z_bj [i == k]
    for bb in range(b):
        for i in range(n):
            row = bb * n + i
            jz[row, bb * n:(bb + 1) * n] = s[row] * W[:, i]
            jw[row, np.arange(n) * n + i] = s[row] * z[bb]
    jx = np.diag(s)  # ∂F/∂x
    lhs = np.eye(b * n) - jz
    g_bar = (2 * (z - Y)).reshape(-1)
    expected_w = (g_bar @ np.linalg.solve(lhs, jw)).reshape(n, n)
    expected_x = (g_bar @ np.linalg.solve(lhs, jx)).reshape(b, n)

    g_w, g_x = compiler.evaluate(compiler.grad(compiler.trace(deq_loss(), (W, X), Y)), (W, X), Y)
    np.testing.assert_allclose(g_w, expected_w, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(g_x, expected_x, rtol=1e-9, atol=1e-11)


def test_z0_gets_a_zero_gradient():
    def loss(z0, x, w):
        return ops.sum(fixed_point(cell, z0, x, w, tol=1e-12) ** 2)
    graph = compiler.trace(loss, Spec((3, 4), "float64"), X, W)
    g = compiler.evaluate(compiler.grad(graph, argnums=0), Y, X, W)
    np.testing.assert_array_equal(g, np.zeros_like(Y))


def test_backward_never_unrolls_the_forward_iterations():
    """The backward graph's size is fixed: one adjoint solve, one replay of f at z*."""
    sizes = set()
    for tol, max_iter in [(1e-3, 10), (1e-13, 500)]:
        back = compiler.grad(compiler.trace(deq_loss(tol, max_iter), (W, X), Y))
        assert count(back, "fixed_point") == 2  # forward solve + adjoint solve
        assert count(back, "tanh") == 1  # f replayed once at z* for (∂f/∂args)^T u
        assert count(back, "tanh", recursive=True) == 3  # + one in each body
        sizes.add(len(back))
    assert len(sizes) == 1
    few, many = numpy_fixed_point(X, W, tol=1e-3)[1], numpy_fixed_point(X, W, tol=1e-13, max_iter=500)[1]
    assert many > 3 * few  # the two forward solves run very different numbers of iterations


def test_vjp_and_value_and_grad():
    graph = compiler.trace(lambda x, w: fixed_point(cell, ops.zeros_like(x), x, w, tol=1e-13, max_iter=200), X, W)
    z = compiler.evaluate(graph, X, W)
    ct = R.normal(size=z.shape)
    dx, dw = compiler.evaluate(compiler.vjp(graph, argnums=(0, 1)), X, W, ct)

    def f(current):
        return float(np.sum(compiler.evaluate(graph, *current) * ct))

    np.testing.assert_allclose(dx, numerical_grad(f, [X, W], 0), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dw, numerical_grad(f, [X, W], 1), rtol=1e-6, atol=1e-8)
    value, (g_w, g_x) = compiler.evaluate(compiler.value_and_grad(compiler.trace(deq_loss(), (W, X), Y)), (W, X), Y)
    np.testing.assert_allclose(value, np.sum((z - Y) ** 2), rtol=1e-10)


def test_second_order_through_the_adjoint_solve():
    """grad of grad differentiates the adjoint fixed_point by the same rule: a Hessian-vector product."""
    v = R.normal(size=X.shape)
    first = compiler.grad(compiler.trace(lambda x, w, y: deq_loss()((w, x), y), X, W, Y), argnums=0)

    def directional(x, w, y):  # <d loss/dx, v>
        (g_x,) = inline(first, x, w, y)
        return ops.sum(g_x * ops.constant(v))

    second = compiler.grad(compiler.trace(directional, X, W, Y), argnums=0)
    assert count(second, "fixed_point") == 4  # forward, adjoint, and the adjoint solve of each
    got = compiler.evaluate(second, X, W, Y)

    def f(current):
        return float(np.sum(compiler.evaluate(first, current[0], W, Y) * v))

    np.testing.assert_allclose(got, numerical_grad(f, [X], 0), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ errors
def test_non_convergence_names_op_residual_and_max_iter():
    graph = compiler.trace(lambda x, w: fixed_point(cell, ops.zeros_like(x), x, w, max_iter=2), X, W)
    with pytest.raises(EvalError, match=r"fixed_point \(body 'cell'\) did not converge in max_iter=2 iterations: "
                                        r"residual max\|z_k - z_\(k-1\)\| = [0-9.e+-]+ > tol"):
        compiler.evaluate(graph, X, W)
    big = contraction((4, 4), 8.0, 3)  # tanh(z W + x) with ||W|| = 8 oscillates instead of settling
    graph = compiler.trace(lambda x, w: fixed_point(cell, ops.zeros_like(x), x, w, max_iter=50), X, big)
    with pytest.raises(EvalError, match=r"did not converge in max_iter=50"):
        compiler.evaluate(graph, X, big)


def test_divergence_to_inf_is_reported():
    graph = compiler.trace(lambda x: fixed_point(lambda z, x: z * z + x, x, x), Spec((2,), "float64"))
    with pytest.raises(EvalError, match=r"fixed_point \(body '<lambda>'\): the iterate became non-finite at "
                                        r"iteration \d+ \(max_iter=100\)"):
        compiler.evaluate(graph, np.array([2.0, 3.0]))


def test_adjoint_non_convergence_is_reported():
    """Start at z*: the forward stops at once, but the adjoint solve needs more than 3 steps."""
    z_star, _ = numpy_fixed_point(X, W, tol=1e-15, max_iter=500)

    def loss(x, w, z0):
        return ops.sum(fixed_point(cell, z0, x, w, tol=1e-9, max_iter=3) ** 2)

    graph = compiler.trace(loss, X, W, z_star)
    compiler.evaluate(graph, X, W, z_star)
    with pytest.raises(EvalError, match=r"fixed_point \(body 'adjoint_cell'\) did not converge in max_iter=3"):
        compiler.evaluate(compiler.grad(graph, argnums=1), X, W, z_star)


def test_body_errors():
    x, w = Spec((3, 4)), Spec((4, 4))
    with pytest.raises(TraceError, match=r"cell2 must return a tensor of z's type f32\[3,4\], got f32\[3\]"):
        def cell2(z, x, w):
            return ops.sum(z @ w + x, axis=1)
        compiler.trace(lambda x, w: fixed_point(cell2, ops.zeros_like(x), x, w), x, w)
    with pytest.raises(TraceError, match=r"got f64\[3,4\]; cast it"):
        compiler.trace(lambda x, w: fixed_point(cell, ops.zeros_like(x), x, w), x, Spec((4, 4), "float64"))
    with pytest.raises(TraceError, match="must return one tensor .* it returned 2"):
        compiler.trace(lambda x: fixed_point(lambda z, x: (z, x), x, x), x)
    with pytest.raises(TraceError, match="must not use tensors of the enclosing trace: pass them"):
        compiler.trace(lambda x, w: fixed_point(lambda z: ops.tanh(z @ w), x), x, w)
    with pytest.raises(TraceError, match="z0 must be float, got i32"):
        compiler.trace(lambda k: fixed_point(lambda z: z, k), Spec((3,), "int32"))
    with pytest.raises(TraceError, match="f must be a function"):
        compiler.trace(lambda x: fixed_point(3, x), x)
    with pytest.raises(ShapeError, match=r"fixed_point at test_implicit.py:\d+: tol must be a finite float >= 0"):
        compiler.trace(lambda x: fixed_point(lambda z: 0.5 * z, x, tol=-1.0), x)
    with pytest.raises(ShapeError, match=r"max_iter must be an int >= 1, got 0"):
        compiler.trace(lambda x: fixed_point(lambda z: 0.5 * z, x, max_iter=0), x)
    with pytest.raises(ShapeError, match=r"max_iter must be an int >= 1, got 2.5"):
        compiler.trace(lambda x: fixed_point(lambda z: 0.5 * z, x, max_iter=2.5), x)


def test_shape_rule_checks_body_against_operands():
    body = compiler.trace(cell, Spec((3, 4)), Spec((3, 4)), Spec((4, 4)), param_argnums=())
    f32 = lambda *s: TensorType(s, "float32")  # noqa: E731
    attrs = {"body": body, "tol": 1e-6, "max_iter": 10}
    assert infer_type("fixed_point", [f32(3, 4), f32(3, 4), f32(4, 4)], attrs) == f32(3, 4)
    with pytest.raises(ShapeError, match=r"operand 2 is f32\[4,5\] but body input 'W' is f32\[4,4\]"):
        infer_type("fixed_point", [f32(3, 4), f32(3, 4), f32(4, 5)], attrs)
    with pytest.raises(ShapeError, match=r"takes 3 inputs \(z, \*args\) but the op has 2 operands"):
        infer_type("fixed_point", [f32(3, 4), f32(3, 4)], attrs)
    with pytest.raises(ShapeError, match="body must be a Graph, got str"):
        infer_type("fixed_point", [f32(3, 4)], {**attrs, "body": "cell"})
    with pytest.raises(ShapeError, match="missing attribute"):
        infer_type("fixed_point", [f32(3, 4)], {"body": body})


def test_inline_replays_a_graph():
    g = compiler.trace(lambda a, b: ops.exp(a) * b + 1.0, Spec((2,), "float64"), Spec((2,), "float64"))

    def twice(a, b):
        (once,) = inline(g, a, b)
        return inline(g, once, b)[0]

    a, b = R.normal(size=2), R.normal(size=2)
    np.testing.assert_allclose(compiler.evaluate(compiler.trace(twice, a, b), a, b),
                               np.exp(np.exp(a) * b + 1.0) * b + 1.0)
    with pytest.raises(compiler.PullbackError, match=r"input 'b' is f64\[2\], got f64\[3\]"):
        compiler.trace(lambda a, c: inline(g, a, c), a, np.ones(3))


def test_optimizer_keeps_distinct_bodies_apart():
    from compiler.pipeline import optimize

    def f(x):
        a = fixed_point(lambda z, x: 0.5 * ops.tanh(z) + x, ops.zeros_like(x), x)
        b = fixed_point(lambda z, x: 0.5 * ops.sin(z) + x, ops.zeros_like(x), x)
        return a - b
    graph = compiler.trace(f, Spec((3,), "float64"))
    x = np.array([0.1, 0.2, 0.3])
    np.testing.assert_allclose(compiler.evaluate(optimize(graph), x), compiler.evaluate(graph, x))
