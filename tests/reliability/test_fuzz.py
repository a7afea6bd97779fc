"""Differential fuzzing: random well-typed programs over every op (tests/reliability/fuzzgen.py),
with broadcasting, reductions, fan-out and tied weights, checked three ways:

(a) compiled forward (loss and intermediates, int/bool ones too) and compiled
    value_and_grad == the interpreter, float64 and float32, at random opt levels;
(b) compiled gradients == central finite differences (float64), and == the interpreter's
    gradients in float32, within a tolerance scaled by the interpreter's own float32 error;
(c) compiler.pipeline.optimize at levels 1 and 2 == the unoptimized graph (interpreter).

Also: (a) and (c) with inputs poisoned by NaN, +-inf and +-0 (same NaN and inf places);
random matmul shapes and operand layouts (tile edges, packed B, transposed and strided
views, batches); every op sample (tests/ops/samples_*.py) composed into random combos
whose outputs feed later samples; and a check that the generator emits every registered op.

Each hypothesis example is ONE program of many steps (so ONE graph per compile): LLVM
is the cost, so CI runs a fixed (derandomized) handful of examples per test, about 25 s
for the file. A longer run on demand, with random seeds, prints how many programs, graphs
and ops it tried:

    PULLBACK_FUZZ_EXAMPLES=500 .venv/bin/python -m pytest tests/reliability/test_fuzz.py -s

A failure prints the shrunk program (a list of (kind, i, j, k) steps, see fuzzgen.py) and
a @reproduce_failure blob.
"""
from __future__ import annotations

import os
import time
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

import compiler
import runtime
from compiler.codegen import compile as compile_graph
from compiler.ops.registry import all_ops
from compiler.pipeline import optimize
from tests.gradcheck import numerical_grad
from tests.reliability import fuzzgen as fg

EXAMPLES = int(os.environ.get("PULLBACK_FUZZ_EXAMPLES", "0") or 0)
LONG = EXAMPLES > 0
PROGRAM_STEPS = 28 if LONG else 20
MARGIN = 1e-4  # relative distance every kink operand keeps from its kink (relu at 0, ties, ...)
FD_EPS = 1e-6
FULL_FD_SIZE = 12  # inputs up to this size get every partial derivative; larger ones, random directions


def budget(ci: int) -> settings:
    return settings(max_examples=EXAMPLES if LONG else ci, deadline=None, derandomize=not LONG, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=LONG)


STATS: Counter = Counter()
OPS_SEEN: set = set()


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    missing = sorted(set(all_ops()) - OPS_SEEN)
    lines = [
        f"[fuzz] {STATS['programs']} programs tried ({STATS['rejected']} rejected near a kink or tie), "
        f"{STATS['graphs']} graphs with {STATS['ops']:,} ops ({STATS['forward_ops']:,} in forward graphs), "
        f"{STATS['compiles']} native compiles, {STATS['fd_partials']:,} finite-difference checks, "
        f"{STATS['combos']} sample combos; in {seconds:.1f} s",
        f"[fuzz] {len(OPS_SEEN & set(all_ops()))}/{len(all_ops())} registered ops generated"
        + (f"; never: {', '.join(missing)}" if missing else ""),
    ]
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    for line in lines:
        if reporter is not None and (LONG or request.config.getoption("capture") == "no"):
            reporter.write_line(line)
        elif LONG:
            print(line)


def _record(graph: compiler.Graph, forward: bool = False) -> compiler.Graph:
    STATS["graphs"] += 1
    STATS["ops"] += len(graph)
    if forward:
        STATS["forward_ops"] += len(graph)
    OPS_SEEN.update(graph.node(n).op for n in graph.nx)
    return graph


def _compile(graph: compiler.Graph, opt_level: int):
    STATS["compiles"] += 1
    return compile_graph(graph, opt_level, cache=False)


# ------------------------------------------------------------------------------ strategies
def _programs(kinds: list[str]) -> st.SearchStrategy:
    step = st.tuples(st.sampled_from(kinds), st.integers(0, 63), st.integers(0, 63), st.integers(0, 63))
    return st.lists(step, min_size=3, max_size=PROGRAM_STEPS)


seeds = st.integers(0, 2 ** 32 - 1)
dtypes = st.sampled_from(["float64", "float32"])


def _accept(program: list, seed: int, threshold: float = MARGIN) -> None:
    """Reject examples with a kink operand too close to its kink (or non-finite values)."""
    STATS["programs"] += 1
    margin = fg.margins(program, seed)
    note(f"kink margin {margin:.3g}")
    if margin < threshold:
        STATS["rejected"] += 1
    assume(margin >= threshold)


# ------------------------------------------------------------------------------ comparisons
def _leaves(value) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in runtime.pytree.flatten(value)[0]]


def assert_matches(actual, expected, dtype: str, what: str, reference64=None, rtol64: float = 1e-8) -> None:
    """Leaf-by-leaf: ints/bools exact; float64 to rtol64; float32 to a tolerance that allows
    8x the interpreter's own float32 error against the float64 `reference64`."""
    got, want = _leaves(actual), _leaves(expected)
    assert len(got) == len(want), f"{what}: {len(got)} outputs, expected {len(want)}"
    ref = _leaves(reference64) if reference64 is not None else [None] * len(want)
    for n, (g, w, r) in enumerate(zip(got, want, ref)):
        label = f"{what}: output {n} ({w.dtype}{list(w.shape)})"
        assert g.shape == w.shape and g.dtype == w.dtype, f"{label}: got {g.dtype}{list(g.shape)}"
        if w.dtype.kind != "f":
            np.testing.assert_array_equal(g, w, err_msg=label)
            continue
        assert np.all(np.isfinite(w)), f"{label}: the interpreter is not finite"
        scale = max(1.0, float(np.max(np.abs(w), initial=0.0)))
        if w.dtype == np.float64:
            np.testing.assert_allclose(g, w, rtol=rtol64, atol=rtol64 * 0.1 * scale, err_msg=label)
            continue
        own_error = np.abs(w.astype(np.float64) - r) if r is not None else 0.0
        tol = 2e-5 * np.abs(w) + 2e-6 * scale + 8 * own_error
        bad = np.abs(g.astype(np.float64) - w) > tol
        if bad.any():
            at = np.unravel_index(int(np.argmax(bad)), bad.shape)
            raise AssertionError(f"{label}: {int(bad.sum())} of {bad.size} differ; first at {at}: got {g[at]!r}, "
                                 f"interpreter {w[at]!r}, float64 {None if r is None else r[at]!r}, tol {tol[at]:.3g}")


def _reference64(graph64: compiler.Graph, params: list, data: list):
    """The float64 graph of a program on the float32 inputs (exactly representable)."""
    return compiler.evaluate(graph64, [p.astype(np.float64) for p in params],
                             [d.astype(np.float64) if d.dtype.kind == "f" else d for d in data])


def check_finite_differences(loss_graph: compiler.Graph, params: list, data: list, grads: list, seed: int,
                             native: bool = False) -> None:
    """grads (float64) against central differences of loss_graph, run by the interpreter
    (or, for big graphs, natively at opt_level 0: the same values, (a) checks that)."""
    rng = np.random.default_rng(seed)
    kernel = _compile(loss_graph, 0) if native else None

    def f(current: list) -> float:
        if kernel is not None:
            return float(kernel(current, data))
        return float(compiler.evaluate(loss_graph, current, data))

    for k, (p, g) in enumerate(zip(params, grads)):
        g = np.asarray(g)
        scale = max(1.0, float(np.max(np.abs(g), initial=0.0)))
        label = f"d loss / d params[{k}] {list(p.shape)}"
        if p.size <= FULL_FD_SIZE:
            numeric = numerical_grad(f, params, k, eps=FD_EPS)
            STATS["fd_partials"] += p.size
            np.testing.assert_allclose(g, numeric, rtol=1e-5, atol=1e-6 * scale, err_msg=label)
            continue
        for _ in range(3):
            direction = rng.normal(size=p.shape)
            plus = [q + FD_EPS * direction if n == k else q for n, q in enumerate(params)]
            minus = [q - FD_EPS * direction if n == k else q for n, q in enumerate(params)]
            numeric = (f(plus) - f(minus)) / (2 * FD_EPS)
            analytic = float(np.sum(g * direction))
            STATS["fd_partials"] += 1
            tol = 1e-5 * float(np.sum(np.abs(g * direction))) + 1e-6 * scale * float(np.linalg.norm(direction))
            assert abs(numeric - analytic) <= tol, (f"{label} along a random direction: analytic {analytic!r}, "
                                                     f"central differences {numeric!r}")


def _traced(program, seed, dtype, mask=0):
    forward = _record(fg.trace_program(program, seed, dtype, "forward", mask), forward=True)
    loss = fg.trace_program(program, seed, dtype, "loss")
    step = _record(compiler.value_and_grad(loss, argnums=0))
    return forward, loss, step


# ------------------------------------------------------------------------------ (a)
@budget(16)
@given(program=_programs(fg.ALL_KINDS), seed=seeds, dtype=dtypes, levels=st.tuples(st.integers(0, 3), st.integers(0, 3)),
       mask=st.integers(0, 2 ** 30 - 1))
def test_compiled_programs_match_the_interpreter(program, seed, dtype, levels, mask):
    """(a): the forward graph (loss and intermediates, float/int/bool) and value_and_grad."""
    _accept(program, seed)
    forward, _, step = _traced(program, seed, dtype, mask)
    params, data = fg.input_values(seed, dtype)
    ref_forward = ref_step = None
    if dtype == "float32":
        forward64, _, step64 = _traced(program, seed, "float64", mask)
        ref_forward, ref_step = _reference64(forward64, params, data), _reference64(step64, params, data)
    assert_matches(_compile(forward, levels[0])(params, data), compiler.evaluate(forward, params, data), dtype,
                   f"forward at opt_level {levels[0]}", ref_forward)
    assert_matches(_compile(step, levels[1])(params, data), compiler.evaluate(step, params, data), dtype,
                   f"value_and_grad at opt_level {levels[1]}", ref_step)


# ------------------------------------------------------------------------------ (b)
@budget(16)
@given(program=_programs(fg.FD_KINDS), seed=seeds, level=st.integers(0, 3))
def test_compiled_gradients_match_finite_differences(program, seed, level):
    """(b): float64 gradients vs central differences; float32 gradients vs the interpreter."""
    _accept(program, seed, threshold=1e-3)
    _, loss, step = _traced(program, seed, "float64")
    params, data = fg.input_values(seed, "float64")
    compiled = _compile(step, level)(params, data)
    assert_matches(compiled, compiler.evaluate(step, params, data), "float64", f"value_and_grad at opt_level {level}")
    check_finite_differences(loss, params, data, compiled[1], seed)

    _, _, step32 = _traced(program, seed, "float32")
    params32, data32 = fg.input_values(seed, "float32")
    assert_matches(_compile(step32, level)(params32, data32), compiler.evaluate(step32, params32, data32), "float32",
                   f"float32 value_and_grad at opt_level {level}", _reference64(step, params32, data32))


# ------------------------------------------------------------------------------ (c)
@budget(40)
@given(program=_programs(fg.ALL_KINDS), seed=seeds, dtype=dtypes, mask=st.integers(0, 2 ** 30 - 1))
def test_optimized_graphs_match_unoptimized(program, seed, dtype, mask):
    """(c): optimize at levels 1 and 2 (fusion included) on the forward and the training step."""
    _accept(program, seed)
    forward, _, step = _traced(program, seed, dtype, mask)
    params, data = fg.input_values(seed, dtype)
    for name, graph in (("forward", forward), ("value_and_grad", step)):
        before = compiler.dump(graph)
        expected = compiler.evaluate(graph, params, data)
        reference = None
        if dtype == "float32":
            graph64 = _traced(program, seed, "float64", mask)[0 if name == "forward" else 2]
            reference = _reference64(graph64, params, data)
        for level in (1, 2):
            optimized = _record(optimize(graph, level, verify_each=True))
            assert compiler.dump(graph) == before, "optimize changed its input graph"
            assert_matches(compiler.evaluate(optimized, params, data), expected, dtype,
                           f"{name} optimized at level {level}", reference, rtol64=1e-9)


# ------------------------------------------------------------------------------ NaN, inf, -0
def assert_same_specials(actual, expected, dtype: str, what: str) -> None:
    """NaN exactly where the interpreter has NaN, the same infinities; finite values close."""
    got, want = _leaves(actual), _leaves(expected)
    assert len(got) == len(want), f"{what}: {len(got)} outputs, expected {len(want)}"
    rtol = 1e-9 if dtype == "float64" else 1e-4
    for n, (g, w) in enumerate(zip(got, want)):
        label = f"{what}: output {n} ({w.dtype}{list(w.shape)})"
        assert g.shape == w.shape and g.dtype == w.dtype, f"{label}: got {g.dtype}{list(g.shape)}"
        if w.dtype.kind != "f":
            np.testing.assert_array_equal(g, w, err_msg=label)
            continue
        for name, test in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
            differ = test(g) != test(w)
            if differ.any():
                at = np.unravel_index(int(np.argmax(differ)), differ.shape)
                raise AssertionError(f"{label}: {name} at {int(differ.sum())} of {differ.size} places differ; "
                                     f"first at {at}: got {g[at]!r}, interpreter {w[at]!r}")
        finite = np.isfinite(w)
        scale = max(1.0, float(np.max(np.abs(w[finite]), initial=0.0)))
        np.testing.assert_allclose(g[finite], w[finite], rtol=rtol, atol=rtol * 0.1 * scale, err_msg=label)


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_conv2d_padding_with_a_non_finite_weight_matches_the_interpreter(bad):
    """Padding contributes nothing, in the reference as in the kernel (and PyTorch): a
    non-finite weight on a tap that reads only padding does not make that output nan. (The
    fuzzer found this: the weight gradient is a conv whose weight is the cotangent.)"""
    from compiler.ops import conv

    x = np.ones((1, 1, 2, 2))
    w = np.ones((1, 1, 2, 2))
    w[0, 0, 0, 0] = bad  # this tap reads only padding for the first output row and column
    graph = compiler.trace(lambda x, w: conv.conv2d(x, w, padding=1), x, w)
    assert_same_specials(_compile(graph, 0)(x, w), compiler.evaluate(graph, x, w), "float64", "conv2d padding=1")


@budget(16)
@given(program=_programs(fg.ALL_KINDS), seed=seeds, poison=seeds, dtype=dtypes,
       levels=st.tuples(st.integers(0, 3), st.integers(0, 3)), mask=st.integers(0, 2 ** 30 - 1))
def test_nan_inf_and_signed_zeros_propagate_like_the_interpreter(program, seed, poison, dtype, levels, mask):
    """(a) and (c) with a few inputs poisoned by NaN, +-inf and +-0: compiled code and the
    optimized graph (simplify promises bitwise IEEE semantics) propagate them as the
    interpreter does, through the forward and the training step."""
    STATS["programs"] += 1
    forward, _, step = _traced(program, seed, dtype, mask)
    params, data = fg.poison(*fg.input_values(seed, dtype), poison)
    for name, graph, level in (("forward", forward, levels[0]), ("value_and_grad", step, levels[1])):
        kernel, optimized = _compile(graph, level), _record(optimize(graph, 2))
        try:
            expected = compiler.evaluate(graph, params, data)
        except compiler.EvalError:  # a fixed_point iterate became non-finite: native code reports it too
            with pytest.raises(runtime.KernelError):
                kernel(params, data)
            with pytest.raises(compiler.EvalError):
                compiler.evaluate(optimized, params, data)
            continue
        assert_same_specials(kernel(params, data), expected, dtype, f"{name} at opt_level {level}, poisoned inputs")
        assert_same_specials(compiler.evaluate(optimized, params, data), expected, dtype,
                             f"{name} optimized at level 2, poisoned inputs")


# ------------------------------------------------------------------------------ matmul layouts
_products = st.lists(st.tuples(
    st.one_of(st.integers(1, 20), st.integers(120, 140)),  # 128 rows and up pack B
    st.integers(1, 70), st.integers(1, 40),
    st.sampled_from(fg.MATMUL_LAYOUTS), st.sampled_from(fg.MATMUL_LAYOUTS), st.integers(0, 3)),
    min_size=1, max_size=3)


@budget(6)
@given(cases=_products, seed=seeds, dtype=dtypes, level=st.integers(1, 3))
def test_matmul_shapes_and_layouts_match_the_interpreter(cases, seed, dtype, level):
    """The blocked matmul kernels (tile edges, packed or in-place B, transposed and strided
    operands, vector and batched forms) and the products of their backward, in one graph."""
    STATS["programs"] += 1
    fn, params = fg.matmul_inputs(cases, dtype, seed)
    step = _record(compiler.value_and_grad(_record(compiler.trace(fn, params, name="products"), forward=True)))
    reference = None
    if dtype == "float32":
        fn64, params64 = fg.matmul_inputs(cases, "float64", seed)
        step64 = compiler.value_and_grad(compiler.trace(fn64, params64, name="products"))
        reference = compiler.evaluate(step64, [p.astype(np.float64) for p in params])
    assert_matches(_compile(step, level)(params), compiler.evaluate(step, params), dtype,
                   f"products at opt_level {level}", reference)


# ------------------------------------------------------------------------------ coverage
def _accepted_seed(program: list, threshold: float) -> int:
    for seed in range(200):
        if fg.margins(program, seed) >= threshold:
            return seed
    raise AssertionError("no seed keeps the all-kinds program away from its kinks")


def test_generator_emits_every_registered_op():
    """The all-kinds program (every step kind, three times) reaches every registered op in its
    forward graph, its value_and_grad or their level-2 optimization; it is checked (a) and (c)."""
    program = fg.all_kinds_program()
    seed = _accepted_seed(program, 1e-6)
    STATS["programs"] += 1
    forward, _, step = _traced(program, seed, "float64", mask=2 ** 30 - 1)
    optimized = _record(optimize(step, 2))
    seen = {g.node(n).op for g in (forward, step, optimized) for n in g.nx}
    assert set(all_ops()) - seen == set(), "add a step kind to tests/reliability/fuzzgen.py for these ops"
    params, data = fg.input_values(seed, "float64")
    expected = compiler.evaluate(step, params, data)
    assert_matches(_compile(step, 2)(params, data), expected, "float64", "value_and_grad at opt_level 2")
    assert_matches(compiler.evaluate(optimized, params, data), expected, "float64", "optimized at level 2")


def test_all_kinds_gradients_match_finite_differences():
    program = fg.all_kinds_program(fg.FD_KINDS)
    seed = _accepted_seed(program, 1e-3)
    STATS["programs"] += 1
    _, loss, step = _traced(program, seed, "float64")
    params, data = fg.input_values(seed, "float64")
    compiled = _compile(step, 1)(params, data)
    assert_matches(compiled, compiler.evaluate(step, params, data), "float64", "value_and_grad at opt_level 1")
    assert_matches(_compile(loss, 0)(params, data), compiler.evaluate(loss, params, data), "float64", "loss")
    check_finite_differences(loss, params, data, compiled[1], seed, native=True)


# ------------------------------------------------------------------------------ sample combos
def _samples():
    from tests.ops.samples import ALL_SAMPLES

    return ALL_SAMPLES


def _sample_ok(sample, dtype: str) -> bool:
    # fixed_point samples iterate to tol=1e-13, which float32 cannot reach (the kernel reports it)
    return dtype == "float64" or sample.op != "fixed_point"


@budget(12)
@given(picks=st.lists(st.integers(0, 10 ** 6), min_size=2, max_size=6), seed=seeds, dtype=dtypes,
       level=st.integers(1, 3), differentiable_only=st.booleans())
def test_sample_combos_compile_and_differentiate(picks, seed, dtype, level, differentiable_only):
    """Random combos of the op samples: each sample's float arguments are shifted by the
    outputs of the samples before it (so values fan out across samples; a sample picked
    twice shares its inputs). The training step is compiled and checked against the
    interpreter, and against central differences when every sample is differentiable."""
    pool = [s for s in _samples() if _sample_ok(s, dtype)
            and (s.differentiable or not differentiable_only)]
    picked = [pool[p % len(pool)] for p in picks]
    if len(picks) > 2:
        picked.append(picked[0])  # tied: the first sample's inputs feed a later copy of it
    combo = fg.sample_combo(picked, dtype, seed)
    note(f"samples: {[s.id for s in picked]}")
    STATS["combos"] += 1
    STATS["programs"] += 1
    loss = _record(compiler.trace(combo.fn, combo.params, combo.data, name="combo"), forward=True)
    assume(combo.params)
    step = _record(compiler.value_and_grad(loss, argnums=0))
    try:
        expected = compiler.evaluate(step, combo.params, combo.data)
    except compiler.EvalError:  # e.g. a fixed_point that does not converge from shifted inputs
        STATS["rejected"] += 1
        assume(False)
    reference = None
    if dtype == "float32":
        combo64 = fg.sample_combo(picked, "float64", seed)
        loss64 = compiler.trace(combo64.fn, combo64.params, combo64.data, name="combo")
        reference = _reference64(compiler.value_and_grad(loss64, argnums=0), combo.params, combo.data)
    actual = _compile(step, level)(combo.params, combo.data)
    assert_matches(actual, expected, dtype, f"combo value_and_grad at opt_level {level}", reference)
    if dtype == "float64" and combo.differentiable:
        check_finite_differences(loss, combo.params, combo.data, actual[1], seed)
