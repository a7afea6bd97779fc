"""The kernel of a "siblings" fusion (compiler/ops/fusion.py, compiler/passes/siblings.py):
ONE loop nest over the common iteration shape accumulating k reductions.

Each reduction accumulates into its own span of the 1-D result, seen as a contiguous
array of its shape, through stride-0 reduced axes, exactly as fused.py's reduce kernel
does (identity first; float sums carry `reassoc`; max/min propagate NaN; a mean divides
by its count at the end). One Evaluator serves all k per element, so an operand element
or a body value two reductions read is loaded or computed once: that is the point of
grouping them. A big nest runs on all cores, cut only along a level that no reduction
reduces (parallel_loops.split_nest), so results are bitwise those of serial code.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir

from compiler.codegen import scalar as S
from compiler.codegen.fused import Evaluator, _identity, _reduced_strides, operand_loader
from compiler.codegen.loops import Layout, const, nest
from compiler.codegen.lower import KernelCtx, Operand, broadcast_strides
from compiler.codegen.parallel_loops import nest_bytes, split_nest
from compiler.ir.graph import Graph
from compiler.ops.fusion import iteration_shape, sibling_spans


def emit_siblings(ctx: KernelCtx) -> None:
    body: Graph = ctx.attrs["body"]
    shape = iteration_shape(body, "siblings")
    out = ctx.out
    dtype = out.dtype
    sc = S.Scalar(ctx.b, (dtype,), dtype, {})
    reductions = [body.node(o) for o in body.outputs]
    parts: list[Operand] = []
    spans = sibling_spans(body)
    for node, (start, _) in zip(reductions, spans):
        part = Operand(ctx.address(out, const(start)), Layout.contiguous(node.type.shape), dtype)
        ctx.fill(part, sc.const(_identity(node.op, dtype)))
        parts.append(part)
    if int(np.prod(shape, dtype=np.int64)):
        flags = ("reassoc",) if S.is_float(dtype) else ()
        strides = [_reduced_strides(shape, n.attrs["axes"], n.attrs["keepdims"]) for n in reductions]
        strides += [broadcast_strides(o.layout, shape) for o in ctx.ins]
        k = len(reductions)

        def element(c: KernelCtx, offsets: list[ir.Value]) -> None:
            here = S.Scalar(c.b, (dtype,), dtype, {})
            evaluate = Evaluator(c.b, body, operand_loader(c, body, offsets[k:]))
            for node, (start, _), offset in zip(reductions, spans, offsets):
                part = Operand(c.address(c.out, const(start)), Layout.contiguous(node.type.shape), dtype)
                value = evaluate(node.operands[0])
                acc = c.load(part, offset)
                combine: Any = {"max": S.maximum, "min": S.minimum}.get(node.op)
                result = S.add(here, acc, value, flags=flags) if combine is None else combine(here, acc, value)
                c.store(part, offset, result)

        # split only where no reduction reduces (every part's stride is non-zero there)
        size = int(np.prod(shape, dtype=np.int64))
        split_nest(ctx, shape, strides, element, nest_bytes(ctx, size), written=tuple(range(k)), stem="siblings")
    for node, part in zip(reductions, parts):
        if node.op == "mean" and part.layout.size:
            count = int(np.prod([shape[a] for a in node.attrs["axes"]], dtype=np.int64))
            with nest(ctx.b, part.shape, [part.strides]) as (o,):
                ctx.store(part, o, ctx.b.fdiv(ctx.load(part, o), sc.const(count)))
