"""Sibling reductions: reductions that loop over the same shape and read a common value
become ONE `fusion` of kind "siblings", so the common value is read once per element
for all of them (softmax cross-entropy's loss and gradient sums, layer norm's mean(x)
and mean(x*x), batch norm backward's sum(g) and sum(g*xhat)).

A candidate is a loop that ends in a reduction: a plain sum/mean/max/min, or a "reduce"
fusion made by `fuse` (so this pass runs after it). Candidates are siblings when they
iterate over the same shape, produce the same dtype and read a common operand of more
than one element (a scalar is one load for the whole loop: sharing it saves nothing).

Grouping never makes a cycle. Candidates are taken in topological order and groups are
numbered as they are started; a candidate joins a group of its siblings only if every
group holding a candidate it depends on (merged later or not) is older. Then every path
between two groups runs from an older one to a newer one, so no group reaches itself,
at the price of a rare missed merge. Linear: one sweep carries each value's newest such
group.

Rewrite: the group becomes `fusion(operands) {body, kind='siblings'}` whose body holds
each member's reduction (a reduce fusion's body copied in, identical values shared, so
the kernel computes them once) with outputs in topological order of the members; each
member becomes `reshape(slice(fusion))` (views, no copies) at its own loc. Bodies are
interned by structure, as fuse's are, so unrolled steps share one kernel.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any, ClassVar, Hashable

import compiler.ops.fusion  # noqa: F401 - registers the fusion op
from compiler.ir.graph import Graph
from compiler.ir.types import TensorType
from compiler.ops.fusion import REDUCTIONS, iteration_shape, sibling_spans
from compiler.passes.cse import canonical, node_key
from compiler.passes.manager import Pass
from runtime.pytree import LEAF


def _candidate(graph: Graph, node_id: int) -> tuple[Hashable, tuple[int, ...]] | None:
    """(siblings key, operands its loop reads) of a loop ending in a reduction, else None."""
    node = graph.node(node_id)
    if node.op in REDUCTIONS:
        return (graph.type(node.operands[0]).shape, node.type.dtype), node.operands
    if node.op == "fusion" and node.attrs["kind"] == "reduce":
        return (iteration_shape(node.attrs["body"], "reduce"), node.type.dtype), node.operands
    return None


def find_groups(graph: Graph, order: list[int] | None = None) -> list[list[int]]:
    """Groups of two or more sibling reductions, each in topological order, in order of
    their first member; merging all of them leaves the graph acyclic."""
    order = graph.topo_order() if order is None else order
    loops = {n: c for n in order if (c := _candidate(graph, n)) is not None}
    readers: dict[tuple[Hashable, int], list[int]] = {}  # (key, operand) -> candidates reading it
    for node_id, (key, reads) in loops.items():
        for operand in dict.fromkeys(reads):
            if graph.type(operand).size > 1:
                readers.setdefault((key, operand), []).append(node_id)
    shared = {u for users in readers.values() if len(users) > 1 for u in users}
    groups: list[list[int]] = []
    reads_of: list[dict[int, int]] = []  # group -> {operand: elements} its loops read
    group_of: dict[int, int] = {}
    newest: dict[int, int] = {}  # value -> the newest group holding a candidate it depends on (or is)
    for node_id in order if shared else ():
        after = max((newest.get(o, -1) for o in graph.node(node_id).operands), default=-1)
        if node_id in shared:
            key, operands = loops[node_id]
            reads = {o: graph.type(o).size for o in operands}
            options = sorted({group_of[u] for o in reads for u in readers.get((key, o), ()) if u in group_of})
            chosen = next((g for g in options if g > after and _worth_sharing(reads, reads_of[g])), len(groups))
            if chosen == len(groups):
                groups.append([])
                reads_of.append({})
            groups[chosen].append(node_id)
            reads_of[chosen].update(reads)
            group_of[node_id] = chosen
            after = max(after, chosen)
        if after >= 0:
            newest[node_id] = after
    return [g for g in groups if len(g) > 1]


def _worth_sharing(reads: dict[int, int], group: dict[int, int]) -> bool:
    """The common operands make up at least half of what the smaller side reads. Else the
    merge mostly glues unrelated loops together (an unrolled RNN's per-step losses share
    only a 4-element bias): it saves a call but keeps every step's operands alive until
    the last step's are ready."""
    common = sum(n for o, n in reads.items() if o in group)
    return 2 * common >= min(sum(reads.values()), sum(group.values()))


class _BodyBuilder:
    """One "siblings" body: members' reductions over shared inputs, identical values once."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.body = Graph("siblings")
        self.body.capture_locations = False  # members keep their own locs
        self.externals: dict[int, int] = {}  # graph value -> body input
        self.known: dict[Hashable, int] = {}
        self.structure: list[Any] = []

    def input(self, value: int) -> int:
        if value not in self.externals:
            self.externals[value] = self.body.add_input(f"in{len(self.externals)}", self.graph.type(value), "data")
            self.structure.append(("in", self.graph.type(value)))
        return self.externals[value]

    def add(self, op: str, operands: tuple[int, ...], attrs: Any, type_: TensorType, loc: str | None,
            shared: bool = True) -> int:
        key = node_key(op, operands, attrs, type_)
        if shared and key in self.known:
            return self.known[key]
        node_id = self.body.add_node(op, operands, dict(attrs), type=type_, loc=loc)
        self.structure.append((op, tuple(sorted((k, canonical(v)) for k, v in attrs.items())), type_, operands, loc))
        if shared:
            self.known[key] = node_id
        return node_id

    def member(self, node_id: int) -> int:
        """Add one member's loop; returns its reduction's body id (never shared: outputs are distinct)."""
        node = self.graph.node(node_id)
        if node.op in REDUCTIONS:
            return self.add(node.op, (self.input(node.operands[0]),), node.attrs, node.type, node.loc, shared=False)
        inner: Graph = node.attrs["body"]
        ids = {i: self.input(o) for i, o in zip(inner.inputs, node.operands)}
        result = inner.outputs[0]
        for inner_id in inner.topo_order():
            if inner_id not in ids:
                n = inner.node(inner_id)
                ids[inner_id] = self.add(n.op, tuple(ids[o] for o in n.operands), n.attrs, n.type, n.loc,
                                         shared=inner_id != result)
        return ids[result]


@dataclass(frozen=True)
class Siblings(Pass):
    name: ClassVar[str] = "siblings"

    def apply(self, graph: Graph) -> bool:
        order = graph.topo_order()
        groups = find_groups(graph, order)
        if not groups:
            return False
        rank = {n: i for i, n in enumerate(order)}  # where each value runs; new ones run where their members did
        bodies: dict[Hashable, Graph] = {}
        for members in groups:
            builder = _BodyBuilder(graph)
            outputs = [builder.member(m) for m in members]
            builder.body.in_tree = tuple(LEAF for _ in builder.externals)
            builder.body.set_outputs(outputs)
            builder.body.capture_locations = True
            key = tuple(builder.structure + [("out", tuple(outputs))])
            body = bodies.setdefault(key, builder.body)
            if body is builder.body:
                body.name = f"siblings_{len(bodies) - 1}"
            loc = graph.node(members[0]).loc
            fused = graph.add_node("fusion", tuple(builder.externals), {"body": body, "kind": "siblings"}, loc=loc)
            rank[fused] = rank[members[0]]
            for member, (start, stop) in zip(members, sibling_spans(body)):
                node = graph.node(member)
                value = graph.add_node("slice", (fused,), {"starts": (start,), "stops": (stop,), "steps": (1,)},
                                       loc=node.loc)
                rank[value] = rank[member]
                if node.type.shape != (stop - start,):
                    value = graph.add_node("reshape", (value,), {"shape": node.type.shape}, loc=node.loc)
                    rank[value] = rank[member]
                graph.replace_all_uses(member, value)
                graph.remove_node(member)
        _reschedule(graph, rank, min(rank[g[0]] for g in groups))
        return True


def _reschedule(graph: Graph, rank: dict[int, int], start: int) -> None:
    """Re-add the values ranked at or after `start` (inputs stay) in rank order, operands
    first, so ids follow the schedule again. topo_order runs the smallest ready id first:
    left with their new, largest ids, a group and its views would run after everything
    else that is ready, and values that do not need them would be computed early and held
    (cnn's training step: +6% workspace)."""
    inputs = set(graph.inputs)
    moving = {n for n in graph.nx if n not in inputs and rank[n] >= start}
    succ = graph.nx._succ
    waiting = {n: sum(o in moving for o in graph.node(n).operands) for n in moving}
    ready = [(rank[n], n) for n, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    moved: dict[int, int] = {}
    saved = graph.capture_locations, graph.default_loc
    graph.capture_locations, graph.default_loc = False, None  # a node without a loc keeps none
    try:
        while ready:
            node_id = heapq.heappop(ready)[1]
            node = graph.node(node_id)
            operands = tuple(moved.get(o, o) for o in node.operands)
            moved[node_id] = graph.add_node(node.op, operands, node.attrs, type=node.type, loc=node.loc)
            for user, edges in succ[node_id].items():
                if user in waiting:
                    waiting[user] -= len(edges)
                    if waiting[user] == 0:
                        heapq.heappush(ready, (rank[user], user))
    finally:
        graph.capture_locations, graph.default_loc = saved
    graph.outputs = [moved.get(o, o) for o in graph.outputs]
    graph.nx.remove_nodes_from(moving)
