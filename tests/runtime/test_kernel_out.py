"""kernel(*args, out=...): results written into caller-owned arrays, every refusal before native code.

Hand-written IR kernels (tests/runtime/test_kernel.py) cover the checks; compiled value_and_grad
kernels cover the (loss, grads-dict) trees a training loop reuses.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest

import runtime
from runtime.pytree import LEAF, flatten
from tests.runtime.test_kernel import (
    ADD_IR, TREE_IR, add_manifest, build_object, exp_kernel, tree_manifest,
)
from tests.threads import run_in_threads

A = np.array([1, 2, 3, 4], dtype=np.float32)
B = np.array([10, 20, 30, 40], dtype=np.float32)
W = np.array([1.0, 2.0, 3.0], dtype=np.float32)
X = np.array([4, -5, 6], dtype=np.int32)
TREE_ARGS = ({"b": np.float32(0.5), "w": W}, X)


def tree_out(n: np.ndarray | None = None, y: np.ndarray | None = None) -> dict:
    return {"n": np.empty((), np.int64) if n is None else n, "y": np.empty(3, np.float32) if y is None else y}


def refused(kernel: runtime.Kernel, args: tuple, out, match: str) -> None:
    """The call raises CallError matching `match` and leaves every out leaf untouched."""
    leaves = [leaf for leaf in flatten(out)[0] if isinstance(leaf, np.ndarray) and leaf.size]
    before = [leaf.copy() for leaf in leaves]
    with pytest.raises(runtime.CallError, match=match):
        kernel(*args, out=out)
    for leaf, old in zip(leaves, before):
        np.testing.assert_array_equal(leaf, old)


# ---- writing into out ----------------------------------------------------------------------
def test_single_leaf_out_is_written_and_returned(add):
    out = np.full(4, np.nan, np.float32)
    assert add(A, B, out=out) is out
    np.testing.assert_array_equal(out, A + B)
    assert add(A, B, out=None) is not out  # out=None keeps fresh outputs


def test_tree_out_is_returned_with_the_same_leaves(tree):
    out = tree_out()
    n, y = out["n"], out["y"]
    result = tree(*TREE_ARGS, out=out)
    assert result is out and out["n"] is n and out["y"] is y and set(out) == {"n", "y"}
    fresh = tree(*TREE_ARGS)
    assert n.tobytes() == fresh["n"].tobytes() and y.tobytes() == fresh["y"].tobytes()


def test_repeated_calls_reuse_the_same_arrays(add):
    out = add(A, B)
    address = out.ctypes.data
    for scale in (1, 2, 3):
        assert add(A * scale, B, out=out) is out
        np.testing.assert_array_equal(out, A * scale + B)
    assert out.ctypes.data == address


def test_previous_result_as_out_with_a_0d_leaf(tree):
    out = tree(*TREE_ARGS)
    assert out["n"].shape == ()  # the 0-d output a call returns is a 0-d array, reusable as out
    tree({"b": np.float32(1.5), "w": W}, X * 2, out=out)
    assert int(out["n"]) == 10
    np.testing.assert_array_equal(out["y"], W * (X * 2) + 1.5)


def test_dict_key_order_of_out_does_not_matter(tree):
    out = {"y": np.empty(3, np.float32), "n": np.empty((), np.int64)}
    assert tree(*TREE_ARGS, out=out) is out and list(out) == ["y", "n"]
    assert int(out["n"]) == 5


def test_non_string_dict_keys_take_the_generic_path():
    manifest = tree_manifest() | {"out_tree": "{0: *, 1: *}"}
    kernel = runtime.Kernel.from_parts(manifest, build_object(TREE_IR))
    out = {1: np.empty(3, np.float32), 0: np.empty((), np.int64)}
    assert kernel(*TREE_ARGS, out=out) is out and int(out[0]) == 5
    refused(kernel, TREE_ARGS, {0: np.empty((), np.int64), 2: np.empty(3, np.float32)}, r"structure \{0: \*, 2: \*\}")


def test_subclass_leaves_are_written_and_kept(add):
    class Sub(np.ndarray):
        pass

    out = np.empty(4, np.float32).view(Sub)
    assert add(A, B, out=out) is out and type(out) is Sub
    np.testing.assert_array_equal(out, A + B)


def test_a_subclass_that_lies_about_its_shape_is_measured_for_real(add):
    class Liar(np.ndarray):
        shape = property(lambda self: (4,))
        flags = property(lambda self: np.empty(4, np.float32).flags)

    small = np.zeros(2, np.float32).view(Liar)
    assert small.shape == (4,)
    refused(add, (A, B), small, r"output 'out' \(out\) expects shape \(4,\), got \(2,\)")


def test_zero_size_outputs_overlap_nothing():
    manifest = add_manifest() | {"outputs": [{"name": "out", "shape": [4], "dtype": "float32"},
                                             {"name": "none", "shape": [0], "dtype": "float32"}],
                                 "out_tree": "(*, *)"}
    kernel = runtime.Kernel.from_parts(manifest, build_object(ADD_IR))
    a = A.copy()
    out = (np.empty(4, np.float32), a[2:][:0])  # an empty view inside an input
    assert out[1].ctypes.data == a.ctypes.data + 8
    assert kernel(a, B, out=out) is out
    np.testing.assert_array_equal(out[0], A + B)


def test_adjacent_buffers_do_not_overlap(add, tree):
    buffer = np.zeros(8, np.float32)
    add(buffer[:4], B, out=buffer[4:])  # bounds touch, nothing is shared
    np.testing.assert_array_equal(buffer[4:], B)
    raw = np.empty(20, np.uint8)
    out = {"n": raw[:8].view(np.int64).reshape(()), "y": raw[8:].view(np.float32)}
    tree(*TREE_ARGS, out=out)
    assert int(out["n"]) == 5
    np.testing.assert_array_equal(out["y"], W * X + 0.5)


def test_an_input_that_is_copied_may_share_memory_with_out(add):
    """Only buffers native code reads count: a strided input is copied before anything is written."""
    buffer = np.arange(8, dtype=np.float32)
    strided = buffer[0:8:2]
    expected = strided + B
    out = buffer[1:5]  # inside the strided input's bounds
    add(strided, B, out=out)
    np.testing.assert_array_equal(out, expected)


def test_threads_with_their_own_out():
    kernel = exp_kernel()
    failures = []

    def work(seed: int) -> None:
        x = np.full(4, seed / 10, dtype=np.float32)
        out = (np.empty(4, np.float32),)
        for _ in range(200):
            if kernel(x, out=out) is not out or not np.allclose(out[0], np.exp(x), rtol=1e-6):
                failures.append(seed)

    run_in_threads(work)
    assert not failures


# ---- refusals ------------------------------------------------------------------------------
def test_structure_mismatch(tree):
    refused(tree, TREE_ARGS, {"n": np.empty((), np.int64)}, r"out has structure \{'n': \*\}, it expects \{'n': \*, 'y': \*\}")
    refused(tree, TREE_ARGS, tree_out() | {"z": np.empty(3)}, "out has structure")
    refused(tree, TREE_ARGS, (np.empty((), np.int64), np.empty(3, np.float32)), r"structure \(\*, \*\)")
    refused(tree, TREE_ARGS, tree_out(y=[np.empty(3, np.float32)]), r"structure \{'n': \*, 'y': \[\*\]\}")
    refused(tree, TREE_ARGS, {"n": np.empty((), np.int64), "y": None}, r"structure \{'n': \*, 'y': None\}")


def test_list_where_the_out_tree_has_a_tuple():
    kernel = exp_kernel()  # out_tree (*,): the input side refuses a list for a tuple too
    refused(kernel, (A,), [np.empty(4, np.float32)], r"out has structure \[\*\], it expects \(\*,\)")
    Single = namedtuple("Single", "e")
    refused(kernel, (A,), Single(np.empty(4, np.float32)), r"out has structure \*, it expects \(\*,\)")


def test_container_for_a_single_leaf_out(add):
    refused(add, (A, B), (np.empty(4, np.float32),), r"out has structure \(\*,\), it expects \*")
    refused(add, (A, B), [1.0, 2.0, 3.0, 4.0], "out has structure")


def test_leaf_that_is_not_an_ndarray(add, tree):
    refused(add, (A, B), memoryview(bytearray(16)).cast("f"), r"output 'out' \(out\) must be a numpy ndarray, got memoryview")
    for scalar in (0, np.int64(0)):
        refused(tree, TREE_ARGS, tree_out(n=scalar),
                r"output 'n' \(out\['n'\]\) must be a numpy ndarray, got \w+; for a 0-d output pass np.empty\(\(\), 'int64'\)")


def test_wrong_shape(add, tree):
    refused(add, (A, B), np.empty(5, np.float32), r"output 'out' \(out\) expects shape \(4,\), got \(5,\)")
    refused(add, (A, B), np.empty((1, 4), np.float32), r"expects shape \(4,\), got \(1, 4\)")
    refused(tree, TREE_ARGS, tree_out(n=np.empty(1, np.int64)), r"output 'n' \(out\['n'\]\) expects shape \(\), got \(1,\)")


def test_wrong_dtype_is_not_converted(add, tree):
    refused(add, (A, B), np.empty(4, np.float64), r"output 'out' \(out\) expects float32, got float64 \(outputs are not converted")
    refused(add, (A, B), np.empty(4, ">f4"), r"expects float32, got >f4")
    refused(tree, TREE_ARGS, tree_out(n=np.empty((), np.int32)), r"output 'n' \(out\['n'\]\) expects int64, got int32")


def test_non_contiguous_slice(add):
    strided = np.zeros(8, np.float32)[::2]
    refused(add, (A, B), strided, r"output 'out' \(out\) must be C-contiguous, got strides \(8,\)")
    fortran = np.zeros((4, 1), np.float32, order="F")[:, 0]  # contiguous after all: accepted
    add(A, B, out=fortran)
    np.testing.assert_array_equal(fortran, A + B)


def test_misaligned(add):
    raw = np.zeros(4 * 4 + 1, dtype=np.uint8)
    misaligned = raw[1:] if raw.ctypes.data % 4 == 0 else raw[:-1]
    misaligned = misaligned.view(np.float32)
    assert not misaligned.flags.aligned
    refused(add, (A, B), misaligned, r"output 'out' \(out\) must be aligned to its 4-byte elements")


def test_read_only(add):
    frozen = np.zeros(4, np.float32)
    frozen.setflags(write=False)
    refused(add, (A, B), frozen, r"output 'out' \(out\) is read-only")
    from_bytes = np.frombuffer(bytes(16), np.float32)
    refused(add, (A, B), from_bytes, "is read-only")


def test_out_that_is_an_input_or_a_view_of_one(add):
    a = A.copy()
    refused(add, (a, B), a, r"output 'out' \(out\) overlaps input 'a' \(args\[0\]\) in memory \(their bounds overlap\)")
    big = np.arange(8, dtype=np.float32)
    refused(add, (A, big[:4]), big[2:6], r"output 'out' \(out\) overlaps input 'b' \(args\[1\]\)")
    refused(add, (big[4:], B), big[1:5], r"overlaps input 'a'")


def test_out_handed_back_by_an_input_conversion(add):
    out = np.empty(4, np.float32)

    class Sneaky:
        def __array__(self, dtype=None, copy=None):
            return out  # no copy is made, so native code would read what it writes

    refused(add, (Sneaky(), B), out, r"output 'out' \(out\) overlaps input 'a'")


def test_two_outputs_sharing_memory(tree):
    raw = np.zeros(20, np.uint8)
    out = {"n": raw[:8].view(np.int64).reshape(()), "y": raw[4:16].view(np.float32)}
    refused(tree, TREE_ARGS, out,
            r"output 'n' \(out\['n'\]\) and output 'y' \(out\['y'\]\) overlap in memory \(their bounds overlap\)")


def test_bad_leaf_after_a_good_one_writes_nothing(tree):
    good = np.full(3, 7.0, np.float32)
    refused(tree, TREE_ARGS, tree_out(n=np.empty((), np.float64), y=good), "expects int64")
    np.testing.assert_array_equal(good, 7.0)


# ---- compiled value_and_grad kernels: the (loss, grads) trees a training loop reuses ---------
SMALL = {"W1": (5, 7), "b1": (7,), "W2": (7, 3), "b2": (3,)}
# big enough (2 MFLOP per product) for the code generator to split the products over threads
THREADED = {"W1": (128, 128), "b1": (128,), "W2": (128, 10), "b2": (10,)}


@pytest.fixture(scope="module", params=["serial", "threaded"])
def mlp(request):
    codegen = pytest.importorskip("compiler.codegen")
    import compiler
    from compiler import Spec, ops

    def loss(p, x, y):
        h = ops.tanh(x @ p["W1"] + p["b1"])
        return ops.mean(ops.square(h @ p["W2"] + p["b2"] - y))

    shapes = SMALL if request.param == "serial" else THREADED
    batch, n_in, n_out = 64, shapes["W1"][0], shapes["W2"][1]
    specs = {name: Spec(shape) for name, shape in shapes.items()}
    graph = compiler.value_and_grad(compiler.trace(loss, specs, Spec((batch, n_in)), Spec((batch, n_out))))
    kernel = codegen.compile(graph, cache=False, parallel=request.param == "threaded")
    if request.param == "threaded" and not kernel.extra("needs"):
        pytest.skip("this host compiles serial code (one CPU)")
    rng = np.random.default_rng(0)
    params = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    x = rng.standard_normal((batch, n_in)).astype(np.float32)
    return kernel, (params, x, rng.standard_normal((batch, n_out)).astype(np.float32)), shapes


def test_compiled_grads_into_out_are_bitwise_equal(mlp):
    kernel, args, shapes = mlp
    fresh_loss, fresh_grads = kernel(*args)
    # garbage, not zeros: a kernel that relied on fresh (zeroed) pages would show here
    out = (np.full((), np.nan, np.float32), {name: np.full(shape, np.nan, np.float32) for name, shape in shapes.items()})
    leaves = dict(out[1])
    for _ in range(2):
        assert kernel(*args, out=out) is out
        assert out[0].tobytes() == fresh_loss.tobytes()
        for name in shapes:
            assert out[1][name] is leaves[name] and out[1][name].tobytes() == fresh_grads[name].tobytes(), name


def test_compiled_refusals_name_the_gradient(mlp):
    kernel, args, shapes = mlp
    loss, grads = kernel(*args)
    refused(kernel, args, [loss, grads], r"out has structure \[\*, \{'W1'")
    rows, cols = shapes["W1"]
    refused(kernel, args, (loss, {**grads, "W1": np.empty((cols + 1, rows), np.float32)}),
            rf"output 'out.1.W1' \(out\[1\]\['W1'\]\) expects shape \({rows}, {cols}\), got \({cols + 1}, {rows}\)")
    refused(kernel, args, (loss, {**grads, "W1": np.empty((cols, rows), np.float32).T}),
            r"output 'out.1.W1' \(out\[1\]\['W1'\]\) must be C-contiguous")
    refused(kernel, args, (loss, {**grads, "b2": args[0]["b2"]}),
            r"output 'out.1.b2' \(out\[1\]\['b2'\]\) overlaps input 'p.b2' \(args\[0\]\['b2'\]\)")
    shared = np.empty(shapes["b1"], np.float32)
    refused(kernel, args, (loss, {**grads, "b1": shared, "b2": shared[:shapes["b2"][0]]}),
            r"output 'out.1.b1' .* and output 'out.1.b2' .* overlap")


# ---- the overlap test itself ---------------------------------------------------------------
def test_overlap_check_agrees_with_pairwise_bounds():
    """The sorted sweep refuses exactly when some output's extent meets an input's or another output's."""
    from runtime.outputs import OutChecker

    rng = np.random.default_rng(0)
    for trial in range(3000):
        n_out, n_in = int(rng.integers(1, 6)), int(rng.integers(0, 6))
        # bool buffers: byte-sized extents at any byte address, so off-by-one bounds show
        out_sizes = [int(rng.integers(0, 6)) for _ in range(n_out)]
        in_sizes = [int(rng.integers(0, 6)) for _ in range(n_in)]
        outputs = [{"name": f"o{i}", "shape": [size], "dtype": "bool"} for i, size in enumerate(out_sizes)]
        tree = tuple([LEAF] * n_out)
        check = OutChecker("k", tree, outputs, [f"input {i}" for i in range(n_in)], tuple(in_sizes), id)
        pointers = [int(rng.integers(0, 16)) for _ in range(n_out)]
        in_pointers = [int(rng.integers(0, 16)) for _ in range(n_in)]

        def meet(p: int, n: int, q: int, m: int) -> bool:
            return bool(n and m and p < q + m and q < p + n)

        expected = any(meet(pointers[i], out_sizes[i], pointers[j], out_sizes[j])
                       for i in range(n_out) for j in range(i + 1, n_out))
        expected |= any(meet(p, n, q, m) for p, n in zip(pointers, out_sizes) for q, m in zip(in_pointers, in_sizes))
        try:
            check._check_overlap(pointers, in_pointers)
            got = False
        except runtime.CallError as error:
            assert "overlap" in str(error)
            got = True
        assert got == expected, (trial, pointers, out_sizes, in_pointers, in_sizes)
