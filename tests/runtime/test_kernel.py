"""Kernel construction and call-time argument checking, on hand-written LLVM IR kernels.

The helpers at the top (build_object, the *_kernel factories) are shared by the other
runtime tests: the code generator is not needed to make ABI-conforming object code.
"""
from __future__ import annotations

import functools
import hashlib

import numpy as np
import pytest

import runtime
from runtime import elf
from runtime.loader import _llvm
from tests.threads import run_in_threads

# out[i] = a[i] + b[i] over f32[4]; status 5 if an input pointer is not 4-byte aligned
ADD_IR = r"""
define i32 @add4(ptr %ins, ptr %outs, ptr %ws) {
entry:
  %a = load ptr, ptr %ins
  %bp = getelementptr ptr, ptr %ins, i64 1
  %b = load ptr, ptr %bp
  %o = load ptr, ptr %outs
  %ai = ptrtoint ptr %a to i64
  %bi = ptrtoint ptr %b to i64
  %either = or i64 %ai, %bi
  %low = and i64 %either, 3
  %bad = icmp ne i64 %low, 0
  br i1 %bad, label %fail, label %loop
fail:
  ret i32 5
loop:
  %i = phi i64 [0, %entry], [%n, %loop]
  %pa = getelementptr float, ptr %a, i64 %i
  %pb = getelementptr float, ptr %b, i64 %i
  %va = load float, ptr %pa
  %vb = load float, ptr %pb
  %s = fadd float %va, %vb
  %po = getelementptr float, ptr %o, i64 %i
  store float %s, ptr %po
  %n = add i64 %i, 1
  %c = icmp ult i64 %n, 4
  br i1 %c, label %loop, label %done
done:
  ret i32 0
}
"""

# out[i] = expf(x[i]) through the workspace; status 7 if the workspace is NULL or not 64-byte aligned
EXP_IR = r"""
declare float @expf(float)
define i32 @exp_ws(ptr %ins, ptr %outs, ptr %ws) {
entry:
  %wi = ptrtoint ptr %ws to i64
  %low = and i64 %wi, 63
  %null = icmp eq i64 %wi, 0
  %unaligned = icmp ne i64 %low, 0
  %bad = or i1 %null, %unaligned
  br i1 %bad, label %fail, label %body
fail:
  ret i32 7
body:
  %x = load ptr, ptr %ins
  %o = load ptr, ptr %outs
  br label %loop
loop:
  %i = phi i64 [0, %body], [%n, %loop]
  %px = getelementptr float, ptr %x, i64 %i
  %v = load float, ptr %px
  %pw = getelementptr float, ptr %ws, i64 %i
  store volatile float %v, ptr %pw
  %w = load volatile float, ptr %pw
  %e = call float @expf(float %w)
  %po = getelementptr float, ptr %o, i64 %i
  store float %e, ptr %po
  %n = add i64 %i, 1
  %c = icmp ult i64 %n, 4
  br i1 %c, label %loop, label %done
done:
  ret i32 0
}
"""

# inputs ({'b': f32[], 'w': f32[3]}, x: i32[3]); outputs {'n': i64[] = sum(x), 'y': f32[3] = w*x + b}
TREE_IR = r"""
define i32 @tree(ptr %ins, ptr %outs, ptr %ws) {
entry:
  %pb = load ptr, ptr %ins
  %pw.at = getelementptr ptr, ptr %ins, i64 1
  %pw = load ptr, ptr %pw.at
  %px.at = getelementptr ptr, ptr %ins, i64 2
  %px = load ptr, ptr %px.at
  %pn = load ptr, ptr %outs
  %py.at = getelementptr ptr, ptr %outs, i64 1
  %py = load ptr, ptr %py.at
  %b = load float, ptr %pb
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%next, %loop]
  %acc = phi i64 [0, %entry], [%acc2, %loop]
  %xp = getelementptr i32, ptr %px, i64 %i
  %x = load i32, ptr %xp
  %x64 = sext i32 %x to i64
  %acc2 = add i64 %acc, %x64
  %xf = sitofp i32 %x to float
  %wp = getelementptr float, ptr %pw, i64 %i
  %w = load float, ptr %wp
  %m = fmul float %w, %xf
  %y = fadd float %m, %b
  %yp = getelementptr float, ptr %py, i64 %i
  store float %y, ptr %yp
  %next = add i64 %i, 1
  %c = icmp ult i64 %next, 3
  br i1 %c, label %loop, label %done
done:
  store i64 %acc2, ptr %pn
  ret i32 0
}
"""

FAIL_IR = "define i32 @fail(ptr %a, ptr %b, ptr %c) {\n  ret i32 3\n}\n"

UNRESOLVED_IR = r"""
declare float @pullback_no_such_function(float)
define i32 @needs_missing(ptr %ins, ptr %outs, ptr %ws) {
  %v = call float @pullback_no_such_function(float 1.0)
  %o = load ptr, ptr %outs
  store float %v, ptr %o
  ret i32 0
}
"""


@functools.cache
def build_object(ir: str) -> bytes:
    """Compile LLVM IR text to an ELF object for this host, as the code generator would."""
    llvm = _llvm()
    target = runtime.host_target()
    machine = llvm.Target.from_triple(target["triple"]).create_target_machine(
        cpu=target["cpu"], features=target["features"], opt=2, reloc="pic", codemodel="default"
    )
    module = llvm.parse_assembly(ir)
    module.triple = target["triple"]
    module.data_layout = str(machine.target_data)
    module.verify()
    return machine.emit_object(module)


def f32(name: str, *shape: int, kind: str = "param") -> dict:
    return {"name": name, "shape": list(shape), "dtype": "float32", "kind": kind}


def add_manifest() -> dict:
    return runtime.make_manifest(
        name="add", symbol="add4", inputs=[f32("a", 4), f32("b", 4, kind="data")],
        outputs=[{"name": "out", "shape": [4], "dtype": "float32"}], in_tree="(*, *)", out_tree="*",
        compiler_version="test", extra={"note": "hand-written IR"},
    )


def exp_manifest() -> dict:
    return runtime.make_manifest(
        name="exp", symbol="exp_ws", inputs=[f32("x", 4)], outputs=[{"name": "e", "shape": (4,), "dtype": "float32"}],
        in_tree="(*,)", out_tree="(*,)", workspace_bytes=16,
    )


def tree_manifest() -> dict:
    return runtime.make_manifest(
        name="tree", symbol="tree",
        inputs=[f32("b"), f32("w", 3), {"name": "x", "shape": [3], "dtype": "int32", "kind": "data"}],
        outputs=[{"name": "n", "shape": [], "dtype": "int64"}, {"name": "y", "shape": [3], "dtype": "float32"}],
        in_tree="({'b': *, 'w': *}, *)", out_tree="{'n': *, 'y': *}",
    )


def add_kernel() -> runtime.Kernel:
    return runtime.Kernel.from_parts(add_manifest(), build_object(ADD_IR))


def exp_kernel() -> runtime.Kernel:
    return runtime.Kernel.from_parts(exp_manifest(), build_object(EXP_IR))


def tree_kernel() -> runtime.Kernel:
    return runtime.Kernel.from_parts(tree_manifest(), build_object(TREE_IR))


A = np.array([1, 2, 3, 4], dtype=np.float32)
B = np.array([10, 20, 30, 40], dtype=np.float32)


# ---- happy paths --------------------------------------------------------------------------
def test_add_from_parts(add):
    out = add(A, B)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (4,)
    np.testing.assert_array_equal(out, A + B)


def test_outputs_are_fresh_each_call(add):
    first = add(A, B)
    first[:] = -1
    second = add(A, B)
    assert second is not first
    np.testing.assert_array_equal(second, A + B)


def test_libm_call_and_aligned_workspace():
    assert "expf" in elf.read_symbols(build_object(EXP_IR)).undefined
    kernel = exp_kernel()
    x = np.array([0.0, 1.0, -2.0, 3.5], dtype=np.float32)
    (e,) = kernel(x)  # status 7 would mean a NULL or misaligned workspace
    np.testing.assert_allclose(e, np.exp(x), rtol=1e-6)
    assert kernel.workspace_bytes == 16


def test_pytree_inputs_and_outputs(tree):
    w = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    x = np.array([4, -5, 6], dtype=np.int32)
    result = tree({"w": w, "b": np.float32(0.5)}, x)
    assert set(result) == {"n", "y"}
    assert result["n"].shape == () and result["n"].dtype == np.int64 and int(result["n"]) == 5
    np.testing.assert_array_equal(result["y"], w * x + 0.5)


def test_python_scalars_for_0d_inputs(tree):
    w, x = np.ones(3, np.float32), np.arange(3, dtype=np.int32)
    for scalar in (0.25, 2, True, np.float64(0.25), np.array(0.25)):
        result = tree({"b": scalar, "w": w}, x)
        np.testing.assert_array_equal(result["y"], x + np.float32(scalar))


def test_same_kind_casts_are_applied(add):
    np.testing.assert_array_equal(add(A.astype(np.float64), B), A + B)  # f64 -> f32
    np.testing.assert_array_equal(add(np.array([1, 2, 3, 4]), B), A + B)  # int64 -> f32
    np.testing.assert_array_equal(add(A.astype(">f4"), B), A + B)  # byte-swapped


def test_lists_of_numbers_are_not_leaves(add):
    with pytest.raises(runtime.CallError, match="structure"):
        add([1.0, 2.0, 3.0, 4.0], B)


def test_non_contiguous_and_misaligned_inputs_are_copied(add):
    strided = np.arange(8, dtype=np.float32)[::2]
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(add(strided, B), strided + B)
    raw = np.zeros(4 * 4 + 1, dtype=np.uint8)
    misaligned = np.frombuffer(raw.data, dtype=np.float32, count=4, offset=1 if raw.ctypes.data % 4 == 0 else 0)
    assert not misaligned.flags.aligned
    np.testing.assert_array_equal(add(misaligned, B), B)  # status 5 would mean the kernel saw it


def test_read_only_inputs_are_fine(add):
    a = A.copy()
    a.setflags(write=False)
    np.testing.assert_array_equal(add(a, B), A + B)


def test_subclass_inputs(add):
    class Sub(np.ndarray):
        pass

    np.testing.assert_array_equal(add(A.view(Sub), B), A + B)


def test_concurrent_calls_from_threads():
    kernel = exp_kernel()
    failures = []

    def work(seed: int) -> None:
        x = np.full(4, seed / 10, dtype=np.float32)
        for _ in range(200):
            (e,) = kernel(x)
            if not np.allclose(e, np.exp(x), rtol=1e-6):
                failures.append(seed)

    run_in_threads(work)
    assert not failures


# ---- call validation ---------------------------------------------------------------------
def test_argument_count(add):
    with pytest.raises(runtime.CallError, match=r"takes 2 argument\(s\) \(\*, \*\), got 1"):
        add(A)
    with pytest.raises(runtime.CallError, match="got 3"):
        add(A, B, B)


def test_structure_mismatch(tree):
    w, x = np.ones(3, np.float32), np.arange(3, dtype=np.int32)
    with pytest.raises(runtime.CallError, match=r"structure \({'b': \*, 'v': \*}, \*\), it expects"):
        tree({"b": 1.0, "v": w}, x)
    with pytest.raises(runtime.CallError, match="structure"):
        tree((1.0, w), x)
    with pytest.raises(runtime.CallError, match="structure"):
        tree({"b": 1.0, "w": w}, (x,))


def test_container_leaf_on_flat_path(add):
    for bad in (None, (A,), {"a": A}):
        with pytest.raises(runtime.CallError, match="structure"):
            add(bad, B)


def test_shape_mismatch_names_the_input(add, tree):
    with pytest.raises(runtime.CallError, match=r"input 'b' \(args\[1\]\) expects shape \(4,\), got \(3,\)"):
        add(A, B[:3])
    with pytest.raises(runtime.CallError, match=r"input 'a' \(args\[0\]\) expects shape \(4,\), got \(\)"):
        add(1.0, B)
    with pytest.raises(runtime.CallError, match=r"input 'w' \(args\[0\]\['w'\]\) expects shape \(3,\), got \(1, 3\)"):
        tree({"b": 1.0, "w": np.ones((1, 3), np.float32)}, np.arange(3, dtype=np.int32))


def test_dtype_rejected(add, tree):
    with pytest.raises(runtime.CallError, match=r"input 'x' \(args\[1\]\) expects int32, got float64"):
        tree({"b": 1.0, "w": np.ones(3, np.float32)}, np.arange(3.0))
    with pytest.raises(runtime.CallError, match="expects float32, got complex128"):
        add(A.astype(np.complex128), B)
    with pytest.raises(runtime.CallError, match="expects float32"):
        add(np.array(["a", "b", "c", "d"]), B)


def test_unconvertible_value(add):
    class Hostile:
        def __array__(self, *args, **kwargs):
            raise RuntimeError("no")

    with pytest.raises(runtime.CallError, match="cannot convert Hostile"):
        add(Hostile(), B)


def test_call_error_is_value_error():
    assert issubclass(runtime.CallError, ValueError)


def test_native_failure_raises_kernel_error():
    manifest = runtime.make_manifest(name="fails", symbol="fail", inputs=[], outputs=[], in_tree="()", out_tree="()")
    kernel = runtime.Kernel.from_parts(manifest, build_object(FAIL_IR))
    with pytest.raises(runtime.KernelError, match="error code 3"):
        kernel()


# ---- construction errors -----------------------------------------------------------------
def test_unresolved_symbol_is_refused_not_crashed():
    manifest = runtime.make_manifest(
        name="missing", symbol="needs_missing", inputs=[], outputs=[{"name": "o", "shape": [], "dtype": "float32"}],
        in_tree="()", out_tree="*",
    )
    with pytest.raises(runtime.ArtifactError, match="pullback_no_such_function"):
        runtime.Kernel.from_parts(manifest, build_object(UNRESOLVED_IR))


def test_entry_symbol_must_be_defined():
    manifest = add_manifest()
    manifest["symbol"] = "not_there"
    with pytest.raises(runtime.ArtifactError, match=r"does not define function 'not_there' \(it defines: add4\)"):
        runtime.Kernel.from_parts(manifest, build_object(ADD_IR))


@pytest.mark.parametrize("code", [b"", b"hello world, not an object", b"\x7fELF" + bytes(60), build_object.__wrapped__(ADD_IR)[:100]])
def test_garbage_object_code_is_refused(code):
    with pytest.raises(runtime.ArtifactError, match="object code"):
        runtime.Kernel.from_parts(add_manifest(), code)


def test_from_parts_validates_manifest():
    manifest = add_manifest()
    del manifest["symbol"]
    with pytest.raises(runtime.ArtifactError, match="missing field.*symbol"):
        runtime.Kernel.from_parts(manifest, build_object(ADD_IR))
    with pytest.raises(runtime.ArtifactError, match="must be bytes"):
        runtime.Kernel.from_parts(add_manifest(), "not bytes")


# ---- description -------------------------------------------------------------------------
def test_description(add):
    assert add.input_names == ["a", "b"]
    assert add.output_names == ["out"]
    assert add.workspace_bytes == 0
    assert add.sha256 == hashlib.sha256(add.to_bytes()).hexdigest()
    assert repr(add).startswith("<Kernel 'add' (a: f32[4], b: f32[4]) -> (out: f32[4]) workspace=0B sha256=")
    manifest = add.manifest
    assert manifest["extra"] == {"note": "hand-written IR"} and manifest["target"] == runtime.host_target()
    manifest["name"] = "changed"
    assert add.manifest["name"] == "add"


def test_from_parts_is_deterministic():
    assert add_kernel().to_bytes() == add_kernel().to_bytes()


def test_host_target():
    target = runtime.host_target()
    assert set(target) == {"triple", "cpu", "features"}
    assert all(isinstance(value, str) and value for value in (target["triple"], target["cpu"]))
    assert all(item[0] in "+-" for item in target["features"].split(",") if item)


# ---- internals the fast call path relies on ------------------------------------------------
def test_data_pointer_matches_numpy():
    from runtime.kernel import _data_pointer

    base = np.arange(60, dtype=np.float64).reshape(6, 10)
    for array in (base, base[2:], base[:, 3:], base.T, np.ones((), np.float32), np.empty(0), A):
        assert _data_pointer(array) == array.ctypes.data


TREES = ["(*,)", "(*, *)", "({'b': *, 'w': *}, *)", "([*, *], None, *)", "({'p': {'a': *, 'b': (*, *)}, 'q': []}, *)",
         "((), *)", "({'x': *, 1: *},)"]


@pytest.mark.parametrize("text", TREES)
def test_compiled_trees_agree_with_pytree(text):
    from collections import namedtuple

    from runtime.argtree import compile_builder, compile_leaves
    from runtime.pytree import flatten, num_leaves, treedef_from_text, treedef_to_text, unflatten

    treedef = treedef_from_text(text)
    leaves = [np.full(2, i) for i in range(num_leaves(treedef))]
    tree = unflatten(treedef, leaves)
    built_leaves, built_tree = flatten(compile_builder(treedef)(leaves))
    assert treedef_to_text(built_tree) == text and all(x is y for x, y in zip(built_leaves, leaves, strict=True))
    walk = compile_leaves(treedef)
    if walk is None:  # non-str dict keys take the generic path
        assert "1:" in text
        return
    assert [id(x) for x in walk(tree)] == [id(x) for x in leaves]
    Point = namedtuple("Point", "x y")
    variants = [tree + (1,), tree[:-1] + ([1],), tree[:-1] + (None,), tree[:-1] + (Point(1, 2),),
                tuple(list(t) if isinstance(t, tuple) else t for t in tree),
                tuple({**t, "extra": 1} if isinstance(t, dict) else t for t in tree)]
    for variant in variants:
        expected_ok = treedef_to_text(flatten(variant)[1]) == text
        got = walk(variant)
        # the walker may accept a container at a leaf slot (the per-leaf check rejects it later)
        if got is not None and not expected_ok:
            assert any(isinstance(leaf, (list, tuple, dict)) or leaf is None for leaf in got)
        if expected_ok:
            assert got is not None


def test_reentrant_call_from_array_conversion(add):
    class Lazy:
        def __array__(self, dtype=None, copy=None):
            return add(A, B)  # the same kernel, called while the outer call converts arguments

    np.testing.assert_array_equal(add(Lazy(), B), A + 2 * B)


def test_same_array_for_two_inputs(add):
    np.testing.assert_array_equal(add(A, A), 2 * A)


def test_extra_reads_one_manifest_entry_as_a_copy(add, tree):
    assert add.extra("note") == "hand-written IR" == add.manifest["extra"]["note"]
    assert add.extra("missing") is None and add.extra("missing", 3) == 3
    entry = runtime.Kernel.from_parts(add_manifest() | {"extra": {"codes": {"1": "bad"}}}, build_object(ADD_IR))
    entry.extra("codes")["1"] = "changed"
    assert entry.extra("codes") == {"1": "bad"}
    assert tree.extra("note") is None  # no extra entries at all


def test_kernels_sharing_a_tree_text_build_their_own_outputs():
    first, second = tree_kernel(), tree_kernel()  # one parsed tree, remembered and shared
    args = ({"b": np.float32(1), "w": np.ones(3, np.float32)}, np.arange(3, dtype=np.int32))
    out = first(*args)
    out["y"] = "replaced"
    out.clear()
    assert set(second(*args)) == {"n", "y"} and set(first(*args)) == {"n", "y"}
