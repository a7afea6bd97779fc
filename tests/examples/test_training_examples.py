"""The classic examples as training scripts (mlp, rnn, lstm) at small sizes: compiled
gradients match the interpreter, float64 gradients match finite differences, a short
training run lowers the loss, and each file trains from the command line.
(The checks themselves are in tests/examples/support.py, shared with the seed examples.)"""
from __future__ import annotations

import numpy as np
import pytest

import compiler
from runtime.pytree import flatten
from tests.examples.support import (
    assert_first_loss_is_the_initial_loss, example_checks, example_module, run_example, small,
)

TRAINING_EXAMPLES = ("mlp", "rnn", "lstm")


@pytest.mark.parametrize("name", TRAINING_EXAMPLES)
def test_small_batches_fit_the_small_specs(name):
    module, specs, params, data = small(name)
    spec_leaves, spec_tree = flatten(specs[0], is_leaf=lambda x: isinstance(x, compiler.Spec))
    leaves, tree = flatten(params)
    assert tree == spec_tree
    assert [np.shape(a) for a in leaves] == [s.shape for s in spec_leaves]
    assert [np.shape(d) for d in data] == [s.shape for s in specs[1:]]
    assert all(np.isfinite(d).all() for d in data)


(test_compiled_gradients_match_the_interpreter, test_float64_gradients_match_finite_differences,
 test_short_training_run_lowers_the_loss) = example_checks(TRAINING_EXAMPLES)


def test_the_tasks_are_what_the_docstrings_say():
    rnn, lstm, mlp = example_module("rnn"), example_module("lstm"), example_module("mlp")
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
def test_script_trains_and_reports(name):
    stdout = run_example(name, "--steps", "3", "--cache")
    assert "forward IR has" in stdout
    assert "step     2  loss" in stdout
    assert "compiled: compile" in stdout and "median step" in stdout, stdout
    assert_first_loss_is_the_initial_loss(name, stdout)
