"""value_and_grad(remat=True): same values, forward intermediates recomputed in the backward."""
import pathlib

import numpy as np

import compiler
from compiler.models import load_model

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def test_remat_keeps_values_and_recomputes_cheap_ops():
    model = load_model(EXAMPLES / "rnn.py")
    forward = model.trace()
    plain = compiler.value_and_grad(forward)
    remat = compiler.value_and_grad(forward, remat=True)
    recomputed = [n for _, n in remat.nodes() if (n.loc or "").startswith("recompute ")]
    assert recomputed, "the min-cut should recompute some cheap forward values"
    assert not any(n.op == "matmul" for n in recomputed)
    args = model.example_args(0)
    (loss_a, grads_a), (loss_b, grads_b) = compiler.evaluate(plain, *args), compiler.evaluate(remat, *args)
    np.testing.assert_array_equal(loss_a, loss_b)
    for name in grads_a:
        np.testing.assert_allclose(grads_a[name], grads_b[name], rtol=1e-6, atol=1e-7)
    kernel = compiler.compile(remat)
    loss_c, grads_c = kernel(*args)
    np.testing.assert_allclose(loss_c, loss_a, rtol=1e-5)
