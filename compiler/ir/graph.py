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
from compiler.ir.state import FrozenAttrs, RevisedMultiDiGraph, plain_value
from compiler.ir.types import TensorType
from runtime.pytree import LEAF, num_leaves

INPUT_KINDS = ("param", "data")
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True, eq=False, slots=True)
class Node:
    op: str
    operands: tuple[int, ...]
    type: TensorType
    attrs: Mapping[str, Any] = field(default_factory=FrozenAttrs)
    loc: str | None = None  # "file.py:12" where the op was created, or a note from a pass
    # Facts derived from this node, set once by their owners (object.__setattr__) and valid
    # for its lifetime because a Node never changes: `checked` = (OpDef, *operand types):
    # its type is a TensorType and the op's signature and shape rule accept it for these
    # operand types (set by add_node and ir/soundness.py); `key_text` is the cache key's text for
    # op, type and attributes (cache.py). Only nodes whose attributes are all plain values
    # get them. Slots keep a node small: verifying and keying big graphs is bound by memory
    # traffic more than by the checks.
    checked: Any = field(default=None, init=False, repr=False)
    key_text: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if type(self.attrs) is not FrozenAttrs:
            object.__setattr__(self, "attrs", FrozenAttrs(self.attrs))

    def __reduce__(self) -> tuple:  # pickle and deepcopy rebuild it; the derived facts are recomputed
        return (Node, (self.op, self.operands, self.type, dict(self.attrs), self.loc))


class Graph:
    """A typed dataflow graph. Build it through `add_node`/`add_input` (or tracing)."""

    def __init__(self, name: str = "graph") -> None:
        self.name = name
        self.nx: nx.MultiDiGraph = RevisedMultiDiGraph()
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self.in_tree: Any = ()
        self.out_tree: Any = ()
        self.default_loc: str | None = None  # set by passes so new nodes say where they came from
        self.capture_locations = True
        self._next_id = 0
        # results derived from the graph, each kept with the state.Snapshot it holds for
        # (verify.py, codegen/cache.py): reused only while the graph is unchanged
        self.derived: dict[str, Any] = {}

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
        from compiler.ops.registry import get_op, infer_type

        g = self.nx
        nodes = g._node  # the raw dict: add_node is the hottest call of tracing
        operands = tuple(map(int, operands))
        attrs = FrozenAttrs(attrs or ())
        for operand in operands:
            if operand not in nodes:
                raise PullbackError(f"{op}: operand %{operand} is not a value of graph {self.name!r}")
        if loc is None:
            loc = self.default_loc if self.default_loc is not None else self._caller_location()
        checked = None
        if type is None:
            operand_types = [self.node(o).type for o in operands]
            try:
                type = infer_type(op, operand_types, attrs)
            except ShapeError as exc:
                where = f" at {loc}" if loc else ""
                raise ShapeError(f"{op}{where}: {exc}") from None
            if type.__class__ is TensorType and all(map(plain_value, attrs.values())):
                checked = (get_op(op), *operand_types)  # what verify would find: the type is the rule's
        node = Node(op, operands, type, attrs, loc)
        if checked is not None:
            object.__setattr__(node, "checked", checked)
        node_id = self._next_id
        self._next_id += 1
        g.add_node(node_id, node=node)
        # networkx's own add_edge, not RevisedMultiDiGraph's counting one: edges into a node
        # holding a new Node object need no count, a state.Snapshot sees that object
        add_edge = nx.MultiDiGraph.add_edge if g.__class__ is RevisedMultiDiGraph else g.__class__.add_edge
        for index, operand in enumerate(operands):
            add_edge(g, operand, node_id, key=index)
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
        other.nx = _copy_nx(self.nx)
        other.inputs = list(self.inputs)
        other.outputs = list(self.outputs)
        other.in_tree = self.in_tree
        other.out_tree = self.out_tree
        other._next_id = self._next_id
        return other

    def __getstate__(self) -> dict:  # pickle/deepcopy: derived results are recomputed, never shared
        return {**self.__dict__, "derived": {}}

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


def _copy_nx(g: nx.MultiDiGraph) -> nx.MultiDiGraph:
    """g.copy(), a third faster: networkx's copy adds each edge through views and
    add_edges_from (value_and_grad copies the whole forward graph)."""
    if g.__class__ is not RevisedMultiDiGraph:
        return g.copy()
    other = RevisedMultiDiGraph()
    other.graph.update(g.graph)
    other.add_nodes_from((n, data.copy()) for n, data in g._node.items())
    add_edge = nx.MultiDiGraph.add_edge  # a new graph: nothing to count
    for u, successors in g._succ.items():
        for v, keys in successors.items():
            for key, data in keys.items():
                add_edge(other, u, v, key, **data)
    return other


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
