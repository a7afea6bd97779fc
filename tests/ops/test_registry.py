"""Every registered op is complete: rules present, samples present, gradients proven."""
import numpy as np
import pytest

import compiler
from compiler.ops.registry import all_ops
from tests.gradcheck import check_grad
from tests.ops.samples import ALL_SAMPLES

NO_SAMPLE_NEEDED = {"input"}  # every graph has inputs


def test_every_op_has_shape_rule_and_reference():
    for name, opdef in all_ops().items():
        if name == "input":
            continue
        assert opdef.infer is not None, name
        assert opdef.reference is not None, name


def test_every_differentiable_op_has_a_vjp_rule():
    missing = [name for name, opdef in all_ops().items()
               if opdef.has_gradient and opdef.vjp is None and opdef.kind != "source"]
    assert not missing, f"ops without VJP rules: {missing}"


def test_every_op_has_a_sample():
    covered = {sample.op for sample in ALL_SAMPLES}
    missing = sorted(set(all_ops()) - covered - NO_SAMPLE_NEEDED)
    assert not missing, f"ops without samples in tests/ops/samples_*.py: {missing}"


@pytest.mark.parametrize("sample", ALL_SAMPLES, ids=lambda s: s.id)
def test_sample_exercises_its_op(sample):
    graph = compiler.trace(sample.fn, *[np.asarray(a) for a in sample.args])
    assert sample.op in {node.op for _, node in graph.nodes()}, f"{sample.id} does not produce a {sample.op} op"


GRAD_SAMPLES = [s for s in ALL_SAMPLES if s.differentiable]


@pytest.mark.parametrize("sample", GRAD_SAMPLES, ids=lambda s: s.id)
def test_vjp_matches_finite_differences(sample):
    """Every VJP rule against central differences in float64."""
    if not any(np.asarray(a).dtype.kind == "f" for a in sample.args):
        pytest.skip("no float argument")
    check_grad(sample.fn, sample.args, rtol=1e-5, atol=1e-7)
