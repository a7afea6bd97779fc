"""Whole-model gradients against hand-written numpy backward passes."""
import time

import numpy as np
import pytest

import compiler
from compiler import Spec, ops

F64 = "float64"


def _rnn_loss(params, xs, ys):
    h = ops.zeros((xs.shape[1], params["Wh"].shape[0]), F64)
    total = 0.0
    for t in range(xs.shape[0]):
        h = ops.tanh(xs[t] @ params["Wx"] + h @ params["Wh"] + params["b"])
        total = total + ops.sum((h - ys[t]) ** 2)
    return total / xs.shape[0]


def _rnn_bptt_numpy(params, xs, ys):
    Wx, Wh, b = params["Wx"], params["Wh"], params["b"]
    steps, batch = xs.shape[:2]
    hs = [np.zeros((batch, Wh.shape[0]))]
    for t in range(steps):
        hs.append(np.tanh(xs[t] @ Wx + hs[-1] @ Wh + b))
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    dh_next = np.zeros_like(hs[0])
    for t in reversed(range(steps)):
        dh = 2 * (hs[t + 1] - ys[t]) / steps + dh_next
        dz = dh * (1 - hs[t + 1] ** 2)
        grads["Wx"] += xs[t].T @ dz
        grads["Wh"] += hs[t].T @ dz
        grads["b"] += dz.sum(axis=0)
        dh_next = dz @ Wh.T
    return grads


def test_tanh_rnn_matches_handwritten_bptt():
    steps, batch, n_in, hidden = 10, 3, 4, 5
    rng = np.random.default_rng(0)
    params = {"Wx": rng.normal(size=(n_in, hidden)) * 0.5, "Wh": rng.normal(size=(hidden, hidden)) * 0.5,
              "b": rng.normal(size=hidden) * 0.1}
    xs = rng.normal(size=(steps, batch, n_in))
    ys = rng.normal(size=(steps, batch, hidden))
    specs = ({k: Spec(v.shape, F64) for k, v in params.items()}, Spec(xs.shape, F64), Spec(ys.shape, F64))
    graph = compiler.trace(_rnn_loss, *specs)
    grads = compiler.evaluate(compiler.grad(graph), params, xs, ys)
    expected = _rnn_bptt_numpy(params, xs, ys)
    for name in params:
        np.testing.assert_allclose(grads[name], expected[name], rtol=1e-10, atol=1e-12, err_msg=name)


def _mlp_loss(params, x, onehot):
    h = ops.relu(x @ params["W1"] + params["b1"])
    logits = h @ params["W2"] + params["b2"]
    return -ops.mean(ops.sum(onehot * ops.log_softmax(logits, axis=-1), axis=-1))


def test_mlp_softmax_cross_entropy_matches_handwritten_backward():
    rng = np.random.default_rng(1)
    batch, n_in, hidden, classes = 8, 6, 7, 4
    params = {"W1": rng.normal(size=(n_in, hidden)), "b1": rng.normal(size=hidden) * 0.1,
              "W2": rng.normal(size=(hidden, classes)), "b2": rng.normal(size=classes) * 0.1}
    x = rng.normal(size=(batch, n_in))
    onehot = np.eye(classes)[rng.integers(0, classes, size=batch)]
    specs = ({k: Spec(v.shape, F64) for k, v in params.items()}, Spec(x.shape, F64), Spec(onehot.shape, F64))
    graph = compiler.trace(_mlp_loss, *specs)
    grads = compiler.evaluate(compiler.grad(graph), params, x, onehot)

    z1 = x @ params["W1"] + params["b1"]
    h = np.maximum(z1, 0)
    logits = h @ params["W2"] + params["b2"]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    dlogits = (p - onehot) / batch
    expected = {"W2": h.T @ dlogits, "b2": dlogits.sum(0)}
    dz1 = (dlogits @ params["W2"].T) * (z1 > 0)
    expected.update(W1=x.T @ dz1, b1=dz1.sum(0))
    for name in params:
        np.testing.assert_allclose(grads[name], expected[name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_hessian_vector_product_of_mlp_loss():
    """grad of <grad f, v> is H v; checked against finite differences of the gradient."""
    rng = np.random.default_rng(2)
    n_in, hidden = 3, 4
    W = rng.normal(size=(n_in, hidden))
    v = rng.normal(size=(n_in, hidden))
    x = rng.normal(size=(5, n_in))

    def loss(W, x):
        return ops.sum(ops.tanh(x @ W) ** 2)

    graph = compiler.trace(loss, Spec(W.shape, F64), Spec(x.shape, F64))
    grad_graph = compiler.grad(graph)

    def grad_dot_v(W, x, v):
        return ops.sum(_inline(grad_graph, W, x) * v)

    hvp_graph = compiler.grad(compiler.trace(grad_dot_v, Spec(W.shape, F64), Spec(x.shape, F64), Spec(v.shape, F64)))
    hvp = compiler.evaluate(hvp_graph, W, x, v)
    eps = 1e-6
    numeric = (compiler.evaluate(grad_graph, W + eps * v, x) - compiler.evaluate(grad_graph, W - eps * v, x)) / (2 * eps)
    np.testing.assert_allclose(hvp, numeric, rtol=1e-6, atol=1e-8)


def _inline(graph, *args):
    """Replay a graph's ops on traced tensors (used to compose graphs in a trace)."""
    from compiler.ops.tensor import apply

    env = dict(zip(graph.inputs, args))
    for node_id, node in graph.nodes():
        if node.op != "input":
            env[node_id] = apply(node.op, *(env[o] for o in node.operands), **node.attrs) if node.operands else \
                _source(args[0].graph, node)
    return env[graph.outputs[0]]


def _source(graph, node):
    from compiler.ops.tensor import Tensor

    return Tensor(graph, graph.add_node(node.op, (), node.attrs))


@pytest.mark.parametrize("steps", [2000])
def test_adjoint_of_long_unrolled_rnn_is_linear_time(steps, capsys):
    """2,000 unrolled steps differentiate without recursion errors; time per node reported."""
    hidden = 8

    def loss(params, xs):
        h = ops.zeros((1, hidden), "float32")
        for t in range(steps):
            h = ops.tanh(xs[t] @ params["Wx"] + h @ params["Wh"])
        return ops.sum(h)

    start = time.perf_counter()
    graph = compiler.trace(loss, {"Wx": Spec((4, hidden)), "Wh": Spec((hidden, hidden))}, Spec((steps, 1, 4)))
    traced = time.perf_counter()
    backward = compiler.grad(graph)
    done = time.perf_counter()
    with capsys.disabled():
        print(f"\n[rnn T={steps}] trace {len(graph)} nodes in {traced - start:.2f}s "
              f"({(traced - start) / len(graph) * 1e6:.1f} us/node); adjoint -> {len(backward)} nodes in "
              f"{done - traced:.2f}s ({(done - traced) / len(graph) * 1e6:.1f} us per forward node)")
