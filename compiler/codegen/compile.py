"""compile(graph) -> runtime.Kernel, and the llvm_ir / assembly views of the same build.

Steps: verify the graph; look it up in the compile cache; run the graph optimization
pipeline (compiler.pipeline) at min(opt_level, 2); plan and emit one LLVM module
(emit.py); parse it, run LLVM's pipeline at opt_level and emit host object code
(target.py); wrap object code and manifest in a runtime.Kernel.

opt_level: 0 = no graph passes and no LLVM optimization (fastest compile), 1-3 = the
graph pipeline plus LLVM -O1..-O3 (vectorizers from 2).
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from compiler.codegen import cache as compile_cache
from compiler.codegen import parallel as codegen_parallel
from compiler.codegen import target
from compiler.codegen.emit import STATUS, GraphEmitter, ModuleBuilder
from compiler.ir.graph import Graph
from compiler.ir.verify import verify
from compiler.passes.manager import gc_paused


@dataclass
class Build:
    graph: Graph  # after graph passes
    symbol: str
    ir_text: str
    workspace_bytes: int
    kernels: int  # distinct kernel functions
    kernel_calls: int = 0  # kernels the entry function calls (loops over memory), output copies included
    timings: dict = field(default_factory=dict)
    profile: dict | None = None  # a profiled build: where its counters are and what each one times


def _symbol(name: str) -> str:
    return "pullback_" + (re.sub(r"[^A-Za-z0-9_]", "_", name) or "graph")


def _graph_passes(graph: Graph, opt_level: int, dump_dir: str | None = None) -> Graph:
    from compiler.pipeline import optimize

    if opt_level == 0 and dump_dir is None:
        return graph
    return optimize(graph, min(opt_level, 2), dump_dir=dump_dir)


def build(graph: Graph, opt_level: int, dump_dir: str | None = None, profile: bool = False) -> Build:
    """Graph passes and LLVM IR emission (no LLVM work yet)."""
    start = time.perf_counter()
    optimized = _graph_passes(graph, opt_level, dump_dir)
    passes = time.perf_counter()
    module_builder = ModuleBuilder(graph.name)
    emitter = GraphEmitter(module_builder, optimized, profile=profile)
    symbol = _symbol(graph.name)
    emitter.emit(symbol)
    text = str(module_builder.module)
    done = time.perf_counter()
    kernels = sum(1 for f in module_builder.module.functions if f.name.startswith("k."))
    calls = len(emitter.steps) + len(emitter.copies)
    result = Build(optimized, symbol, text, emitter.workspace_bytes, kernels, calls,
                   {"graph_passes": passes - start, "emit_ir": done - passes})
    if profile:
        result.profile = {"offset": emitter.profile_region, "steps": emitter.profile_steps}
    return result


def _llvm_module(graph: Graph, opt_level: int, verified: bool = False,
                 dump_dir: str | None = None, profile: bool = False) -> tuple[Build, Any]:
    target.check_opt_level(opt_level)
    if not verified:
        verify(graph)
    result = build(graph, opt_level, dump_dir, profile)
    start = time.perf_counter()
    module = target.parse(result.ir_text, opt_level)
    parsed = time.perf_counter()
    target.optimize(module, opt_level)
    result.timings.update(llvm_parse=parsed - start, llvm_opt=time.perf_counter() - parsed)
    if dump_dir is not None:
        import pathlib

        (pathlib.Path(dump_dir) / "llvm.ll").write_text(str(module))
    return result, module


def llvm_ir(graph: Graph, opt_level: int = 2, profile: bool = False) -> str:
    """The optimized LLVM IR text of the compiled graph."""
    return str(_llvm_module(graph, opt_level, profile=profile)[1])


def assembly(graph: Graph, opt_level: int = 2) -> str:
    """Host assembly of the compiled graph."""
    return target.emit_assembly(_llvm_module(graph, opt_level)[1], opt_level)


def _manifest(graph: Graph, result: Build, opt_level: int, key: str | None) -> dict:
    import compiler
    import runtime
    from runtime.pytree import LEAF, leaf_paths, treedef_to_text

    inputs = []
    for input_id in graph.inputs:
        node = graph.node(input_id)
        inputs.append({"name": node.attrs["name"], "shape": list(node.type.shape), "dtype": node.type.dtype,
                       "kind": node.attrs["kind"]})
    if graph.out_tree is LEAF:
        names = ["out"]
    else:
        names = ["out." + ".".join(str(p) for p in path) for path in leaf_paths(graph.out_tree)]
    outputs = [{"name": name, "shape": list(graph.type(o).shape), "dtype": graph.type(o).dtype}
               for name, o in zip(names, graph.outputs)]
    return runtime.make_manifest(
        name=graph.name, symbol=result.symbol, inputs=inputs, outputs=outputs,
        in_tree=treedef_to_text(graph.in_tree), out_tree=treedef_to_text(graph.out_tree),
        workspace_bytes=result.workspace_bytes, compiler_version=compiler.__version__, target=target.host(),
        extra={
            "opt_level": opt_level, "cache_key": key or "", "kernels": result.kernels,
            "kernel_calls": result.kernel_calls,
            "workspace_planner": "liveness best-fit",
            "status_codes": {str(code): text for code, text in STATUS.items()},
            "needs": codegen_parallel.needs(result.ir_text),
            "timings": {k: round(v, 6) for k, v in result.timings.items()},
            **({"profile": result.profile} if result.profile is not None else {}),
        },
    )


def compile(graph: Graph, opt_level: int = 2, *, cache: bool = True, parallel: bool | None = None,  # noqa: A001
            dump_dir: str | None = None, profile: bool = False) -> Any:
    """Compile `graph` to native code for this CPU; returns a callable runtime.Kernel.

    kernel(*args) takes the arguments the graph was traced with (same pytree) and
    returns its outputs as fresh numpy arrays. Results are cached on disk (see
    compiler/codegen/cache.py); cache=False or PULLBACK_NO_CACHE=1 turns that off.
    Large matmuls run on all cores through OpenMP (libgomp; OMP_NUM_THREADS is respected);
    parallel=False or PULLBACK_THREADS=1 compiles serial code. dump_dir=DIR writes the IR
    after every graph pass (numbered .txt and .dot files) and the optimized LLVM IR
    (llvm.ll) there, compiling afresh rather than from the cache. profile=True builds an
    instrumented kernel that counts cycles per kernel call (compiler/codegen/profiling.py:
    report(kernel) prints the tables); the default build has no instrumentation.
    """
    if parallel is None:  # keep whatever an enclosing parallel.configured(...) chose
        return _compile(graph, opt_level, cache, dump_dir, profile)
    with codegen_parallel.configured(parallel):
        return _compile(graph, opt_level, cache, dump_dir, profile)


def _compile(graph: Graph, opt_level: int, cache: bool, dump_dir: str | None = None, profile: bool = False) -> Any:
    import compiler
    import runtime

    target.check_opt_level(opt_level)
    # The cache-hit path allocates little, but on a big graph the heap is big: a full
    # collection it happens to trigger would cost it many times its own work.
    with gc_paused():
        verify(graph)  # reuses what an earlier verify of the unchanged graph found
        key = None
        if compile_cache.enabled(cache):
            # a profiled build is another artifact: its key differs, the default key does not
            version = compiler.__version__ + ("+profile" if profile else "")
            key = compile_cache.cache_key(graph, opt_level, target.host(), version)
            hit = compile_cache.load(key) if dump_dir is None else None
            if hit is not None:
                return hit
    if dump_dir is not None:
        os.makedirs(dump_dir, exist_ok=True)
    result, module = _llvm_module(graph, opt_level, verified=True, dump_dir=dump_dir, profile=profile)
    start = time.perf_counter()
    code = target.emit_object(module, opt_level)
    result.timings["llvm_codegen"] = time.perf_counter() - start
    kernel = runtime.Kernel.from_parts(_manifest(graph, result, opt_level, key), code)
    if key is not None:
        compile_cache.store(key, kernel)
    return kernel
