"""Accumulation: re-sum a tree of additions as a running sum, in the order its pieces arrive.

The adjoint pass sums a value's cotangent contributions with binary `add`s (loc "fan-in
of W"); other passes and users build add trees of any shape. This pass finds every
maximal tree of `add` (and `add_n`) nodes of one type whose inner nodes have a single
use, and re-sums its leaves (the pieces) by one rule:

    Pieces are added in the order they are produced (topological position; a value
    read twice counts once there), as a running sum: each addition reads the previous
    partial sum and the pieces that arrived since, and runs before the next piece is
    produced, so no piece outlives the next addition and one partial sum is live.
    Pieces share one addition (an `add_n`) when they are available at the same point:
    everything computed between two consecutive pieces (sources and the tree's own sums
    aside) is computed only to produce the later one, so both could be computed from
    the values that exist when the earlier one is produced. Anything else in between,
    a value some other computation needs, starts a new addition.

Collapsing a tree into one add_n of all its pieces instead keeps every piece alive to the
end: an unrolled RNN's weight gradients held all T per-step products at once (49 MiB of
workspace at T=512). Grouping still gives fusion one loop for "x used by 4 consumers". (`fuse`, later,
inlines a partial sum into the next addition, as any single-use elementwise value: over
materialized pieces that rebuilds one loop at the root, so it must keep a partial sum
whose next addition reads a piece produced after it.)

Additions reuse the tree's sum ids, so the topological order (smallest ready id first)
runs them where the adjoint's adds ran: each takes the smallest spare id above the ids
it reads, and the last one is the root (its id and loc). An addition no spare id can run
before the next group's last piece also takes that group (it would run after it anyway):
a tree written as one expression after all its pieces keeps one add_n at the root. A
binary addition is an `add`, a wider one an `add_n`.

The sum is left-deep in the pieces' order, so the adjoint's chains (built in that order)
stay bitwise what they were; they already are running sums and come back unchanged. Adds
that broadcast are never part of a tree (add_n does not broadcast), and a tree without
inner sums (a lone add or add_n) is left alone. Near-linear: the scan between two pieces
walks back from the later one (stepping over sources and the tree's sums) and stops at
the first node it does not own, and every walk is iterative (chains are thousands of
nodes deep).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import ClassVar, Iterator

import compiler.ops.accumulate  # noqa: F401 - registers add_n
from compiler.ir.graph import Graph
from compiler.passes.manager import Pass

SUMS = ("add", "add_n")


def _is_sum(graph: Graph, node_id: int) -> bool:
    """An add or add_n whose operands all have its type (no broadcasting)."""
    node = graph.node(node_id)
    return node.op in SUMS and all(graph.type(o) == node.type for o in node.operands)


def _single_reader(graph: Graph, node_id: int) -> int | None:
    """The one node reading `node_id` through exactly one operand slot, else None.

    O(1): use_count (networkx out_degree) walks every user, and a value shared by n adds
    is visited n times, so counting there made the pass quadratic in fan-out.
    """
    users = graph.nx.succ[node_id]
    if len(users) != 1:
        return None
    ((reader, slots),) = users.items()
    return reader if len(slots) == 1 else None


def _is_inner(graph: Graph, node_id: int, outputs: set[int], sums: set[int] | None = None) -> bool:
    """A sum read once, by a sum of the same type: it folds into its reader's tree.

    `sums` (the nodes for which _is_sum holds, computed once) keeps each test O(1)."""
    if sums is not None:
        if node_id not in sums or node_id in outputs:
            return False
        reader = _single_reader(graph, node_id)
        return reader is not None and reader in sums
    if not _is_sum(graph, node_id) or node_id in outputs:  # cheap tests first
        return False
    reader = _single_reader(graph, node_id)
    return reader is not None and _is_sum(graph, reader)


def collect_tree(graph: Graph, root: int, outputs: set[int],
                 sums: set[int] | None = None) -> tuple[list[int], list[int]]:
    """(leaves left to right, inner sum nodes in visit order) of the tree under `root`."""
    leaves: list[int] = []
    inner: list[int] = []
    stack = list(reversed(graph.node(root).operands))
    while stack:
        value = stack.pop()
        if _is_inner(graph, value, outputs, sums):
            inner.append(value)
            stack.extend(reversed(graph.node(value).operands))
        else:
            leaves.append(value)
    return leaves, inner


def sum_trees(graph: Graph, outputs: set[int]) -> Iterator[tuple[int, list[int], list[int]]]:
    """(root, leaves, inner sums) of every maximal tree of sums, each collected when reached,
    so a caller may rewrite one tree before it gets the next (trees share no sums)."""
    # Rewriting a tree keeps its root a sum of the same type and leaves only sums that
    # read each other once, so this set stays valid for every later root.
    sums = {n for n in graph.nx if _is_sum(graph, n)}
    roots = [n for n in list(graph.nx) if n in sums and not _is_inner(graph, n, outputs, sums)]
    for root in roots:
        if root in graph.nx:
            yield (root, *collect_tree(graph, root, outputs, sums))


SOURCES = ("input", "full", "constant")


def _groups(graph: Graph, leaves: list[int], tree: set[int], order: list[int],
            position: dict[int, int], outputs: set[int]) -> list[list[int]]:
    """The leaves in production order, cut into runs that are available at the same point."""
    ranked = sorted(range(len(leaves)), key=lambda i: (position[leaves[i]], i))
    groups: list[list[int]] = []
    previous = None
    for i in ranked:
        leaf = leaves[i]
        if previous is not None and _available_together(graph, previous, leaf, tree, order, position, outputs):
            groups[-1].append(leaf)
        else:
            groups.append([leaf])
        previous = leaf
    return groups


def _available_together(graph: Graph, earlier: int, later: int, tree: set[int], order: list[int],
                        position: dict[int, int], outputs: set[int]) -> bool:
    """Is every node between the two pieces computed only to produce `later`?

    Walks back from `later`; a node belongs to it when all its readers do. Stops at the
    first node that does not, so the cost is the length of `later`'s private run."""
    own = {later}
    succ = graph.nx._succ
    for index in range(position[later] - 1, position[earlier], -1):
        node_id = order[index]
        if node_id in tree or node_id not in graph.nx or graph.node(node_id).op in SOURCES:
            continue  # (a sum of a tree rewritten before this one may be gone)
        if node_id in outputs or not all(user in own for user in succ[node_id]):
            return False
        own.add(node_id)
    return True


@dataclass(frozen=True)
class Accumulate(Pass):
    name: ClassVar[str] = "accumulate"

    def apply(self, graph: Graph) -> bool:
        outputs = set(graph.outputs)
        order = graph.topo_order()
        position = {n: i for i, n in enumerate(order)}
        changed = False
        for root, leaves, inner in sum_trees(graph, outputs):
            if not inner:
                continue  # a lone binary add stays an add; an add_n has nothing to absorb
            tree = set(inner) | {root}
            groups = _groups(graph, leaves, tree, order, position, outputs)
            changed |= _rewrite(graph, root, sorted(inner), groups)
        return changed


def _rewrite(graph: Graph, root: int, spare: list[int], groups: list[list[int]]) -> bool:
    """Rebuild the tree under `root` as a running sum over `groups`; True if anything changed.

    `spare` (sorted) are the tree's other sum ids, free to reuse for partial sums."""
    plan: list[tuple[int, tuple[int, ...]]] = []  # (sum id, operands) in running order
    acc: int | None = None
    i = 0
    while i < len(groups):
        terms = ([acc] if acc is not None else []) + groups[i]
        i += 1
        if len(terms) == 1:
            acc = terms[0]  # a first piece on its own is the running sum so far
            continue
        while True:
            if i == len(groups):
                node_id = root
                break
            # ids, not old positions, say where a reused id runs: above its operands, id
            # order stays topological, and the smallest ready id runs first
            k = bisect.bisect_right(spare, max(terms))
            if k < len(spare) and spare[k] < max(groups[i]):
                node_id = spare.pop(k)
                break
            terms += groups[i]  # no id runs this addition before the next pieces: add them too
            i += 1
        plan.append((node_id, tuple(terms)))
        acc = node_id
    changed = bool(spare)  # sums no longer needed: fewer, wider additions than before
    for node_id, terms in plan:
        node = graph.node(node_id)
        op = "add" if len(terms) == 2 else "add_n"
        if node.op != op or node.operands != terms:
            graph.replace_node(node_id, op=op, operands=terms)
            changed = True
    for node_id in spare:  # every reader of these was a sum of this tree, all rewritten above
        graph.nx.remove_node(node_id)
    return changed
