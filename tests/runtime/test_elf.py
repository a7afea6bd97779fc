"""runtime/elf.py: object code is vetted before LLVM links it.

Real objects (hand-written IR in the default and large code models, with .eh_frame, data
pointers, zero-filled globals and a libm call; compiled graphs) pass and list their
symbols; each check refuses a targeted corruption with a message naming it; and no
single-bit flip of an object's ELF metadata makes read_symbols raise anything but
ArtifactError. Whether accepted corruptions load without crashing LLVM is the fork fuzz
in tests/reliability/test_hostile_artifacts.py.
"""
from __future__ import annotations

import functools
import struct
import sys

import pytest

import runtime
from runtime import elf
from runtime.loader import _llvm

pytestmark = pytest.mark.skipif(sys.byteorder != "little" or runtime.host_target()["triple"].split("-")[0] != "x86_64",
                                reason="the fixtures are x86-64 objects")

# expf through the PLT, a constant pool, a table of code and data pointers, zero-filled
# globals, external data (libc's environ); no `nounwind`, so LLVM adds .eh_frame. Compiled
# in each code model, it uses every relocation type in elf.RELOCATIONS.
IR = r"""
@table = internal constant [2 x ptr] [ptr @twice, ptr @scratch]
@scratch = internal global [16 x float] zeroinitializer
@environ = external global ptr
@seen = internal global ptr null
declare float @expf(float)
define internal float @twice(float %x) { %y = fmul float %x, 2.0
  ret float %y }
define i32 @entry(ptr %ins, ptr %outs, ptr %ws) {
  %a = load ptr, ptr %ins
  %x = load float, ptr %a
  %f = load ptr, ptr @table
  %t = call float %f(float %x)
  %e = call float @expf(float %t)
  %s = fadd float %e, 0x3FB99999A0000000
  store float %s, ptr @scratch
  %o = load ptr, ptr %outs
  store float %s, ptr %o
  %env = load ptr, ptr @environ
  store ptr %env, ptr @seen
  ret i32 0
}
"""

SHDR = {"name": (0, "I"), "type": (4, "I"), "flags": (8, "Q"), "addr": (16, "Q"), "offset": (24, "Q"),
        "size": (32, "Q"), "link": (40, "I"), "info": (44, "I"), "align": (48, "Q"), "entsize": (56, "Q")}
SYM = {"name": (0, "I"), "info": (4, "B"), "other": (5, "B"), "shndx": (6, "H"), "value": (8, "Q"), "size": (16, "Q")}
RELA = {"offset": (0, "Q"), "info": (8, "Q"), "addend": (16, "q")}
EHDR = {"class": (4, "B"), "data": (5, "B"), "ident_version": (6, "B"), "osabi": (7, "B"), "type": (16, "H"),
        "machine": (18, "H"), "version": (20, "I"), "phoff": (32, "Q"), "shoff": (40, "Q"), "flags": (48, "I"),
        "ehsize": (52, "H"), "phnum": (56, "H"), "shentsize": (58, "H"), "shnum": (60, "H"), "shstrndx": (62, "H")}


@functools.cache
def build(codemodel: str) -> bytes:
    llvm = _llvm()
    target = runtime.host_target()
    machine = llvm.Target.from_triple(target["triple"]).create_target_machine(
        cpu=target["cpu"], features=target["features"], opt=2, reloc="pic", codemodel=codemodel)
    module = llvm.parse_assembly(IR)
    module.triple = target["triple"]
    module.data_layout = str(machine.target_data)
    return machine.emit_object(module)


class Obj:
    """Just enough ELF writing to corrupt one field at a time."""

    def __init__(self, code: bytes) -> None:
        self.code = bytearray(code)
        self.shoff = self.get(EHDR, 0, "shoff")
        self.shnum = self.get(EHDR, 0, "shnum")
        names = self.shdr(self.get(EHDR, 0, "shstrndx"))
        self.names = [self._cstr(names["offset"] + self.shdr(i)["name"]) for i in range(self.shnum)]

    def get(self, layout: dict, base: int, field: str) -> int:
        at, fmt = layout[field]
        return struct.unpack_from("<" + fmt, self.code, base + at)[0]

    def set(self, layout: dict, base: int, field: str, value: int) -> "Obj":
        at, fmt = layout[field]
        struct.pack_into("<" + fmt, self.code, base + at, value)
        return self

    def _cstr(self, at: int) -> str:
        return self.code[at : self.code.index(b"\0", at)].decode()

    def shdr(self, index: int) -> dict:
        return {field: self.get(SHDR, self.shoff + 64 * index, field) for field in SHDR}

    def index(self, name: str | None = None, type: int | None = None) -> int:
        return next(i for i in range(self.shnum) if (name is None or self.names[i] == name)
                    and (type is None or self.shdr(i)["type"] == type))

    def section(self, index: int, field: str, value: int) -> "Obj":
        return self.set(SHDR, self.shoff + 64 * index, field, value)

    def header(self, field: str, value: int) -> "Obj":
        return self.set(EHDR, 0, field, value)

    def symbol_at(self, index: int) -> int:
        return self.shdr(self.index(type=elf.SHT_SYMTAB))["offset"] + 24 * index

    def symbols(self) -> list[tuple[str, dict]]:
        symtab = self.shdr(self.index(type=elf.SHT_SYMTAB))
        strings = self.shdr(symtab["link"])["offset"]
        out = []
        for i in range(symtab["size"] // 24):
            fields = {f: self.get(SYM, symtab["offset"] + 24 * i, f) for f in SYM}
            out.append((self._cstr(strings + fields["name"]), fields))
        return out

    def symbol(self, name: str, field: str, value: int) -> "Obj":
        """`name` is a symbol's name, or a section's for its section symbol (which has none)."""
        index = next(i for i, (n, s) in enumerate(self.symbols()) if n == name or (
            not n and s["info"] & 0xF == elf.STT_SECTION and self.names[s["shndx"]] == name))
        return self.set(SYM, self.symbol_at(index), field, value)

    def relocation(self, section: str, entry: int, field: str, value: int) -> "Obj":
        return self.set(RELA, self.shdr(self.index(section))["offset"] + 24 * entry, field, value)

    def reloc_info(self, section: str, entry: int) -> tuple[int, int]:
        info = self.get(RELA, self.shdr(self.index(section))["offset"] + 24 * entry, "info")
        return info >> 32, info & 0xFFFFFFFF

    def bytes(self) -> bytes:
        return bytes(self.code)


def refused(code: bytes, match: str) -> str:
    with pytest.raises(runtime.ArtifactError, match=match) as info:
        elf.read_symbols(code)
    assert str(info.value).startswith("object code"), info.value
    return str(info.value)


# ------------------------------------------------------------------ real objects pass
@pytest.mark.parametrize("codemodel", ["default", "large"])
def test_hand_written_objects_pass(codemodel):
    code = build(codemodel)
    names = Obj(code).names
    assert ".eh_frame" in names and any(n.endswith("bss") for n in names)
    symbols = elf.read_symbols(code)
    assert symbols.machine == elf.EM_X86_64
    assert symbols.functions == frozenset({"entry"})  # `twice` is internal
    assert symbols.undefined == (("environ", "expf") if codemodel == "default"
                                 else ("_GLOBAL_OFFSET_TABLE_", "environ", "expf"))


def test_compiled_graphs_pass():
    codegen = pytest.importorskip("compiler.codegen")
    import compiler
    from compiler import Spec, ops

    def loss(p, x):
        return ops.mean(ops.square(ops.tanh(x @ p["W"] + p["b"])))

    graph = compiler.value_and_grad(compiler.trace(loss, {"W": Spec((3, 2)), "b": Spec((2,))}, Spec((4, 3))))
    for opt_level in (0, 2):
        kernel = codegen.compile(graph, opt_level=opt_level, cache=False)
        assert kernel.manifest["symbol"] in elf.read_symbols(kernel.object_code).functions


def test_relocation_allow_list_is_what_the_objects_use():
    """The allow-list is exactly the relocation types of this IR in LLVM's PIC code models."""
    used = set()
    for codemodel in ("default", "large", "small", "medium"):
        obj = Obj(build(codemodel))
        for index in range(obj.shnum):
            if obj.shdr(index)["type"] == elf.SHT_RELA:
                used |= {obj.reloc_info(obj.names[index], e)[1] for e in range(obj.shdr(index)["size"] // 24)}
    assert used == set(elf.RELOCATIONS[elf.EM_X86_64]), sorted(used)


# --------------------------------------------------------------------- the header
def obj(codemodel: str = "default") -> Obj:
    return Obj(build(codemodel))


@pytest.mark.parametrize("field, value, match", [
    ("class", 1, r"class is 1, only 64-bit"),
    ("data", 2, r"data encoding is 2"),
    ("ident_version", 0, r"version is 0/1"),
    ("version", 2, r"version is 1/2"),
    ("osabi", 9, r"OS ABI is 9"),
    ("type", 3, r"ELF type 3, expected a relocatable object"),
    ("flags", 1, r"header flags are 0x1"),
    ("phnum", 1, r"1 program header"),
    ("ehsize", 52, r"header sizes are 52/64"),
    ("shentsize", 40, r"header sizes are 64/40"),
    ("shnum", 0, r"section table has 0 entries"),
    ("shnum", 0xFF00, r"section table has 65280 entries"),
    ("shnum", 0x7FFF, r"section table \(32767 entries"),
    ("shoff", 2**40, r"section table .* is misplaced"),
    ("shoff", 12, r"section table .* is misplaced"),
    ("shstrndx", 0x7FFF, r"e_shstrndx 32767 is not a section"),
    ("shstrndx", 0, r"e_shstrndx 0 is not a section"),
])
def test_header(field, value, match):
    refused(obj().header(field, value).bytes(), match)


def test_header_misaligned_section_table_and_wrong_name_table():
    o = obj()
    refused(o.header("shoff", o.shoff + 4).bytes(), r"misplaced")
    refused(obj().header("shstrndx", obj().index(type=elf.SHT_SYMTAB)).bytes(), r"section-name table .* is not a string table")


def test_not_elf_or_truncated():
    refused(b"\x7fELF" + bytes(10), r"truncated: 14 bytes")
    refused(b"MZ" + bytes(100), r"is not an ELF file")


# ------------------------------------------------------------------- the sections
def test_sections():
    o = obj()
    text, eh, symtab = o.index(".text"), o.index(".eh_frame"), o.index(type=elf.SHT_SYMTAB)
    rela = o.index(".rela.text")
    strtab = o.shdr(symtab)["link"]
    cases = [
        (obj().section(text, "type", 0x6FFFFFF5), r"type 0x6ffffff5, which LLVM does not emit"),
        (obj().section(text, "type", elf.SHT_NULL), r"type 0x0"),
        (obj().section(text, "flags", 0x406), r"unknown or unsupported: 0x400"),  # SHF_TLS
        (obj().section(text, "addr", 0x1000), r"has address 0x1000"),
        (obj().section(text, "align", 24), r"alignment 24, not a power of two"),
        (obj().section(text, "align", 1 << 20), r"alignment 1048576"),
        (obj().section(text, "offset", 2**63), r"runs past the end"),
        (obj().section(text, "size", 2**40), r"runs past the end"),
        (obj().section(text, "offset", 0), r"ELF header and section .* overlap"),
        (obj().section(o.index(".bss", elf.SHT_NOBITS), "size", 2**40), r"zero-filled sections need"),
        (obj().section(symtab, "type", elf.SHT_PROGBITS), r"has 0 symbol tables"),
        (obj().section(o.index(".note.GNU-stack"), "type", elf.SHT_SYMTAB), r"has 2 symbol tables"),
        (obj().section(symtab, "entsize", 16), r"symbol table .* entry size 16"),
        (obj().section(symtab, "entsize", 0), r"entry size 0"),
        (obj().section(symtab, "link", 0), r"links to section 0, which is not a string table"),
        (obj().section(symtab, "link", text), r"which is not a string table"),
        (obj().section(symtab, "flags", elf.SHF_ALLOC), r"marked to be loaded"),
        (obj().section(strtab, "size", o.shdr(strtab)["size"] - 1), r"does not start and end with a NUL"),
        (obj().section(text, "name", 2**31), r"name of section .* past the end"),
        (obj().section(rela, "link", text), r"links to section .*, not the symbol table"),
        (obj().section(rela, "info", 0), r"applies to section 0, which does not exist"),
        (obj().section(rela, "info", 999), r"applies to section 999"),
        (obj().section(rela, "info", symtab), r"which is not loaded code or data"),
        (obj().section(rela, "entsize", 0), r"relocation section .* entry size 0"),
        (obj().section(rela, "size", 25), r"entry size 24, size 25"),
        (obj().section(rela, "offset", o.shdr(rela)["offset"] + 4), r"8-byte aligned|overlap"),
        (obj().section(eh, "type", elf.SHT_PROGBITS), r"misnamed or mistyped"),
        (obj().section(text, "type", elf.SHT_X86_64_UNWIND), r"misnamed or mistyped"),
        (obj().section(eh, "flags", 0), r"unwind table that is not loaded|not loaded code or data"),
    ]
    for o2, match in cases:
        refused(o2.bytes(), match)


def test_section_zero_must_be_null():
    refused(obj().section(0, "type", elf.SHT_PROGBITS).bytes(), r"section 0 is not the null section")


# --------------------------------------------------------------------- the symbols
def test_symbols():
    o = obj()
    text = o.index(".text")
    rodata = next(i for i, n in enumerate(o.names) if n.startswith(".rodata"))
    cases = [
        (obj().symbol("entry", "name", 2**31), r"name of symbol .* past the end"),
        (obj().symbol("entry", "info", 0x16), r"binding 1 and type 6"),  # STT_TLS
        (obj().symbol("entry", "info", 0x1A), r"binding 1 and type 10"),  # STT_GNU_IFUNC
        (obj().symbol("entry", "info", 0xA2), r"binding 10 and type 2"),  # STB_GNU_UNIQUE
        (obj().symbol("entry", "info", 0x02), r"out of order"),  # a local among the globals
        (obj().symbol("entry", "shndx", 0xFFF2), r"section 0xfff2, which does not exist"),  # SHN_COMMON
        (obj().symbol("entry", "shndx", 0xFFFF), r"section 0xffff"),  # SHN_XINDEX
        (obj().symbol("entry", "shndx", 0x7FFF), r"section 0x7fff"),
        (obj().symbol("entry", "shndx", o.index(type=elf.SHT_SYMTAB)), r"not loaded code or data"),
        (obj().symbol("entry", "shndx", rodata), r"function in section .*, which is not executable"),
        (obj().symbol("entry", "value", 2**63), r"spans bytes"),
        (obj().symbol("entry", "size", 2**63), r"spans bytes"),
        (obj().symbol("entry", "value", o.shdr(text)["size"]), r"spans bytes"),
        (obj().symbol("expf", "info", 0x02), r"out of order|undefined but not"),
        (obj().symbol("expf", "name", 0), r"undefined but not a named"),
        (obj().symbol("expf", "info", 0x13), r"undefined but not"),  # an undefined section symbol
        (obj().symbol(".text", "shndx", elf.SHN_ABS), r"section symbol without a section"),
        (obj().symbol(".text", "shndx", elf.SHN_UNDEF), r"undefined but not"),
    ]
    symbols = o.symbols()
    file_symbol = next(i for i, (_, s) in enumerate(symbols) if s["info"] & 0xF == elf.STT_FILE)
    null = obj()
    null.set(SYM, null.symbol_at(0), "value", 1)
    cases += [
        (null, r"does not start with the null symbol"),
        (obj().set(SYM, o.symbol_at(file_symbol), "shndx", text), r"file symbol that is not local and absolute"),
    ]
    symtab = o.index(type=elf.SHT_SYMTAB)
    cases += [(obj().section(symtab, "info", 999), r"first global symbol is 999")]
    for o2, match in cases:
        refused(o2.bytes(), match)


# ----------------------------------------------------------------- the relocations
def test_relocations():
    o = obj()
    count = len(o.symbols())
    sym, kind = o.reloc_info(".rela.text", 0)
    symbols = o.symbols()
    file_symbol = next(i for i, (_, s) in enumerate(symbols) if s["info"] & 0xF == elf.STT_FILE)
    cases = [
        (31, r"relocation type 31, which is not one LLVM emits"),  # PLTOFF64: RuntimeDyld aborts
        (23, r"relocation type 23"),  # TPOFF32
        (0, r"relocation type 0"),
        (2**31, r"relocation type 2147483648"),
    ]
    for bad_kind, match in cases:
        refused(obj().relocation(".rela.text", 0, "info", sym << 32 | bad_kind).bytes(), match)
    refused(obj().relocation(".rela.text", 0, "info", 0 << 32 | kind).bytes(), r"names symbol 0")
    refused(obj().relocation(".rela.text", 0, "info", 0xFFFF << 32 | kind).bytes(), r"names symbol 65535; the symbol table has 1\.\.")
    refused(obj().relocation(".rela.text", 0, "info", count << 32 | kind).bytes(), rf"names symbol {count}")
    refused(obj().relocation(".rela.text", 0, "info", file_symbol << 32 | kind).bytes(), r"refers to a file symbol")
    size = o.shdr(o.index(".text"))["size"]
    for offset in (size, size - 3, 2**63, 2**64 - 1):
        refused(obj().relocation(".rela.text", 0, "offset", offset).bytes(), r"patches 4 bytes at offset")


def test_near_relocations_must_reach():
    """PC32/PLT32 displacements RuntimeDyld would assert on (it is built with assertions)."""
    o = obj()
    entries = o.shdr(o.index(".rela.text"))["size"] // 24
    pc32 = next(e for e in range(entries) if o.reloc_info(".rela.text", e)[1] == 2)
    refused(obj().relocation(".rela.text", pc32, "addend", 2**31).bytes(), r"R_X86_64_PC32\) has an addend too large")
    refused(obj().relocation(".rela.text", pc32, "addend", -2**63).bytes(), r"addend too large")
    # the bytes at the site are added to the addend: a flipped bit there is just as far
    at = o.shdr(o.index(".text"))["offset"] + o.get(RELA, o.shdr(o.index(".rela.text"))["offset"] + 24 * pc32, "offset")
    far = obj()
    far.code[at + 3] ^= 0x80
    refused(far.bytes(), r"addend too large")
    # an undefined, unnamed or absolute symbol resolves outside the object
    symbols = o.symbols()
    expf = next(i for i, (n, _) in enumerate(symbols) if n == "expf")
    refused(obj().relocation(".rela.text", pc32, "info", expf << 32 | 2).bytes(), r"symbol outside the object")
    unnamed = obj().symbol(".text", "info", 0x02)  # the section symbol becomes an unnamed function
    refused(unnamed.bytes(), r"symbol outside the object")
    # PLT32 to an undefined function goes through a stub inside the object: fine
    plt = next(e for e in range(entries) if o.reloc_info(".rela.text", e)[1] == 4)
    assert o.reloc_info(".rela.text", plt)[0] == expf
    elf.read_symbols(obj().relocation(".rela.text", plt, "addend", -2**20).bytes())


# ------------------------------------------------------------------------ .eh_frame
def eh(o: Obj) -> tuple[int, int]:
    section = o.shdr(o.index(".eh_frame"))
    return section["offset"], section["size"]


@pytest.mark.parametrize("codemodel", ["default", "large"])
def test_eh_frame(codemodel):
    o = obj(codemodel)
    start, size = eh(o)
    assert o.code[start + 4 : start + 8] == bytes(4)  # a CIE first
    cie_length = struct.unpack_from("<I", o.code, start)[0]
    fde = start + 4 + cie_length

    def patch(at: int, fmt: str, value: int) -> bytes:
        p = Obj(o.bytes())
        struct.pack_into("<" + fmt, p.code, at, value)
        return p.bytes()

    refused(patch(start, "I", size), r"record at 0 has length")
    refused(patch(start, "I", 0xFFFFFFFF), r"length 0xffffffff")
    refused(patch(start, "I", 2), r"length 0x2")
    refused(patch(start + 8, "B", 2), r"CIE at 0 has version 2")
    refused(patch(start + 9, "B", ord("e")), r"augmentation 'eR'")
    refused(patch(start + 10, "B", ord("X")), r"augmentation 'zX'")
    refused(patch(fde + 4, "I", 1), r"FDE at .* points at .*, where no earlier CIE starts")
    refused(patch(fde + 4, "I", 0x7FFFFFFF), r"where no earlier CIE starts")
    # the CIE's pointer encoding: "zR", then code/data alignment, return register, length, encoding
    encoding_at = start + 8 + 1 + 3 + 1 + 1 + 1 + 1
    assert o.code[encoding_at] in (0x1B, 0x1C), hex(o.code[encoding_at])
    for bad in (0x01, 0x09, 0x40, 0x30, 0x9B, 0x0D):  # leb128 (no fixed size), funcrel, datarel, indirect, unknown
        refused(patch(encoding_at, "B", bad), rf"pointer encoding {bad:#x}")
    elf.read_symbols(patch(encoding_at, "B", o.code[encoding_at] & 0x0F))  # absolute pointers are fine
    terminated = Obj(o.bytes())
    struct.pack_into("<I", terminated.code, fde, 0)  # a terminator: nothing after it is read
    elf.read_symbols(terminated.bytes())


# ------------------------------------------------------------------ any single bit
@pytest.mark.parametrize("codemodel", ["default", "large"])
def test_every_bit_of_the_metadata_gives_symbols_or_artifact_error(codemodel):
    """In-process and without LLVM (so it is cheap): read_symbols never fails any other way."""
    o = obj(codemodel)
    regions = [(0, 64), (o.shoff, o.shoff + 64 * o.shnum)]
    for index in range(1, o.shnum):
        section = o.shdr(index)
        if section["type"] in (elf.SHT_SYMTAB, elf.SHT_STRTAB, elf.SHT_RELA, elf.SHT_X86_64_UNWIND):
            regions.append((section["offset"], section["offset"] + section["size"]))
    outcomes = {"accepted": 0, "refused": 0}
    for start, stop in regions:
        for at in range(start, stop):
            for bit in range(8) if at < 64 else (at % 8,):  # every bit of the header, one per byte elsewhere
                data = bytearray(o.code)
                data[at] ^= 1 << bit
                try:
                    elf.read_symbols(bytes(data))
                except runtime.ArtifactError as exc:
                    assert "\n" not in str(exc)
                    outcomes["refused"] += 1
                else:
                    outcomes["accepted"] += 1
    assert outcomes["refused"] > outcomes["accepted"] > 0, outcomes


# --------------------------------------------------------------------- linear time
def with_symbol_table(count: int, name: bytes, shared: bool) -> bytes:
    """The object with `count` local absolute symbols in a new symbol table, their names in a
    string table that starts with the original one (section names still resolve): every
    symbol named `name` at one offset (shared) or each its own copy."""
    o = obj()
    symtab = o.index(type=elf.SHT_SYMTAB)
    strtab = o.shdr(symtab)["link"]
    old = o.shdr(strtab)
    code = o.code
    original = bytes(code[old["offset"]:old["offset"] + old["size"]])
    names = name + b"\0" if shared else (name + b"\0") * (count - 1)
    code += bytes(-len(code) % 8)
    strings_at = len(code)
    code += original + names
    code += bytes(-len(code) % 8)
    symbols_at = len(code)
    code += bytes(24)
    for i in range(1, count):
        offset = len(original) + (0 if shared else (i - 1) * (len(name) + 1))
        code += struct.pack("<IBBHQQ", offset, 0, 0, elf.SHN_ABS, 0, 0)
    o.section(strtab, "offset", strings_at).section(strtab, "size", len(original) + len(names))
    o.section(symtab, "offset", symbols_at).section(symtab, "size", 24 * count).section(symtab, "info", count)
    return o.bytes()


def test_one_long_name_shared_by_every_symbol_is_refused_not_scanned_again_and_again():
    # 4,000 symbols all naming one 40 kB run: 160 MB of names from a 140 kB object
    refused(with_symbol_table(4000, b"A" * 40_000, shared=True), r"names add up to .* string table is built to be slow")


def test_many_names_cost_time_linear_in_their_number():
    import time

    def seconds(count: int) -> float:
        code = with_symbol_table(count, b"name_of_moderate_length", shared=False)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            with pytest.raises(runtime.ArtifactError, match="relocation"):  # the relocations name old symbols
                elf.read_symbols(code)
            best = min(best, time.perf_counter() - start)
        return best

    small, large = seconds(5_000), seconds(40_000)
    assert large < 8 * 4 * small + 0.05, (small, large)  # 8x the symbols: linear is ~8x, quadratic 64x
