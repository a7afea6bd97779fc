"""The fusion op and the fuse pass: elementwise chains and the reductions they feed -> `fusion`."""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compiler
from compiler import Spec, ops
from compiler.errors import ShapeError
from compiler.models import load_model
from compiler.ops.fusion import fusion
from compiler.passes import PassManager
from compiler.passes.fuse import CHEAP, MAX_COPIES, Fuse, find_groups
from compiler.pipeline import optimize, passes_for
from tests.gradcheck import check_grad
from tests.ops.samples_fusion import SAMPLES
from tests.passes.support import body, expected, ops_of, run, sections, main_body
from tests.passes.test_properties import SHAPES, _leaves, build, step

FUSE = Fuse()
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def fused(fn, *specs):
    graph = compiler.trace(fn, *specs)
    assert run(FUSE, graph)
    return graph




def bodies(graph):
    return {id(n.attrs["body"]): n.attrs["body"] for _, n in graph.nodes() if n.op == "fusion"}


# ------------------------------------------------------------------ the op
def test_fusion_shape_rule_names_the_problem():
    x = Spec((3, 4))
    body = compiler.trace(lambda a, b: ops.tanh(a + b), Spec((3, 4)), Spec((4,)))
    reduce_body = compiler.trace(lambda a: ops.sum(ops.exp(a), axis=0), Spec((3, 4)))
    with pytest.raises(ShapeError, match="takes 2 inputs but the op has 1 operands"):
        compiler.trace(lambda a: fusion(body, a), x)
    with pytest.raises(ShapeError, match=r"operand 1 is f32\[3,4\] but body input 'b' is f32\[4\]"):
        compiler.trace(lambda a, b: fusion(body, a, b), x, x)
    with pytest.raises(ShapeError, match="kind must be one of 'loop', 'reduce'"):
        compiler.trace(lambda a, b: fusion(body, a, b, kind="tile"), x, Spec((4,)))
    with pytest.raises(ShapeError, match="must end in one of sum, mean, max, min, its output is tanh"):
        compiler.trace(lambda a, b: fusion(body, a, b, kind="reduce"), x, Spec((4,)))
    with pytest.raises(ShapeError, match="sum cannot be fused into a 'loop' loop"):
        compiler.trace(lambda a: fusion(reduce_body, a), x)
    matmul_body = compiler.trace(lambda a, b: a @ b, Spec((3, 4)), Spec((4, 2)))
    with pytest.raises(ShapeError, match="matmul cannot be fused"):
        compiler.trace(lambda a, b: fusion(matmul_body, a, b), Spec((3, 4)), Spec((4, 2)))
    wide = compiler.trace(lambda a, c: ops.tanh(a), Spec((3, 4)), Spec((2, 3, 4)))
    with pytest.raises(ShapeError, match=r"input 'c' of shape \(2, 3, 4\) does not broadcast to the loop shape"):
        compiler.trace(lambda a, c: fusion(wide, a, c), x, Spec((2, 3, 4)))
    with pytest.raises(ShapeError, match="body must be a Graph"):
        compiler.trace(lambda a: compiler.ops.tensor.apply("fusion", a, body="cell", kind="loop"), x)


def test_fusion_evaluates_its_body():
    graph = compiler.trace(SAMPLES[0].fn, *SAMPLES[0].args)
    x, b = SAMPLES[0].args
    np.testing.assert_allclose(compiler.evaluate(graph, x, b), np.tanh(x + b) * 0.5 - x * x)


@pytest.mark.parametrize("sample", [s for s in SAMPLES if s.args[0].dtype.kind == "f"], ids=lambda s: s.id)
def test_fusion_vjp_matches_finite_differences(sample):
    """The VJP differentiates the body and inlines it: fused graphs stay differentiable."""
    check_grad(sample.fn, sample.args, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- the pass: golden IR
def test_a_chain_becomes_one_loop_fusion_whose_body_lists_the_members():
    graph = compiler.trace(lambda x, w, b: ops.tanh(x * w + b), Spec((3, 4)), Spec((3, 4)), Spec((4,)))
    assert body(graph) == expected("""
        %x = input : f32[3,4] param
        %w = input : f32[3,4] data
        %b = input : f32[4] data
        %0 = mul(%x, %w) : f32[3,4]
        %1 = add(%0, %b) : f32[3,4]
        %2 = tanh(%1) : f32[3,4]
        return %2
    """)
    assert run(FUSE, graph)
    main, fused_0 = sections(graph)
    assert main_body(graph) == expected("""
        %x = input : f32[3,4] param
        %w = input : f32[3,4] data
        %b = input : f32[4] data
        %0 = fusion(%x, %w, %b) {body=graph('fused_0'), kind='loop'} : f32[3,4]
        return %0
    """)
    assert fused_0 == expected("""
        graph fused_0
          in_tree (*, *, *)
          out_tree *
          %in0 = input : f32[3,4] data
          %in1 = input : f32[3,4] data
          %in2 = input : f32[4] data
          %0 = mul(%in0, %in1) : f32[3,4]
          %1 = add(%0, %in2) : f32[3,4]
          %2 = tanh(%1) : f32[3,4]
          return %2
    """)
    (fusion_node,) = [n for _, n in graph.nodes() if n.op == "fusion"]
    members = fusion_node.attrs["body"]
    assert {n.loc for i, n in members.nodes() if i not in members.inputs} == {fusion_node.loc}
    assert fusion_node.loc.startswith("test_fuse.py:")  # members keep the source line they came from


def test_elementwise_producers_fuse_into_a_reduction():
    graph = fused(lambda x, t: ops.mean(ops.square(x - t), axis=1), Spec((3, 4)), Spec((3, 4)))
    main, fused_0 = sections(graph)
    assert "%0 = fusion(%x, %t) {body=graph('fused_0'), kind='reduce'} : f32[3]" in main
    assert fused_0.split("\n", 5)[5] == expected("""
        %0 = sub(%in0, %in1) : f32[3,4]
        %1 = square(%0) : f32[3,4]
        %2 = mean(%1) {axes=(1,), keepdims=False} : f32[3]
        return %2
    """)


def test_cheap_values_read_by_two_groups_are_computed_in_both():
    graph = optimize(compiler.trace(lambda x, t: (ops.sum(ops.square(x - t)), (x - t) * 3.0),
                                    Spec((3, 4)), Spec((3, 4))), 2)
    _, reduce_body, loop_body = sections(graph)
    assert main_body(graph) == expected("""
        %x = input : f32[3,4] param
        %t = input : f32[3,4] data
        %0 = fusion(%x, %t) {body=graph('fused_0'), kind='reduce'} : f32[]
        %1 = fusion(%x, %t) {body=graph('fused_1'), kind='loop'} : f32[3,4]
        return %0, %1
    """)
    assert "%0 = sub(%in0, %in1) : f32[3,4]" in reduce_body and "%0 = sub(%in0, %in1) : f32[3,4]" in loop_body
    assert "%1 = full() {dtype='float32', shape=(), value=3.0} : f32[]" in loop_body  # constants move in


def test_expensive_shared_values_broadcast_reads_and_outputs_stay_materialized():
    def f(x, b):
        e = ops.exp(x)  # read by two groups: too costly to compute twice
        small = b * 2.0  # read with broadcasting: would be computed 3 times per element
        shown = ops.sin(x)  # a graph output
        return ops.tanh(e) + 1.0, ops.log(e) * 2.0, x + small, shown, shown * 2.0

    graph = compiler.trace(f, Spec((3, 4)), Spec((4,)))
    assert run(FUSE, graph)
    assert main_body(graph) == expected("""
        %x = input : f32[3,4] param
        %b = input : f32[4] data
        %0 = exp(%x) : f32[3,4]
        %1 = full() {dtype='float32', shape=(), value=2.0} : f32[]
        %2 = mul(%b, %1) : f32[4]
        %3 = sin(%x) : f32[3,4]
        %4 = fusion(%0) {body=graph('fused_0'), kind='loop'} : f32[3,4]
        %5 = fusion(%0) {body=graph('fused_1'), kind='loop'} : f32[3,4]
        %6 = add(%x, %2) : f32[3,4]
        %7 = full() {dtype='float32', shape=(), value=2.0} : f32[]
        %8 = mul(%3, %7) : f32[3,4]
        return %4, %5, %6, %3, %8
    """)


def test_a_cheap_value_read_by_too_many_groups_stays_materialized():
    def f(x, y):
        d = x - y
        return tuple(ops.exp(d * float(k)) for k in range(MAX_COPIES + 1))

    graph = compiler.trace(f, Spec((5,)), Spec((5,)))
    run(FUSE, graph)
    assert "sub" in ops_of(graph)
    graph = compiler.trace(lambda x, y: tuple(ops.exp((x - y) * float(k)) for k in range(MAX_COPIES)),
                           Spec((5,)), Spec((5,)))
    run(FUSE, graph)
    assert "sub" not in ops_of(graph) and ops_of(graph).count("fusion") == MAX_COPIES


def test_single_ops_non_elementwise_ops_and_repeated_runs_are_left_alone():
    graph = compiler.trace(lambda x, w: (ops.tanh(x @ w), ops.sum(x @ w, axis=0), ops.softmax(x, axis=1)),
                           Spec((3, 4)), Spec((4, 4)))
    before = compiler.dump(graph)
    assert not run(FUSE, graph)
    assert compiler.dump(graph) == before
    graph = fused(lambda x: ops.exp(ops.sin(x)) * 2.0, Spec((3,)))
    before = compiler.dump(graph)
    assert not run(FUSE, graph)  # a fusion is not elementwise: nothing more to group
    assert compiler.dump(graph) == before


def test_structurally_identical_groups_share_one_body():
    def f(a, b, c, y):
        steps = [ops.tanh(v * 2.0 + y) for v in (a, b, c)]  # one source line: one structure
        return steps + [ops.tanh(a * 2.0 + y), ops.tanh(a * 3.0 + y)]  # another line; another constant

    graph = fused(f, *[Spec((3,))] * 4)
    fusions = [n for _, n in graph.nodes() if n.op == "fusion"]
    assert len(fusions) == 5
    assert len({id(n.attrs["body"]) for n in fusions[:3]}) == 1
    assert len(bodies(graph)) == 3
    assert compiler.dump(graph).count("\ngraph fused_") == 3  # one section per distinct body


def test_unrolled_steps_share_bodies_so_their_number_does_not_grow_with_T():
    model = load_model(EXAMPLES / "rnn.py")
    counts = []
    for T in (4, 16):
        graph = compiler.value_and_grad(compiler.trace(model.loss, *model.module.specs(T), name="rnn"))
        optimized = optimize(graph, 2)
        counts.append(len(bodies(optimized)))
        assert sum(n.op == "fusion" for _, n in optimized.nodes()) > 4 * T
    assert counts[0] == counts[1]


def test_dump_parses_back_to_the_same_fused_graph():
    graph = fused(lambda x, t: (ops.sum(ops.square(x - t), axis=0), (x - t) * ops.exp(t)), Spec((3, 4)), Spec((3, 4)))
    text = compiler.dump(graph)
    parsed = compiler.parse(text)
    assert compiler.dump(parsed) == text
    x, t = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    for a, b in zip(compiler.evaluate(parsed, x, t), compiler.evaluate(graph, x, t)):
        np.testing.assert_array_equal(a, b)


def test_groups_are_disjoint_except_for_cheap_copies():
    model = load_model(EXAMPLES / "lstm.py")
    graph = optimize(compiler.value_and_grad(model.trace()), 1)
    seen = {}
    for group in find_groups(graph):
        assert group.root in group.members and len(group.members) >= 2
        for member in group.members - {group.root}:
            seen.setdefault(member, []).append(group.root)
    for member, roots in seen.items():
        assert len(roots) == 1 or (len(roots) <= MAX_COPIES and graph.node(member).op in CHEAP)


# ---------------------------------------------------------------- the pipeline
def test_fuse_runs_at_the_end_of_opt_level_2_only():
    assert [p.name for p in passes_for(2)][-3:] == ["fuse", "epilogue", "siblings"]
    assert all(p.name != "fuse" for p in passes_for(0) + passes_for(1))
    graph = compiler.trace(lambda x: ops.tanh(x * 2.0 + 1.0), Spec((3,)))
    assert "fusion" not in ops_of(optimize(graph, 1))
    assert ops_of(optimize(graph, 2)) == ["input", "fusion"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=st.lists(step, min_size=1, max_size=14), seed=st.integers(0, 2 ** 16))
def test_fused_graphs_evaluate_like_the_unfused_ones(program, seed):
    """Random elementwise/shape/reduction graphs and their backward graphs: opt_level 2
    with fusion against opt_level 2 without it (the interpreter runs the bodies)."""
    specs = [Spec(s, "float64") for s in SHAPES]
    forward = compiler.trace(build(program), *specs)
    rng = np.random.default_rng(seed)
    args = [rng.uniform(-1.5, 1.5, size=s) for s in SHAPES]
    for graph in (forward, compiler.grad(forward, argnums=(0, 1, 2, 3))):
        unfused_passes = [p for p in passes_for(2) if p.name != "fuse"]
        unfused = PassManager(unfused_passes).run(graph.copy())
        with_fusion = unfused.copy()
        FUSE.apply(with_fusion)
        compiler.verify(with_fusion)
        assert len(with_fusion) <= len(unfused)
        got, want = _leaves(compiler.evaluate(with_fusion, *args)), _leaves(compiler.evaluate(unfused, *args))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


def test_groups_of_constants_only_are_left_to_fold():
    graph = compiler.trace(lambda x: (ops.exp(ops.zeros((3,))) + 1.0, ops.sin(ops.zeros((3,))) * x), Spec((3,)))
    assert run(FUSE, graph)
    assert ops_of(graph).count("fusion") == 1 and "exp" in ops_of(graph) and "sin" not in ops_of(graph)
    x = np.arange(3.0, dtype=np.float32)
    result = compiler.evaluate(graph, x)
    np.testing.assert_array_equal(result[0], np.full(3, 2.0, np.float32))
    np.testing.assert_array_equal(result[1], np.zeros(3, np.float32))
