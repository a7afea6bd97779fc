"""Dead code elimination: golden before/after IR."""
import compiler
from compiler import Spec, ops
from compiler.passes import DeadCodeElimination
from tests.passes.support import body, expected, run


def test_removes_values_no_output_reads():
    def f(x, y):
        ops.exp(x) * y  # computed, never used
        return ops.tanh(x)

    graph = compiler.trace(f, Spec((3,)), Spec((3,)))
    assert run(DeadCodeElimination(), graph)
    assert body(graph) == expected("""
        %x = input : f32[3] param
        %y = input : f32[3] data
        %0 = tanh(%x) : f32[3]
        return %0
    """)


def test_unused_inputs_stay_and_a_clean_graph_is_unchanged():
    graph = compiler.trace(lambda x, unused: x * 2.0, Spec(()), Spec((2,)))
    assert not run(DeadCodeElimination(), graph)
    assert body(graph) == expected("""
        %x = input : f32[] param
        %unused = input : f32[2] data
        %0 = full() {dtype='float32', shape=(), value=2.0} : f32[]
        %1 = mul(%x, %0) : f32[]
        return %1
    """)


def test_deep_chains_do_not_recurse():
    def f(x):
        dead = x
        for _ in range(5000):
            dead = ops.tanh(dead)
        return x * 3.0

    graph = compiler.trace(f, Spec(()))
    assert run(DeadCodeElimination(), graph)
    assert len(graph) == 3
