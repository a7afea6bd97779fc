"""`fixed_point`: the iteration z_k = f(z_{k-1}, *args) in native code.

The body graph is compiled once into an internal function with the entry ABI and called
in a loop that ping-pongs two scratch buffers. After each step the kernel checks, in one
pass, that z_k is finite and computes max|z_k - z_{k-1}| and max|z_k| (differences in
z's dtype, maxima in double, exactly as the reference's numpy code), then stops when
residual <= tol * (1 + max|z_k|). Failures return a status (emit.STATUS): 2 for a
non-finite iterate, 1 for no convergence within max_iter; the runtime raises KernelError.

Scratch layout: [z_a | z_b | contiguous copies of strided args | the body's workspace].
"""
from __future__ import annotations

from typing import Any, Sequence

from llvmlite import ir

from compiler.codegen import scalar as S
from compiler.codegen.loops import I32, I64, I8, Layout, const, nest
from compiler.codegen.lower import KernelCtx, Lowering, Operand, register
from compiler.codegen.memplan import align

PTR = ir.PointerType()
F64 = ir.DoubleType()


def _scratch_plan(module_builder: Any, attrs: dict, layouts: Sequence[Layout], dtypes: Sequence[str]) -> tuple:
    """(body function, z bytes, {arg index: offset of its copy}, body workspace offset, total)."""
    body_fn, body_ws = module_builder.body_function(attrs["body"])
    z_bytes = align(layouts[0].size * S.ITEMSIZE[dtypes[0]])
    offset = 2 * z_bytes
    copies = {}
    for index, (layout, dtype) in enumerate(zip(layouts[1:], dtypes[1:]), start=1):
        if not layout.is_contiguous():
            copies[index] = offset
            offset += align(layout.size * S.ITEMSIZE[dtype])
    return body_fn, z_bytes, copies, offset, offset + body_ws


def _scratch(module_builder: Any, attrs: dict, layouts: Sequence[Layout], types: Sequence, result: Any) -> int:
    return _scratch_plan(module_builder, attrs, layouts, [t.dtype for t in types])[-1]


def _emit(ctx: KernelCtx) -> None:
    b = ctx.b
    z0, *args = ctx.ins
    out = ctx.out
    body_fn, z_bytes, copies, body_ws, _ = _scratch_plan(
        ctx.module_builder, ctx.attrs, [o.layout for o in ctx.ins], [o.dtype for o in ctx.ins])
    z_layout = Layout.contiguous(z0.shape)
    buf_a = ctx.scratch_operand(0, z_layout, z0.dtype)
    buf_b = ctx.scratch_operand(z_bytes, z_layout, z0.dtype)
    with b.goto_block(ctx.entry_block):
        b.position_at_start(ctx.entry_block)
        ins_array = b.alloca(PTR, size=ir.Constant(I32, len(ctx.ins)), name="ins")
        outs_array = b.alloca(PTR, size=ir.Constant(I32, 1), name="outs")

    def slot(array: ir.Value, index: int) -> ir.Value:
        return b.gep(array, [const(index)], inbounds=True, source_etype=PTR)

    for index, arg in enumerate(args, start=1):
        if index in copies:
            dense = ctx.scratch_operand(copies[index], Layout.contiguous(arg.shape), arg.dtype)
            ctx.copy(dense, arg)
            arg = dense
        b.store(arg.ptr, slot(ins_array, index))
    ctx.copy(buf_a, z0)
    workspace = b.gep(ctx.scratch, [const(body_ws)], source_etype=I8)

    sc = ctx.scalar([z0.dtype])
    size = z_layout.size
    pre = b.block
    loop = b.append_basic_block("iterate")
    b.branch(loop)
    b.position_at_end(loop)
    k = b.phi(I64, "k")
    current = b.phi(PTR, "current")
    following = b.phi(PTR, "next")
    k.add_incoming(const(1), pre)
    current.add_incoming(buf_a.ptr, pre)
    following.add_incoming(buf_b.ptr, pre)
    b.store(current, slot(ins_array, 0))
    b.store(following, slot(outs_array, 0))
    status = b.call(body_fn, [ins_array, outs_array, workspace])
    with b.if_then(b.icmp_signed("!=", status, ir.Constant(I32, 0)), likely=False):
        b.ret(status)

    residual = ctx.local(F64, ir.Constant(F64, 0.0), "residual")
    scale = ctx.local(F64, ir.Constant(F64, 0.0), "scale")
    bad = ctx.local(I8, ir.Constant(I8, 0), "bad")
    if size:
        new, old = Operand(following, z_layout, z0.dtype), Operand(current, z_layout, z0.dtype)
        with nest(b, z_layout.shape, [z_layout.strides]) as (i,):
            v, p = ctx.load(new, i), ctx.load(old, i)
            not_finite = b.zext(b.not_(S.is_finite(sc, v)), I8)
            b.store(b.or_(b.load(bad, typ=I8), not_finite), bad)
            for slot_, value in ((residual, sc.intrinsic("fabs", b.fsub(v, p))), (scale, sc.intrinsic("fabs", v))):
                wide = b.fpext(value, F64) if z0.dtype == "float32" else value
                acc = b.load(slot_, typ=F64)
                b.store(b.select(b.fcmp_ordered(">", wide, acc), wide, acc), slot_)
    with b.if_then(b.icmp_unsigned("!=", b.load(bad, typ=I8), ir.Constant(I8, 0)), likely=False):
        b.ret(ir.Constant(I32, 2))
    bound = b.fmul(ir.Constant(F64, float(ctx.attrs["tol"])), b.fadd(ir.Constant(F64, 1.0), b.load(scale, typ=F64)))
    converged = b.fcmp_ordered("<=", b.load(residual, typ=F64), bound)
    with b.if_then(converged):
        ctx.copy(out, Operand(following, z_layout, z0.dtype))
        b.ret(ir.Constant(I32, 0))
    k_next = b.add(k, const(1))
    more = b.icmp_signed("<=", k_next, const(int(ctx.attrs["max_iter"])))
    k.add_incoming(k_next, b.block)
    current.add_incoming(following, b.block)
    following.add_incoming(current, b.block)
    again = b.block
    exhausted = b.append_basic_block("exhausted")
    b.cbranch(more, loop, exhausted)
    del again
    b.position_at_end(exhausted)
    b.ret(ir.Constant(I32, 1))


register(Lowering("fixed_point", emit=_emit, scratch=_scratch, may_fail=True))
