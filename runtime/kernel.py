"""Kernel: a loaded artifact you call with numpy arrays.

Call-time rules (the same as compiler/interpreter.py's check_arguments):
- the arguments, as a tuple, must flatten (runtime.pytree) to the manifest's in_tree;
- every leaf must have the input's shape exactly (Python scalars are 0-d arrays);
- a leaf whose dtype differs is converted if numpy allows it under 'same_kind' casting
  (float64 into float32 yes, int into float yes, float into int or bool no);
- non-contiguous, misaligned or non-native-byte-order leaves are copied; read-only is fine,
  native code never writes its inputs.
Any mismatch raises CallError (a ValueError) before native code runs, so native code is
never handed a buffer of the wrong size or type.

Outputs are fresh arrays every call, unless the caller passes `out=`: a pytree in the
manifest's out_tree (e.g. the (loss, grads) a previous call returned) whose leaves are
numpy arrays of exactly each output's shape and dtype, C-contiguous, aligned, writeable and
sharing no memory (judged on bounds) with each other or with an input buffer native code
reads (an input copied anyway, being converted or strided, is a private copy and does not
count). The call writes into them and returns `out` itself. Nothing is converted on that side; any mismatch is a
CallError before native code runs (runtime/outputs.py). If native code fails (KernelError),
the `out` arrays hold partial results.

The workspace is allocated once per Kernel and reused, so calls on one Kernel are serialized
by a lock (safe from many threads, never concurrent; for parallel calls load one Kernel per
thread). The native call releases the GIL. Argument and `out` checks run outside the lock.
Threads that pass the same `out` arrays to concurrent calls get whole, serialized writes,
but each call's returned `out` may already hold another call's results: give each thread
its own `out`.
"""
from __future__ import annotations

import copy
import ctypes
import hashlib
import math
import os
import stat
import sys
import tempfile
import threading
from typing import Any

import numpy as np

from runtime import artifact
from runtime.argtree import compile_builder, compile_leaves, is_container
from runtime.errors import ArtifactError, CallError, KernelError
from runtime.loader import NativeCode, check_target
from runtime.outputs import OutChecker
from runtime.pytree import LEAF, flatten, leaf_paths, treedef_to_text

_ndarray = np.ndarray
_empty = np.empty
WORKSPACE_ALIGNMENT = 64


def _make_data_pointer() -> Any:
    """The fastest correct way to read an ndarray's data pointer.

    `a.ctypes.data` costs ~1 µs, most of a small call. In CPython, PyArrayObject's data
    pointer sits right after the object header; use that when it provably agrees with
    `a.ctypes.data` on probe arrays, else fall back.
    """

    def slow(array: np.ndarray) -> int:
        return array.ctypes.data

    if sys.implementation.name != "cpython":
        return slow
    offset = 2 * ctypes.sizeof(ctypes.c_void_p)  # ob_refcnt, ob_type
    read = ctypes.c_void_p.from_address
    base = np.arange(64, dtype=np.float64)
    probes = [base, base[3:], base[::2], base.reshape(8, 8)[1:, 2:], np.zeros((), np.int32), np.empty(0, np.bool_)]
    if all(read(id(probe) + offset).value == probe.ctypes.data for probe in probes if probe.ctypes.data):
        return lambda array: read(id(array) + offset).value
    return slow


_data_pointer = _make_data_pointer()


def _path_text(path: tuple) -> str:
    head, rest = path[0], path[1:]
    return f"args[{head}]" + "".join(f"[{key!r}]" for key in rest)


class Kernel:
    """A compiled function. Build with runtime.load(path) or Kernel.from_parts(manifest, code)."""

    def __init__(self, manifest: dict, code: bytes, blob: bytes, sha256: str, label: str) -> None:
        check_target(manifest["target"], label)
        self._manifest = manifest
        self._code = code
        self._blob = blob
        self.sha256 = sha256
        self._label = f"kernel {manifest['name']!r}"
        codes = manifest.get("extra", {}).get("status_codes", {})
        self._status_meanings = {str(k): str(v) for k, v in codes.items()} if isinstance(codes, dict) else {}
        self._native = NativeCode(code, manifest["symbol"], label, needs=manifest.get("extra", {}).get("needs", ()))
        self._entry = self._native.entry

        in_tree = artifact.parse_tree(manifest["in_tree"])
        self._in_tree_text = treedef_to_text(in_tree)
        self._n_args = len(in_tree)
        # flat: every argument is one leaf, so the per-leaf checks are the structure check
        self._flat_args = all(child is LEAF for child in in_tree)
        self._leaves_of = compile_leaves(in_tree)
        self._in_specs = tuple((tuple(e["shape"]), np.dtype(e["dtype"])) for e in manifest["inputs"])
        self._in_plan = tuple((index, shape, dtype) for index, (shape, dtype) in enumerate(self._in_specs))
        self._in_where = [f"input {e['name']!r} ({_path_text(p)})" for e, p in zip(manifest["inputs"], leaf_paths(in_tree))]
        self._out_specs = tuple((tuple(e["shape"]), np.dtype(e["dtype"])) for e in manifest["outputs"])
        out_tree = artifact.parse_tree(manifest["out_tree"])
        self._build_outputs = compile_builder(out_tree)
        in_nbytes = tuple(math.prod(shape) * dtype.itemsize for shape, dtype in self._in_specs)
        self._check_out = OutChecker(self._label, out_tree, manifest["outputs"], self._in_where, in_nbytes,
                                     _data_pointer)

        # the pointer arrays are reused; the lock makes that (and the workspace) safe
        self._ins = (ctypes.c_void_p * max(1, len(self._in_specs)))()
        self._outs = (ctypes.c_void_p * max(1, len(self._out_specs)))()
        self._ins_address = ctypes.addressof(self._ins)
        self._outs_address = ctypes.addressof(self._outs)
        self.workspace_bytes: int = manifest["workspace_bytes"]
        self._workspace, self._workspace_ptr = self._allocate_workspace(self.workspace_bytes)
        self._lock = threading.Lock()

    # ---- construction -------------------------------------------------------------
    @classmethod
    def from_parts(cls, manifest: dict, object_code: bytes) -> "Kernel":
        """Kernel from a manifest dict and object code, e.g. straight after compiling."""
        if not isinstance(object_code, (bytes, bytearray, memoryview)):
            raise ArtifactError(f"object code must be bytes, got {type(object_code).__name__}")
        if not isinstance(manifest, dict):
            raise ArtifactError(f"manifest must be a dict, got {type(manifest).__name__}")
        label = f"kernel {manifest.get('name')!r}"
        manifest_bytes = artifact.encode_manifest(manifest)
        # the JSON round trip (tuples become lists) makes the live manifest exactly what a
        # saved file holds; decoding validates it
        canonical = artifact.decode_manifest(manifest_bytes, label)
        code = bytes(object_code)
        blob = artifact.pack(manifest_bytes, code)
        return cls(canonical, code, blob, hashlib.sha256(blob).hexdigest(), label)

    @staticmethod
    def _allocate_workspace(size: int) -> tuple[np.ndarray | None, int | None]:
        if size == 0:
            return None, None
        try:
            buffer = np.zeros(size + WORKSPACE_ALIGNMENT, dtype=np.uint8)
        except (MemoryError, ValueError) as exc:
            raise ArtifactError(f"cannot allocate a workspace of {size} bytes: {exc}") from None
        address = buffer.ctypes.data
        return buffer, address + (-address) % WORKSPACE_ALIGNMENT

    # ---- calling --------------------------------------------------------------------
    def __call__(self, *args: Any, out: Any = None) -> Any:
        """Run the kernel on `args`; write into `out` and return it if given (see the module doc)."""
        if len(args) != self._n_args:
            raise CallError(
                f"{self._label} takes {self._n_args} argument(s) {self._in_tree_text}, got {len(args)}"
            )
        leaves = args if self._flat_args else self._flatten(args)
        keep = []  # converted copies must outlive the native call
        pointers = []
        # Checked outside the lock (inputs here, `out` below): __array__ of an argument may run
        # arbitrary code, even another call of this kernel, which must not deadlock or see
        # half-filled buffers.
        for (index, shape, dtype), value in zip(self._in_plan, leaves):
            if type(value) is _ndarray and value.dtype == dtype and value.shape == shape:
                flags = value.flags
                if flags.c_contiguous and flags.aligned:
                    pointers.append(_data_pointer(value))
                    continue
            value = self._convert(index, value, args)
            keep.append(value)
            pointers.append(_data_pointer(value))
        if out is None:
            outputs = []
            out_pointers = []
            for shape, dtype in self._out_specs:
                array = _empty(shape, dtype)
                outputs.append(array)
                out_pointers.append(_data_pointer(array))
        else:
            # checked against `pointers`, the buffers native code reads after conversion;
            # `outputs` keeps base-class views of subclass leaves alive through the call
            outputs, out_pointers = self._check_out(out, pointers)

        self._lock.acquire()
        try:
            self._ins[: len(pointers)] = pointers
            self._outs[: len(out_pointers)] = out_pointers
            status = self._entry(self._ins_address, self._outs_address, self._workspace_ptr)
        finally:
            self._lock.release()
        if status != 0:
            meaning = self._status_meanings.get(str(status))
            detail = f": {meaning}" if meaning else ""
            raise KernelError(f"{self._label}: native code returned error code {status}{detail}")
        return self._build_outputs(outputs) if out is None else out

    def _flatten(self, args: tuple) -> list:
        if self._leaves_of is not None:
            leaves = self._leaves_of(args)
            if leaves is not None:
                return leaves
        leaves, tree = flatten(args)
        if treedef_to_text(tree) != self._in_tree_text:
            raise self._structure_error(tree)
        return leaves

    def _structure_error(self, tree: Any) -> CallError:
        return CallError(
            f"{self._label}: arguments have structure {treedef_to_text(tree)}, it expects {self._in_tree_text} "
            "(tuples, lists, dicts and None are containers; pass each array as a numpy array)"
        )

    def _convert(self, index: int, value: Any, args: tuple) -> np.ndarray:
        _, shape, dtype = self._in_plan[index]
        where = self._in_where[index]
        if is_container(value):  # a container in a leaf's place: the structure is wrong
            raise self._structure_error(flatten(args)[1])
        try:
            array = np.asarray(value)
        except Exception as exc:  # arbitrary objects may fail in arbitrary ways
            raise CallError(f"{self._label}: {where}: cannot convert {type(value).__name__} to an array: {exc}") from None
        if array.shape != shape:
            raise CallError(f"{self._label}: {where} expects shape {shape}, got {array.shape}")
        if array.dtype != dtype:
            if not np.can_cast(array.dtype, dtype, casting="same_kind"):
                raise CallError(
                    f"{self._label}: {where} expects {dtype.name}, got {array.dtype} "
                    "(only numpy 'same_kind' conversions are done)"
                )
            array = array.astype(dtype)
        flags = array.flags
        if not (flags.c_contiguous and flags.aligned):
            array = np.array(array, order="C", copy=True)
        return array

    # ---- saving and describing ------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the artifact atomically: a temp file in the same directory, then os.replace."""
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        temp = None
        try:
            fd, temp = tempfile.mkstemp(prefix=".pullback-", suffix=".tmp", dir=directory)
            with os.fdopen(fd, "wb") as handle:
                handle.write(self._blob)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp, 0o644)
            os.replace(temp, path)
            temp = None
        except OSError as exc:
            raise ArtifactError(f"cannot write artifact {path}: {exc}") from exc
        finally:
            if temp is not None:
                try:
                    os.unlink(temp)
                except OSError:
                    pass

    def to_bytes(self) -> bytes:
        """The artifact file's exact bytes."""
        return self._blob

    @property
    def manifest(self) -> dict:
        return copy.deepcopy(self._manifest)

    def extra(self, name: str, default: Any = None) -> Any:
        """One entry of manifest['extra'] (a copy), without copying the whole manifest."""
        extra = self._manifest.get("extra")
        return copy.deepcopy(extra.get(name, default)) if isinstance(extra, dict) else default

    def profile_counters(self) -> np.ndarray | None:
        """A profiled build's counters (compile(..., profile=True)), else None: a live uint64
        view (steps + 1, 2) of (cycles, calls) into the workspace, row 0 the whole call.
        Zero it to restart; read it between calls (calls on this Kernel update it)."""
        info = self._manifest.get("extra", {}).get("profile")
        if not isinstance(info, dict) or not isinstance(info.get("steps"), list) or self._workspace is None:
            return None
        offset, rows = info.get("offset"), len(info["steps"]) + 1
        # a hostile manifest must not give a view outside the workspace
        if type(offset) is not int or offset < 0 or offset % 8 or offset + 16 * rows > self.workspace_bytes:
            return None
        start = self._workspace_ptr - self._workspace.ctypes.data + offset
        return self._workspace[start:start + 16 * rows].view(np.uint64).reshape(rows, 2)

    @property
    def object_code(self) -> bytes:
        return self._code

    @property
    def name(self) -> str:
        return self._manifest["name"]

    @property
    def input_names(self) -> list[str]:
        return [entry["name"] for entry in self._manifest["inputs"]]

    @property
    def output_names(self) -> list[str]:
        return [entry["name"] for entry in self._manifest["outputs"]]

    def __repr__(self) -> str:
        def describe(entries: list) -> str:
            return ", ".join(f"{e['name']}: {_type_text(e)}" for e in entries)

        return (
            f"<Kernel {self.name!r} ({describe(self._manifest['inputs'])}) -> ({describe(self._manifest['outputs'])})"
            f" workspace={self.workspace_bytes}B sha256={self.sha256[:12]}>"
        )


_SHORT = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64", "bool": "bool"}


def _type_text(entry: dict) -> str:
    return f"{_SHORT[entry['dtype']]}[{','.join(map(str, entry['shape']))}]"


def load(path: str | os.PathLike, expected_sha256: str | None = None) -> Kernel:
    """Read, verify and load an artifact. Every check runs before native code is loaded."""
    source, data, size = _read(path)
    manifest, code, sha256 = artifact.unpack(data, source, expected_sha256, size=size)
    return Kernel(manifest, code, data, sha256, source)


def loads(data: bytes, expected_sha256: str | None = None, source: str = "<bytes>") -> Kernel:
    """Like load(), from the artifact's bytes."""
    manifest, code, sha256 = artifact.unpack(data, source, expected_sha256)
    return Kernel(manifest, code, bytes(data), sha256, source)


def read_manifest(path: str | os.PathLike, expected_sha256: str | None = None) -> dict:
    """Verify an artifact file and return its manifest without loading native code."""
    source, data, size = _read(path)
    return artifact.unpack(data, source, expected_sha256, size=size)[0]


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _not_regular(source: str, mode: int) -> ArtifactError:
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    return ArtifactError(f"{source}: cannot read artifact: it is {kind}, not a regular file")


def _read(path: str | os.PathLike) -> tuple[str, bytes, int]:
    """(source, bytes, file size), reading no more than the header announces.

    Only regular files are opened: a FIFO would block open() forever and /dev/zero would be
    read until memory runs out. O_NONBLOCK guards the race where the path is swapped for a
    FIFO between the stat and the open.
    """
    source = os.fspath(path)
    try:
        mode = os.stat(source).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(source, mode)
        fd = os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ArtifactError(f"cannot read artifact {source}: {exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _not_regular(source, info.st_mode)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            head = handle.read(artifact.HEADER.size)
            want = min(info.st_size, artifact.announced_size(head))
            data = head + handle.read(max(want - len(head), 0))
    except OSError as exc:
        raise ArtifactError(f"cannot read artifact {source}: {exc}") from exc
    finally:
        os.close(fd)
    if len(data) != want:
        raise ArtifactError(f"{source}: cannot read artifact: the file changed while it was read")
    return source, data, info.st_size
