"""Property test: on random graphs (elementwise, shape, reduction ops, constants, repeated
subexpressions and the patterns simplify rewrites) and on their backward graphs, the
optimized graph evaluates to what the original does."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compiler
from compiler import Spec, ops
from compiler.errors import ShapeError
from compiler.pipeline import optimize

SHAPES = [(2, 3), (3,), (2, 1), ()]

UNARY = {
    "tanh": ops.tanh,
    "sin": ops.sin,
    "neg": lambda x: -x,
    "negneg": lambda x: -(-x),
    "square": ops.square,
    "pow2": lambda x: x ** 2.0,
    "pow1": lambda x: x ** 1.0,
    "log_exp": lambda x: ops.log(ops.exp(ops.tanh(x))),
    "sqrt_pos": lambda x: ops.sqrt(ops.square(x) + 0.5),
    "times_one": lambda x: x * 1.0 + -0.0,
    "times_minus_one": lambda x: x * -1.0 / 1.0,
    "folded_constant": lambda x: x * ops.exp(ops.full((2, 3), 0.25)) + ops.sum(ops.constant(np.arange(3.0))),
    "transpose": lambda x: x.T.T.T if x.ndim >= 2 else x * 2.0,
    "reshape": lambda x: ops.reshape(ops.reshape(x, (x.size,)), x.shape),
    "expand_squeeze": lambda x: ops.squeeze(ops.expand_dims(x, 0), 0),
    "broadcast": lambda x: ops.broadcast_to(x, (4, 2, 3)) if x.ndim < 2 or x.shape[-1] in (1, 3) else x,
}
BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "sub_neg": lambda a, b: a - (-b),
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / (ops.square(b) + 1.5),
    "max": ops.maximum,
    "where": lambda a, b: ops.where(a > b, a, b * 0.5),
    "where_same": lambda a, b: ops.where(a > b, a, a) + b,
}
REDUCE = {
    "sum0": lambda x: ops.sum(x, axis=0),
    "sumall": ops.sum,
    "mean_keep": lambda x: ops.mean(x, axis=-1, keepdims=True),
    "max": lambda x: ops.max(x, axis=-1),
    "logsumexp": lambda x: ops.logsumexp(x, axis=-1),
    "softmax": lambda x: ops.softmax(x, axis=-1),
    "sum_broadcast": lambda x: ops.sum(ops.broadcast_to(x, (5,) + x.shape), axis=0),
}

step = st.one_of(
    st.tuples(st.just("u"), st.sampled_from(sorted(UNARY)), st.integers(0, 100)),
    st.tuples(st.just("b"), st.sampled_from(sorted(BINARY)), st.integers(0, 100), st.integers(0, 100)),
    st.tuples(st.just("r"), st.sampled_from(sorted(REDUCE)), st.integers(0, 100)),
)


def build(program):
    def fn(*inputs):
        pool = list(inputs)
        for instr in program:
            x = pool[instr[2] % len(pool)]
            try:
                if instr[0] == "u":
                    pool.append(UNARY[instr[1]](x))
                elif instr[0] == "b":
                    pool.append(BINARY[instr[1]](x, pool[instr[3] % len(pool)]))
                elif x.ndim:
                    pool.append(REDUCE[instr[1]](x))
            except ShapeError:  # shapes that don't broadcast: skip this step
                continue
        total = ops.sum(pool[0]) * 0.0
        for k, value in enumerate(pool):
            total = total + ops.sum(value) * (0.3 + 0.1 * k)
        return total

    return fn


def _leaves(value):
    if isinstance(value, dict):
        return [leaf for key in sorted(value) for leaf in _leaves(value[key])]
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=st.lists(step, min_size=1, max_size=14), seed=st.integers(0, 2 ** 16))
def test_optimized_graphs_evaluate_like_the_originals(program, seed):
    specs = [Spec(s, "float64") for s in SHAPES]
    forward = compiler.trace(build(program), *specs)
    rng = np.random.default_rng(seed)
    args = [rng.uniform(-1.5, 1.5, size=s) for s in SHAPES]
    for graph in (forward, compiler.grad(forward, argnums=(0, 1, 2, 3))):
        before = compiler.dump(graph)
        optimized = optimize(graph, 2, verify_each=True)
        assert compiler.dump(graph) == before  # the input graph is untouched
        assert len(optimized) <= len(graph) + 2 * len(program)
        got, want = _leaves(compiler.evaluate(optimized, *args)), _leaves(compiler.evaluate(graph, *args))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-9)
