"""The artifact file format and the manifest schema. Pure Python: no native code here.

Layout (all integers little-endian):

    offset  size  field
    0       8     magic b"PULLBACK"
    8       4     format version (uint32), currently FORMAT_VERSION
    12      4     flags (uint32), reserved, must be 0
    16      8     manifest length M in bytes (uint64)
    24      8     object code length C in bytes (uint64)
    32      M     manifest: JSON object, UTF-8
    32+M    C     object code (an ELF relocatable object for the host)
    32+M+C  32    SHA-256 of bytes [0, 32+M+C)

The whole file is exactly 64+M+C bytes. `Kernel.sha256` is the SHA-256 of the whole file
(what `sha256sum` prints), which is what `expected_sha256` pins. The trailing hash catches
corruption, not malice: anyone can recompute it, so pin the file hash to trust a file.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import struct
from typing import Any

from runtime.errors import ArtifactError
from runtime.loader import host_target
from runtime.pytree import TreeError, num_leaves, treedef_from_text, treedef_to_text

MAGIC = b"PULLBACK"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sIIQQ")
HASH_SIZE = 32
DTYPES = ("float32", "float64", "int32", "int64", "bool")
_ITEMSIZE = {"float32": 4, "float64": 8, "int32": 4, "int64": 8, "bool": 1}
MAX_TENSOR_BYTES = 2**62

_FIELDS = {
    "format_version": int,
    "name": str,
    "symbol": str,
    "inputs": list,
    "outputs": list,
    "in_tree": str,
    "out_tree": str,
    "workspace_bytes": int,
    "target": dict,
    "compiler_version": str,
    "extra": dict,
}
_SYMBOL = re.compile(r"^[A-Za-z_.$][A-Za-z0-9_.$]*$")
_FEATURE = re.compile(r"^[+-][A-Za-z0-9_.\-]+$")


def parse_tree(text: str) -> Any:
    """treedef_from_text, remembered for short texts: loading an artifact parses its two
    trees twice (validation, then the Kernel), and the tokenizer makes each parse cost
    ~0.2 ms. The result is shared: callers only read it."""
    return _parse_short_tree(text) if isinstance(text, str) and len(text) <= 4096 else treedef_from_text(text)


@functools.lru_cache(maxsize=128)
def _parse_short_tree(text: str) -> Any:
    return treedef_from_text(text)


def encode_manifest(manifest: dict) -> bytes:
    """Canonical JSON (sorted keys, no whitespace) so equal manifests give equal files."""
    try:
        text = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ArtifactError(f"manifest is not JSON-serializable: {exc}") from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate in a name: a str, but not Unicode text
        raise ArtifactError(f"manifest is not valid Unicode: {exc}") from None


def pack(manifest_bytes: bytes, code: bytes, version: int = FORMAT_VERSION, flags: int = 0) -> bytes:
    """Assemble artifact bytes. `version`/`flags` are parameters only so tests can forge files."""
    body = HEADER.pack(MAGIC, version, flags, len(manifest_bytes), len(code)) + manifest_bytes + code
    return body + hashlib.sha256(body).digest()


def announced_size(head: bytes) -> int:
    """The file size a header announces (what a reader needs at most); for bytes that are not
    a well-formed header, the header size (enough for unpack to say what is wrong)."""
    if len(head) < HEADER.size or head[: len(MAGIC)] != MAGIC:
        return HEADER.size
    _, _, _, manifest_len, code_len = HEADER.unpack_from(head)
    return HEADER.size + manifest_len + code_len + HASH_SIZE


def unpack(data: bytes, source: str, expected_sha256: str | None = None, size: int | None = None) -> tuple[dict, bytes, str]:
    """Check the container and return (manifest, object code, file sha256 hex).

    `size` is the file's size when `data` holds only a prefix of it (a reader stops at the
    size the header announces): the file is then refused as too long before `data` is used.
    Order matters: nothing is parsed before the bytes are known to be intact.
    """
    size = len(data) if size is None else size
    if size == 0:
        raise ArtifactError(f"{source}: file is empty, not a pullback artifact")
    if data[: len(MAGIC)] != MAGIC:
        if size < len(MAGIC) and MAGIC.startswith(data):
            raise ArtifactError(f"{source}: truncated artifact ({size} bytes, the header alone is {HEADER.size})")
        raise ArtifactError(f"{source}: not a pullback artifact (starts with {bytes(data[:8])!r}, expected {MAGIC!r})")
    if size < HEADER.size:
        raise ArtifactError(f"{source}: truncated artifact ({size} bytes, the header alone is {HEADER.size})")
    _, version, flags, manifest_len, code_len = HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        if version > FORMAT_VERSION:
            raise ArtifactError(
                f"{source}: artifact format version {version} is newer than this runtime reads "
                f"(version {FORMAT_VERSION}); upgrade pullback to load it"
            )
        raise ArtifactError(f"{source}: unknown artifact format version {version} (this runtime reads version {FORMAT_VERSION})")
    expected_size = HEADER.size + manifest_len + code_len + HASH_SIZE
    if size < expected_size:
        raise ArtifactError(
            f"{source}: truncated artifact: {size} bytes, the header announces {expected_size} "
            f"(manifest {manifest_len}, code {code_len}, hash {HASH_SIZE})"
        )
    if size > expected_size:
        raise ArtifactError(
            f"{source}: corrupted artifact: {size} bytes, the header announces {expected_size} "
            f"({size - expected_size} unexpected trailing bytes)"
        )
    if len(data) != size:  # a prefix was read, yet the sizes agree: the file changed meanwhile
        raise ArtifactError(f"{source}: the artifact changed while it was read ({len(data)} of {size} bytes)")
    body_end = size - HASH_SIZE
    view = memoryview(data)  # slices of a view copy nothing; the code alone can be megabytes
    body = hashlib.sha256(view[:body_end])
    stored = bytes(view[body_end:])
    if body.digest() != stored:
        raise ArtifactError(f"{source}: corrupted artifact: SHA-256 of the contents does not match the stored hash")
    body.update(stored)  # the file is body + stored hash: its SHA-256 without hashing the body twice
    file_sha = body.hexdigest()
    if expected_sha256 is not None:
        if not isinstance(expected_sha256, str) or file_sha != expected_sha256.strip().lower():
            raise ArtifactError(f"{source}: file SHA-256 is {file_sha}, expected {expected_sha256}")
    if flags != 0:
        raise ArtifactError(f"{source}: unknown header flags {flags:#x} (this runtime knows none)")
    manifest_bytes = bytes(view[HEADER.size : HEADER.size + manifest_len])
    code = bytes(view[HEADER.size + manifest_len : body_end])
    return decode_manifest(manifest_bytes, source), code, file_sha


def decode_manifest(manifest_bytes: bytes, source: str) -> dict:
    def reject_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        manifest = json.loads(manifest_bytes.decode("utf-8"), parse_constant=reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ArtifactError(f"{source}: manifest is not valid UTF-8 JSON: {exc}") from None
    validate_manifest(manifest, source)
    return manifest


def validate_manifest(manifest: Any, source: str = "manifest") -> None:
    """Raise ArtifactError naming the first field that is missing or ill-typed."""
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{source}: manifest must be a JSON object, got {type(manifest).__name__}")
    missing = [key for key in _FIELDS if key not in manifest]
    if missing:
        raise ArtifactError(f"{source}: manifest is missing field(s) {', '.join(missing)}")
    unknown = sorted(str(key) for key in manifest if key not in _FIELDS)
    if unknown:
        raise ArtifactError(f"{source}: manifest has unknown field(s) {', '.join(unknown)} (free-form data goes in 'extra')")
    for key, kind in _FIELDS.items():
        _expect(manifest[key], kind, f"{source}: manifest field {key!r}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ArtifactError(
            f"{source}: manifest format_version {manifest['format_version']} is not {FORMAT_VERSION}, the version this runtime writes and reads"
        )
    if not manifest["name"]:
        raise ArtifactError(f"{source}: manifest field 'name' is empty")
    if not _SYMBOL.match(manifest["symbol"]):
        raise ArtifactError(f"{source}: manifest field 'symbol' {manifest['symbol']!r} is not a valid symbol name")
    if manifest["workspace_bytes"] < 0:
        raise ArtifactError(f"{source}: manifest field 'workspace_bytes' is negative ({manifest['workspace_bytes']})")
    for index, entry in enumerate(manifest["inputs"]):
        _check_tensor(entry, f"{source}: manifest inputs[{index}]", with_kind=True)
    for index, entry in enumerate(manifest["outputs"]):
        _check_tensor(entry, f"{source}: manifest outputs[{index}]", with_kind=False)
    in_tree = _check_tree(manifest, "in_tree", len(manifest["inputs"]), source)
    if not isinstance(in_tree, tuple):
        raise ArtifactError(f"{source}: manifest in_tree {manifest['in_tree']!r} must be a tuple (the tree of the argument list)")
    _check_tree(manifest, "out_tree", len(manifest["outputs"]), source)
    _check_target(manifest["target"], source)


def _expect(value: Any, kind: type, what: str) -> None:
    # bool is an int in Python, never in a manifest
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ArtifactError(f"{what} must be {kind.__name__}, got {type(value).__name__} {value!r}")


def _check_tensor(entry: Any, what: str, with_kind: bool) -> None:
    _expect(entry, dict, what)
    keys = {"name": str, "shape": list, "dtype": str}
    if with_kind:
        keys["kind"] = str
    for key, kind in keys.items():
        if key not in entry:
            raise ArtifactError(f"{what} is missing {key!r}")
        _expect(entry[key], kind, f"{what}[{key!r}]")
    extra = sorted(str(key) for key in entry if key not in keys)
    if extra:
        raise ArtifactError(f"{what} has unknown key(s) {', '.join(extra)}")
    for dim in entry["shape"]:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise ArtifactError(f"{what} ({entry['name']!r}): shape {entry['shape']} must hold non-negative ints")
    if entry["dtype"] not in DTYPES:
        raise ArtifactError(f"{what} ({entry['name']!r}): dtype {entry['dtype']!r} is not one of {', '.join(DTYPES)}")
    # No process could allocate it, so every call would fail in numpy. Zero-length dimensions
    # count as 1, as numpy counts them: an empty array's strides must be representable too.
    span = math.prod(max(dim, 1) for dim in entry["shape"]) * _ITEMSIZE[entry["dtype"]]
    if span > MAX_TENSOR_BYTES:
        raise ArtifactError(
            f"{what} ({entry['name']!r}): shape {entry['shape']} {entry['dtype']} spans {span} bytes, "
            f"more than the 2**62 a tensor may have"
        )


def _check_tree(manifest: dict, key: str, expected_leaves: int, source: str) -> Any:
    try:
        tree = parse_tree(manifest[key])
    except TreeError as exc:
        raise ArtifactError(f"{source}: manifest {key}: {exc}") from None
    leaves = num_leaves(tree)
    if leaves != expected_leaves:
        what = "inputs" if key == "in_tree" else "outputs"
        raise ArtifactError(
            f"{source}: manifest {key} {manifest[key]!r} has {leaves} leaves but there are {expected_leaves} {what}"
        )
    return tree


def _check_target(target: dict, source: str) -> None:
    for key in ("triple", "cpu", "features"):
        if key not in target:
            raise ArtifactError(f"{source}: manifest target is missing {key!r}")
        _expect(target[key], str, f"{source}: manifest target[{key!r}]")
    if not target["triple"]:
        raise ArtifactError(f"{source}: manifest target triple is empty")
    bad = [item for item in target["features"].split(",") if item and not _FEATURE.match(item)]
    if bad:
        raise ArtifactError(f"{source}: manifest target features: malformed item(s) {', '.join(map(repr, bad))} (expected +name or -name)")


def make_manifest(
    *,
    name: str,
    symbol: str,
    inputs: list[dict],
    outputs: list[dict],
    in_tree: Any,
    out_tree: Any,
    workspace_bytes: int = 0,
    compiler_version: str = "",
    target: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """A validated manifest; trees may be treedefs or their text, target defaults to this host."""
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "symbol": symbol,
        "inputs": [_listify_shape(entry) for entry in inputs],
        "outputs": [_listify_shape(entry) for entry in outputs],
        "in_tree": in_tree if isinstance(in_tree, str) else treedef_to_text(in_tree),
        "out_tree": out_tree if isinstance(out_tree, str) else treedef_to_text(out_tree),
        "workspace_bytes": workspace_bytes,
        "target": dict(target) if target is not None else host_target(),
        "compiler_version": compiler_version,
        "extra": dict(extra) if extra is not None else {},
    }
    validate_manifest(manifest, f"manifest of {name!r}")
    encode_manifest(manifest)  # fail here, not at save time, if 'extra' is not JSON
    return manifest


def _listify_shape(entry: Any) -> Any:
    if isinstance(entry, dict) and isinstance(entry.get("shape"), tuple):
        return dict(entry, shape=list(entry["shape"]))
    return entry
