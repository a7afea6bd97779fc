"""Property test: on random well-typed graphs with fan-out and broadcasting, grad equals
central finite differences."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler import ops
from compiler.errors import ShapeError
from tests.gradcheck import check_grad

SHAPES = [(2, 3), (3,), (2, 1), ()]

UNARY = {
    "tanh": ops.tanh,
    "sin": ops.sin,
    "sigmoid": ops.sigmoid,
    "square": ops.square,
    "exp_tanh": lambda x: ops.exp(ops.tanh(x)),
    "log_pos": lambda x: ops.log(ops.square(x) + 1.0),
    "sqrt_pos": lambda x: ops.sqrt(ops.square(x) + 0.5),
}
BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / (ops.square(b) + 1.5),
    "pow": lambda a, b: (ops.square(a) + 1.0) ** ops.tanh(b),
}

step = st.one_of(
    st.tuples(st.just("u"), st.sampled_from(sorted(UNARY)), st.integers(0, 100)),
    st.tuples(st.just("b"), st.sampled_from(sorted(BINARY)), st.integers(0, 100), st.integers(0, 100)),
    st.tuples(st.just("r"), st.sampled_from(["sum0", "sumall", "mean_keep"]), st.integers(0, 100)),
)


def _reduce(kind, x):
    if kind == "sumall" or x.ndim == 0:
        return ops.sum(x)
    if kind == "sum0":
        return ops.sum(x, axis=0)
    return ops.mean(x, axis=-1, keepdims=True)


def build(program):
    def fn(*inputs):
        pool = list(inputs)
        for instr in program:
            if instr[0] == "u":
                pool.append(UNARY[instr[1]](pool[instr[2] % len(pool)]))
            elif instr[0] == "b":
                a, b = pool[instr[2] % len(pool)], pool[instr[3] % len(pool)]
                try:
                    pool.append(BINARY[instr[1]](a, b))
                except ShapeError:  # shapes that don't broadcast: skip this step
                    continue
            else:
                pool.append(_reduce(instr[1], pool[instr[2] % len(pool)]))
        # every value reaches the output, so inputs fan out to many consumers
        total = ops.sum(pool[0]) * 0.0
        for k, value in enumerate(pool):
            total = total + ops.sum(value) * (0.3 + 0.1 * k)
        return total

    return fn


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=st.lists(step, min_size=1, max_size=12), seed=st.integers(0, 2 ** 16))
def test_random_graph_gradients_match_finite_differences(program, seed):
    rng = np.random.default_rng(seed)
    args = [rng.uniform(-1.5, 1.5, size=shape) for shape in SHAPES]
    check_grad(build(program), args, rtol=1e-5, atol=1e-6, scalarize=False)
