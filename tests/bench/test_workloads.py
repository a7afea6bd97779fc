"""Every hand-written numpy baseline in bench/ must compute pullback's gradients: checked
against the reference interpreter (compiler.evaluate of value_and_grad) in float64."""
from __future__ import annotations

import numpy as np
import pytest

import compiler
from bench.workloads import BUILDERS, PRESETS, PullbackOps, _segment_sum, build


def _reference(wl):
    graph = compiler.trace(wl.model(PullbackOps()), *wl.args(), name=wl.name)
    return compiler.evaluate(compiler.value_and_grad(graph), *wl.args())


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("seed", [0, 1])
def test_numpy_baseline_matches_interpreter(name, seed):
    wl = build(name, "test", dtype=np.float64, seed=seed)
    missing = wl.missing_ops()
    if missing:
        pytest.skip(f"{name} needs compiler.ops.{', '.join(missing)}, not written yet")
    loss, grads = _reference(wl)
    ref_loss, ref_grads = wl.numpy_step(*wl.args())
    assert sorted(ref_grads) == sorted(wl.params) == sorted(grads)
    np.testing.assert_allclose(ref_loss, loss, rtol=1e-10)
    for key in wl.params:
        assert ref_grads[key].shape == wl.params[key].shape, key
        assert ref_grads[key].dtype == np.float64, key
        np.testing.assert_allclose(ref_grads[key], grads[key], rtol=1e-9, atol=1e-12, err_msg=f"d{key}")


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_baseline_keeps_float32(name):
    wl = build(name, "test")
    loss, grads = wl.numpy_step(*wl.args())
    assert np.asarray(loss).dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())
    assert wl.flops > 0


def test_presets_name_every_workload():
    for preset in PRESETS.values():
        assert set(preset) == set(BUILDERS)


def test_unknown_workload():
    with pytest.raises(KeyError, match="unknown workload"):
        build("transformer")


def test_segment_sum_matches_add_at():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((12, 3))
    ids = np.array([4, 0, 4, 2, 2, 2, 0, 6, 4, 0, 1, 6])  # duplicates, unsorted; segments 3 and 5 empty
    want = np.zeros((7, 3))
    np.add.at(want, ids, data)
    np.testing.assert_allclose(_segment_sum(data, ids, 7), want, rtol=1e-12)
    assert _segment_sum(data[:0], ids[:0], 3).shape == (3, 3)
