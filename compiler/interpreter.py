"""The reference interpreter: runs a graph on numpy arrays through each op's reference.

It is the oracle every later stage (adjoint, passes, native code) is checked against.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from compiler.errors import EvalError
from compiler.ir.graph import Graph
from compiler.ir.types import TensorType
from compiler.ops.registry import get_op
from runtime.pytree import flatten, treedef_to_text, unflatten


def check_arguments(graph: Graph, args: tuple) -> list[np.ndarray]:
    """Flatten `args` against the graph's input tree and convert each leaf to its input type.

    Values convert with numpy 'same_kind' casting (float64 data into a float32 input is
    fine; floats into an int input are not); shapes must match exactly.
    """
    leaves, tree = flatten(tuple(args))
    if treedef_to_text(tree) != treedef_to_text(graph.in_tree):
        raise EvalError(
            f"{graph.name}: arguments have structure {treedef_to_text(tree)}, "
            f"the graph expects {treedef_to_text(graph.in_tree)}"
        )
    arrays = []
    for leaf, input_id in zip(leaves, graph.inputs):
        node = graph.node(input_id)
        arrays.append(_convert(leaf, node.type, node.attrs["name"], graph.name))
    return arrays


def _convert(value: Any, expected: TensorType, name: str, graph_name: str) -> np.ndarray:
    array = np.asarray(value)
    if array.shape != expected.shape:
        raise EvalError(f"{graph_name}: input {name!r} expects shape {expected.shape}, got {array.shape}")
    if array.dtype.name != expected.dtype:
        if not np.can_cast(array.dtype, expected.dtype, casting="same_kind"):
            raise EvalError(f"{graph_name}: input {name!r} expects {expected.dtype}, got {array.dtype.name}")
        array = array.astype(expected.dtype)
    return array


def evaluate(graph: Graph, *args: Any) -> Any:
    """Run `graph` on numpy arrays shaped like its specs; returns outputs in their pytree."""
    values = run_flat(graph, check_arguments(graph, args))
    return unflatten(graph.out_tree, values)


def run_flat(graph: Graph, input_arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Evaluate on already-checked flat inputs; returns the flat outputs."""
    env: dict[int, np.ndarray] = dict(zip(graph.inputs, input_arrays))
    remaining_uses = {node_id: len(graph.uses(node_id)) for node_id in graph.nx}
    keep = set(graph.outputs)
    with np.errstate(all="ignore"):  # IEEE semantics: inf and nan propagate as in native code
        for node_id in graph.topo_order():
            node = graph.node(node_id)
            if node.op != "input":
                result = get_op(node.op).reference(*(env[o] for o in node.operands), **node.attrs)
                env[node_id] = _as_type(result, node.type, node.op)
            for operand in set(node.operands):
                remaining_uses[operand] -= node.operands.count(operand)
                if remaining_uses[operand] == 0 and operand not in keep:
                    del env[operand]
    return [env[o].copy() if graph.outputs.count(o) > 1 else env[o] for o in graph.outputs]


def _as_type(value: Any, expected: TensorType, op: str) -> np.ndarray:
    array = np.asarray(value, dtype=expected.dtype)
    if array.shape != expected.shape:
        raise EvalError(f"internal: {op} reference produced shape {array.shape}, its rule says {expected.shape}")
    return array
