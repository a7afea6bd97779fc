"""The examples: each is a valid model file, evaluates to what plain numpy computes, runs
as a script, and survives the IR text round trip."""
from __future__ import annotations

import re

import numpy as np
import pytest

import compiler
from compiler.models import load_model
from runtime.pytree import flatten
from tests.examples.support import (
    EXAMPLES, assert_first_loss_is_the_initial_loss, example_path, parser_available, printer_available, require,
    require_ops, run_example,
)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _mlp_numpy(p, x, labels):
    h = x @ p["W1"] + p["b1"]
    h = h * _sigmoid(p["beta1"] * h)
    h2 = h @ p["W2"] + p["b2"]
    h2 = h2 * _sigmoid(p["beta2"] * h2)
    logits = h2 @ p["W3"] + p["b3"]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels].mean()


def _rnn_numpy(p, xs, targets):
    h = np.zeros((xs.shape[1], p["Wh"].shape[0]))
    total = 0.0
    for t in range(xs.shape[0]):
        h = np.tanh(xs[t] @ p["Wx"] + h @ p["Wh"] + p["b"])
        total += np.mean((h @ p["Wy"] + p["by"] - targets[t]) ** 2)
    return total / xs.shape[0]


def _lstm_numpy(p, xs, target):
    hidden = p["W"].shape[1] // 4
    h = c = np.zeros((xs.shape[1], hidden))
    for t in range(xs.shape[0]):
        z = np.concatenate([xs[t], h], axis=1) @ p["W"] + p["b"]
        i, f, g, o = (z[:, k * hidden:(k + 1) * hidden] for k in range(4))
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
    return np.mean((h @ p["Wy"] + p["by"] - target) ** 2)


def _chain_rule_numpy(p):
    x, s, t = p["x"], p["s"], p["t"]
    xt, yt = t * t, np.exp(t)
    return (x * x + 5) ** 3 + np.exp(3 * s) + xt * yt + np.sin(xt)


REFERENCES = {"chain_rule": _chain_rule_numpy, "mlp": _mlp_numpy, "rnn": _rnn_numpy, "lstm": _lstm_numpy}


def _as_f64(tree):
    if isinstance(tree, dict):
        return {k: _as_f64(v) for k, v in tree.items()}
    array = np.asarray(tree)
    return array.astype(np.float64) if array.dtype.kind == "f" else array


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_follows_the_convention_and_matches_numpy(name):
    require_ops(name)
    model = load_model(example_path(name))
    assert model.init_params is not None
    graph = model.trace()
    args = model.example_args(seed=0)
    value = compiler.evaluate(graph, *args)
    assert np.shape(value) == () and np.isfinite(value)
    expected = REFERENCES[name](*(_as_f64(a) for a in args))
    np.testing.assert_allclose(float(value), float(expected), rtol=2e-5)
    params = {graph.node(i).attrs["name"]: graph.node(i).attrs["kind"] for i in graph.inputs}
    assert all(kind == "param" for n, kind in params.items() if n.startswith("params.")), params
    assert all(kind == "data" for n, kind in params.items() if not n.startswith("params.")), params


def test_chain_rule_runs_as_a_script():
    stdout = run_example("chain_rule", "--steps", "5")
    assert "forward IR has" in stdout
    assert "loss at the example inputs (seed 0) = " in stdout
    for key in ("x", "s", "t"):
        match = re.search(rf"d loss/d {key}: autodiff (\S+), closed form (\S+)\n", stdout)
        assert match, stdout
        np.testing.assert_allclose(float(match.group(1)), float(match.group(2)), rtol=1e-5, err_msg=key)
    losses = [float(v) for v in re.findall(r"step +\d+  loss (\S+)", stdout)]
    assert len(losses) == 5 and losses[-1] < losses[0], stdout
    assert "after 5 steps: x = " in stdout


@pytest.mark.parametrize("name", [n for n in EXAMPLES if n != "chain_rule"])
def test_example_trains_as_a_script_with_the_interpreter(name):
    """The training scripts (compiled in tests/examples/test_training_examples.py) also
    run on the reference interpreter; their first loss is the loss at the example params."""
    require_ops(name)
    stdout = run_example(name, "--steps", "2", "--interpreter")
    assert "forward IR has" in stdout
    assert "(using the reference interpreter: --interpreter was given)" in stdout
    assert "interpreter: compile n/a (interpreter), median step" in stdout, stdout
    assert_first_loss_is_the_initial_loss(name, stdout)


def _assert_same_graph(a, b):
    assert len(a) == len(b)
    assert a.in_tree == b.in_tree and a.out_tree == b.out_tree
    assert [(a.node(i).attrs["name"], a.node(i).attrs["kind"], a.type(i)) for i in a.inputs] == \
        [(b.node(i).attrs["name"], b.node(i).attrs["kind"], b.type(i)) for i in b.inputs]
    assert [a.type(o) for o in a.outputs] == [b.type(o) for o in b.outputs]
    assert sorted(n.op for _, n in a.nodes()) == sorted(n.op for _, n in b.nodes())


@pytest.mark.parametrize("stage", ["forward", "backward"])
@pytest.mark.parametrize("name", EXAMPLES)
def test_ir_text_round_trip(name, stage):
    require(printer_available(), "the IR printer (compiler.dump)")
    require(parser_available(), "the IR parser (compiler.parse)")
    require_ops(name)
    model = load_model(example_path(name))
    graph = model.trace()
    if stage == "backward":
        require(hasattr(compiler, "value_and_grad"), "autodiff (compiler.value_and_grad)")
        graph = compiler.value_and_grad(graph, argnums=0)
    text = compiler.dump(graph)
    again = compiler.parse(text)
    _assert_same_graph(graph, again)
    assert compiler.dump(again) == text
    args = model.example_args(seed=1)
    for got, want in zip(*(flatten(compiler.evaluate(g, *args))[0] for g in (again, graph))):
        np.testing.assert_array_equal(got, want)


def test_chain_rule_gradient_matches_the_closed_forms():
    require(hasattr(compiler, "grad"), "autodiff (compiler.grad)")
    model = load_model(example_path("chain_rule"))
    grad_graph = compiler.grad(model.trace(), argnums=0)
    for seed in range(3):
        params = model.init_params(seed)
        got = compiler.evaluate(grad_graph, params)
        expected = model.module.closed_form_gradient(params)
        for key in ("x", "s", "t"):
            np.testing.assert_allclose(float(got[key]), expected[key], rtol=1e-5, err_msg=key)


def test_mlp_benchmark_size_traces():
    require_ops("mlp")
    model = load_model(example_path("mlp"))
    specs = model.module.specs(model.module.BENCHMARK_SIZES)
    graph = compiler.trace(model.loss, *specs)
    widths = sorted(graph.node(i).type.shape for i in graph.inputs if graph.node(i).attrs["name"] == "params.W1")
    assert widths == [(784, 256)]
