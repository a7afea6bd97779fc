"""The on-disk compile cache.

Where: $PULLBACK_CACHE_DIR if set, else $XDG_CACHE_HOME/pullback, else ~/.cache/pullback.
Off: compile(..., cache=False), or PULLBACK_NO_CACHE=1 in the environment.

An entry is one artifact file (runtime's format: manifest + object code, hash-checked)
named <key>.pullback, where key is the SHA-256 of:
- the graph's canonical description: its name, trees, and every value in topological
  order with op, operand positions, type and attributes (arrays by dtype, shape and
  content hash; fixed_point bodies recursively). Source locations are left out, so the
  same graph traced from edited code still hits;
- compiler.__version__ and a fingerprint of the compiler package's source files (so a
  changed compiler never returns stale code);
- opt_level and the target (triple, cpu, features);
- code-generation switches read from the environment (PULLBACK_NAIVE_MATMUL, PULLBACK_LIBM), which
  change the object code for the same graph.

Each entry records its key (manifest['extra']['cache_key']); load() returns an entry only
when that matches, so a stale, copied or swapped file never stands in for another graph.

Entries are written to a temp file in the cache folder then os.replace'd into place, so
concurrent processes never see a partial file; an unreadable or corrupt entry is
ignored and rewritten.
"""
from __future__ import annotations

import functools
import hashlib
import os
import pathlib
from typing import Any

import numpy as np

from compiler.ir.graph import Graph


def enabled(requested: bool) -> bool:
    return bool(requested) and os.environ.get("PULLBACK_NO_CACHE", "").strip() not in ("1", "true", "yes")


def cache_dir() -> pathlib.Path:
    explicit = os.environ.get("PULLBACK_CACHE_DIR")
    if explicit:
        return pathlib.Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg) if xdg else pathlib.Path.home() / ".cache"
    return base / "pullback"


def _attr_text(value: Any, out: list[str]) -> None:
    if isinstance(value, Graph):
        out.append("graph:" + graph_digest(value))
    elif isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        out.append(f"array:{data.dtype.str}:{data.shape}:{hashlib.sha256(data.tobytes()).hexdigest()}")
    elif isinstance(value, (tuple, list)):
        out.append("(" if isinstance(value, tuple) else "[")
        for item in value:
            _attr_text(item, out)
            out.append(",")
        out.append(")" if isinstance(value, tuple) else "]")
    elif isinstance(value, float):
        out.append("f" + value.hex())
    else:
        out.append(f"{type(value).__name__}:{value!r}")


def graph_digest(graph: Graph) -> str:
    """SHA-256 of the graph's canonical description (see the module docstring)."""
    from runtime.pytree import treedef_to_text

    order = graph.topo_order()
    position = {node_id: i for i, node_id in enumerate(order)}
    parts = [f"graph {graph.name!r}", treedef_to_text(graph.in_tree), treedef_to_text(graph.out_tree),
             "inputs " + ",".join(str(position[i]) for i in graph.inputs),
             "outputs " + ",".join(str(position[o]) for o in graph.outputs)]
    for node_id in order:
        node = graph.node(node_id)
        text = [f"{node.op}({','.join(str(position[o]) for o in node.operands)}):{node.type}{{"]
        for key in sorted(node.attrs):
            text.append(key + "=")
            _attr_text(node.attrs[key], text)
            text.append(";")
        parts.append("".join(text) + "}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@functools.cache
def compiler_fingerprint() -> str:
    root = pathlib.Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _codegen_switches() -> str:
    from compiler.codegen import matmul, parallel, vecmath

    return (f"naive_matmul={int(matmul.naive())},libm={int(not vecmath.enabled())},fused={int(vecmath.FUSED)},"
            f"{parallel.cache_token()}")


def cache_key(graph: Graph, opt_level: int, target: dict, version: str) -> str:
    text = "\n".join([
        "pullback-codegen-cache-v1", version, compiler_fingerprint(), f"O{opt_level}",
        target["triple"], target["cpu"], target["features"], _codegen_switches(), graph_digest(graph),
    ])
    return hashlib.sha256(text.encode()).hexdigest()


def entry_path(key: str) -> pathlib.Path:
    return cache_dir() / f"{key}.pullback"


def _key_of(kernel: Any) -> Any:
    extra = kernel.manifest.get("extra")
    return extra.get("cache_key") if isinstance(extra, dict) else None


def load(key: str) -> Any | None:
    """The cached Kernel for `key`, or None (missing, unreadable, corrupt, or built for another key)."""
    import runtime

    path = entry_path(key)
    if not path.is_file():
        return None
    try:
        kernel = runtime.load(path)
    except (runtime.ArtifactError, OSError):
        return None
    return kernel if _key_of(kernel) == key else None


def store(key: str, kernel: Any) -> None:
    """Write the kernel's artifact atomically; a cache that cannot be written is skipped."""
    if _key_of(kernel) != key:  # load() would never return it
        return
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        kernel.save(entry_path(key))  # temp file + os.replace (runtime.Kernel.save)
    except Exception:  # noqa: BLE001 - the cache is an optimization, never a failure
        pass
