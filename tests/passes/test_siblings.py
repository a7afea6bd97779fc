"""The "siblings" fusion kind and the siblings pass: reductions over one shape that read a
common value become one fusion (golden IR before/after), the shape rule, the text form,
gradients through it, and random graphs."""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compiler
from compiler import Spec, ops
from compiler.errors import ShapeError
from compiler.models import load_model
from compiler.ops.fusion import fusion, sibling_spans
from compiler.ops.implicit import inline
from compiler.passes import PassManager
from compiler.passes.fuse import Fuse
from compiler.passes.siblings import Siblings, find_groups
from compiler.pipeline import passes_for
from tests.gradcheck import check_grad
from tests.passes.support import expected, run, sections, main_body
from tests.passes.test_properties import SHAPES, _leaves, build, step

SIBLINGS = Siblings()
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def fused(fn, *specs):
    """Traced, then fuse (which makes the reduce fusions this pass groups)."""
    graph = compiler.trace(fn, *specs)
    run(Fuse(), graph)
    return graph




def opt2(graph):
    """opt_level 2 up to this pass (a copy), whether or not the default pipeline has it."""
    return PassManager([p for p in passes_for(2) if p.name != "siblings"]).run(graph.copy())


def siblings_of(graph):
    return [n for _, n in graph.nodes() if n.op == "fusion" and n.attrs["kind"] == "siblings"]


def layer_norm(x):
    m = ops.mean(x, axis=1, keepdims=True)
    v = ops.mean(x * x, axis=1, keepdims=True) - m * m
    return (x - m) / ops.sqrt(v + 1e-5)


def batch_norm_backward(g, xhat):
    return ops.sum(g, axis=0), ops.sum(g * xhat, axis=0)


# ---------------------------------------------------------------- the pass: golden IR
def test_layer_norm_statistics_become_one_siblings_fusion():
    graph = fused(layer_norm, Spec((4, 8)))
    assert main_body(graph) == expected("""
        %x = input : f32[4,8] param
        %0 = mean(%x) {axes=(1,), keepdims=True} : f32[4,1]
        %1 = fusion(%x) {body=graph('fused_0'), kind='reduce'} : f32[4,1]
        %2 = fusion(%1, %0) {body=graph('fused_1'), kind='loop'} : f32[4,1]
        %3 = fusion(%x, %0, %2) {body=graph('fused_2'), kind='loop'} : f32[4,8]
        return %3
    """)
    assert run(SIBLINGS, graph)
    main, siblings_0 = sections(graph)[:2]
    assert main_body(graph) == expected("""
        %x = input : f32[4,8] param
        %0 = fusion(%x) {body=graph('siblings_0'), kind='siblings'} : f32[8]
        %1 = slice(%0) {starts=(0,), steps=(1,), stops=(4,)} : f32[4]
        %2 = reshape(%1) {shape=(4, 1)} : f32[4,1]
        %3 = slice(%0) {starts=(4,), steps=(1,), stops=(8,)} : f32[4]
        %4 = reshape(%3) {shape=(4, 1)} : f32[4,1]
        %5 = fusion(%4, %2) {body=graph('fused_1'), kind='loop'} : f32[4,1]
        %6 = fusion(%x, %2, %5) {body=graph('fused_2'), kind='loop'} : f32[4,8]
        return %6
    """)
    assert siblings_0 == expected("""
        graph siblings_0
          in_tree (*,)
          out_tree (*, *)
          %in0 = input : f32[4,8] data
          %0 = mean(%in0) {axes=(1,), keepdims=True} : f32[4,1]
          %1 = mul(%in0, %in0) : f32[4,8]
          %2 = mean(%1) {axes=(1,), keepdims=True} : f32[4,1]
          return %0, %2
    """)
    (node,) = siblings_of(graph)
    assert node.loc.startswith("test_siblings.py:")  # where the first member was written
    assert not run(SIBLINGS, graph)  # a siblings fusion is no candidate: nothing more to group


def test_batch_norm_backward_sums_share_one_loop_and_vectors_need_no_reshape():
    graph = fused(batch_norm_backward, Spec((16, 3)), Spec((16, 3)))
    assert run(SIBLINGS, graph)
    assert main_body(graph) == expected("""
        %g = input : f32[16,3] param
        %xhat = input : f32[16,3] data
        %0 = fusion(%g, %xhat) {body=graph('siblings_0'), kind='siblings'} : f32[6]
        %1 = slice(%0) {starts=(0,), steps=(1,), stops=(3,)} : f32[3]
        %2 = slice(%0) {starts=(3,), steps=(1,), stops=(6,)} : f32[3]
        return %1, %2
    """)
    assert sections(graph)[1].split("\n", 5)[5] == expected("""
        %0 = sum(%in0) {axes=(0,), keepdims=False} : f32[3]
        %1 = mul(%in0, %in1) : f32[16,3]
        %2 = sum(%1) {axes=(0,), keepdims=False} : f32[3]
        return %0, %2
    """)


def test_softmax_cross_entropy_sums_of_the_mlp_step_share_the_one_hot():
    """The real case: the loss sum and the gradient's row sums both compute the one-hot;
    the body computes it once (identical values are shared)."""
    graph = opt2(compiler.value_and_grad(load_model(EXAMPLES / "mlp.py").trace()))
    reduces = [n for _, n in graph.nodes() if n.op == "fusion" and n.attrs["kind"] == "reduce"]
    assert run(SIBLINGS, graph)
    (node,) = siblings_of(graph)
    assert str(node.type) == "f32[65]"  # f32[] and f32[64,1]
    body = node.attrs["body"]
    assert [str(body.type(o)) for o in body.outputs] == ["f32[]", "f32[64,1]"]
    assert [n.op for _, n in body.nodes()].count("eq") == 1
    after = [n for _, n in graph.nodes() if n.op == "fusion" and n.attrs["kind"] == "reduce"]
    assert len(after) == len(reduces) - 2
    assert graph.is_id_ordered()  # rescheduled: ids follow the run order again


def test_different_axes_dtypes_and_reductions_group_by_loop_shape_and_dtype():
    def f(x, y):
        x64 = ops.cast(x, "float64")
        return (ops.max(x * y, axis=0), ops.min(x, axis=1, keepdims=True), ops.sum(x),
                ops.sum(x64 * 2.0), ops.mean(x64, axis=1))

    graph = fused(f, Spec((5, 3)), Spec((5, 3)))
    assert run(SIBLINGS, graph)
    f32, f64 = sorted(siblings_of(graph), key=lambda n: n.type.dtype)
    assert str(f32.type) == "f32[9]" and str(f64.type) == "f64[6]"
    assert [n.op for n in map(f32.attrs["body"].node, f32.attrs["body"].outputs)] == ["max", "min", "sum"]
    assert sibling_spans(f32.attrs["body"]) == [(0, 3), (3, 8), (8, 9)]


def test_loops_over_other_shapes_or_sharing_only_a_scalar_or_a_little_stay_apart():
    def f(x, y, a, u, v, b, w, c):
        return (ops.sum(x * a), ops.sum(y * a),  # a scalar in common: nothing to share
                ops.sum(u + b), ops.sum(v + b),  # a 4-element bias of 16x4 loops: too little
                ops.sum(w), ops.sum(w + c))  # loops over [16,4] and [2,16,4]

    m = Spec((16, 4))
    graph = fused(f, m, m, Spec(()), m, m, Spec((4,)), m, Spec((2, 16, 4)))
    before = compiler.dump(graph)
    assert find_groups(graph) == [] and not run(SIBLINGS, graph)
    assert compiler.dump(graph) == before
    graph = fused(lambda u, b: (ops.sum(u + b), ops.sum(u * b)), m, Spec((4,)))
    assert len(find_groups(graph)) == 1  # the same without the other loops' operands: grouped


def test_a_reduction_that_depends_on_its_sibling_is_not_merged():
    def softmax_denominator(x):
        m = ops.max(x, axis=1, keepdims=True)
        return ops.sum(ops.exp(x - m), axis=1)  # reads x and m: merging would make a cycle

    graph = fused(softmax_denominator, Spec((4, 5)))
    assert not run(SIBLINGS, graph)


def test_groups_that_would_make_a_cycle_between_them_are_not_both_made():
    """a1 -> a2 and b2 -> b1: merging {a1, b1} and {a2, b2} gives a cycle of two fusions,
    though neither group depends on itself. Only the first group that fits is made."""
    def f(x, y):
        a1 = ops.sum(x, axis=1, keepdims=True)
        b2 = ops.sum(y, axis=1, keepdims=True)
        a2 = ops.sum(y * a1, axis=1, keepdims=True)
        b1 = ops.sum(x * b2, axis=1, keepdims=True)
        return a2, b1

    graph = fused(f, Spec((4, 5)), Spec((4, 5)))
    (group,) = find_groups(graph)
    assert [graph.node(n).op for n in group] == ["sum", "fusion"]  # b2 and a2: y in common
    assert run(SIBLINGS, graph)  # run() verifies: no cycle
    x, y = np.random.default_rng(0).normal(size=(2, 4, 5)).astype(np.float32)
    original = compiler.trace(f, Spec((4, 5)), Spec((4, 5)))
    for a, e in zip(compiler.evaluate(graph, x, y), compiler.evaluate(original, x, y)):
        np.testing.assert_allclose(a, e, rtol=1e-6)


def test_unrolled_steps_share_one_body():
    def f(*xs):
        return [layer_norm(x) for x in xs]

    graph = fused(f, *[Spec((4, 8))] * 3)
    assert run(SIBLINGS, graph)
    nodes = siblings_of(graph)
    assert len(nodes) == 3 and len({id(n.attrs["body"]) for n in nodes}) == 1
    assert compiler.dump(graph).count("\ngraph siblings_") == 1


def test_the_pass_runs_in_a_pass_manager_after_the_opt_level_2_pipeline():
    graph = compiler.value_and_grad(load_model(EXAMPLES / "cnn.py").trace())
    manager = PassManager([p for p in passes_for(2) if p.name != "siblings"] + [SIBLINGS], verify_each=True)
    optimized = manager.run(graph.copy())
    assert manager.records[-1].name == "siblings" and manager.records[-1].changed
    assert len(siblings_of(optimized)) == 1
    args = load_model(EXAMPLES / "cnn.py").example_args(0)
    for a, e in zip(_leaves(compiler.evaluate(optimized, *args)), _leaves(compiler.evaluate(graph, *args))):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the op
def _body(fn, *shapes, dtype="float32"):
    return compiler.trace(fn, *[Spec(s, dtype) for s in shapes])


def test_siblings_shape_rule_names_the_problem():
    x = Spec((3, 4))
    cases = [
        (_body(lambda a: (ops.sum(a), ops.tanh(a)), (3, 4)), "each output of a 'siblings' fusion must be one of"),
        (_body(lambda a: (ops.sum(a), ops.sum(ops.cast(a, "float64"))), (3, 4)), "must all reduce operands of shape"),
        (_body(lambda a: (ops.sum(a, axis=0), ops.sum(ops.transpose(a))), (3, 3)),
         "transpose cannot be fused into a 'siblings' loop"),
        (_body(lambda a, c: (ops.sum(a), ops.sum(a * 2.0)), (3, 4), (2, 3, 4)),
         r"input 'c' of shape \(2, 3, 4\) does not broadcast to the loop shape \(3, 4\)"),
        (_body(lambda a: (lambda s: (s, ops.sum(a * s)))(ops.sum(a)), (3, 4)), "read inside the body"),
    ]
    for body, message in cases:
        with pytest.raises(ShapeError, match=message):
            compiler.trace(lambda *xs, body=body: fusion(body, *xs, kind="siblings"),
                           *[Spec(body.type(i).shape) for i in body.inputs])
    twice = _body(lambda a: ops.sum(a), (3, 4))
    twice.set_outputs([twice.outputs[0]] * 2)
    with pytest.raises(ShapeError, match="needs distinct outputs"):
        compiler.trace(lambda a: fusion(twice, a, kind="siblings"), x)


def test_siblings_evaluates_to_the_raveled_results_concatenated():
    body = _body(lambda a, b: (ops.sum(a, axis=1, keepdims=True), ops.mean(a * b), ops.max(a * 2.0, axis=0)),
                 (3, 4), (4,))
    graph = compiler.trace(lambda a, b: fusion(body, a, b, kind="siblings"), Spec((3, 4)), Spec((4,)))
    assert str(graph.type(graph.outputs[0])) == "f32[8]"
    a, b = np.random.default_rng(1).normal(size=(2, 3, 4)).astype(np.float32)
    b = b[0]
    expected_value = np.concatenate([a.sum(1), [np.mean(a * b)], (a * 2).max(0)])
    np.testing.assert_allclose(compiler.evaluate(graph, a, b), expected_value, rtol=1e-6)


def test_a_multi_output_body_prints_and_parses_back():
    graph = fused(lambda x, y: [layer_norm(x), *batch_norm_backward(x, y)], Spec((4, 8)), Spec((4, 8)))
    run(SIBLINGS, graph)
    text = compiler.dump(graph)
    assert "out_tree (*, *, *, *)" in text and "return %0, %2, %3, %5" in text  # axes 1, 1, 0, 0
    parsed = compiler.parse(text)
    assert compiler.dump(parsed) == text
    x, y = np.random.default_rng(2).normal(size=(2, 4, 8)).astype(np.float32)
    for a, e in zip(_leaves(compiler.evaluate(parsed, x, y)), _leaves(compiler.evaluate(graph, x, y))):
        np.testing.assert_array_equal(a, e)


SAMPLE_BODY = _body(lambda a, b: (ops.sum(a * b, axis=1, keepdims=True), ops.mean(ops.tanh(a)),
                                  ops.max(a * b, axis=0), ops.min(a - b, axis=1)), (3, 4), (4,), dtype="float64")


def _sample(a, b):
    return fusion(SAMPLE_BODY, a, b, kind="siblings")


def test_gradients_through_siblings_match_finite_differences():
    a, b = np.random.default_rng(3).normal(size=(2, 3, 4))
    check_grad(_sample, [a, b[0]], rtol=1e-6, atol=1e-8)


def test_second_order_gradients_through_siblings_match_finite_differences():
    first = compiler.grad(compiler.trace(lambda a, b: ops.sum(ops.square(_sample(a, b))),
                                         Spec((3, 4), "float64"), Spec((4,), "float64")), argnums=(0, 1))
    a, b = np.random.default_rng(4).normal(size=(2, 3, 4))
    check_grad(lambda a, b: inline(first, a, b)[0], [a, b[0]], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- random graphs
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=st.lists(step, min_size=1, max_size=14), seed=st.integers(0, 2 ** 16))
def test_random_graphs_evaluate_the_same_after_the_pass(program, seed):
    """tests/passes/test_properties.py's random graphs (their loss sums every value: many
    sibling reductions) and their backward graphs at opt_level 2, then this pass."""
    forward = compiler.trace(build(program), *[Spec(s, "float64") for s in SHAPES])
    rng = np.random.default_rng(seed)
    args = [rng.uniform(-1.5, 1.5, size=s) for s in SHAPES]
    for graph in (forward, compiler.grad(forward, argnums=(0, 1, 2, 3))):
        optimized = opt2(graph)
        grouped = optimized.copy()
        run(SIBLINGS, grouped)
        assert grouped.is_id_ordered() or not optimized.is_id_ordered()  # rescheduled
        for a, e in zip(_leaves(compiler.evaluate(grouped, *args)), _leaves(compiler.evaluate(optimized, *args))):
            np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)
