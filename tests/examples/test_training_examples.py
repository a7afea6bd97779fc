"""The classic examples as training scripts (mlp, rnn, lstm) at small sizes: compiled
gradients match the interpreter, float64 gradients match finite differences, a short
training run lowers the loss, and each file trains from the command line."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import compiler
from compiler.models import load_model
from runtime.pytree import flatten, unflatten
from tests.examples.support import ROOT, example_path
from tests.gradcheck import numerical_grad

TRAINING_EXAMPLES = ("mlp", "rnn", "lstm")

# Small sizes: keyword arguments of specs(), init_params() and make_batch(). The sequences
# are longer than the rnn's longest echo delay (4), so every target channel is exercised.
SMALL = {
    "mlp": ({"sizes": (6, 5, 5, 3), "batch": 8}, {"sizes": (6, 5, 5, 3)}, {"sizes": (6, 5, 5, 3), "batch": 8}),
    "rnn": ({"steps": 6, "batch": 3, "n_in": 3, "hidden": 5, "n_out": 2}, {"n_in": 3, "hidden": 5, "n_out": 2},
            {"steps": 6, "batch": 3, "n_in": 3, "n_out": 2}),
    "lstm": ({"steps": 6, "batch": 3, "n_in": 4, "hidden": 5, "n_out": 2}, {"n_in": 4, "hidden": 5, "n_out": 2},
             {"steps": 6, "batch": 3, "n_in": 4, "n_out": 2}),
}
# (learning rate, optimizer) for the short training run.
TRAINING = {"mlp": (1e-2, "adam"), "rnn": (1e-2, "adam"), "lstm": (1e-2, "adam")}


def _load_training():
    spec = importlib.util.spec_from_file_location("_pullback_examples_training_classic",
                                                  ROOT / "examples" / "training.py")
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


def _cast(tree, dtype):
    leaves, tree_def = flatten(tree)
    return unflatten(tree_def, [np.asarray(a).astype(dtype) if np.asarray(a).dtype.kind == "f" else np.asarray(a)
                                for a in leaves])


def _small(name, dtype="float32", seed=0):
    """(module, specs, params, data) at the small size, arrays cast to dtype."""
    module = _module(name)
    spec_kw, init_kw, batch_kw = SMALL[name]
    specs = module.specs(dtype=dtype, **spec_kw)
    params = _cast(module.init_params(seed, **init_kw), dtype)
    data = tuple(_cast(d, dtype) for d in module.make_batch(seed, **batch_kw))
    return module, specs, params, data


@pytest.mark.parametrize("name", TRAINING_EXAMPLES)
def test_small_batches_fit_the_small_specs(name):
    module, specs, params, data = _small(name)
    spec_leaves, spec_tree = flatten(specs[0], is_leaf=lambda x: isinstance(x, compiler.Spec))
    leaves, tree = flatten(params)
    assert tree == spec_tree
    assert [np.shape(a) for a in leaves] == [s.shape for s in spec_leaves]
    assert [np.shape(d) for d in data] == [s.shape for s in specs[1:]]
    assert all(np.isfinite(d).all() for d in data)


@pytest.mark.parametrize("name", TRAINING_EXAMPLES)
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
        assert np.shape(a) == np.shape(b), path
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=f"gradient of {path}")


@pytest.mark.parametrize("name", TRAINING_EXAMPLES)
def test_float64_gradients_match_finite_differences(name):
    module, specs, params, data = _small(name, "float64")
    graph = compiler.trace(module.loss, *specs, name=name)
    analytic = compiler.evaluate(compiler.grad(graph), params, *data)
    leaves, tree = flatten(params)
    grads, _ = flatten(analytic)
    rng = np.random.default_rng(0)
    for index, (leaf, grad) in enumerate(zip(leaves, grads)):
        assert grad.dtype == np.float64
        # At most 6 coordinates per leaf keep the interpreter calls few.
        picked = np.sort(rng.choice(leaf.size, min(leaf.size, 6), replace=False))

        def f(current, index=index, picked=picked):
            values = [np.array(a, copy=True) for a in leaves]
            values[index].reshape(-1)[picked] = current[0]
            return float(compiler.evaluate(graph, unflatten(tree, values), *data))

        numeric = numerical_grad(f, [leaf.reshape(-1)[picked]], 0)
        np.testing.assert_allclose(grad.reshape(-1)[picked], numeric, rtol=1e-5, atol=1e-7,
                                   err_msg=f"{name}: gradient of params leaf {index} at {picked}")


@pytest.mark.parametrize("name", TRAINING_EXAMPLES)
def test_short_training_run_lowers_the_loss(name):
    module, specs, params, data = _small(name)
    lr, optimizer = TRAINING[name]
    result = training.train(module, 30, lr, optimizer, specs=specs, params=params,
                            batch_fn=lambda step: data, cache=True, log=None)
    if result.backend != "compiled":
        pytest.xfail(reason=f"examples/{name}.py trained with the interpreter ({result.note})")
    assert len(result.losses) == 30 and all(np.isfinite(result.losses))
    assert result.losses[-1] < 0.7 * result.losses[0], result.losses


def test_the_tasks_are_what_the_docstrings_say():
    rnn, lstm, mlp = _module("rnn"), _module("lstm"), _module("mlp")
    xs, targets = rnn.make_batch(0)
    for k, delay in enumerate((1, 2, 3, 4)):  # output k echoes input channel k, k + 1 steps late
        np.testing.assert_array_equal(targets[delay:, :, k], xs[:-delay, :, k])
        assert not targets[:delay, :, k].any()
    xs, target = lstm.make_batch(0)
    n_out = target.shape[1]
    markers = xs[:, :, n_out:]
    assert (markers.sum(axis=0) == 1).all()  # one mark per channel and sequence
    when = markers.argmax(axis=0)
    rows, channels = np.indices(target.shape)
    np.testing.assert_array_equal(target, xs[when, rows, channels])
    x, labels = mlp.make_batch(0)
    directions = mlp.directions(x.shape[1], mlp.SIZES[-1])
    np.testing.assert_array_equal(np.argmax(np.abs(x @ directions), axis=1), labels)
    np.testing.assert_array_equal(np.argmax(np.abs(-x @ directions), axis=1), labels)  # label(-x) = label(x)
    assert len(np.unique(labels)) > 5


@pytest.mark.parametrize("name", TRAINING_EXAMPLES)
def test_script_trains_and_reports(name, _private_cache):
    env = dict(os.environ, PULLBACK_CACHE_DIR=_private_cache)
    result = subprocess.run([sys.executable, str(example_path(name)), "--steps", "3", "--cache"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "forward IR has" in result.stdout
    assert "step     2  loss" in result.stdout
    assert "compiled: compile" in result.stdout and "median step" in result.stdout, result.stdout
    # The first step's loss is the loss of init_params(0) on the first training batch.
    model = load_model(example_path(name))
    first = float(re.search(r"step     0  loss (\S+)", result.stdout).group(1))
    expected = compiler.evaluate(model.trace(), model.init_params(0), *model.module.train_batch(0, 0))
    np.testing.assert_allclose(first, float(expected), rtol=1e-4, atol=1e-5)
