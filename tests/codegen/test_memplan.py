"""Buffer planning: in-place execution (memplan.share_in_place) and workspace offsets.

In-place results are checked bitwise against the same graph compiled out of place (the
planner switch emit.IN_PLACE) and against the interpreter. The graph passes are switched
off (`plain`), so every elementwise op reaches the planner as its own kernel; LLVM still
runs at -O2, so the in-place loops are the vectorized ones.
"""
from __future__ import annotations

import re
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import compiler
import runtime
from compiler import ops
from compiler.codegen import compile as compile_graph
from compiler.codegen import emit, llvm_ir, memplan
from compiler.codegen.emit import GraphEmitter, ModuleBuilder
from compiler.ops.accumulate import add_n

compile_module = sys.modules["compiler.codegen.compile"]


@pytest.fixture
def plain(monkeypatch):
    """build(graph, in_place) -> kernel, compiled at -O2 without graph passes."""
    monkeypatch.setattr(compile_module, "_graph_passes", lambda graph, opt_level, dump_dir=None: graph)

    def build(graph, in_place=True, embed=True):
        monkeypatch.setattr(emit, "IN_PLACE", in_place)
        monkeypatch.setattr(emit, "EMBED", embed)
        return compile_graph(graph, opt_level=2, cache=False)

    return build


def planned(graph, in_place=True):
    return GraphEmitter(ModuleBuilder("t"), graph, in_place=in_place)


def aliasing(graph) -> list[tuple[str, tuple[int, ...]]]:
    """(op, operands the result overwrites) of every step, in order."""
    return [(step.op, step.aliased) for step in planned(graph).steps]


def check_both_ways(plain, fn, *args, switch="in_place"):
    """Compile with and without in-place execution (or embedding): bitwise equal, and equal
    to the interpreter."""
    graph = compiler.trace(fn, *args, name=fn.__name__)
    on, off = plain(graph, **{switch: True}), plain(graph, **{switch: False})
    got_on, got_off = runtime.pytree.flatten(on(*args))[0], runtime.pytree.flatten(off(*args))[0]
    want = runtime.pytree.flatten(compiler.evaluate(graph, *args))[0]
    for a, b, w in zip(got_on, got_off, want, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, w, rtol=1e-10, atol=1e-12)
    assert on.workspace_bytes <= off.workspace_bytes
    return graph


def normal(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape)


# ------------------------------------------------------------------ in place
def test_in_place_results_are_bitwise_the_out_of_place_ones(plain):
    def chain(x, y, c):
        a = ops.exp(x)
        b = a * a  # one dying value read twice by one op, the same way
        d = ops.tanh(b) + y
        e = ops.where(c, d, y)
        g = add_n(e, x, e * 2.0)
        total = ops.sum(g)
        r = ops.reshape(ops.sin(g), (64,)) - ops.reshape(y, (64,))  # a view covering the dying buffer
        i = ops.cast(r * 1000.0, "int64")  # same element size: still in place
        return ops.cast(i * 3, "float64") + 0.5, total

    x, y = normal((8, 8)), normal((8, 8), 1)
    graph = check_both_ways(plain, chain, x, y, x > 0.3)
    steps = aliasing(graph)
    for expected in [("mul", (0, 1)), ("tanh", (0,)), ("add", (0,)), ("where", (1,)), ("sin", (0,)),
                     ("sub", (0,)), ("cast", (0,))]:
        assert expected in steps, (expected, steps)
    assert ("add_n", (0,)) in steps  # e and e * 2.0 both die there: the first listed wins
    assert planned(graph).workspace_bytes < planned(graph, in_place=False).workspace_bytes


def test_a_transposed_or_broadcast_reader_of_the_dying_buffer_blocks_in_place(plain):
    def views(x):
        a = ops.exp(x)
        t = a + ops.transpose(a, (1, 0))  # out[i, j] over a[i, j] would clobber a[j, i] before it is read
        b = ops.exp(t)  # t dies here, read only as itself: in place
        u = b * ops.broadcast_to(b[0:1, :], (5, 5))  # row 0 of b is read for every row
        v = ops.sin(u)
        return v - v[::-1]  # the reversed rows of v

    graph = check_both_ways(plain, views, normal((5, 5)) * 0.3)
    assert aliasing(graph) == [("exp", ()), ("add", ()), ("exp", (0,)), ("mul", ()), ("sin", (0,)), ("sub", ())]


def test_graph_outputs_and_values_read_later_keep_their_buffers(plain):
    def outputs(x):
        a = ops.exp(x)
        b = a + 1.0  # a is an output through a view, copied out at the end
        c = ops.tanh(x)
        d = c * 2.0  # c is read again below
        e = c - d  # both die here: e takes c's buffer
        f = ops.sin(e)  # an output: computed in the caller's buffer
        return ops.transpose(a, (1, 0)), b, f, f * 3.0

    graph = check_both_ways(plain, outputs, normal((3, 4)))
    assert aliasing(graph) == [("exp", ()), ("add", ()), ("tanh", ()), ("mul", ()), ("sub", (0,)), ("sin", ()),
                               ("mul", ())]


def test_a_chain_of_elementwise_ops_lives_in_one_buffer(plain):
    def chain(x):
        for _ in range(20):
            x = ops.tanh(x) * 1.5
        return ops.sum(x)

    graph = check_both_ways(plain, chain, np.linspace(-1, 1, 1000))
    assert planned(graph).workspace_bytes == memplan.align(8000)
    assert planned(graph, in_place=False).workspace_bytes == 2 * memplan.align(8000)
    assert planned(graph).in_place_steps == 39  # every op but the first tanh


def test_fixed_point_bodies_run_in_place_too(plain):
    from compiler.ops.implicit import fixed_point

    def solve(x):
        return fixed_point(lambda z, x: ops.tanh(ops.sin(z) * 0.5 + x) * 0.5, ops.zeros_like(x), x,
                           tol=1e-13, max_iter=200)

    x = normal((6,))
    graph = check_both_ways(plain, solve, x)
    body = graph.node(graph.outputs[0]).attrs["body"]
    assert planned(body).in_place_steps >= 2


def test_in_place_kernels_read_through_out_and_drop_its_noalias(monkeypatch):
    monkeypatch.setattr(compile_module, "_graph_passes", lambda graph, opt_level, dump_dir=None: graph)

    def f(x, y):
        a = ops.exp(x)
        b = a + y  # a is read again below: a new buffer
        c = ops.sin(b)
        d = c + y  # the same add signature, over dying c
        return d * a

    x = np.zeros(1024)
    graph = compiler.trace(f, x, x)
    assert aliasing(graph) == [("exp", ()), ("add", ()), ("sin", (0,)), ("add", (0,)), ("mul", ())]
    text = llvm_ir(graph, 2)
    kernels = re.findall(r'^define [^\n]*@"?k\.add[\w.]*"?\(([^\n]*)\)[^\n]*\{\n(.*?)\n\}$', text, re.M | re.S)
    assert len(kernels) == 2  # one kernel per variant: the aliasing flag is part of the kernel key
    in_place = [body for params, body in kernels if "noalias" not in params.split(",")[0]]
    assert len(in_place) == 1
    assert "x double>" in in_place[0]  # still vectorized


def test_only_ops_with_a_rule_run_in_place():
    graph = compiler.trace(lambda x: ops.sum(ops.exp(ops.exp(x) @ x)), normal((4, 4)))
    # the product dies at the outer exp; the inner exp's result dies at the matmul, which has no rule
    assert aliasing(graph) == [("exp", ()), ("matmul", ()), ("exp", (0,)), ("sum", ())]


# ------------------------------------------------------------------ offsets
def test_a_buffer_that_shares_takes_its_owners_offset():
    owner = SimpleNamespace(nbytes=100, first=0, last=5, offset=-1, shares=None)
    other = SimpleNamespace(nbytes=100, first=1, last=6, offset=-1, shares=None)
    shared = SimpleNamespace(nbytes=100, first=5, last=9, offset=-1, shares=owner)
    owner.last = 9  # share_in_place extends the owner over the shared result
    total = memplan.assign_offsets([owner, other, shared])
    assert shared.offset == owner.offset != other.offset and total == 2 * 128


# ------------------------------------------------------------------ embedded concatenation operands
def embedded(graph) -> list[tuple[int, ...]]:
    """The embedded operands of every concatenate step, in order."""
    return [step.embedded for step in GraphEmitter(ModuleBuilder("t"), graph, embed=True).steps
            if step.op == "concatenate"]


def test_produced_operands_are_written_in_place_inside_the_concatenation(plain):
    def stack(x, w):
        pieces = [ops.tanh(x * float(i)) for i in range(4)]  # 8x8 f64: 512-byte, aligned slabs
        later = ops.sum(pieces[1] * 2.0)  # read again after the concatenation: its slab must live on
        return ops.concatenate(pieces, axis=0) @ w, later

    graph = check_both_ways(plain, stack, normal((8, 8)), normal((8, 3), 1), switch="embed")
    assert embedded(graph) == [(0, 1, 2, 3)]


def test_what_is_never_embedded(plain):
    def cases(x, y):
        a, b = ops.exp(x), ops.sin(x)
        twice = ops.concatenate([a, b, a], axis=0)  # a read twice: copied (and b alone is too little)
        across = ops.concatenate([a, b], axis=1)  # axis 1 with 8 rows: a slab is not one run
        given = ops.concatenate([x, ops.cos(x)], axis=0)  # an input lives in the caller's buffer
        odd = ops.concatenate([ops.exp(y), ops.sin(y)], axis=0)  # 3 doubles: the second slab is unaligned
        return twice * 2.0, across * 2.0, given * 2.0, odd * 2.0

    graph = check_both_ways(plain, cases, normal((8, 8)), normal((3,), 1), switch="embed")
    assert embedded(graph) == [(), (), (1,), (0,)]


def test_a_stray_slab_is_not_embedded(plain):
    def shifted(x):
        hs = [ops.tanh(x * float(i)) for i in range(5)]
        first = ops.concatenate(hs[:4], axis=0)  # all four embed here
        second = ops.concatenate(hs[1:], axis=0)  # only hs[4] could: a quarter, so it is copied
        return ops.sum(first * 2.0), ops.sum(second * 3.0)

    graph = check_both_ways(plain, shifted, normal((8, 8)), switch="embed")
    assert embedded(graph) == [(0, 1, 2, 3), ()]


def test_a_value_embeds_once_and_nested_concatenations_nest(plain):
    def nested(x):
        a, b, c = ops.exp(x), ops.sin(x), ops.cos(x)
        inner = ops.concatenate([a, b], axis=0)  # a and b embed here,
        outer = ops.concatenate([inner, c], axis=0)  # and inner here: a and b live inside outer
        other = ops.concatenate([c, a], axis=0)  # c and a are embedded already: copied
        return ops.sum(outer * 3.0, axis=1), other + 1.0

    graph = check_both_ways(plain, nested, normal((8, 8)), switch="embed")
    assert embedded(graph) == [(0, 1), (0, 1), ()]


def test_embedded_buffers_never_run_in_place():
    def chain(x):
        a = ops.exp(x)
        b = ops.tanh(a)  # a dies here: b could overwrite it, but b's place is a slab of the concatenation
        c = ops.sin(x)
        return ops.concatenate([b, c], axis=0) * 2.0

    graph = compiler.trace(chain, normal((8, 8)))
    steps = GraphEmitter(ModuleBuilder("t"), graph).steps
    tanh = next(s for s in steps if s.op == "tanh")
    assert tanh.out.buffer.within is not None and tanh.aliased == ()


def test_embedding_shrinks_the_rnn_step_workspace_and_keeps_its_results(monkeypatch):
    from bench.workloads import PullbackOps, build as build_workload
    from compiler.passes import stack_products

    monkeypatch.setattr(stack_products, "MIN_BLOCK_FLOPS", 0)  # the quick RNN is small: stack it anyway

    wl = build_workload("rnn", "quick")
    step = compiler.value_and_grad(compiler.trace(wl.model(PullbackOps()), *wl.args(), name="rnn"))
    on = GraphEmitter(ModuleBuilder("on"), compiler.optimize(step))
    off = GraphEmitter(ModuleBuilder("off"), compiler.optimize(step), embed=False)
    assert on.embedded_operands > 0 and on.workspace_bytes < off.workspace_bytes
