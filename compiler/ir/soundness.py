"""verify()'s fast path: is the graph sound? Yes, or "look closer".

`sound(graph)` answers True only when every invariant verify.py checks holds; on False
(or on anything unexpected) verify runs its full walk, which finds and names the first
problem in its own order. So this module never words an error, and a bug here can only
cost time, as long as it never answers True for a broken graph.

Why it is fast, on graphs of tens of thousands of nodes:
- one pass over networkx's raw dicts (its views cost more than the checks);
- a node's op rule (signature and shape rule) is not rerun while its operands have the
  very type objects it last passed for: Node.checked, set by Graph.add_node when it
  inferred the type, and here;
- the per-node result is kept on the graph (Graph.derived) with a state.Snapshot; while
  the snapshot still matches, no node, operand or edge changed, and only the graph-level
  checks (inputs, outputs, trees) run again. Graphs holding non-plain attributes
  (arrays, lists, bodies, which can change in place) are never reused that way.
"""
from __future__ import annotations

from typing import Any

from compiler.errors import ShapeError
from compiler.ir.graph import INPUT_KINDS, Graph, Node
from compiler.ir.printer import graphs_in
from compiler.ir.state import Snapshot, plain_value
from compiler.ir.types import TensorType
from compiler.ops.registry import all_ops, check_signature
from runtime.pytree import num_leaves


def sound(graph: Graph) -> bool:
    try:
        registry = all_ops()
        snapshot = Snapshot(graph.nx)
        memo = graph.derived.get("verify")
        if memo is not None and snapshot.same(memo[0]) and memo[1] == registry:
            input_nodes = memo[2]
        else:
            graph.derived.pop("verify", None)
            input_nodes, reusable = _nodes_sound(graph, registry)
            if input_nodes < 0:
                return False
            if reusable and snapshot.revision is not None:  # a plain networkx graph: never reusable
                graph.derived["verify"] = (snapshot, registry, input_nodes)
        return _ends_sound(graph, input_nodes)
    except Exception:  # noqa: BLE001 - whatever broke, the full walk reports it properly
        return False


def _nodes_sound(graph: Graph, registry: dict[str, Any]) -> tuple[int, bool]:
    """(number of input nodes, whether the answer may be reused), or (-1, False) when a
    node, an edge or the order is wrong."""
    g = graph.nx
    nodes, preds = g._node, g._pred
    if not nodes:
        return -1, False
    top = max(nodes)
    # by id: indexing a list beats hashing into a dict, unless the ids are few and far between
    types: Any = [None] * (top + 1) if min(nodes) >= 0 and top <= 4 * len(nodes) + 64 else _Types()
    ordered = True
    input_nodes = 0
    unchecked = []  # nodes whose op rule must run
    for (node_id, data), (pred_id, pred) in zip(nodes.items(), preds.items()):
        node = data["node"]
        if node_id != pred_id or node.__class__ is not Node:
            return -1, False
        types[node_id] = node.type
        operands = node.operands
        arity = len(operands)
        if len(pred) == arity:  # distinct operands: one edge from each, keyed by its index
            for index, operand in enumerate(operands):
                keys = pred[operand]
                if len(keys) != 1 or index not in keys:
                    return -1, False
        elif sorted((key, src) for src, keys in pred.items() for key in keys) != list(enumerate(operands)):
            return -1, False
        if arity and max(operands) >= node_id:
            ordered = False
        # Node.checked = (OpDef, *operand types the rule passed for); the same type objects
        # (the usual case: the operand nodes are the ones the node was built on) need no rerun
        checked = node.checked
        if checked is None or checked[0] is not registry.get(node.op):
            unchecked.append(node)
        elif arity == 1:
            if checked[1] is not types[operands[0]]:
                unchecked.append(node)
        elif arity == 2:
            if checked[1] is not types[operands[0]] or checked[2] is not types[operands[1]]:
                unchecked.append(node)
        elif arity and not all(t is types[o] for t, o in zip(checked[1:], operands)):
            unchecked.append(node)
        if node.op == "input":
            input_nodes += 1
    # Every node is in `types` now. A node with Node.checked has a TensorType; once the
    # others are known to have one too, a shape rule never sees anything else.
    if any(node.type.__class__ is not TensorType for node in unchecked):
        return -1, False
    for node in unchecked:
        opdef = registry.get(node.op)
        if opdef is None or not _op_rule_holds(node, opdef, [types[o] for o in node.operands]):
            return -1, False
    if not ordered and len(graph.topo_order()) != len(nodes):  # topo_order raises on a cycle
        return -1, False
    return input_nodes, all(node.checked is not None for node in unchecked)


class _Types(dict):
    """Types by id for sparse or negative ids; None for an id not seen yet, as in the list."""

    def __missing__(self, node_id: Any) -> None:
        return None


def _op_rule_holds(node: Node, opdef: Any, operand_types: list[TensorType]) -> bool:
    """The op's signature and shape rule accept the node; remembered on it when that can
    never change (plain attributes). Graph-valued attributes are left to the full walk,
    which verifies bodies before the op that holds them."""
    attrs = node.attrs
    plain = all(plain_value(value) for value in attrs.values())
    if not plain and any(graphs_in(value) for value in attrs.values()):
        return False
    try:
        check_signature(opdef, len(operand_types), attrs)
        if opdef.infer is not None and opdef.infer(operand_types, attrs) != node.type:
            return False
    except ShapeError:
        return False
    if plain:
        object.__setattr__(node, "checked", (opdef, *operand_types))
    return True


def _ends_sound(graph: Graph, input_nodes: int) -> bool:
    """Inputs, outputs and trees: cheap, so checked every time."""
    nodes = graph.nx._node
    names = set()
    for input_id in graph.inputs:
        node = nodes[input_id]["node"]
        if node.op != "input" or node.attrs["kind"] not in INPUT_KINDS or node.attrs["name"] in names:
            return False
        names.add(node.attrs["name"])
    # every input node is listed: the names are distinct, so the list has no repeats
    if len(names) != input_nodes or not graph.outputs or any(o not in nodes for o in graph.outputs):
        return False
    return num_leaves(graph.in_tree) == len(graph.inputs) and num_leaves(graph.out_tree) == len(graph.outputs)
