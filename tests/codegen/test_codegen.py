"""The code generator against the interpreter: broadcasting, views, NaN/Inf, ints and
bools, reductions, matmul, shape ops, aliasing outputs, failures, opt levels.

Several ops share one graph where they can, so each test costs one LLVM compile.
Tolerances: elementwise float64 rtol 1e-12, float32 rtol 1e-5 (libm vs numpy's SIMD
transcendentals differ by a few ulp); reductions and matmul float64 rtol 1e-10,
float32 rtol 1e-4 (summation order differs).
"""
from __future__ import annotations

import numpy as np
import pytest

import compiler
import runtime
from compiler import Spec, ops
from compiler.codegen import LOWERINGS, assembly, compile as compile_graph, llvm_ir
from compiler.ops.accumulate import add_n
from compiler.ops.registry import all_ops
from compiler.ops.tensor import apply

ELEMENTWISE = {"float64": dict(rtol=1e-12, atol=0), "float32": dict(rtol=1e-5, atol=1e-7)}
REDUCTION = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=1e-4, atol=1e-5)}


def leaves(tree):
    return runtime.pytree.flatten(tree)[0]


def check(fn, *args, tol=None, opt_level=2, name=None, tols=ELEMENTWISE):
    """Trace fn on args, compile, compare every output with the interpreter (float outputs
    within `tol`, else within tols[dtype]); returns the kernel."""
    graph = compiler.trace(fn, *args, name=name or getattr(fn, "__name__", "f"))
    kernel = compile_graph(graph, opt_level=opt_level, cache=False)
    actual, expected = kernel(*args), compiler.evaluate(graph, *args)
    for a, e in zip(leaves(actual), leaves(expected), strict=True):
        assert a.shape == e.shape and a.dtype == e.dtype, (a.dtype, a.shape, e.dtype, e.shape)
        if e.dtype.kind == "f":
            np.testing.assert_allclose(a, e, **(tol or tols[e.dtype.name]))
        else:
            np.testing.assert_array_equal(a, e)
    return kernel


def normal(shape, dtype="float64", seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def positive(shape, dtype="float64", seed=0):
    return np.random.default_rng(seed).uniform(0.2, 3.0, size=shape).astype(dtype)


# ------------------------------------------------------------------ registry
def test_every_registered_op_has_a_lowering_rule():
    missing = sorted(name for name in all_ops() if name not in LOWERINGS)
    assert not missing, f"ops without lowering rules in compiler/codegen: {missing}"
    for name in all_ops():
        rule = LOWERINGS[name]
        assert rule.emit is not None or rule.view is not None or rule.source, name


# ---------------------------------------------------------------- elementwise
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_unary_and_binary_math(dtype):
    def f(x, p, y):
        return (-x, ops.exp(x), ops.log(p), ops.log1p(p), ops.sqrt(p), ops.tanh(x), ops.sigmoid(x * 30.0),
                ops.relu(x), ops.abs(x), ops.sign(x), ops.sin(x), ops.cos(x), ops.square(x),
                x + y, x - y, x * y, x / y, p ** y, ops.maximum(x, y), ops.minimum(x, y), ops.stop_gradient(x))

    check(f, normal((3, 4), dtype), positive((3, 4), dtype, 1), normal((4,), dtype, 2))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_broadcasting_every_flavour(dtype):
    def f(a, b, c, d, s):
        return a + b, a * c, d - a, s * a, b + c, ops.where(a > 0, b, c), add_n(a, a * 2.0, a)

    check(f, normal((2, 3, 4), dtype), normal((3, 1), dtype, 1), normal((1, 4), dtype, 2),
          normal((2, 1, 1), dtype, 3), normal((), dtype, 4))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_views_feed_elementwise_ops(dtype):
    """Transposes, reversed and strided slices, broadcast_to, squeeze/expand_dims: all views."""
    def f(x, y):
        t = ops.transpose(x, (1, 0))           # (4, 3), strides (1, 4)
        r = x[::-1, ::2]                        # negative and step-2 strides
        e = ops.expand_dims(y, 0)               # (1, 4)
        return t * 2.0, r + 1.0, ops.broadcast_to(y, (3, 4)) + x, ops.squeeze(e, 0) * y, x[1:, 1:3] - e[:, 1:3]

    check(f, normal((3, 4), dtype), normal((4,), dtype, 1))


def test_nan_and_inf_propagate_like_numpy():
    def f(x, y):
        return (ops.exp(x), ops.log(x), ops.sqrt(x), ops.tanh(x), ops.sigmoid(x), ops.relu(x), ops.sign(x),
                ops.maximum(x, y), ops.minimum(x, y), x + y, x * y, x / y, x ** y,
                ops.equal(x, y), ops.not_equal(x, y), ops.less(x, y), ops.greater_equal(x, y),
                ops.cast(x, "bool"), ops.abs(x), ops.log1p(x), ops.sin(x))

    for dtype, big in (("float64", 1e308), ("float32", 3e38)):
        values = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, big, -big, 1e-45], dtype)
        x, y = np.repeat(values, len(values)), np.tile(values, len(values))
        check(f, x, y, tol=dict(rtol=1e-6, atol=0))


def test_sigmoid_is_stable_on_both_tails():
    x = np.array([-1000.0, -100.0, -30.0, 0.0, 30.0, 100.0, 1000.0])
    kernel = check(lambda x: ops.sigmoid(x), x)
    out = kernel(x)
    assert out[0] == 0.0 and out[-1] == 1.0 and np.all(np.isfinite(out))
    assert out[1] > 0  # exp(-100) survives as a tiny number, not 0 from 1/(1+inf)


def test_reductions_propagate_nan_and_inf():
    x = np.array([[1.0, np.nan, 3.0], [1.0, 2.0, np.inf], [-np.inf, -np.inf, -np.inf], [np.inf, 1.0, -np.inf]])

    def f(x):
        return (ops.max(x, axis=1), ops.min(x, axis=1), ops.sum(x, axis=1), ops.mean(x, axis=1),
                ops.logsumexp(x, axis=1), ops.softmax(x, axis=1), ops.log_softmax(x, axis=1))

    check(f, x, tol=REDUCTION["float64"])


def test_softmax_family_is_stable_for_large_inputs():
    x = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, -1e4], [3.0, 3.0, 3.0]], np.float32)

    def f(x):
        return ops.softmax(x, axis=-1), ops.log_softmax(x, axis=0), ops.logsumexp(x, axis=1, keepdims=True)

    kernel = check(f, x, tol=REDUCTION["float32"])
    assert all(np.isfinite(leaf).all() for leaf in leaves(kernel(x)))


# ------------------------------------------------------------ ints and bools
def test_int_and_bool_ops():
    def f(i, j, k, b, c):
        return (i + j, i - j, i * j, -i, ops.abs(i), ops.relu(i), ops.sign(i), ops.square(j),
                ops.maximum(i, j), ops.minimum(i, j), i < j, i == j, i >= j,
                ops.logical_and(b, c), ops.logical_or(b, c), ops.logical_not(b), ops.equal(b, c),
                ops.where(b, i, j), k * k + k, ops.sum(i, axis=0), ops.max(k), ops.min(i, axis=1),
                ops.cast(b, "int32"), ops.cast(b, "float32"), ops.cast(i, "int64"), ops.cast(k, "int32"),
                ops.cast(i, "float64"), ops.cast(i, "bool"), i @ j.T)

    big = np.int32(2**31 - 1)
    i = np.array([[3, -7, 0], [big, -big - 1, 5]], np.int32)
    j = np.array([[2, 5, -1], [1, -1, 5]], np.int32)
    k = np.array([2**40, -3, 7], np.int64)  # k*k wraps around
    b = np.array([[True, False, True], [False, False, True]])
    c = np.array([True, False, False])
    check(f, i, j, k, b, c)


def test_float_to_int_casts_truncate_toward_zero():
    x = np.array([0.5, 1.5, -2.5, 3.9, -0.9, 1e6, -1e6])
    check(lambda x: (ops.cast(x, "int32"), ops.cast(x, "int64"), ops.cast(ops.cast(x, "float32"), "int32")), x)


# ---------------------------------------------------------------- reductions
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_reductions_any_axes_and_keepdims(dtype):
    def f(x):
        t = ops.transpose(x, (2, 0, 1))  # a strided operand
        return (ops.sum(x), ops.sum(x, axis=(0, 2)), ops.sum(x, axis=1, keepdims=True), ops.mean(t, axis=(1, 2)),
                ops.max(x, axis=(0, 1), keepdims=True), ops.min(t, axis=0), ops.logsumexp(x, axis=(0, 2)),
                ops.logsumexp(t, axis=2, keepdims=True), ops.softmax(x, axis=1), ops.log_softmax(t, axis=0),
                ops.mean(x, axis=2))

    check(f, normal((3, 4, 5), dtype), tol=REDUCTION[dtype])


def test_reductions_of_empty_axes():
    def f(x):
        return (ops.sum(x, axis=1), ops.mean(x, axis=1), ops.logsumexp(x, axis=1), ops.sum(x, axis=0),
                ops.softmax(x, axis=1))

    check(f, np.zeros((3, 0)))


def test_long_sum_is_accurate_in_float32():
    x = np.random.default_rng(0).uniform(0, 1, size=(1 << 16,)).astype(np.float32)
    kernel = check(lambda x: ops.sum(x), x, tol=dict(rtol=1e-4, atol=0))
    assert abs(float(kernel(x)) - float(np.sum(x.astype(np.float64)))) < 1e-4 * x.size


# --------------------------------------------------------------------- matmul
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_matmul_shapes_and_strided_operands(dtype):
    def f(a, b, c, d, e):
        return (a @ b, c @ d, c @ b, a @ ops.transpose(a, (1, 0)), ops.transpose(b, (1, 0)) @ ops.transpose(a, (1, 0)),
                apply("matmul", e, d), ops.matmul(a[0], b), ops.matmul(a, b[:, 1]))

    check(f, normal((5, 7), dtype), normal((7, 6), dtype, 1), normal((2, 3, 5, 7), dtype, 2),
          normal((3, 7, 4), dtype, 3), normal((1, 5, 7), dtype, 4), tol=REDUCTION[dtype])


def test_matmul_with_empty_contraction():
    check(lambda a, b: a @ b, np.zeros((3, 0)), np.zeros((0, 4)))


# ------------------------------------------------------------------ shape ops
def test_shape_ops():
    def f(x, y, idx):
        t = ops.transpose(x, (1, 0))
        return (ops.reshape(t, (12,)),                          # non-contiguous: a copy
                ops.reshape(x, (2, 6)),                         # contiguous: free
                x[::-1, 1::2], ops.swapaxes(x, 0, 1)[::-2],
                apply("pad", x, low=(1, 0), high=(0, 2), interior=(1, 2), value=-1.5),
                ops.concatenate([x, y, x[:0], t[:, :3].T * 2.0], axis=0),
                ops.stack([y[0], y[1]], axis=1),
                ops.take(x, idx, axis=1), ops.take(t, idx, axis=0),
                apply("scatter_add", y, idx[:4], axis=1, size=3),
                ops.broadcast_to(y[:, :1], (2, 5)))

    idx = np.array([0, -1, 5, -9, 2, 2], np.int32)  # wrap once, then clip: never out of bounds
    check(f, normal((3, 4)), normal((2, 4), seed=1), idx)


def test_take_and_scatter_add_clip_like_the_reference():
    def f(x, u, idx):
        return ops.take(x, idx, axis=0), apply("scatter_add", u, idx, axis=0, size=4)

    idx = np.array([[3, 3], [-1, 100], [-100, 0]], np.int64)  # duplicates accumulate
    check(f, normal((4, 2)), normal((3, 2, 5), seed=1), idx)


def test_int_and_bool_shape_ops():
    def f(i, b):
        return ops.transpose(i, (1, 0))[::-1], ops.concatenate([b, b], axis=0), apply(
            "pad", i, low=(1, 1), high=(0, 0), interior=(0, 0), value=7.0), ops.take(b, np.array([1, 0]), axis=1)

    check(f, np.arange(6, dtype=np.int32).reshape(2, 3), np.array([[True, False], [False, True]]))


# ------------------------------------------------------------- outputs, aliasing
def test_outputs_that_alias_inputs_constants_views_and_each_other():
    def f(x, y):
        z = x * 2.0
        return x, z, z, ops.transpose(x, (1, 0)), ops.full((2, 2), 3.0, "float64"), ops.constant(np.eye(2)), \
            ops.reshape(z, (4,)), y, y

    x, y = normal((2, 2)), normal((3,), seed=1)
    kernel = check(f, x, y)
    out = kernel(x, y)
    assert out[1] is not out[2] and not np.shares_memory(out[1], out[2])
    out[0][0, 0] = 99.0
    assert x[0, 0] != 99.0  # outputs are fresh arrays, never the caller's input


def test_dead_values_are_not_computed_but_results_stay_right():
    def f(x):
        unused = ops.exp(x) * 3.0  # noqa: F841
        return x + 1.0

    graph = compiler.trace(f, normal((3,)))
    kernel = compile_graph(graph, opt_level=0, cache=False)
    np.testing.assert_allclose(kernel(normal((3,))), normal((3,)) + 1.0)
    assert kernel.manifest["extra"]["kernels"] == 1


def test_pytree_inputs_and_outputs_keep_their_structure():
    def f(params, x):
        return {"loss": ops.sum(x @ params["W"] + params["b"]), "h": [x * 2.0]}

    params = {"W": normal((3, 2)), "b": normal((2,), seed=1)}
    kernel = check(f, params, normal((4, 3), seed=2), tol=REDUCTION["float64"])
    assert kernel.output_names == ["out.h.0", "out.loss"]


# ------------------------------------------------------------------- failures
def test_fixed_point_failures_return_a_status():
    from compiler.ops.implicit import fixed_point

    def slow(x):  # converges, but not within 3 steps
        return fixed_point(lambda z, x: 0.9 * z + x, ops.zeros_like(x), x, tol=1e-12, max_iter=3)

    def diverging(x):
        return fixed_point(lambda z, x: z * z + x, x, x, tol=1e-12, max_iter=50)

    x = np.array([1.0, 2.0])
    for fn, code in ((slow, 1), (diverging, 2)):
        graph = compiler.trace(fn, x)
        with pytest.raises(compiler.EvalError):
            compiler.evaluate(graph, x)
        kernel = compile_graph(graph, cache=False)
        with pytest.raises(runtime.KernelError, match=f"error code {code}"):
            kernel(x)
        assert str(code) in kernel.manifest["extra"]["status_codes"]


def test_fixed_point_with_strided_args_and_constant_body():
    from compiler.ops.implicit import fixed_point

    def f(x, w):
        return fixed_point(lambda z, x, w: ops.tanh(z @ w + x) * 0.5, ops.zeros_like(x[::2]), x[::2], w.T,
                           tol=1e-12, max_iter=200)

    check(f, normal((6, 3)), normal((3, 3), seed=1) * 0.3, tol=REDUCTION["float64"])


def test_bad_graphs_and_options_are_rejected():
    graph = compiler.trace(lambda x: x + 1.0, normal((2,)))
    with pytest.raises(ValueError, match="opt_level"):
        compile_graph(graph, opt_level=7)
    broken = graph.copy()
    broken.outputs = [12345]
    with pytest.raises(compiler.PullbackError):
        compile_graph(broken, cache=False)


# -------------------------------------------------------------- opt levels, text
@pytest.mark.parametrize("opt_level", [0, 1, 3])
def test_every_opt_level_is_correct(opt_level):
    def f(x, w):
        h = ops.tanh(x @ w)
        return ops.softmax(h, axis=1), ops.sum(h * h), h[::-1]

    check(f, normal((4, 5), "float32"), normal((5, 3), "float32", 1), tol=REDUCTION["float32"], opt_level=opt_level)


def test_llvm_ir_and_assembly_text():
    x, y = normal((64,), "float32"), normal((64,), "float32", 1)
    graph = compiler.trace(lambda x, y: ops.exp(x) * y, x, y, name="ew")
    text = llvm_ir(graph, 2)
    assert "define" in text and "pullback_ew" in text and ("llvm.fmuladd" in text or "llvm.fma" in text)  # exp is inline vector math
    assert "x float>" in text  # the loop is vectorized
    unoptimized = llvm_ir(graph, 0)
    assert "x float>" not in unoptimized
    asm = assembly(graph, 2)
    assert "pullback_ew" in asm


# ------------------------------------------------------------------ gradients
def test_compiled_training_step_matches_the_interpreter():
    def loss(params, x, y):
        h = ops.tanh(x @ params["W1"] + params["b1"])
        logits = h @ params["W2"] + params["b2"]
        return ops.mean(ops.logsumexp(logits, axis=1) - ops.sum(logits * y, axis=1))

    specs = ({"W1": Spec((8, 16)), "b1": Spec((16,)), "W2": Spec((16, 4)), "b2": Spec((4,))},
             Spec((32, 8)), Spec((32, 4)))
    step = compiler.value_and_grad(compiler.trace(loss, *specs), argnums=0)
    rng = np.random.default_rng(0)
    params = {k: rng.normal(size=s.shape).astype(np.float32) for k, s in specs[0].items()}
    x = rng.normal(size=(32, 8)).astype(np.float32)
    y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 32)]
    kernel = compile_graph(step, cache=False)
    actual, expected = kernel(params, x, y), compiler.evaluate(step, params, x, y)
    for a, e in zip(leaves(actual), leaves(expected), strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-6)
    for _ in range(3):  # repeated calls: same results (the workspace is reused, contents undefined)
        np.testing.assert_array_equal(leaves(kernel(params, x, y))[0], leaves(actual)[0])


def test_long_graphs_are_split_into_chunk_functions(monkeypatch):
    from compiler.codegen import emit
    from compiler.ops.implicit import fixed_point

    monkeypatch.setattr(emit, "CHUNK", 3)

    def f(x, y):
        for _ in range(4):
            x = ops.tanh(x) * y + 0.5
        z = fixed_point(lambda z, x: 0.5 * z + x, ops.zeros_like(x), x, tol=1e-12, max_iter=200)
        return z, x * 2.0, y

    kernel = check(f, normal((4,)), normal((4,), seed=1))
    assert "part1" in llvm_ir(compiler.trace(f, normal((4,)), normal((4,), seed=1)), 0)

    def failing(x):
        x = ops.exp(x) + ops.sin(x) * 2.0 - 1.0
        return fixed_point(lambda z, x: z + x, x, x, tol=0.0, max_iter=2) * 3.0

    with pytest.raises(runtime.KernelError, match="error code 1"):
        compile_graph(compiler.trace(failing, normal((3,))), opt_level=0, cache=False)(normal((3,)))
    del kernel


def test_empty_and_zero_dimensional_tensors():
    def f(e, s, m):
        return (ops.exp(e) + 1.0, e @ m, ops.sum(e, axis=0), ops.transpose(e, (1, 0)) * 2.0, s * s + 1.0,
                ops.sum(s), ops.softmax(e, axis=1), ops.concatenate([e, e], axis=0), ops.reshape(s, (1, 1)))

    check(f, np.zeros((0, 3)), np.array(2.5), normal((3, 2)))


def test_odd_names_and_graphs_without_inputs():
    from compiler.ir.graph import Graph, building

    kernel = check(lambda x: x * 2.0, np.ones(3), name="we'ird na-me é")
    assert kernel.manifest["symbol"].startswith("pullback_we_ird")
    graph = Graph("constants only")
    graph.in_tree = ()
    with building(graph):
        c, f = ops.constant(np.arange(4.0)), ops.full((2,), 1.5, "float64")
    graph.set_outputs([c.id, f.id])
    a, b = compile_graph(graph, cache=False)()
    np.testing.assert_array_equal(a, np.arange(4.0))
    np.testing.assert_array_equal(b, [1.5, 1.5])


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_conv2d_both_loop_orders(groups):
    """Small kernels loop over taps outside; kernels larger than the output plane (weight
    gradients) compute each output as one dot product. Both with strides, padding, dilation."""
    from compiler.ops import conv

    def f(x, small, large):
        return (conv.conv2d(x, small, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=groups),
                conv.conv2d(x, large, stride=(1, 2), padding=(2, 1), dilation=(2, 1), groups=groups),
                conv.max_pool2d(x, 3, stride=2, padding=1))

    x = normal((2, 4, 9, 8))
    check(f, x, normal((4, 4 // groups, 3, 2), seed=1), normal((8, 4 // groups, 6, 5), seed=2), tol=REDUCTION["float64"])


def test_max_pool_ties_nan_and_inf_follow_the_reference():
    from compiler.ops import conv

    x = np.array([[[[1.0, 1.0, 0.0, -np.inf],
                    [0.0, np.nan, np.nan, -np.inf],
                    [2.0, 2.0, 2.0, 2.0],
                    [-np.inf, -np.inf, 3.0, np.nan]]]])
    g = normal((1, 1, 5, 5))
    attrs = dict(kernel=(2, 2), stride=(1, 1), padding=(1, 1))

    def f(x, g, v):
        return (apply("max_pool2d", x, **attrs), apply("max_pool2d_grad", x, g, **attrs),
                apply("max_pool2d_select", x, v, **attrs))

    check(f, x, g, normal((1, 1, 4, 4), seed=3))
    del conv
