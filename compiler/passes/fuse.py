"""Fusion: group elementwise ops (and the reductions they feed) into `fusion` ops, so the
code generator runs one loop per group instead of one loop, and one temporary, per op.

Every elementwise value is either materialized (it roots a group, or stays a plain op)
or inlined: computed inside the groups of the ops that read it, never stored. Values are
decided in reverse topological order, so all readers of a value are decided before it.
An elementwise value is inlined when it is not a graph output and every reader
- is elementwise with the value's shape (a value read with broadcasting would be
  recomputed for every element it is broadcast to), or
- is a sum, mean, max or min of it (the group then iterates over the value's shape),
and those readers' groups are ONE group, or at most MAX_COPIES groups when the op is
CHEAP (an add or a compare costs less to recompute than to store and load again).

A group is a root (an elementwise op, or a sum/mean/max/min) and the inlined values it
computes; kind "loop" iterates over the root's shape, kind "reduce" over the reduction
operand's. `full` constants read by members are copied into the body; every other
outside value becomes an operand. A group of one op is left alone. The root keeps its
id, type and loc and becomes `fusion(operands) {body, kind}`; the body holds the members
with their original locs.

Bodies are interned by canonical structure (ops, attributes, types, wiring, locs), so
the repeated steps of an unrolled loop share ONE body Graph: the printer shows it once
and the code generator, which keys kernels by body identity, emits one kernel for all.
Linear time: a value joins at most MAX_COPIES groups.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Hashable

import compiler.ops.fusion  # noqa: F401 - registers the fusion op
from compiler.ir.graph import Graph
from compiler.ops.fusion import REDUCTIONS, is_elementwise
from compiler.passes.cse import canonical
from compiler.passes.manager import Pass
from runtime.pytree import LEAF


@dataclass
class Group:
    root: int
    kind: str  # "loop" | "reduce"
    members: set[int]


# Ops cheap enough to compute once per group that reads them rather than store once and
# load per group: a copy costs a few ALU operations per element, not a libm-class call.
CHEAP = frozenset({"neg", "relu", "abs", "sign", "square", "add", "sub", "mul", "maximum", "minimum",
                   "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_not",
                   "where", "cast", "stop_gradient", "add_n"})
MAX_COPIES = 4  # at most this many groups compute one cheap value
SUMS = ("add", "add_n")
SOURCES = ("input", "full", "constant")
RUNNING_SUM_MIN_BYTES = 4096  # partial sums at least this big stay buffers (see _running_sum)


def find_groups(graph: Graph) -> list[Group]:
    """The fusion groups of `graph`, in reverse topological order of their roots."""
    order = graph.topo_order()
    outputs = set(graph.outputs)
    succ = graph.nx._succ
    fusible: dict[str, bool] = {}

    def elementwise(op: str) -> bool:
        if op not in fusible:
            fusible[op] = is_elementwise(op)
        return fusible[op]

    # Readers come before producers in reverse topological order, so when a value is
    # decided, so is every reader: inlined (computed inside its readers' groups) or a root.
    inlined: dict[int, frozenset[int]] = {}  # value -> the roots of the groups that compute it
    position = {node_id: i for i, node_id in enumerate(order)}
    for node_id in reversed(order):
        node = graph.node(node_id)
        users = succ[node_id]
        if node_id in outputs or not users or not elementwise(node.op):
            continue
        roots: set[int] = set()
        for user in users:
            unode = graph.node(user)
            if elementwise(unode.op):
                if unode.type.shape != node.type.shape:
                    break  # read with broadcasting: each element would be computed many times
                if _running_sum(graph, node_id, node, unode, position, inlined):
                    break
            elif unode.op not in REDUCTIONS:
                break  # read by an op that is not fused: it must be materialized
            roots.update(inlined.get(user, (user,)))
        else:
            if len(roots) == 1 or (len(roots) <= MAX_COPIES and node.op in CHEAP):
                inlined[node_id] = frozenset(roots)
    members: dict[int, set[int]] = {}
    for node_id, roots in inlined.items():
        for root in roots:
            members.setdefault(root, {root}).add(node_id)
    groups = []
    for root in reversed(order):
        if root in members:
            kind = "reduce" if graph.node(root).op in REDUCTIONS else "loop"
            groups.append(Group(root, kind, members[root]))
    return groups


def _running_sum(graph: Graph, node_id: int, node: Any, reader: Any, position: dict[int, int],
                 inlined: dict[int, frozenset[int]]) -> bool:
    """Is `node` a partial sum that must stay a buffer of its own?

    The accumulate pass adds the pieces of a gradient as they are produced. Inlining the
    partial sum into the next addition when that addition also reads a value computed
    LATER would move every earlier piece's last use to the end of the chain: all T pieces
    of a tied weight's gradient would be alive at once (49 MiB for a T=512 RNN instead of
    5 MiB). Small sums (bias gradients) are cheaper to fuse than to store.
    """
    if node.op not in SUMS or reader.op not in SUMS or node.type.nbytes < RUNNING_SUM_MIN_BYTES:
        return False
    here = position[node_id]
    return any(position[w] > here and w not in inlined and graph.node(w).op not in SOURCES
               for w in reader.operands)


def _plan(graph: Graph, group: Group) -> tuple[list[tuple[str, int]], dict[int, int], list[int]]:
    """The body in creation order: ('input'|'full'|'op', original id) entries, post-order
    from the root with operands left to right; the index of each original id in it; and
    the external operands in body-input order."""
    members = group.members
    entries: list[tuple[str, int]] = []
    index: dict[int, int] = {}
    externals: list[int] = []
    stack = [(group.root, False)]
    while stack:
        node_id, expanded = stack.pop()
        if node_id in index:
            continue
        if node_id not in members:
            kind = "full" if graph.node(node_id).op == "full" else "input"
            index[node_id] = len(entries)
            entries.append((kind, node_id))
            if kind == "input":
                externals.append(node_id)
        elif expanded:
            index[node_id] = len(entries)
            entries.append(("op", node_id))
        else:
            stack.append((node_id, True))
            stack.extend((o, False) for o in reversed(graph.node(node_id).operands) if o not in index)
    return entries, index, externals


def _structure(graph: Graph, group: Group, entries: list[tuple[str, int]], index: dict[int, int]) -> Hashable:
    parts: list[Any] = [group.kind]
    for kind, node_id in entries:
        node = graph.node(node_id)
        if kind == "input":
            parts.append(("in", node.type))
        else:
            attrs = tuple(sorted((k, canonical(v)) for k, v in node.attrs.items()))
            parts.append((node.op, attrs, node.type, tuple(index[o] for o in node.operands), node.loc))
    return tuple(parts)


def _build_body(graph: Graph, name: str, entries: list[tuple[str, int]], index: dict[int, int], root: int) -> Graph:
    body = Graph(name)
    body.capture_locations = False  # members keep their own locs; none are invented
    ids: list[int] = []
    count = 0
    for kind, node_id in entries:
        node = graph.node(node_id)
        if kind == "input":
            ids.append(body.add_input(f"in{count}", node.type, "data"))
            count += 1
        else:
            operands = tuple(ids[index[o]] for o in node.operands)
            ids.append(body.add_node(node.op, operands, dict(node.attrs), type=node.type, loc=node.loc))
    body.in_tree = tuple(LEAF for _ in range(count))
    body.set_outputs([ids[index[root]]])
    body.capture_locations = True
    return body


@dataclass(frozen=True)
class Fuse(Pass):
    name: ClassVar[str] = "fuse"

    def apply(self, graph: Graph) -> bool:
        bodies: dict[Hashable, Graph] = {}
        replaced: set[int] = set()  # members and constants that may have no reader left
        for group in reversed(find_groups(graph)):  # topological order: bodies are numbered as the text reads
            entries, index, externals = _plan(graph, group)
            if not externals:
                continue  # only constants go in (fold's job): a fusion needs an operand
            key = _structure(graph, group, entries, index)
            body = bodies.get(key)
            if body is None:
                body = bodies[key] = _build_body(graph, f"fused_{len(bodies)}", entries, index, group.root)
            graph.replace_node(group.root, op="fusion", operands=tuple(externals),
                               attrs={"body": body, "kind": group.kind})
            replaced.update(n for kind, n in entries if kind != "input" and n != group.root)
        # Readers first: a member's readers are members or fused roots, so all go but those
        # a skipped group still reads (and constants something else reads).
        outputs = set(graph.outputs)
        work = [n for n in replaced if graph.nx.out_degree(n) == 0]
        while work:
            node_id = work.pop()
            if node_id in graph.nx and graph.nx.out_degree(node_id) == 0 and node_id not in outputs:
                operands = graph.node(node_id).operands
                graph.nx.remove_node(node_id)
                work.extend(o for o in operands if o in replaced)
        return bool(bodies)
