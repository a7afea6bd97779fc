"""The pool-grad pass: a ReLU mask on a max_pool2d_grad moves onto the pooled gradient,
and a sum over both spatial axes of one reads the pooled gradient. Golden before/after
IR, what is left alone, bitwise equality through NaN/Inf/-0.0 and overlapping or padded
windows, and the pipeline (compiled vs the interpreter)."""
import numpy as np
import pytest

import compiler
from compiler import Spec, ops
from compiler.ops import conv
from compiler.ops.tensor import apply
from compiler.passes import PassManager
from compiler.passes.pool_grad import PoolGrad
from compiler.pipeline import PIPELINES
from tests.passes.support import body, expected, ops_of, run

POOL = PoolGrad()
K2 = dict(kernel=(2, 2), stride=(2, 2), padding=(0, 0))


def masked_pool_grad(attrs=K2, *, relu=True, zero=0.0, cmp="gt", bound=0.0, with_pool=True, pool_attrs=None):
    """(t, g) -> (pooled, where(t cmp bound, max_pool2d_grad(x, g), zero)), x = relu(t) or t:
    what the training step of relu -> max_pool2d computes, with knobs to break the match."""
    def fn(t, g):
        x = ops.relu(t) if relu else t
        scattered = apply("max_pool2d_grad", x, g, **attrs)
        mask = getattr(ops, {"gt": "greater", "ge": "greater_equal"}[cmp])(t, bound)
        out = ops.where(mask, scattered, zero)
        if not with_pool:
            return out
        return apply("max_pool2d", x, **(pool_attrs or attrs)), out
    return fn


def graph_of(fn, t_shape=(2, 3, 4, 4), g_shape=(2, 3, 2, 2)):
    return compiler.trace(fn, Spec(t_shape), Spec(g_shape))


# ---------------------------------------------------------------- golden IR
def test_relu_mask_moves_onto_the_pooled_gradient():
    graph = graph_of(masked_pool_grad())
    assert body(graph) == expected("""
        %t = input : f32[2,3,4,4] param
        %g = input : f32[2,3,2,2] data
        %0 = relu(%t) : f32[2,3,4,4]
        %1 = max_pool2d_grad(%0, %g) {kernel=(2, 2), padding=(0, 0), stride=(2, 2)} : f32[2,3,4,4]
        %2 = full() {dtype='float32', shape=(), value=0.0} : f32[]
        %3 = gt(%t, %2) : bool[2,3,4,4]
        %4 = full() {dtype='float32', shape=(), value=0.0} : f32[]
        %5 = where(%3, %1, %4) : f32[2,3,4,4]
        %6 = max_pool2d(%0) {kernel=(2, 2), padding=(0, 0), stride=(2, 2)} : f32[2,3,2,2]
        return %6, %5
    """)
    assert run(POOL, graph)
    assert body(graph) == expected("""
        %t = input : f32[2,3,4,4] param
        %g = input : f32[2,3,2,2] data
        %0 = relu(%t) : f32[2,3,4,4]
        %1 = full() {dtype='float32', shape=(), value=0.0} : f32[]
        %2 = full() {dtype='float32', shape=(), value=0.0} : f32[]
        %3 = max_pool2d(%0) {kernel=(2, 2), padding=(0, 0), stride=(2, 2)} : f32[2,3,2,2]
        %4 = gt(%3, %1) : bool[2,3,2,2]
        %5 = where(%4, %g, %2) : f32[2,3,2,2]
        %6 = max_pool2d_grad(%0, %5) {kernel=(2, 2), padding=(0, 0), stride=(2, 2)} : f32[2,3,4,4]
        return %3, %6
    """)
    assert not run(POOL, graph)  # nothing left to move


def test_spatial_sum_reads_the_pooled_gradient():
    def fn(x, g):
        scattered = apply("max_pool2d_grad", x, g, **K2)
        return ops.sum(scattered, axis=(0, 2, 3)), ops.sum(scattered, axis=(2, 3), keepdims=True)

    graph = graph_of(fn)
    assert run(POOL, graph)
    assert body(graph) == expected("""
        %x = input : f32[2,3,4,4] param
        %g = input : f32[2,3,2,2] data
        %0 = sum(%g) {axes=(0, 2, 3), keepdims=False} : f32[3]
        %1 = sum(%g) {axes=(2, 3), keepdims=True} : f32[2,3,1,1]
        return %0, %1
    """)


def test_both_rules_in_a_training_step():
    """relu -> pool in a real step: the mask reads the forward pool, the bias gradient the
    pooled gradient, and no full-size where or gt is left."""
    def loss(x, w, b):
        h = conv.max_pool2d(ops.relu(conv.conv2d(x, w, b, padding=1)), 2)
        return ops.sum(h * h)

    graph = compiler.value_and_grad(compiler.trace(loss, Spec((2, 1, 6, 6)), Spec((3, 1, 3, 3)), Spec((3,))),
                                    argnums=(0, 1, 2))
    before = _before_fuse(graph)
    after = before.copy()
    assert run(POOL, after)
    pooled = {n.type.shape for _, n in after.nodes() if n.op in ("where", "gt")}
    assert pooled == {(2, 3, 3, 3)}
    (bias_sum,) = [n for _, n in after.nodes() if n.op == "sum" and n.type.shape == (3,)]
    assert after.node(bias_sum.operands[0]).op == "where"
    args = [np.random.default_rng(i).standard_normal(s).astype(np.float32)
            for i, s in enumerate([(2, 1, 6, 6), (3, 1, 3, 3), (3,)])]
    want, got = compiler.evaluate(before, *args), compiler.evaluate(after, *args)
    np.testing.assert_array_equal(got[1][0], want[1][0])  # dx: the mask alone, bitwise
    np.testing.assert_array_equal(got[1][1], want[1][1])
    np.testing.assert_allclose(got[1][2], want[1][2], rtol=1e-6)  # db: summed in another order


def _before_fuse(graph):
    passes = [p for p in PIPELINES[2] if p.name != "pool-grad"]
    return PassManager(passes[:[p.name for p in passes].index("fuse")]).run(graph.copy())


def test_is_a_frozen_kebab_case_pass():
    assert PoolGrad.name == "pool-grad" and PoolGrad() == POOL and hash(PoolGrad()) == hash(POOL)


# ---------------------------------------------------------------- left alone
@pytest.mark.parametrize("knobs", [
    dict(with_pool=False),  # no forward pool to read: a new one would cost what it saves
    dict(pool_attrs=dict(kernel=(2, 2), stride=(1, 1), padding=(0, 0))),  # another pool
    dict(zero=-0.0),  # where's zero would be -0.0, the scatter gives +0.0
    dict(zero=1.0),
    dict(cmp="ge"),  # ge keeps t == 0, where relu(t) > 0 does not hold
    dict(bound=1.0),
])
def test_other_masks_are_left_alone(knobs):
    graph = graph_of(masked_pool_grad(**knobs))
    before = compiler.dump(graph)
    assert not run(POOL, graph)
    assert compiler.dump(graph) == before


def test_mask_of_another_tensor_is_left_alone():
    def fn(t, u, g):
        x = ops.relu(t)
        scattered = apply("max_pool2d_grad", x, g, **K2)
        return apply("max_pool2d", x, **K2), ops.where(u > 0.0, scattered, 0.0)

    graph = compiler.trace(fn, Spec((1, 1, 4, 4)), Spec((1, 1, 4, 4)), Spec((1, 1, 2, 2)))
    assert not run(POOL, graph)


def test_a_scatter_read_elsewhere_is_left_alone():
    def fn(t, g):
        x = ops.relu(t)
        scattered = apply("max_pool2d_grad", x, g, **K2)
        return apply("max_pool2d", x, **K2), ops.where(t > 0.0, scattered, 0.0), scattered * 2.0

    graph = graph_of(fn)
    assert not run(POOL, graph)


@pytest.mark.parametrize("axes", [(0, 1), (2,), (0, 3)])
def test_sums_keeping_a_spatial_axis_are_left_alone(axes):
    graph = graph_of(lambda x, g: ops.sum(apply("max_pool2d_grad", x, g, **K2), axis=axes))
    assert not run(POOL, graph)
    assert "max_pool2d_grad" in ops_of(graph)


# ------------------------------------------------------------ same values
POOLS = [
    ((2, 3, 6, 6), (2, 2), (2, 2), (0, 0)),
    ((2, 2, 7, 5), (2, 2), (2, 2), (0, 0)),  # leftover row and column: in no window
    ((1, 2, 6, 7), (3, 3), (2, 2), (1, 1)),  # overlapping, padded
    ((1, 2, 5, 5), (2, 2), (1, 1), (1, 1)),
]


def hostile(shape, seed):
    """Normal values with ties, zeros of both signs, +-inf and NaN sprinkled in."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1)
    picks = rng.choice(flat.size, size=(6, max(1, flat.size // 12)), replace=False)
    flat[picks[0]] = 0.0
    flat[picks[1]] = -0.0
    flat[picks[2]] = np.inf
    flat[picks[3]] = -np.inf
    flat[picks[4]] = np.nan
    flat[picks[5]] = flat[picks[5] - 1]  # ties with the previous pixel
    return x


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("shape, kernel, stride, padding", POOLS)
def test_mask_rewrite_is_bitwise_the_same(shape, kernel, stride, padding, relu):
    attrs = dict(kernel=kernel, stride=stride, padding=padding)
    pooled = conv._pooled_type(compiler.TensorType(shape, "float32"), attrs).shape
    graph = graph_of(masked_pool_grad(attrs, relu=relu), shape, pooled)
    rewritten = graph.copy()
    assert run(POOL, rewritten)
    for seed in range(3):
        t, g = hostile(shape, seed), hostile(pooled, seed + 10)
        want, got = compiler.evaluate(graph, t, g), compiler.evaluate(rewritten, t, g)
        for a, b in zip(want, got):
            np.testing.assert_array_equal(np.signbit(a), np.signbit(b))
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape, kernel, stride, padding", POOLS)
def test_sum_rewrite_adds_the_same_terms(shape, kernel, stride, padding):
    attrs = dict(kernel=kernel, stride=stride, padding=padding)
    pooled = conv._pooled_type(compiler.TensorType(shape, "float64"), attrs).shape
    graph = compiler.trace(lambda x, g: ops.sum(apply("max_pool2d_grad", x, g, **attrs), axis=(0, 2, 3)),
                           Spec(shape, "float64"), Spec(pooled, "float64"))
    rewritten = graph.copy()
    assert run(POOL, rewritten)
    x, g = hostile(shape, 1).astype(np.float64), np.random.default_rng(2).standard_normal(pooled)
    np.testing.assert_allclose(compiler.evaluate(rewritten, x, g), compiler.evaluate(graph, x, g), rtol=1e-12)
    g[0, 0, 0, 0] = np.inf
    np.testing.assert_array_equal(compiler.evaluate(rewritten, x, g)[0], np.inf)


def test_the_pipeline_runs_it_and_compiled_code_agrees():
    """At opt_level 2 the compiled step matches the interpreter on the unoptimized step,
    NaN and Inf in the input included."""
    def loss(x, w, b):
        h = conv.max_pool2d(ops.relu(conv.conv2d(x, w, b, padding=1)), 2)
        return ops.sum(h * h)

    step = compiler.value_and_grad(compiler.trace(loss, Spec((2, 2, 8, 6)), Spec((4, 2, 3, 3)), Spec((4,))),
                                   argnums=(0, 1, 2))
    assert "pool-grad" in [p.name for p in PIPELINES[2]]
    optimized = compiler.optimize(step)
    scatters = [i for i, n in optimized.nodes() if n.op == "max_pool2d_grad"]
    assert scatters and not [u for i in scatters for u in optimized.users(i) if optimized.node(u).op == "sum"]
    kernel = compiler.compile(step, cache=False)
    x = hostile((2, 2, 8, 6), 3)
    w = np.random.default_rng(4).standard_normal((4, 2, 3, 3)).astype(np.float32)
    b = np.random.default_rng(5).standard_normal(4).astype(np.float32)
    want, got = compiler.evaluate(step, x, w, b), kernel(x, w, b)
    for a, c in zip([want[0], *want[1]], [got[0], *got[1]]):
        np.testing.assert_allclose(c, a, rtol=1e-4, atol=1e-5)
