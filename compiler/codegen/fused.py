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
- kind "matmul": the tiled product of matmul.py, whose micro-kernels run the epilogue
  (the other members, evaluated here by the same Evaluator) on each tile of C after its
  last K block, and store once. An accumulator added straight to the product
  (`acc + a @ b`, matmul_parts) is where C starts (beta = 1), so weight gradients summed
  over unrolled steps accumulate in one buffer. Ints, PULLBACK_NAIVE_MATMUL=1, K = 0 and
  a result dtype other than the product's take a loop nest instead (_emit_matmul_loops).

Big "loop" and "reduce" nests run on all cores (parallel_loops.split_nest): one level
of the nest is cut into chunks for a libgomp team, for a reduction only a level it keeps,
so each result element is still computed by one thread in serial order.

Members are evaluated in the same order and with the same scalar rules as the unfused
kernels, so a loop fusion, and a matmul fusion without an accumulator, gives bitwise the
results of the ops it replaces.

This module also gives the fusion lowering its planning rules: workspace for a matmul
fusion (fusion_scratch) and the operands a result may overwrite (fusion_in_place).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from llvmlite import ir

from compiler.codegen import matmul
from compiler.codegen import scalar as S
from compiler.codegen.loops import Layout, contiguous_strides, nest
from compiler.codegen.lower import KernelCtx, Operand, broadcast_strides
from compiler.codegen.parallel_loops import nest_bytes, split_nest
from compiler.ir.graph import Graph
from compiler.ir.types import FLOAT_DTYPES
from compiler.ops.fusion import iteration_shape, matmul_node


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


class Evaluator:
    """Scalar values of body nodes at the current element (one instance per loop body).

    `load(input_id)` gives a body input's element; `values` may seed nodes whose value is
    already known (a matmul epilogue seeds the product with C's element): evaluation stops
    there and never reads what they were computed from."""

    def __init__(self, b: ir.IRBuilder, body: Graph, load: Callable[[int], ir.Value],
                 values: dict[int, ir.Value] | None = None) -> None:
        self.b = b
        self.body = body
        self.load = load
        self.inputs = set(body.inputs)
        self.values: dict[int, ir.Value] = dict(values or {})

    def __call__(self, target: int) -> ir.Value:
        body, values = self.body, self.values
        for node_id in _order(body, target, values):
            if node_id in values:
                continue
            node = body.node(node_id)
            if node_id in self.inputs:
                values[node_id] = self.load(node_id)
            elif node.op == "full":
                value = np.asarray(node.attrs["value"]).astype(node.type.dtype).item()
                values[node_id] = S.Scalar(self.b, (), node.type.dtype, {}).const(value)
            else:
                dtypes = tuple(body.type(o).dtype for o in node.operands)
                sc = S.Scalar(self.b, dtypes, node.type.dtype, dict(node.attrs))
                values[node_id] = S.SCALAR_OPS[node.op](sc, *(values[o] for o in node.operands))
        return values[target]


def operand_loader(ctx: KernelCtx, body: Graph, offsets: Sequence[ir.Value]) -> Callable[[int], ir.Value]:
    """load(input_id) for an Evaluator: the kernel operand of that body input at its offset."""
    where = {input_id: (operand, offset) for input_id, operand, offset in zip(body.inputs, ctx.ins, offsets)}

    def load(input_id: int) -> ir.Value:
        operand, offset = where[input_id]
        return ctx.load(operand, offset)

    return load


def _order(body: Graph, target: int, known: Mapping[int, ir.Value]) -> list[int]:
    """The body nodes `target` depends on (not looking past known values), operands before users."""
    needed: set[int] = set()
    stack = [target]
    while stack:
        node_id = stack.pop()
        if node_id not in needed:
            needed.add(node_id)
            if node_id not in known:
                stack.extend(body.node(node_id).operands)
    return [n for n in body.topo_order() if n in needed]


def emit_fusion(ctx: KernelCtx) -> None:
    body: Graph = ctx.attrs["body"]
    kind: str = ctx.attrs["kind"]
    if kind == "siblings":
        from compiler.codegen.fused_siblings import emit_siblings  # it builds on this module
        return emit_siblings(ctx)
    if kind == "matmul":
        _emit_matmul(ctx)
        return
    shape = iteration_shape(body, kind)
    if int(np.prod(shape, dtype=np.int64)) == 0 and kind == "loop":
        return
    in_strides = [broadcast_strides(o.layout, shape) for o in ctx.ins]
    if kind == "loop":
        def element(c: KernelCtx, offsets: list[ir.Value]) -> None:
            value = Evaluator(c.b, body, operand_loader(c, body, offsets[1:]))(body.outputs[0])
            c.store(c.out, offsets[0], value)

        size = int(np.prod(shape, dtype=np.int64))
        split_nest(ctx, shape, [ctx.out.strides] + in_strides, element, nest_bytes(ctx, size), stem="loop")
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
        def element(c: KernelCtx, offsets: list[ir.Value]) -> None:
            value = Evaluator(c.b, body, operand_loader(c, body, offsets[1:]))(reduction.operands[0])
            acc = c.load(c.out, offsets[0])
            here = S.Scalar(c.b, (dtype,), dtype, {})
            result = S.add(here, acc, value, flags=flags) if combine is None else combine(here, acc, value)
            c.store(c.out, offsets[0], result)

        # split only over kept axes (the result's stride is 0 on reduced ones): every result
        # element is still accumulated by one thread in serial order
        split_nest(ctx, shape, [_reduced_strides(shape, axes, keepdims)] + in_strides, element,
                   nest_bytes(ctx, size), stem="reduce")
    if op == "mean" and out.layout.size:
        count = int(np.prod([shape[a] for a in axes], dtype=np.int64))
        with nest(ctx.b, out.shape, [out.strides]) as (o,):
            ctx.store(out, o, ctx.b.fdiv(ctx.load(out, o), sc.const(count)))


# ------------------------------------------------------------------ kind "matmul"
@dataclass(frozen=True)
class MatmulParts:
    """How a "matmul" body divides between the product and its epilogue."""

    product: int  # body id of the matmul
    a: int  # operand index of its left operand
    b: int  # ... and of its right one
    init: int | None  # operand index of an accumulator added straight to the product: C starts from it
    seed: int  # the body node C's element stands for once C started from `init` (the add)
    epilogue: tuple[int, ...]  # operand indices the epilogue reads (init among them)


def matmul_parts(body: Graph) -> MatmulParts:
    product = matmul_node(body)
    index = {input_id: i for i, input_id in enumerate(body.inputs)}
    a, b = body.node(product).operands
    init, seed = None, product
    users = body.users(product)
    if len(users) == 1 and body.node(users[0]).op == "add":
        x, y = body.node(users[0]).operands
        other = y if x == product else x
        if (other != product and other in index and body.type(other) == body.type(product)
                and body.users(other) == users):
            init, seed = index[other], users[0]
    epilogue = tuple(i for i, input_id in enumerate(body.inputs) if input_id not in (a, b))
    return MatmulParts(product, index[a], index[b], init, seed, epilogue)


def _native(body: Graph, parts: MatmulParts, a: Layout, out_shape: Sequence[int], out_dtype: str) -> bool:
    """The tiled kernel applies the epilogue; else (ints, PULLBACK_NAIVE_MATMUL, K = 0, a
    result of another dtype than the product's) the loop nest of _emit_matmul_loops."""
    dtype = body.type(parts.product).dtype
    return matmul.supported(dtype) and out_dtype == dtype and a.shape[-1] > 0 and 0 not in out_shape


def _emit_matmul(ctx: KernelCtx) -> None:
    body: Graph = ctx.attrs["body"]
    parts = matmul_parts(body)
    out = ctx.out
    if out.layout.size == 0:
        return
    if not _native(body, parts, ctx.ins[parts.a].layout, out.shape, out.dtype):
        _emit_matmul_loops(ctx, body, parts)
        return
    operands = [ctx.ins[i] for i in parts.epilogue]
    slot = {body.inputs[i]: k for k, i in enumerate(parts.epilogue)}

    def apply(b: ir.IRBuilder, c: ir.Value, load: Callable[[int], ir.Value], initialized: bool) -> ir.Value:
        known = {parts.seed if initialized else parts.product: c}
        return Evaluator(b, body, lambda input_id: load(slot[input_id]), known)(body.outputs[0])

    epilogue = matmul.Epilogue(
        tag=ctx.module_builder.unique("e"), dtypes=tuple(o.dtype for o in operands),
        strides=tuple(broadcast_strides(o.layout, out.shape) for o in operands), apply=apply,
        init=None if parts.init is None else parts.epilogue.index(parts.init))
    matmul.emit_product(ctx, ctx.ins[parts.a], ctx.ins[parts.b], epilogue, [o.ptr for o in operands])


def _emit_matmul_loops(ctx: KernelCtx, body: Graph, parts: MatmulParts) -> None:
    """Row by row: the product's row into scratch (the naive kernel's loop order), then the
    epilogue from it into the output row. Each output element is written once, after every
    operand element at its index was read, so `out` may alias the accumulator."""
    b, out = ctx.b, ctx.out
    a, bm = ctx.ins[parts.a], ctx.ins[parts.b]
    (m, k), n = a.shape, bm.shape[-1]
    dtype = body.type(parts.product).dtype
    row = ctx.scratch_operand(0, Layout.contiguous((n,)), dtype)
    sc = S.Scalar(b, (dtype,), dtype, {})
    flags = ("contract",) if S.is_float(dtype) else ()
    readers = [ctx.ins[i] for i in parts.epilogue]
    strides = [broadcast_strides(o.layout, out.shape) for o in readers]
    with nest(b, (m,), [(a.strides[0],), (out.strides[0],)] + [(s[0],) for s in strides]) as (a_row, o_row, *rows):
        with nest(b, (n,), [(1,)]) as (j,):
            ctx.store(row, j, sc.const(0))
        if k:
            with nest(b, (k,), [(a.strides[1],), (bm.strides[0],)], bases=[a_row, 0]) as (ai, b_row):
                aik = ctx.load(a, ai)
                with nest(b, (n,), [(1,), (bm.strides[1],)], bases=[0, b_row]) as (j, bj):
                    product = S.mul(sc, aik, ctx.load(bm, bj), flags=flags)
                    ctx.store(row, j, S.add(sc, ctx.load(row, j), product, flags=flags))
        with nest(b, (n,), [(1,), (out.strides[1],)] + [(s[1],) for s in strides], bases=[0, o_row] + rows) as offs:
            where = {body.inputs[i]: (o, off) for i, o, off in zip(parts.epilogue, readers, offs[2:])}
            value = Evaluator(b, body, lambda input_id: ctx.load(*where[input_id]),
                              {parts.product: ctx.load(row, offs[0])})(body.outputs[0])
            ctx.store(out, offs[1], value)


# ------------------------------------------------------------------ planning rules
def fusion_scratch(module_builder: Any, attrs: dict, layouts: Sequence[Layout], types: Sequence[Any],
                   result: Any) -> int:
    """Workspace bytes: packed B for a matmul fusion's tiled kernel, or one product row."""
    if attrs["kind"] != "matmul" or 0 in result.shape:
        return 0
    body: Graph = attrs["body"]
    parts = matmul_parts(body)
    a, b = layouts[parts.a], layouts[parts.b]
    dtype = body.type(parts.product).dtype
    if _native(body, parts, a, result.shape, result.dtype):
        return matmul.scratch_bytes(a, b, result.shape, dtype)
    return b.shape[-1] * S.ITEMSIZE[dtype]


def fusion_in_place(attrs: dict, layouts: Sequence[Layout], types: Sequence[Any], result: Any) -> tuple[int, ...]:
    """Operands `out` may overwrite. A loop reads every operand of an element before its one
    store there, so any operand read at the output's own index qualifies. A matmul fusion's
    accumulator is read as C's first value, tile by tile, before that tile is stored (in
    the loop nest: element by element, before the element is stored); the other epilogue
    operands are read after partial K-block sums were stored, so they never qualify."""
    def exact(i: int) -> bool:
        return (tuple(layouts[i].shape) == tuple(result.shape) and layouts[i].is_contiguous()
                and S.ITEMSIZE[types[i].dtype] == S.ITEMSIZE[result.dtype])

    if attrs["kind"] == "loop":
        return tuple(i for i in range(len(layouts)) if exact(i))
    if attrs["kind"] == "matmul":
        init = matmul_parts(attrs["body"]).init
        return (init,) if init is not None and exact(init) else ()
    return ()
