"""Hostile artifact files: truncated, bit-flipped, from the future, for another CPU, or not
artifacts at all. Each is refused with runtime.ArtifactError BEFORE any native code is
loaded (runtime.kernel.Kernel runs artifact.unpack -> loader.check_target -> NativeCode, so
a NativeCode that refuses to be built proves the order), and none crashes a fresh process."""
from __future__ import annotations

import json
import os
import struct
import sys

import numpy as np
import pytest

import runtime
import runtime.kernel
from runtime import artifact
from runtime.pytree import TreeError, treedef_from_text
from tests.reliability.crashproof import (
    assert_clean_error,
    assert_not_crashed,
    assert_ok,
    crashproof,
    guarded,
    run_cli,
    run_python,
)

HEADER = artifact.HEADER.size  # 32
HASH = artifact.HASH_SIZE  # 32


@pytest.fixture(scope="module")
def blob() -> bytes:
    """A real compiled training step (value and gradient of a small MLP loss)."""
    try:
        from compiler.codegen import compile as compile_graph
    except ImportError as exc:
        pytest.skip(f"compiler.codegen.compile is unavailable: {exc}")
    import compiler
    from compiler import Spec, ops

    def loss(p, x):
        return ops.mean(ops.square(ops.tanh(x @ p["W"] + p["b"])))

    graph = compiler.value_and_grad(compiler.trace(loss, {"W": Spec((3, 2)), "b": Spec((2,))}, Spec((4, 3))))
    return compile_graph(graph, cache=False).to_bytes()


@pytest.fixture
def no_native(monkeypatch):
    """Any attempt to link object code in-process fails the test."""
    loaded = []

    def refuse(*args, **kwargs):
        loaded.append(args)
        raise AssertionError("native code was loaded for a bad artifact")

    monkeypatch.setattr(runtime.kernel, "NativeCode", refuse)
    return loaded


def regions(data: bytes) -> dict[str, tuple[int, int]]:
    _, _, _, manifest_len, code_len = artifact.HEADER.unpack_from(data)
    body = HEADER + manifest_len + code_len
    return {"magic": (0, 8), "version": (8, 12), "flags": (12, 16), "manifest length": (16, 24),
            "code length": (24, 32), "manifest": (HEADER, HEADER + manifest_len),
            "code": (HEADER + manifest_len, body), "hash": (body, body + HASH)}


def region_of(data: bytes, offset: int) -> str:
    return next(name for name, (start, stop) in regions(data).items() if start <= offset < stop)


def split(data: bytes) -> tuple[dict, bytes]:
    (start, stop), (code_start, code_stop) = regions(data)["manifest"], regions(data)["code"]
    return json.loads(data[start:stop]), data[code_start:code_stop]


def repack(data: bytes, edit=None, code_edit=None, version: int = artifact.FORMAT_VERSION) -> bytes:
    """A well-formed artifact (correct lengths and hash) with an edited manifest or code."""
    manifest, code = split(data)
    if edit is not None:
        edit(manifest)
    if code_edit is not None:
        code = code_edit(bytearray(code))
    return artifact.pack(json.dumps(manifest).encode(), bytes(code), version=version)


def refused(data: bytes, match: str | None = None) -> str:
    with pytest.raises(runtime.ArtifactError) as info:
        runtime.loads(data, source="art.pbk")
    message = str(info.value)
    assert "\n" not in message, message
    if match is not None:
        assert __import__("re").search(match, message), message
    return message


def test_the_fixture_loads_and_runs(blob):
    kernel = runtime.loads(blob)
    value, grads = kernel({"W": np.ones((3, 2), np.float32), "b": np.zeros(2, np.float32)},
                          np.ones((4, 3), np.float32))
    assert np.isfinite(value) and set(grads) == {"W", "b"}


# ------------------------------------------------------------------ truncation
def test_truncated_at_every_offset(blob, no_native):
    seen = set()
    for cut in range(len(blob)):
        message = refused(blob[:cut], r"truncated|empty")
        seen.add(region_of(blob, cut) if cut else "empty")
    assert {"magic", "version", "manifest", "code", "hash"} <= seen
    assert not no_native


def test_extended_by_any_amount(blob, no_native):
    for extra in (b"\0", b"PULLBACK", blob, bytes(4096)):
        refused(blob + extra, r"trailing bytes")


# ------------------------------------------------------------------- bit flips
def expected_refusal(region: str) -> str:
    return {"magic": r"not a pullback artifact", "version": r"version", "manifest length": r"truncated|trailing",
            "code length": r"truncated|trailing"}.get(region, r"corrupted artifact: SHA-256")


def test_one_bit_flipped_at_every_offset(blob, no_native):
    """Every byte, one bit each (cycling through the 8 bit positions), in every region."""
    counts: dict[str, int] = {}
    for offset in range(len(blob)):
        data = bytearray(blob)
        data[offset] ^= 1 << (offset % 8)
        region = region_of(blob, offset)
        refused(bytes(data), expected_refusal(region))
        counts[region] = counts.get(region, 0) + 1
    assert set(counts) == set(regions(blob)), counts


@pytest.mark.parametrize("region", ["magic", "version", "flags", "manifest length", "code length"])
def test_every_bit_of_the_header(blob, no_native, region):
    start, stop = regions(blob)[region]
    for offset in range(start, stop):
        for bit in range(8):
            data = bytearray(blob)
            data[offset] ^= 1 << bit
            refused(bytes(data), expected_refusal(region))


def test_whole_regions_zeroed_or_randomized(blob, no_native):
    rng = np.random.default_rng(7)
    for region, (start, stop) in regions(blob).items():
        for filler in (bytes(stop - start), rng.integers(0, 256, stop - start, dtype=np.uint8).tobytes()):
            if filler != blob[start:stop]:  # the reserved flags are already zero
                refused(blob[:start] + filler + blob[stop:])


# -------------------------------------------------------------- format version
@pytest.mark.parametrize("version", [2, 7, 2**31, 2**32 - 1])
def test_newer_format_version(blob, no_native, version):
    refused(repack(blob, version=version), rf"format version {version} is newer than this runtime reads "
                                           rf"\(version 1\); upgrade pullback")


def test_older_format_version(blob, no_native):
    refused(repack(blob, version=0), r"unknown artifact format version 0")


def test_manifest_format_version_mismatch(blob, no_native):
    refused(repack(blob, lambda m: m.__setitem__("format_version", 2)), r"format_version 2 is not 1")


# ---------------------------------------------------------------- host target
def _require(feature: str):
    def edit(manifest):
        manifest["target"]["features"] = ",".join(
            item for item in manifest["target"]["features"].split(",") if item[1:] != feature) + f",+{feature}"
    return edit


def test_manifest_requiring_an_unknown_cpu_feature(blob, no_native):
    refused(repack(blob, _require("pullback-quantum-ext")), r"lacks feature\(s\) .*pullback-quantum-ext")


def test_manifest_requiring_a_real_feature_the_host_lacks(blob, no_native):
    absent = [item[1:] for item in runtime.host_target()["features"].split(",") if item.startswith("-")]
    if not absent:
        pytest.skip("this host has every CPU feature LLVM knows")
    for feature in absent[:5]:
        refused(repack(blob, _require(feature)), rf"lacks feature\(s\) the code was compiled for: {feature}")


@pytest.mark.parametrize("triple, match", [
    ("aarch64-unknown-linux-gnu", r"compiled for aarch64"),
    ("riscv64-unknown-linux-gnu", r"compiled for riscv64"),
    ("x86_64-pc-windows-msvc", r"compiled for x86_64-pc-windows-msvc|different OS"),
    ("x86_64-apple-darwin", r"compiled for x86_64-apple-darwin|different OS"),
])
def test_manifest_for_another_host(blob, no_native, triple, match):
    host = runtime.host_target()["triple"]
    if triple.split("-")[0] == host.split("-")[0] and triple.split("-")[2] in host:
        pytest.skip("that is this host")
    refused(repack(blob, lambda m: m["target"].__setitem__("triple", triple)), match)


# --------------------------------------------------------------- foreign files
FOREIGN = {
    "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64),
    "elf": b"\x7fELF\x02\x01\x01\x00" + bytes(120),
    "zip": b"PK\x03\x04\x14\x00" + bytes(40),
    "gzip": b"\x1f\x8b\x08\x00" + bytes(40),
    "json manifest": b'{"format_version": 1, "name": "x"}',
    "python source": b"import os\nos.system('echo pwned')\n",
    "almost magic": b"PULLBACX" + bytes(100),
    "lowercase magic": b"pullback" + bytes(100),
    "magic only": b"PULLBACK",
    "one byte": b"P",
    "empty": b"",
    "nul bytes": bytes(4096),
}


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_foreign_bytes(tmp_path, no_native, name):
    path = tmp_path / "foreign.pbk"
    path.write_bytes(FOREIGN[name])
    with pytest.raises(runtime.ArtifactError, match=r"not a pullback artifact|empty|truncated") as info:
        runtime.load(path)
    assert str(path) in str(info.value)


def test_a_real_object_file_is_not_an_artifact(tmp_path, blob, no_native):
    path = tmp_path / "code.o"
    path.write_bytes(split(blob)[1])  # the artifact's own ELF object code, bare
    with pytest.raises(runtime.ArtifactError, match=r"not a pullback artifact \(starts with b'\\x7fELF"):
        runtime.load(path)


def test_directory_missing_file_and_unreadable(tmp_path, no_native):
    with pytest.raises(runtime.ArtifactError, match="cannot read artifact"):
        runtime.load(tmp_path)
    with pytest.raises(runtime.ArtifactError, match="cannot read artifact"):
        runtime.load(tmp_path / "missing.pbk")
    loop = tmp_path / "loop.pbk"
    os.symlink(loop, loop)
    with pytest.raises(runtime.ArtifactError, match="cannot read artifact"):
        runtime.load(loop)
    if os.geteuid() != 0:
        locked = tmp_path / "locked.pbk"
        locked.write_bytes(b"PULLBACK")
        locked.chmod(0)
        with pytest.raises(runtime.ArtifactError, match="cannot read artifact"):
            runtime.load(locked)


# Only regular files are read, and no more of them than the header announces: a FIFO would
# block open() forever and /dev/zero would be read until memory runs out.
def test_dev_zero_is_refused_not_read_forever():
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))"
    code = guarded("runtime.load('/dev/zero')", "runtime.ArtifactError", limit)
    line = assert_clean_error(run_python(code, timeout=60), r"^ArtifactError: /dev/zero: ")
    assert "character device, not a regular file" in line, line


def test_fifo_is_refused_not_waited_on(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    fifo = tmp_path / "pipe.pbk"
    os.mkfifo(fifo)
    code = guarded("runtime.load(sys.argv[1])", "runtime.ArtifactError")
    line = assert_clean_error(run_python(code, str(fifo), timeout=5), r"^ArtifactError: ")
    assert "a FIFO, not a regular file" in line, line
    code = guarded("runtime.read_manifest(sys.argv[1])", "runtime.ArtifactError")
    assert_clean_error(run_python(code, str(fifo), timeout=5), r"^ArtifactError: .*a FIFO")


def test_symlink_to_a_regular_artifact_still_loads(tmp_path, blob, no_native):
    target = tmp_path / "real.pbk"
    target.write_bytes(blob)
    link = tmp_path / "link.pbk"
    os.symlink(target, link)
    assert runtime.read_manifest(link) == runtime.read_manifest(target)


def test_only_the_announced_size_is_read(tmp_path, blob, no_native, monkeypatch):
    """A huge file behind a valid header is refused from its size, not read whole."""
    import runtime.kernel as kernel_module

    path = tmp_path / "padded.pbk"
    path.write_bytes(blob)
    with open(path, "r+b") as handle:
        handle.truncate(len(blob) + (1 << 34))  # 16 GiB more, sparse: reading it all would be fatal
    source, data, size = kernel_module._read(path)
    assert data == blob and size == len(blob) + (1 << 34)
    with pytest.raises(runtime.ArtifactError, match=r"corrupted artifact: .*17179869184 unexpected trailing bytes"):
        runtime.load(path)


# ------------------------------------------------------------ hostile manifests
@pytest.mark.parametrize("edit, match", [
    (lambda m: m.__setitem__("workspace_bytes", 2**62), r"cannot allocate a workspace"),
    (lambda m: m.__setitem__("workspace_bytes", 2**80), r"cannot allocate a workspace"),
    (lambda m: m.__setitem__("symbol", "system"), r"does not define function 'system'"),
    (lambda m: m.__setitem__("symbol", "a" * 100_000), r"does not define function"),
    (lambda m: m.__setitem__("in_tree", "(" * 5000 + "*" + ")" * 5000), r"in_tree"),
    (lambda m: m.__setitem__("in_tree", "__import__('os')"), r"in_tree"),
    (lambda m: m.__setitem__("out_tree", "{'a': *, 'a': *, 'b': *}"), r"out_tree"),
    (lambda m: m["inputs"][0].__setitem__("shape", [-1, 2]), r"non-negative"),
    (lambda m: m["inputs"][0].__setitem__("dtype", "float16"), r"is not one of"),
    (lambda m: m["inputs"][0].__setitem__("shape", [3, 2.0]), r"non-negative ints"),
    (lambda m: m.__setitem__("target", {"triple": "", "cpu": "", "features": ""}), r"triple is empty"),
    (lambda m: m["target"].__setitem__("features", "+avx2;rm -rf /"), r"malformed item"),
    (lambda m: m.clear(), r"missing field"),
])
def test_hostile_manifest_fields_with_a_valid_hash(blob, edit, match):
    refused(repack(blob, edit), match)


# CPython's parser raises MemoryError/RecursionError on such texts; they must be TreeErrors.
@pytest.mark.parametrize("text", ["-" * 100_000 + "1", "~" * 100_000 + "1", "not " * 50_000 + "1",
                                  "(" * 100_000 + "*" + ")" * 100_000, "[" * 100_000 + "]" * 100_000])
def test_pathological_tree_text(blob, no_native, text):
    refused(repack(blob, lambda m: m.__setitem__("in_tree", text)), r"in_tree")
    with pytest.raises(TreeError, match="malformed tree") as info:
        treedef_from_text(text)
    assert len(str(info.value)) < 1000, "the message quotes the start of the text, not all of it"


# A tensor no process could allocate is refused at load, not at every call (np.empty ValueError).
@pytest.mark.parametrize("where, shape", [("outputs", [2**40, 2**40]), ("inputs", [2**31, 2**31, 2]),
                                          ("outputs", [10**30]), ("inputs", [2**61])])
def test_absurd_shape_is_refused_at_load(blob, no_native, where, shape):
    refused(repack(blob, lambda m: m[where][1].__setitem__("shape", shape)), rf"{where}\[1\].*more than the 2\*\*62")


def test_tensor_size_cap_counts_empty_dimensions_as_numpy_does():
    from runtime.artifact import _check_tensor

    _check_tensor({"name": "e", "shape": [0, 2**40], "dtype": "float64"}, "t", with_kind=False)
    _check_tensor({"name": "b", "shape": [2**62], "dtype": "bool"}, "t", with_kind=False)  # exactly the cap
    with pytest.raises(runtime.ArtifactError, match=r"\(\'e\'\): shape \[0, 1180591620717411303424\]"):
        _check_tensor({"name": "e", "shape": [0, 2**70], "dtype": "float64"}, "t", with_kind=False)  # np.empty fails


# ------------------------------------------------------------ the compile cache
def _cache_setup(tmp_path, monkeypatch):
    codegen = pytest.importorskip("compiler.codegen")
    import compiler
    from compiler import Spec, ops
    from compiler.codegen import cache

    monkeypatch.setenv("PULLBACK_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("PULLBACK_NO_CACHE", raising=False)
    exp = compiler.trace(lambda x: ops.exp(x), Spec((4,)))
    neg = compiler.trace(lambda x: -x, Spec((4,)))
    return codegen, cache, exp, neg


def test_corrupt_cache_entry_is_recompiled(tmp_path, monkeypatch):
    codegen, cache, exp, _ = _cache_setup(tmp_path, monkeypatch)
    codegen.compile(exp)
    (entry,) = tmp_path.glob("*.pullback")
    x = np.linspace(-1, 1, 4, dtype=np.float32)
    for damage in (lambda d: d[: len(d) // 2], lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:], lambda d: b"",
                   lambda d: b"\x89PNG\r\n\x1a\n"):
        entry.write_bytes(damage(entry.read_bytes()) if entry.stat().st_size else b"")
        np.testing.assert_allclose(codegen.compile(exp)(x), np.exp(x), rtol=1e-6)
        assert runtime.load(entry).name == exp.name  # rewritten, intact


def test_swapped_cache_entry_is_not_trusted(tmp_path, monkeypatch):
    """An entry is returned only for the key it records (manifest extra.cache_key)."""
    codegen, cache, exp, neg = _cache_setup(tmp_path, monkeypatch)
    codegen.compile(exp)
    (exp_entry,) = tmp_path.glob("*.pullback")
    key = exp_entry.name[: -len(".pullback")]
    assert runtime.load(exp_entry).manifest["extra"]["cache_key"] == key
    assert cache.load(key) is not None
    neg_kernel = codegen.compile(neg, cache=False)
    exp_entry.write_bytes(neg_kernel.to_bytes())  # a valid artifact, for another graph
    assert cache.load(key) is None
    x = np.linspace(-1, 1, 4, dtype=np.float32)
    np.testing.assert_allclose(codegen.compile(exp)(x), np.exp(x), rtol=1e-6)
    assert runtime.load(exp_entry).manifest["extra"]["cache_key"] == key  # and the entry is rewritten


def test_cache_key_covers_the_naive_matmul_switch(tmp_path, monkeypatch):
    codegen, cache, exp, _ = _cache_setup(tmp_path, monkeypatch)
    from compiler.codegen import target

    args = (exp, 2, target.host(), "v")
    monkeypatch.delenv("PULLBACK_NAIVE_MATMUL", raising=False)
    fast = cache.cache_key(*args)
    monkeypatch.setenv("PULLBACK_NAIVE_MATMUL", "1")
    assert cache.cache_key(*args) != fast
    monkeypatch.setenv("PULLBACK_NAIVE_MATMUL", "0")
    assert cache.cache_key(*args) == fast


def test_store_skips_a_kernel_that_records_another_key(tmp_path, monkeypatch):
    codegen, cache, exp, _ = _cache_setup(tmp_path, monkeypatch)
    kernel = codegen.compile(exp, cache=False)  # records no key
    cache.store("0" * 64, kernel)
    assert not list(tmp_path.glob("*.pullback"))


# --------------------------------------------------------- in a fresh process
FUZZ_CHILD = """
import json, sys, runtime
from runtime import artifact
blob = open(sys.argv[1], "rb").read()
offsets = sorted(set(list(range(0, 40)) + list(range(40, len(blob), 7)) + list(range(len(blob) - 40, len(blob)))))
refused = 0
for offset in offsets:
    for data in (blob[:offset], blob[:offset] + bytes([blob[offset] ^ (1 << (offset % 8))]) + blob[offset + 1:]):
        try:
            runtime.loads(data)
        except runtime.ArtifactError as exc:
            assert "\\n" not in str(exc)
            refused += 1
        else:
            raise AssertionError(f"a damaged artifact loaded (offset {offset})")
kernel = runtime.loads(blob)  # and the intact one still loads and runs afterwards
print(json.dumps({"refused": refused, "offsets": len(offsets)}))
"""


def test_damaged_artifacts_in_a_fresh_process(tmp_path, blob):
    """The real loader (no monkeypatching): truncations and flips in every region, none crashes."""
    path = tmp_path / "good.pbk"
    path.write_bytes(blob)
    result = crashproof(FUZZ_CHILD, str(path))
    report = json.loads(assert_ok(result).strip().splitlines()[-1])
    assert report["refused"] == 2 * report["offsets"]


@pytest.mark.parametrize("name", ["truncated", "flipped", "newer", "feature", "png", "empty", "directory"])
def test_pullback_run_on_a_bad_artifact(tmp_path, blob, name):
    path = tmp_path / "bad.pbk"
    if name == "directory":
        path.mkdir()
    else:
        data = {
            "truncated": blob[: len(blob) // 2],
            "flipped": blob[:200] + bytes([blob[200] ^ 0x10]) + blob[201:],
            "newer": repack(blob, version=2),
            "feature": repack(blob, _require("pullback-quantum-ext")),
            "png": FOREIGN["png"],
            "empty": b"",
        }[name]
        path.write_bytes(data)
    result = run_cli("run", "bad.pbk", cwd=tmp_path)
    assert_clean_error(result, r"^pullback: error: bad\.pbk", code=2)


# ------------------------------------------------ malformed object code, valid hash
# runtime/elf.py vets the object code before LLVM sees it: RuntimeDyld (built with
# assertions) aborts or segfaults on malformed ELF instead of returning an error, and the
# trailing hash proves nothing once someone recomputes it.
ELF_FUZZ_ENV = "PULLBACK_ELF_FUZZ"  # single-bit flips per object (default 200)


def _sections(code: bytes) -> tuple[int, int, list[tuple]]:
    shoff = struct.unpack_from("<Q", code, 40)[0]
    shentsize, shnum = struct.unpack_from("<HH", code, 58)
    header = struct.Struct("<IIQQQQIIQQ")
    return shoff, shentsize, [header.unpack_from(code, shoff + i * shentsize) for i in range(shnum)]


def _bad_shstrndx(code: bytearray) -> bytearray:
    struct.pack_into("<H", code, 62, 0x7FFF)
    return code


def _bad_symbol_section(code: bytearray) -> bytearray:
    _, _, sections = _sections(bytes(code))
    symtab = next(s for s in sections if s[1] == 2)  # SHT_SYMTAB
    for index in range(1, symtab[5] // 24):
        struct.pack_into("<H", code, symtab[4] + 24 * index + 6, 0x00F0)
    return code


def _bad_relocation_symbol(code: bytearray) -> bytearray:
    _, _, sections = _sections(bytes(code))
    rela = next(s for s in sections if s[1] == 4)  # SHT_RELA
    r_info = struct.unpack_from("<Q", code, rela[4] + 8)[0]
    struct.pack_into("<Q", code, rela[4] + 8, (0xFFFF << 32) | (r_info & 0xFFFFFFFF))
    return code


def _bad_relocation_offset(code: bytearray) -> bytearray:
    _, _, sections = _sections(bytes(code))
    rela = next(s for s in sections if s[1] == 4)
    struct.pack_into("<Q", code, rela[4], 0x7FFFFFFF)
    return code


def _bad_relocation_type(code: bytearray) -> bytearray:
    _, _, sections = _sections(bytes(code))
    rela = next(s for s in sections if s[1] == 4)
    r_info = struct.unpack_from("<Q", code, rela[4] + 8)[0]
    struct.pack_into("<Q", code, rela[4] + 8, (r_info >> 32 << 32) | 31)  # R_X86_64_PLTOFF64: RuntimeDyld aborts
    return code


X86_64_LINUX = sys.platform == "linux" and os.uname().machine == "x86_64"


@pytest.mark.skipif(not X86_64_LINUX, reason="x86-64 ELF layout")
@pytest.mark.parametrize("mutate, match", [
    (_bad_shstrndx, r"e_shstrndx 32767 is not a section"),
    (_bad_symbol_section, r"symbol 1 .* is defined in section 0xf0, which does not exist"),
    (_bad_relocation_symbol, r"entry 0 names symbol 65535"),
    (_bad_relocation_offset, r"entry 0 patches 8 bytes at offset 2147483647"),
    (_bad_relocation_type, r"entry 0 has relocation type 31, which is not one LLVM emits"),
], ids=["e_shstrndx", "st_shndx", "r_sym", "r_offset", "r_type"])
def test_malformed_object_code_with_a_valid_hash_is_refused(tmp_path, blob, mutate, match):
    path = tmp_path / "tampered.pbk"
    path.write_bytes(repack(blob, code_edit=mutate))
    result = run_python(guarded("runtime.load(sys.argv[1])", "runtime.ArtifactError"), str(path), timeout=60)
    assert_clean_error(result, rf"^ArtifactError: .*tampered\.pbk: object code's ELF .*{match}")


@pytest.fixture(scope="module")
def hand_written_blob() -> bytes:
    """Hand-written IR in LLVM's default code model: .eh_frame, PC32/PLT32 relocations, a libm
    call, data pointers and a zero-filled global, none of which compiled graphs have."""
    from tests.runtime.test_elf import build

    f32 = {"name": "x", "shape": [], "dtype": "float32", "kind": "data"}
    manifest = runtime.make_manifest(name="hand", symbol="entry", inputs=[f32],
                                     outputs=[{"name": "y", "shape": [], "dtype": "float32"}],
                                     in_tree="(*,)", out_tree="*")
    return runtime.Kernel.from_parts(manifest, build("default")).to_bytes()


ELF_FUZZ_CHILD = """
import collections, json, os, random, signal, struct, sys
import numpy as np
import runtime
from runtime import artifact, pytree

blob = open(sys.argv[1], "rb").read()
flips, seed = int(sys.argv[2]), int(sys.argv[3])
_, _, _, m, c = artifact.HEADER.unpack_from(blob)
manifest, code = blob[32:32 + m], blob[32 + m:32 + m + c]
kernel = runtime.loads(blob)  # LLVM is initialized before forking, and the intact artifact loads
rng = np.random.default_rng(seed)
spec = kernel.manifest
leaves = [rng.standard_normal(e["shape"]).astype(e["dtype"]) for e in spec["inputs"]]
args = pytree.unflatten(pytree.treedef_from_text(spec["in_tree"]), leaves)
expected = pytree.flatten(kernel(*args))[0]

# Where loading can go wrong: the ELF header, section table, symbol and string tables,
# relocations and unwind tables. Half the flips land there, half anywhere in the object.
shoff, shnum = struct.unpack_from("<Q", code, 40)[0], struct.unpack_from("<H", code, 60)[0]
metadata = list(range(64)) + list(range(shoff, shoff + 64 * shnum))
for i in range(1, shnum):
    _, kind, _, _, offset, size = struct.unpack_from("<IIQQQQ", code, shoff + 64 * i)
    if kind in (2, 3, 4, 0x70000001):
        metadata += range(offset, offset + size)

def attempt(data):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        try:
            loaded = runtime.loads(data)
        except runtime.ArtifactError as exc:
            os.write(write, b"refused" if "\\n" not in str(exc) else b"multi-line error")
            os._exit(0)
        except BaseException as exc:
            os.write(write, f"raised {type(exc).__name__}".encode())
            os._exit(0)
        os.write(write, b"loaded ")
        signal.alarm(5)  # corrupted instructions may loop forever
        try:
            got = pytree.flatten(loaded(*args))[0]
            same = all(np.array_equal(a, b, equal_nan=True) for a, b in zip(got, expected))
            os.write(write, b"ran-same" if same else b"ran-different")
        except BaseException as exc:
            os.write(write, b"ran-raised")
        os._exit(0)
    os.close(write)
    out = b""
    while chunk := os.read(read, 4096):
        out += chunk
    os.close(read)
    _, status = os.waitpid(pid, 0)
    words = out.decode().split()
    if os.WIFSIGNALED(status):
        words.append(f"signal-{os.WTERMSIG(status)}")
    return words

picker = random.Random(seed)
counts, deaths, odd = collections.Counter(), [], []
for trial in range(flips):
    at = picker.choice(metadata) if trial % 2 else picker.randrange(len(code))
    bit = picker.randrange(8)
    mutated = bytearray(code)
    mutated[at] ^= 1 << bit
    words = attempt(artifact.pack(manifest, bytes(mutated))) or ["nothing"]
    outcome = words[0]
    if outcome.startswith("signal"):
        outcome = "died"
        deaths.append((at, bit, words[0]))
    elif outcome == "loaded":
        run = words[1] if len(words) > 1 else "?"
        counts["ran-crashed" if run.startswith("signal") else run] += 1
    elif outcome != "refused":
        odd.append((at, bit, " ".join(words)))
    counts[outcome] += 1
print(json.dumps({"flips": flips, "counts": counts, "deaths": deaths[:10], "odd": odd[:10]}))
"""


@pytest.mark.skipif(not hasattr(os, "fork") or not X86_64_LINUX, reason="needs fork and x86-64 ELF")
@pytest.mark.parametrize("which", ["compiled", "hand-written"])
def test_rehashed_object_code_fuzz_never_kills_the_loader(tmp_path, request, which):
    """Single-bit flips in the object code, rehashed, each loaded in a forked child: it is
    refused with a one-line ArtifactError or it loads; loading never dies. (A flip in an
    instruction or a constant loads fine and may then compute garbage or crash when called:
    the counts of those are reported, not asserted; only a pinned file hash catches them.)
    PULLBACK_ELF_FUZZ=N runs N flips per object instead of 200."""
    flips = int(os.environ.get(ELF_FUZZ_ENV, "200"))
    blob = request.getfixturevalue("blob" if which == "compiled" else "hand_written_blob")
    path = tmp_path / "good.pbk"
    path.write_bytes(blob)
    result = run_python(ELF_FUZZ_CHILD, str(path), str(flips), "1234", timeout=max(600, flips))
    report = json.loads(assert_ok(result).strip().splitlines()[-1])
    print(which, json.dumps(report))
    counts = report["counts"]
    assert not report["deaths"], f"{len(report['deaths'])} of {flips} loads killed the process (offset, bit, signal): {report}"
    assert not report["odd"], f"loads that failed other than with a one-line ArtifactError: {report}"
    assert counts.get("refused", 0) > 0 and counts.get("loaded", 0) > 0, report
