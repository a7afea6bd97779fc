"""Epilogue fusion: a matmul and the elementwise work applied to its result become one
`fusion` of kind "matmul", so the matrix kernel applies that work to each finished tile
of the product (compiler/codegen/fused.py, matmul.py) instead of storing the product and
running another loop over it.

A product qualifies when it is a float matmul of two matrices, not a graph output, and its
only reader R is
- a "loop" fusion (made by `fuse`, so this pass runs after it) over the product's shape, or
- a single elementwise op of the product's shape (a group of one op, which fuse leaves),
with R's dtype the product's (the kernel keeps C in R's buffer). R becomes
`fusion(...) {kind='matmul'}` at its own id; its body gains the matmul, whose two operands
take the product's operand slot. When several products feed R, the one with the longest
contraction joins (one matmul per fusion); the others stay operands, and one that is
added straight to the joined product is the accumulator the kernel starts C from.

Sums of products: a reader that only adds values of its type (an add_n, or a loop fusion
of a tree of adds: weight gradients summed over unrolled steps, from `accumulate` and
`fuse`) with two or more qualifying products among them becomes a chain

    acc_1 = p_1;   acc_j = fusion(acc_{j-1}, a_j, b_j) {body: add(acc, matmul(a, b))}

in the sum's order, each step at its product's id, so it runs where the product ran and
acc_{j-1} dies there: the planner may write acc_j over it (Lowering.in_place), one buffer
for the whole sum instead of one per product. Of the sum's other values, one computed
before the first product starts the chain (acc_0); more are added after the last step.
A sum of products only is summed in the same order as before (the interpreter's result
is bitwise unchanged); the kernels round differently, as C starts from acc.

Bodies are interned by structure, as fuse's are, so unrolled steps share one body (one
kernel). Linear: each node is looked at a bounded number of times.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar, Hashable

import compiler.ops.fusion  # noqa: F401 - registers the fusion op
from compiler.ir.graph import Graph
from compiler.ir.types import FLOAT_DTYPES
from compiler.ops.fusion import is_elementwise
from compiler.passes.cse import canonical
from compiler.passes.manager import Pass
from runtime.pytree import LEAF

SUMS = ("add", "add_n")


def _qualifies(graph: Graph, product: int, reader: int, outputs: set[int]) -> bool:
    node = graph.node(product)
    if node.op != "matmul" or product in outputs or node.type.rank != 2 or node.type.dtype not in FLOAT_DTYPES:
        return False
    r = graph.node(reader)
    return set(graph.nx._succ[product]) == {reader} and r.type == node.type


def _fusible_reader(graph: Graph, node_id: int) -> bool:
    node = graph.node(node_id)
    if node.op == "fusion":
        return node.attrs["kind"] == "loop"
    return node.op != "full" and is_elementwise(node.op)


def _sum_leaves(graph: Graph, reader: int) -> list[int] | None:
    """The values `reader` adds up, left to right, when that is all it does (an add, an
    add_n, or a loop fusion whose body is a tree of them, all of the reader's type)."""
    node = graph.node(reader)
    if node.op in SUMS:
        return list(node.operands) if all(graph.type(o) == node.type for o in node.operands) else None
    if node.op != "fusion":
        return None
    body = node.attrs["body"]
    external = dict(zip(body.inputs, node.operands))
    leaves: list[int] = []
    stack = [body.outputs[0]]
    while stack:
        value = stack.pop()
        if value in external:
            leaves.append(external[value])
            continue
        inner = body.node(value)
        if inner.op not in SUMS or inner.type != node.type or len(body.users(value)) > 1:
            return None
        stack.extend(reversed(inner.operands))
    return leaves


def _key(body: Graph) -> Hashable:
    """Canonical structure: ops, attributes, types, wiring and locs in creation order."""
    position = {n: i for i, n in enumerate(sorted(body.nx))}
    parts: list[Any] = []
    for node_id in sorted(body.nx):
        node = body.node(node_id)
        attrs = tuple(sorted((k, canonical(v)) for k, v in node.attrs.items()))
        parts.append((node.op, attrs, node.type, tuple(position[o] for o in node.operands), node.loc))
    return tuple(parts), tuple(position[o] for o in body.outputs)


class _Builder:
    """A body under construction: inputs first (in operand order), then ops."""

    def __init__(self, name: str) -> None:
        self.body = Graph(name)
        self.body.capture_locations = False  # every node keeps the loc it had; none are invented

    def input(self, type_: Any) -> int:
        return self.body.add_input(f"in{len(self.body.inputs)}", type_, "data")

    def op(self, op: str, operands: tuple[int, ...], attrs: dict, type_: Any, loc: str | None) -> int:
        return self.body.add_node(op, operands, dict(attrs), type=type_, loc=loc)

    def finish(self, output: int) -> Graph:
        self.body.in_tree = tuple(LEAF for _ in self.body.inputs)
        self.body.set_outputs([output])
        self.body.capture_locations = True
        return self.body


def _single_op_body(graph: Graph, reader: int) -> tuple[Graph, list[int]]:
    """A one-op loop body for an elementwise reader, `full` operands copied in; (body, operands)."""
    node = graph.node(reader)
    builder = _Builder("single")
    ids: dict[int, int] = {}
    externals: list[int] = []
    for operand in dict.fromkeys(node.operands):
        if graph.node(operand).op != "full":
            ids[operand] = builder.input(graph.type(operand))
            externals.append(operand)
    for operand in dict.fromkeys(node.operands):
        if operand not in ids:
            full = graph.node(operand)
            ids[operand] = builder.op("full", (), full.attrs, full.type, full.loc)
    out = builder.op(node.op, tuple(ids[o] for o in node.operands), node.attrs, node.type, node.loc)
    return builder.finish(out), externals


def _with_matmul(graph: Graph, body: Graph, operands: list[int], product: int, name: str) -> tuple[Graph, list[int]]:
    """`body` with its input(s) for `product` replaced by the matmul of two new inputs."""
    mm = graph.node(product)
    a, b = mm.operands
    builder = _Builder(name)
    ids: dict[int, int] = {}
    new_operands: list[int] = []
    product_id = None
    for input_id, operand in zip(body.inputs, operands):
        if operand != product:
            ids[input_id] = builder.input(body.type(input_id))
            new_operands.append(operand)
        elif product_id is None:
            ins = (builder.input(graph.type(a)), builder.input(graph.type(b)))
            new_operands += [a, b]
            product_id = ids[input_id] = builder.op("matmul", ins, mm.attrs, mm.type, mm.loc)
        else:
            ids[input_id] = product_id
    inputs = set(body.inputs)
    for node_id in body.topo_order():
        if node_id in inputs:
            continue
        node = body.node(node_id)
        ids[node_id] = builder.op(node.op, tuple(ids[o] for o in node.operands), node.attrs, node.type, node.loc)
    return builder.finish(ids[body.outputs[0]]), new_operands


def _accumulate_body(graph: Graph, product: int, reader: int) -> Graph:
    """add(acc, matmul(a, b)): one step of a chain (the kernel starts C from acc)."""
    mm = graph.node(product)
    a, b = mm.operands
    builder = _Builder("chain")
    acc = builder.input(mm.type)
    ins = (builder.input(graph.type(a)), builder.input(graph.type(b)))
    p = builder.op("matmul", ins, mm.attrs, mm.type, mm.loc)
    return builder.finish(builder.op("add", (acc, p), {}, mm.type, graph.node(reader).loc))


@dataclass(frozen=True)
class Epilogue(Pass):
    name: ClassVar[str] = "epilogue"

    def apply(self, graph: Graph) -> bool:
        outputs = set(graph.outputs)
        bodies: dict[Hashable, Graph] = {}
        # body names must stay unique in the printed graph, also when the pass runs again
        taken = {n.attrs["body"].name for _, n in graph.nodes() if n.op == "fusion"}

        def intern(body: Graph) -> Graph:
            key = _key(body)
            if key not in bodies:
                number = len(bodies)
                while f"epilogue_{number}" in taken:
                    number += 1
                body.name = f"epilogue_{number}"
                taken.add(body.name)
                bodies[key] = body
            return bodies[key]

        changed = False
        for reader in graph.topo_order():
            if reader not in graph.nx or not _fusible_reader(graph, reader):
                continue
            node = graph.node(reader)
            products = [o for o in dict.fromkeys(node.operands) if _qualifies(graph, o, reader, outputs)]
            if not products:
                continue
            leaves = _sum_leaves(graph, reader)
            if leaves is not None:
                slots = Counter(leaves)
                once = [p for p in leaves if p in products and slots[p] == 1]
                if len(once) >= 2:
                    self._chain(graph, reader, leaves, once, intern)
                    changed = True
                    continue
            product = max(products, key=lambda p: (graph.type(graph.node(p).operands[0]).shape[-1], p))
            if node.op == "fusion":
                body, operands = node.attrs["body"], list(node.operands)
            else:
                body, operands = _single_op_body(graph, reader)
            new_body, new_operands = _with_matmul(graph, body, operands, product, "epilogue")
            absorbed = [o for o in node.operands if o not in new_operands and o != product]
            graph.replace_node(reader, op="fusion", operands=tuple(new_operands),
                               attrs={"body": intern(new_body), "kind": "matmul"})
            graph.remove_node(product)
            for full in dict.fromkeys(absorbed):  # constants copied into the body
                if not graph.users(full) and full not in outputs:
                    graph.remove_node(full)
            changed = True
        return changed

    @staticmethod
    def _chain(graph: Graph, reader: int, leaves: list[int], products: list[int], intern: Any) -> None:
        chained = set(products)
        rest = [o for o in leaves if o not in chained]
        # one other value, already there when the chain starts, is where C starts too
        start = rest.pop() if len(rest) == 1 and rest[0] < products[0] else None
        acc = start if start is not None else products[0]
        for product in products if start is not None else products[1:]:
            a, b = graph.node(product).operands
            body = intern(_accumulate_body(graph, product, reader))
            graph.replace_node(product, op="fusion", operands=(acc, a, b), attrs={"body": body, "kind": "matmul"})
            acc = product
        if not rest:
            graph.replace_all_uses(reader, acc)
            graph.remove_node(reader)
        else:
            operands = tuple(rest) + (acc,)
            graph.replace_node(reader, op="add" if len(operands) == 2 else "add_n", operands=operands, attrs={})
