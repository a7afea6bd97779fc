"""Elementwise, fused and gather kernels on a libgomp team (compiler/codegen/parallel_loops.py).

Big kernels must run as parallel regions (their region functions are in the module) and
give bitwise the results of serial code under any team size, in place too; small ones
(and scatter_add) stay serial.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import compiler
from compiler import ops
from compiler.codegen import parallel
from compiler.codegen import parallel_loops as pl
from compiler.codegen import compile as compile_graph
from compiler.codegen.compile import build as build_module
from tests.codegen.test_parallel import ROOT, gomp_symbols, needs_gomp

BIG = pl.MIN_BYTES  # bytes: at this size a nest is split


def normal(shape, dtype="float32", seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def ids(n, low, high, seed=0, dtype="int32"):
    return np.random.default_rng(seed).integers(low, high, n).astype(dtype)


@contextlib.contextmanager
def _threads(threads):
    """PULLBACK_THREADS=threads within the block."""
    old = os.environ.get(parallel.ENV)
    os.environ[parallel.ENV] = threads
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(parallel.ENV, None)
        else:
            os.environ[parallel.ENV] = old


def compiled(fn, args, parallel_code, threads="2", opt_level=2):
    with _threads(threads), parallel.configured(parallel_code):
        return compile_graph(compiler.trace(fn, *args, name=fn.__name__), opt_level, cache=False)


def regions(fn, args, threads="2", opt_level=2):
    """Stems of the cut loop nests in the module's (unoptimized) LLVM IR."""
    with _threads(threads):
        text = build_module(compiler.trace(fn, *args, name=fn.__name__), opt_level).ir_text
    # the parallel region of a cut nest: "part.<kernel>.<stem>[.n].par<chunks>x<per>"
    return set(re.findall(r'define internal void @"?part\.k\.[\w.]*?\.(\w+?)(?:\.\d+)?\.par\d+x\d+"?\(', text))


# ---------------------------------------------------------------- the plan
def test_plan_cuts_a_written_level_and_whole_vector_blocks():
    assert pl.plan_split([100_000], [[1], [1]], (0,), BIG, threads=1) is None
    assert pl.plan_split([100_000], [[1], [1]], (0,), BIG - 1, threads=2) is None
    level, per, chunks = pl.plan_split([100_003], [[1], [1]], (0,), 100 * BIG, threads=2)
    assert level == 0 and per % pl.VECTOR_BLOCK == 0 and (chunks - 1) * per < 100_003 <= chunks * per
    assert 2 <= chunks <= 2 * pl.OVERSPLIT
    # a sum over the leading axis: only the kept (inner) axis may be cut, in vector blocks
    level, per, chunks = pl.plan_split([1000, 4096], [[0, 1], [4096, 1]], (0,), BIG, threads=2)
    assert level == 1 and per % pl.VECTOR_BLOCK == 0 and chunks >= 2
    # ... unless it is too short to cut: serial
    assert pl.plan_split([100_000, 64], [[0, 1], [64, 1]], (0,), BIG, threads=2) is None
    # a sum over the last axis: the rows are cut
    assert pl.plan_split([5000, 64], [[1, 0], [64, 1]], (0,), BIG, threads=2)[0] == 0
    # every written operand must move along the cut level (siblings: k results)
    assert pl.plan_split([5000, 64], [[1, 0], [0, 1], [64, 1]], (0, 1), BIG, threads=2) is None
    # a full reduction: nothing to cut
    assert pl.plan_split([100_000], [[0], [1]], (0,), 100 * BIG, threads=2) is None


# ---------------------------------------------------------------- results
def elementwise(x, xt, v):
    return ops.exp(x) * v + ops.transpose(xt, (1, 0))  # broadcast, a transposed operand


def elementwise_f64(x, xt, v):
    return ops.tanh(x * v) - ops.transpose(xt, (1, 0))


def gather(a, i):
    return ops.take(a, i, axis=0), ops.take(a, i[:1000], axis=1)  # negative and wrapped indices


def segments(d, i):
    return ops.segment_sum(d, i, 1500)  # ids >= 1500 and < 0 are dropped


def fused_loop(a, b, c):
    return ops.tanh(a * b + c) * 2.0


def reduce_rows(a, b):
    return ops.sum(ops.exp(a) * b, axis=1), ops.max(a * b, axis=1)


def reduce_columns(a, b):
    return ops.sum(a * b + 1.0, axis=0)


def siblings(a, b):
    d = a - b
    return ops.sum(d * d, axis=1), ops.max(d, axis=1), ops.mean(d, axis=1)


CASES = {
    "elementwise": (elementwise, lambda: (normal((1201, 333)), normal((333, 1201), seed=1), normal((333,), seed=2)),
                    {"ew"}, 1),
    "elementwise_f64": (elementwise_f64, lambda: (normal((301, 555), "float64"), normal((555, 301), "float64", 1),
                                                  normal((1, 555), "float64", 2)), {"ew"}, 1),
    "gather": (gather, lambda: (normal((2000, 67)), ids(10000, -2100, 2100)), {"take"}, 2),
    "segments": (segments, lambda: (normal((10000, 64)), ids(10000, -10, 2000, 3)), {"ew"}, 1),
    "fused_loop": (fused_loop, lambda: (normal((1003, 257)), normal((257,), seed=1), normal((1003, 1), seed=2)),
                   {"loop"}, 2),
    "reduce_rows": (reduce_rows, lambda: (normal((2001, 129)), normal((2001, 129), seed=1)), {"siblings"}, 2),
    "reduce_columns": (reduce_columns, lambda: (normal((999, 1025)), normal((1025,), seed=1)), {"reduce"}, 2),
    "siblings": (siblings, lambda: (normal((3001, 67), "float64"), normal((3001, 67), "float64", 1)), {"siblings"}, 2),
}


def outputs(result):
    return result if isinstance(result, tuple) else (result,)


@needs_gomp
@pytest.mark.parametrize("name", sorted(CASES))
def test_bitwise_equal_to_serial(name):
    fn, make, stems, opt = CASES[name]
    args = make()
    found = regions(fn, args, opt_level=opt)
    assert stems <= found, found
    assert regions(fn, args, threads="1", opt_level=opt) == set()
    ser = compiled(fn, args, False, opt_level=opt)
    serial = outputs(ser(*args))
    expected = outputs(compiler.evaluate(compiler.trace(fn, *args), *args))
    for threads in ("2", "3"):  # 3 on 2 cores: uneven shares
        par = compiled(fn, args, True, threads=threads, opt_level=opt)
        assert "GOMP_parallel" in gomp_symbols(par)
        assert par.manifest["extra"]["kernels"] == ser.manifest["extra"]["kernels"]  # parts are not kernels
        # between checks, results of other data: an element the team skipped would show
        # whatever the reused output memory held
        other = [a + 1 if a.dtype.kind == "f" else a for a in args]
        for _ in range(3):
            par(*other)
            for x, y in zip(outputs(par(*args)), serial, strict=True):
                assert x.tobytes() == y.tobytes()
    for x, y in zip(serial, expected, strict=True):
        np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-4)


def test_small_kernels_stay_serial():
    args = (normal((64, 256)), normal((256,), seed=1), normal((64, 1), seed=2))
    assert regions(fused_loop, args) == set()
    assert gomp_symbols(compiled(fused_loop, args, True)) == set()
    assert regions(segments, (normal((100, 64)), ids(100, 0, 2000)), opt_level=1) == set()
    # scatter_add stays serial (see parallel_loops.py): only the masking `where` is split
    assert regions(segments, (normal((10000, 64)), ids(10000, -10, 2000)), opt_level=1) == {"ew"}


def chain(x, y):
    for _ in range(3):
        x = ops.log_softmax(x, axis=1)  # a kernel of its own: the fused loop after it may overwrite x
        x = ops.tanh(x) * 1.5 + y
    return ops.sum(x, axis=1)


@needs_gomp
@pytest.mark.parametrize("opt_level,stem", [(1, "ew"), (2, "loop")])
def test_in_place_on_a_team(opt_level, stem):
    from compiler.codegen.emit import GraphEmitter, ModuleBuilder
    from compiler.pipeline import optimize

    args = (normal((700, 512)), normal((700, 512), seed=1))
    graph = compiler.trace(chain, *args)
    emitter = GraphEmitter(ModuleBuilder("t"), optimize(graph, opt_level))
    assert any(s.aliased for s in emitter.steps)
    assert stem in regions(chain, args, opt_level=opt_level)
    par, ser = compiled(chain, args, True, opt_level=opt_level), compiled(chain, args, False, opt_level=opt_level)
    assert par(*args).tobytes() == ser(*args).tobytes()
    np.testing.assert_allclose(par(*args), compiler.evaluate(graph, *args), rtol=1e-5, atol=1e-4)


GNN_CHILD = r"""
import json, pickle, sys
import numpy as np
import runtime
from runtime.pytree import flatten
path, data = sys.argv[1:3]
kernel = runtime.load(path)
with open(data, "rb") as f:
    args, expected = pickle.load(f)
same = [all(np.asarray(x).tobytes() == y.tobytes() for x, y in zip(flatten(kernel(*args))[0], expected, strict=True))
        for _ in range(5)]
print(json.dumps({"ok": all(same)}))
"""


def _flatten(tree):
    from runtime.pytree import flatten

    return [np.asarray(x) for x in flatten(tree)[0]]


@needs_gomp
@pytest.mark.parametrize("threads", ["1", "2", "3"])
def test_gnn_step_in_a_fresh_process(tmp_path, threads):
    """A gnn training step (per-edge gathers, segment sums, their gradients) compiled for
    2 threads, saved, then run by the runtime alone under OMP_NUM_THREADS: bitwise the
    serial step."""
    import pickle

    from bench.workloads import PullbackOps, gnn_model
    from bench.workloads import build as workload
    from compiler.codegen import compile as compile_graph

    wl = workload("gnn", "quick", nodes=600, edges=4000, features=64)
    step = compiler.value_and_grad(compiler.trace(gnn_model(PullbackOps()), *wl.args(), name="gnn"))
    args = wl.args()
    ser = compile_graph(step, cache=False, parallel=False)
    with _threads("2"):
        par = compile_graph(step, cache=False, parallel=True)
    assert "GOMP_parallel" in gomp_symbols(par)
    expected = _flatten(ser(*args))
    assert all(x.tobytes() == y.tobytes() for x, y in zip(_flatten(par(*args)), expected, strict=True))
    path, data = tmp_path / "gnn.pullback", tmp_path / "data.pkl"
    par.save(path)
    data.write_bytes(pickle.dumps((args, expected)))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=threads)
    result = subprocess.run([sys.executable, "-c", GNN_CHILD, str(path), str(data)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"ok": True}
