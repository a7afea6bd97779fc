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

Every body value must broadcast to the iteration shape (the output's for a loop, the
reduction operand's for a reduce): that is what lets native code evaluate any body value
at the current element.

Fusion runs after autodiff (it is the last pass of opt_level 2), but a fused graph stays
differentiable: the VJP differentiates the body and inlines it, as fixed_point's does.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from compiler.errors import ShapeError, VerifyError
from compiler.ir.graph import Graph
from compiler.ir.types import FLOAT_DTYPES, TensorType
from compiler.ops.registry import OpDef, get_op, register
from compiler.ops.tensor import Tensor, apply

__all__ = ["fusion"]

KINDS = ("loop", "reduce")
REDUCTIONS = ("sum", "mean", "max", "min")  # the reductions a "reduce" fusion ends in


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
    """The shape the native loop runs over: the output's, or the reduction operand's."""
    out = body.node(body.outputs[0])
    return body.type(out.operands[0]).shape if kind == "reduce" else out.type.shape


def _check_body(body: Graph, kind: str) -> None:
    if len(body.outputs) != 1:
        raise ShapeError(f"body {body.name!r} must have one output, it has {len(body.outputs)}")
    output = body.outputs[0]
    out = body.node(output)
    if kind == "reduce" and out.op not in REDUCTIONS:
        raise ShapeError(f"a 'reduce' fusion's body must end in one of {', '.join(REDUCTIONS)}, "
                         f"its output is {out.op}")
    inputs = set(body.inputs)
    for node_id in body.topo_order():
        node = body.node(node_id)
        if node_id in inputs or (node_id == output and kind == "reduce"):
            continue
        if node.op != "full" and not is_elementwise(node.op):
            raise ShapeError(f"body {body.name!r}: {node.op} cannot be fused into a {kind!r} loop "
                             "(only elementwise ops and full constants can)")
    if kind == "reduce" and body.users(output):
        raise ShapeError(f"body {body.name!r}: the reduction must be the last op")
    shape = iteration_shape(body, kind)
    for node_id in body.nx:
        node = body.node(node_id)
        if node_id == output and kind == "reduce":
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
    return body.type(body.outputs[0])


# ------------------------------------------------------------------ reference
def _fusion_reference(*arrays: np.ndarray, body: Graph, kind: str) -> np.ndarray:
    from compiler.interpreter import run_flat

    return run_flat(body, list(arrays))[0]


# ------------------------------------------------------------------ VJP rule
def _fusion_vjp(g: Tensor, out: Tensor, xs: tuple, *, body: Graph, kind: str) -> tuple:
    from compiler.autodiff.api import vjp
    from compiler.ops.implicit import inline

    float_argnums = tuple(i for i, x in enumerate(xs) if x.dtype in FLOAT_DTYPES)
    cotangents: list[Tensor | None] = [None] * len(xs)
    if not float_argnums:
        return tuple(cotangents)
    for argnum, ct in zip(float_argnums, inline(vjp(body, argnums=float_argnums), *xs, g)):
        cotangents[argnum] = ct
    return tuple(cotangents)


register(OpDef(
    "fusion", arity=None, attrs=("body", "kind"), infer=_infer_fusion, reference=_fusion_reference,
    vjp=_fusion_vjp, kind="other",
    doc="A group of elementwise ops (and optionally a final reduction) run as one loop.",
))


# ------------------------------------------------------------------ user function
def fusion(body: Graph, *operands: Tensor, kind: str = "loop") -> Tensor:
    """Apply `body` (a Graph of elementwise ops, see the module doc) to `operands` as one fused op."""
    if not operands:
        raise ShapeError("fusion: needs at least one operand")
    return apply("fusion", *operands, body=body, kind=kind)
