"""The epilogue pass: a matmul joins the fusion (or single elementwise op) that alone reads
it, as a `fusion` of kind "matmul"; sums of products become accumulate chains. Golden
before/after IR, what stays alone, interning, the pipeline, and that optimized graphs
evaluate (and differentiate) like unoptimized ones."""
from pathlib import Path

import numpy as np
import pytest

import compiler
from compiler import Spec, ops
from compiler.codegen.fused import matmul_parts
from compiler.errors import ShapeError
from compiler.models import load_model
from compiler.ops.accumulate import add_n
from compiler.ops.fusion import fusion
from compiler.ops.implicit import inline
from compiler.passes.epilogue import Epilogue
from compiler.passes.fuse import Fuse
from compiler.pipeline import PIPELINES, optimize, passes_for
from tests.gradcheck import check_grad
from tests.passes.support import body, expected, run, sections, main_body

EPILOGUE, FUSE = Epilogue(), Fuse()
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def swap(x):
    return ops.swapaxes(x, -1, -2)


def fused(fn, *specs):
    """fn traced, then fuse and epilogue as at opt_level 2 (each must verify)."""
    graph = compiler.trace(fn, *specs)
    run(FUSE, graph)
    return graph




def matmul_fusions(graph):
    return [n for _, n in graph.nodes() if n.op == "fusion" and n.attrs["kind"] == "matmul"]


# ---------------------------------------------------------------- golden IR
def test_bias_and_activation_join_the_product():
    graph = fused(lambda x, w, b: ops.relu(x @ w + b) * 2.0, Spec((8, 5)), Spec((5, 3)), Spec((3,)))
    assert main_body(graph) == expected("""
        %x = input : f32[8,5] param
        %w = input : f32[5,3] data
        %b = input : f32[3] data
        %0 = matmul(%x, %w) : f32[8,3]
        %1 = fusion(%0, %b) {body=graph('fused_0'), kind='loop'} : f32[8,3]
        return %1
    """)
    assert run(EPILOGUE, graph)
    main, epilogue_0 = sections(graph)
    assert main_body(graph) == expected("""
        %x = input : f32[8,5] param
        %w = input : f32[5,3] data
        %b = input : f32[3] data
        %0 = fusion(%x, %w, %b) {body=graph('epilogue_0'), kind='matmul'} : f32[8,3]
        return %0
    """)
    assert epilogue_0 == expected("""
        graph epilogue_0
          in_tree (*, *, *)
          out_tree *
          %in0 = input : f32[8,5] data
          %in1 = input : f32[5,3] data
          %in2 = input : f32[3] data
          %0 = matmul(%in0, %in1) : f32[8,3]
          %1 = add(%0, %in2) : f32[8,3]
          %2 = relu(%1) : f32[8,3]
          %3 = full() {dtype='float32', shape=(), value=2.0} : f32[]
          %4 = mul(%2, %3) : f32[8,3]
          return %4
    """)
    (node,) = matmul_fusions(graph)
    members = node.attrs["body"]
    assert {n.loc for i, n in members.nodes() if i not in members.inputs} == {node.loc}  # locs kept
    assert matmul_parts(members).init is None  # the bias broadcasts: it is read in the epilogue


def test_a_single_elementwise_reader_joins_with_its_constants():
    graph = fused(lambda x, w: ops.maximum(x @ w, 0.5), Spec((4, 6)), Spec((6, 2)))
    assert "%2 = maximum(%0, %1)" in main_body(graph)  # a group of one op: fuse leaves it
    assert run(EPILOGUE, graph)
    main, epilogue_0 = sections(graph)
    assert main_body(graph) == expected("""
        %x = input : f32[4,6] param
        %w = input : f32[6,2] data
        %0 = fusion(%x, %w) {body=graph('epilogue_0'), kind='matmul'} : f32[4,2]
        return %0
    """)
    assert epilogue_0.split("\n", 5)[5] == expected("""
        %0 = matmul(%in0, %in1) : f32[4,2]
        %1 = full() {dtype='float32', shape=(), value=0.5} : f32[]
        %2 = maximum(%0, %1) : f32[4,2]
        return %2
    """)


def test_an_accumulator_added_to_the_product_is_where_c_starts():
    graph = fused(lambda acc, x, g: acc + swap(x) @ g, Spec((4, 6)), Spec((3, 4)), Spec((3, 6)))
    assert run(EPILOGUE, graph)
    main, epilogue_0 = sections(graph)
    assert main_body(graph) == expected("""
        %acc = input : f32[4,6] param
        %x = input : f32[3,4] data
        %g = input : f32[3,6] data
        %0 = transpose(%x) {perm=(1, 0)} : f32[4,3]
        %1 = fusion(%acc, %0, %g) {body=graph('epilogue_0'), kind='matmul'} : f32[4,6]
        return %1
    """)
    assert epilogue_0.split("\n", 6)[6] == expected("""
        %0 = matmul(%in1, %in2) : f32[4,6]
        %1 = add(%in0, %0) : f32[4,6]
        return %1
    """)
    parts = matmul_parts(matmul_fusions(graph)[0].attrs["body"])
    assert (parts.a, parts.b, parts.init, parts.epilogue) == (1, 2, 0, (0,))


def test_the_backward_activation_derivative_joins_the_product():
    graph = fused(lambda g, w, h: (g @ swap(w)) * (1.0 - h * h), Spec((16, 8)), Spec((32, 8)), Spec((16, 32)))
    assert run(EPILOGUE, graph)
    main, epilogue_0 = sections(graph)
    assert "%1 = fusion(%g, %0, %h) {body=graph('epilogue_0'), kind='matmul'} : f32[16,32]" in main
    assert epilogue_0.split("\n", 6)[6] == expected("""
        %0 = matmul(%in0, %in1) : f32[16,32]
        %1 = full() {dtype='float32', shape=(), value=1.0} : f32[]
        %2 = mul(%in2, %in2) : f32[16,32]
        %3 = sub(%1, %2) : f32[16,32]
        %4 = mul(%0, %3) : f32[16,32]
        return %4
    """)
    assert matmul_parts(matmul_fusions(graph)[0].attrs["body"]).init is None  # h is read twice: no accumulator


def test_the_longest_contraction_joins_and_the_other_product_is_the_accumulator():
    # the RNN step: tanh(x @ Wx + h @ Wh + b)
    graph = fused(lambda x, wx, h, wh, b: ops.tanh(x @ wx + h @ wh + b),
                  Spec((16, 3)), Spec((3, 32)), Spec((16, 32)), Spec((32, 32)), Spec((32,)))
    assert run(EPILOGUE, graph)
    assert main_body(graph) == expected("""
        %x = input : f32[16,3] param
        %wx = input : f32[3,32] data
        %h = input : f32[16,32] data
        %wh = input : f32[32,32] data
        %b = input : f32[32] data
        %0 = matmul(%x, %wx) : f32[16,32]
        %1 = fusion(%0, %h, %wh, %b) {body=graph('epilogue_0'), kind='matmul'} : f32[16,32]
        return %1
    """)
    parts = matmul_parts(matmul_fusions(graph)[0].attrs["body"])
    assert (parts.a, parts.b, parts.init) == (1, 2, 0)


def test_a_sum_of_products_becomes_an_accumulate_chain():
    """add_n of weight-gradient products -> each product adds itself onto the previous
    partial sum, where the product was; the interpreter sums exactly as before."""
    def grads(x1, g1, x2, g2, x3, g3):
        return add_n(swap(x1) @ g1, swap(x2) @ g2, swap(x3) @ g3)

    specs = [Spec((5, 4)), Spec((5, 6))] * 3
    graph = fused(grads, *specs)
    before = graph.copy()
    assert "%6 = add_n(%1, %3, %5) : f32[4,6]" in main_body(graph)
    assert run(EPILOGUE, graph)
    main, chain = sections(graph)
    assert main_body(graph).split("\n", 6)[6] == expected("""
        %0 = transpose(%x1) {perm=(1, 0)} : f32[4,5]
        %1 = matmul(%0, %g1) : f32[4,6]
        %2 = transpose(%x2) {perm=(1, 0)} : f32[4,5]
        %3 = fusion(%1, %2, %g2) {body=graph('epilogue_0'), kind='matmul'} : f32[4,6]
        %4 = transpose(%x3) {perm=(1, 0)} : f32[4,5]
        %5 = fusion(%3, %4, %g3) {body=graph('epilogue_0'), kind='matmul'} : f32[4,6]
        return %5
    """)
    assert chain.split("\n", 6)[6] == expected("""
        %0 = matmul(%in1, %in2) : f32[4,6]
        %1 = add(%in0, %0) : f32[4,6]
        return %1
    """)
    args = [np.random.default_rng(i).normal(size=s.shape).astype(np.float32) for i, s in enumerate(specs)]
    np.testing.assert_array_equal(compiler.evaluate(graph, *args), compiler.evaluate(before, *args))


def test_a_fused_tree_of_adds_over_products_becomes_a_chain_from_the_other_value():
    """accumulate's running sum, fused into one loop by `fuse`, read every product at once;
    the one other value, there before the first product, is where the chain starts."""
    def grads(e, x1, g1, x2, g2, x3, g3):
        return ((swap(x1) @ g1 + swap(x2) @ g2) + swap(x3) @ g3) + e

    specs = [Spec((4, 6))] + [Spec((5, 4)), Spec((5, 6))] * 3
    graph = fused(grads, *specs)
    assert "%6 = fusion(%1, %3, %5, %e) {body=graph('fused_0'), kind='loop'} : f32[4,6]" in main_body(graph)
    before = graph.copy()
    assert run(EPILOGUE, graph)
    assert main_body(graph).split("\n", 7)[7] == expected("""
        %0 = transpose(%x1) {perm=(1, 0)} : f32[4,5]
        %1 = fusion(%e, %0, %g1) {body=graph('epilogue_0'), kind='matmul'} : f32[4,6]
        %2 = transpose(%x2) {perm=(1, 0)} : f32[4,5]
        %3 = fusion(%1, %2, %g2) {body=graph('epilogue_0'), kind='matmul'} : f32[4,6]
        %4 = transpose(%x3) {perm=(1, 0)} : f32[4,5]
        %5 = fusion(%3, %4, %g3) {body=graph('epilogue_0'), kind='matmul'} : f32[4,6]
        return %5
    """)
    args = [np.random.default_rng(i).normal(size=s.shape).astype(np.float32) for i, s in enumerate(specs)]
    np.testing.assert_allclose(compiler.evaluate(graph, *args), compiler.evaluate(before, *args), rtol=1e-6, atol=1e-6)


def test_a_sum_with_more_work_after_it_joins_one_product():
    graph = fused(lambda x1, g1, x2, g2: (swap(x1) @ g1 + swap(x2) @ g2) * 0.5, *([Spec((5, 4)), Spec((5, 6))] * 2))
    assert run(EPILOGUE, graph)
    assert [n.op for _, n in graph.nodes()].count("matmul") == 1
    (node,) = matmul_fusions(graph)
    assert matmul_parts(node.attrs["body"]).init == 0  # the other product: C starts from it


# ---------------------------------------------------------------- what stays alone
@pytest.mark.parametrize("case", [
    "output", "two readers", "batched", "integer", "broadcast reader", "other dtype", "reduction", "not float reader",
])
def test_products_that_do_not_join(case):
    f32 = Spec((6, 4)), Spec((4, 5))
    fns = {
        "output": (lambda x, w: (lambda y: (y, ops.tanh(y)))(x @ w), f32),
        "two readers": (lambda x, w: (lambda y: (ops.tanh(y), ops.sum(y, axis=0)))(x @ w), f32),
        "batched": (lambda x, w: ops.tanh(x @ w), (Spec((2, 6, 4)), Spec((4, 5)))),
        "integer": (lambda x, w: (x @ w) * 2, (Spec((6, 4), "int32"), Spec((4, 5), "int32"))),
        "broadcast reader": (lambda x, w, y: (x @ w) * y, f32 + (Spec((3, 6, 5)),)),
        "other dtype": (lambda x, w: ops.cast(x @ w, "float64") * 2.0, f32),
        "reduction": (lambda x, w: ops.sum(ops.square(x @ w), axis=0), f32),
        "not float reader": (lambda x, w: (x @ w) > 0.0, f32),
    }
    fn, specs = fns[case]
    graph = fused(fn, *specs)
    text = compiler.dump(graph)
    assert not run(EPILOGUE, graph)
    assert compiler.dump(graph) == text


# ---------------------------------------------------------------- the op's shape rule
def test_matmul_fusion_shape_rule_names_the_problem():
    a, w, b = Spec((3, 4)), Spec((4, 2)), Spec((2,))

    def bad(fn, *specs, operands=(a, w, b)):
        body_graph = compiler.trace(fn, *specs)
        return lambda: compiler.trace(lambda *xs: fusion(body_graph, *xs, kind="matmul"), *operands)

    with pytest.raises(ShapeError, match="holds exactly one matmul, it has 0"):
        bad(lambda x, y, z: x * 2.0, Spec((3, 4)), Spec((3, 4)), Spec((2,)), operands=(a, a, b))()
    with pytest.raises(ShapeError, match="holds exactly one matmul, it has 2"):
        bad(lambda x, y, z: (x @ y) * (x @ y) + z, Spec((3, 4)), Spec((4, 2)), Spec((2,)))()
    with pytest.raises(ShapeError, match="operands must be body inputs read by nothing else"):
        bad(lambda x, y, z: x @ y + ops.sum(x), Spec((3, 4)), Spec((4, 2)), Spec((2,)))()
    with pytest.raises(ShapeError, match="the output does not depend on the matmul"):
        bad(lambda x, y, z: (ops.sum(x @ y), z * 2.0)[1], Spec((3, 4)), Spec((4, 2)), Spec((2,)))()
    with pytest.raises(ShapeError, match=r"input 'z' of shape \(5, 2\) does not broadcast to the loop shape \(3, 2\)"):
        bad(lambda x, y, z: x @ y, Spec((3, 4)), Spec((4, 2)), Spec((5, 2)), operands=(a, w, Spec((5, 2))))()
    with pytest.raises(ShapeError, match="must be 2-D"):
        bad(lambda x, y, z: ops.tanh(x @ y), Spec((2, 3, 4)), Spec((4, 2)), Spec((2,)),
            operands=(Spec((2, 3, 4)), w, b))()


# ---------------------------------------------------------------- in the pipeline
def test_epilogue_runs_right_after_fuse_at_opt_level_2_only():
    assert [p.name for p in passes_for(2)][-3:-1] == ["fuse", "epilogue"]
    assert all(p.name != "epilogue" for p in passes_for(0) + passes_for(1))
    graph = compiler.trace(lambda x, w: ops.tanh(x @ w), Spec((3, 4)), Spec((4, 5)))
    assert [n.op for _, n in optimize(graph, 1).nodes()] == ["input", "input", "matmul", "tanh"]
    assert [n.op for _, n in optimize(graph, 2).nodes()] == ["input", "input", "fusion"]


def test_unrolled_steps_share_one_body_per_pattern(monkeypatch):
    monkeypatch.setitem(PIPELINES, 2, [p for p in PIPELINES[2] if p.name != "stack-products"])  # keep T products
    model = load_model(EXAMPLES / "rnn.py")
    counts = []
    for steps in (4, 12):
        graph = optimize(compiler.value_and_grad(compiler.trace(model.loss, *model.module.specs(steps), name="rnn")))
        nodes = matmul_fusions(graph)
        assert len(nodes) > 3 * steps
        counts.append(len({id(n.attrs["body"]) for n in nodes}))
    assert counts[0] == counts[1] <= 8


@pytest.mark.parametrize("name", ["mlp", "rnn", "lstm"])
def test_examples_evaluate_exactly_as_without_the_pass(name, monkeypatch):
    """The interpreter runs bodies op by op, so joining changes nothing, bitwise."""
    model = load_model(EXAMPLES / f"{name}.py")
    graph = compiler.value_and_grad(model.trace())
    with_pass = optimize(graph, 2)
    assert matmul_fusions(with_pass)
    monkeypatch.setitem(PIPELINES, 2, [p for p in PIPELINES[2] if p.name != "epilogue"])
    without = optimize(graph, 2)
    args = model.example_args(0)
    got, want = compiler.evaluate(with_pass, *args), compiler.evaluate(without, *args)
    for g, w in zip(_leaves(got), _leaves(want), strict=True):
        np.testing.assert_array_equal(g, w)


def test_matmul_fusions_survive_the_text_round_trip():
    from compiler.ir.parser import parse

    model = load_model(EXAMPLES / "rnn.py")
    graph = optimize(compiler.value_and_grad(compiler.trace(model.loss, *model.module.specs(3), name="rnn")))
    text = compiler.dump(graph)
    assert "kind='matmul'" in text and compiler.dump(parse(text)) == text


def _leaves(tree):
    from runtime.pytree import flatten

    return flatten(tree)[0]


# ---------------------------------------------------------------- gradients
def _layer_loss(x, w1, b1, w2, t):
    h = ops.tanh(x @ w1 + b1)
    return ops.sum(ops.log_softmax(ops.sigmoid(h @ w2), axis=1) * t)


LAYER_SHAPES = [(6, 5), (5, 7), (7,), (7, 3), (6, 3)]


def _optimized_layer():
    graph = optimize(compiler.trace(_layer_loss, *[Spec(s, "float64") for s in LAYER_SHAPES]), 2)
    assert len(matmul_fusions(graph)) == 2
    return graph


def _layer_args():
    return [np.random.default_rng(i).normal(size=s) * 0.7 for i, s in enumerate(LAYER_SHAPES)]


def test_gradients_through_matmul_fusions_match_finite_differences():
    graph = _optimized_layer()
    check_grad(lambda *xs: inline(graph, *xs)[0], _layer_args(), rtol=1e-6, atol=1e-8, scalarize=False)


def test_second_order_gradients_through_matmul_fusions():
    grad_graph = compiler.grad(_optimized_layer(), argnums=(1,))
    check_grad(lambda *xs: inline(grad_graph, *xs)[0], _layer_args(), rtol=1e-5, atol=1e-7)
