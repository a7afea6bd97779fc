"""pullback runtime: load compiled artifacts and call them with numpy arrays.

Depends on the standard library, numpy and llvmlite only (llvmlite imported on first
load); never imports networkx or the compiler package.

    kernel = runtime.load("loss_grad.pullback", expected_sha256=None)
    loss, grads = kernel(params, batch)

- load(path, expected_sha256=None) / loads(data, ...) -> Kernel; read_manifest(path) checks a
  file and returns its manifest without loading native code.
- Kernel.from_parts(manifest, object_code) builds a kernel straight from the compiler.
- Kernel(*args) validates arguments (CallError, a ValueError: count, structure, shape,
  dtype under numpy 'same_kind' casting; see runtime/kernel.py), runs native code
  (KernelError on a non-zero status) and returns fresh output arrays in the out_tree
  pytree; with out=tree it writes into those arrays and returns them (exact shape and
  dtype, C-contiguous, writeable, no overlap; see runtime/outputs.py). Calls on one Kernel
  are serialized by a lock; the native part releases the GIL.
- host_target() describes this host for the code generator; make_manifest(...) builds a
  valid manifest.
- ArtifactError: anything wrong with an artifact, raised before native code is loaded.

Native ABI of the entry symbol (see runtime/artifact.py for the file layout):
    int32_t entry(void **inputs, void **outputs, void *workspace);  // 0 = success
inputs/outputs are C-contiguous, at least naturally aligned, in flat manifest order; two
inputs may share one buffer, outputs alias nothing (fresh arrays, or the caller's out=
arrays, checked to share no memory with inputs or each other); bool is one byte (0/1);
workspace is 64-byte aligned, workspace_bytes long, NULL when 0, contents undefined on entry.
"""
from runtime.artifact import FORMAT_VERSION, make_manifest
from runtime.errors import ArtifactError, CallError, KernelError
from runtime.kernel import Kernel, load, loads, read_manifest
from runtime.loader import host_target

__all__ = [
    "FORMAT_VERSION",
    "ArtifactError",
    "CallError",
    "Kernel",
    "KernelError",
    "host_target",
    "load",
    "loads",
    "make_manifest",
    "read_manifest",
]
