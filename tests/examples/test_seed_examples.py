"""The seed-architecture examples (cnn, gnn, hypernetwork, vae, deq) at small sizes:
compiled gradients match the interpreter, float64 gradients match finite differences,
a short training run lowers the loss, and each file runs as a training script."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import compiler
from compiler.models import load_model
from runtime.pytree import flatten, unflatten
from tests.examples.support import ROOT, example_path
from tests.gradcheck import numerical_grad

SEED_EXAMPLES = ("cnn", "gnn", "hypernetwork", "vae", "deq")

# Small sizes: keyword arguments of specs(), init_params() and make_batch().
SMALL = {
    "cnn": ({"batch": 4, "size": 8, "channels": (2, 3)}, {"size": 8, "channels": (2, 3)}, {"batch": 4, "size": 8}),
    "gnn": ({"nodes": 6, "edges": 12, "features": 3, "hidden": 5}, {"features": 3, "hidden": 5},
            {"nodes": 6, "edges": 12, "features": 3}),
    "hypernetwork": ({"tasks": 3, "points": 5, "embed": 3, "hyper_hidden": 4, "target_hidden": 3},
                     {"tasks": 3, "embed": 3, "hyper_hidden": 4, "target_hidden": 3}, {"tasks": 3, "points": 5}),
    "vae": ({"batch": 5, "dim": 4, "hidden": 6, "latent": 2}, {"dim": 4, "hidden": 6, "latent": 2},
            {"batch": 5, "dim": 4, "latent": 2}),
    "deq": ({"batch": 5, "n_in": 3, "hidden": 4}, {"n_in": 3, "hidden": 4}, {"batch": 5, "n_in": 3}),
}
# (learning rate, optimizer) for the short training run.
TRAINING = {"cnn": (1e-2, "adam"), "gnn": (1e-2, "adam"), "hypernetwork": (1e-2, "adam"),
            "vae": (1e-2, "adam"), "deq": (1e-2, "adam")}


def _load_training():
    spec = importlib.util.spec_from_file_location("_pullback_examples_training", ROOT / "examples" / "training.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while it executes
    spec.loader.exec_module(module)
    return module


training = _load_training()


@pytest.fixture(autouse=True, scope="module")
def _private_cache(tmp_path_factory):
    """Compile into a private cache: the training test reuses the gradient test's build."""
    old = os.environ.get("PULLBACK_CACHE_DIR")
    os.environ["PULLBACK_CACHE_DIR"] = str(tmp_path_factory.mktemp("pullback-cache"))
    yield os.environ["PULLBACK_CACHE_DIR"]
    if old is None:
        os.environ.pop("PULLBACK_CACHE_DIR", None)
    else:
        os.environ["PULLBACK_CACHE_DIR"] = old


def _module(name):
    return load_model(example_path(name)).module


def _small(name, dtype="float32", seed=0):
    """(module, specs, params, data) at the small size, arrays cast to dtype."""
    module = _module(name)
    spec_kw, init_kw, batch_kw = SMALL[name]
    specs = module.specs(dtype, **spec_kw)
    params = _cast(module.init_params(seed, **init_kw), dtype)
    data = tuple(_cast(d, dtype) for d in module.make_batch(seed, **batch_kw))
    return module, specs, params, data


def _cast(tree, dtype):
    leaves, tree_def = flatten(tree)
    return unflatten(tree_def, [np.asarray(a).astype(dtype) if np.asarray(a).dtype.kind == "f" else np.asarray(a)
                                for a in leaves])


@pytest.mark.parametrize("name", SEED_EXAMPLES)
def test_compiled_gradients_match_the_interpreter(name):
    module, specs, params, data = _small(name)
    step = training.value_and_grad_fn(module, specs, cache=True)
    expected_loss, expected_grads = compiler.evaluate(step.graph, params, *data)
    if step.backend != "compiled":
        pytest.xfail(reason=f"examples/{name}.py: compiled path unavailable ({step.note})")
    loss, grads = step.call(params, *data)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5, atol=1e-6)
    got, tree = flatten(grads)
    want, want_tree = flatten(expected_grads)
    assert tree == want_tree
    for path, a, b in zip(sorted(params), got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=f"gradient of {path}")


@pytest.mark.parametrize("name", SEED_EXAMPLES)
def test_float64_gradients_match_finite_differences(name):
    module, specs, params, data = _small(name, "float64")
    graph = compiler.trace(module.loss, *specs, name=name)
    analytic = compiler.evaluate(compiler.grad(graph), params, *data)
    leaves, tree = flatten(params)
    grads, _ = flatten(analytic)
    rng = np.random.default_rng(0)
    for index, (leaf, grad) in enumerate(zip(leaves, grads)):
        # At most 6 coordinates per leaf keep the interpreter calls few.
        picked = np.sort(rng.choice(leaf.size, min(leaf.size, 6), replace=False))

        def f(current, index=index, picked=picked):
            values = [np.array(a, copy=True) for a in leaves]
            values[index].reshape(-1)[picked] = current[0]
            return float(compiler.evaluate(graph, unflatten(tree, values), *data))

        numeric = numerical_grad(f, [leaf.reshape(-1)[picked]], 0)
        np.testing.assert_allclose(grad.reshape(-1)[picked], numeric, rtol=1e-5, atol=1e-7,
                                   err_msg=f"{name}: gradient of params leaf {index} at {picked}")


@pytest.mark.parametrize("name", SEED_EXAMPLES)
def test_short_training_run_lowers_the_loss(name):
    module, specs, params, data = _small(name)
    lr, optimizer = TRAINING[name]
    result = training.train(module, 30, lr, optimizer, specs=specs, params=params,
                            batch_fn=lambda step: data, cache=True, log=None)
    if result.backend != "compiled":
        pytest.xfail(reason=f"examples/{name}.py trained with the interpreter ({result.note})")
    assert len(result.losses) == 30 and all(np.isfinite(result.losses))
    assert result.losses[-1] < 0.7 * result.losses[0], result.losses


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_optimizers_minimize_a_quadratic(optimizer):
    target = {"a": np.array([1.0, -2.0], np.float32), "b": [np.float32(3.0)]}
    params = {"a": np.zeros(2, np.float32), "b": [np.float32(0.0)]}
    opt = training.make_optimizer(optimizer, 0.1)
    for _ in range(300):
        grads = {"a": params["a"] - target["a"], "b": [params["b"][0] - target["b"][0]]}
        params = opt.step(params, grads)
    assert params["a"].dtype == np.float32
    np.testing.assert_allclose(params["a"], target["a"], atol=1e-2)
    np.testing.assert_allclose(params["b"][0], 3.0, atol=1e-2)


def test_a_failing_compile_falls_back_to_the_interpreter(monkeypatch):
    import compiler.codegen as codegen

    module, specs, params, data = _small("deq")
    lines = []

    def refuse(graph, opt_level=2, cache=True):
        raise NotImplementedError("no lowering for fixed_point")

    monkeypatch.setattr(codegen, "compile", refuse)
    result = training.train(module, 5, 1e-2, "adam", specs=specs, params=params, batch_fn=lambda step: data,
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
    result = training.train(module, 3, 1e-2, "adam", specs=specs, params=params, batch_fn=lambda step: data,
                            log=None)
    assert result.backend == "interpreter" and "status 3" in result.note and len(result.losses) == 3


@pytest.mark.parametrize("name", SEED_EXAMPLES)
def test_script_trains_and_reports(name, _private_cache):
    env = dict(os.environ, PULLBACK_CACHE_DIR=_private_cache)
    result = subprocess.run([sys.executable, str(example_path(name)), "--steps", "3", "--cache"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "step     2  loss" in result.stdout
    assert "compiled: compile" in result.stdout and "median step" in result.stdout, result.stdout
