"""Host description, compatibility checks and in-process loading of object code with llvmlite.

llvmlite is imported lazily so `import runtime` stays cheap; the first load or host_target()
pays for it. No system linker is involved: MCJIT's RuntimeDyld links the object in memory.

Shared libraries: object code may call into a library the process does not load by itself;
today only libgomp.so.1 (GCC's OpenMP runtime: the parallel matmuls call GOMP_parallel and
omp_*). The libraries an artifact needs are those its manifest lists (extra.needs, passed
as `needs`) plus those its undefined symbols imply (LIBRARIES' prefixes). Each is loaded
once per process with RTLD_GLOBAL (ctypes) and registered with LLVM, before the
undefined-symbol check; only libraries named in LIBRARIES are ever loaded, and one that
cannot be loaded is an ArtifactError naming it and the package that provides it.

libgomp and fork(): a process that forks after running a parallel region leaves the child
a thread pool whose threads do not exist, and the child's next region would wait for them
forever. So in a forked child the thread that forked is set to one OpenMP thread
(omp_set_num_threads(1)); generated code then runs serially in that thread. Other threads
the child starts get fresh teams. The thread count otherwise follows libgomp's rules
(OMP_NUM_THREADS, else the CPUs the process may use).
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading
from typing import Any, Iterable

from runtime import elf
from runtime.errors import ArtifactError

# int32_t entry(void **inputs, void **outputs, void *workspace); plain void* parameters so
# callers pass integer addresses, the cheapest conversion ctypes has
ENTRY_TYPE = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
_init_lock = threading.Lock()
_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "i686": "i386", "i586": "i386", "i486": "i386"}


@functools.cache
def _llvm() -> Any:
    with _init_lock:
        import llvmlite.binding as llvm

        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        if sys.platform.startswith("linux"):
            try:  # usually already in the process via python itself; make sure for lookups
                llvm.load_library_permanently("libm.so.6")
            except RuntimeError:
                pass
        return llvm


@functools.cache
def _host() -> tuple[str, str, str, frozenset[str] | None]:
    llvm = _llvm()
    try:
        feature_map = llvm.get_host_cpu_features()
        features = feature_map.flatten()
        enabled = frozenset(name for name, on in feature_map.items() if on)
    except RuntimeError:  # LLVM cannot tell on some hosts
        features, enabled = "", None
    return llvm.get_process_triple(), llvm.get_host_cpu_name(), features, enabled


def host_target() -> dict:
    """{'triple', 'cpu', 'features'} of this process, features as LLVM's '+a,-b' string."""
    triple, cpu, features, _ = _host()
    return {"triple": triple, "cpu": cpu, "features": features}


def _arch(triple: str) -> str:
    arch = triple.split("-", 1)[0].lower()
    return _ARCH_ALIASES.get(arch, arch)


def _os(triple: str) -> str:
    parts = triple.lower().split("-")
    if len(parts) < 3:
        return ""
    name = parts[2].rstrip("0123456789.")
    if name.startswith(("darwin", "macos")):
        return "darwin"
    if name.startswith("win"):
        return "windows"
    return name


def check_target(target: dict, label: str) -> None:
    """Refuse code this host cannot run: other architecture or OS, or missing CPU features."""
    host_triple, host_cpu, _, enabled = _host()
    if _arch(target["triple"]) != _arch(host_triple):
        raise ArtifactError(
            f"{label}: compiled for {target['triple']} ({_arch(target['triple'])}), this host is {host_triple} ({_arch(host_triple)})"
        )
    if _os(target["triple"]) and _os(host_triple) and _os(target["triple"]) != _os(host_triple):
        raise ArtifactError(f"{label}: compiled for {target['triple']}, this host is {host_triple} (different OS)")
    required = [item[1:] for item in target["features"].split(",") if item.startswith("+")]
    if required and enabled is None:
        raise ArtifactError(f"{label}: needs CPU features {', '.join(required)} but LLVM cannot read this host's features")
    missing = [name for name in required if name not in (enabled or ())]
    if missing:
        raise ArtifactError(
            f"{label}: this CPU ({host_cpu}) lacks feature(s) the code was compiled for: {', '.join(missing)} "
            f"(compiled for cpu {target['cpu']!r}); recompile on or for this host"
        )


# soname -> (prefixes of the symbols it provides, where to get it)
LIBRARIES: dict[str, tuple[tuple[str, ...], str]] = {
    "libgomp.so.1": (("GOMP_", "omp_"), "GCC's OpenMP runtime: package libgomp1 on Debian/Ubuntu, libgomp on Fedora"),
}
_libraries: dict[str, ctypes.CDLL] = {}  # loaded once, never unloaded


def required_libraries(needs: Iterable[Any], undefined: Iterable[str], label: str) -> list[str]:
    """The libraries to load: manifest-declared ones, then those undefined symbols imply."""
    if isinstance(needs, (str, bytes)) or not isinstance(needs, Iterable):
        raise ArtifactError(f"{label}: manifest extra.needs must be a list of library names, got {needs!r}")
    wanted: list[str] = []
    for name in needs:
        if not isinstance(name, str) or name not in LIBRARIES:
            known = ", ".join(sorted(LIBRARIES))
            raise ArtifactError(f"{label}: needs shared library {name!r}, which this runtime does not load (it knows: {known})")
        if name not in wanted:
            wanted.append(name)
    for symbol in undefined:
        for name, (prefixes, _) in LIBRARIES.items():
            if symbol.startswith(prefixes) and name not in wanted:
                wanted.append(name)
    return wanted


def load_library(name: str, label: str) -> None:
    """Make `name`'s symbols resolvable for object code (RTLD_GLOBAL), once per process."""
    with _init_lock:
        if name in _libraries:
            return
        where = LIBRARIES[name][1] if name in LIBRARIES else "unknown package"
        try:
            handle = ctypes.CDLL(name, mode=os.RTLD_GLOBAL)
        except OSError as exc:
            raise ArtifactError(
                f"{label}: needs shared library {name} ({where}), which cannot be loaded: {exc}. "
                "Install it, or recompile serial code (PULLBACK_THREADS=1 or compile(..., parallel=False))"
            ) from None
        _libraries[name] = handle
    llvm = _llvm()
    try:  # LLVM searches the process too, but registering the library explicitly is certain
        llvm.load_library_permanently(name)
    except RuntimeError:
        pass
    if name == "libgomp.so.1" and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_serial_after_fork)


def _serial_after_fork() -> None:
    handle = _libraries.get("libgomp.so.1")
    if handle is not None:
        handle.omp_set_num_threads(1)


class NativeCode:
    """Object code linked in memory; keeps the engine (and so the code) alive."""

    def __init__(self, code: bytes, symbol: str, label: str, needs: Iterable[str] = ()) -> None:
        llvm = _llvm()
        triple = _host()[0]
        if llvm.get_object_format(triple) == "ELF":
            try:
                symbols = elf.read_symbols(code)
            except ArtifactError as exc:
                raise ArtifactError(f"{label}: {exc}") from None
            machine = elf.MACHINES.get(_arch(triple))
            if machine is not None and symbols.machine != machine:
                raise ArtifactError(f"{label}: object code is for ELF machine {symbols.machine}, this host needs {machine}")
            if symbol not in symbols.functions:
                defined = ", ".join(sorted(symbols.functions)) or "none"
                raise ArtifactError(f"{label}: object code does not define function {symbol!r} (it defines: {defined})")
        else:
            symbols = None
        with _init_lock:
            target_machine = llvm.Target.from_triple(triple).create_target_machine(reloc="pic", codemodel="jitdefault")
            # the engine owns the target machine; creating it also makes process symbols visible
            self._engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), target_machine)
        for library in required_libraries(needs, symbols.undefined if symbols is not None else (), label):
            load_library(library, label)
        if symbols is not None:
            # special to RuntimeDyld, never looked up in the process
            unresolved = [name for name in symbols.undefined
                          if name != "_GLOBAL_OFFSET_TABLE_" and not llvm.address_of_symbol(name)]
            if unresolved:
                raise ArtifactError(f"{label}: object code needs symbol(s) this process does not provide: {', '.join(unresolved)}")
        try:
            self._engine.add_object_file(llvm.ObjectFileRef.from_data(bytes(code)))
            self._engine.finalize_object()
        except RuntimeError as exc:
            raise ArtifactError(f"{label}: LLVM could not load the object code: {exc}") from None
        self.address = self._engine.get_function_address(symbol)
        if not self.address:
            raise ArtifactError(f"{label}: symbol {symbol!r} not found after loading the object code")
        self.entry = ENTRY_TYPE(self.address)
