"""The graph IR: a networkx MultiDiGraph of ops, each producing one typed value.

Node ids are ints; node `i`'s data holds a `Node`. An edge (operand, user, key=k) says
that `operand` is the k-th operand of `user`, so x*x has two edges and operand order is
explicit. Inputs are `input` nodes listed in `Graph.inputs`; outputs are node ids listed
in `Graph.outputs`; `in_tree`/`out_tree` give their pytree structure.
"""
from __future__ import annotations

import contextlib
import heapq
import os
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Mapping

import networkx as nx

from compiler.errors import PullbackError, ShapeError
from compiler.ir.types import TensorType
from runtime.pytree import LEAF, num_leaves

INPUT_KINDS = ("param", "data")
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True, eq=False)
class Node:
    op: str
    operands: tuple[int, ...]
    type: TensorType
    attrs: Mapping[str, Any] = field(default_factory=dict)
    loc: str | None = None  # "file.py:12" where the op was created, or a note from a pass


class Graph:
    """A typed dataflow graph. Build it through `add_node`/`add_input` (or tracing)."""

    def __init__(self, name: str = "graph") -> None:
        self.name = name
        self.nx = nx.MultiDiGraph()
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self.in_tree: Any = ()
        self.out_tree: Any = ()
        self.default_loc: str | None = None  # set by passes so new nodes say where they came from
        self.capture_locations = True
        self._next_id = 0

    # ----------------------------------------------------------------- building
    def add_node(
        self,
        op: str,
        operands: tuple[int, ...] | list[int] = (),
        attrs: Mapping[str, Any] | None = None,
        *,
        type: TensorType | None = None,
        loc: str | None = None,
    ) -> int:
        """Add an op; its type is inferred from the op's shape rule unless given."""
        from compiler.ops.registry import infer_type

        operands = tuple(int(o) for o in operands)
        attrs = dict(attrs or {})
        for operand in operands:
            if operand not in self.nx:
                raise PullbackError(f"{op}: operand %{operand} is not a value of graph {self.name!r}")
        if loc is None:
            loc = self.default_loc if self.default_loc is not None else self._caller_location()
        if type is None:
            try:
                type = infer_type(op, [self.node(o).type for o in operands], attrs)
            except ShapeError as exc:
                where = f" at {loc}" if loc else ""
                raise ShapeError(f"{op}{where}: {exc}") from None
        node_id = self._next_id
        self._next_id += 1
        self.nx.add_node(node_id, node=Node(op, operands, type, attrs, loc))
        for index, operand in enumerate(operands):
            self.nx.add_edge(operand, node_id, key=index)
        return node_id

    def add_input(self, name: str, type: TensorType, kind: str = "data", loc: str | None = None) -> int:
        if kind not in INPUT_KINDS:
            raise PullbackError(f"input {name!r}: kind must be one of {INPUT_KINDS}, got {kind!r}")
        if any(self.node(i).attrs["name"] == name for i in self.inputs):
            raise PullbackError(f"duplicate input name {name!r}")
        node_id = self.add_node("input", (), {"name": name, "kind": kind}, type=type, loc=loc or "")
        self.inputs.append(node_id)
        return node_id

    def set_outputs(self, outputs: list[int], out_tree: Any = None) -> None:
        self.outputs = [int(o) for o in outputs]
        if out_tree is None:
            out_tree = LEAF if len(outputs) == 1 else tuple(LEAF for _ in outputs)
        if num_leaves(out_tree) != len(self.outputs):
            raise PullbackError(f"out_tree has {num_leaves(out_tree)} leaves but {len(outputs)} outputs")
        self.out_tree = out_tree

    # ---------------------------------------------------------------- querying
    def node(self, node_id: int) -> Node:
        try:
            return self.nx._node[node_id]["node"]  # the raw dict: node() is the hottest call in the compiler
        except KeyError:
            raise PullbackError(f"%{node_id} is not a value of graph {self.name!r}") from None

    def __contains__(self, node_id: int) -> bool:
        return node_id in self.nx

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def type(self, node_id: int) -> TensorType:
        return self.node(node_id).type

    def uses(self, node_id: int) -> list[tuple[int, int]]:
        """(user, operand index) pairs, ordered by user id then index."""
        return sorted((user, key) for _, user, key in self.nx.out_edges(node_id, keys=True))

    def users(self, node_id: int) -> list[int]:
        return sorted(set(self.nx.successors(node_id)))

    def is_id_ordered(self) -> bool:
        """True when every operand has a smaller id than its user (which implies acyclic)."""
        data = self.nx._node
        return all(operand < node_id for node_id in data for operand in data[node_id]["node"].operands)

    def topo_order(self) -> list[int]:
        """Deterministic topological order: the smallest ready node id first.

        Builders only ever add users after their operands, so id order is usually already
        topological; checking that is linear, and then it is the answer. Graphs rewired by
        passes take a heap-based Kahn sort over networkx's raw adjacency dicts.
        """
        if self.is_id_ordered():
            return sorted(self.nx)
        successors = self.nx._succ
        waiting = {n: len(data["node"].operands) for n, data in self.nx._node.items()}
        ready = [n for n, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            node_id = heapq.heappop(ready)
            order.append(node_id)
            for user, edges in successors[node_id].items():
                waiting[user] -= len(edges)
                if waiting[user] == 0:
                    heapq.heappush(ready, user)
        if len(order) != len(waiting):
            return list(nx.lexicographical_topological_sort(self.nx))  # a cycle: networkx names it
        return order

    @property
    def next_id(self) -> int:
        """The id the next added node will get (ids only grow)."""
        return self._next_id

    def nodes(self) -> Iterator[tuple[int, Node]]:
        for node_id in self.topo_order():
            yield node_id, self.node(node_id)

    def input_names(self) -> list[str]:
        return [self.node(i).attrs["name"] for i in self.inputs]

    # ---------------------------------------------------------------- rewriting
    def replace_node(self, node_id: int, **changes: Any) -> None:
        """Replace fields of a node in place (op, operands, attrs, type, loc)."""
        old = self.node(node_id)
        new = replace(old, **changes)
        if new.operands != old.operands:
            self.nx.remove_edges_from([(o, node_id, k) for k, o in enumerate(old.operands)])
            for index, operand in enumerate(new.operands):
                self.nx.add_edge(operand, node_id, key=index)
        self.nx.nodes[node_id]["node"] = new

    def replace_all_uses(self, old: int, new: int) -> None:
        for user, index in self.uses(old):
            operands = list(self.node(user).operands)
            operands[index] = new
            self.replace_node(user, operands=tuple(operands))
        self.outputs = [new if o == old else o for o in self.outputs]

    def remove_node(self, node_id: int) -> None:
        if self.users(node_id):
            raise PullbackError(f"cannot remove %{node_id}: it still has users {self.users(node_id)}")
        self.nx.remove_node(node_id)
        if node_id in self.inputs:
            self.inputs.remove(node_id)

    def copy(self) -> "Graph":
        other = Graph(self.name)
        other.nx = self.nx.copy()
        other.inputs = list(self.inputs)
        other.outputs = list(self.outputs)
        other.in_tree = self.in_tree
        other.out_tree = self.out_tree
        other._next_id = self._next_id
        return other

    # ---------------------------------------------------------------- printing
    def __str__(self) -> str:
        from compiler.ir.printer import dump

        return dump(self)

    def __repr__(self) -> str:
        return f"<Graph {self.name!r}: {len(self)} nodes, {len(self.inputs)} inputs, {len(self.outputs)} outputs>"

    # ---------------------------------------------------------------- helpers
    def _caller_location(self) -> str | None:
        if not self.capture_locations:
            return None
        frame = sys._getframe(2)
        while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
            frame = frame.f_back
        if frame is None:
            return None
        return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"


_BUILDING: list[Graph] = []


@contextlib.contextmanager
def building(graph: Graph) -> Iterator[Graph]:
    """Make `graph` the target of ops created without tensor operands (ops.zeros...)."""
    _BUILDING.append(graph)
    try:
        yield graph
    finally:
        _BUILDING.pop()


def current_graph() -> Graph:
    if not _BUILDING:
        raise PullbackError("no graph is being built: call ops inside compiler.trace(...)")
    return _BUILDING[-1]
