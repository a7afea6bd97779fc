"""Accumulation: collapse a tree of additions into one `add_n`.

The adjoint pass sums a value's cotangent contributions with binary `add`s as they
arrive, so a weight tied across T unrolled steps gets a chain of T - 1 adds (loc
"fan-in of W"), each writing a temporary. This pass finds every maximal tree of `add`
(and `add_n`) nodes of one type whose inner nodes have a single use, and replaces it with
one `add_n` over its leaves, left to right, at the root's id and loc. For the left-deep
chains the adjoint pass emits, the result is bitwise unchanged (add_n sums left to right).

Adds that broadcast are never part of a tree (add_n does not broadcast), and a tree of a
single binary add is left alone. Linear: each node is visited a bounded number of times,
and the walk is iterative (chains are thousands of nodes deep).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

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


@dataclass(frozen=True)
class Accumulate(Pass):
    name: ClassVar[str] = "accumulate"

    def apply(self, graph: Graph) -> bool:
        outputs = set(graph.outputs)
        # Rewriting a tree keeps its root a sum of the same type and removes only its inner
        # nodes (each in exactly one tree), so this set stays valid for every later root.
        sums = {n for n in graph.nx if _is_sum(graph, n)}
        roots = [n for n in list(graph.nx) if n in sums and not _is_inner(graph, n, outputs, sums)]
        changed = False
        for root in roots:
            leaves, inner = collect_tree(graph, root, outputs, sums)
            if not inner:
                continue  # a lone binary add stays an add; an add_n has nothing to absorb
            graph.replace_node(root, op="add_n", operands=tuple(leaves))
            for node_id in inner:  # parents before children: each has no reader left when removed
                graph.nx.remove_node(node_id)
            changed = True
        return changed
