"""Dead code elimination: remove every value no output depends on (inputs always stay)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compiler.ir.graph import Graph
from compiler.passes.manager import Pass


def live_values(graph: Graph) -> set[int]:
    """Outputs, inputs and everything they read, found by a walk over operands: O(nodes + edges)."""
    live = set(graph.inputs)
    stack = [o for o in graph.outputs if o not in live]
    live.update(stack)
    while stack:
        for operand in graph.node(stack.pop()).operands:
            if operand not in live:
                live.add(operand)
                stack.append(operand)
    return live


@dataclass(frozen=True)
class DeadCodeElimination(Pass):
    name: ClassVar[str] = "dce"

    def apply(self, graph: Graph) -> bool:
        live = live_values(graph)
        dead = [n for n in graph.nx if n not in live]
        graph.nx.remove_nodes_from(dead)
        return bool(dead)
