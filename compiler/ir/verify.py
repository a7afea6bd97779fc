"""The verifier: checks every IR invariant and names the node, op and problem."""
from __future__ import annotations

import networkx as nx

from compiler.errors import ShapeError, VerifyError
from compiler.ir.graph import INPUT_KINDS, Graph, Node
from compiler.ir.printer import graphs_in
from compiler.ir.soundness import sound
from compiler.ir.types import TensorType
from compiler.ops.registry import check_signature, get_op
from runtime.pytree import TreeError, num_leaves


def _where(node_id: int, node: Node | None) -> str:
    if node is None:
        return f"%{node_id}"
    loc = f" ({node.loc})" if node.loc else ""
    return f"%{node_id} = {node.op}{loc}"


def verify(graph: Graph) -> None:
    """Raise VerifyError on the first broken invariant; return None when the graph is sound.

    Graph-valued attributes (fixed_point bodies) are verified too, each once, before the
    op that holds them; their errors name the op and the body: `%3 = fixed_point: body 'cell': ...`.
    """
    if not sound(graph):  # the fast answer for sound graphs; the full walk names a problem
        _verify(graph, [graph], set())


def _verify(graph: Graph, enclosing: list[Graph], done: set[int]) -> None:
    """`enclosing`: the graphs whose ops hold `graph`, outermost first; `done`: ids of verified bodies."""
    g = graph.nx
    for node_id, data in g.nodes(data=True):
        node = data.get("node")
        if not isinstance(node, Node):
            raise VerifyError(f"%{node_id}: node carries no op (dangling node)")
        if not isinstance(node.type, TensorType):
            raise VerifyError(f"{_where(node_id, node)}: type is not a TensorType")
        for operand in node.operands:
            if operand not in g:
                raise VerifyError(f"{_where(node_id, node)}: operand %{operand} is not defined in the graph")
        edges = sorted((key, src) for src, _, key in g.in_edges(node_id, keys=True))
        if edges != list(enumerate(node.operands)):
            raise VerifyError(f"{_where(node_id, node)}: operand edges {edges} disagree with operands {node.operands}")

    if not graph.is_id_ordered() and not nx.is_directed_acyclic_graph(g):
        cycle = nx.find_cycle(g)
        path = " -> ".join(f"%{u}" for u, *_ in cycle) + f" -> %{cycle[0][0]}"
        raise VerifyError(f"graph {graph.name!r} has a cycle: {path}")

    for node_id in graph.topo_order():
        node = graph.node(node_id)
        try:
            opdef = get_op(node.op)
        except VerifyError as exc:
            raise VerifyError(f"{_where(node_id, node)}: {exc}") from None
        for key in sorted(node.attrs):
            for body in graphs_in(node.attrs[key]):
                _verify_body(body, f"{_where(node_id, node)}: body {body.name!r}", enclosing, done)
        operand_types = [graph.node(o).type for o in node.operands]
        try:
            check_signature(opdef, len(operand_types), node.attrs)
            if opdef.infer is not None:
                inferred = opdef.infer(operand_types, node.attrs)
                if inferred != node.type:
                    raise ShapeError(f"declared type {node.type} but its operands give {inferred}")
        except ShapeError as exc:
            raise VerifyError(f"{_where(node_id, node)}: {exc}") from None
        if node.op == "input" and node_id not in graph.inputs:
            raise VerifyError(f"{_where(node_id, node)}: input node is missing from the graph's input list")

    names = set()
    for input_id in graph.inputs:
        if input_id not in g or graph.node(input_id).op != "input":
            raise VerifyError(f"graph input %{input_id} is not an input node")
        attrs = graph.node(input_id).attrs
        if attrs["kind"] not in INPUT_KINDS:
            raise VerifyError(f"input {attrs['name']!r}: kind must be one of {INPUT_KINDS}, got {attrs['kind']!r}")
        if attrs["name"] in names:
            raise VerifyError(f"duplicate input name {attrs['name']!r}")
        names.add(attrs["name"])
    if not graph.outputs:
        raise VerifyError(f"graph {graph.name!r} has no outputs")
    for output in graph.outputs:
        if output not in g:
            raise VerifyError(f"graph output %{output} is not defined in the graph")
    try:
        if num_leaves(graph.in_tree) != len(graph.inputs):
            raise VerifyError(f"in_tree has {num_leaves(graph.in_tree)} leaves but the graph has {len(graph.inputs)} inputs")
        if num_leaves(graph.out_tree) != len(graph.outputs):
            raise VerifyError(f"out_tree has {num_leaves(graph.out_tree)} leaves but the graph has {len(graph.outputs)} outputs")
    except TreeError as exc:
        raise VerifyError(str(exc)) from None


def _verify_body(body: Graph, where: str, enclosing: list[Graph], done: set[int]) -> None:
    start = next((k for k, outer in enumerate(enclosing) if outer is body), None)
    if start is not None:
        path = " -> ".join(repr(outer.name) for outer in enclosing[start:])
        raise VerifyError(f"{where}: a body may not contain itself: {path} -> {body.name!r}")
    if id(body) in done:
        return
    try:
        _verify(body, enclosing + [body], done)
    except VerifyError as exc:
        raise VerifyError(f"{where}: {exc}") from None
    done.add(id(body))  # the graphs are alive until verify returns, so an id is not reused meanwhile
