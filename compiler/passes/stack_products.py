"""Stacked products: the thin matrix products a sum adds up become one product over a
longer contraction, a block of pieces at a time.

An unrolled RNN's weight gradient is a sum over time of thin products,
dWh = sum_t h_t^T @ dz_t, each [H,B] @ [B,H] contracting over the batch B (16 in the
benchmark). Run one at a time, every product reads and writes the whole [H,H] result for a
contraction of 16, and none is big enough to split across cores. Stacked along the
contraction,

    a_1 @ b_1 + ... + a_G @ b_G  =  concatenate(a_i, axis=1) @ concatenate(b_i, axis=0),

the block is one product that keeps its tiles of C in registers over the whole
contraction and is big enough for every core (cuDNN's RNN backward computes its weight
gradients the same way). The price is memory: a block's b pieces (the per-step deltas)
stay alive until its last piece exists, and the stacked operands are copies. Blocks are
therefore bounded: consecutive pieces in production order, at most BLOCK_K deep and
BLOCK_BYTES of stacked operands, so a T=512 RNN keeps 32 steps of deltas, not 512.

Pieces are `matmul`s of two float matrices that only the sum reads, with a contraction of
at most PIECE_K (a deep product gains nothing from stacking); pieces of one block share
their operand types, and a block is stacked only when its product has MIN_BLOCK_FLOPS. Transposed operands (h_t^T, the usual case) are stacked untransposed
and the stack transposed once, so the copies are contiguous rows:
concatenate(x_i^T, axis=1) = concatenate(x_i, axis=0)^T; a `full` operand (the zero
state h_0) is stacked as a `full` of the transposed shape.

The new nodes take the ids of the block's pieces, smallest first: the topological order
runs the smallest ready id first, so each runs as soon as its operands exist. The sum is
rebuilt as a chain of binary adds over its remaining values in production order, on the
tree's own sum ids; `accumulate`, which runs next, re-sums it as pieces arrive.

Rounding: a block is one fused multiply-add chain over its whole contraction instead of a
sum of separately rounded products, a reassociation of the same sum (the last bits change,
as XLA's and BLAS's own blocking change them). NaN and Inf still propagate.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

from compiler.ir.graph import Graph
from compiler.ir.types import FLOAT_DTYPES, TensorType
from compiler.ops.registry import infer_type
from compiler.passes.accumulate import sum_trees
from compiler.passes.manager import Pass

PIECE_K = 128  # a piece contracting over more than this is already a fair-sized product
BLOCK_K = 512  # contraction depth of one stacked product
BLOCK_BYTES = 2 << 20  # stacked operand bytes of one block
MIN_PIECES = 4  # fewer gain little, and a block needs ids for up to five new nodes
# A block pays when its product is big enough to run on every core (the code generator's
# parallel.MIN_FLOPS); below that the copies eat the gain and the stacks cost memory
# (measured: the 32-wide example RNN, same time, 2.7x the workspace).
MIN_BLOCK_FLOPS = 2_000_000


def _is_piece(graph: Graph, node_id: int, tree: set[int], outputs: set[int]) -> bool:
    node = graph.node(node_id)
    if node.op != "matmul" or node_id in outputs or node.type.dtype not in FLOAT_DTYPES:
        return False
    a, b = (graph.type(o) for o in node.operands)
    if a.rank != 2 or b.rank != 2 or a.shape[1] > PIECE_K:
        return False
    return all(user in tree for user in graph.nx._succ[node_id])


def _blocks(graph: Graph, pieces: list[int], position: dict[int, int]) -> list[list[int]]:
    """Pieces of one operand signature, in production order, cut into bounded blocks."""
    a, b = (graph.type(o) for o in graph.node(pieces[0]).operands)
    k, itemsize = a.shape[1], a.nbytes // max(a.size, 1)
    per_piece = (a.shape[0] + b.shape[1]) * k * itemsize
    blocks: list[list[int]] = [[]]
    for piece in sorted(pieces, key=position.__getitem__):
        block = blocks[-1]
        if block and ((len(block) + 1) * k > BLOCK_K or (len(block) + 1) * per_piece > BLOCK_BYTES):
            blocks.append(block := [])
        block.append(piece)
    m, n = a.shape[0], b.shape[1]
    return [block for block in blocks if len(block) >= MIN_PIECES and 2 * m * n * k * len(block) >= MIN_BLOCK_FLOPS]


class _Builder:
    """Writes new nodes onto spare ids (smallest first), then onto fresh ones."""

    def __init__(self, graph: Graph, spare: list[int], loc: str) -> None:
        self.graph, self.spare, self.loc = graph, sorted(spare), loc

    def add(self, op: str, operands: tuple[int, ...], attrs: dict) -> int:
        graph = self.graph
        if not self.spare:
            return graph.add_node(op, operands, attrs, loc=self.loc)
        node_id = self.spare.pop(0)
        type_ = infer_type(op, [graph.type(o) for o in operands], attrs)
        graph.replace_node(node_id, op=op, operands=operands, attrs=attrs, type=type_, loc=self.loc)
        return node_id


def _transposed_source(graph: Graph, value: int) -> tuple[str, int | TensorType] | None:
    """How to stack value^T's rows: ("of", x) when value = x^T, ("full", type) for a
    constant fill; None when the value must be stacked as it is."""
    node = graph.node(value)
    if node.op == "transpose" and tuple(node.attrs["perm"]) == (1, 0):
        return "of", node.operands[0]
    if node.op == "full":
        rows, cols = node.type.shape
        return "full", TensorType((cols, rows), node.type.dtype)
    return None


def _stack(build: _Builder, values: list[int], axis: int) -> int:
    """concatenate(values, axis) for matrices, built as a transposed stack when every
    value is a transpose (or a fill) so the copies are of contiguous rows."""
    graph = build.graph
    sources = [_transposed_source(graph, v) for v in values]
    if all(s is not None for s in sources) and any(kind == "of" for kind, _ in sources):
        rows = []
        for (kind, what), value in zip(sources, values):
            if kind == "of":
                rows.append(what)
            else:
                attrs = dict(graph.node(value).attrs, shape=what.shape)
                rows.append(build.add("full", (), attrs))
        return build.add("transpose", (build.add("concatenate", tuple(rows), {"axis": 1 - axis}),), {"perm": (1, 0)})
    return build.add("concatenate", tuple(values), {"axis": axis})


@dataclass(frozen=True)
class StackProducts(Pass):
    name: ClassVar[str] = "stack-products"

    def apply(self, graph: Graph) -> bool:
        outputs = set(graph.outputs)
        position = {n: i for i, n in enumerate(graph.topo_order())}
        changed = False
        for root, leaves, inner in sum_trees(graph, outputs):
            tree = set(inner) | {root}
            families: dict[tuple, list[int]] = {}
            once = [leaf for leaf, n in Counter(leaves).items() if n == 1]
            for leaf in once:
                if _is_piece(graph, leaf, tree, outputs):
                    signature = tuple(graph.type(o) for o in graph.node(leaf).operands)
                    families.setdefault(signature, []).append(leaf)
            blocks = [block for pieces in families.values() for block in _blocks(graph, pieces, position)]
            if blocks:
                _rewrite(graph, root, leaves, inner, blocks, position)
                changed = True
        return changed


def _rewrite(graph: Graph, root: int, leaves: list[int], inner: list[int], blocks: list[list[int]],
             position: dict[int, int]) -> None:
    loc = f"stacked products of {graph.node(root).loc or 'a sum'}"
    stacked = {block[-1]: block for block in blocks}  # a block's product runs where its last piece did
    in_block = {piece for block in blocks for piece in block}
    terms: list[int] = []
    for leaf in sorted(leaves, key=position.__getitem__):  # (stable: a value read twice stays twice)
        if leaf in stacked:
            block = stacked[leaf]
            operands = [graph.node(piece).operands for piece in block]
            build = _Builder(graph, block, loc)
            a = _stack(build, [ab[0] for ab in operands], axis=1)
            b = _stack(build, [ab[1] for ab in operands], axis=0)
            terms.append(build.add("matmul", (a, b), {}))
            graph.nx.remove_nodes_from(build.spare)
        elif leaf not in in_block:
            terms.append(leaf)
    sums = sorted(inner) + [root]
    for node_id in sums:  # only the tree's own sums read these; all are rebuilt below
        graph.replace_node(node_id, operands=())
    if len(terms) == 1:  # the whole sum is one stacked product
        graph.replace_all_uses(root, terms[0])
        graph.nx.remove_nodes_from(sums)
        return
    # a chain of binary adds on the smallest ids, the root last; an add_n at the root
    # takes what is left when the tree had fewer sums (it held add_n's)
    chain = sums[:min(len(terms) - 2, len(sums) - 1)] + [root]
    graph.nx.remove_nodes_from(set(sums) - set(chain))
    acc, rest = terms[0], terms[1:]
    for node_id in chain[:-1]:
        graph.replace_node(node_id, op="add", operands=(acc, rest.pop(0)), attrs={})
        acc = node_id
    graph.replace_node(root, op="add" if len(rest) == 1 else "add_n", operands=(acc, *rest), attrs={})
