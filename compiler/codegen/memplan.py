"""Workspace planning: every intermediate buffer gets a 64-byte-aligned offset in one
workspace, fixed at compile time.

Liveness-based best fit: buffers are placed in order of their first use (the position
of the op that writes them) and are free again after their last use (the last op that
reads them, through any view). Free space is a sorted list of coalesced gaps; a buffer
takes the smallest gap that fits (the lowest of equal ones), else the free tail of the
workspace, else grows it. Best fit rather than first fit: short-lived temporaries then
fill the holes their own size left instead of splitting the big holes that long-lived
activations need, which on an unrolled RNN's backward pass gives a ~10% smaller
workspace and fewer gaps to scan. Scanning gaps, not live buffers, keeps planning
near-linear even when hundreds of activations stay live through a backward pass.

Ops inside a `fusion` are not values of the graph, so they get no buffers at all.

In-place execution (`share_in_place`, run before offsets are assigned): a step whose
lowering lists an operand in `Lowering.in_place` writes its result over that operand's
buffer when all of these hold, so a chain of elementwise ops (or a running sum) lives in
one buffer instead of two at a time:
- the operand's buffer is a workspace buffer (never an input, output or global constant);
- this step is the buffer's last use: no later step reads it through any view, and no
  output copy does (graph outputs that are copied out keep their buffer to the end);
- the operand is read through a layout covering the whole buffer exactly as the result
  is written (same shape, contiguous, offset 0, same element size and byte size), and
  every other operand reading that buffer in this step reads it the same way (a
  transposed or broadcast reader of the dying buffer blocks it: it would read elements
  the kernel has already overwritten).
The result buffer then `shares` the operand's buffer (its root, for chains), whose
lifetime grows to cover the result's. The step records which operands alias `out`
(`aliased`): their kernels are built without `noalias` on `out` (the other operands get
it instead) and read those operands through the `out` pointer itself, so LLVM sees a
distance-0 dependence it can vectorize rather than two pointers it must check at run time.
"""
from __future__ import annotations

import bisect
import heapq
from collections import Counter
from typing import Any, Protocol, Sequence

import numpy as np

ALIGNMENT = 64


class Planned(Protocol):
    nbytes: int
    first: int
    last: int
    offset: int


def align(n: int, to: int = ALIGNMENT) -> int:
    return (n + to - 1) // to * to


class _Arena:
    def __init__(self) -> None:
        self.starts: list[int] = []  # free gaps [starts[i], ends[i]), sorted, coalesced
        self.ends: list[int] = []
        self.top = 0  # everything at or past top is free
        self.peak = 0

    def allocate(self, size: int) -> int:
        starts, ends = self.starts, self.ends
        best, best_size = -1, 0
        for i in range(len(starts)):
            gap = ends[i] - starts[i]
            if gap >= size and (best < 0 or gap < best_size):
                best, best_size = i, gap
                if gap == size:
                    break
        if best >= 0:
            offset = starts[best]
            if best_size == size:
                del starts[best], ends[best]
            else:
                starts[best] = offset + size
            return offset
        offset = self.top
        if ends and ends[-1] == self.top:  # a free tail: grow it instead
            offset = starts.pop()
            ends.pop()
        self.top = offset + size
        self.peak = max(self.peak, self.top)
        return offset

    def free(self, offset: int, size: int) -> None:
        starts, ends = self.starts, self.ends
        end = offset + size
        if end == self.top:
            self.top = offset
            if ends and ends[-1] == offset:  # the tail gap joins the free top
                self.top = starts.pop()
                ends.pop()
            return
        i = bisect.bisect_left(starts, offset)
        if i > 0 and ends[i - 1] == offset:
            i -= 1
            ends[i] = end
        else:
            starts.insert(i, offset)
            ends.insert(i, end)
        if i + 1 < len(starts) and starts[i + 1] == ends[i]:
            ends[i] = ends[i + 1]
            del starts[i + 1], ends[i + 1]


def assign_offsets(buffers: Sequence[Planned]) -> int:
    """Set each buffer's `offset`; return the workspace size in bytes.

    A buffer whose `shares` attribute names another buffer (an in-place result) is not
    placed itself: it takes that buffer's offset. A buffer `within` another (an embedded
    concatenation operand) takes its slab's offset inside that buffer."""
    arena = _Arena()
    expiry: list[tuple[int, int, int, int]] = []  # (last, serial, offset, size)
    owners = [b for b in buffers if getattr(b, "shares", None) is None and getattr(b, "within", None) is None]
    ordered = sorted((b for b in owners if b.nbytes > 0), key=lambda b: b.first)
    for b in owners:
        if b.nbytes <= 0:
            b.offset = 0
    for serial, buf in enumerate(ordered):
        while expiry and expiry[0][0] < buf.first:
            _, _, offset, size = heapq.heappop(expiry)
            arena.free(offset, size)
        size = align(buf.nbytes)
        buf.offset = arena.allocate(size)
        heapq.heappush(expiry, (max(buf.last, buf.first), serial, buf.offset, size))
    for b in buffers:
        shared = getattr(b, "shares", None)
        if shared is not None:
            b.offset = shared.offset
    for b in buffers:
        if getattr(b, "within", None) is not None:
            b.offset = _embedded_offset(b)
    return arena.peak


def _embedded_offset(buffer: Any) -> int:
    offset = 0
    while buffer.within is not None:
        parent, at = buffer.within
        offset += at
        buffer = parent
    return offset + buffer.offset


def embed_operands(steps: Sequence[Any]) -> int:
    """Place `concatenate` operands inside the result, so their producers write the
    result's slabs and the concatenation copies nothing for them (XLA's and TVM's
    in-place concatenation). Runs after every buffer's last reader is known and before
    `share_in_place`, which leaves embedded buffers alone.

    An operand embeds when its buffer is a workspace buffer read whole and contiguously
    by this step alone among its operands, its slab of the result is one contiguous,
    64-byte-aligned run (everything before `axis` has extent 1), and it is not embedded
    elsewhere; the result must be a workspace buffer, and the operands that qualify must
    make up at least half of it. The outermost buffer's lifetime
    then grows to cover every buffer embedded in it, directly or through another
    concatenation. Sets `buffer.within = (parent, byte offset)` and `step.embedded`;
    returns how many operands embed."""
    count = 0
    for step in steps:
        out = step.out
        if step.op != "concatenate" or out.buffer.kind != "workspace" or out.buffer.nbytes <= 0:
            continue
        axis = step.attrs["axis"]
        if any(n != 1 for n in out.layout.shape[:axis]):
            continue
        itemsize = np.dtype(out.dtype).itemsize
        slab_stride = out.layout.strides[axis] * itemsize
        readers = Counter(id(v.buffer) for v in step.ins)
        eligible = []
        position = 0
        for index, value in enumerate(step.ins):
            buffer, at = value.buffer, position * slab_stride
            position += value.layout.shape[axis]
            if (buffer.kind != "workspace" or buffer.within is not None or buffer is out.buffer
                    or readers[id(buffer)] != 1 or at % ALIGNMENT or not _whole(value)):
                continue
            eligible.append((index, buffer, at))
        # Embedding stretches the result's lifetime back to its earliest embedded operand:
        # worth it when the producers build most of the result, not for a stray slab (an
        # RNN's second, shifted stack of states would otherwise live from the forward pass)
        if 2 * sum(buffer.nbytes for _, buffer, _ in eligible) < out.buffer.nbytes:
            eligible = []
        for _, buffer, at in eligible:
            buffer.within = (out.buffer, at)
        step.embedded = tuple(index for index, _, _ in eligible)
        count += len(eligible)
    for step in steps:
        for index in step.embedded:
            buffer = step.ins[index].buffer
            top = buffer
            while top.within is not None:
                top = top.within[0]
            top.first = min(top.first, buffer.first)
            top.last = max(top.last, buffer.last)
    return count


def _whole(value: Any) -> bool:
    layout = value.layout
    nbytes = int(np.prod(layout.shape, dtype=np.int64)) * np.dtype(value.dtype).itemsize
    return layout.offset == 0 and layout.is_contiguous() and value.buffer.nbytes == nbytes


def _covers(value: Any, out: Any) -> bool:
    """`value` reads its whole buffer element for element where `out` writes its own."""
    return (value.layout.shape == out.layout.shape and _whole(value)
            and np.dtype(value.dtype).itemsize == np.dtype(out.dtype).itemsize)


def share_in_place(steps: Sequence[Any]) -> int:
    """Let steps write their results over dying operands (rules: module docstring).

    `steps` are emit.Step objects in execution order, each with `position`, `candidates`
    (the operand indices its lowering allows), `out` and `ins` (Values: buffer, layout,
    dtype); buffers carry `kind`, `nbytes`, `last` (final: every reader and output copy
    counted) and `shares`. Sets `out.buffer.shares` and `step.aliased`; returns how many
    steps run in place."""
    count = 0
    for step in steps:
        out = step.out
        if not step.candidates or out.buffer.kind != "workspace" or out.buffer.nbytes <= 0:
            continue
        if out.buffer.within is not None:
            continue  # its place is a slab of a concatenation (embed_operands)
        for index in step.candidates:
            value = step.ins[index]
            buffer = value.buffer
            if (buffer.kind != "workspace" or buffer.within is not None or buffer.last != step.position
                    or not _covers(value, out)):
                continue
            readers = [j for j, v in enumerate(step.ins) if v.buffer is buffer]
            if any(not _covers(step.ins[j], out) for j in readers):
                continue  # another view of the dying buffer would read overwritten elements
            root = buffer.shares if buffer.shares is not None else buffer
            out.buffer.shares = root
            root.last = max(root.last, out.buffer.last)
            step.aliased = tuple(readers)
            count += 1
            break
    return count
