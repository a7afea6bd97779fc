"""What the example and CLI tests share: where the examples are, which parts of the
compiler exist yet (tests of a missing part skip with a reason saying which part), and the
checks every training example gets at a small size (compiled gradients, float64 finite
differences, a short training run, the script itself)."""
from __future__ import annotations

import functools
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np
import pytest

import compiler
from compiler import ops
from compiler.models import load_model
from runtime.pytree import flatten, unflatten
from tests.gradcheck import numerical_grad

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = ROOT / "examples"
EXAMPLES = ("chain_rule", "mlp", "rnn", "lstm")

# The ops each example calls beyond the elementwise ones (getitem is Tensor.__getitem__).
_NEEDS = {
    "chain_rule": (),
    "mlp": ("matmul", "sum", "log_softmax", "reshape"),
    "rnn": ("matmul", "mean", "getitem"),
    "lstm": ("matmul", "mean", "getitem", "concatenate"),
}


def example_path(name: str) -> Path:
    return EXAMPLES_DIR / f"{name}.py"


def missing_ops(name: str) -> list[str]:
    return [op for op in _NEEDS[name] if not hasattr(ops, op)]


def require_ops(name: str) -> None:
    missing = missing_ops(name)
    if missing:
        pytest.skip(f"examples/{name}.py needs ops not written yet: {', '.join(missing)}")


@functools.lru_cache(maxsize=None)
def _tiny_graph() -> compiler.Graph:
    return compiler.trace(lambda x: ops.exp(x) * 2.0, compiler.Spec((2,)))


def _implemented(call: Callable[[], Any]) -> bool:
    try:
        call()
    except NotImplementedError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def printer_available() -> bool:
    return _implemented(lambda: compiler.dump(_tiny_graph()))


@functools.lru_cache(maxsize=None)
def parser_available() -> bool:
    return printer_available() and _implemented(lambda: compiler.parse(compiler.dump(_tiny_graph())))


@functools.lru_cache(maxsize=None)
def dot_available() -> bool:
    return _implemented(lambda: compiler.to_dot(_tiny_graph()))


def codegen_available() -> bool:
    try:
        import compiler.codegen as codegen
    except ModuleNotFoundError as exc:
        if exc.name != "compiler.codegen":
            raise
        return False
    return all(hasattr(codegen, attr) for attr in ("compile", "llvm_ir", "assembly"))


def runtime_load_available() -> bool:
    import runtime

    return hasattr(runtime, "load")


def require(condition: bool, what: str) -> None:
    if not condition:
        pytest.skip(f"{what} is not written yet")


# ------------------------------------------------------- training examples, small
# Keyword arguments of specs(), init_params() and make_batch() for a small size. The rnn and
# lstm sequences are longer than the rnn's longest echo delay (4), so every target channel
# is exercised.
SMALL = {
    "mlp": ({"sizes": (6, 5, 5, 3), "batch": 8}, {"sizes": (6, 5, 5, 3)}, {"sizes": (6, 5, 5, 3), "batch": 8}),
    "rnn": ({"steps": 6, "batch": 3, "n_in": 3, "hidden": 5, "n_out": 2}, {"n_in": 3, "hidden": 5, "n_out": 2},
            {"steps": 6, "batch": 3, "n_in": 3, "n_out": 2}),
    "lstm": ({"steps": 6, "batch": 3, "n_in": 4, "hidden": 5, "n_out": 2}, {"n_in": 4, "hidden": 5, "n_out": 2},
             {"steps": 6, "batch": 3, "n_in": 4, "n_out": 2}),
    "cnn": ({"batch": 4, "size": 8, "channels": (2, 3)}, {"size": 8, "channels": (2, 3)}, {"batch": 4, "size": 8}),
    "gnn": ({"nodes": 6, "edges": 12, "features": 3, "hidden": 5}, {"features": 3, "hidden": 5},
            {"nodes": 6, "edges": 12, "features": 3}),
    "hypernetwork": ({"tasks": 3, "points": 5, "embed": 3, "hyper_hidden": 4, "target_hidden": 3},
                     {"tasks": 3, "embed": 3, "hyper_hidden": 4, "target_hidden": 3}, {"tasks": 3, "points": 5}),
    "vae": ({"batch": 5, "dim": 4, "hidden": 6, "latent": 2}, {"dim": 4, "hidden": 6, "latent": 2},
            {"batch": 5, "dim": 4, "latent": 2}),
    "deq": ({"batch": 5, "n_in": 3, "hidden": 4}, {"n_in": 3, "hidden": 4}, {"batch": 5, "n_in": 3}),
}
TRAINING_RUN = (30, 1e-2, "adam")  # steps, learning rate, optimizer of the short training run


@functools.lru_cache(maxsize=None)
def training() -> ModuleType:
    """examples/training.py (not a package module: the examples import it as a sibling)."""
    spec = importlib.util.spec_from_file_location("_pullback_examples_training", EXAMPLES_DIR / "training.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while it executes
    spec.loader.exec_module(module)
    return module


def example_module(name: str) -> ModuleType:
    return load_model(example_path(name)).module


def cast_floats(tree: Any, dtype: str) -> Any:
    leaves, tree_def = flatten(tree)
    return unflatten(tree_def, [np.asarray(a).astype(dtype) if np.asarray(a).dtype.kind == "f" else np.asarray(a)
                                for a in leaves])


def small(name: str, dtype: str = "float32", seed: int = 0) -> tuple[ModuleType, tuple, Any, tuple]:
    """(module, specs, params, data) of an example at its SMALL size, arrays cast to dtype."""
    module = example_module(name)
    spec_kw, init_kw, batch_kw = SMALL[name]
    specs = module.specs(dtype=dtype, **spec_kw)
    params = cast_floats(module.init_params(seed, **init_kw), dtype)
    data = tuple(cast_floats(d, dtype) for d in module.make_batch(seed, **batch_kw))
    return module, specs, params, data


def check_compiled_gradients(name: str) -> None:
    """The compiled training step's loss and gradients equal the interpreter's."""
    module, specs, params, data = small(name)
    step = training().value_and_grad_fn(module, specs, cache=True)
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


def check_float64_gradients(name: str) -> None:
    """The interpreter's float64 gradients equal central finite differences."""
    module, specs, params, data = small(name, "float64")
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


def check_short_training_run(name: str) -> None:
    """TRAINING_RUN's steps on one small batch cut the loss by 30% or more."""
    module, specs, params, data = small(name)
    steps, lr, optimizer = TRAINING_RUN
    result = training().train(module, steps, lr, optimizer, specs=specs, params=params,
                              batch_fn=lambda step: data, cache=True, log=None)
    if result.backend != "compiled":
        pytest.xfail(reason=f"examples/{name}.py trained with the interpreter ({result.note})")
    assert len(result.losses) == steps and all(np.isfinite(result.losses))
    assert result.losses[-1] < 0.7 * result.losses[0], result.losses


def example_checks(names: tuple[str, ...]) -> tuple[Callable[[str], None], ...]:
    """(compiled gradients, float64 gradients, short training run) as test functions
    parametrized over `names`: new functions on each call, for a test module to bind to
    its own test_* names (marks stick to a function object, so modules cannot share one)."""
    return tuple(pytest.mark.parametrize("name", names)(_as_test(check))
                 for check in (check_compiled_gradients, check_float64_gradients, check_short_training_run))


def _as_test(check: Callable[[str], None]) -> Callable[[str], None]:
    def test(name: str) -> None:
        check(name)

    test.__doc__ = check.__doc__
    return test


def run_example(name: str, *args: str) -> str:
    """Run examples/<name>.py as a script from the repository root; its stdout."""
    result = subprocess.run([sys.executable, str(example_path(name)), *args], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout


def assert_first_loss_is_the_initial_loss(name: str, stdout: str) -> None:
    """The script's step-0 loss is the loss of init_params(0) on the first training batch."""
    model = load_model(example_path(name))
    first = float(re.search(r"step     0  loss (\S+)", stdout).group(1))
    expected = compiler.evaluate(model.trace(), model.init_params(0), *model.module.train_batch(0, 0))
    np.testing.assert_allclose(first, float(expected), rtol=1e-4, atol=1e-5)
