"""Loop nests over static shapes with strided operands.

Every operand of a loop nest is described by a `Layout`: a shape, strides in elements
(0 for a broadcast axis, negative for a reversed one) and an offset in elements from its
buffer's base. `nest` emits one counted loop per axis, after dropping size-1 axes and
merging axes that are contiguous for every operand (so a contiguous elementwise op over
[64, 256] is one loop of 16384), and yields each operand's element offset at the
innermost point. Offsets are built level by level, so each stays an affine function of
the induction variables that LLVM's scalar evolution and vectorizer understand.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from llvmlite import ir

I64 = ir.IntType(64)
I32 = ir.IntType(32)
I8 = ir.IntType(8)
I1 = ir.IntType(1)


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides, step = [], 1
    for dim in reversed(shape):
        strides.append(step)
        step *= dim
    return tuple(reversed(strides))


@dataclass(frozen=True)
class Layout:
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int = 0

    @staticmethod
    def contiguous(shape: Sequence[int], offset: int = 0) -> "Layout":
        return Layout(tuple(shape), contiguous_strides(shape), offset)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def is_contiguous(self) -> bool:
        """Row-major dense (size-1 axes may have any stride)."""
        return all(d == 1 or s == c for d, s, c in zip(self.shape, self.strides, contiguous_strides(self.shape)))


def simplify(shape: Sequence[int], strides_list: Sequence[Sequence[int]]) -> tuple[list[int], list[list[int]]]:
    """Drop size-1 axes and merge axes contiguous for every operand (same iteration order)."""
    dims: list[int] = []
    out: list[list[int]] = [[] for _ in strides_list]
    for axis, n in enumerate(shape):
        if n == 1:
            continue
        if dims and all(s[-1] == st[axis] * n for s, st in zip(out, strides_list)):
            dims[-1] *= n
            for s, st in zip(out, strides_list):
                s[-1] = st[axis]
            continue
        dims.append(n)
        for s, st in zip(out, strides_list):
            s.append(st[axis])
    return dims, out


def declare(module: ir.Module, name: str, ret: ir.Type, args: Sequence[ir.Type]) -> ir.Function:
    """The module's function `name` (an intrinsic or a library function), declared once."""
    existing = module.globals.get(name)
    return existing if existing is not None else ir.Function(module, ir.FunctionType(ret, list(args)), name=name)


def const(value: int) -> ir.Constant:
    return ir.Constant(I64, value)


@contextlib.contextmanager
def for_range(b: ir.IRBuilder, count: int | ir.Value, name: str = "i") -> Iterator[ir.Value]:
    """A counted loop 0..count-1 (count > 0 when static); yields the i64 induction variable.

    Emitted bottom-tested (already rotated). A dynamic `count` is guarded for zero.
    """
    if isinstance(count, int):
        if count == 1:
            yield const(0)
            return
        n = const(count)
        guard = None
    else:
        n = count
        guard = b.icmp_signed(">", n, const(0))
    pre = b.block
    header = b.append_basic_block(f"{name}.loop")
    if guard is None:
        b.branch(header)
    else:
        skip = b.append_basic_block(f"{name}.skip")
        b.cbranch(guard, header, skip)
    b.position_at_end(header)
    index = b.phi(I64, name=name)
    index.add_incoming(const(0), pre)
    yield index
    following = b.add(index, const(1), name=f"{name}.next", flags=("nuw", "nsw"))
    latch = b.block
    done = b.icmp_signed("<", following, n)
    exit_block = b.append_basic_block(f"{name}.end")
    b.cbranch(done, header, exit_block)
    index.add_incoming(following, latch)
    b.position_at_end(exit_block)
    if guard is not None:
        b.branch(skip)
        b.position_at_end(skip)


@contextlib.contextmanager
def nest(b: ir.IRBuilder, shape: Sequence[int], strides_list: Sequence[Sequence[int]],
         bases: Sequence[ir.Value | int] | None = None, merge: bool = True) -> Iterator[list[ir.Value]]:
    """Loops over `shape`; yields one i64 element offset per operand (strides_list entry).

    The caller must not call this for an empty shape (any dimension 0). `bases` are
    starting offsets (default 0). merge=False keeps every axis (for bodies that need
    per-axis indices; they get them from the offsets of unit-stride pseudo-operands).
    """
    if merge:
        dims, strides = simplify(shape, strides_list)
    else:
        dims, strides = list(shape), [list(s) for s in strides_list]
    offsets: list[ir.Value] = [b_ if isinstance(b_, ir.Value) else const(b_)
                               for b_ in (bases if bases is not None else [0] * len(strides_list))]
    with contextlib.ExitStack() as stack:
        for level, n in enumerate(dims):
            i = stack.enter_context(for_range(b, n, name=f"l{level}"))
            next_offsets = []
            for off, st in zip(offsets, strides):
                stride = st[level]
                if stride == 0 or n == 1:
                    next_offsets.append(off)
                else:
                    step = i if stride == 1 else b.mul(i, const(stride), flags=("nsw",))
                    next_offsets.append(b.add(off, step, flags=("nsw",)))
            offsets = next_offsets
        yield offsets


def carry_loop(b: ir.IRBuilder, count: int, state: list[ir.Value],
               body: Callable[[list[ir.Value], ir.Value | int], list[ir.Value]]) -> list[ir.Value]:
    """state = body(state, i) for i in 0..count-1 with the state in phis (registers, for
    accumulators of matmul and conv micro-kernels);
    count 1 is emitted without a loop, 0 returns state unchanged."""
    if count <= 0:
        return state
    if count == 1:
        return body(state, 0)
    fn = b.function
    pre = b.block
    loop = fn.append_basic_block("carry.loop")
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(I64, name="i")
    i.add_incoming(const(0), pre)
    phis = [b.phi(v.type) for v in state]
    new = body(list(phis), i)
    latch = b.block
    for phi, init, value in zip(phis, state, new):
        phi.add_incoming(init, pre)
        phi.add_incoming(value, latch)
    following = b.add(i, const(1), flags=("nuw", "nsw"))
    i.add_incoming(following, latch)
    done = fn.append_basic_block("carry.end")
    b.cbranch(b.icmp_signed("<", following, const(count)), loop, done)
    b.position_at_end(done)
    return new
