"""Hostile arguments to a compiled training step: every mismatch is a runtime.CallError
(a ValueError) raised before native code runs; every accepted argument gives the
interpreter's answer; nothing crashes, even in a fresh process."""
from __future__ import annotations

import collections

import numpy as np
import pytest

import compiler
import runtime
from compiler import Spec, ops
from tests.reliability.crashproof import assert_clean_error, assert_ok, crashproof, guarded
from tests.threads import run_in_threads

BATCH, N_IN, HIDDEN, CLASSES = 4, 5, 6, 3


def loss(params, x, labels):
    h = ops.tanh(x @ params["W"] + params["b"]) * params["beta"]
    logits = h @ params["V"]
    one_hot = ops.cast(labels.reshape(BATCH, 1) == np.arange(CLASSES, dtype=np.int32), "float32")
    return -ops.sum(one_hot * ops.log_softmax(logits, axis=1)) / BATCH


PARAM_SPECS = {"W": Spec((N_IN, HIDDEN)), "b": Spec((HIDDEN,)), "beta": Spec(()), "V": Spec((HIDDEN, CLASSES))}


@pytest.fixture(scope="module")
def step():
    """The value_and_grad graph and its kernel (skips if the code generator is unavailable)."""
    try:
        from compiler.codegen import compile as compile_graph
    except ImportError as exc:
        pytest.skip(f"compiler.codegen.compile is unavailable: {exc}")
    graph = compiler.value_and_grad(compiler.trace(loss, PARAM_SPECS, Spec((BATCH, N_IN)), Spec((BATCH,), "int32")))
    return graph, compile_graph(graph, opt_level=2)


@pytest.fixture
def args():
    rng = np.random.default_rng(0)
    params = {
        "W": (rng.standard_normal((N_IN, HIDDEN)) * 0.5).astype(np.float32),
        "b": (rng.standard_normal(HIDDEN) * 0.1).astype(np.float32),
        "beta": np.array(1.5, np.float32),
        "V": (rng.standard_normal((HIDDEN, CLASSES)) * 0.5).astype(np.float32),
    }
    x = rng.standard_normal((BATCH, N_IN)).astype(np.float32)
    labels = np.array([0, 2, 1, 2], np.int32)
    return params, x, labels


def assert_same(result, expected, rtol=1e-5, atol=1e-6):
    value, grads = result
    ref_value, ref_grads = expected
    np.testing.assert_allclose(value, ref_value, rtol=rtol, atol=atol, equal_nan=True)
    assert sorted(grads) == sorted(ref_grads)
    for key in ref_grads:
        assert grads[key].dtype == ref_grads[key].dtype and grads[key].shape == ref_grads[key].shape, key
        np.testing.assert_allclose(grads[key], ref_grads[key], rtol=rtol, atol=atol, equal_nan=True, err_msg=key)


def test_good_call_matches_the_interpreter(step, args):
    graph, kernel = step
    assert_same(kernel(*args), compiler.evaluate(graph, *args))


# ------------------------------------------------------------------------- count
@pytest.mark.parametrize("count", [0, 1, 2, 4, 30])
def test_wrong_argument_count(step, args, count):
    _, kernel = step
    call = (list(args) * 10)[:count]
    with pytest.raises(runtime.CallError, match=rf"takes 3 argument\(s\) .*got {count}$"):
        kernel(*call)


# --------------------------------------------------------------------- structure
Pair = collections.namedtuple("Pair", "W b")


def _restructure(kind, params):
    p = dict(params)
    if kind == "tuple":
        return tuple(p.values())
    if kind == "list":
        return list(p.values())
    if kind == "missing key":
        del p["V"]
    elif kind == "extra key":
        p["U"] = p["V"]
    elif kind == "renamed key":
        p["w"] = p.pop("W")
    elif kind == "int key":
        p[0] = p.pop("W")
    elif kind == "nested dict":
        p["W"] = {"inner": p["W"]}
    elif kind == "None leaf":
        p["b"] = None
    elif kind == "list leaf":
        p["b"] = [p["b"]]
    elif kind == "namedtuple":
        return Pair(p["W"], p["b"])
    elif kind == "array":
        return p["W"]
    elif kind == "empty dict":
        return {}
    return p


@pytest.mark.parametrize("kind", ["tuple", "list", "missing key", "extra key", "renamed key", "int key",
                                  "nested dict", "None leaf", "list leaf", "namedtuple", "array", "empty dict"])
def test_wrong_structure(step, args, kind):
    _, kernel = step
    params, x, labels = args
    expected = r"structure .* it expects \(\{'V': \*, 'W': \*, 'b': \*, 'beta': \*\}, \*, \*\)|expects shape"
    with pytest.raises(runtime.CallError, match=expected):
        kernel(_restructure(kind, params), x, labels)


def test_all_arguments_in_one_tuple_is_a_count_error(step, args):
    _, kernel = step
    with pytest.raises(runtime.CallError, match="takes 3 argument"):
        kernel(tuple(args))


def test_data_as_a_dict_is_a_structure_error(step, args):
    _, kernel = step
    params, x, labels = args
    with pytest.raises(runtime.CallError, match="structure"):
        kernel(params, {"x": x}, labels)


# ------------------------------------------------------------------------- shape
@pytest.mark.parametrize("key, value, got", [
    ("W", lambda a: a.T, r"\(6, 5\)"),
    ("W", lambda a: a[None], r"\(1, 5, 6\)"),
    ("W", lambda a: a[:, :5], r"\(5, 5\)"),
    ("b", lambda a: a[:1], r"\(1,\)"),
    ("b", lambda a: a.reshape(1, HIDDEN), r"\(1, 6\)"),
    ("beta", lambda a: a.reshape(1), r"\(1,\)"),
    ("beta", lambda a: np.zeros((0,), np.float32), r"\(0,\)"),
    ("V", lambda a: np.broadcast_to(np.float32(0), (10**6, 10**6)), r"\(1000000, 1000000\)"),
])
def test_wrong_shape_names_the_input(step, args, key, value, got):
    _, kernel = step
    params, x, labels = args
    bad = dict(params, **{key: value(params[key])})
    with pytest.raises(runtime.CallError, match=rf"input 'params\.{key}' \(args\[0\]\['{key}'\]\) expects shape .*got {got}"):
        kernel(bad, x, labels)


def test_wrong_data_shape(step, args):
    _, kernel = step
    params, x, labels = args
    with pytest.raises(runtime.CallError, match=r"input 'x' .* expects shape \(4, 5\), got \(5, 4\)"):
        kernel(params, x.T, labels)
    with pytest.raises(runtime.CallError, match=r"input 'labels' .* expects shape \(4,\), got \(4, 1\)"):
        kernel(params, x, labels[:, None])


# ------------------------------------------------------------------------- dtype
@pytest.mark.parametrize("value, got", [
    (lambda l: l.astype(np.float32), "float32"),
    (lambda l: l.astype(np.float64), "float64"),
    (lambda l: l.astype(np.complex64), "complex64"),
    (lambda l: l.astype("U3"), "<U3"),
    (lambda l: l.astype(object), "object"),
    (lambda l: l.astype("M8[s]"), "datetime64"),
])
def test_float_or_exotic_into_int_is_rejected(step, args, value, got):
    _, kernel = step
    params, x, labels = args
    with pytest.raises(runtime.CallError, match=rf"input 'labels' .* expects int32, got {got}"):
        kernel(params, x, value(labels))


@pytest.mark.parametrize("value, got", [
    (lambda a: a.astype(np.complex64), "complex64"),
    (lambda a: a.astype("U8"), "<U8"),
    (lambda a: a.astype(object), "object"),
])
def test_exotic_into_float_is_rejected(step, args, value, got):
    _, kernel = step
    params, x, labels = args
    with pytest.raises(runtime.CallError, match=rf"input 'x' .* expects float32, got {got}"):
        kernel(params, value(x), labels)


def test_same_kind_conversions_give_the_interpreters_answer(step, args):
    """float64 -> float32 and int64 -> int32 and float16/bool/int -> float32 are cast."""
    graph, kernel = step
    params, x, labels = args
    expected = compiler.evaluate(graph, params, x, labels)
    wide = {k: v.astype(np.float64) for k, v in params.items()}
    assert_same(kernel(wide, x.astype(np.float64), labels.astype(np.int64)), expected)
    assert_same(kernel(params, x.astype(np.float16).astype(np.float32), labels.astype(np.int16)),
                compiler.evaluate(graph, params, x.astype(np.float16).astype(np.float32), labels))
    ints = np.arange(BATCH * N_IN).reshape(BATCH, N_IN) % 3 - 1
    assert_same(kernel(params, ints, labels), compiler.evaluate(graph, params, ints.astype(np.float32), labels))
    assert_same(kernel(params, x > 0, labels), compiler.evaluate(graph, params, (x > 0).astype(np.float32), labels))


def test_unconvertible_objects(step, args):
    _, kernel = step
    params, x, labels = args

    class Exploding:
        def __array__(self, dtype=None, copy=None):
            raise RuntimeError("cannot materialize")

    for bad in (Exploding(), object(), "a string", b"\x00" * 80, lambda: 0, 1 + 2j):
        with pytest.raises(runtime.CallError, match=r"input 'x'"):
            kernel(params, bad, labels)


# ----------------------------------------------------------- layout and ownership
def _layouts(array: np.ndarray) -> dict:
    big = np.zeros((array.shape[0] * 2, array.shape[1] * 3), array.dtype)
    big[::2, ::3] = array
    buffer = np.zeros(array.nbytes + 1, np.uint8)
    misaligned = np.frombuffer(buffer.data, dtype=array.dtype, count=array.size, offset=1).reshape(array.shape)
    misaligned[...] = array
    readonly = array.copy()
    readonly.setflags(write=False)
    return {
        "sliced": big[::2, ::3],
        "transposed": np.ascontiguousarray(array.T).T,
        "fortran": np.asfortranarray(array),
        "reversed": array[::-1, ::-1].copy()[::-1, ::-1],
        "misaligned": misaligned,
        "big-endian": array.astype(array.dtype.newbyteorder(">")),
        "read-only": readonly,
        "matrix": np.asmatrix(array),
        "memoryview": memoryview(np.ascontiguousarray(array)),
    }


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("layout", ["sliced", "transposed", "fortran", "reversed", "misaligned", "big-endian",
                                    "read-only", "matrix", "memoryview"])
def test_any_layout_gives_the_same_result(step, args, layout):
    graph, kernel = step
    params, x, labels = args
    expected = compiler.evaluate(graph, params, x, labels)
    odd_w = _layouts(params["W"])[layout]
    odd_x = _layouts(x)[layout]
    before = (np.array(odd_w, copy=True), np.array(odd_x, copy=True))
    assert_same(kernel(dict(params, W=odd_w), odd_x, labels), expected)
    np.testing.assert_array_equal(np.asarray(odd_w), before[0])  # inputs are never written
    np.testing.assert_array_equal(np.asarray(odd_x), before[1])


def test_zero_stride_broadcast_input(step, args):
    graph, kernel = step
    params, x, labels = args
    row = np.broadcast_to(x[0], x.shape)
    assert row.strides[0] == 0
    assert_same(kernel(params, row, labels), compiler.evaluate(graph, params, np.array(row), labels))


def test_outputs_are_fresh_writable_and_not_shared(step, args):
    _, kernel = step
    first = kernel(*args)
    first[1]["W"][...] = np.nan
    first[0][...] = np.nan
    second = kernel(*args)
    assert np.isfinite(second[0]) and np.isfinite(second[1]["W"]).all()
    assert second[1]["W"].flags.writeable and second[1]["W"].flags.c_contiguous


# ---------------------------------------------------------------- 0-d arguments
@pytest.mark.parametrize("beta", [1.5, np.float32(1.5), np.float64(1.5), np.array(1.5), np.array(1.5, np.float32),
                                  np.array(1.5, np.float64)[()]])
def test_zero_d_accepts_python_and_numpy_scalars(step, args, beta):
    graph, kernel = step
    params, x, labels = args
    assert_same(kernel(dict(params, beta=beta), x, labels), compiler.evaluate(graph, params, x, labels))


@pytest.mark.parametrize("beta", [2, True, np.int64(2), np.bool_(True)])
def test_zero_d_int_and_bool_become_float(step, args, beta):
    graph, kernel = step
    params, x, labels = args
    expected = compiler.evaluate(graph, dict(params, beta=np.float32(beta)), x, labels)
    assert_same(kernel(dict(params, beta=beta), x, labels), expected)


@pytest.mark.parametrize("beta", [[1.5], (1.5,), np.array([1.5]), np.ones((1, 1))])
def test_zero_d_rejects_one_element_containers(step, args, beta):
    _, kernel = step
    params, x, labels = args
    with pytest.raises(runtime.CallError):
        kernel(dict(params, beta=beta), x, labels)


# ---------------------------------------------------------------- NaN and Inf
@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf, 3e38, -3e38, 1e-45])
def test_non_finite_inputs_propagate_like_the_interpreter(step, args, poison):
    """Documented: NaN/Inf are data, not errors; they propagate and the compiled result
    equals the interpreter's element for element (NaN where it has NaN)."""
    graph, kernel = step
    params, x, labels = args
    for where in ("x", "W", "beta"):
        p, xx = dict(params), x.copy()
        if where == "x":
            xx[1, 2] = poison
        elif where == "W":
            p["W"] = p["W"].copy()
            p["W"][0, 0] = poison
        else:
            p["beta"] = np.float32(poison)
        expected = compiler.evaluate(graph, p, xx, labels)
        result = kernel(p, xx, labels)
        assert_same(result, expected, rtol=1e-4, atol=1e-5)
        if np.isnan(poison):
            assert np.isnan(result[0]), "a NaN input must reach the loss"


# float -> int casts saturate (NaN -> 0, beyond the range -> min/max), in the interpreter
# exactly as in native code (llvm.fptosi.sat): numpy's astype alone is platform-defined there.
@pytest.mark.parametrize("source", ["float32", "float64"])
@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_non_finite_float_to_int_cast_matches_the_interpreter(source, dtype):
    codegen = pytest.importorskip("compiler.codegen")
    info = np.iinfo(dtype)
    graph = compiler.trace(lambda x: ops.cast(ops.cast(x, dtype), "float64"), Spec((16,), source))
    x = np.array([np.nan, np.inf, -np.inf, 1e300 if source == "float64" else 3e38, -3e38, 2.5, -2.5, -0.0,
                  2.0**31, -2.0**31, -2.0**31 - 4096, 2.0**31 - 128, 2.0**63, -2.0**63, 2.0**62, -1e19]).astype(source)
    expected = compiler.evaluate(graph, x)
    native = codegen.compile(graph, cache=False)(x)
    np.testing.assert_array_equal(native, expected)
    with np.errstate(invalid="ignore", over="ignore"):
        direct = compiler.evaluate(compiler.trace(lambda x: ops.cast(x, dtype), Spec((16,), source)), x)
    assert direct.dtype == np.dtype(dtype)
    assert direct[0] == 0 and direct[1] == info.max and direct[2] == info.min
    assert direct[5] == 2 and direct[6] == -2 and direct[7] == 0
    assert direct[13] == info.min  # -2**63 is exact: int64 min, or saturated for int32
    assert direct[12] == info.max  # 2**63 does not fit int64: saturates, never wraps to min


# ---------------------------------------------------------------- hostile indices
def test_out_of_range_indices_are_clipped_or_dropped_like_the_interpreter():
    """take clips, segment_sum and one_hot drop: never an out-of-bounds read or write."""
    codegen = pytest.importorskip("compiler.codegen")
    for dtype, extremes in (("int32", [-2**31, 2**31 - 1]), ("int64", [-2**63, 2**63 - 1])):
        def fn(p, idx):
            rows = ops.take(p, idx, axis=0)
            seg = ops.segment_sum(rows, idx, num_segments=5)
            return ops.sum(ops.square(rows)) + ops.sum(seg * seg) + ops.sum(ops.one_hot(idx, 5) @ p)

        graph = compiler.value_and_grad(compiler.trace(fn, Spec((5, 3)), Spec((8,), dtype)))
        kernel = codegen.compile(graph, cache=False)
        p = np.arange(15, dtype=np.float32).reshape(5, 3) / 10
        idx = np.array(extremes + [-1, 5, 4, 0, -5, -6], dtype)
        value, grad = kernel(p, idx)
        ref_value, ref_grad = compiler.evaluate(graph, p, idx)
        np.testing.assert_allclose(value, ref_value, rtol=1e-5)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------- threads
def test_threads_mixing_good_and_bad_calls(step, args):
    graph, kernel = step
    params, x, labels = args
    expected = compiler.evaluate(graph, params, x, labels)
    errors: list = []

    def worker(seed: int) -> None:
        try:
            for i in range(40):
                if (seed + i) % 3 == 0:
                    try:
                        kernel(params, x.T, labels)
                    except runtime.CallError:
                        continue
                    raise AssertionError("a bad call was accepted")
                assert_same(kernel(params, x, labels), expected)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    run_in_threads(worker)
    assert not errors, errors[0]


# ------------------------------------------------------------- in a fresh process
CHILD_PRELUDE = """
kernel = runtime.load(sys.argv[1])
data = np.load(sys.argv[2])
params = {k: data[k] for k in ("W", "b", "beta", "V")}
x, labels = data["x"], data["labels"]
"""

DANGEROUS = {
    "count": "kernel(params, x)",
    "structure": "kernel(tuple(params.values()), x, labels)",
    "shape": "kernel(dict(params, W=params['W'].T), x, labels)",
    "huge broadcast shape": "kernel(params, np.broadcast_to(np.float32(0), (2**30, 2**30)), labels)",
    "float labels": "kernel(params, x, labels.astype(np.float32))",
    "object leaf": "kernel(dict(params, W=object()), x, labels)",
    "container leaf": "kernel(dict(params, b=[params['b']]), x, labels)",
}


@pytest.fixture(scope="module")
def saved(step, tmp_path_factory):
    _, kernel = step
    folder = tmp_path_factory.mktemp("calls")
    kernel.save(folder / "step.pbk")
    rng = np.random.default_rng(1)
    np.savez(folder / "args.npz", W=rng.standard_normal((N_IN, HIDDEN)).astype(np.float32),
             b=np.zeros(HIDDEN, np.float32), beta=np.array(1.0, np.float32),
             V=rng.standard_normal((HIDDEN, CLASSES)).astype(np.float32),
             x=rng.standard_normal((BATCH, N_IN)).astype(np.float32), labels=np.array([0, 1, 2, 0], np.int32))
    return str(folder / "step.pbk"), str(folder / "args.npz")


@pytest.mark.parametrize("name", sorted(DANGEROUS))
def test_bad_call_in_a_fresh_process(saved, name):
    result = crashproof(guarded(DANGEROUS[name], "runtime.CallError", CHILD_PRELUDE), *saved)
    assert_clean_error(result, r"^CallError: kernel 'value_and_grad_loss'")


def test_odd_but_valid_calls_in_a_fresh_process(saved):
    code = guarded("""
        reference = kernel(params, x, labels)
        buffer = np.zeros(x.nbytes + 3, np.uint8)
        misaligned = np.frombuffer(buffer.data, np.float32, x.size, offset=3).reshape(x.shape)
        misaligned[...] = x
        for variant in (np.asfortranarray(x), x.astype(">f4"), misaligned, x.astype(np.float64),
                        np.ascontiguousarray(x.T).T):
            value, grads = kernel(params, variant, labels.astype(np.int64))
            assert value == reference[0], (value, reference[0])
        poisoned = x.copy(); poisoned[0, 0] = np.nan
        assert np.isnan(kernel(params, poisoned, labels)[0])
        poisoned[0, 0] = np.inf
        kernel(params, poisoned, labels)
        assert "compiler" not in sys.modules and "networkx" not in sys.modules
    """, "AssertionError", CHILD_PRELUDE)
    result = crashproof(code, *saved)
    assert assert_ok(result).strip() == "OK"
