"""Common subexpression elimination: golden before/after IR and canonical attribute keys."""
import numpy as np

import compiler
from compiler import Spec, ops
from compiler.ops.tensor import apply
from compiler.passes import CommonSubexpressionElimination
from compiler.passes.cse import canonical
from tests.passes.support import body, expected, ops_of, run

CSE = CommonSubexpressionElimination()


def test_merges_repeated_subexpressions_transitively():
    graph = compiler.trace(lambda x: ops.tanh(ops.exp(x)) + ops.tanh(ops.exp(x)), Spec((3,)))
    assert run(CSE, graph)
    assert body(graph) == expected("""
        %x = input : f32[3] param
        %0 = exp(%x) : f32[3]
        %1 = tanh(%0) : f32[3]
        %2 = add(%1, %1) : f32[3]
        return %2
    """)


def test_commutative_operands_merge_and_others_do_not():
    graph = compiler.trace(lambda x, y: (x * y, y * x, x - y, y - x), Spec((2,)), Spec((2,)))
    assert run(CSE, graph)
    assert body(graph) == expected("""
        %x = input : f32[2] param
        %y = input : f32[2] data
        %0 = mul(%x, %y) : f32[2]
        %1 = sub(%x, %y) : f32[2]
        %2 = sub(%y, %x) : f32[2]
        return %0, %0, %1, %2
    """)


def test_attributes_are_compared_exactly():
    def f(x):
        return (
            x * 0.0, x * 0.0, x * -0.0,                   # +0.0 and -0.0 are different constants
            x * np.float32(np.nan), x * np.float32(np.nan),  # nan equals nan as an attribute
            ops.sum(x, axis=0), ops.sum(x, axis=1), ops.sum(x, axis=0),
        )

    graph = compiler.trace(f, Spec((2, 2)))
    assert run(CSE, graph)
    outputs = [graph.node(o) for o in graph.outputs]
    assert graph.outputs[0] == graph.outputs[1] != graph.outputs[2]
    assert graph.outputs[3] == graph.outputs[4]
    assert graph.outputs[5] == graph.outputs[7] != graph.outputs[6]
    assert outputs[6].attrs["axes"] == (1,)
    assert ops_of(graph).count("full") == 3


def test_constants_merge_by_dtype_shape_and_bytes():
    a = np.arange(4, dtype=np.float32)

    def f(x):
        return (x + ops.constant(a), x + ops.constant(a.copy()), x + ops.constant(a[::-1].copy()),
                ops.cast(x, "float64") + ops.constant(a.astype(np.float64)))

    graph = compiler.trace(f, Spec((4,)))
    assert run(CSE, graph)
    assert ops_of(graph).count("constant") == 3
    assert graph.outputs[0] == graph.outputs[1]


def test_inputs_are_never_merged_and_outputs_follow_the_survivor():
    graph = compiler.trace(lambda x, y: (ops.exp(x), ops.exp(y), ops.exp(x)), Spec(()), Spec(()))
    assert run(CSE, graph)
    assert len(graph.inputs) == 2
    assert graph.outputs[0] == graph.outputs[2] != graph.outputs[1]
    assert not run(CSE, graph)


def test_same_op_and_operands_with_other_attrs_or_types_stay_apart():
    def f(x):
        return apply("cast", x, dtype="float64"), apply("cast", x, dtype="int32"), apply("cast", x, dtype="int32")

    graph = compiler.trace(f, Spec((3,)))
    run(CSE, graph)
    assert ops_of(graph).count("cast") == 2


def test_canonical_keys():
    assert canonical(True) != canonical(1)
    assert canonical(0.0) != canonical(-0.0)
    assert canonical(float("nan")) == canonical(float("nan"))
    assert canonical(1) == canonical(np.int64(1))
    assert canonical((1, 2)) != canonical((1.0, 2.0))
    assert canonical(np.zeros(2, np.float32)) != canonical(np.zeros(2, np.float64))
    assert canonical(np.zeros((2, 1))) != canonical(np.zeros((1, 2)))
