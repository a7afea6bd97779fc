"""Just enough ELF reading to vet object code before LLVM sees it.

MCJIT does not fail on an unresolved external: it patches in address 0 and the first
call crashes the process. So the loader lists the object's undefined symbols here and
refuses any the process cannot provide, and checks the entry symbol is defined.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from runtime.errors import ArtifactError

ET_REL = 1
SHT_SYMTAB = 2
SHT_NOBITS = 8
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
STT_FUNC = 2
SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00

# e_machine of the architectures LLVM may name in a triple
MACHINES = {"x86_64": 62, "i386": 3, "i686": 3, "aarch64": 183, "arm": 40, "ppc64le": 21, "ppc64": 21,
            "riscv64": 243, "s390x": 22}


@dataclass(frozen=True)
class ElfSymbols:
    machine: int
    functions: frozenset[str]  # defined global/weak functions
    undefined: tuple[str, ...]  # undefined global references (weak ones excluded)


def read_symbols(code: bytes) -> ElfSymbols:
    """Parse the header, section table and symbol table; raise ArtifactError if malformed."""
    try:
        return _read(code)
    except struct.error as exc:
        raise ArtifactError(f"object code is not a well-formed ELF file: {exc}") from None


def _read(code: bytes) -> ElfSymbols:
    if len(code) < 16 or code[:4] != b"\x7fELF":
        raise ArtifactError(f"object code is not an ELF file (starts with {bytes(code[:4])!r})")
    elf_class, data = code[4], code[5]
    if elf_class not in (1, 2) or data not in (1, 2):
        raise ArtifactError(f"object code has an unknown ELF class/encoding ({elf_class}, {data})")
    end = "<" if data == 1 else ">"
    wide = elf_class == 2
    e_type, e_machine = struct.unpack_from(end + "HH", code, 16)
    if e_type != ET_REL:
        raise ArtifactError(f"object code is ELF type {e_type}, expected a relocatable object (type {ET_REL})")
    if wide:
        shoff, shentsize, shnum = struct.unpack_from(end + "Q", code, 40)[0], *struct.unpack_from(end + "HH", code, 58)
    else:
        shoff, shentsize, shnum = struct.unpack_from(end + "I", code, 32)[0], *struct.unpack_from(end + "HH", code, 46)
    section = struct.Struct(end + ("IIQQQQIIQQ" if wide else "IIIIIIIIII"))
    if shoff == 0 or shentsize < section.size:
        raise ArtifactError("object code has no ELF section table")

    def header(index: int) -> tuple:
        return section.unpack_from(code, shoff + index * shentsize)

    if shnum == 0:  # extended numbering: the real count sits in section 0's size
        shnum = header(0)[5]
    if shoff + shnum * shentsize > len(code):
        raise ArtifactError("object code's ELF section table runs past its end")
    symbol = struct.Struct(end + ("IBBHQQ" if wide else "IIIBBH"))
    functions: set[str] = set()
    undefined: list[str] = []
    for index in range(shnum):
        _, sh_type, _, _, offset, size, link, _, _, entsize = header(index)
        if sh_type != SHT_NOBITS and offset + size > len(code):
            raise ArtifactError(f"object code's ELF section {index} runs past its end")
        if sh_type != SHT_SYMTAB:
            continue
        if link >= shnum or entsize < symbol.size or offset + size > len(code):
            raise ArtifactError("object code's ELF symbol table is malformed")
        str_offset, str_size = header(link)[4], header(link)[5]
        if str_offset + str_size > len(code):
            raise ArtifactError("object code's ELF string table runs past its end")
        strings = code[str_offset : str_offset + str_size]
        for position in range(offset + entsize, offset + size - symbol.size + 1, entsize):  # entry 0 is null
            fields = symbol.unpack_from(code, position)
            name_at, info, shndx = (fields[0], fields[1], fields[3]) if wide else (fields[0], fields[3], fields[5])
            bind, kind = info >> 4, info & 0xF
            if bind == STB_LOCAL or name_at == 0:
                continue
            name = _c_string(strings, name_at)
            if shndx == SHN_UNDEF:
                if bind == STB_GLOBAL:
                    undefined.append(name)
            elif kind == STT_FUNC and shndx < SHN_LORESERVE:
                functions.add(name)
    return ElfSymbols(e_machine, frozenset(functions), tuple(sorted(set(undefined))))


def _c_string(strings: bytes, at: int) -> str:
    if at >= len(strings):
        raise ArtifactError("object code's ELF symbol names point past the string table")
    stop = strings.find(b"\0", at)
    return strings[at : stop if stop >= 0 else len(strings)].decode("utf-8", "replace")
