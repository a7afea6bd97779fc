"""Telling cheaply whether a graph changed, so results derived from it can be reused.

Verifying a graph and describing it for the compile cache are linear, but on a graph of
tens of thousands of nodes even one pass costs tens of milliseconds, while compiling the
same Graph again (a cache hit) should cost almost nothing. Three facts make reuse sound:

- a Node never changes: its fields are frozen and its attributes are a FrozenAttrs, so
  the same Node object means the same op, operands, type and attributes (as long as those
  attributes are plain values: arrays, lists and graphs can change in place);
- the networkx graph is a RevisedMultiDiGraph, whose `revision` moves on every networkx
  call that adds or removes an edge (or a node, with its edges);
- a Snapshot lists the node ids and Node objects in place: comparing two by identity is
  one C-level list comparison.

Edges changed behind networkx's back (its private _succ/_pred dicts) are not seen; the
compiler only reads those.
"""
from __future__ import annotations

import functools
import operator
from typing import Any, Callable

import networkx as nx


class FrozenAttrs(dict):
    """A node's attributes: a dict that refuses changes.

    What is derived from a node (its verified shape rule, its cache-key text) is kept on
    it; an attribute changed in place would leave those stale. Build a new dict and
    `Graph.replace_node(node_id, attrs=...)` instead.
    """

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("node attributes are read-only: pass new ones to Graph.replace_node(node_id, attrs=...)")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]

    def copy(self) -> dict:  # type: ignore[override]
        return dict(self)

    def __reduce__(self) -> tuple:  # pickle/deepcopy would otherwise refill it item by item
        return (FrozenAttrs, (dict(self),))


_PLAIN = (bool, int, float, str, type(None))


def plain_value(value: Any) -> bool:
    """True for attribute values that can never change in place: scalars, strings and
    tuples of them (not arrays, lists or graphs)."""
    if value.__class__ in _PLAIN:
        return True
    return value.__class__ is tuple and all(map(plain_value, value))


class RevisedMultiDiGraph(nx.MultiDiGraph):
    """networkx's MultiDiGraph with a `revision` that moves on every structural change."""

    revision = 0


# Every MultiDiGraph method that can add or remove an edge. Adding a node alone cannot (a
# Snapshot sees new nodes); remove_node takes the node's edges with it.
_EDGE_CHANGES = ("add_edge", "add_edges_from", "add_weighted_edges_from", "remove_edge", "remove_edges_from",
                 "remove_node", "remove_nodes_from", "clear", "clear_edges", "update")


def _counted(method: Callable) -> Callable:
    @functools.wraps(method)
    def counted(self: RevisedMultiDiGraph, *args: Any, **kwargs: Any) -> Any:
        self.revision += 1  # before: a change that fails halfway still counts
        return method(self, *args, **kwargs)

    return counted


for _name in _EDGE_CHANGES:
    setattr(RevisedMultiDiGraph, _name, _counted(getattr(nx.MultiDiGraph, _name)))


_node_of = operator.itemgetter("node")


class Snapshot:
    """A graph's nodes and edge revision at one moment; equal snapshots mean nothing a
    verifier or the cache key reads from the networkx graph has changed in between."""

    __slots__ = ("graph", "revision", "ids", "nodes")

    def __init__(self, g: nx.MultiDiGraph) -> None:
        self.graph = g
        self.revision = getattr(g, "revision", None)  # None: a plain networkx graph, never equal
        self.ids = list(g._node)
        try:
            self.nodes = list(map(_node_of, g._node.values()))  # C-level: the snapshot is taken on every call
        except KeyError:  # a node without data: kept as None, which no verified graph has
            self.nodes = [data.get("node") for data in g._node.values()]

    def same(self, other: "Snapshot | None") -> bool:
        # Nodes compare by identity (eq=False), so == on the lists is an identity test in C
        return (other is not None and other.graph is self.graph and self.revision is not None
                and other.revision == self.revision and other.ids == self.ids and other.nodes == self.nodes)
