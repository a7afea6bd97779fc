"""simplify's slice_of_matmul: a product only partly read computes only that part."""
import numpy as np
import pytest

import compiler
from compiler import Spec, ops
from compiler.codegen import compile as compile_graph
from compiler.passes import AlgebraicSimplification, DeadCodeElimination
from tests.passes.support import body, expected, ops_of, run, simplified

SIMPLIFY = AlgebraicSimplification()


def test_kept_columns_slice_b_and_kept_rows_slice_a():
    graph = simplified(lambda a, b: (a @ b)[1:3, 2:], Spec((4, 5)), Spec((5, 6)))
    assert body(graph) == expected("""
        %a = input : f32[4,5] param
        %b = input : f32[5,6] data
        %0 = slice(%a) {starts=(1, 0), steps=(1, 1), stops=(3, 5)} : f32[2,5]
        %1 = slice(%b) {starts=(0, 2), steps=(1, 1), stops=(5, 6)} : f32[5,4]
        %2 = matmul(%0, %1) : f32[2,4]
        return %2
    """)


def test_the_lstm_backward_shape_reads_a_column_range_of_the_transposed_weight():
    # d(concat([x, h]) @ W)/dh = (g @ W^T)[:, n_x:]: only W's h rows take part
    graph = simplified(lambda g, w: (g @ w.T)[:, 3:], Spec((2, 8)), Spec((7, 8)))
    assert body(graph) == expected("""
        %g = input : f32[2,8] param
        %w = input : f32[7,8] data
        %0 = transpose(%w) {perm=(1, 0)} : f32[8,7]
        %1 = slice(%0) {starts=(0, 3), steps=(1, 1), stops=(8, 7)} : f32[8,4]
        %2 = matmul(%g, %1) : f32[2,4]
        return %2
    """)


@pytest.mark.parametrize("fn", [
    lambda p: (p[:, 1:], p[:, :1]),  # two readers: each would need its own product
    lambda p: p[:, ::2],  # strided: left alone
    lambda p: (p, p[:, 1:]),  # the product is an output
])
def test_left_alone_when_the_whole_product_is_needed_or_the_slice_strides(fn):
    graph = simplified(lambda a, b: fn(a @ b), Spec((3, 4)), Spec((4, 5)))
    assert sum(op == "matmul" for op in ops_of(graph)) == 1
    assert graph.type(next(n for n, node in graph.nodes() if node.op == "matmul")).shape == (3, 5)


def test_batched_products_cut_only_their_matrix_axes():
    graph = simplified(lambda a, b: (a @ b)[:1, :, 2:], Spec((3, 2, 4)), Spec((4, 5)))
    assert "matmul" in ops_of(graph)
    mm = next(node for _, node in graph.nodes() if node.op == "matmul")
    assert graph.type(mm.operands[1]).shape == (4, 5)  # the batch slice stays outside


def test_compiled_values_are_bitwise_those_of_the_full_product():
    # compiled products are one FMA chain over k per element whatever the shape (numpy's
    # BLAS is not: the interpreter's results may differ in the last bit between shapes)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 2, 9)), rng.standard_normal((9, 7))
    a[1, 1, 0] = np.nan

    def f(a, b):
        return (a @ b)[:, 1:, 2:6]

    graph = compiler.trace(f, Spec((3, 2, 9), "float64"), Spec((9, 7), "float64"))
    full = compile_graph(graph, opt_level=0, cache=False)(a, b)
    assert run(SIMPLIFY, graph)
    run(DeadCodeElimination(), graph)
    assert [graph.type(n).shape for n, node in graph.nodes() if node.op == "matmul"] == [(3, 1, 4)]
    np.testing.assert_array_equal(compile_graph(graph, opt_level=0, cache=False)(a, b), full)
    np.testing.assert_allclose(compiler.evaluate(graph, a, b), full, rtol=1e-13)


def test_lstm_style_gradient_compiles_to_the_same_values():
    def loss(w, x, h):
        z = ops.concatenate([x, h], axis=1) @ w
        return ops.sum(ops.tanh(z) * ops.tanh(z[:, :3]).sum())

    graph = compiler.grad(compiler.trace(loss, Spec((6, 8), "float64"), Spec((2, 2), "float64"),
                                         Spec((2, 4), "float64")), argnums=2)
    rng = np.random.default_rng(1)
    args = [rng.standard_normal(graph.type(i).shape) for i in graph.inputs]
    want = compiler.evaluate(graph, *args)
    optimized = compiler.optimize(graph, opt_level=2)
    mm = [graph_node for _, graph_node in optimized.nodes() if graph_node.op == "matmul"]
    assert mm and all(optimized.type(node.operands[1]).shape[-1] != 6 for node in mm)  # no full 2x6 product
    np.testing.assert_allclose(compile_graph(graph, cache=False)(*args), want, rtol=1e-12)
