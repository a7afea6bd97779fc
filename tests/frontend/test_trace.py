"""Tracing: pytrees of specs, input naming and kinds, unrolled loops, outputs, errors."""
import math
import sys
import time

import numpy as np
import pytest

import compiler
from compiler import PullbackError, ShapeError, Spec, TensorType, TraceError, ops
from runtime.pytree import LEAF


def inputs_of(graph):
    return [(graph.node(i).attrs["name"], graph.node(i).attrs["kind"], graph.node(i).type) for i in graph.inputs]


def op_names(graph):
    return [node.op for _, node in graph.nodes() if node.op != "input"]


# ------------------------------------------------------------------ Spec
def test_spec_normalizes_shape_and_dtype():
    assert Spec(3).shape == (3,)
    assert Spec([2, np.int64(3)]).shape == (2, 3)
    assert Spec((), "f64").dtype == "float64"
    assert Spec((2,), np.int32).type == TensorType((2,), "int32")
    with pytest.raises(PullbackError, match="Spec kind must be 'param', 'data' or None, got 'weights'"):
        Spec((2,), kind="weights")
    assert Spec((2,), float).dtype == "float64"  # numpy's reading of Python's float
    with pytest.raises(ShapeError, match="unknown dtype 'floaty'"):
        Spec((2,), "floaty")
    with pytest.raises(ShapeError, match="unsupported dtype 'complex128'"):
        Spec((2,), np.complex128)


def test_negative_spec_shape_is_a_shape_error():
    with pytest.raises(ShapeError, match=r"shape must be a tuple of non-negative ints, got \(-1,\)"):
        compiler.trace(lambda x: x, Spec((-1,)))


def test_non_integer_spec_shape_is_an_error():
    with pytest.raises(PullbackError):
        Spec((2.5,))


# ------------------------------------------------------------------ pytrees
def test_dict_params_and_data():
    def loss(params, x):
        return ops.sum(ops.tanh(x @ params["W1"] + params["b1"]) @ params["W2"])

    params = {"W1": Spec((4, 8)), "b1": Spec((8,)), "W2": Spec((8, 1))}
    graph = compiler.trace(loss, params, Spec((16, 4)))
    assert inputs_of(graph) == [  # dict keys in sorted order, as JAX does
        ("params.W1", "param", TensorType((4, 8), "float32")),
        ("params.W2", "param", TensorType((8, 1), "float32")),
        ("params.b1", "param", TensorType((8,), "float32")),
        ("x", "data", TensorType((16, 4), "float32")),
    ]
    assert graph.in_tree == ({"W1": LEAF, "W2": LEAF, "b1": LEAF}, LEAF)
    assert graph.out_tree is LEAF
    assert graph.name == "loss"
    rng = np.random.default_rng(0)
    values = {k: rng.normal(size=s.shape) for k, s in params.items()}
    x = rng.normal(size=(16, 4))
    expected = np.sum(np.tanh(x @ values["W1"] + values["b1"]) @ values["W2"])
    assert compiler.evaluate(graph, values, x) == pytest.approx(expected, rel=1e-5)


def test_lists_tuples_and_nesting():
    def net(params, batch):
        h = batch["x"]
        for layer in params["layers"]:
            h = ops.relu(h @ layer["W"] + layer["b"])
        scale, shift = params["affine"]
        return ops.mean((h * scale + shift - batch["y"]) ** 2)

    params = {"layers": [{"W": Spec((3, 3)), "b": Spec((3,))} for _ in range(2)], "affine": (Spec(()), Spec(()))}
    batch = {"x": Spec((5, 3)), "y": Spec((5, 3))}
    graph = compiler.trace(net, params, batch)
    assert [name for name, _, _ in inputs_of(graph)] == [
        "params.affine.0", "params.affine.1",
        "params.layers.0.W", "params.layers.0.b", "params.layers.1.W", "params.layers.1.b",
        "batch.x", "batch.y",
    ]
    assert [kind for _, kind, _ in inputs_of(graph)] == ["param"] * 6 + ["data"] * 2
    assert graph.in_tree == ({"affine": (LEAF, LEAF), "layers": [{"W": LEAF, "b": LEAF}] * 2}, {"x": LEAF, "y": LEAF})


def test_input_names_are_sanitized_and_unique():
    specs = {"a b": Spec(()), "a_b": Spec(()), "c.d": Spec(())}
    graph = compiler.trace(lambda p: p["a b"] + p["a_b"] + p["c.d"], specs)
    assert graph.input_names() == ["p.a_b", "p.a_b_", "p.c_d"]


def test_none_is_an_empty_subtree():
    graph = compiler.trace(lambda p, unused: p["w"] * 2.0, {"w": Spec((2,)), "nothing": None}, None)
    assert graph.input_names() == ["p.w"]
    np.testing.assert_allclose(compiler.evaluate(graph, {"w": np.ones(2), "nothing": None}, None), [2.0, 2.0])


def test_param_and_data_kinds():
    def f(p, d):
        return p["w"] * d["x"] + ops.cast(p["n"], "float32") + p["frozen"] + d["extra"]

    params = {"w": Spec((2,)), "n": Spec((), "int32"), "frozen": Spec((2,), kind="data")}
    data = {"x": Spec((2,)), "extra": Spec((2,), kind="param")}
    kinds = {name: kind for name, kind, _ in inputs_of(compiler.trace(f, params, data))}
    # first argument: float leaves are params, int leaves data; Spec(kind=...) overrides either way
    assert kinds == {"p.w": "param", "p.n": "data", "p.frozen": "data", "d.x": "data", "d.extra": "param"}
    both = compiler.trace(lambda a, b: a * b, Spec((2,)), Spec((2,)), param_argnums=(0, 1))
    assert [kind for _, kind, _ in inputs_of(both)] == ["param", "param"]


def test_example_arrays_and_scalars_as_specs():
    graph = compiler.trace(lambda w, x, n, s: w * x * n * s,
                           np.ones((2, 3)), np.zeros(3, np.float32), 3, np.float64(1.5))
    assert [t for _, _, t in inputs_of(graph)] == [
        TensorType((2, 3), "float64"), TensorType((3,), "float32"), TensorType((), "int32"), TensorType((), "float64"),
    ]
    assert compiler.trace(lambda x: x, 2.0).type(0) == TensorType((), "float32")
    assert compiler.trace(lambda x: x, True).type(0) == TensorType((), "bool")


def test_varargs_names():
    def total(*xs):
        return xs[0] + xs[1] + xs[2]

    assert compiler.trace(total, Spec(()), Spec(()), Spec(())).input_names() == ["arg0", "arg1", "arg2"]
    assert compiler.trace(lambda a, *rest: a + rest[0], Spec(()), Spec(())).input_names() == ["a", "arg1"]


def test_trace_name_and_locations():
    graph = compiler.trace(lambda x: ops.exp(x) * 2.0, Spec((2,)), name="scaled")
    assert graph.name == "scaled"
    locs = {node.op: node.loc for _, node in graph.nodes()}
    assert locs["exp"].startswith("test_trace.py:") and locs["mul"].startswith("test_trace.py:")


# ---------------------------------------------------------- Python values mix in
def test_python_scalars_and_closures_mix_in():
    w = np.array([1.0, 2.0, 3.0])

    def f(x):
        total = 0.0
        for k in range(3):
            total = total + ops.sum(x * k) / (k + 1)
        return math.pi * total + ops.sum(x * w) - 1

    x = np.array([0.5, -1.0, 2.0])
    expected = math.pi * sum(np.sum(x * k) / (k + 1) for k in range(3)) + np.sum(x * w) - 1
    assert compiler.evaluate(compiler.trace(f, x), x) == pytest.approx(expected, rel=1e-12)


def test_python_control_flow_on_static_values_is_fine():
    def f(x):
        if x.shape[0] > 2 and x.dtype == "float64":  # shapes and dtypes are static
            return x * 2.0
        return x

    graph = compiler.trace(f, Spec((3,), "float64"))
    assert op_names(graph) == ["full", "mul"]


# ------------------------------------------------------------------ outputs
def test_outputs_scalar_and_pytrees():
    def f(x):
        return {"loss": ops.sum(x), "parts": [x * 2.0, (ops.mean(x), x)]}

    graph = compiler.trace(f, Spec((3,), "float64"))
    assert graph.out_tree == {"loss": LEAF, "parts": [LEAF, (LEAF, LEAF)]}
    x = np.array([1.0, 2.0, 3.0])
    out = compiler.evaluate(graph, x)
    assert out["loss"] == 6.0 and out["parts"][1][0] == 2.0
    np.testing.assert_array_equal(out["parts"][0], 2 * x)
    np.testing.assert_array_equal(out["parts"][1][1], x)


def test_constant_outputs_and_repeated_outputs():
    graph = compiler.trace(lambda x: (x, x, np.arange(3), 2.5), Spec((2,)))
    assert len(graph.outputs) == 4 and graph.outputs[0] == graph.outputs[1]
    out = compiler.evaluate(graph, np.ones(2, np.float32))
    np.testing.assert_array_equal(out[2], [0, 1, 2])
    assert out[3] == 2.5 and out[3].dtype == np.float32
    out[0][0] = 7.0  # a value returned twice is two arrays, not aliases
    assert out[1][0] == 1.0


# ------------------------------------------------------------------ errors
def test_wrong_spec_count():
    with pytest.raises(TraceError, match="<lambda> takes 2 positional arguments, 3 specs given"):
        compiler.trace(lambda a, b: a + b, Spec(()), Spec(()), Spec(()))


def test_too_few_specs_is_a_trace_error():
    with pytest.raises(TraceError, match="spec"):
        compiler.trace(lambda a, b: a + b, Spec(()))


def test_bad_spec_leaves():
    with pytest.raises(TraceError, match="spec leaves must be compiler.Spec or numpy arrays, got str"):
        compiler.trace(lambda x: x, "abc")
    with pytest.raises(TraceError, match="got object"):
        compiler.trace(lambda x: x, {"w": object()})


def test_data_dependent_if_is_a_clear_error():
    def f(x):
        if ops.sum(x) > 0:
            return x
        return -x

    with pytest.raises(TraceError, match=r"Python control flow \(if/while/and/or\) cannot depend on it; use ops.where"):
        compiler.trace(f, Spec((3,)))

    def g(x):
        while x < 10:
            x = x * 2
        return x

    with pytest.raises(TraceError, match="Python control flow"):
        compiler.trace(g, Spec(()))


def test_bad_outputs():
    with pytest.raises(TraceError, match="returned no tensors"):
        compiler.trace(lambda x: None, Spec(()))
    with pytest.raises(TraceError, match="returned no tensors"):
        compiler.trace(lambda x: {}, Spec(()))
    with pytest.raises(TraceError, match="output: cannot use str 'done' as a tensor"):
        compiler.trace(lambda x: (x, "done"), Spec(()))


def test_shape_errors_point_at_the_user_line():
    def f(x, y):
        return x + y  # the offending line

    line = f.__code__.co_firstlineno + 1
    with pytest.raises(ShapeError, match=rf"add at test_trace.py:{line}: shapes \(2,\) and \(3,\) do not broadcast"):
        compiler.trace(f, Spec((2,)), Spec((3,)))


# ------------------------------------------------------------------ scale
def _timed_trace(fn, *specs):
    start = time.perf_counter()
    graph = compiler.trace(fn, *specs)
    elapsed = time.perf_counter() - start
    per_node = elapsed / len(graph) * 1e6
    print(f"\n{graph.name}: traced {len(graph)} nodes in {elapsed * 1e3:.1f} ms = {per_node:.1f} us/node")
    return graph, per_node


def test_2000_step_loop_unrolls_without_recursion_error():
    def rnn(params, xs):
        h = ops.zeros((4,), "float64")
        for t in range(2000):
            h = ops.tanh(h * params["w"] + xs[t % 2] * 0.5)
        return ops.sum(h)

    limit = sys.getrecursionlimit()
    graph, per_node = _timed_trace(rnn, {"w": Spec((4,), "float64")}, [Spec((4,), "float64")] * 2)
    assert sys.getrecursionlimit() == limit
    assert op_names(graph).count("tanh") == 2000
    assert per_node < 1000  # generous: catches accidental quadratic behaviour, not machine speed
    w = np.full(4, 0.5)
    xs = [np.full(4, 0.1), np.full(4, -0.1)]
    h = np.zeros(4)
    for t in range(2000):
        h = np.tanh(h * w + xs[t % 2] * 0.5)
    np.testing.assert_allclose(compiler.evaluate(graph, {"w": w}, xs), h.sum(), rtol=1e-12)


def test_200_layer_mlp_traces_and_evaluates():
    depth, width = 200, 8

    def mlp(params, x):
        h = x
        for layer in params:
            h = ops.tanh(h @ layer["W"] + layer["b"])
        return ops.mean(h ** 2)

    params = [{"W": Spec((width, width), "float64"), "b": Spec((width,), "float64")} for _ in range(depth)]
    graph, per_node = _timed_trace(mlp, params, Spec((3, width), "float64"))
    assert len(graph.inputs) == 2 * depth + 1
    assert graph.input_names()[-3:] == ["params.199.W", "params.199.b", "x"]
    assert op_names(graph).count("matmul") == depth
    assert per_node < 1000
    rng = np.random.default_rng(0)
    values = [{"W": rng.normal(size=(width, width)) / np.sqrt(width), "b": rng.normal(size=width) * 0.1}
              for _ in range(depth)]
    x = rng.normal(size=(3, width))
    h = x
    for layer in values:
        h = np.tanh(h @ layer["W"] + layer["b"])
    assert compiler.evaluate(graph, values, x) == pytest.approx(np.mean(h ** 2), rel=1e-10)


def test_iterating_over_a_tensor_unrolls_its_first_axis():
    graph = compiler.trace(lambda x: [row * 2.0 for row in x], Spec((3, 2)))
    assert len(graph.outputs) == 3
