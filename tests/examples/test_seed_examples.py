"""The seed-architecture examples (cnn, gnn, hypernetwork, vae, deq) at small sizes:
compiled gradients match the interpreter, float64 gradients match finite differences,
a short training run lowers the loss, and each file runs as a training script.
(The checks themselves are in tests/examples/support.py, shared with the classic examples.)"""
from __future__ import annotations

import numpy as np
import pytest

from tests.examples.support import example_checks, run_example, small, training

SEED_EXAMPLES = ("cnn", "gnn", "hypernetwork", "vae", "deq")


(test_compiled_gradients_match_the_interpreter, test_float64_gradients_match_finite_differences,
 test_short_training_run_lowers_the_loss) = example_checks(SEED_EXAMPLES)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_optimizers_minimize_a_quadratic(optimizer):
    target = {"a": np.array([1.0, -2.0], np.float32), "b": [np.float32(3.0)]}
    params = {"a": np.zeros(2, np.float32), "b": [np.float32(0.0)]}
    opt = training().make_optimizer(optimizer, 0.1)
    for _ in range(300):
        grads = {"a": params["a"] - target["a"], "b": [params["b"][0] - target["b"][0]]}
        params = opt.step(params, grads)
    assert params["a"].dtype == np.float32
    np.testing.assert_allclose(params["a"], target["a"], atol=1e-2)
    np.testing.assert_allclose(params["b"][0], 3.0, atol=1e-2)


def test_a_failing_compile_falls_back_to_the_interpreter(monkeypatch):
    import compiler.codegen as codegen

    module, specs, params, data = small("deq")
    lines = []

    def refuse(graph, opt_level=2, cache=True):
        raise NotImplementedError("no lowering for fixed_point")

    monkeypatch.setattr(codegen, "compile", refuse)
    result = training().train(module, 5, 1e-2, "adam", specs=specs, params=params, batch_fn=lambda step: data,
                              log=lines.append)
    assert result.backend == "interpreter" and result.compile_seconds is None
    assert "(compiled path unavailable: compile failed: NotImplementedError: no lowering for fixed_point; "
    "using the reference interpreter)" in lines
    assert len(result.losses) == 5

    def broken_kernel(graph, opt_level=2, cache=True):
        def call(*args):
            raise RuntimeError("kernel returned status 3")
        return call

    monkeypatch.setattr(codegen, "compile", broken_kernel)
    result = training().train(module, 3, 1e-2, "adam", specs=specs, params=params, batch_fn=lambda step: data,
                              log=None)
    assert result.backend == "interpreter" and "status 3" in result.note and len(result.losses) == 3


@pytest.mark.parametrize("name", SEED_EXAMPLES)
def test_script_trains_and_reports(name):
    stdout = run_example(name, "--steps", "3", "--cache")
    assert "step     2  loss" in stdout
    assert "compiled: compile" in stdout and "median step" in stdout, stdout
