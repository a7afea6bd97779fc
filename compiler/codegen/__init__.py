"""The code generator: graph -> LLVM IR (llvmlite.ir) -> optimized host object code.

    kernel = compiler.codegen.compile(graph, opt_level=2)   # a runtime.Kernel
    loss, grads = kernel(params, batch)
    print(compiler.codegen.llvm_ir(graph))                  # optimized LLVM IR
    print(compiler.codegen.assembly(graph))                 # host assembly

Modules: target.py (host target machine, LLVM pipeline, emission), loops.py (strided
loop nests), scalar.py (dtypes, per-op scalar expressions, transcendentals), lower.py
(the LOWERINGS table: view and kernel rules keyed by op name, elementwise kernels),
kernels.py (shape and matmul kernels), reduce.py (reductions), control.py (fixed_point), memplan.py
(workspace offsets), emit.py (graph -> module), compile.py (compile, llvm_ir, assembly),
cache.py (the on-disk compile cache).
"""
from compiler.codegen import control, conv, kernels  # noqa: F401 - they register lowering rules
from compiler.codegen.compile import assembly, build, compile, llvm_ir  # noqa: F401
from compiler.codegen.emit import STATUS, CodegenError  # noqa: F401
from compiler.codegen.lower import LOWERINGS  # noqa: F401

__all__ = ["compile", "llvm_ir", "assembly", "build", "LOWERINGS", "STATUS", "CodegenError"]
