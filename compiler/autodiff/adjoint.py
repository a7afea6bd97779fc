"""The adjoint pass: a forward graph in, a backward graph (plain IR) out.

The backward graph starts as a copy of the forward graph (same node ids, so forward
values are reused, not recomputed) and gains, in reverse topological order, each active
op's VJP rule. A value read by k consumers receives the sum of its k contributions,
emitted as `add` ops as they arrive (JAX's rule: add when present, set when not) — so a
weight tied across T unrolled steps gets T contributions summed in the IR.

Activity analysis keeps only needed work: an op gets a VJP only if it depends on a
requested input through differentiable ops (stop_gradient, comparisons and integer or
bool values cut the path) and the differentiated output depends on it. Dead cotangent
code that a rule emits anyway (e.g. d/dy of x**y for a constant y) is removed at the end.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compiler.errors import PullbackError
from compiler.ir.graph import Graph, building
from compiler.ir.types import FLOAT_DTYPES
from compiler.ops.registry import get_op
from compiler.ops.tensor import Tensor


@dataclass
class AdjointResult:
    graph: Graph  # forward nodes + adjoint nodes; outputs not yet set
    cotangents: dict[int, int | None]  # requested value id -> its cotangent id (None: zero)


def active_nodes(graph: Graph, wrt: list[int], outputs: list[int]) -> set[int]:
    """Values on a differentiable path from `wrt` to `outputs` (float values only)."""
    order = graph.topo_order()
    varied = set(wrt)
    for node_id in order:
        node = graph.node(node_id)
        if node_id in varied or not node.type.is_float or not get_op(node.op).has_gradient:
            continue
        if node.op != "stop_gradient" and any(o in varied for o in node.operands):
            varied.add(node_id)
    useful = set(outputs)
    for node_id in reversed(order):
        if node_id in useful:
            useful.update(graph.node(node_id).operands)
    return {n for n in varied & useful if graph.node(n).type.is_float}


def backward(forward: Graph, wrt: list[int], seeds: dict[int, int], graph: Graph | None = None) -> AdjointResult:
    """Emit the adjoint of `forward` into a copy of it (or into `graph`, which must be one).

    `seeds` maps output value ids to the ids (in the new graph) of their cotangents.
    """
    graph = graph if graph is not None else forward.copy()
    active = active_nodes(forward, wrt, list(seeds))
    cotangent: dict[int, int] = {}

    def accumulate(value: int, contribution: Tensor) -> None:
        if value in cotangent:
            rule_loc, graph.default_loc = graph.default_loc, f"fan-in of {_describe(forward, value)}"
            cotangent[value] = (Tensor(graph, cotangent[value]) + contribution).id
            graph.default_loc = rule_loc
        else:
            cotangent[value] = contribution.id

    with building(graph):
        for output, seed in seeds.items():
            if output in active:
                accumulate(output, Tensor(graph, seed))
        for node_id in reversed(forward.topo_order()):
            node = forward.node(node_id)
            if node_id not in active or node.op == "input" or node_id not in cotangent:
                continue
            active_operands = [o in active for o in node.operands]
            if not any(active_operands):
                continue
            opdef = get_op(node.op)
            if opdef.vjp is None:
                raise PullbackError(f"op {node.op!r} has no VJP rule; cannot differentiate {_describe(forward, node_id)}")
            graph.default_loc = f"grad {_describe(forward, node_id)}"
            g = Tensor(graph, cotangent[node_id])
            operands = tuple(Tensor(graph, o) for o in node.operands)
            contributions = opdef.vjp(g, Tensor(graph, node_id), operands, **node.attrs)
            if len(contributions) != len(node.operands):
                raise PullbackError(f"internal: VJP of {node.op} returned {len(contributions)} cotangents for {len(node.operands)} operands")
            for operand, is_active, contribution in zip(operands, active_operands, contributions):
                if is_active and contribution is not None:
                    accumulate(operand.id, fit_to(contribution, operand))
    graph.default_loc = None
    return AdjointResult(graph, {w: cotangent.get(w) for w in wrt})


def fit_to(cotangent: Any, operand: Tensor) -> Tensor:
    """Sum a broadcast cotangent back to the operand's shape (and dtype)."""
    import compiler.ops as ops

    if not isinstance(cotangent, Tensor):
        cotangent = ops.full(operand.shape, cotangent, operand.dtype, graph=operand.graph)
    if cotangent.dtype != operand.dtype:
        cotangent = ops.cast(cotangent, operand.dtype)
    target = operand.shape
    if cotangent.shape == target:
        return cotangent
    lead = cotangent.ndim - len(target)
    if lead >= 0:
        axes = tuple(range(lead)) + tuple(
            lead + i for i, d in enumerate(target) if d == 1 and cotangent.shape[lead + i] != 1
        )
        if axes:
            cotangent = ops.sum(cotangent, axis=axes, keepdims=False)
        if cotangent.shape != target:
            cotangent = ops.reshape(cotangent, target) if cotangent.size == operand.size else cotangent
    if cotangent.shape != target:
        cotangent = ops.broadcast_to(cotangent, target)
    return cotangent


def _describe(graph: Graph, node_id: int) -> str:
    node = graph.node(node_id)
    if node.op == "input":
        return f"{node.attrs['name']}"
    return f"{node.op}" + (f" @ {node.loc}" if node.loc else "")


def eliminate_dead_code(graph: Graph) -> None:
    """Remove nodes no output depends on (inputs always stay)."""
    live = set(graph.outputs) | set(graph.inputs)
    for node_id in reversed(graph.topo_order()):
        if node_id in live:
            live.update(graph.node(node_id).operands)
    graph.nx.remove_nodes_from([n for n in list(graph.nx) if n not in live])
