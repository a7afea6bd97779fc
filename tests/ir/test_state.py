"""compiler/ir/state.py: what lets verify() and the cache key reuse their results soundly."""
from __future__ import annotations

import copy
import pickle

import networkx as nx
import pytest

import compiler
from compiler import Spec, ops
from compiler.ir.graph import Graph, Node
from compiler.ir.state import _EDGE_CHANGES, FrozenAttrs, RevisedMultiDiGraph, Snapshot, plain_value


def chain() -> Graph:
    return compiler.trace(lambda x, y: ops.sum(ops.exp(x) * y + x * x), Spec((3,)), Spec((3,)))


EDGE_CALLS = {
    "add_edge": lambda g: g.add_edge(0, 1, key=7),
    "add_edges_from": lambda g: g.add_edges_from([(0, 1, 7)]),
    "add_weighted_edges_from": lambda g: g.add_weighted_edges_from([(0, 1, 0.5)]),
    "remove_edge": lambda g: g.remove_edge(*next(iter(g.edges(keys=True)))),
    "remove_edges_from": lambda g: g.remove_edges_from([next(iter(g.edges(keys=True)))]),
    "remove_node": lambda g: g.remove_node(0),
    "remove_nodes_from": lambda g: g.remove_nodes_from([0]),
    "clear": lambda g: g.clear(),
    "clear_edges": lambda g: g.clear_edges(),
    "update": lambda g: g.update(edges=[(0, 1)]),
}


def test_every_networkx_call_that_changes_edges_is_counted():
    assert set(EDGE_CALLS) == set(_EDGE_CHANGES)
    # and no other public method of MultiDiGraph adds or removes edges
    mutators = {name for name in dir(nx.MultiDiGraph) if name.startswith(("add_", "remove_", "clear", "update"))}
    assert mutators - set(_EDGE_CHANGES) == {"add_node", "add_nodes_from"}


@pytest.mark.parametrize("call", sorted(EDGE_CALLS))
def test_edge_changes_move_the_revision_and_break_the_snapshot(call):
    graph = chain()
    before = Snapshot(graph.nx)
    assert before.same(Snapshot(graph.nx))
    revision = graph.nx.revision
    EDGE_CALLS[call](graph.nx)
    assert graph.nx.revision > revision
    assert not before.same(Snapshot(graph.nx))


def test_node_changes_break_the_snapshot():
    graph = chain()
    before = Snapshot(graph.nx)
    node = graph.node(2)
    graph.nx.nodes[2]["node"] = Node(node.op, node.operands, node.type, node.attrs, node.loc)  # equal, not the same
    assert not before.same(Snapshot(graph.nx))
    before = Snapshot(graph.nx)
    graph.nx.add_node(99)
    assert not before.same(Snapshot(graph.nx))
    plain = nx.MultiDiGraph(graph.nx)
    assert not Snapshot(plain).same(Snapshot(plain))  # no revision to trust: never the same


def test_copies_are_independent_and_equal():
    graph = chain()
    other = graph.copy()
    assert type(other.nx) is RevisedMultiDiGraph
    assert str(other) == str(graph)
    assert list(other.nx.edges(keys=True, data=True)) == list(graph.nx.edges(keys=True, data=True))
    assert [dict(other.nx._pred[n]) == dict(graph.nx._pred[n]) for n in graph.nx] == [True] * len(graph)
    other.nx.remove_edge(*next(iter(other.nx.edges(keys=True))))
    other.nx.nodes[2]["extra"] = 1
    assert "extra" not in graph.nx.nodes[2] and len(graph.nx.edges) == len(other.nx.edges) + 1
    assert graph.derived is not other.derived


def test_frozen_attrs_survive_pickle_and_copies():
    attrs = FrozenAttrs({"axes": (0, 1), "keepdims": False})
    for clone in (pickle.loads(pickle.dumps(attrs)), copy.deepcopy(attrs), copy.copy(attrs)):
        assert type(clone) is FrozenAttrs and clone == attrs
    assert type(attrs.copy()) is dict  # a copy is for changing
    with pytest.raises(TypeError, match="read-only"):
        attrs |= {"keepdims": True}


def test_plain_values():
    assert all(plain_value(v) for v in (1, 2.5, True, "x", None, (1, (2, "a")), ()))
    import numpy as np

    assert not any(plain_value(v) for v in ([1], (1, [2]), np.ones(2), {"a": 1}, np.float32(1), chain()))
