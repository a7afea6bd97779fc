"""Pool-gradient rewrites: work that reads a max_pool2d_grad (the scattered, full-size
gradient) is moved onto the pooled gradient it scatters, a quarter of the elements for a
2x2 pool. Two rules, both for what the training step of `relu -> max_pool2d` computes.

1. A ReLU gradient mask is applied before the scatter:

       where(gt(t, 0), max_pool2d_grad(x, g), 0)        x = relu(t), or x = t
    -> max_pool2d_grad(x, where(gt(max_pool2d(x), 0), g, 0))

   The scatter writes a window's g only at the window's argmax pixel p, and the pooled
   value of that window is x[p] (the same NaN when the window selects a NaN), so
   "pooled > 0" is "x[p] > 0", which is "t[p] > 0" for x = relu(t). A pixel the mask
   zeroes gets a sum of +0.0 where the where picked 0.0: bitwise the same result for
   every input, NaN and Inf included, and for any kernel, stride and padding
   (overlapping windows add masked g's of the one pixel they share). The mask reads the
   pooled forward value, which the step already holds, instead of recomputing t over
   the full image. It needs that max_pool2d(x) in the graph (a new pool would cost about
   what the rewrite saves) and a scatter nothing else reads.

2. A sum over both spatial axes (a conv bias gradient) adds up the pooled gradient:

       sum(max_pool2d_grad(x, g), axes)  ->  sum(g, axes)       axes including 2 and 3

   Every window's g lands on exactly one pixel of its own (image, channel) plane, so
   the sums hold the same nonzero terms; the scattered one only adds zeros. This changes
   rounding as reassociation does (the terms are added in another order), and a sum of
   only -0.0 terms is -0.0 instead of +0.0; NaN and Inf propagate the same.

Runs on plain ops, before `fuse`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compiler.ir.graph import Graph
from compiler.passes._util import full_value, is_full_of, replace_value, use_count
from compiler.passes.manager import Pass

POOL_ATTRS = ("kernel", "stride", "padding")


def _is_zero(graph: Graph, value: int) -> bool:
    """A `full` of 0 (+0.0 and -0.0 compare the same in gt)."""
    v = full_value(graph, value)
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0


def _forward_pool(graph: Graph, x: int, attrs: dict) -> int | None:
    for user in graph.users(x):
        node = graph.node(user)
        if node.op == "max_pool2d" and all(node.attrs[k] == attrs[k] for k in POOL_ATTRS):
            return user
    return None


def _masked_scatter(graph: Graph, node_id: int) -> tuple[int, int, int] | None:
    """(x, g, pooled) when `node_id` is rule 1's where, else None."""
    node = graph.node(node_id)
    if node.op != "where":
        return None
    cond, scattered, other = node.operands
    grad = graph.node(scattered)
    if grad.op != "max_pool2d_grad" or grad.type != node.type or not is_full_of(graph, other, 0.0):
        return None
    if use_count(graph, scattered) != 1 or scattered in graph.outputs:
        return None
    mask = graph.node(cond)
    if mask.op != "gt" or not _is_zero(graph, mask.operands[1]):
        return None
    t = mask.operands[0]
    x, g = grad.operands
    source = graph.node(x)
    if graph.type(t) != node.type or not (x == t or source.op == "relu" and source.operands[0] == t):
        return None
    pooled = _forward_pool(graph, x, dict(grad.attrs))
    return None if pooled is None else (x, g, pooled)


def _scalar_zero(graph: Graph, zero: int, loc: str) -> int:
    """`zero` itself when it is a scalar (it broadcasts to the pooled shape), else a new one."""
    node = graph.node(zero)
    if node.type.shape == ():
        return zero
    return graph.add_node("full", (), {"dtype": node.type.dtype, "shape": (), "value": node.attrs["value"]}, loc=loc)


def _drop_if_dead(graph: Graph, value: int) -> None:
    """Remove `value`, and then its operands, while nothing reads them."""
    stack = [value]
    while stack:
        v = stack.pop()
        if v in graph and use_count(graph, v) == 0 and v not in graph.outputs and v not in graph.inputs:
            operands = graph.node(v).operands
            graph.remove_node(v)
            stack.extend(operands)


def _mask_before_scatter(graph: Graph, node_id: int) -> bool:
    found = _masked_scatter(graph, node_id)
    if found is None:
        return False
    x, g, pooled = found
    node = graph.node(node_id)
    cond, scattered, zero = node.operands
    grad = graph.node(scattered)
    loc = node.loc or ""
    mask = graph.add_node("gt", (pooled, _scalar_zero(graph, graph.node(cond).operands[1], loc)), loc=loc)
    masked = graph.add_node("where", (mask, g, _scalar_zero(graph, zero, loc)), loc=loc)
    new = graph.add_node("max_pool2d_grad", (x, masked), dict(grad.attrs), loc=grad.loc or "")
    replace_value(graph, node_id, new)
    for dead in (node_id, scattered, cond):
        _drop_if_dead(graph, dead)
    return True


def _sum_before_scatter(graph: Graph, node_id: int) -> bool:
    node = graph.node(node_id)
    if node.op != "sum" or not {2, 3} <= set(node.attrs["axes"]):
        return False
    (scattered,) = node.operands
    if graph.node(scattered).op != "max_pool2d_grad":
        return False
    g = graph.node(scattered).operands[1]
    graph.replace_node(node_id, operands=(g,))
    _drop_if_dead(graph, scattered)
    return True


@dataclass(frozen=True)
class PoolGrad(Pass):
    name: ClassVar[str] = "pool-grad"

    def apply(self, graph: Graph) -> bool:
        changed = False
        for rule in (_mask_before_scatter, _sum_before_scatter):  # rule 2 also sees rule 1's scatters
            for node_id in graph.topo_order():
                if node_id in graph and rule(graph, node_id):
                    changed = True
        return changed


__all__ = ["PoolGrad"]
