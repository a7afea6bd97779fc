"""The adjoint pass: activity analysis, fan-out, weight tying, API shapes, errors."""
import numpy as np
import pytest

import compiler
from compiler import Spec, ops
from compiler.errors import PullbackError

F64 = "float64"


def _ops_in(graph):
    return [node.op for _, node in graph.nodes()]


def test_grad_tree_mirrors_argument_structure():
    def loss(params, x):
        return ops.sum(ops.tanh(x @ params["layers"][0]["W"]) * params["scale"])

    specs = ({"layers": [{"W": Spec((3, 2), F64)}], "scale": Spec((), F64)}, Spec((4, 3), F64))
    graph = compiler.trace(loss, *specs)
    rng = np.random.default_rng(0)
    params = {"layers": [{"W": rng.normal(size=(3, 2))}], "scale": np.float64(0.5)}
    x = rng.normal(size=(4, 3))
    grads = compiler.evaluate(compiler.grad(graph), params, x)
    assert set(grads) == {"layers", "scale"} and grads["layers"][0]["W"].shape == (3, 2)
    value, grads2 = compiler.evaluate(compiler.value_and_grad(graph), params, x)
    assert value == pytest.approx(compiler.evaluate(graph, params, x))
    np.testing.assert_array_equal(grads2["scale"], grads["scale"])
    both = compiler.evaluate(compiler.grad(graph, argnums=(0, 1)), params, x)
    assert isinstance(both, tuple) and both[1].shape == (4, 3)


def test_only_needed_work_for_unrequested_inputs():
    # d/da must not compute anything for b's exp branch.
    graph = compiler.trace(lambda a, b: ops.sum(a * 2.0 + ops.exp(b) * ops.exp(b)), Spec((3,), F64), Spec((3,), F64))
    backward = compiler.grad(graph, argnums=0)
    assert _ops_in(backward).count("exp") == 0


def test_stop_gradient_cuts_the_path():
    graph = compiler.trace(lambda a: a * ops.stop_gradient(ops.exp(a)), Spec((), F64))
    a = np.float64(0.3)
    assert float(compiler.evaluate(compiler.grad(graph), a)) == pytest.approx(np.exp(a))


def test_integer_and_comparison_paths_carry_no_gradient():
    def f(x, mask):
        return (x * ops.cast(mask, F64) + ops.where(x > 0, x, 0.0) * 0.0 + ops.cast(x > 1, F64) * x)

    graph = compiler.trace(lambda x, m: ops.sum(f(x, m)), Spec((4,), F64), Spec((4,), "int32"))
    x = np.array([0.5, 2.0, -1.0, 3.0])
    m = np.array([1, 0, 1, 1], dtype=np.int32)
    grad = compiler.evaluate(compiler.grad(graph), x, m)
    np.testing.assert_allclose(grad, m + (x > 1))


def test_gradient_of_integer_input_is_a_clear_error():
    graph = compiler.trace(lambda x, n: x * ops.cast(n, F64), Spec((), F64), Spec((), "int32"))
    with pytest.raises(PullbackError, match="int32"):
        compiler.grad(graph, argnums=1)


def test_non_scalar_output_needs_vjp():
    graph = compiler.trace(lambda x: x * 2.0, Spec((3,), F64))
    with pytest.raises(PullbackError, match="scalar"):
        compiler.grad(graph)
    backward = compiler.vjp(graph)
    ct = np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(compiler.evaluate(backward, np.zeros(3), ct), 2 * ct)


def test_unused_input_gets_zero_gradient():
    graph = compiler.trace(lambda p: p["a"] * 3.0, {"a": Spec((), F64), "b": Spec((2,), F64)})
    grads = compiler.evaluate(compiler.grad(graph), {"a": 1.0, "b": np.ones(2)})
    np.testing.assert_array_equal(grads["b"], np.zeros(2))
    assert float(grads["a"]) == 3.0


def test_argnums_out_of_range():
    graph = compiler.trace(lambda x: x * 2.0, Spec((), F64))
    with pytest.raises(PullbackError, match="argnums"):
        compiler.grad(graph, argnums=3)


def test_weight_tying_sums_every_step_in_the_ir():
    steps = 8

    def unrolled(w, h0):
        h = h0
        for _ in range(steps):
            h = ops.tanh(h * w)
        return h

    graph = compiler.trace(unrolled, Spec((), F64), Spec((), F64))
    backward = compiler.grad(graph)
    fan_in = [n for _, n in backward.nodes() if n.op == "add" and (n.loc or "").startswith("fan-in of w")]
    assert len(fan_in) == steps - 1  # T contributions, T-1 additions
    w, h0 = 0.9, 0.7
    eps = 1e-6
    f = lambda w: float(compiler.evaluate(graph, np.float64(w), np.float64(h0)))  # noqa: E731
    assert float(compiler.evaluate(backward, np.float64(w), np.float64(h0))) == pytest.approx(
        (f(w + eps) - f(w - eps)) / (2 * eps), rel=1e-7)


def test_backward_ops_name_their_forward_op():
    graph = compiler.trace(lambda x: ops.tanh(x) * 2.0, Spec((), F64))
    backward = compiler.grad(graph)
    notes = [n.loc for _, n in backward.nodes() if n.loc and n.loc.startswith("grad tanh @ test_adjoint.py:")]
    assert notes


def test_forward_values_are_reused_not_recomputed():
    graph = compiler.trace(lambda x: ops.sum(ops.exp(ops.sin(x))), Spec((5,), F64))
    ops_in = _ops_in(compiler.value_and_grad(graph))
    assert ops_in.count("exp") == 1 and ops_in.count("sin") == 1


def test_second_order_scalar():
    graph = compiler.trace(lambda x: x ** 4.0, Spec((), F64))
    second = compiler.grad(compiler.grad(graph))
    assert float(compiler.evaluate(second, np.float64(1.5))) == pytest.approx(12 * 1.5 ** 2)
