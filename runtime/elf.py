"""Vet ELF object code before LLVM sees it, and list its symbols.

llvmlite hands object code to LLVM's object reader and MCJIT's RuntimeDyld, and neither
reports a problem back to Python: an object LLVM cannot parse becomes a NULL the engine
dereferences, and RuntimeDyld report_fatal_error()s (SIGABRT) on what it does not expect
(an unknown relocation type, a symbol in a section that does not exist, a wrong entry
size) or writes through an out-of-range offset (SIGSEGV). The artifact hash does not help:
anyone can recompute it. So read_symbols checks everything RuntimeDyld will read, against
what LLVM emits for our code (x86-64, PIC, the large code model; the default one for
hand-written IR), and refuses anything else with ArtifactError before LLVM is called:

- header: 64-bit, this host's byte order, ELF version 1, relocatable, no program headers,
  standard header sizes, section table and section-name table index in range;
- sections: known types and flags (no TLS, groups, compression), contents inside the file
  and not overlapping, alignment a power of two <= MAX_ALIGN, zero-fill <= MAX_ZERO_FILL,
  names inside the name table; one symbol table, linked to a string table; relocation
  sections linked to it, 24-byte entries, applying to a loaded section with contents;
- string tables NUL-terminated at both ends;
- symbols: name in range, known binding and type (no TLS, common or IFUNC), locals first,
  defined ones inside a loaded section (functions in an executable one), undefined ones
  global or weak and named;
- relocations: type in the machine's allow-list (RELOCATIONS), the patched bytes inside
  the target section, the symbol inside the table and neither the null nor a file symbol;
- .eh_frame (hand-written IR without `nounwind` has one; RuntimeDyld registers it with the
  process's unwinder, which parses it at registration or at the first exception anywhere
  in the process): records chained to the end, each FDE pointing at an earlier CIE,
  known augmentations and pointer encodings.

Not checked, because nothing reads them while loading: instruction bytes, constants and
relocation addends (a flipped bit there loads, then computes garbage or crashes when
called: only a pinned file hash catches that), and the call-frame programs in .eh_frame
(run only when unwinding through this code, which never throws). Relocation types are
checked for x86-64 only, the one machine we have derived an allow-list for.

Every check takes time linear in the object's size, so a hostile file costs no more to
refuse than a real one of its size costs to accept.

MCJIT does not fail on an unresolved external either: it patches in address 0 and the
first call crashes the process. So the loader lists the object's undefined symbols here
and refuses any the process cannot provide, and checks the entry symbol is defined.
"""
from __future__ import annotations

import bisect
import struct
import sys
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from runtime.errors import ArtifactError

ET_REL = 1
EM_X86_64 = 62
SHT_NULL, SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOBITS = 0, 1, 2, 3, 4, 8
SHT_X86_64_UNWIND = 0x70000001
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR, SHF_MERGE, SHF_STRINGS, SHF_INFO_LINK = 0x1, 0x2, 0x4, 0x10, 0x20, 0x40
SHF_X86_64_LARGE = 0x10000000
SHN_UNDEF, SHN_LORESERVE, SHN_ABS = 0, 0xFF00, 0xFFF1
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE = 0, 1, 2, 3, 4
MAX_ALIGN = 4096  # LLVM aligns our sections to <= 64; huge ones overflow the JIT's memory reservation
MAX_ZERO_FILL = 1 << 26  # bytes of SHT_NOBITS in all; our code keeps its scratch in the workspace
# x86-64 relocations that patch a 32-bit pc-relative displacement: RuntimeDyld (built with
# assertions in llvmlite) aborts unless the target lies within +-2 GiB of the patched bytes
_NEAR = (2, 4, 26, 42)  # PC32, PLT32, GOTPC32, REX_GOTPCRELX
_PLACEHOLDER = (2, 4)  # PC32 and PLT32 also add the 4 bytes already at the site to the addend

# e_machine of the architectures LLVM may name in a triple
MACHINES = {"x86_64": 62, "i386": 3, "i686": 3, "aarch64": 183, "arm": 40, "ppc64le": 21, "ppc64": 21,
            "riscv64": 243, "s390x": 22}

# Relocation types allowed per machine: {type: (name, bytes patched)}. Derived from real
# objects, not from the ABI: every op sample and example model compiled at -O0..-O3 (large
# code model) uses only GOT64, GOTOFF64 and GOTPC64; hand-written IR (default model) adds
# PC32 and PLT32 (.eh_frame, calls); probes of data pointers, jump tables, zero-initialized
# and external globals in the small/medium/large models add 64, PC64, GOTPC32 and
# REX_GOTPCRELX. RuntimeDyld aborts on types it does not implement (e.g. PLTOFF64, TLS).
RELOCATIONS: dict[int, dict[int, tuple[str, int]]] = {
    EM_X86_64: {
        1: ("R_X86_64_64", 8), 2: ("R_X86_64_PC32", 4), 4: ("R_X86_64_PLT32", 4), 24: ("R_X86_64_PC64", 8),
        25: ("R_X86_64_GOTOFF64", 8), 26: ("R_X86_64_GOTPC32", 4), 27: ("R_X86_64_GOT64", 8),
        29: ("R_X86_64_GOTPC64", 8), 42: ("R_X86_64_REX_GOTPCRELX", 4),
    },
}
_SECTION_TYPES = {SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOBITS}
_MACHINE_SECTION_TYPES = {EM_X86_64: {SHT_X86_64_UNWIND}}
_FLAGS = SHF_WRITE | SHF_ALLOC | SHF_EXECINSTR | SHF_MERGE | SHF_STRINGS | SHF_INFO_LINK
_MACHINE_FLAGS = {EM_X86_64: SHF_X86_64_LARGE}
_LOADED = {SHT_PROGBITS, SHT_NOBITS, SHT_X86_64_UNWIND}  # section types RuntimeDyld copies into memory
_ENTRY = 24  # bytes of an Elf64_Sym and an Elf64_Rela
_NAME_BYTES_PER_BYTE = 4  # decoded names per byte of object: LLVM's shared name tails stay far below


@dataclass(frozen=True)
class ElfSymbols:
    machine: int
    functions: frozenset[str]  # defined global/weak functions
    undefined: tuple[str, ...]  # undefined global references (weak ones excluded)


class Section(NamedTuple):
    index: int
    name: int
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    align: int
    entsize: int


def read_symbols(code: bytes) -> ElfSymbols:
    """Validate the object (see the module doc) and list its symbols; ArtifactError if malformed."""
    try:
        return _Object(bytes(code)).summary()
    except (struct.error, ValueError, IndexError) as exc:  # a check missed a bound: still a refusal, never a crash
        raise ArtifactError(f"object code is not a well-formed ELF file: {exc}") from None


def _bad(message: str) -> ArtifactError:
    return ArtifactError(f"object code's ELF {message}")


class _Object:
    def __init__(self, code: bytes) -> None:
        self.code = code
        self._nuls: dict[int, list[int]] = {}  # string table section -> offsets of its NULs
        self._name_bytes = 0
        self._header()
        self._sections()
        self._symbols()
        for section in self.sections:
            if section.type == SHT_RELA:
                self._relocations(section)
        for section in self.sections:
            if self.names[section.index] == ".eh_frame":
                _EhFrame(self, section).check()

    # ---- header -----------------------------------------------------------------------
    def _header(self) -> None:
        code = self.code
        if len(code) < 64 or code[:4] != b"\x7fELF":
            if code[:4] == b"\x7fELF":
                raise ArtifactError(f"object code is truncated: {len(code)} bytes, an ELF header alone is 64")
            raise ArtifactError(f"object code is not an ELF file (starts with {bytes(code[:4])!r})")
        elf_class, data, ident_version, osabi, abi_version = code[4:9]
        if elf_class != 2:
            raise _bad(f"class is {elf_class}, only 64-bit objects (class 2) are loaded")
        host_data = 1 if sys.byteorder == "little" else 2
        if data != host_data:
            raise _bad(f"data encoding is {data}, this host needs {host_data} ({sys.byteorder} endian)")
        self.end = "<" if data == 1 else ">"
        fields = struct.unpack_from(self.end + "HHIQQQIHHHHHH", code, 16)
        (e_type, self.machine, version, _, phoff, shoff, flags, ehsize, _, phnum, shentsize, shnum, shstrndx) = fields
        if ident_version != 1 or version != 1:
            raise _bad(f"version is {ident_version}/{version}, expected 1")
        if osabi not in (0, 3) or abi_version != 0:  # System V or GNU
            raise _bad(f"OS ABI is {osabi} version {abi_version}, expected System V or GNU (0 or 3), version 0")
        if e_type != ET_REL:
            raise ArtifactError(f"object code is ELF type {e_type}, expected a relocatable object (type {ET_REL})")
        if self.machine == EM_X86_64 and flags != 0:
            raise _bad(f"header flags are {flags:#x}, x86-64 defines none")
        if phoff != 0 or phnum != 0:
            raise _bad(f"header announces {phnum} program header(s) at {phoff}; a relocatable object has none")
        if ehsize != 64 or shentsize != 64:
            raise _bad(f"header sizes are {ehsize}/{shentsize} bytes, expected 64/64")
        if shnum == 0 or shnum >= SHN_LORESERVE:
            raise _bad(f"section table has {shnum} entries: 0 or {SHN_LORESERVE:#x} and more mean extended "
                       "numbering, which LLVM never emits for our code")
        if shoff < 64 or shoff % 8 or shoff + shnum * 64 > len(code):
            raise _bad(f"section table ({shnum} entries at offset {shoff}) is misplaced: the file has {len(code)} bytes")
        if not 0 < shstrndx < shnum:
            raise _bad(f"section-name table index e_shstrndx {shstrndx} is not a section (there are {shnum})")
        self.shoff, self.shnum, self.shstrndx = shoff, shnum, shstrndx

    # ---- sections ---------------------------------------------------------------------
    def _sections(self) -> None:
        code, shnum = self.code, self.shnum
        layout = struct.Struct(self.end + "IIQQQQIIQQ")
        self.sections = [Section(i, *layout.unpack_from(code, self.shoff + 64 * i)) for i in range(shnum)]
        if any(self.sections[0][1:]):
            raise _bad("section 0 is not the null section")
        types = _SECTION_TYPES | _MACHINE_SECTION_TYPES.get(self.machine, set())
        allowed_flags = _FLAGS | _MACHINE_FLAGS.get(self.machine, 0)
        zero_fill = 0
        for s in self.sections[1:]:
            what = f"section {s.index}"
            if s.type not in types:
                raise _bad(f"{what} has type {s.type:#x}, which LLVM does not emit for our code")
            if s.flags & ~allowed_flags:
                raise _bad(f"{what} has flags {s.flags:#x}; unknown or unsupported: {s.flags & ~allowed_flags:#x}")
            if s.addr != 0:
                raise _bad(f"{what} has address {s.addr:#x}; sections of a relocatable object have 0")
            if s.align & (s.align - 1) or s.align > MAX_ALIGN:
                raise _bad(f"{what} has alignment {s.align}, not a power of two <= {MAX_ALIGN}")
            if s.type == SHT_NOBITS:
                zero_fill += s.size
            elif s.offset > len(code) or s.size > len(code) - s.offset:
                raise _bad(f"{what} (offset {s.offset}, {s.size} bytes) runs past the end of the object ({len(code)} bytes)")
            if s.type in (SHT_SYMTAB, SHT_STRTAB, SHT_RELA) and s.flags & SHF_ALLOC:
                raise _bad(f"{what} is a symbol, string or relocation table marked to be loaded")
        if zero_fill > MAX_ZERO_FILL:
            raise _bad(f"zero-filled sections need {zero_fill} bytes, more than the {MAX_ZERO_FILL} allowed")
        # An upper bound on the span of the JIT's one memory reservation (sections, their
        # alignment, a stub and a GOT entry per relocation, page rounding of its 3 parts):
        # any two addresses in the loaded object are closer than this.
        self.image = (sum(s.size + MAX_ALIGN for s in self.sections if s.flags & SHF_ALLOC)
                      + sum(16 * (s.size // _ENTRY) for s in self.sections if s.type == SHT_RELA) + 4 * 65536)
        self._no_overlap()
        for s in self.sections[1:]:
            if s.type == SHT_STRTAB:
                self._string_table(s)
        if self.sections[self.shstrndx].type != SHT_STRTAB:
            raise _bad(f"section-name table (section {self.shstrndx}) is not a string table")
        names = self.sections[self.shstrndx]
        self.names = [self._string(names, s.name, f"name of section {s.index}") for s in self.sections]
        symtabs = [s for s in self.sections if s.type == SHT_SYMTAB]
        if len(symtabs) != 1:
            raise _bad(f"has {len(symtabs)} symbol tables, expected 1")
        self.symtab = symtabs[0]
        self._table(self.symtab, "symbol table")
        if not 0 < self.symtab.link < shnum or self.sections[self.symtab.link].type != SHT_STRTAB:
            raise _bad(f"symbol table links to section {self.symtab.link}, which is not a string table")
        for s in self.sections[1:]:
            if s.type == SHT_RELA:
                self._table(s, f"relocation section {s.index}")
                if s.link != self.symtab.index:
                    raise _bad(f"relocation section {s.index} links to section {s.link}, not the symbol table")
                if not 0 < s.info < shnum:
                    raise _bad(f"relocation section {s.index} applies to section {s.info}, which does not exist")
                target = self.sections[s.info]
                if target.type not in _LOADED or target.type == SHT_NOBITS or not target.flags & SHF_ALLOC:
                    raise _bad(f"relocation section {s.index} applies to section {s.info}, which is not loaded code or data")
            # RuntimeDyld registers whatever loaded section is *named* .eh_frame with the unwinder
            eh_frame = self.names[s.index] == ".eh_frame"
            if self.machine == EM_X86_64 and eh_frame != (s.type == SHT_X86_64_UNWIND):
                raise _bad(f"section {s.index} ({self.names[s.index]!r}, type {s.type:#x}) is misnamed or mistyped: "
                           "the unwind table is .eh_frame of type X86_64_UNWIND")
            if eh_frame and (s.type == SHT_NOBITS or not s.flags & SHF_ALLOC):
                raise _bad(f"section {s.index} is an unwind table that is not loaded")

    def _no_overlap(self) -> None:
        spans = [(0, 64, "the ELF header"), (self.shoff, self.shoff + 64 * self.shnum, "the section table")]
        spans += [(s.offset, s.offset + s.size, f"section {s.index}") for s in self.sections[1:]
                  if s.type != SHT_NOBITS and s.size]
        spans.sort()
        for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
            if start < end:
                raise _bad(f"{first} and {second} overlap in the file")

    def _table(self, s: Section, what: str) -> None:
        if s.entsize != _ENTRY or s.size % _ENTRY or s.offset % 8:
            raise _bad(f"{what} (section {s.index}) has entry size {s.entsize}, size {s.size}, offset {s.offset}: "
                       f"expected {_ENTRY}-byte entries at an 8-byte aligned offset")

    def _string_table(self, s: Section) -> None:
        if s.size == 0 or self.code[s.offset] != 0 or self.code[s.offset + s.size - 1] != 0:
            raise _bad(f"string table (section {s.index}) does not start and end with a NUL byte")

    def _string(self, table: Section, at: int, what: str) -> str:
        """The NUL-terminated name at `at`. Linear in all: the table's NULs are found once
        (scanning from each name instead made one long unterminated run, named by every
        symbol, cost names x table size), and the names decoded may add up to a few times
        the file at most (names may share a tail; all of them naming one long run may not)."""
        if at >= table.size:
            raise _bad(f"{what} starts at {at}, past the end of its string table ({table.size} bytes)")
        ends = self._nuls.get(table.index)
        if ends is None:  # the table ends with a NUL (_string_table), so every name has an end
            data = np.frombuffer(self.code, np.uint8, table.size, table.offset)
            ends = self._nuls[table.index] = np.flatnonzero(data == 0).tolist()
        end = ends[bisect.bisect_left(ends, at)]
        self._name_bytes += end - at
        if self._name_bytes > _NAME_BYTES_PER_BYTE * len(self.code) + 65536:
            raise _bad(f"{what} makes the names add up to {self._name_bytes} bytes, more than "
                       f"{_NAME_BYTES_PER_BYTE} times the object's size: its string table is built to be slow")
        return self.code[table.offset + at : table.offset + end].decode("utf-8", "replace")

    # ---- symbols ----------------------------------------------------------------------
    def _symbols(self) -> None:
        table, strings = self.symtab, self.sections[self.symtab.link]
        count = table.size // _ENTRY
        if count == 0 or any(self.code[table.offset : table.offset + _ENTRY]):
            raise _bad("symbol table does not start with the null symbol")
        if table.info > count:
            raise _bad(f"symbol table says its first global symbol is {table.info}, past its {count} entries")
        layout = struct.Struct(self.end + "IBBHQQ")
        self.symbol_types = np.zeros(count, np.uint8)
        self.symbol_shndx = np.zeros(count, np.uint32)
        self.symbol_named = np.zeros(count, bool)
        self.symbol_binds = np.zeros(count, np.uint8)
        functions: set[str] = set()
        undefined: list[str] = []
        for index in range(1, count):
            name_at, info, _, shndx, value, size = layout.unpack_from(self.code, table.offset + _ENTRY * index)
            bind, kind = info >> 4, info & 0xF
            what = f"symbol {index}"
            name = self._string(strings, name_at, f"name of {what}")
            if bind not in (STB_LOCAL, STB_GLOBAL, STB_WEAK) or kind > STT_FILE:
                raise _bad(f"{what} ({name!r}) has binding {bind} and type {kind}: only local/global/weak "
                           "notype/object/function/section/file symbols are loaded")
            if (bind == STB_LOCAL) != (index < table.info):
                raise _bad(f"{what} ({name!r}) is out of order: local symbols come first, {table.info} of them")
            self.symbol_types[index], self.symbol_shndx[index], self.symbol_named[index] = kind, shndx, bool(name)
            self.symbol_binds[index] = bind
            if shndx >= self.shnum and shndx != SHN_ABS:  # shnum < SHN_LORESERVE
                raise _bad(f"{what} ({name!r}) is defined in section {shndx:#x}, which does not exist "
                           f"(there are {self.shnum}; of the reserved indices only absolute is supported)")
            if kind == STT_FILE and (shndx != SHN_ABS or bind != STB_LOCAL):
                raise _bad(f"{what} ({name!r}) is a file symbol that is not local and absolute")
            if shndx == SHN_UNDEF:
                if bind == STB_LOCAL or kind not in (STT_NOTYPE, STT_OBJECT, STT_FUNC) or not name:
                    raise _bad(f"{what} ({name!r}) is undefined but not a named global or weak reference")
                if bind == STB_GLOBAL:
                    undefined.append(name)
            elif shndx == SHN_ABS:
                if kind == STT_SECTION:
                    raise _bad(f"{what} is a section symbol without a section")
            else:
                section = self.sections[shndx]
                if section.type not in _LOADED or not section.flags & SHF_ALLOC:
                    raise _bad(f"{what} ({name!r}) is defined in section {shndx}, which is not loaded code or data")
                if kind == STT_FUNC and (section.type == SHT_NOBITS or not section.flags & SHF_EXECINSTR):
                    raise _bad(f"{what} ({name!r}) is a function in section {shndx}, which is not executable")
                if value > section.size or size > section.size - value:
                    raise _bad(f"{what} ({name!r}) spans bytes {value}..{value + size} of section {shndx}, "
                               f"which has {section.size}")
                if kind == STT_FUNC and bind != STB_LOCAL:
                    functions.add(name)
        self.functions, self.undefined = frozenset(functions), tuple(sorted(set(undefined)))

    # ---- relocations ------------------------------------------------------------------
    def _relocations(self, s: Section) -> None:
        count = s.size // _ENTRY
        if count == 0:
            return
        layout = np.dtype([("offset", self.end + "u8"), ("info", self.end + "u8"), ("addend", self.end + "i8")])
        entries = np.frombuffer(self.code, layout, count, s.offset)
        symbol, kind = entries["info"] >> np.uint64(32), entries["info"] & np.uint64(0xFFFFFFFF)
        target = self.sections[s.info]
        allowed = RELOCATIONS.get(self.machine)
        what = f"relocation section {s.index}"
        if allowed is not None:
            known = np.isin(kind, np.array(sorted(allowed), np.uint64))
            if not known.all():
                first = int(np.argmin(known))
                names = ", ".join(name for name, _ in allowed.values())
                raise _bad(f"{what}: entry {first} has relocation type {int(kind[first])}, which is not one "
                           f"LLVM emits for our code ({names})")
            widths = np.zeros(max(allowed) + 1, np.uint64)
            for number, (_, width) in allowed.items():
                widths[number] = width
            width = widths[kind]
        else:
            width = np.ones(count, np.uint64)
        offset = entries["offset"]
        outside = (offset >= np.uint64(target.size)) | (offset + width > np.uint64(target.size))
        if outside.any():
            first = int(np.argmax(outside))
            raise _bad(f"{what}: entry {first} patches {int(width[first])} bytes at offset {int(offset[first])} "
                       f"of section {s.info}, which has {target.size}")
        symbols = len(self.symbol_types)
        bad = (symbol == 0) | (symbol >= np.uint64(symbols))
        if bad.any():
            first = int(np.argmax(bad))
            raise _bad(f"{what}: entry {first} names symbol {int(symbol[first])}; the symbol table has 1..{symbols - 1}")
        files = self.symbol_types[symbol.astype(np.intp)] == STT_FILE
        if files.any():
            first = int(np.argmax(files))
            raise _bad(f"{what}: entry {first} refers to a file symbol ({int(symbol[first])})")
        if self.machine == EM_X86_64:
            self._reach(s, target, entries, symbol.astype(np.intp), kind)

    def _reach(self, s: Section, target: Section, entries: np.ndarray, symbol: np.ndarray, kind: np.ndarray) -> None:
        """32-bit pc-relative relocations must land inside the loaded object: the displacement
        of anything outside it (address 0 for an unnamed or absolute symbol, a library for an
        external one) may not fit, and RuntimeDyld then aborts."""
        near = np.nonzero(np.isin(kind, np.array(_NEAR, np.uint64)))[0]
        if near.size == 0:
            return
        kind, symbol = kind[near].astype(np.int64), symbol[near]
        offset = entries["offset"][near].astype(np.int64) + target.offset  # checked inside the section above
        data = np.frombuffer(self.code, np.uint8)
        placeholder = sum(data[offset + i].astype(np.int64) << (8 * i) for i in range(4))
        addend = entries["addend"][near]
        limit = (1 << 31) - 1 - self.image
        total = np.clip(addend, -limit - 1, limit + 1) + np.where(np.isin(kind, _PLACEHOLDER), placeholder, 0)
        far = (total < -limit) | (total > limit)
        types, shndx, named = self.symbol_types[symbol], self.symbol_shndx[symbol], self.symbol_named[symbol]
        weak = self.symbol_binds[symbol] == STB_WEAK  # may resolve elsewhere; PIC code reaches those via PLT/GOT
        inside = (types == STT_SECTION) | (named & (shndx != SHN_UNDEF) & (shndx < SHN_LORESERVE) & ~weak)
        outside = named & ((shndx == SHN_UNDEF) | weak)  # PLT32 reaches those through a stub in the object
        resolvable = inside | ((kind == 4) & outside)
        unreachable = np.isin(kind, _PLACEHOLDER) & ~resolvable
        for problem, why in ((far, "an addend too large for a 32-bit displacement"),
                             (unreachable, "a symbol outside the object, beyond a 32-bit displacement")):
            if problem.any():
                first = int(near[np.argmax(problem)])
                name = RELOCATIONS[EM_X86_64][int(entries["info"][first]) & 0xFFFFFFFF][0]
                raise _bad(f"relocation section {s.index}: entry {first} ({name}) has {why}")

    def summary(self) -> ElfSymbols:
        return ElfSymbols(self.machine, self.functions, self.undefined)


class _EhFrame:
    """The parts of .eh_frame the unwinder parses when the table is registered or first searched:
    record lengths, CIE pointers, augmentation strings and data, pointer encodings."""

    def __init__(self, obj: _Object, section: Section) -> None:
        self.data = obj.code[section.offset : section.offset + section.size]
        self.end = obj.end
        self.what = f"unwind table (section {section.index})"

    def check(self) -> None:
        data, at = self.data, 0
        cies: dict[int, tuple[str, int]] = {}  # record offset -> (augmentation, pointer encoding)
        while at < len(data):
            length = self._u32(at, len(data))
            if length == 0:  # a terminator: the unwinder reads no further
                return
            if length == 0xFFFFFFFF or length < 4 or length > len(data) - at - 4:
                raise _bad(f"{self.what}: record at {at} has length {length:#x}, which does not fit")
            stop = at + 4 + length
            cie_id = self._u32(at + 4, stop)
            if cie_id == 0:
                cies[at] = self._cie(at + 8, stop, at)
            else:
                cie = at + 4 - cie_id
                if cie not in cies:
                    raise _bad(f"{self.what}: FDE at {at} points at {cie}, where no earlier CIE starts")
                self._fde(at + 8, stop, at, *cies[cie])
            at = stop

    def _cie(self, at: int, stop: int, record: int) -> tuple[str, int]:
        version = self._byte(at, stop)
        if version not in (1, 3):
            raise _bad(f"{self.what}: CIE at {record} has version {version}, expected 1 or 3")
        try:
            end = self.data.index(b"\0", at + 1, stop)
        except ValueError:
            raise _bad(f"{self.what}: CIE at {record} has an unterminated augmentation string") from None
        augmentation = self.data[at + 1 : end].decode("latin-1")
        rest = augmentation[1:]
        if augmentation and (augmentation[0] != "z" or set(rest) - set("PLRS") or len(set(rest)) != len(rest)):
            raise _bad(f"{self.what}: CIE at {record} has augmentation {augmentation!r}, which this runtime does not vet")
        at = self._leb(end + 1, stop)  # code alignment
        at = self._leb(at, stop)  # data alignment
        at = at + 1 if version == 1 else self._leb(at, stop)  # return address register
        encoding = 0  # DW_EH_PE_absptr
        if augmentation:
            length, at = self._uleb(at, stop)
            data_stop = at + length
            if data_stop > stop:
                raise _bad(f"{self.what}: CIE at {record} has augmentation data past its end")
            for letter in rest:
                if letter == "R":
                    encoding = self._encoding(at, data_stop, record, fixed=True)
                    at += 1
                elif letter == "L":
                    self._encoding(at, data_stop, record, fixed=False, omit=True)
                    at += 1
                elif letter == "P":
                    personality = self._encoding(at, data_stop, record, fixed=False, indirect=True)
                    at = self._value(at + 1, data_stop, personality & 0x7F)
        return augmentation, encoding

    def _fde(self, at: int, stop: int, record: int, augmentation: str, encoding: int) -> None:
        at = self._value(at, stop, encoding)  # initial location
        at = self._value(at, stop, encoding & 0x0F)  # address range
        if augmentation:
            length, at = self._uleb(at, stop)
            if at + length > stop:
                raise _bad(f"{self.what}: FDE at {record} has augmentation data past its end")

    # pointer encodings the unwinder reads without aborting: absolute or pc-relative
    _SIZES = {0x00: 8, 0x02: 2, 0x03: 4, 0x04: 8, 0x0A: 2, 0x0B: 4, 0x0C: 8, 0x01: None, 0x09: None}

    def _encoding(self, at: int, stop: int, record: int, *, fixed: bool, omit: bool = False, indirect: bool = False) -> int:
        encoding = self._byte(at, stop)
        if omit and encoding == 0xFF:
            return encoding
        base = encoding & ~0x80 if indirect else encoding
        size = self._SIZES.get(base & 0x0F, 0)
        if base & 0x70 not in (0x00, 0x10) or base & 0x80 or size == 0 or (fixed and size is None):
            raise _bad(f"{self.what}: CIE at {record} uses pointer encoding {encoding:#x}, which this runtime does not vet")
        return encoding

    def _value(self, at: int, stop: int, encoding: int) -> int:
        size = self._SIZES[encoding & 0x0F]
        if size is None:
            return self._leb(at, stop)
        if at + size > stop:
            raise _bad(f"{self.what}: a pointer at {at} runs past its record")
        return at + size

    def _byte(self, at: int, stop: int) -> int:
        if at >= stop:
            raise _bad(f"{self.what}: a record ends early, at {at}")
        return self.data[at]

    def _u32(self, at: int, stop: int) -> int:
        if at + 4 > stop:
            raise _bad(f"{self.what}: a record ends early, at {at}")
        return struct.unpack_from(self.end + "I", self.data, at)[0]

    def _uleb(self, at: int, stop: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = self._byte(at, stop)
            value |= (byte & 0x7F) << shift
            at, shift = at + 1, shift + 7
            if not byte & 0x80:
                return value, at
            if shift > 63:
                raise _bad(f"{self.what}: an LEB128 number at {at} is longer than 64 bits")

    def _leb(self, at: int, stop: int) -> int:
        return self._uleb(at, stop)[1]  # signed or not, only its length matters here
