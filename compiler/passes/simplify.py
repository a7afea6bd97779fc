"""Algebraic simplification: small local rewrites, one rule function per pattern, in a
table keyed by op.

Semantics kept. Every rewrite gives bitwise the same result as the original for every
input, including NaN, +-Inf and signed zeros, except that (1) the payload and sign of a
NaN are not preserved (x * 1 -> x keeps a NaN a NaN, not the same NaN), and (2) two
rewrites deliberately change rounding, as XLA's algebraic simplifier does:
  - log(exp(x)) -> x: exact in real arithmetic, and better than the
    original where exp overflows (log(exp(100)) is inf in float32, x is 100);
  - sum(broadcast_to(x)) over broadcast axes -> n * sum(x): the n copies are summed as
    one product, which rounds once (only when no axis is empty: 0 * inf would be nan).
Rewrites NOT done, because they change IEEE results: x * 0 -> 0 (nan and inf give nan),
x - x -> 0, exp(log(x)) -> x (x < 0 gives nan), pow(x, 0.5) -> sqrt(x) (-0 and -inf),
and, for floats, x + 0.0 -> x (-0.0 + 0.0 is +0.0). The exact forms are used instead:
x + (-0.0) -> x, x - 0.0 -> x, and integer x + 0 -> x; and a sum of zero pads becomes a
concatenate of x + 0.0 pieces (see sum_of_pads).

A rule `rule(graph, node_id, node)` returns None (no match), the id of an existing value
that replaces the node, the id of a new node built for it, or `node_id` itself after
rewriting the node in place. Rules only fire when the replacement has exactly the node's
type, so no rule has to re-broadcast.
"""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import compiler.ops as ops
from compiler.ir.graph import Graph, Node
from compiler.ir.types import FLOAT_DTYPES, INT_DTYPES
from compiler.ops.elementwise import broadcast_shapes
from compiler.ops.tensor import Tensor, apply
from compiler.passes._util import is_full_of, next_node_id, replace_value, rewriting, topo_order, use_count
from compiler.passes.accumulate import SUMS, _is_inner, collect_tree
from compiler.passes.manager import Pass

Rule = Callable[[Graph, int, Node], "int | None"]
RESHAPES = ("reshape", "squeeze", "expand_dims")


def _same(graph: Graph, value: int, node: Node) -> int | None:
    """`value` if it can stand for `node` (the same type), else None."""
    return value if graph.type(value) == node.type else None


def _new(graph: Graph, node: Node, op: str, operands: tuple[int, ...], attrs: dict | None = None) -> int:
    return graph.add_node(op, operands, attrs or {}, loc=node.loc or "")


def _producer(graph: Graph, value: int, *ops: str) -> Node | None:
    node = graph.node(value)
    return node if node.op in ops else None


def _is_zero_identity(graph: Graph, value: int, negative_zero: bool) -> bool:
    """The additive identity: -0.0 for x + 0 (+0.0 for x - 0) in floats, 0 in ints."""
    if graph.type(value).dtype in INT_DTYPES:
        return is_full_of(graph, value, 0)
    return is_full_of(graph, value, -0.0 if negative_zero else 0.0)


# ------------------------------------------------------------------ arithmetic
def add_zero(graph: Graph, node_id: int, node: Node) -> int | None:
    x, y = node.operands
    if _is_zero_identity(graph, y, negative_zero=True):
        return _same(graph, x, node)
    if _is_zero_identity(graph, x, negative_zero=True):
        return _same(graph, y, node)
    return None


def sub_zero(graph: Graph, node_id: int, node: Node) -> int | None:
    x, y = node.operands
    return _same(graph, x, node) if _is_zero_identity(graph, y, negative_zero=False) else None


def sub_neg(graph: Graph, node_id: int, node: Node) -> int | None:
    """x - (-y) -> x + y (IEEE subtraction is addition of the negation)."""
    x, y = node.operands
    neg = _producer(graph, y, "neg")
    if neg is None:
        return None
    graph.replace_node(node_id, op="add", operands=(x, neg.operands[0]))
    return node_id


def mul_one(graph: Graph, node_id: int, node: Node) -> int | None:
    x, y = node.operands
    for value, other in ((x, y), (y, x)):
        if is_full_of(graph, other, 1) and _same(graph, value, node) is not None:
            return value
        if is_full_of(graph, other, -1) and _same(graph, value, node) is not None:
            return _new(graph, node, "neg", (value,))
    return None


def div_one(graph: Graph, node_id: int, node: Node) -> int | None:
    x, y = node.operands
    if _same(graph, x, node) is None:
        return None
    if is_full_of(graph, y, 1):
        return x
    return _new(graph, node, "neg", (x,)) if is_full_of(graph, y, -1) else None


def neg_neg(graph: Graph, node_id: int, node: Node) -> int | None:
    inner = _producer(graph, node.operands[0], "neg")
    return inner.operands[0] if inner is not None else None


def pow_small(graph: Graph, node_id: int, node: Node) -> int | None:
    x, y = node.operands
    if _same(graph, x, node) is None:
        return None
    if is_full_of(graph, y, 1.0):
        return x
    return _new(graph, node, "square", (x,)) if is_full_of(graph, y, 2.0) else None


def log_exp(graph: Graph, node_id: int, node: Node) -> int | None:
    inner = _producer(graph, node.operands[0], "exp")
    return inner.operands[0] if inner is not None else None


def where_same(graph: Graph, node_id: int, node: Node) -> int | None:
    cond, a, b = node.operands
    if a == b:
        return _same(graph, a, node)
    if is_full_of(graph, cond, True):
        return _same(graph, a, node)
    if is_full_of(graph, cond, False):
        return _same(graph, b, node)
    return None


def cast_same(graph: Graph, node_id: int, node: Node) -> int | None:
    return _same(graph, node.operands[0], node)


# ----------------------------------------------------------------- shape ops
def transpose_transpose(graph: Graph, node_id: int, node: Node) -> int | None:
    (x,) = node.operands
    if node.attrs["perm"] == tuple(range(len(node.attrs["perm"]))):
        return x
    inner = _producer(graph, x, "transpose")
    if inner is None:
        return None
    # out axis i = inner axis perm[i] = source axis inner_perm[perm[i]]
    perm = tuple(inner.attrs["perm"][p] for p in node.attrs["perm"])
    if perm == tuple(range(len(perm))):
        return inner.operands[0]
    graph.replace_node(node_id, operands=inner.operands, attrs={"perm": perm})
    return node_id


def reshape_chain(graph: Graph, node_id: int, node: Node) -> int | None:
    """reshape/squeeze/expand_dims of a reshape-like value, or to the same shape -> one reshape."""
    (x,) = node.operands
    inner = _producer(graph, x, *RESHAPES)
    source = inner.operands[0] if inner is not None else x
    if graph.type(source) == node.type:
        return source
    if inner is None:
        return None
    graph.replace_node(node_id, op="reshape", operands=(source,), attrs={"shape": node.type.shape})
    return node_id


def broadcast_chain(graph: Graph, node_id: int, node: Node) -> int | None:
    (x,) = node.operands
    if graph.type(x) == node.type:
        return x
    inner = _producer(graph, x, "broadcast_to")
    if inner is None:
        return None
    graph.replace_node(node_id, operands=inner.operands)
    return node_id


def sum_of_broadcast(graph: Graph, node_id: int, node: Node) -> int | None:
    """sum(broadcast_to(x, S), axes) -> sum x over its own axes only, times the number of
    broadcast copies summed, then broadcast to what is left: the reduction reads x, not S."""
    if not node.attrs["axes"]:  # a sum over no axes is the identity
        return _same(graph, node.operands[0], node)
    inner = _producer(graph, node.operands[0], "broadcast_to")
    if inner is None or 0 in inner.type.shape:
        return None
    (x,) = inner.operands
    shape, axes = inner.type.shape, node.attrs["axes"]
    x_shape = graph.type(x).shape
    lead = len(shape) - len(x_shape)
    aligned = (1,) * lead + x_shape
    own = tuple(i - lead for i in axes if aligned[i] != 1)
    copies = math.prod(shape[i] for i in axes if aligned[i] == 1)
    with rewriting(graph, node.loc):
        y = Tensor(graph, x)
        if own:
            y = ops.sum(y, axis=own, keepdims=True)
        if copies != 1:
            y = y * copies
        # y's axes, aligned with the output's: 1 where the result still needs broadcasting.
        y_aligned = (1,) * lead + y.shape
        dims = tuple(d for i, d in enumerate(y_aligned) if node.attrs["keepdims"] or i not in axes)
        if _strip_ones(dims) != _strip_ones(y.shape) or y.ndim > len(dims):
            y = ops.reshape(y, dims)
        return ops.broadcast_to(y, node.type.shape).id


def _strip_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape without its leading 1s (what broadcasting adds back for free)."""
    start = 0
    while start < len(shape) and shape[start] == 1:
        start += 1
    return shape[start:]


def scalar_full_operand(graph: Graph, node_id: int, node: Node) -> int | None:
    """An operand full(v) of rank > 0 that does not set the result's shape -> full(v) of rank 0.

    Folding turns broadcast constants (the seed cotangent spread over a batch) into fulls
    of the broadcast shape; as an operand of a broadcasting op, a scalar does the same job.
    """
    for index, operand in enumerate(node.operands):
        op = graph.node(operand)
        if op.op != "full" or not op.type.shape:
            continue
        others = [graph.type(o).shape for i, o in enumerate(node.operands) if i != index]
        if broadcast_shapes(*others) != node.type.shape:
            continue
        scalar = _new(graph, op, "full", (), {"shape": (), "dtype": op.type.dtype, "value": op.attrs["value"]})
        operands = list(node.operands)
        operands[index] = scalar
        graph.replace_node(node_id, operands=tuple(operands))
        return node_id
    return None


# ------------------------------------------------------------ sums of pads
def _zero_pad_box(graph: Graph, value: int, node: Node) -> list[tuple[int, int]] | None:
    """The [begin, end) per axis that a zero `pad` of node's type fills from its operand."""
    pad = _producer(graph, value, "pad")
    if pad is None or pad.type != node.type or any(pad.attrs["interior"]):
        return None
    zero = pad.attrs["value"]
    if zero != 0 or (node.type.dtype not in INT_DTYPES and math.copysign(1.0, zero) < 0):
        return None  # a -0.0 fill would make the uncovered area -0.0, not +0.0
    return [(lo, n - hi) for lo, hi, n in zip(pad.attrs["low"], pad.attrs["high"], node.type.shape)]


def sum_of_pads(graph: Graph, node_id: int, node: Node) -> int | None:
    """A sum of zero pads that fill disjoint slabs along one axis -> concatenate of the
    padded values (x + 0.0 each, for floats) and zeros for the gaps.

    The slicing VJP (the LSTM's four gates cut from one [B, 4H] matrix) gives this: k
    zero-filled [B, 4H] temporaries added together, where one copy each would do. Exact:
    with two or more operands an element of a slab is x + 0 + ... + 0, which is x + 0.0
    (x except that -0.0 becomes +0.0, kept by adding +0.0 to each piece; NaN stays NaN,
    +-inf stays); an uncovered element is +0.0 (0 for ints).
    Applies to the root of an add tree (the adds in it single-use, as `accumulate`
    collects them) or to an add_n, when every leaf is such a pad; overlapping slabs,
    boxes that are not slabs of one axis, or interior padding are left alone.
    """
    if node.type.dtype not in FLOAT_DTYPES + INT_DTYPES or not node.type.shape or not node.type.size:
        return None
    if not any(graph.node(o).op in ("pad",) + SUMS for o in node.operands):
        return None  # cheap exit before walking a long tree of adds
    outputs = set(graph.outputs)
    if _is_inner(graph, node_id, outputs):
        return None  # the tree's root takes the whole tree
    leaves, _ = collect_tree(graph, node_id, outputs)
    boxes = [_zero_pad_box(graph, leaf, node) for leaf in leaves]
    if any(box is None for box in boxes):
        return None
    shape = node.type.shape
    filled = [(leaf, box) for leaf, box in zip(leaves, boxes) if all(b < e for b, e in box)]
    axes = {a for _, box in filled for a, (b, e) in enumerate(box) if (b, e) != (0, shape[a])}
    if len(axes) > 1 or (not axes and len(filled) > 1):
        return None
    axis = axes.pop() if axes else 0
    filled.sort(key=lambda item: item[1][axis][0])
    plan, position = [], 0  # (leaf or None for zeros, length along axis)
    for leaf, box in filled:
        begin, end = box[axis]
        if begin < position:
            return None  # slabs overlap
        if begin > position:
            plan.append((None, begin - position))
        plan.append((leaf, end - begin))
        position = end
    if position < shape[axis]:
        plan.append((None, shape[axis] - position))
    dtype = node.type.dtype
    with rewriting(graph, node.loc):
        # Only a sum of two or more adds 0.0 to each element (add_n of one operand is a copy).
        zero = ops.zeros((), dtype) if dtype in FLOAT_DTYPES and len(leaves) > 1 else None
        pieces = []
        for leaf, length in plan:
            if leaf is None:
                pieces.append(ops.zeros(shape[:axis] + (length,) + shape[axis + 1:], dtype))
                continue
            pad = graph.node(leaf)
            x = Tensor(graph, pad.operands[0])
            if zero is not None:
                with rewriting(graph, pad.loc):  # the piece is the pad's work: keep its loc
                    x = x + zero
            pieces.append(x)
        return ops.concatenate(pieces, axis=axis).id


# ------------------------------------------------------------------ products
def slice_of_matmul(graph: Graph, node_id: int, node: Node) -> int | None:
    """(a @ b)[..., rows, cols] -> a[..., rows, :] @ b[..., :, cols] when the slice is the
    product's only reader: the rows and columns it drops are never computed. The backward
    of `concat([x, h]) @ W` (an LSTM's gates) wants only the h part of the input gradient,
    a fifth less work there. Each kept element is the same dot product (compiled: the same
    FMA chain over k, bitwise equal; numpy's BLAS may round differently by shape)."""
    product = node.operands[0]
    mm = _producer(graph, product, "matmul")
    if mm is None or use_count(graph, product) != 1 or product in graph.outputs:
        return None
    shape = graph.type(product).shape
    rank = len(shape)
    starts, stops, steps = node.attrs["starts"], node.attrs["stops"], node.attrs["steps"]
    if any(step != 1 for step in steps) or any(stop <= start for start, stop in zip(starts, stops)):
        return None
    cut = [axis for axis in range(rank) if (starts[axis], stops[axis]) != (0, shape[axis])]
    if not cut or min(cut) < rank - 2:  # batch axes may broadcast: left alone
        return None
    a, b = (Tensor(graph, v) for v in mm.operands)
    with rewriting(graph, mm.loc):
        if rank - 2 in cut:
            a = _cut(a, a.ndim - 2, starts[rank - 2], stops[rank - 2])
        if rank - 1 in cut:
            b = _cut(b, b.ndim - 1, starts[rank - 1], stops[rank - 1])
        return _same(graph, apply("matmul", a, b).id, node)


def _cut(x: Tensor, axis: int, start: int, stop: int) -> Tensor:
    starts = tuple(start if i == axis else 0 for i in range(x.ndim))
    stops = tuple(stop if i == axis else n for i, n in enumerate(x.shape))
    return apply("slice", x, starts=starts, stops=stops, steps=(1,) * x.ndim)


RULES: dict[str, list[Rule]] = {
    "add": [scalar_full_operand, add_zero, sum_of_pads],
    "add_n": [sum_of_pads],
    "sub": [scalar_full_operand, sub_zero, sub_neg],
    "mul": [scalar_full_operand, mul_one],
    "div": [scalar_full_operand, div_one],
    "pow": [scalar_full_operand, pow_small],
    "where": [scalar_full_operand, where_same],
    "neg": [neg_neg],
    "log": [log_exp],
    "cast": [cast_same],
    "transpose": [transpose_transpose],
    "reshape": [reshape_chain],
    "squeeze": [reshape_chain],
    "expand_dims": [reshape_chain],
    "broadcast_to": [broadcast_chain],
    "sum": [sum_of_broadcast],
    "slice": [slice_of_matmul],
}
for _op in ("maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or"):
    RULES[_op] = [scalar_full_operand]


def simplify_node(graph: Graph, node_id: int) -> int | None:
    """Apply the first matching rule; returns what the rule returned."""
    node = graph.node(node_id)
    for rule in RULES.get(node.op, ()):
        result = rule(graph, node_id, node)
        if result is not None:
            return result
    return None


@dataclass(frozen=True)
class AlgebraicSimplification(Pass):
    name: ClassVar[str] = "simplify"

    def apply(self, graph: Graph) -> bool:
        changed = False
        work = collections.deque(topo_order(graph))
        while work:
            node_id = work.popleft()
            if node_id not in graph:
                continue
            first_new = next_node_id(graph)
            result = simplify_node(graph, node_id)
            if result is None:
                continue
            changed = True
            # New nodes and a node rewritten in place may simplify further: look again.
            again = [n for n in range(first_new, next_node_id(graph)) if n in graph]
            if result == node_id:
                again.append(node_id)
            else:
                replace_value(graph, node_id, result)
            work.extendleft(reversed(again))
        return changed
