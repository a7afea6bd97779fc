"""Small graph helpers shared by the passes (things Graph does not offer directly)."""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

from compiler.ir.graph import Graph, building

_MISSING = object()


def topo_order(graph: Graph) -> list[int]:
    return graph.topo_order()


def use_count(graph: Graph, node_id: int) -> int:
    """Number of operand slots reading `node_id` (x*x counts twice)."""
    return graph.nx.out_degree(node_id)


def full_value(graph: Graph, node_id: int) -> Any:
    """The scalar of a `full` node, or _MISSING for anything else."""
    node = graph.node(node_id)
    return node.attrs["value"] if node.op == "full" else _MISSING


def is_full_of(graph: Graph, node_id: int, target: bool | int | float) -> bool:
    """A `full` whose value equals `target`: bools only match bools, and zeros only match
    zeros of the same sign (so -0.0 and 0.0 differ); NaN never matches."""
    value = full_value(graph, node_id)
    if value is _MISSING or isinstance(value, bool) != isinstance(target, bool) or value != target:
        return False
    return not (value == 0 and math.copysign(1.0, value) != math.copysign(1.0, target))


def next_node_id(graph: Graph) -> int:
    """The id the next new node will get: ids at or above it were created after this call."""
    return graph.next_id


@contextlib.contextmanager
def rewriting(graph: Graph, loc: str | None) -> Iterator[Graph]:
    """Build new nodes with the ops API; they take `loc` (the node being rewritten)."""
    saved = graph.default_loc
    graph.default_loc = loc if loc is not None else ""
    try:
        with building(graph):
            yield graph
    finally:
        graph.default_loc = saved


def replace_value(graph: Graph, old: int, new: int) -> None:
    """Point every use of `old` (and the outputs) at `new`; drop `old` if nothing reads it."""
    if old == new:
        return
    graph.replace_all_uses(old, new)
    if use_count(graph, old) == 0 and old not in graph.inputs and old not in graph.outputs:
        graph.nx.remove_node(old)
