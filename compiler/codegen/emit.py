"""Graph -> one LLVM module: planning values onto buffers, and emitting the entry function.

Every value lives in a buffer with a Layout (lower.py): graph inputs in the caller's
input buffers, `constant`/`full` in LLVM global constants (a `full` is one element read
with stride 0), view ops in their operand's buffer, and every other op's result either
straight in the caller's output buffer (for a graph output) or in the workspace at an
offset planned by memplan.py, which also lets a step write its result over an operand
that dies there when the op's lowering allows it (in-place execution, `Lowering.in_place`),
and places a `concatenate`'s operands inside its result when it can, so their producers
write the result directly (memplan.embed_operands).
The entry function is a straight line of calls to kernel functions (one per distinct op
signature and aliasing, noinline, so LLVM's cost grows with the number of distinct
kernels, not with graph size), then copies for outputs that are not computed in place
(an input, a view, a constant, or one value returned twice).
A transposed view that several matmuls read as their B operand is copied once, before
the first of them, into a contiguous workspace buffer they all read (_materialize).
With profile=True every call is timed by cycle counters in a workspace region after the
planned buffers (profiling.py); the default build has no trace of it.

Entry ABI (shared with compiled fixed_point bodies):
    int32_t f(void **inputs, void **outputs, void *workspace)   // 0 = success
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from llvmlite import ir

from compiler.codegen import memplan, profiling
from compiler.codegen.loops import I8, I32, Layout, const
from compiler.codegen.lower import LOWERINGS, KernelCtx, Lowering, Operand, constant_bytes
from compiler.codegen.scalar import LLVM_TYPES
from compiler.errors import PullbackError
from compiler.ir.graph import Graph

PTR = ir.PointerType()
ENTRY_TYPE = ir.FunctionType(I32, [PTR, PTR, PTR])

# Non-zero statuses the native code returns (the runtime raises KernelError with the code)
STATUS = {
    1: "fixed_point did not converge within max_iter",
    2: "fixed_point iterate became non-finite (the map diverges from this start)",
}


class CodegenError(PullbackError):
    """The code generator cannot lower this graph (e.g. an op without a lowering rule)."""


@dataclass(eq=False)
class Buffer:
    kind: str  # "input" | "output" | "workspace" | "global"
    nbytes: int
    index: int = -1
    global_var: Any = None
    first: int = 0
    last: int = -1
    offset: int = 0
    shares: "Buffer | None" = None  # an in-place result: lives in this (workspace) buffer instead
    within: "tuple[Buffer, int] | None" = None  # a concatenation operand: lives at this byte offset of that buffer


@dataclass(frozen=True, eq=False)
class Value:
    buffer: Buffer
    layout: Layout
    dtype: str


@dataclass
class Step:
    op: str
    lowering: Lowering
    attrs: dict
    out: Value
    ins: list[Value]
    scratch: Buffer | None = None
    label: str = ""
    position: int = -1  # in the graph's topological order: the unit of buffer lifetimes
    candidates: tuple[int, ...] = ()  # operands the lowering lets the result overwrite
    aliased: tuple[int, ...] = ()  # operands the result does overwrite (they are read through `out`)
    embedded: tuple[int, ...] = ()  # concatenate operands already in place inside the result


def _hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, hashlib.sha256(value.tobytes()).hexdigest())
    if isinstance(value, Graph):
        return ("graph", id(value))
    if isinstance(value, float):
        return ("f", value.hex())
    return (type(value).__name__, value)


class ModuleBuilder:
    """One LLVM module: kernel functions (deduplicated), constants, compiled sub-graphs."""

    def __init__(self, name: str) -> None:
        # The module name is only a label, but llvmlite prints it unescaped into the IR text
        # (`; ModuleID = "..."`), where a newline or NUL would break or truncate the module.
        self.module = ir.Module(name=re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "graph")
        self._kernels: dict[Any, ir.Function] = {}
        self._globals: dict[tuple, ir.GlobalVariable] = {}
        self._bodies: dict[int, tuple[ir.Function, int, Graph]] = {}
        self._names: set[str] = set()

    def unique(self, stem: str) -> str:
        name, n = stem, 1
        while name in self._names:
            name, n = f"{stem}.{n}", n + 1
        self._names.add(name)
        return name

    # ---- constants
    def constant(self, data: bytes) -> ir.GlobalVariable:
        key = (len(data), hashlib.sha256(data).digest())
        existing = self._globals.get(key)
        if existing is not None:
            return existing
        typ = ir.ArrayType(I8, max(len(data), 1))
        gv = ir.GlobalVariable(self.module, typ, name=self.unique(f"const{len(self._globals)}"))
        gv.initializer = ir.Constant(typ, bytearray(data or b"\0"))
        gv.global_constant = True
        gv.linkage = "internal"
        gv.unnamed_addr = True
        gv.align = 64
        self._globals[key] = gv
        return gv

    # ---- sub-graphs (fixed_point bodies)
    def body_function(self, graph: Graph) -> tuple[ir.Function, int]:
        """`graph` compiled to an internal function with the entry ABI; (function, workspace bytes)."""
        entry = self._bodies.get(id(graph))
        if entry is None:
            emitter = GraphEmitter(self, graph)
            fn = emitter.emit(self.unique(f"body.{_clean(graph.name)}"), linkage="internal")
            entry = (fn, emitter.workspace_bytes, graph)  # keep the graph alive: its id is the key
            self._bodies[id(graph)] = entry
        return entry[0], entry[1]

    # ---- kernels
    def kernel(self, step: Step) -> ir.Function:
        ins = tuple((v.dtype, v.layout.shape, v.layout.strides) for v in step.ins)
        scratch = step.scratch.nbytes if step.scratch is not None else 0
        key = (step.op, _hashable(step.attrs), step.out.dtype, step.out.layout.shape, ins, scratch, step.aliased,
               step.embedded)
        fn = self._kernels.get(key)
        if fn is None:
            fn = self._build_kernel(step, scratch)
            self._kernels[key] = fn
        return fn

    def _build_kernel(self, step: Step, scratch: int) -> ir.Function:
        ret = I32 if step.lowering.may_fail else ir.VoidType()
        fnty = ir.FunctionType(ret, [PTR] * (len(step.ins) + 2))
        fn = ir.Function(self.module, fnty, name=self.unique(f"k.{step.op}"))
        fn.linkage = "internal"
        fn.attributes.add("noinline")
        fn.attributes.add("nounwind")
        out_arg, *in_args, scratch_arg = fn.args
        for arg in fn.args:
            arg.add_attribute("captures(none)")
        if not step.aliased:
            out_arg.add_attribute("noalias")  # the planner never overlaps a result with a live operand
        else:
            # `out` overlaps exactly the aliased operands (read through `out`, below); every
            # other operand is a distinct live buffer, so noalias moves to them and LLVM
            # still needs no run-time overlap check before vectorizing
            for i, arg in enumerate(in_args):
                if i not in step.aliased:
                    arg.add_attribute("noalias")
        scratch_arg.add_attribute("noalias")
        entry = fn.append_basic_block("entry")
        body = fn.append_basic_block("body")
        builder = ir.IRBuilder(entry)
        builder.branch(body)
        builder.position_at_end(body)
        ctx = KernelCtx(
            b=builder, op=step.op, attrs=dict(step.attrs),
            out=Operand(out_arg, Layout.contiguous(step.out.layout.shape), step.out.dtype),
            # an overwritten operand is read through `out` itself: one pointer, so LLVM sees
            # each element loaded before its own store instead of a possible overlap to check
            ins=[Operand(out_arg if i in step.aliased else arg, Layout(v.layout.shape, v.layout.strides), v.dtype)
                 for i, (arg, v) in enumerate(zip(in_args, step.ins))],
            scratch=scratch_arg if scratch else None, module_builder=self, entry_block=entry,
            embedded=step.embedded,
        )
        assert step.lowering.emit is not None
        step.lowering.emit(ctx)
        if not builder.block.is_terminated:
            if step.lowering.may_fail:
                builder.ret(ir.Constant(I32, 0))
            else:
                builder.ret_void()
        return fn


def _clean(name: str) -> str:
    # ASCII only: user text (graph names) never reaches an LLVM symbol unsanitized
    return re.sub(r"[^A-Za-z0-9_]", "_", name) or "graph"


class GraphEmitter:
    """Plans one graph's values onto buffers and emits its entry-ABI function."""

    def __init__(self, module_builder: ModuleBuilder, graph: Graph, in_place: bool | None = None,
                 profile: bool = False, embed: bool | None = None) -> None:
        self.mb = module_builder
        self.graph = graph
        self.in_place = IN_PLACE if in_place is None else in_place
        self.embed = EMBED if embed is None else embed
        self.profile = profile  # count cycles per call into a workspace region (profiling.py)
        self.profile_region = -1
        self.profile_steps: list[dict] = []  # per counter slot, filled by emit()
        self.steps: list[Step] = []
        self.copies: list[tuple[int, Value]] = []
        self.workspace_bytes = 0
        self.in_place_steps = 0
        self.embedded_operands = 0  # concatenate operands placed inside the result (memplan.embed_operands)
        self.materialized = 0  # transposed matmul operands copied once (_materialize)
        self._plan()

    # ---- planning
    def _needed(self, order: list[int]) -> set[int]:
        """Values the outputs depend on, plus ops that can fail (their error must surface)."""
        graph = self.graph
        roots = list(graph.outputs) + [n for n in order if LOWERINGS.get(graph.node(n).op, Lowering("")).may_fail]
        needed: set[int] = set()
        stack = roots
        while stack:
            node_id = stack.pop()
            if node_id in needed:
                continue
            needed.add(node_id)
            stack.extend(graph.node(node_id).operands)
        return needed

    def _plan(self) -> None:
        graph = self.graph
        order = graph.topo_order()
        needed = self._needed(order)
        input_slot = {node_id: i for i, node_id in enumerate(graph.inputs)}
        output_slot: dict[int, int] = {}
        for slot, node_id in enumerate(graph.outputs):
            output_slot.setdefault(node_id, slot)
        values: dict[int, Value] = {}
        workspace: list[Buffer] = []
        b_uses = _b_operand_uses(graph, [n for n in order if n in needed])
        for position, node_id in enumerate(order):
            if node_id not in needed:
                continue
            node = graph.node(node_id)
            lowering = LOWERINGS.get(node.op)
            if lowering is None:
                raise CodegenError(f"no lowering rule for op {node.op!r} (%{node_id}{_at(node.loc)})")
            t = node.type
            if node.op == "input":
                values[node_id] = Value(Buffer("input", t.nbytes, index=input_slot[node_id]),
                                        Layout.contiguous(t.shape), t.dtype)
                continue
            if node.op in ("full", "constant"):
                data, broadcast = constant_bytes(node.op, node.attrs, t.dtype)
                buffer = Buffer("global", len(data), global_var=self.mb.constant(data))
                layout = Layout(t.shape, (0,) * t.rank) if broadcast else Layout.contiguous(t.shape)
                values[node_id] = Value(buffer, layout, t.dtype)
                continue
            b_index = _b_operand(node)
            if b_index is not None:
                source = node.operands[b_index]
                if b_uses.get(source, 0) >= MATERIALIZE_MIN and _transposed(values[source]):
                    values[source] = self._materialize(source, values[source], position, workspace)
            operands = [values[o] for o in node.operands]
            types = [graph.node(o).type for o in node.operands]
            if lowering.view is not None:
                layout = lowering.view(node.attrs, [v.layout for v in operands], types, t)
                if layout is not None:
                    values[node_id] = Value(operands[0].buffer, layout, t.dtype)
                    continue
            if lowering.emit is None:
                raise CodegenError(f"op {node.op!r} (%{node_id}{_at(node.loc)}) has no kernel rule for this case")
            for v in operands:
                v.buffer.last = max(v.buffer.last, position)
            if node_id in output_slot:
                buffer = Buffer("output", t.nbytes, index=output_slot[node_id])
            else:
                buffer = Buffer("workspace", t.nbytes, first=position, last=position)
                workspace.append(buffer)
            scratch = None
            if lowering.scratch is not None:
                size = lowering.scratch(self.mb, dict(node.attrs), [v.layout for v in operands], types, t)
                if size:
                    scratch = Buffer("workspace", size, first=position, last=position)
                    workspace.append(scratch)
            out = Value(buffer, Layout.contiguous(t.shape), t.dtype)
            candidates: tuple[int, ...] = ()
            if self.in_place and lowering.in_place is not None and buffer.kind == "workspace":
                candidates = tuple(lowering.in_place(node.attrs, [v.layout for v in operands], types, t))
            self.steps.append(Step(node.op, lowering, dict(node.attrs), out, operands, scratch,
                                   f"%{node_id} {node.op}{_at(node.loc)}", position, candidates))
            values[node_id] = out
        end = len(order)
        for slot, node_id in enumerate(graph.outputs):
            value = values[node_id]
            if value.buffer.kind == "output" and value.buffer.index == slot:
                continue
            value.buffer.last = max(value.buffer.last, end)
            self.copies.append((slot, value))
        # every buffer's last reader is known only now
        if self.embed:
            self.embedded_operands = memplan.embed_operands(self.steps)
        if self.in_place:
            self.in_place_steps = memplan.share_in_place(self.steps)
        self.workspace_bytes = memplan.assign_offsets(workspace)
        if self.profile:  # after every planned buffer, so no kernel ever writes the counters
            self.profile_region = profiling.region_offset(self.workspace_bytes)
            self.workspace_bytes = self.profile_region + profiling.region_bytes(len(self.steps) + len(self.copies))

    def _materialize(self, node_id: int, value: Value, position: int, workspace: list[Buffer]) -> Value:
        """`value` (a transposed view) copied once into a contiguous workspace buffer.

        A matmul packs a B operand whose rows are not contiguous (W^T in a backward's
        g @ W^T) on every call; an RNN's backward makes that product once per time step
        with the same W^T, so one copy that every step reads in place is cheaper."""
        value.buffer.last = max(value.buffer.last, position)
        shape = value.layout.shape
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(value.dtype).itemsize
        buffer = Buffer("workspace", nbytes, first=position, last=position)
        workspace.append(buffer)
        out = Value(buffer, Layout.contiguous(shape), value.dtype)
        node = self.graph.node(node_id)
        self.steps.append(Step("copy", LOWERINGS["copy"], {}, out, [value],
                               label=f"%{node_id} {node.op} made contiguous for its matmuls{_at(node.loc)}",
                               position=position))
        self.materialized += 1
        return out

    # ---- emission
    def emit(self, name: str, linkage: str = "external") -> ir.Function:
        """The function `name` (entry ABI) running every step, then the output copies.

        Functions are straight lines of calls, so LLVM has nothing to optimize in them:
        they are `optnone` (fast instruction selection), and long graphs are split into
        chunk functions of CHUNK calls each, because LLVM's code generation is
        superlinear in the length of one basic block.
        """
        steps = list(self.steps)
        for slot, value in self.copies:
            out = Value(Buffer("output", 0, index=slot), Layout.contiguous(value.layout.shape), value.dtype)
            steps.append(Step("copy", LOWERINGS["copy"], {}, out, [value]))
        if self.profile:
            inner = self._calls(self.mb.unique(f"{name}.profiled"), "internal", steps)
            return profiling.timed_entry(self.mb.module, name, linkage, inner, self.profile_region)
        return self._calls(name, linkage, steps)

    def _calls(self, name: str, linkage: str, steps: list[Step]) -> ir.Function:
        if len(steps) <= CHUNK:
            return self._straight_line(name, linkage, steps)
        chunks = [self._straight_line(self.mb.unique(f"{name}.part{i}"), "internal", steps[start:start + CHUNK], start)
                  for i, start in enumerate(range(0, len(steps), CHUNK))]
        fn = _entry_function(self.mb.module, name, linkage)
        builder = ir.IRBuilder(fn.append_basic_block("entry"))
        for chunk in chunks:
            status = builder.call(chunk, list(fn.args))
            with builder.if_then(builder.icmp_signed("!=", status, ir.Constant(I32, 0)), likely=False):
                builder.ret(status)
        builder.ret(ir.Constant(I32, 0))
        return fn

    def _straight_line(self, name: str, linkage: str, steps: list[Step], first: int = 0) -> ir.Function:
        fn = _entry_function(self.mb.module, name, linkage)
        ins, outs, ws = fn.args
        builder = ir.IRBuilder(fn.append_basic_block("entry"))
        bases: dict[int, ir.Value] = {}

        def base(buffer: Buffer) -> ir.Value:
            key = id(buffer)
            if key not in bases:
                if buffer.kind in ("input", "output"):
                    array = ins if buffer.kind == "input" else outs
                    slot = builder.gep(array, [const(buffer.index)], inbounds=True, source_etype=PTR)
                    bases[key] = builder.load(slot, typ=PTR, name=f"{buffer.kind}{buffer.index}")
                elif buffer.kind == "global":
                    bases[key] = buffer.global_var
                else:
                    bases[key] = builder.gep(ws, [const(buffer.offset)], source_etype=I8)
            return bases[key]

        def pointer(value: Value) -> ir.Value:
            ptr = base(value.buffer)
            if value.layout.offset:
                ptr = builder.gep(ptr, [const(value.layout.offset)], source_etype=LLVM_TYPES[value.dtype])
            return ptr

        null = ir.Constant(PTR, None)
        for index, step in enumerate(steps, first):
            kernel = self.mb.kernel(step)
            args = [pointer(step.out)] + [pointer(v) for v in step.ins]
            args.append(base(step.scratch) if step.scratch is not None else null)
            if self.profile:
                self.profile_steps.append(profiling.describe(step, kernel.name))
                status = profiling.timed_call(builder, ws, self.profile_region, index, kernel, args)
            else:
                status = builder.call(kernel, args)
            if step.lowering.may_fail:
                failed = builder.icmp_signed("!=", status, ir.Constant(I32, 0))
                with builder.if_then(failed, likely=False):
                    builder.ret(status)
        builder.ret(ir.Constant(I32, 0))
        return fn


CHUNK = 256  # calls per function
MATERIALIZE_MIN = 2  # matmuls reading one transposed B operand that make it worth a contiguous copy


def _b_operand(node: Any) -> int | None:
    """Which operand of `node` is the B of a matrix product (matmul, or a matmul fusion)."""
    if node.op == "matmul":
        return 1
    if node.op == "fusion" and node.attrs.get("kind") == "matmul":
        from compiler.codegen.fused import matmul_parts  # fused.py imports this package's lower.py

        return matmul_parts(node.attrs["body"]).b
    return None


def _b_operand_uses(graph: Graph, order: list[int]) -> dict[int, int]:
    uses: dict[int, int] = {}
    for node_id in order:
        node = graph.node(node_id)
        index = _b_operand(node)
        if index is not None:
            uses[node.operands[index]] = uses.get(node.operands[index], 0) + 1
    return uses


def _transposed(value: Value) -> bool:
    """A float matrix whose rows are not contiguous: what matmul.py would pack per call."""
    layout = value.layout
    return (value.dtype in ("float32", "float64") and len(layout.shape) == 2 and layout.shape[1] > 1
            and layout.strides[1] != 1 and 0 not in layout.shape)
IN_PLACE = True  # the default for GraphEmitter(in_place=None); tests compare both
EMBED = True  # the default for GraphEmitter(embed=None); tests compare both


def _entry_function(module: ir.Module, name: str, linkage: str) -> ir.Function:
    fn = ir.Function(module, ENTRY_TYPE, name=name)
    fn.linkage = linkage
    for attribute in ("nounwind", "noinline", "optnone"):
        fn.attributes.add(attribute)
    return fn


def _at(loc: str | None) -> str:
    return f" at {loc}" if loc else ""


__all__ = ["ModuleBuilder", "GraphEmitter", "CodegenError", "STATUS"]
