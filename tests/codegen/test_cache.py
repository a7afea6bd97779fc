"""The on-disk compile cache and the workspace planner."""
from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import compiler
from compiler import ops
from compiler.codegen import cache as compile_cache
from compiler.codegen import compile as compile_graph
from compiler.codegen import memplan
from compiler.ir.graph import Graph
from runtime.pytree import LEAF

codegen_compile = sys.modules["compiler.codegen.compile"]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PULLBACK_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("PULLBACK_NO_CACHE", raising=False)
    return tmp_path


def graph(scale=2.0):
    return compiler.trace(lambda x: ops.exp(x) * scale, np.zeros(5, np.float32), name="cached")


def entries(directory):
    return sorted(p.name for p in directory.iterdir() if p.suffix == ".pullback")


def test_second_compile_hits_the_cache(cache_dir, monkeypatch):
    x = np.arange(5, dtype=np.float32)
    first = compile_graph(graph())
    assert len(entries(cache_dir)) == 1

    def no_llvm(*args, **kwargs):
        raise AssertionError("a cache hit must not run LLVM")

    monkeypatch.setattr(codegen_compile, "_llvm_module", no_llvm)
    second = compile_graph(graph())  # a new, equal graph (other source locations)
    assert second.sha256 == first.sha256
    np.testing.assert_array_equal(second(x), first(x))


def test_key_depends_on_graph_options_and_target():
    target = {"triple": "x86_64-unknown-linux-gnu", "cpu": "a", "features": "+x"}
    base = compile_cache.cache_key(graph(), 2, target, "1")
    assert base == compile_cache.cache_key(graph(), 2, target, "1")
    assert base != compile_cache.cache_key(graph(3.0), 2, target, "1")
    assert base != compile_cache.cache_key(graph(), 1, target, "1")
    assert base != compile_cache.cache_key(graph(), 2, dict(target, cpu="b"), "1")
    assert base != compile_cache.cache_key(graph(), 2, target, "2")


def test_constants_are_keyed_by_value():
    def make(value):
        return compiler.trace(lambda x: x + ops.constant(np.full(3, value)), np.zeros(3))

    assert compile_cache.graph_digest(make(1.0)) != compile_cache.graph_digest(make(2.0))
    assert compile_cache.graph_digest(make(1.0)) == compile_cache.graph_digest(make(1.0))


def test_cache_off(cache_dir, monkeypatch):
    compile_graph(graph(), cache=False)
    assert entries(cache_dir) == []
    monkeypatch.setenv("PULLBACK_NO_CACHE", "1")
    kernel = compile_graph(graph())
    assert entries(cache_dir) == []
    np.testing.assert_allclose(kernel(np.ones(5, np.float32)), np.exp(np.ones(5, np.float32)) * 2)


def test_corrupt_entry_is_recompiled_and_replaced(cache_dir):
    compile_graph(graph())
    (name,) = entries(cache_dir)
    (cache_dir / name).write_bytes(b"PULLBACK garbage")
    kernel = compile_graph(graph())
    np.testing.assert_allclose(kernel(np.ones(5, np.float32)), np.exp(np.ones(5, np.float32)) * 2)
    assert (cache_dir / name).read_bytes() == kernel.to_bytes()
    assert not [p for p in cache_dir.iterdir() if p.name.endswith(".tmp")]


def test_cache_folder_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("PULLBACK_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.cache_dir() == tmp_path / "pullback"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert compile_cache.cache_dir() == compile_cache.pathlib.Path.home() / ".cache" / "pullback"


def test_unwritable_cache_is_not_an_error(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PULLBACK_CACHE_DIR", str(blocker / "cache"))
    kernel = compile_graph(graph())
    assert kernel(np.zeros(5, np.float32)).shape == (5,)


# ------------------------------------------------------------------ the planner
def test_planner_reuses_dead_buffers():
    bufs = [SimpleNamespace(nbytes=100, first=i, last=i + 1, offset=-1) for i in range(10)]
    total = memplan.assign_offsets(bufs)
    assert total == 2 * 128  # a chain needs two live buffers at a time
    for a, b in zip(bufs, bufs[1:]):
        assert a.offset != b.offset
    assert all(b.offset % 64 == 0 for b in bufs)


def test_planner_never_overlaps_live_buffers():
    rng = np.random.default_rng(0)
    bufs = []
    for _ in range(300):
        first = int(rng.integers(0, 100))
        bufs.append(SimpleNamespace(nbytes=int(rng.integers(0, 5000)), first=first,
                                    last=first + int(rng.integers(0, 20)), offset=-1))
    total = memplan.assign_offsets(bufs)
    live = [b for b in bufs if b.nbytes]
    for i, a in enumerate(live):
        assert a.offset + a.nbytes <= total
        for b in live[i + 1:]:
            if a.first <= b.last and b.first <= a.last:
                assert a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset


def test_workspace_of_a_long_chain_stays_small():
    def chain(x):
        for _ in range(20):
            x = ops.tanh(x) * 1.5
        return ops.sum(x)

    kernel = compile_graph(compiler.trace(chain, np.zeros(1000, np.float32)), opt_level=0, cache=False)
    assert kernel.workspace_bytes <= 2 * 4032  # two live f32[1000] buffers, 64-byte aligned
    x = np.linspace(0.1, 1, 1000, dtype=np.float32)
    np.testing.assert_allclose(kernel(x), compiler.evaluate(compiler.trace(chain, x), x), rtol=1e-4)


def test_saved_artifact_loads_and_runs(tmp_path):
    import runtime

    kernel = compile_graph(graph(), cache=False)
    kernel.save(tmp_path / "k.pullback")
    loaded = runtime.load(tmp_path / "k.pullback")
    x = np.linspace(0, 1, 5, dtype=np.float32)
    np.testing.assert_array_equal(loaded(x), kernel(x))
    assert loaded.manifest["extra"]["workspace_planner"] == "liveness best-fit"
    assert os.path.getsize(tmp_path / "k.pullback") == len(kernel.to_bytes())


def test_concurrent_processes_share_the_cache(cache_dir):
    import subprocess
    import textwrap

    script = textwrap.dedent("""
        import numpy as np, compiler
        from compiler import ops
        from compiler.codegen import compile
        g = compiler.trace(lambda x: ops.tanh(x) @ x.T, np.zeros((8, 8), np.float32), name="shared")
        k = compile(g)
        x = np.eye(8, dtype=np.float32)
        assert np.allclose(k(x), np.tanh(x) @ x.T)
    """)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PULLBACK_CACHE_DIR=str(cache_dir), PYTHONPATH=root)
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, cwd=root, stderr=subprocess.PIPE)
             for _ in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    assert len(entries(cache_dir)) == 1
    assert not [p for p in cache_dir.iterdir() if not p.name.endswith(".pullback")]


# ------------------------------------------------------------------ the key's description
def keyed_graph():
    """x, y: f32[5]; %2 = exp(x); %3 = full 2.0; %4 = %2 * %3; %5 = %4 - y; output %5."""
    f5 = compiler.TensorType((5,), "float32")
    graph = Graph("keyed")
    x, y = graph.add_input("x", f5, "param"), graph.add_input("y", f5)
    e = graph.add_node("exp", (x,))
    k = graph.add_node("full", (), {"shape": (), "dtype": "float32", "value": 2.0})
    m = graph.add_node("mul", (e, k))
    s = graph.add_node("sub", (m, y))
    graph.in_tree = (LEAF, LEAF)
    graph.set_outputs([s])
    return graph, dict(x=x, y=y, e=e, k=k, m=m, s=s)


CHANGES = {
    "attribute": lambda g, n: g.replace_node(n["k"], attrs={"shape": (), "dtype": "float32", "value": 3.0}),
    "operand order": lambda g, n: g.replace_node(n["s"], operands=(n["y"], n["m"])),
    "op": lambda g, n: g.replace_node(n["e"], op="log"),
    "type": lambda g, n: g.replace_node(n["e"], type=compiler.TensorType((5,), "float64")),
    "rewired use": lambda g, n: g.replace_all_uses(n["m"], n["e"]),
    "extra node": lambda g, n: g.add_node("exp", (n["s"],)),
    "outputs": lambda g, n: g.set_outputs([n["s"], n["e"]]),
    "input order": lambda g, n: g.inputs.reverse(),
    "input kind": lambda g, n: g.replace_node(n["y"], attrs={"name": "y", "kind": "param"}),
    "input name": lambda g, n: g.replace_node(n["y"], attrs={"name": "z", "kind": "data"}),
    "in_tree": lambda g, n: setattr(g, "in_tree", ((LEAF, LEAF),)),
    "name": lambda g, n: setattr(g, "name", "other"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_key_sees_every_change_even_after_a_first_key(change):
    import copy

    graph, ids = keyed_graph()
    before = compile_cache.graph_digest(graph)
    assert compile_cache.graph_digest(graph) == before  # kept, and stable
    CHANGES[change](graph, ids)
    after = compile_cache.graph_digest(graph)
    assert after != before
    assert after == compile_cache.graph_digest(copy.deepcopy(graph))  # the same as worked out afresh


def test_key_ignores_numbering_and_locations():
    graph, ids = keyed_graph()
    graph.set_outputs([graph.add_node("exp", (ids["s"],), loc="here.py:1")])
    with_gap, ids = keyed_graph()
    with_gap.remove_node(with_gap.add_node("exp", (ids["x"],)))
    with_gap.set_outputs([with_gap.add_node("exp", (ids["s"],), loc="there.py:2")])
    renumbered = compiler.parse(str(with_gap))  # the parser numbers values afresh
    assert sorted(graph.nx) != sorted(with_gap.nx) and sorted(renumbered.nx) == sorted(graph.nx)
    shuffled = graph.copy()  # the same nodes, stored in another order
    shuffled.nx = type(graph.nx)()
    shuffled.nx.add_nodes_from(reversed(list(graph.nx.nodes(data=True))))
    shuffled.nx.add_edges_from(graph.nx.edges(keys=True))
    assert list(shuffled.nx) != list(graph.nx)
    assert len({compile_cache.graph_digest(g) for g in (graph, with_gap, renumbered, shuffled)}) == 1


def test_arrays_and_bodies_changed_in_place_change_the_key():
    from compiler.ops.implicit import fixed_point

    value = np.ones(3, np.float32)
    graph = compiler.trace(lambda x: x + ops.constant(value), np.zeros(3, np.float32))
    before = compile_cache.graph_digest(graph)
    array = next(node.attrs["value"] for _, node in graph.nodes() if node.op == "constant")
    array.setflags(write=True)  # the front end makes constants read-only; a determined user can undo that
    array[1] = 5.0
    assert compile_cache.graph_digest(graph) != before

    looped = compiler.trace(lambda x: fixed_point(lambda v, x: 0.5 * ops.sin(v) + x, x, x), np.zeros(3))
    before = compile_cache.graph_digest(looped)
    body = next(node.attrs["body"] for _, node in looped.nodes() if node.op == "fixed_point")
    (sin,) = [n for n, node in body.nodes() if node.op == "sin"]
    body.replace_node(sin, op="cos")
    assert compile_cache.graph_digest(looped) != before


def test_key_is_worked_out_once_per_graph_state(monkeypatch):
    calls = []
    real = compile_cache._describe
    monkeypatch.setattr(compile_cache, "_describe", lambda *args: (calls.append(1), real(*args))[1])
    graph, ids = keyed_graph()
    first = compile_cache.graph_digest(graph)
    assert compile_cache.graph_digest(graph) == first and len(calls) == 1
    graph.nx.add_edge(ids["x"], ids["s"], key=2)  # edges are not described, but any change starts afresh
    assert compile_cache.graph_digest(graph) == first and len(calls) == 2


def test_equal_python_values_of_different_types_key_apart():
    """1 == 1.0 == True and 0.0 == -0.0 in Python, yet they are different attributes."""
    digests = set()
    for value in (1, 1.0, True, 0.0, -0.0, "1"):
        graph, ids = keyed_graph()
        graph.replace_node(ids["k"], attrs={"shape": (), "dtype": "float32", "value": value})
        digests.add(compile_cache.graph_digest(graph))
    for shape in ((1,), (True,), (1.0,)):
        graph, ids = keyed_graph()
        graph.replace_node(ids["k"], attrs={"shape": shape, "dtype": "float32", "value": 2.0})
        digests.add(compile_cache.graph_digest(graph))
    assert len(digests) == 9


@pytest.mark.parametrize("switch", ["PULLBACK_NAIVE_MATMUL", "PULLBACK_NAIVE_CONV", "PULLBACK_LIBM"])
def test_codegen_switches_change_the_key(switch, monkeypatch):
    target = {"triple": "x86_64-unknown-linux-gnu", "cpu": "a", "features": "+x"}
    monkeypatch.delenv(switch, raising=False)
    base = compile_cache.cache_key(graph(), 2, target, "1")
    monkeypatch.setenv(switch, "1")
    assert compile_cache.cache_key(graph(), 2, target, "1") != base
