"""The code in README.md runs as shown."""
from __future__ import annotations

import re

import numpy as np

import compiler
from compiler.models import load_model
from tests.examples.support import ROOT


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_the_thirty_second_example_runs(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # it saves step.pbk
    block = next(b for b in _python_blocks() if "compiler.trace(" in b)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["grads"]["W"].shape == (8, 4)
    assert np.isclose(namespace["loss_value"], compiler.evaluate(namespace["graph"], namespace["params"],
                                                                 namespace["x"], namespace["y"]))
    assert "graph loss" in capsys.readouterr().out
    np.testing.assert_allclose(namespace["loss_native"], namespace["loss_value"], rtol=1e-5)
    np.testing.assert_allclose(namespace["grads_native"]["W"], namespace["grads"]["W"], rtol=1e-4, atol=1e-6)
    import runtime

    reloaded = runtime.load(tmp_path / "step.pbk")
    np.testing.assert_allclose(reloaded(namespace["params"], namespace["x"], namespace["y"])[0], namespace["loss_value"],
                               rtol=1e-5)


def test_the_model_file_example_is_a_valid_model(tmp_path):
    block = next(b for b in _python_blocks() if b.startswith("# linear.py"))
    path = tmp_path / "linear.py"
    path.write_text(block)
    model = load_model(path)
    graph = model.trace()
    value, grads = compiler.evaluate(compiler.value_and_grad(graph), *model.example_args(seed=0))
    assert np.isfinite(value) and grads["W"].shape == (8, 1)


def test_the_ir_shown_is_what_the_printer_prints():
    text = (ROOT / "README.md").read_text()
    shown = re.search(r"## Reading the IR.*?```\n(graph loss\n.*?)```", text, re.S).group(1)
    block = next(b for b in _python_blocks() if "compiler.trace(" in b)
    source = block.split("params_spec")[0]
    namespace: dict = {}
    exec(compile(source, "model.py", "exec"), namespace)  # noqa: S102
    graph = compiler.trace(namespace["loss"], {"W": compiler.Spec((8, 4)), "b": compiler.Spec((4,))},
                           compiler.Spec((32, 8)), compiler.Spec((32, 4)))
    assert compiler.dump(graph) == shown
