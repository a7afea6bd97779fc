"""Common subexpression elimination: one node per distinct (op, operands, attrs, type).

Nodes are visited in topological order and looked up in a dict, so the pass is linear.
Attributes are hashed canonically: floats by their bits (0.0 and -0.0 differ, NaN equals
NaN), numpy arrays by dtype, shape and bytes, bool apart from int. Operands of commutative
ops are keyed as a multiset, so a*b and b*a merge. The surviving node is the first one in
topological order, keeping its loc.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Hashable, Mapping

import numpy as np

from compiler.ir.graph import Graph
from compiler.passes._util import topo_order
from compiler.passes.manager import Pass

COMMUTATIVE = frozenset({"add", "mul", "maximum", "minimum", "eq", "ne", "logical_and", "logical_or", "add_n"})
NEVER_MERGED = frozenset({"input"})


def canonical(value: Any) -> Hashable:
    """A hashable key equal for attribute values that mean the same thing, and only those."""
    kind = type(value)
    if kind is int or kind is str:
        return value  # the common cases; distinct from every tagged tuple below
    if kind is tuple and all(type(v) is int for v in value):
        return value
    if isinstance(value, (bool, np.bool_)):
        return ("bool", bool(value))
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return ("float", float(value).hex())
    if isinstance(value, str):
        return value
    if isinstance(value, (tuple, list)):
        return (kind.__name__, tuple(canonical(v) for v in value))
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, np.ascontiguousarray(value).tobytes())
    if isinstance(value, Mapping):
        return ("dict", tuple(sorted((str(k), canonical(v)) for k, v in value.items())))
    if isinstance(value, Graph):
        return ("graph", id(value))  # bodies are immutable once built: identity is meaning
    return (kind.__name__, repr(value))


def node_key(op: str, operands: tuple[int, ...], attrs: Mapping[str, Any], type_: Any) -> Hashable:
    keyed_operands = tuple(sorted(operands)) if op in COMMUTATIVE else operands
    attrs_key = tuple(sorted((name, canonical(value)) for name, value in attrs.items())) if attrs else ()
    return (op, keyed_operands, attrs_key, type_)


@dataclass(frozen=True)
class CommonSubexpressionElimination(Pass):
    name: ClassVar[str] = "cse"

    def apply(self, graph: Graph) -> bool:
        seen: dict[Hashable, int] = {}
        rename: dict[int, int] = {}  # duplicate -> the value that replaces it
        for node_id in topo_order(graph):
            node = graph.node(node_id)
            operands = node.operands
            if rename and any(o in rename for o in operands):
                operands = tuple(rename.get(o, o) for o in operands)
                graph.replace_node(node_id, operands=operands)
            if node.op in NEVER_MERGED or (node.loc or "").startswith("recompute "):
                continue  # rematerialized copies exist to be separate values
            first = seen.setdefault(node_key(node.op, operands, node.attrs, node.type), node_id)
            if first != node_id:
                rename[node_id] = first
        # Every reader of a duplicate came later in topological order and now reads the original.
        graph.outputs = [rename.get(o, o) for o in graph.outputs]
        graph.nx.remove_nodes_from(rename)
        return bool(rename)
