"""The on-disk compile cache.

Where: $PULLBACK_CACHE_DIR if set, else $XDG_CACHE_HOME/pullback, else ~/.cache/pullback.
Off: compile(..., cache=False), or PULLBACK_NO_CACHE=1 in the environment.

An entry is one artifact file (runtime's format: manifest + object code, hash-checked)
named <key>.pullback, where key is the SHA-256 of:
- the graph's canonical description: its name, trees, and every value in id order with
  op, type, attributes (arrays by dtype, shape and content hash; fixed_point bodies
  recursively) and operands as positions in that order, so graphs that differ only in
  their id numbering agree. Source locations are left out, so the same graph traced from
  edited code still hits;
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

Keying is cheap on repeat (a cache hit should cost next to nothing, on a 20,000-node graph
too): a node's op/type/attribute text is kept on the immutable node (Node.key_text) when
its attributes are plain values, and the graph's digest is kept in Graph.derived with a
state.Snapshot, reused while the graph's nodes, lists, trees and name are unchanged.
"""
from __future__ import annotations

import array
import functools
import hashlib
import itertools
import os
import pathlib
from typing import Any

import numpy as np

from compiler.errors import PullbackError
from compiler.ir.graph import Graph, Node
from compiler.ir.types import TensorType
from compiler.ir.state import Snapshot, plain_value


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


_BARE: dict[tuple, str] = {}  # (op, shape, dtype) -> text of an attribute-free node: few distinct ones


def _node_text(node: Node) -> str:
    """op, type and attributes; kept on the node when its attributes can never change.

    The usual node (a TensorType, plain attributes) is described by the repr of a tuple,
    unambiguous for these values (1, 1.0, True and '1' differ, -0.0 is not 0.0, floats
    round-trip). The repr is the costly part: nodes without attributes share theirs (a
    shape holds only ints and op and dtype are strings, so equal keys mean equal texts).
    """
    attrs = node.attrs
    tensor_type = node.type
    if tensor_type.__class__ is TensorType:
        if not attrs:
            signature = (node.op, tensor_type.shape, tensor_type.dtype)
            text = _BARE.get(signature)
            if text is None:
                if len(_BARE) > 65536:
                    _BARE.clear()
                text = _BARE[signature] = "p" + repr(signature + ((),))
            object.__setattr__(node, "key_text", text)
            return text
        if all(map(plain_value, attrs.values())):
            text = "p" + repr((node.op, tensor_type.shape, tensor_type.dtype, sorted(attrs.items())))
            object.__setattr__(node, "key_text", text)
            return text
    parts = ["g", node.op, "|", type(tensor_type).__name__, ":", str(tensor_type), "{"]
    for key in sorted(attrs):
        parts.append(key + "=")
        _attr_text(attrs[key], parts)
        parts.append(";")
    parts.append("}")
    return "".join(parts)


def graph_digest(graph: Graph) -> str:
    """SHA-256 of the graph's canonical description (see the module docstring)."""
    from runtime.pytree import treedef_to_text

    snapshot = Snapshot(graph.nx)
    ends = (graph.name, tuple(graph.inputs), tuple(graph.outputs), treedef_to_text(graph.in_tree),
            treedef_to_text(graph.out_tree))
    derived = getattr(graph, "derived", {})
    memo = derived.get("digest")
    if memo is not None and memo[1] == ends and snapshot.same(memo[0]):
        return memo[2]
    derived.pop("digest", None)
    digest, reusable = _describe(graph, snapshot, ends)
    if reusable and snapshot.revision is not None:  # a plain networkx graph: never reusable
        derived["digest"] = (snapshot, ends, digest)
    return digest


def _describe(graph: Graph, snapshot: Snapshot, ends: tuple) -> tuple[str, bool]:
    order, node_list = snapshot.ids, snapshot.nodes
    if order != sorted(order):
        order, node_list = (list(column) for column in zip(*sorted(zip(order, node_list), key=lambda p: p[0])))
    if any(node.__class__ is not Node for node in node_list):
        raise PullbackError(f"graph {graph.name!r} has a node without an op (verify it first)")
    position = dict(zip(order, range(len(order))))
    texts = [node.key_text or _node_text(node) for node in node_list]
    operands = [node.operands for node in node_list]
    arity = array.array("q", map(len, operands))
    try:
        positions = array.array("q", map(position.__getitem__, itertools.chain.from_iterable(operands)))
        where = [",".join(str(position[i]) for i in ids) for ids in ends[1:3]]
    except KeyError as exc:
        raise PullbackError(f"graph {graph.name!r}: %{exc.args[0]} is used but not defined") from None
    digest = hashlib.sha256()
    head = [f"graph {graph.name!r}", ends[3], ends[4], "inputs " + where[0], "outputs " + where[1],
            f"nodes {len(order)} operands {len(positions)}", ""]
    digest.update("\n".join(head).encode())
    digest.update("\n".join(texts).encode())
    digest.update(b"\0" + arity.tobytes() + positions.tobytes())  # fixed-width ints: lengths are in the head
    return digest.hexdigest(), all(node.key_text is not None for node in node_list)


@functools.cache
def compiler_fingerprint() -> str:
    root = pathlib.Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _codegen_switches() -> str:
    from compiler.codegen import conv, matmul, parallel, vecmath

    return (f"naive_matmul={int(matmul.naive())},naive_conv={int(conv.naive())},"
            f"libm={int(not vecmath.enabled())},fused={int(vecmath.FUSED)},"
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
    return kernel.extra("cache_key")


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
