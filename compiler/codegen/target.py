"""The host target: LLVM initialization, target machines, the optimization pipeline and
object/assembly emission.

Code is specialized to the CPU this process runs on (LLVM's host CPU name and feature
string, as `runtime.host_target()` reports them, so the loader's feature check agrees).
Optimization uses LLVM's new pass manager: the default per-module pipeline at
speed level `opt_level` (0 = no IR optimization at all), with the loop and SLP
vectorizers on from level 2.
"""
from __future__ import annotations

import functools
import threading
from typing import Any

_lock = threading.RLock()  # LLVM's global context and a TargetMachine are not thread-safe


@functools.cache
def llvm() -> Any:
    """llvmlite.binding, initialized for the native target (once per process)."""
    with _lock:
        import llvmlite.binding as binding

        binding.initialize_native_target()
        binding.initialize_native_asmprinter()
        return binding


@functools.cache
def host() -> dict:
    """{'triple', 'cpu', 'features'} of this process: what the code is compiled for."""
    import runtime

    llvm()
    return dict(runtime.host_target())


@functools.cache
def target_machine(opt_level: int) -> Any:
    target = host()
    binding = llvm()
    with _lock:
        return binding.Target.from_triple(target["triple"]).create_target_machine(
            cpu=target["cpu"], features=target["features"], opt=min(opt_level, 3),
            # The large code model: objects are linked in memory by RuntimeDyld, which may
            # place sections (and libm) more than 2 GiB apart when big libraries are loaded
            # (seen with torch + jax), and small-model 32-bit relocations then abort.
            reloc="pic", codemodel="large",
        )


def check_opt_level(opt_level: Any) -> int:
    if isinstance(opt_level, bool) or not isinstance(opt_level, int) or not 0 <= opt_level <= 3:
        raise ValueError(f"opt_level must be an int in 0..3, got {opt_level!r}")
    return opt_level


def parse(ir_text: str, opt_level: int) -> Any:
    """Parse and verify LLVM IR text into a module bound to the host target."""
    binding = llvm()
    with _lock:
        module = binding.parse_assembly(ir_text)
        module.triple = host()["triple"]
        module.data_layout = str(target_machine(opt_level).target_data)
        module.verify()
    return module


def optimize(module: Any, opt_level: int) -> Any:
    """Run LLVM's default module pipeline at `opt_level` in place (0: nothing)."""
    if opt_level == 0:
        return module
    binding = llvm()
    tuning = binding.create_pipeline_tuning_options(speed_level=opt_level)
    tuning.loop_vectorization = opt_level >= 2
    tuning.slp_vectorization = opt_level >= 2
    tuning.loop_unrolling = True
    with _lock:
        builder = binding.create_pass_builder(target_machine(opt_level), tuning)
        builder.getModulePassManager().run(module, builder)
    return module


def emit_object(module: Any, opt_level: int) -> bytes:
    with _lock:
        return target_machine(opt_level).emit_object(module)


def emit_assembly(module: Any, opt_level: int) -> str:
    with _lock:
        return target_machine(opt_level).emit_assembly(module)
