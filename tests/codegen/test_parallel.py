"""Parallel matmuls through libgomp (compiler/codegen/parallel.py, matmul.split).

Parallel code must give bitwise the results of serial code (each output element is
computed by one thread with the serial step sequence), in this process and in a fresh
interpreter that loads a saved artifact with the runtime alone, under any OMP_NUM_THREADS
and after fork(). An artifact needing a library that cannot be loaded is refused clearly.
"""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import compiler
import runtime
from compiler.codegen import compile as compile_graph
from compiler.codegen import matmul as mm
from compiler.codegen import parallel
from runtime import elf, loader
from runtime.errors import ArtifactError

ROOT = Path(__file__).resolve().parents[2]
HAVE_GOMP = True
try:
    import ctypes

    ctypes.CDLL(parallel.LIBRARY)
except OSError:  # pragma: no cover - every Debian machine with gcc has it
    HAVE_GOMP = False
needs_gomp = pytest.mark.skipif(not HAVE_GOMP, reason=f"{parallel.LIBRARY} is not installed")


def normal(shape, dtype, seed):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def swap(x):
    return compiler.ops.swapaxes(x, -1, -2)


def products(a, b, bt, at, v, a3):
    """Row and column splits, B packed (transposed view) and in place, A transposed, a
    matrix-vector product, a batch loop."""
    return a @ b, a @ swap(bt), swap(at) @ b, a @ v, a3 @ b[:, :70]


def product_args(dtype):
    return (normal((96, 300), dtype, 0), normal((300, 200), dtype, 1), normal((200, 300), dtype, 2),
            normal((300, 96), dtype, 3), normal((300, 1), dtype, 4), normal((3, 150, 300), dtype, 5))


def build(fn, args, parallel_code, threads="2"):
    old = os.environ.get(parallel.ENV)
    os.environ[parallel.ENV] = threads
    try:
        with parallel.configured(parallel_code):
            graph = compiler.trace(fn, *args, name=fn.__name__)
            return compile_graph(graph, cache=False)
    finally:
        if old is None:
            os.environ.pop(parallel.ENV, None)
        else:
            os.environ[parallel.ENV] = old


def gomp_symbols(kernel):
    return {s for s in elf.read_symbols(kernel.object_code).undefined if s.startswith(("GOMP_", "omp_"))}


# ---------------------------------------------------------------- the plan
def test_split_keeps_small_products_serial_and_cuts_whole_tiles():
    p = mm.Problem("float32", 512, 512, 512, 512, 1, 512, 1, 512)
    pl = mm.plan(p)
    assert mm.split(p, pl, threads=1) is None
    sp = mm.split(p, pl, threads=2)
    assert sp is not None and 2 <= sp.chunks <= 2 * mm.OVERSPLIT
    unit = pl.mr if sp.axis == "m" else pl.nr
    total = p.m if sp.axis == "m" else p.n
    assert sp.size % unit == 0 and (sp.chunks - 1) * sp.size + sp.last == total and 0 < sp.last <= sp.size
    small = mm.Problem("float32", 16, 16, 16, 16, 1, 16, 1, 16)
    assert mm.split(small, mm.plan(small), threads=8) is None  # below parallel.MIN_FLOPS
    # B packed: columns (each chunk packs only its own part of B)
    packed = mm.Problem("float32", 256, 256, 256, 256, 1, 1, 256, 256)
    assert mm.plan(packed).pack_b and mm.split(packed, mm.plan(packed), threads=2).axis == "n"


def test_switches(monkeypatch):
    monkeypatch.setenv(parallel.ENV, "1")
    assert parallel.max_threads() == 1 and not parallel.enabled()
    monkeypatch.setenv(parallel.ENV, "3")
    assert parallel.max_threads() == 3
    with parallel.configured(False):
        assert parallel.max_threads() == 1
    assert parallel.cache_token() != ""
    monkeypatch.setenv(parallel.ENV, "lots")
    with pytest.raises(ValueError, match=parallel.ENV):
        parallel.max_threads()
    assert parallel.needs("declare void @GOMP_parallel(ptr, ptr, i32, i32)") == [parallel.LIBRARY]
    assert parallel.needs('call void @"GOMP_parallel"(ptr @f, ptr %d, i32 0, i32 0)') == [parallel.LIBRARY]
    assert parallel.needs("define void @f()") == []


def test_serial_switches_compile_no_openmp_calls():
    args = product_args("float32")
    assert gomp_symbols(build(products, args, None, threads="1")) == set()
    assert gomp_symbols(build(products, args, False, threads="2")) == set()


# ---------------------------------------------------------------- results
@needs_gomp
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bitwise_equal_to_serial(dtype):
    args = product_args(dtype)
    par, ser = build(products, args, True), build(products, args, False)
    assert {"GOMP_parallel", "omp_get_thread_num", "omp_get_max_threads"} <= gomp_symbols(par)
    assert gomp_symbols(ser) == set()
    # the manifest names the library the runtime must load (llvmlite may quote the symbol)
    assert par.manifest["extra"]["needs"] == [parallel.LIBRARY] and ser.manifest["extra"]["needs"] == []
    for x, y in zip(par(*args), ser(*args), strict=True):
        assert x.tobytes() == y.tobytes()
    a, b = args[0], args[1]
    np.testing.assert_allclose(par(*args)[0], a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)


@needs_gomp
def test_concurrent_callers_each_get_a_team():
    args = product_args("float32")
    kernels = [build(products, args, True) for _ in range(3)]
    expected = [r.tobytes() for r in build(products, args, False)(*args)]
    failures = []

    def work(kernel):
        for _ in range(20):
            if [r.tobytes() for r in kernel(*args)] != expected:
                failures.append(kernel)

    threads = [threading.Thread(target=work, args=(k,)) for k in kernels]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


CHILD = r"""
import json, os, sys
import numpy as np
import runtime
path, data = sys.argv[1:3]
kernel = runtime.load(path)
arrays = np.load(data)
args = [arrays[f"arg{i}"] for i in range(len(arrays.files)) if f"arg{i}" in arrays.files]
expected = [arrays[f"out{i}"] for i in range(sum(f.startswith("out") for f in arrays.files))]

def same():
    return all(x.tobytes() == y.tobytes() for x, y in zip(kernel(*args), expected, strict=True))

ok = [same() for _ in range(5)]
forked = None
if hasattr(os, "fork"):
    pid = os.fork()  # after a parallel region ran: the child must neither hang nor differ
    if pid == 0:
        os._exit(0 if same() else 3)
    forked = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
leaked = [m for m in sys.modules if m == "compiler" or m.startswith("compiler.")]
print(json.dumps({"ok": all(ok), "forked": forked, "leaked": leaked}))
"""


@needs_gomp
@pytest.mark.parametrize("threads", ["1", "2", "5"])
def test_saved_artifact_in_a_fresh_process(tmp_path, threads):
    args = product_args("float32")
    par = build(products, args, True)
    expected = build(products, args, False)(*args)
    path = tmp_path / "products.pullback"
    par.save(path)
    data = tmp_path / "data.npz"
    np.savez(data, **{f"arg{i}": a for i, a in enumerate(args)}, **{f"out{i}": r for i, r in enumerate(expected)})
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=threads)
    result = subprocess.run([sys.executable, "-c", CHILD, str(path), str(data)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"ok": True, "forked": 0 if hasattr(os, "fork") else None, "leaked": []}


# ---------------------------------------------------------------- the runtime side
def test_unknown_library_is_refused():
    with pytest.raises(ArtifactError, match="libpullback_missing.so.1.*does not load"):
        loader.required_libraries(["libpullback_missing.so.1"], (), "kernel 'k'")
    with pytest.raises(ArtifactError, match="must be a list"):
        loader.required_libraries("libgomp.so.1", (), "kernel 'k'")
    assert loader.required_libraries([], ["GOMP_parallel", "omp_get_thread_num", "expf"], "k") == ["libgomp.so.1"]


def test_library_that_cannot_be_loaded_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(loader.LIBRARIES, "libpullback_missing.so.1", (("pullback_missing_",), "no package"))
    kernel = build(products, product_args("float32"), False)
    with pytest.raises(ArtifactError, match=r"needs shared library libpullback_missing.so.1 \(no package\), "
                                            r"which cannot be loaded.*PULLBACK_THREADS=1"):
        loader.NativeCode(kernel.object_code, kernel.manifest["symbol"], "kernel 'k'", needs=["libpullback_missing.so.1"])


@pytest.mark.skipif("needs" not in inspect.getsource(runtime.kernel.Kernel.__init__),
                    reason="runtime/kernel.py does not pass manifest extra.needs to NativeCode yet")
def test_manifest_needing_a_missing_library_is_refused(monkeypatch):
    monkeypatch.setitem(loader.LIBRARIES, "libpullback_missing.so.1", (("pullback_missing_",), "no package"))
    kernel = build(products, product_args("float32"), False)
    manifest = kernel.manifest
    manifest["extra"]["needs"] = ["libpullback_missing.so.1"]
    with pytest.raises(ArtifactError, match="libpullback_missing.so.1.*cannot be loaded"):
        runtime.Kernel.from_parts(manifest, kernel.object_code)
