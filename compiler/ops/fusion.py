"""`fusion`: a group of ops the code generator runs as ONE loop, made by the `fuse` pass.

    %7 = fusion(%2, %5, %x) {body=graph('fused_3'), kind='loop'} : f32[64,256]

The operands are the group's external values; the attribute `body` is a Graph with one
input per operand (same types, same order) and one output, holding the member ops with
their original locs. `kind` says how the body is run:

- "loop": every body op is elementwise (or a `full` constant). One loop nest over the
  output shape evaluates the body per element in registers; operands are read through
  numpy broadcasting, so no member's result is written to memory.
- "reduce": the output is a sum/mean/max/min whose operand is computed by elementwise
  body ops: one reduction loop whose loaded element is that fused expression.
- "matmul": one 2-D `matmul` of two body inputs (read by nothing else) and elementwise
  members applied to its result, its epilogue (made by the `epilogue` pass): the matrix
  kernel applies them to each finished tile of the product, so the product is never
  stored on its own (compiler/codegen/fused.py, matmul.py).
- "siblings": k reductions over operands of ONE shape, the body's k outputs (made by the
  `siblings` pass from reductions that read a common value): one loop over that shape
  computes all of them (compiler/codegen/fused_siblings.py). The op's value is 1-D, the k
  results raveled and concatenated (`sibling_spans`); readers take theirs by slice and
  reshape, which are views, so the IR keeps one value per node.

Every body value must broadcast to the iteration shape (the output's for a loop and a
matmul, the reduction operands' for a reduce or siblings): that is what lets native code evaluate
any body value at the current element. (A matmul's own operands are the exception.)

Fusion runs after autodiff (fuse and epilogue are the last passes of opt_level 2), but a
fused graph stays differentiable: the VJP differentiates the body and inlines it, as
fixed_point's does.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import networkx as nx
import numpy as np

from compiler.errors import ShapeError, VerifyError
from compiler.ir.graph import Graph
from compiler.ir.types import FLOAT_DTYPES, TensorType
from compiler.ops.registry import OpDef, get_op, register
from compiler.ops.tensor import Tensor, apply

__all__ = ["fusion", "matmul_node"]

KINDS = ("loop", "reduce", "matmul", "siblings")
REDUCTIONS = ("sum", "mean", "max", "min")  # the reductions a "reduce" (or "siblings") fusion ends in


def is_elementwise(op: str) -> bool:
    try:
        return get_op(op).kind == "elementwise"
    except VerifyError:
        return False


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    if len(shape) > len(target):
        return False
    return all(d == t or d == 1 for d, t in zip(shape, target[len(target) - len(shape):]))


def iteration_shape(body: Graph, kind: str) -> tuple[int, ...]:
    """The shape the native loop runs over: the output's (the product's for a matmul), or the
    reduction operand's."""
    out = body.node(body.outputs[0])
    return body.type(out.operands[0]).shape if kind in ("reduce", "siblings") else out.type.shape


def sibling_spans(body: Graph) -> list[tuple[int, int]]:
    """[start, stop) of each output of a "siblings" body in the op's 1-D result."""
    spans, start = [], 0
    for output in body.outputs:
        stop = start + int(np.prod(body.type(output).shape, dtype=np.int64))
        spans.append((start, stop))
        start = stop
    return spans


def _check_siblings(body: Graph) -> None:
    """A "siblings" body's own rules: k distinct outputs, each a reduction read by nothing,
    all of one dtype over operands of one shape (the loop's). _check_body does the rest."""
    outputs = body.outputs
    if not outputs or len(set(outputs)) != len(outputs):
        raise ShapeError(f"body {body.name!r}: a 'siblings' fusion needs distinct outputs, it has {outputs}")
    shape = iteration_shape(body, "siblings")
    dtype = body.type(outputs[0]).dtype
    for output in outputs:
        node = body.node(output)
        if node.op not in REDUCTIONS:
            raise ShapeError(f"body {body.name!r}: each output of a 'siblings' fusion must be one of "
                             f"{', '.join(REDUCTIONS)}, one is {node.op}")
        if body.users(output):
            raise ShapeError(f"body {body.name!r}: a reduction of a 'siblings' fusion is read inside the body")
        if body.type(node.operands[0]).shape != shape or node.type.dtype != dtype:
            raise ShapeError(f"body {body.name!r}: the reductions must all reduce operands of shape {shape} "
                             f"to {dtype}, one reduces {body.type(node.operands[0])} to {node.type.dtype}")


def matmul_node(body: Graph) -> int:
    """The id of the one matmul of a "matmul" fusion's body (checked by the shape rule)."""
    return next(n for n in body.nx if body.node(n).op == "matmul")


def _check_matmul(body: Graph) -> set[int]:
    """A "matmul" body's own rules; returns the ids exempt from broadcasting (the operands)."""
    products = [n for n in body.nx if body.node(n).op == "matmul"]
    if len(products) != 1:
        raise ShapeError(f"body {body.name!r}: a 'matmul' fusion holds exactly one matmul, it has {len(products)}")
    node = body.node(products[0])
    inputs = set(body.inputs)
    for operand in node.operands:
        if operand not in inputs or set(body.users(operand)) != {products[0]}:
            raise ShapeError(f"body {body.name!r}: the matmul's operands must be body inputs read by nothing else")
        if body.type(operand).rank != 2:
            raise ShapeError(f"body {body.name!r}: the matmul's operands must be 2-D, "
                             f"got {body.type(operand)}")
    if not nx.has_path(body.nx, products[0], body.outputs[0]):
        raise ShapeError(f"body {body.name!r}: the output does not depend on the matmul")
    if body.type(body.outputs[0]).shape != node.type.shape:
        raise ShapeError(f"body {body.name!r}: the output's shape {body.type(body.outputs[0]).shape} is not "
                         f"the product's {node.type.shape}")
    return set(node.operands) | {products[0]}


def _check_body(body: Graph, kind: str) -> None:
    if kind == "siblings":
        _check_siblings(body)
    elif len(body.outputs) != 1:
        raise ShapeError(f"body {body.name!r} must have one output, it has {len(body.outputs)}")
    output = body.outputs[0]
    out = body.node(output)
    if kind == "reduce" and out.op not in REDUCTIONS:
        raise ShapeError(f"a 'reduce' fusion's body must end in one of {', '.join(REDUCTIONS)}, "
                         f"its output is {out.op}")
    inputs = set(body.inputs)
    exempt = _check_matmul(body) if kind == "matmul" else set()
    if kind == "siblings":  # the reductions: _check_siblings checked them
        exempt = set(body.outputs)
    for node_id in body.topo_order():
        node = body.node(node_id)
        if node_id in inputs or (node_id == output and kind == "reduce") or node_id in exempt:
            continue
        if node.op != "full" and not is_elementwise(node.op):
            raise ShapeError(f"body {body.name!r}: {node.op} cannot be fused into a {kind!r} loop "
                             "(only elementwise ops and full constants can)")
    if kind == "reduce" and body.users(output):
        raise ShapeError(f"body {body.name!r}: the reduction must be the last op")
    shape = iteration_shape(body, kind)
    for node_id in body.nx:
        node = body.node(node_id)
        if (node_id == output and kind == "reduce") or (node_id in exempt and body.node(node_id).op != "matmul"):
            continue
        if not _broadcasts_to(node.type.shape, shape):
            what = f"input {node.attrs['name']!r}" if node_id in inputs else f"the {node.op} value"
            raise ShapeError(f"body {body.name!r}: {what} of shape {node.type.shape} does not "
                             f"broadcast to the loop shape {shape}")


# ------------------------------------------------------------------ shape rule
def _infer_fusion(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> TensorType:
    body, kind = attrs["body"], attrs["kind"]
    if not isinstance(body, Graph):
        raise ShapeError(f"body must be a Graph, got {type(body).__name__}")
    if kind not in KINDS:
        raise ShapeError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    if len(body.inputs) != len(types):
        raise ShapeError(f"body {body.name!r} takes {len(body.inputs)} inputs but the op has {len(types)} operands")
    for index, (input_id, operand) in enumerate(zip(body.inputs, types)):
        declared = body.type(input_id)
        if declared != operand:
            raise ShapeError(f"operand {index} is {operand} but body input "
                             f"{body.node(input_id).attrs['name']!r} is {declared}")
    _check_body(body, kind)
    if kind == "siblings":  # the outputs raveled and concatenated
        return TensorType((sibling_spans(body)[-1][1],), body.type(body.outputs[0]).dtype)
    return body.type(body.outputs[0])


# ------------------------------------------------------------------ reference
def _fusion_reference(*arrays: np.ndarray, body: Graph, kind: str) -> np.ndarray:
    from compiler.interpreter import run_flat

    results = run_flat(body, list(arrays))
    return np.concatenate([np.ravel(r) for r in results]) if kind == "siblings" else results[0]


# ------------------------------------------------------------------ VJP rule
def _fusion_vjp(g: Tensor, out: Tensor, xs: tuple, *, body: Graph, kind: str) -> tuple:
    from compiler.autodiff.api import vjp
    from compiler.ops.implicit import inline

    float_argnums = tuple(i for i, x in enumerate(xs) if x.dtype in FLOAT_DTYPES)
    cotangents: list[Tensor | None] = [None] * len(xs)
    if not float_argnums:
        return tuple(cotangents)
    gs = [g] if kind != "siblings" else [  # each output's part of the 1-D cotangent
        apply("reshape", apply("slice", g, starts=(start,), stops=(stop,), steps=(1,)), shape=body.type(o).shape)
        for o, (start, stop) in zip(body.outputs, sibling_spans(body))]
    for argnum, ct in zip(float_argnums, inline(vjp(body, argnums=float_argnums), *xs, *gs)):
        cotangents[argnum] = ct
    return tuple(cotangents)


register(OpDef(
    "fusion", arity=None, attrs=("body", "kind"), infer=_infer_fusion, reference=_fusion_reference,
    vjp=_fusion_vjp, kind="other",
    doc="A group of elementwise ops (and optionally a final reduction or a first matmul) run as one loop.",
))


# ------------------------------------------------------------------ user function
def fusion(body: Graph, *operands: Tensor, kind: str = "loop") -> Tensor:
    """Apply `body` (a Graph of elementwise ops, maybe one matmul: see the module doc) to `operands` as one op."""
    if not operands:
        raise ShapeError("fusion: needs at least one operand")
    return apply("fusion", *operands, body=body, kind=kind)
