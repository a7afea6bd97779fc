"""Constant folding: evaluate ops whose operands are all constants (`full` or `constant`)
with the op's numpy reference, as the interpreter would.

A uniform result becomes a `full` (any size: elementwise ops on `full`s are evaluated on one
scalar, and data movement — transpose, reshape, broadcast_to... — of a `full` is a `full` of
the new shape); a non-uniform result becomes a `constant` only up to FOLD_LIMIT elements, so
folding never blows a small expression up into a large array. A uniform `constant` is
rewritten as a `full`. Nodes are rewritten in place (same id and loc); the operands they
leave unused are removed by dce.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from compiler.ir.graph import Graph, Node
from compiler.ir.types import TensorType
from compiler.ops.registry import get_op
from compiler.passes._util import topo_order
from compiler.passes.manager import Pass

FOLD_LIMIT = 4096  # elements: the largest non-uniform array folding may create or read
CONSTANT_OPS = ("full", "constant")
# Ops whose output, for a `full` first operand, holds only that operand's value (take's
# indices are clipped into range, and a non-empty result means the axis is not empty).
MOVES_DATA = frozenset({"transpose", "reshape", "broadcast_to", "squeeze", "expand_dims", "slice", "take",
                        "max", "min", "stop_gradient"})


def uniform_scalar(array: np.ndarray) -> Any:
    """The single value of a non-empty array whose elements are bitwise equal, else None."""
    if array.size == 0:
        return None
    flat = array.reshape(-1)
    bits = flat.view(f"u{flat.dtype.itemsize}") if flat.dtype != np.bool_ else flat
    return flat[0].item() if bool(np.all(bits == bits[0])) else None


def as_array(node: Node) -> np.ndarray:
    if node.op == "full":
        return np.full(node.type.shape, node.attrs["value"], dtype=node.type.dtype)
    return node.attrs["value"]


def _evaluate(node: Node, operands: list[Node]) -> np.ndarray | None:
    if node.type.size > FOLD_LIMIT or any(o.type.size > FOLD_LIMIT for o in operands):
        return None
    arrays = [as_array(o) for o in operands]
    with np.errstate(all="ignore"):
        return np.asarray(get_op(node.op).reference(*arrays, **node.attrs), dtype=node.type.dtype)


def _evaluate_on_scalars(node: Node, operands: list[Node]) -> Any:
    """An elementwise op on `full`s: evaluate one element (a uniform result of any size)."""
    scalars = [np.asarray(o.attrs["value"], dtype=o.type.dtype) for o in operands]
    with np.errstate(all="ignore"):
        return np.asarray(get_op(node.op).reference(*scalars, **node.attrs), dtype=node.type.dtype).item()


def folded(graph: Graph, node: Node) -> tuple[str, dict] | None:
    """(op, attrs) of the constant that replaces `node`, or None when it stays."""
    operands = [graph.node(o) for o in node.operands]
    if node.op == "constant":
        value = uniform_scalar(node.attrs["value"])
        return None if value is None else ("full", _full_attrs(node.type, value))
    if not operands or get_op(node.op).kind == "source":
        return None
    if node.op in MOVES_DATA and operands[0].op == "full" and node.type.size > 0:
        return "full", _full_attrs(node.type, operands[0].attrs["value"])
    if not all(o.op in CONSTANT_OPS for o in operands):
        return None
    try:
        if get_op(node.op).kind == "elementwise" and all(o.op == "full" for o in operands):
            return "full", _full_attrs(node.type, _evaluate_on_scalars(node, operands))
        result = _evaluate(node, operands)
    except Exception:  # noqa: BLE001 - a reference that rejects these values: leave it to run time
        return None
    if result is None or result.shape != node.type.shape:
        return None
    value = uniform_scalar(result)
    if value is not None:
        return "full", _full_attrs(node.type, value)
    if result.size > FOLD_LIMIT:
        return None
    array = np.array(result, dtype=node.type.dtype)
    array.setflags(write=False)
    return "constant", {"value": array}


def _full_attrs(type_: TensorType, value: Any) -> dict:
    return {"shape": type_.shape, "dtype": type_.dtype, "value": value}


@dataclass(frozen=True)
class ConstantFolding(Pass):
    name: ClassVar[str] = "fold"

    def apply(self, graph: Graph) -> bool:
        changed = False
        for node_id in topo_order(graph):
            node = graph.node(node_id)
            result = folded(graph, node)
            if result is not None:
                graph.replace_node(node_id, op=result[0], operands=(), attrs=result[1])
                changed = True
        return changed
