"""The kernel rule of `fusion` (see compiler/ops/fusion.py and compiler/passes/fuse.py).

A fusion kernel is ONE loop nest over the iteration shape. Its body evaluates the body
graph per element in registers: each operand is loaded where a member first reads it
(with numpy broadcasting done by strides, as in lower.emit_elementwise), each `full` is
an LLVM constant, and each elementwise member is its scalar expression
(scalar.SCALAR_OPS), so no member's result touches memory.

- kind "loop": the loop runs over the output shape and stores the body's output.
- kind "reduce": the loop runs over the reduction operand's shape and accumulates the
  fused element into the identity-initialized result through stride-0 axes, exactly as
  the plain reduction kernel does (float sums carry `reassoc`; max/min propagate NaN;
  mean divides by the count at the end).

Members are evaluated in the same order and with the same scalar rules as the unfused
kernels, so a loop fusion gives bitwise the results of the ops it replaces.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from llvmlite import ir

from compiler.codegen import scalar as S
from compiler.codegen.loops import contiguous_strides, nest
from compiler.codegen.lower import KernelCtx, Operand, broadcast_strides
from compiler.ir.graph import Graph
from compiler.ir.types import FLOAT_DTYPES
from compiler.ops.fusion import iteration_shape


def _identity(op: str, dtype: str) -> float | int:
    if op in ("sum", "mean"):
        return 0
    if dtype in FLOAT_DTYPES:
        return -np.inf if op == "max" else np.inf
    info = np.iinfo(dtype)
    return int(info.min if op == "max" else info.max)


def _reduced_strides(shape: Sequence[int], axes: Sequence[int], keepdims: bool) -> tuple[int, ...]:
    """The (contiguous) result's strides over the operand's axes; 0 on reduced axes."""
    kept = [1 if i in axes else d for i, d in enumerate(shape)] if keepdims else \
        [d for i, d in enumerate(shape) if i not in axes]
    strides = iter(contiguous_strides(kept))
    result = []
    for i in range(len(shape)):
        if i in axes:
            result.append(0)
            if keepdims:
                next(strides)
        else:
            result.append(next(strides))
    return tuple(result)


class _Evaluator:
    """Scalar values of body nodes at the current element (one instance per loop body)."""

    def __init__(self, ctx: KernelCtx, body: Graph, offsets: Sequence[ir.Value]) -> None:
        self.ctx = ctx
        self.body = body
        self.inputs = {input_id: (operand, offset) for input_id, operand, offset in zip(body.inputs, ctx.ins, offsets)}
        self.values: dict[int, ir.Value] = {}

    def __call__(self, target: int) -> ir.Value:
        body, values = self.body, self.values
        for node_id in _order(body, target):
            if node_id in values:
                continue
            node = body.node(node_id)
            if node_id in self.inputs:
                operand, offset = self.inputs[node_id]
                values[node_id] = self.ctx.load(operand, offset)
            elif node.op == "full":
                value = np.asarray(node.attrs["value"]).astype(node.type.dtype).item()
                values[node_id] = S.Scalar(self.ctx.b, (), node.type.dtype, {}).const(value)
            else:
                dtypes = tuple(body.type(o).dtype for o in node.operands)
                sc = S.Scalar(self.ctx.b, dtypes, node.type.dtype, dict(node.attrs))
                values[node_id] = S.SCALAR_OPS[node.op](sc, *(values[o] for o in node.operands))
        return values[target]


def _order(body: Graph, target: int) -> list[int]:
    """The body nodes `target` depends on, operands before users."""
    needed: set[int] = set()
    stack = [target]
    while stack:
        node_id = stack.pop()
        if node_id not in needed:
            needed.add(node_id)
            stack.extend(body.node(node_id).operands)
    return [n for n in body.topo_order() if n in needed]


def emit_fusion(ctx: KernelCtx) -> None:
    body: Graph = ctx.attrs["body"]
    kind: str = ctx.attrs["kind"]
    shape = iteration_shape(body, kind)
    if int(np.prod(shape, dtype=np.int64)) == 0 and kind == "loop":
        return
    in_strides = [broadcast_strides(o.layout, shape) for o in ctx.ins]
    if kind == "loop":
        out = ctx.out
        with nest(ctx.b, shape, [out.strides] + in_strides) as offsets:
            value = _Evaluator(ctx, body, offsets[1:])(body.outputs[0])
            ctx.store(out, offsets[0], value)
        return
    _emit_reduce(ctx, body, shape, in_strides)


def _emit_reduce(ctx: KernelCtx, body: Graph, shape: tuple[int, ...], in_strides: list[tuple[int, ...]]) -> None:
    out: Operand = ctx.out
    reduction = body.node(body.outputs[0])
    op, axes, keepdims = reduction.op, reduction.attrs["axes"], reduction.attrs["keepdims"]
    dtype = out.dtype
    sc = S.Scalar(ctx.b, (dtype,), dtype, {})
    ctx.fill(out, sc.const(_identity(op, dtype)))
    size = int(np.prod(shape, dtype=np.int64))
    if size:
        combine: Any = {"max": S.maximum, "min": S.minimum}.get(op)
        flags = ("reassoc",) if S.is_float(dtype) else ()
        with nest(ctx.b, shape, [_reduced_strides(shape, axes, keepdims)] + in_strides) as offsets:
            value = _Evaluator(ctx, body, offsets[1:])(reduction.operands[0])
            acc = ctx.load(out, offsets[0])
            result = S.add(sc, acc, value, flags=flags) if combine is None else combine(sc, acc, value)
            ctx.store(out, offsets[0], result)
    if op == "mean" and out.layout.size:
        count = int(np.prod([shape[a] for a in axes], dtype=np.int64))
        with nest(ctx.b, out.shape, [out.strides]) as (o,):
            ctx.store(out, o, ctx.b.fdiv(ctx.load(out, o), sc.const(count)))
