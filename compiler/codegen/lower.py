"""Lowering rules, keyed by op name: `LOWERINGS[op]`.

A rule is one of two kinds:
- a *view* rule: the op costs nothing at run time. It maps its operand's Layout to the
  result's (transpose permutes strides, broadcast_to and expand_dims add stride-0 axes,
  slice moves the offset and scales strides, squeeze drops axes, reshape of a contiguous
  operand keeps the buffer). It may return None ("cannot be a view here"), and the
  rule's `emit` then materializes the result.
- a *kernel* rule: `emit(ctx)` writes the body of one LLVM function that computes the
  op's contiguous result from strided operands (see KernelCtx). Identical kernels (same
  op, attributes, types and operand layouts) are emitted once and called many times, so
  an unrolled loop's repeated steps cost LLVM one function each.

Elementwise ops share one kernel: a loop nest over the result shape whose body is the
op's scalar expression (scalar.SCALAR_OPS), with numpy broadcasting done by strides
(size-1 or missing axes read with stride 0). A `fusion` op (a group of elementwise ops,
optionally ending in a reduction) is one such loop whose body evaluates every member's
scalar expression in registers (compiler/codegen/fused.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from llvmlite import ir

from compiler.codegen.loops import I64, Layout, const, contiguous_strides, declare, nest
from compiler.codegen.parallel_loops import nest_bytes, split_nest
from compiler.codegen.scalar import ITEMSIZE, LLVM_TYPES, SCALAR_OPS, Scalar


@dataclass(frozen=True)
class Operand:
    """A strided tensor inside a kernel: base pointer (already offset), layout, dtype."""

    ptr: ir.Value
    layout: Layout
    dtype: str

    @property
    def shape(self) -> tuple[int, ...]:
        return self.layout.shape

    @property
    def strides(self) -> tuple[int, ...]:
        return self.layout.strides

    @property
    def type(self) -> ir.Type:
        return LLVM_TYPES[self.dtype]

    def relayout(self, layout: Layout) -> "Operand":
        return Operand(self.ptr, layout, self.dtype)


@dataclass
class KernelCtx:
    """What a kernel rule emits with: the builder positioned in the kernel function."""

    b: ir.IRBuilder
    op: str
    attrs: dict
    out: Operand
    ins: list[Operand]
    scratch: ir.Value | None
    module_builder: Any  # emit.ModuleBuilder, for rules that compile sub-graphs
    entry_block: ir.Block = field(default=None)  # type: ignore[assignment]
    embedded: tuple[int, ...] = ()  # operands already inside `out` (memplan.embed_operands): not copied

    def address(self, operand: Operand, offset: ir.Value) -> ir.Value:
        return self.b.gep(operand.ptr, [offset], inbounds=True, source_etype=operand.type)

    def load(self, operand: Operand, offset: ir.Value) -> ir.Value:
        return self.b.load(self.address(operand, offset), typ=operand.type)

    def store(self, operand: Operand, offset: ir.Value, value: ir.Value) -> None:
        self.b.store(value, self.address(operand, offset))

    def local(self, typ: ir.Type, init: ir.Value, name: str = "acc") -> ir.Value:
        """A stack slot (promoted to a register by LLVM) holding `init`."""
        with self.b.goto_block(self.entry_block):
            self.b.position_at_start(self.entry_block)
            slot = self.b.alloca(typ, name=name)
        self.b.store(init, slot)
        return slot

    def scalar(self, dtypes: Sequence[str] | None = None, out_dtype: str | None = None) -> Scalar:
        dtypes = tuple(dtypes) if dtypes is not None else tuple(o.dtype for o in self.ins)
        return Scalar(self.b, dtypes, out_dtype or self.out.dtype, self.attrs)

    def scratch_operand(self, byte_offset: int, layout: Layout, dtype: str) -> Operand:
        ptr = self.b.gep(self.scratch, [const(byte_offset)], inbounds=True, source_etype=ir.IntType(8))
        return Operand(ptr, layout, dtype)

    def copy(self, dst: Operand, src: Operand, dst_offset: int = 0) -> None:
        """dst[...] = src[...] over src's shape, dst's strides saying where each element goes
        (from element dst_offset). Whole contiguous blocks become one llvm.memcpy: the
        library copy runs at cache bandwidth where the element loop, with its alias
        checks, ran at a third of it (concatenating 32 [16,128] pieces: 22 us)."""
        if src.layout.size == 0:
            return
        contiguous = contiguous_strides(src.shape)
        if _dense(src.shape, src.strides, contiguous) and _dense(src.shape, dst.strides, contiguous):
            nbytes = src.layout.size * ITEMSIZE[src.dtype]
            memcpy(self.b, self.address(dst, const(dst_offset)), src.ptr, nbytes)
            return
        with nest(self.b, src.shape, [dst.strides, src.strides], bases=[dst_offset, 0]) as (d, s):
            self.store(dst, d, self.load(src, s))

    def fill(self, dst: Operand, value: ir.Value) -> None:
        if dst.layout.size == 0:
            return
        with nest(self.b, dst.shape, [dst.strides]) as (d,):
            self.store(dst, d, value)


def _dense(shape: Sequence[int], strides: Sequence[int], contiguous: Sequence[int]) -> bool:
    return all(n == 1 or st == c for n, st, c in zip(shape, strides, contiguous))


def memcpy(b: ir.IRBuilder, dst: ir.Value, src: ir.Value, nbytes: int) -> None:
    ptr = ir.PointerType()
    fn = declare(b.module, "llvm.memcpy.p0.p0.i64", ir.VoidType(), [ptr, ptr, I64, ir.IntType(1)])
    b.call(fn, [dst, src, const(nbytes), ir.Constant(ir.IntType(1), 0)])


ViewRule = Callable[[dict, Sequence[Layout], Sequence[Any], Any], "Layout | None"]
ScratchRule = Callable[[Any, dict, Sequence[Layout], Sequence[Any], Any], int]
InPlaceRule = Callable[[dict, Sequence[Layout], Sequence[Any], Any], "tuple[int, ...]"]


@dataclass(frozen=True)
class Lowering:
    op: str
    emit: Callable[[KernelCtx], Any] | None = None
    view: ViewRule | None = None  # (attrs, operand layouts, operand types, result type) -> Layout | None
    scratch: ScratchRule | None = None  # (module_builder, attrs, layouts, types, result type) -> bytes
    may_fail: bool = False  # the kernel returns an i32 status (0 = success)
    source: bool = False  # no operands; `emit_source` gives the value instead
    # (attrs, operand layouts, operand types, result type) -> indices of operands whose buffer
    # the result may overwrite when that operand dies at this step (in-place execution).
    # The kernel must then be correct with `out` aliasing that operand.
    in_place: InPlaceRule | None = None


LOWERINGS: dict[str, Lowering] = {}


def register(lowering: Lowering) -> Lowering:
    if lowering.op in LOWERINGS:
        raise ValueError(f"lowering for {lowering.op!r} registered twice")
    LOWERINGS[lowering.op] = lowering
    return lowering


def broadcast_strides(layout: Layout, shape: Sequence[int]) -> tuple[int, ...]:
    """The operand's strides over a result `shape` it broadcasts to (numpy's rule)."""
    lead = len(shape) - len(layout.shape)
    strides = [0] * lead
    for d, s, n in zip(layout.shape, layout.strides, shape[lead:]):
        strides.append(0 if d == 1 and n != 1 else s)
    return tuple(strides)


# ---------------------------------------------------------------- elementwise
def emit_elementwise(ctx: KernelCtx) -> None:
    out = ctx.out
    if out.layout.size == 0:
        return
    rule = SCALAR_OPS[ctx.op]
    strides = [out.strides] + [broadcast_strides(o.layout, out.shape) for o in ctx.ins]

    def element(c: KernelCtx, offsets: list[ir.Value]) -> None:  # big ones on all cores: parallel_loops.py
        values = [c.load(o, off) for o, off in zip(c.ins, offsets[1:])]
        c.store(c.out, offsets[0], rule(c.scalar(), *values))

    split_nest(ctx, out.shape, strides, element, nest_bytes(ctx, out.layout.size), stem="ew")


def elementwise_in_place(attrs: dict, layouts: Sequence[Layout], types: Sequence[Any], result: Any) -> tuple[int, ...]:
    """Operands read at the result's own index (same shape: not broadcast) with its element
    size. The loop body loads every operand of an element before its one store there, so
    `out` may be such an operand's buffer; a broadcast operand would be read again after
    its element was overwritten."""
    size = np.dtype(result.dtype).itemsize
    return tuple(i for i, t in enumerate(types)
                 if tuple(t.shape) == tuple(result.shape) and np.dtype(t.dtype).itemsize == size)


def _emit_copy(ctx: KernelCtx) -> None:
    from compiler.codegen.matmul import transposed_copy  # matmul.py builds on this module

    if not transposed_copy(ctx):
        emit_elementwise(ctx)


def _register_elementwise() -> None:
    for name in SCALAR_OPS:
        if name == "copy":  # into an output, or a transposed matmul operand made contiguous (emit.py)
            register(Lowering(name, emit=_emit_copy))
        elif name != "stop_gradient":
            register(Lowering(name, emit=emit_elementwise, in_place=elementwise_in_place))


_register_elementwise()


# The fusion rules live in compiler/codegen/fused.py, which builds on this module: imported
# when first used.
def _emit_fusion(ctx: KernelCtx) -> None:
    from compiler.codegen.fused import emit_fusion

    emit_fusion(ctx)


def _fusion_scratch(module_builder: Any, attrs: dict, layouts: Sequence[Layout], types: Sequence[Any],
                    result: Any) -> int:
    from compiler.codegen.fused import fusion_scratch

    return fusion_scratch(module_builder, attrs, layouts, types, result)


def _fusion_in_place(attrs: dict, layouts: Sequence[Layout], types: Sequence[Any], result: Any) -> tuple[int, ...]:
    from compiler.codegen.fused import fusion_in_place

    return fusion_in_place(attrs, layouts, types, result)


register(Lowering("fusion", emit=_emit_fusion, scratch=_fusion_scratch, in_place=_fusion_in_place))

# ---------------------------------------------------------------- views
register(Lowering("stop_gradient", emit=emit_elementwise, view=lambda attrs, ls, ts, t: ls[0]))


def _transpose(attrs: dict, layouts: Sequence[Layout], types: Sequence, result: Any) -> Layout:
    (x,) = layouts
    perm = attrs["perm"]
    return Layout(tuple(x.shape[p] for p in perm), tuple(x.strides[p] for p in perm), x.offset)


def _broadcast_to(attrs: dict, layouts: Sequence[Layout], types: Sequence, result: Any) -> Layout:
    (x,) = layouts
    shape = tuple(attrs["shape"])
    return Layout(shape, broadcast_strides(x, shape), x.offset)


def _squeeze(attrs: dict, layouts: Sequence[Layout], types: Sequence, result: Any) -> Layout:
    (x,) = layouts
    keep = [i for i in range(len(x.shape)) if i not in attrs["axes"]]
    return Layout(tuple(x.shape[i] for i in keep), tuple(x.strides[i] for i in keep), x.offset)


def _expand_dims(attrs: dict, layouts: Sequence[Layout], types: Sequence, result: Any) -> Layout:
    (x,) = layouts
    dims, strides = iter(zip(x.shape, x.strides)), []
    for axis in range(len(result.shape)):
        strides.append(0 if axis in attrs["axes"] else next(dims)[1])
    return Layout(tuple(result.shape), tuple(strides), x.offset)


def _slice(attrs: dict, layouts: Sequence[Layout], types: Sequence, result: Any) -> Layout:
    (x,) = layouts
    offset = x.offset
    strides = []
    for n, stride, start, step in zip(result.shape, x.strides, attrs["starts"], attrs["steps"]):
        if n:
            offset += start * stride
        strides.append(stride * step)
    return Layout(tuple(result.shape), tuple(strides), offset)


def _reshape_view(attrs: dict, layouts: Sequence[Layout], types: Sequence, result: Any) -> Layout | None:
    (x,) = layouts
    return Layout.contiguous(result.shape, x.offset) if x.is_contiguous() else None


def _emit_reshape(ctx: KernelCtx) -> None:
    """A non-contiguous operand: copy it in row-major order into the result buffer."""
    (x,) = ctx.ins
    ctx.copy(ctx.out.relayout(Layout.contiguous(x.shape)), x)


for _name, _rule in [("transpose", _transpose), ("broadcast_to", _broadcast_to), ("squeeze", _squeeze),
                     ("expand_dims", _expand_dims), ("slice", _slice)]:
    register(Lowering(_name, view=_rule))
register(Lowering("reshape", view=_reshape_view, emit=_emit_reshape))


# ---------------------------------------------------------------- sources
def constant_bytes(op: str, attrs: dict, dtype: str) -> tuple[bytes, bool]:
    """(little-endian element bytes, broadcast?) of a `full` (one element) or `constant`."""
    if op == "full":
        return np.asarray(attrs["value"]).astype(dtype).tobytes(), True
    array = np.ascontiguousarray(np.asarray(attrs["value"]).astype(dtype))
    if dtype == "bool":
        array = array.astype(np.uint8)
    return array.astype(array.dtype.newbyteorder("<")).tobytes(), False


register(Lowering("full", source=True))
register(Lowering("constant", source=True))
register(Lowering("input", source=True))


def normalize_index(ctx: KernelCtx, raw: ir.Value, n: int) -> ir.Value:
    """numpy's negative wrap, then a clip into [0, n-1]: never out of bounds."""
    b = ctx.b
    i = b.sext(raw, I64) if raw.type.width < 64 else raw
    i = b.select(b.icmp_signed("<", i, const(0)), b.add(i, const(n)), i)
    i = b.select(b.icmp_signed("<", i, const(0)), const(0), i)
    return b.select(b.icmp_signed(">", i, const(n - 1)), const(max(n - 1, 0)), i)


__all__ = ["LOWERINGS", "Lowering", "KernelCtx", "Operand", "register", "contiguous_strides", "broadcast_strides",
           "elementwise_in_place"]
