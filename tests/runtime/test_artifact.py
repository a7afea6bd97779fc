"""The artifact file: round trips, atomic saves, and refusal of every kind of bad file
before any native code is loaded."""
from __future__ import annotations

import hashlib
import json
import os
import struct

import numpy as np
import pytest

import runtime
import runtime.kernel
from runtime import artifact
from runtime.loader import _host
from tests.runtime.test_kernel import A, B, ADD_IR, add_kernel, add_manifest, build_object, exp_kernel


@pytest.fixture(scope="module")
def blob() -> bytes:
    return add_kernel().to_bytes()


@pytest.fixture
def no_native(monkeypatch):
    """Fail the test if anything tries to load native code."""

    def refuse(*args, **kwargs):
        raise AssertionError("native code was loaded for a bad artifact")

    monkeypatch.setattr(runtime.kernel, "NativeCode", refuse)


def layout(data: bytes) -> tuple[int, int]:
    _, _, _, manifest_len, code_len = artifact.HEADER.unpack_from(data)
    return manifest_len, code_len


def repack(data: bytes, edit) -> bytes:
    """Apply edit(manifest) and rebuild with a valid hash: a well-formed but altered file."""
    manifest_len, _ = layout(data)
    manifest = json.loads(data[32 : 32 + manifest_len])
    edit(manifest)
    code = data[32 + manifest_len : -32]
    return artifact.pack(json.dumps(manifest).encode(), code)


def write(tmp_path, data: bytes, name: str = "k.pullback") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


# ---- round trips ----------------------------------------------------------------------------
def test_save_load_call_round_trip(tmp_path):
    kernel = add_kernel()
    path = tmp_path / "add.pullback"
    kernel.save(path)
    data = path.read_bytes()
    assert data == kernel.to_bytes()
    assert data[:8] == b"PULLBACK"
    file_sha = hashlib.sha256(data).hexdigest()
    loaded = runtime.load(path, expected_sha256=file_sha)
    assert loaded.sha256 == kernel.sha256 == file_sha
    assert loaded.manifest == kernel.manifest
    np.testing.assert_array_equal(loaded(A, B), A + B)
    runtime.load(str(path), expected_sha256=file_sha.upper())


def test_layout_matches_the_documentation(blob):
    magic, version, flags, manifest_len, code_len = struct.unpack_from("<8sIIQQ", blob)
    assert (magic, version, flags) == (b"PULLBACK", runtime.FORMAT_VERSION, 0)
    assert len(blob) == 32 + manifest_len + code_len + 32
    manifest = json.loads(blob[32 : 32 + manifest_len].decode("utf-8"))
    assert manifest["format_version"] == 1 and manifest["symbol"] == "add4"
    assert blob[32 + manifest_len : -32] == build_object(ADD_IR)
    assert blob[-32:] == hashlib.sha256(blob[:-32]).digest()


def test_workspace_kernel_round_trip(tmp_path):
    path = tmp_path / "exp.pullback"
    exp_kernel().save(path)
    kernel = runtime.load(path)
    x = np.linspace(-1, 1, 4, dtype=np.float32)
    np.testing.assert_allclose(kernel(x)[0], np.exp(x), rtol=1e-6)


def test_read_manifest_does_not_load_native_code(tmp_path, blob, no_native):
    manifest = runtime.read_manifest(write(tmp_path, blob))
    assert manifest["name"] == "add" and manifest["inputs"][1]["kind"] == "data"


def test_loads_from_bytes(blob):
    np.testing.assert_array_equal(runtime.loads(blob)(A, B), A + B)


# ---- saving -----------------------------------------------------------------------------------
def test_save_is_atomic_and_overwrites(tmp_path):
    path = tmp_path / "k.pullback"
    path.write_bytes(b"old contents")
    kernel = add_kernel()
    kernel.save(path)
    assert path.read_bytes() == kernel.to_bytes()
    assert sorted(os.listdir(tmp_path)) == ["k.pullback"]  # no temp file left behind


def test_save_into_missing_directory(tmp_path):
    with pytest.raises(runtime.ArtifactError, match="cannot write artifact"):
        add_kernel().save(tmp_path / "missing" / "k.pullback")


def test_missing_file(tmp_path):
    with pytest.raises(runtime.ArtifactError, match="cannot read artifact"):
        runtime.load(tmp_path / "nope.pullback")


# ---- container corruption -----------------------------------------------------------------------
def test_truncated_everywhere(tmp_path, blob, no_native):
    manifest_len, code_len = layout(blob)
    cuts = [1, 7, 8, 20, 31, 32, 32 + manifest_len // 2, 32 + manifest_len, 32 + manifest_len + code_len // 2,
            32 + manifest_len + code_len, len(blob) - 1]
    for cut in cuts:
        with pytest.raises(runtime.ArtifactError, match="truncated") as info:
            runtime.load(write(tmp_path, blob[:cut]))
        assert "k.pullback" in str(info.value)


def test_empty_file(tmp_path, no_native):
    with pytest.raises(runtime.ArtifactError, match="empty"):
        runtime.load(write(tmp_path, b""))


def test_trailing_bytes(tmp_path, blob, no_native):
    with pytest.raises(runtime.ArtifactError, match="trailing"):
        runtime.load(write(tmp_path, blob + b"\0"))


@pytest.mark.parametrize("where", ["manifest", "code", "hash"])
def test_flipped_byte_is_caught_by_the_hash(tmp_path, blob, no_native, where):
    manifest_len, code_len = layout(blob)
    at = {"manifest": 32 + manifest_len // 2, "code": 32 + manifest_len + code_len // 2, "hash": len(blob) - 5}[where]
    data = bytearray(blob)
    data[at] ^= 0x01
    with pytest.raises(runtime.ArtifactError, match="corrupted artifact: SHA-256"):
        runtime.load(write(tmp_path, bytes(data)))


@pytest.mark.parametrize("at, message", [
    (0, "not a pullback artifact"),  # magic
    (8, "unknown artifact format version|newer"),  # version
    (12, "corrupted artifact: SHA-256"),  # reserved flags: caught by the hash
    (16, "truncated|trailing"),  # manifest length
    (24, "truncated|trailing"),  # code length
])
def test_flipped_byte_in_header(tmp_path, blob, no_native, at, message):
    data = bytearray(blob)
    data[at] ^= 0x02
    with pytest.raises(runtime.ArtifactError, match=message):
        runtime.load(write(tmp_path, bytes(data)))


def test_foreign_files(tmp_path, no_native):
    for data in (b"\x7fELF\x02\x01\x01" + bytes(100), b"PK\x03\x04 a zip file", b"{\"format_version\": 1}"):
        with pytest.raises(runtime.ArtifactError, match="not a pullback artifact"):
            runtime.load(write(tmp_path, data))


def test_newer_version_names_both_versions(tmp_path, blob, no_native):
    manifest_len, _ = layout(blob)
    newer = artifact.pack(blob[32 : 32 + manifest_len], blob[32 + manifest_len : -32], version=7)
    with pytest.raises(runtime.ArtifactError, match=r"format version 7 is newer than this runtime reads \(version 1\)"):
        runtime.load(write(tmp_path, newer))
    older = artifact.pack(blob[32 : 32 + manifest_len], blob[32 + manifest_len : -32], version=0)
    with pytest.raises(runtime.ArtifactError, match=r"unknown artifact format version 0 \(this runtime reads version 1\)"):
        runtime.load(write(tmp_path, older))


def test_unknown_flags(tmp_path, blob, no_native):
    manifest_len, _ = layout(blob)
    flagged = artifact.pack(blob[32 : 32 + manifest_len], blob[32 + manifest_len : -32], flags=4)
    with pytest.raises(runtime.ArtifactError, match="unknown header flags"):
        runtime.load(write(tmp_path, flagged))


def test_tampered_manifest_without_rehash(tmp_path, blob, no_native):
    text = blob.replace(b'"name":"add"', b'"name":"bad"')
    assert text != blob
    with pytest.raises(runtime.ArtifactError, match="SHA-256 of the contents does not match"):
        runtime.load(write(tmp_path, text))


def test_pinned_hash_mismatch(tmp_path, blob, no_native):
    with pytest.raises(runtime.ArtifactError, match="expected 0000"):
        runtime.load(write(tmp_path, blob), expected_sha256="0" * 64)
    rehashed = repack(blob, lambda m: m["extra"].update(evil=True))
    with pytest.raises(runtime.ArtifactError, match="file SHA-256 is"):
        runtime.load(write(tmp_path, rehashed), expected_sha256=hashlib.sha256(blob).hexdigest())


# ---- manifest schema ------------------------------------------------------------------------
def _set(key, value):
    return lambda m: m.__setitem__(key, value)


SCHEMA_CASES = [
    (lambda m: m.pop("symbol"), "missing field.*symbol"),
    (lambda m: m.pop("extra"), "missing field.*extra"),
    (_set("surprise", 1), "unknown field.*surprise"),
    (_set("workspace_bytes", "16"), "'workspace_bytes' must be int"),
    (_set("workspace_bytes", True), "'workspace_bytes' must be int"),
    (_set("workspace_bytes", -1), "negative"),
    (_set("format_version", 2), "manifest format_version 2 is not 1"),
    (_set("name", ""), "'name' is empty"),
    (_set("symbol", "bad symbol"), "not a valid symbol"),
    (_set("inputs", {"a": 1}), "'inputs' must be list"),
    (lambda m: m["inputs"][0].pop("dtype"), r"inputs\[0\] is missing 'dtype'"),
    (lambda m: m["inputs"][0].pop("kind"), r"inputs\[0\] is missing 'kind'"),
    (lambda m: m["inputs"][1].__setitem__("shape", [-4]), r"inputs\[1\].*non-negative"),
    (lambda m: m["inputs"][1].__setitem__("shape", [4.0]), r"inputs\[1\].*non-negative"),
    (lambda m: m["outputs"][0].__setitem__("dtype", "float16"), r"outputs\[0\].*'float16' is not one of"),
    (_set("in_tree", "(*, *, *)"), "has 3 leaves but there are 2 inputs"),
    (_set("in_tree", "{'a': *, 'b': *}"), "must be a tuple"),
    (_set("in_tree", "(*, "), "malformed tree"),
    (_set("out_tree", "(*, *)"), "has 2 leaves but there are 1 outputs"),
    (lambda m: m["target"].pop("features"), "target is missing 'features'"),
    (lambda m: m["target"].__setitem__("features", "avx2"), "malformed item"),
]


@pytest.mark.parametrize("edit, message", SCHEMA_CASES)
def test_manifest_schema(tmp_path, blob, no_native, edit, message):
    with pytest.raises(runtime.ArtifactError, match=message):
        runtime.load(write(tmp_path, repack(blob, edit)))


def test_manifest_not_json(tmp_path, no_native):
    code = build_object(ADD_IR)
    for manifest_bytes in (b"\xff\xfe", b"[1, 2]", b'{"workspace_bytes": NaN}'):
        with pytest.raises(runtime.ArtifactError, match="manifest"):
            runtime.load(write(tmp_path, artifact.pack(manifest_bytes, code)))


# ---- host compatibility -----------------------------------------------------------------
def test_missing_cpu_feature_is_refused(tmp_path, blob, no_native):
    def require(m):
        m["target"]["features"] += ",+pullback-imaginary-ext"

    with pytest.raises(runtime.ArtifactError, match="lacks feature.*pullback-imaginary-ext"):
        runtime.load(write(tmp_path, repack(blob, require)))


def test_real_feature_the_host_lacks(tmp_path, blob, no_native):
    absent = [item[1:] for item in runtime.host_target()["features"].split(",") if item.startswith("-")]
    if not absent:
        pytest.skip("this host has every feature LLVM knows")

    def require(m):
        m["target"]["features"] = m["target"]["features"].replace(f"-{absent[0]}", f"+{absent[0]}")

    with pytest.raises(runtime.ArtifactError, match=f"lacks feature.*{absent[0]}"):
        runtime.load(write(tmp_path, repack(blob, require)))


def test_other_architecture_is_refused(tmp_path, blob, no_native):
    other = "aarch64-unknown-linux-gnu" if _host()[0].startswith("x86_64") else "x86_64-unknown-linux-gnu"
    with pytest.raises(runtime.ArtifactError, match=f"compiled for {other}"):
        runtime.load(write(tmp_path, repack(blob, lambda m: m["target"].__setitem__("triple", other))))


def test_other_os_is_refused(tmp_path, blob, no_native):
    arch = _host()[0].split("-")[0]
    other = f"{arch}-pc-windows-msvc" if "windows" not in _host()[0] else f"{arch}-unknown-linux-gnu"
    with pytest.raises(runtime.ArtifactError, match="different OS"):
        runtime.load(write(tmp_path, repack(blob, lambda m: m["target"].__setitem__("triple", other))))


def test_vendor_and_cpu_name_do_not_matter(tmp_path, blob):
    def relabel(m):
        arch, _, rest = m["target"]["triple"].partition("-")
        m["target"]["triple"] = f"{arch}-pc-{rest.split('-', 1)[1]}" if "-" in rest else m["target"]["triple"]
        m["target"]["cpu"] = "some-other-cpu"
        m["target"]["features"] = ""

    kernel = runtime.load(write(tmp_path, repack(blob, relabel)))
    np.testing.assert_array_equal(kernel(A, B), A + B)
