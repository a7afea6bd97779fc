"""Kernel rules of the shape, reduction and matmul ops (see lower.py for the protocol).

Reductions (sum, mean, max, min) walk their operand once in memory order and accumulate
into the zero-initialized (identity-initialized) result through stride-0 axes, so
reducing a leading axis reads contiguously and reducing the last axis becomes a register
reduction after LLVM promotes the result element. Float sums carry the `reassoc` flag so
LLVM may vectorize them with partial sums (numpy's pairwise summation reorders too); max
and min use llvm.maximum/llvm.minimum, which propagate NaN as numpy.max does.

logsumexp and the softmax family loop over the kept elements outside and the reduced
axes inside, in three passes: the maximum (replaced by 0 when not finite, as the
reference does), the sum of exp(x - max), then the result.

matmul is a loop nest ordered batch-i-k-j: out[i, :] += a[i, k] * b[k, :], whose inner
loop runs along contiguous rows of b and out and vectorizes. A b whose rows are not
contiguous (a transpose view) is first copied into the kernel's scratch.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from llvmlite import ir

from compiler.codegen import scalar as S
from compiler.codegen.loops import Layout, const, contiguous_strides, nest
from compiler.codegen.lower import KernelCtx, Lowering, broadcast_strides, normalize_index, register

# ---------------------------------------------------------------- shape ops
def _emit_pad(ctx: KernelCtx) -> None:
    (x,) = ctx.ins
    out = ctx.out
    value = np.asarray(ctx.attrs["value"]).astype(out.dtype).item()
    ctx.fill(out, ctx.scalar([out.dtype]).const(value))
    if x.layout.size == 0:
        return
    strides = out.strides
    offset = sum(lo * s for lo, s in zip(ctx.attrs["low"], strides))
    inner = tuple(s * (i + 1) for s, i in zip(strides, ctx.attrs["interior"]))
    _copy_at(ctx, out, Layout(x.shape, inner), offset, x)


def _copy_at(ctx: KernelCtx, out: Any, layout: Layout, offset: int, x: Any) -> None:
    with nest(ctx.b, x.shape, [layout.strides, x.strides], bases=[offset, 0]) as (d, s):
        ctx.store(out, d, ctx.load(x, s))


def _emit_concatenate(ctx: KernelCtx) -> None:
    axis = ctx.attrs["axis"]
    out = ctx.out
    position = 0
    for x in ctx.ins:
        if x.layout.size:
            _copy_at(ctx, out, Layout(x.shape, out.strides), position * out.strides[axis], x)
        position += x.shape[axis]


def _emit_take(ctx: KernelCtx) -> None:
    a, idx = ctx.ins
    out = ctx.out
    if out.layout.size == 0:
        return
    axis, r = ctx.attrs["axis"], len(idx.shape)
    tail = len(a.shape) - axis - 1
    a_strides = a.strides[:axis] + (0,) * r + a.strides[axis + 1:]
    idx_strides = (0,) * axis + idx.strides + (0,) * tail
    n, step = a.shape[axis], a.strides[axis]
    with nest(ctx.b, out.shape, [out.strides, a_strides, idx_strides]) as (o, src, i):
        row = normalize_index(ctx, ctx.load(idx, i), n)
        src = ctx.b.add(src, ctx.b.mul(row, const(step)))
        ctx.store(out, o, ctx.load(a, src))


def _emit_scatter_add(ctx: KernelCtx) -> None:
    updates, idx = ctx.ins
    out = ctx.out
    sc = ctx.scalar([out.dtype])
    ctx.fill(out, sc.const(0))
    if updates.layout.size == 0:
        return
    axis, r, size = ctx.attrs["axis"], len(idx.shape), ctx.attrs["size"]
    tail = len(out.shape) - axis - 1
    out_strides = out.strides[:axis] + (0,) * r + out.strides[axis + 1:]
    idx_strides = (0,) * axis + idx.strides + (0,) * tail
    with nest(ctx.b, updates.shape, [updates.strides, out_strides, idx_strides]) as (u, o, i):
        row = normalize_index(ctx, ctx.load(idx, i), size)
        o = ctx.b.add(o, ctx.b.mul(row, const(out.strides[axis])))
        ctx.store(out, o, S.add(sc, ctx.load(out, o), ctx.load(updates, u)))


register(Lowering("pad", emit=_emit_pad))
register(Lowering("concatenate", emit=_emit_concatenate))
register(Lowering("take", emit=_emit_take))
register(Lowering("scatter_add", emit=_emit_scatter_add))


# ---------------------------------------------------------------- reductions
def _strides_over_input(shape: Sequence[int], axes: Sequence[int], keepdims: bool) -> tuple[int, ...]:
    """The result's (contiguous) strides as seen from each input axis; 0 on reduced axes."""
    out_shape = [1 if i in axes else d for i, d in enumerate(shape)] if keepdims else \
        [d for i, d in enumerate(shape) if i not in axes]
    out_strides = list(contiguous_strides(out_shape))
    result, k = [], 0
    for i in range(len(shape)):
        if i in axes:
            result.append(0)
            if keepdims:
                k += 1
        else:
            result.append(out_strides[k])
            k += 1
    return tuple(result)


_IDENTITY = {"sum": 0, "mean": 0, "max": -np.inf, "min": np.inf}


def _identity(op: str, dtype: str) -> float | int:
    value = _IDENTITY[op]
    if not S.is_float(dtype) and op in ("max", "min"):
        info = np.iinfo(dtype)
        return int(info.min if op == "max" else info.max)
    return value


def _emit_reduce(ctx: KernelCtx) -> None:
    (x,) = ctx.ins
    out = ctx.out
    op, axes, keepdims = ctx.op, ctx.attrs["axes"], ctx.attrs["keepdims"]
    sc = ctx.scalar()
    ctx.fill(out, sc.const(_identity(op, x.dtype)))
    if x.layout.size:
        combine = {"max": S.maximum, "min": S.minimum}.get(op)
        with nest(ctx.b, x.shape, [x.strides, _strides_over_input(x.shape, axes, keepdims)]) as (i, o):
            acc, value = ctx.load(out, o), ctx.load(x, i)
            if combine is None:
                result = S.add(sc, acc, value, flags=("reassoc",) if S.is_float(x.dtype) else ())
            else:
                result = combine(sc, acc, value)
            ctx.store(out, o, result)
    if op == "mean" and out.layout.size:
        count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
        with nest(ctx.b, out.shape, [out.strides]) as (o,):
            ctx.store(out, o, ctx.b.fdiv(ctx.load(out, o), sc.const(count)))


for _op in ("sum", "mean", "max", "min"):
    register(Lowering(_op, emit=_emit_reduce))


def _split(x: Any, axes: Sequence[int]) -> tuple[tuple, tuple, tuple, tuple]:
    """(kept shape, kept strides, reduced shape, reduced strides) of operand x."""
    kept = [i for i in range(len(x.shape)) if i not in axes]
    return (tuple(x.shape[i] for i in kept), tuple(x.strides[i] for i in kept),
            tuple(x.shape[i] for i in axes), tuple(x.strides[i] for i in axes))


def _stable_max(ctx: KernelCtx, sc: S.Scalar, x: Any, base: ir.Value, shape: tuple, strides: tuple) -> ir.Value:
    """max over the reduced axes from `base`, replaced by 0 when not finite."""
    slot = ctx.local(sc.type, sc.const(-np.inf), "max")
    if int(np.prod(shape, dtype=np.int64)):
        with nest(ctx.b, shape, [strides], bases=[base]) as (i,):
            ctx.b.store(S.maximum(sc, ctx.b.load(slot, typ=sc.type), ctx.load(x, i)), slot)
    m = ctx.b.load(slot, typ=sc.type)
    return ctx.b.select(S.is_finite(sc, m), m, sc.const(0.0))


def _sum_exp(ctx: KernelCtx, sc: S.Scalar, x: Any, base: ir.Value, shape: tuple, strides: tuple, m: ir.Value,
             out: Any = None, out_base: ir.Value | None = None, out_strides: tuple = ()) -> ir.Value:
    """sum(exp(x - m)) over the reduced axes; optionally stores each exp(x - m) into out."""
    slot = ctx.local(sc.type, sc.const(0.0), "sum")
    if int(np.prod(shape, dtype=np.int64)):
        all_strides = [strides] + ([out_strides] if out is not None else [])
        bases = [base] + ([out_base] if out is not None else [])
        with nest(ctx.b, shape, all_strides, bases=bases) as offsets:
            e = sc.intrinsic("exp", ctx.b.fsub(ctx.load(x, offsets[0]), m))
            if out is not None:
                ctx.store(out, offsets[1], e)
            ctx.b.store(ctx.b.fadd(ctx.b.load(slot, typ=sc.type), e, flags=("reassoc",)), slot)
    return ctx.b.load(slot, typ=sc.type)


def _emit_logsumexp(ctx: KernelCtx) -> None:
    (x,) = ctx.ins
    out = ctx.out
    if out.layout.size == 0:
        return
    sc = ctx.scalar()
    kept_shape, kept_strides, red_shape, red_strides = _split(x, ctx.attrs["axes"])
    with nest(ctx.b, kept_shape, [contiguous_strides(kept_shape), kept_strides]) as (o, base):
        m = _stable_max(ctx, sc, x, base, red_shape, red_strides)
        s = _sum_exp(ctx, sc, x, base, red_shape, red_strides, m)
        ctx.store(out, o, ctx.b.fadd(sc.intrinsic("log", s), m))


def _emit_softmax(ctx: KernelCtx) -> None:
    (x,) = ctx.ins
    out = ctx.out
    if out.layout.size == 0:
        return
    sc = ctx.scalar()
    axis = ctx.attrs["axis"]
    kept_shape, kept_strides, red_shape, red_strides = _split(x, (axis,))
    _, out_kept, _, out_red = _split(out, (axis,))
    with nest(ctx.b, kept_shape, [out_kept, kept_strides]) as (o, base):
        m = _stable_max(ctx, sc, x, base, red_shape, red_strides)
        if ctx.op == "softmax":
            s = _sum_exp(ctx, sc, x, base, red_shape, red_strides, m, out, o, out_red)
            with nest(ctx.b, red_shape, [out_red], bases=[o]) as (j,):
                ctx.store(out, j, ctx.b.fdiv(ctx.load(out, j), s))
        else:
            log_s = sc.intrinsic("log", _sum_exp(ctx, sc, x, base, red_shape, red_strides, m))
            with nest(ctx.b, red_shape, [out_red, red_strides], bases=[o, base]) as (j, i):
                ctx.store(out, j, ctx.b.fsub(ctx.b.fsub(ctx.load(x, i), m), log_s))


register(Lowering("logsumexp", emit=_emit_logsumexp))
register(Lowering("softmax", emit=_emit_softmax))
register(Lowering("log_softmax", emit=_emit_softmax))


# ---------------------------------------------------------------- matmul
def _b_needs_copy(b_layout: Layout) -> bool:
    return b_layout.shape[-1] > 1 and b_layout.strides[-1] != 1


def _matmul_scratch(module_builder: Any, attrs: dict, layouts: Sequence[Layout], types: Sequence, result: Any) -> int:
    b_layout = layouts[1]
    return b_layout.size * S.ITEMSIZE[types[1].dtype] if _b_needs_copy(b_layout) else 0


def _emit_matmul(ctx: KernelCtx) -> None:
    a, bm = ctx.ins
    out = ctx.out
    if out.layout.size == 0:
        return
    builder = ctx.b
    sc = ctx.scalar()
    flags = ("contract",) if S.is_float(out.dtype) else ()
    if _b_needs_copy(bm.layout):
        dense = ctx.scratch_operand(0, Layout.contiguous(bm.shape), bm.dtype)
        ctx.copy(dense, bm)
        bm = dense
    m, k_dim, n = a.shape[-2], a.shape[-1], bm.shape[-1]
    batch = out.shape[:-2]
    batch_strides = [out.strides[:-2], broadcast_strides(Layout(a.shape[:-2], a.strides[:-2]), batch),
                     broadcast_strides(Layout(bm.shape[:-2], bm.strides[:-2]), batch)]
    a_row, a_col = a.strides[-2], a.strides[-1]
    b_row, b_col = bm.strides[-2], bm.strides[-1]
    zero = sc.const(0)
    with nest(builder, batch, batch_strides, merge=False) as (ob, ab, bb):
        with nest(builder, (m,), [(out.strides[-2],), (a_row,)], bases=[ob, ab]) as (orow, arow):
            with nest(builder, (n,), [(1,)], bases=[orow]) as (o,):
                ctx.store(out, o, zero)
            if k_dim:
                with nest(builder, (k_dim,), [(a_col,), (b_row,)], bases=[arow, bb]) as (ai, brow):
                    aik = ctx.load(a, ai)
                    with nest(builder, (n,), [(1,), (b_col,)], bases=[orow, brow]) as (o, bj):
                        product = S.mul(sc, aik, ctx.load(bm, bj), flags=flags)
                        ctx.store(out, o, S.add(sc, ctx.load(out, o), product, flags=flags))


register(Lowering("matmul", emit=_emit_matmul, scratch=_matmul_scratch))
