"""Saved activations: the residual list, the min-cut rematerialization plan, its report."""
import numpy as np
import pytest

import compiler
from compiler import Spec, ops
from compiler.autodiff.saved import (
    apply_rematerialization,
    forward_backward_split,
    identity_plan,
    never_recompute_reason,
    plan_rematerialization,
    saved_report,
    saved_values,
)
from compiler.errors import PullbackError
from runtime.pytree import flatten

F64 = "float64"
BACKWARD_LOCS = ("grad ", "fan-in of ", "seed:", "zero gradient")


def _line(marker):
    """'test_saved.py:N' of the line holding `marker` (a comment on a traced line)."""
    with open(__file__) as f:
        for number, text in enumerate(f, 1):
            if text.rstrip().endswith("# " + marker):
                return f"test_saved.py:{number}"
    raise AssertionError(marker)


def _ops(graph, ids):
    return [graph.node(i).op for i in ids]


def _peak_live_bytes(graph):
    """Peak bytes of live computed values when run in topo_order, freeing at last use (as the interpreter)."""
    remaining = {n: len(graph.uses(n)) for n in graph.nx}
    keep, live, peak = set(graph.outputs), {}, 0
    for node_id in graph.topo_order():
        node = graph.node(node_id)
        if node.op != "input":
            live[node_id] = node.type.nbytes
        peak = max(peak, sum(live.values()))
        for o in node.operands:
            remaining[o] -= 1
            if remaining[o] == 0 and o not in keep:
                live.pop(o, None)
    return peak


def _assert_same(a, b):
    """Bit-for-bit equal pytrees of arrays: recomputation runs the very same ops."""
    la, lb = flatten(a)[0], flatten(b)[0]
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------- models
def _mlp(params, x, onehot):
    h = ops.relu(x @ params["W1"] + params["b1"])  # mlp layer 1
    h = ops.tanh(h @ params["W2"] + params["b2"])  # mlp layer 2
    logits = h @ params["W3"] + params["b3"]
    return -ops.mean(ops.sum(onehot * ops.log_softmax(logits, axis=-1), axis=-1))  # mlp loss


def _mlp_setup(batch=8, sizes=(6, 5, 5, 3), dtype="float32"):
    n_in, h1, h2, n_out = sizes
    shapes = {"W1": (n_in, h1), "b1": (h1,), "W2": (h1, h2), "b2": (h2,), "W3": (h2, n_out), "b3": (n_out,)}
    specs = ({k: Spec(s, dtype) for k, s in shapes.items()}, Spec((batch, n_in), dtype), Spec((batch, n_out), dtype))
    rng = np.random.default_rng(0)
    params = {k: rng.normal(size=s).astype(dtype) for k, s in shapes.items()}
    x = rng.normal(size=(batch, n_in)).astype(dtype)
    onehot = np.eye(n_out, dtype=dtype)[rng.integers(0, n_out, size=batch)]
    return compiler.trace(_mlp, *specs), (params, x, onehot)


def _chain(x):
    return ops.sum(ops.tanh(ops.exp(ops.sin(x))))  # chain


def _rnn(params, xs, ys):
    h = ops.zeros((xs.shape[1], params["Wh"].shape[0]), xs.dtype)
    total = 0.0
    for t in range(xs.shape[0]):
        h = ops.tanh(xs[t] @ params["Wx"] + h @ params["Wh"] + params["b"])  # rnn step
        total = total + ops.sum((h - ys[t]) ** 2)
    return total / xs.shape[0]


def _rnn_setup(steps=8, batch=3, n_in=4, hidden=5, dtype=F64):
    shapes = {"Wx": (n_in, hidden), "Wh": (hidden, hidden), "b": (hidden,)}
    specs = ({k: Spec(s, dtype) for k, s in shapes.items()},
             Spec((steps, batch, n_in), dtype), Spec((steps, batch, hidden), dtype))
    rng = np.random.default_rng(1)
    params = {k: rng.normal(size=s) * 0.5 for k, s in shapes.items()}
    return compiler.trace(_rnn, *specs), (params, rng.normal(size=(steps, batch, n_in)),
                                          rng.normal(size=(steps, batch, hidden)))


# ---------------------------------------------------------------- split and residuals
def test_split_shares_ids_and_backward_nodes_have_backward_locs():
    forward, _ = _mlp_setup()
    joint = compiler.grad(forward)
    fwd, bwd = forward_backward_split(joint, forward)
    assert set(fwd) <= set(forward.nx) and set(fwd) | set(bwd) == set(joint.nx) and not set(fwd) & set(bwd)
    assert min(bwd) > max(fwd)
    assert all(joint.node(b).loc.startswith(BACKWARD_LOCS) for b in bwd)
    residuals = saved_values(joint, forward)
    assert set(residuals) <= set(fwd)
    assert all(any(r in joint.node(b).operands for b in bwd) for r in residuals)


def test_split_refuses_a_rewired_graph():
    forward, _ = _mlp_setup()
    joint = compiler.grad(forward)
    first_op = min(n for n in forward.nx if forward.node(n).op == "add")
    joint.replace_node(first_op, op="sub")
    with pytest.raises(PullbackError, match="right after grad"):
        plan_rematerialization(joint, forward)


def test_vjp_cotangent_inputs_are_backward_values():
    forward = compiler.trace(lambda x: ops.tanh(ops.exp(x)), Spec((3,), F64))
    joint = compiler.vjp(forward)
    fwd, bwd = forward_backward_split(joint, forward)
    ct = [i for i in joint.inputs if joint.node(i).attrs["name"] == "ct.0"]
    assert ct and ct[0] in bwd
    plan = plan_rematerialization(joint, forward)
    x, ct_value = np.linspace(-1, 1, 3), np.ones(3)
    remat = apply_rematerialization(joint, forward, plan)
    _assert_same(compiler.evaluate(remat, x, ct_value), compiler.evaluate(joint, x, ct_value))


# ---------------------------------------------------------------- the min cut
def test_mlp_never_recomputes_matmuls_and_saves_less():
    forward, args = _mlp_setup()
    joint = compiler.grad(forward)
    plan = plan_rematerialization(joint, forward)
    assert "matmul" not in _ops(joint, plan.recomputed)
    assert _ops(joint, plan.recomputed) == ["relu"]
    # relu's mask needs its input, which is kept rather than the matmul (same bytes, less
    # recompute); tanh' reads tanh's own output, which the next matmul's gradient needs too.
    activations = [v for v in plan.saved if v not in plan.free]
    assert _ops(joint, activations) == ["add", "tanh", "log_softmax"]
    assert plan.saved_bytes == (8 * 5 + 8 * 5 + 8 * 3) * 4 < plan.before_bytes
    remat = apply_rematerialization(joint, forward, plan)
    compiler.verify(remat)
    _assert_same(compiler.evaluate(remat, *args), compiler.evaluate(joint, *args))
    copies = [n for n, node in remat.nodes() if (node.loc or "").startswith("recompute ")]
    assert [remat.node(c).op for c in copies] == ["relu"]
    assert remat.node(copies[0]).loc.startswith("recompute ") and "test_saved.py:" in remat.node(copies[0]).loc


def test_elementwise_chain_saves_only_the_input():
    forward = compiler.trace(_chain, Spec((7,), F64))
    x = np.linspace(-2, 2, 7)
    for make in (compiler.grad, compiler.value_and_grad):
        joint = make(forward)
        plan = plan_rematerialization(joint, forward)
        assert _ops(joint, plan.saved) == ["input"] and plan.free == plan.saved
        assert plan.saved_bytes == 0 and plan.before_bytes == 2 * 7 * 8  # exp and tanh outputs
        assert sorted(_ops(joint, plan.recomputed)) == ["exp", "sin", "tanh"]
        remat = apply_rematerialization(joint, forward, plan)
        compiler.verify(remat)
        _assert_same(compiler.evaluate(remat, x), compiler.evaluate(joint, x))
        # No backward node reads a forward intermediate any more: they die in the forward pass.
        fwd = set(forward_backward_split(joint, forward)[0])
        for node_id, node in remat.nodes():
            if node_id not in fwd:
                assert all(o not in fwd or remat.node(o).op == "input" for o in node.operands)


def test_identity_plan_is_the_residual_list():
    forward, args = _mlp_setup()
    joint = compiler.value_and_grad(forward)
    plan = identity_plan(joint, forward)
    assert plan.saved == saved_values(joint, forward) and plan.recomputed == []
    assert plan.saved_bytes == plan.before_bytes == plan_rematerialization(joint, forward).before_bytes
    _assert_same(compiler.evaluate(apply_rematerialization(joint, forward, plan), *args),
                 compiler.evaluate(joint, *args))


def test_rnn_keeps_one_hidden_state_per_step_and_lowers_peak_memory():
    steps = 8
    forward, args = _rnn_setup(steps)
    joint = compiler.value_and_grad(forward)
    plan = plan_rematerialization(joint, forward)
    activations = [v for v in plan.saved if v not in plan.free]
    assert _ops(joint, activations) == ["tanh"] * steps
    assert plan.saved_bytes == steps * 3 * 5 * 8 < plan.before_bytes
    assert "matmul" not in _ops(joint, plan.recomputed)
    remat = apply_rematerialization(joint, forward, plan)
    compiler.verify(remat)
    _assert_same(compiler.evaluate(remat, *args), compiler.evaluate(joint, *args))
    assert _peak_live_bytes(remat) < _peak_live_bytes(joint)
    report = saved_report(joint, forward, plan)
    assert report.count(_line("rnn step")) == steps


def test_reductions_that_shrink_their_input_are_never_recomputed():
    graph = compiler.trace(lambda x: ops.sum(ops.log_softmax(x, axis=1)) + ops.mean(x), Spec((4, 6), F64))
    by_op = {node.op: n for n, node in graph.nodes()}
    assert never_recompute_reason(graph, by_op["log_softmax"]) is None
    assert "4x" in never_recompute_reason(graph, by_op["mean"])
    assert "never recomputed" in never_recompute_reason(
        compiler.trace(lambda a: a @ a, Spec((2, 2))), 1)


def test_repeated_steps_share_one_cut_yet_every_step_is_planned():
    forward, _ = _rnn_setup(steps=6)
    joint = compiler.grad(forward)
    plan = plan_rematerialization(joint, forward)
    tanhs = [n for n, node in forward.nodes() if node.op == "tanh"]
    assert [v for v in plan.saved if v not in plan.free] == tanhs


# ---------------------------------------------------------------- budget
def test_budget_met_or_reported_with_the_blocking_ops():
    forward, _ = _mlp_setup()
    joint = compiler.grad(forward)
    best = plan_rematerialization(joint, forward).saved_bytes
    ok = plan_rematerialization(joint, forward, memory_budget_bytes=best)
    assert ok.within_budget and ok.warning is None
    ok.check_budget()
    tight = plan_rematerialization(joint, forward, memory_budget_bytes=best - 1)
    assert not tight.within_budget and tight.saved_bytes == best  # still the best plan
    assert "cannot be met" in tight.warning and f"{best:,} bytes" in tight.warning
    with pytest.raises(PullbackError, match="cannot be met"):
        tight.check_budget()
    assert "warning: memory budget" in saved_report(joint, forward, tight)


def test_budget_names_never_recomputed_values_when_they_block_it():
    def loss(x, w):
        return ops.sum(ops.tanh(x @ w))  # blocked by matmul

    forward = compiler.trace(loss, Spec((4, 4)), Spec((4, 4)))
    joint = compiler.grad(forward, argnums=1)
    plan = plan_rematerialization(joint, forward, memory_budget_bytes=0)
    # tanh' reads tanh's output; recomputing it needs the matmul, which is never recomputed.
    assert _ops(joint, [v for v in plan.saved if v not in plan.free]) == ["tanh"]
    assert f"recomputing matmul @ {_line('blocked by matmul')} (64 bytes)" in plan.warning
    with pytest.raises(PullbackError, match="non-negative int"):
        plan_rematerialization(joint, forward, memory_budget_bytes=-1)


# ---------------------------------------------------------------- report
def test_report_lists_shapes_bytes_sources_and_totals():
    forward, _ = _mlp_setup()
    joint = compiler.grad(forward)
    report = saved_report(joint, forward)
    lines = report.splitlines()
    assert lines[0] == "saved activations of grad__mlp"
    assert lines[1].split() == ["value", "op", "type", "bytes", "note", "source"]
    names = compiler.ir.printer.value_names(joint)
    rows = {line.split()[0]: line for line in lines[2:] if line.startswith("  %")}
    for v in plan_rematerialization(joint, forward).saved:
        assert "%" + names[v] in rows
    layer1 = [r for r in rows.values() if _line("mlp layer 1") in r]
    assert len(layer1) == 1 and " add " in layer1[0] and "f32[8,5]" in layer1[0] and " 160 " in layer1[0]
    assert any("log_softmax" in r and "f32[8,3]" in r and "96" in r and _line("mlp loss") in r for r in rows.values())
    assert any(r.split()[1] == "input" and "alive anyway" in r for r in rows.values())
    assert "recomputed in the backward pass: 1 value(s), 160 bytes" in report
    assert "before rematerialization: 576 bytes in 4 activation(s)" in report
    assert lines[-1].startswith("total saved: 416 bytes in 3 activation(s)")


def test_report_of_a_matmul_residual_says_why_it_is_kept():
    def loss(x, w):
        return ops.sum(ops.square(x @ w))

    forward = compiler.trace(loss, Spec((4, 4)), Spec((4, 4)))
    joint = compiler.grad(forward, argnums=1)
    report = saved_report(joint, forward)
    assert "matmul is never recomputed" in report


def _recurrence(p, xs):
    h = ops.zeros(xs.shape[1:], xs.dtype)
    for t in range(xs.shape[0]):
        h = ops.tanh(h * p + xs[t]) + ops.sin(h) * 0.5  # elementwise step
    return ops.sum(h)


def test_long_elementwise_recurrences_are_checkpointed_not_recomputed_whole():
    from compiler.autodiff import saved

    steps = 30
    forward = compiler.trace(_recurrence, Spec((2, 3), F64), Spec((steps, 2, 3), F64))
    joint = compiler.value_and_grad(forward)
    plan = plan_rematerialization(joint, forward)
    assert 0 < plan.saved_bytes < plan.before_bytes
    assert any("chain longer" in plan.notes.get(v, "") for v in plan.saved)
    report = saved_report(joint, forward, plan)
    assert f"recompute chain longer than {saved.MAX_RECOMPUTE_DEPTH} ops" in report
    remat = apply_rematerialization(joint, forward, plan)
    rng = np.random.default_rng(2)
    args = (rng.normal(size=(2, 3)), rng.normal(size=(steps, 2, 3)))
    _assert_same(compiler.evaluate(remat, *args), compiler.evaluate(joint, *args))
    assert _peak_live_bytes(remat) < _peak_live_bytes(joint) / 2


def test_random_graphs_rematerialize_to_the_same_values():
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.autodiff.test_random_graphs import SHAPES, build, step

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(program=st.lists(step, min_size=1, max_size=12), seed=st.integers(0, 2 ** 16))
    def check(program, seed):
        forward = compiler.trace(build(program), *(Spec(s, F64) for s in SHAPES))
        rng = np.random.default_rng(seed)
        args = [rng.uniform(-1.5, 1.5, size=s) for s in SHAPES]
        for make in (compiler.grad, compiler.value_and_grad):
            joint = make(forward, argnums=tuple(range(len(SHAPES))))
            plan = plan_rematerialization(joint, forward)
            assert plan.saved_bytes <= plan.before_bytes
            remat = apply_rematerialization(joint, forward, plan)
            compiler.verify(remat)
            assert remat.is_id_ordered()
            _assert_same(compiler.evaluate(remat, *args), compiler.evaluate(joint, *args))
            saved_report(joint, forward, plan)

    check()
