"""Ahead of time: a compiled training step saved, then loaded and called in a fresh
process that never imports networkx or the compiler."""
import pathlib
import subprocess
import sys
import textwrap

import numpy as np

import compiler
from compiler.models import load_model

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def test_saved_training_step_runs_in_a_process_without_the_compiler(tmp_path):
    model = load_model(EXAMPLES / "rnn.py")
    step = compiler.value_and_grad(model.trace())
    kernel = compiler.compile(step)
    artifact = tmp_path / "rnn.pbk"
    kernel.save(artifact)
    args = model.example_args(0)
    expected_loss, expected_grads = compiler.evaluate(step, *args)
    leaves = [np.asarray(a) for a in _leaves(args)]
    np.savez(tmp_path / "args.npz", *leaves)

    script = textwrap.dedent(f"""
        import sys, numpy as np, runtime
        from runtime.pytree import unflatten, treedef_from_text
        kernel = runtime.load({str(artifact)!r}, expected_sha256={kernel.sha256!r})
        stored = np.load({str(tmp_path / "args.npz")!r})
        leaves = [stored[f"arr_{{i}}"] for i in range(len(stored.files))]
        args = unflatten(treedef_from_text(kernel.manifest["in_tree"]), leaves)
        loss, grads = kernel(*args)
        bad = sorted(m for m in sys.modules if m == "networkx" or m.startswith(("networkx.", "compiler")))
        assert not bad, bad
        np.save({str(tmp_path / "loss.npy")!r}, loss)
        np.save({str(tmp_path / "gWh.npy")!r}, grads["Wh"])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(np.load(tmp_path / "loss.npy"), expected_loss, rtol=2e-5)
    np.testing.assert_allclose(np.load(tmp_path / "gWh.npy"), expected_grads["Wh"], rtol=2e-4, atol=2e-6)


def _leaves(args):
    from runtime.pytree import flatten

    return flatten(tuple(args))[0]
