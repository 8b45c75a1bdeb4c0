"""ELF access for Go executables: sections, segments, symbols, virtual-address reads.

Everything is read through one mmap of the file, so a 50 MB binary costs nothing until a
byte is touched. pyelftools parses the headers; section bytes are sliced out of the map
directly (pyelftools' `data()` would copy whole sections). Symbols are parsed lazily
and only when asked for, because stripped binaries have none and big ones have many.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile as _PyELF

from goflame.errors import BadInput, CorruptBinary


@dataclass(frozen=True, slots=True)
class Section:
    name: str
    addr: int
    offset: int
    size: int
    type: str
    flags: int

    @property
    def end(self) -> int:
        return self.addr + self.size

    @property
    def compressed(self) -> bool:
        return bool(self.flags & SH_FLAGS.SHF_COMPRESSED)


@dataclass(frozen=True, slots=True)
class Segment:
    type: str
    vaddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int


@dataclass(frozen=True, slots=True)
class Symbol:
    name: str
    value: int
    size: int
    type: str


ARCHES = {"EM_X86_64": "amd64", "EM_AARCH64": "arm64", "EM_386": "386", "EM_ARM": "arm"}


class ElfFile:
    """A read-only view of an ELF executable (or /proc/PID/exe of a live process)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if self.path.is_dir():
            raise BadInput(f"{self.path}: is a directory, not an executable")
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise BadInput(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise BadInput(f"{self.path}: is a directory, not an executable") from None
        except PermissionError:
            raise BadInput(f"{self.path}: permission denied (try sudo)") from None
        except OSError as e:
            raise BadInput(f"{self.path}: cannot open: {e.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if size < 64:
                raise BadInput(f"{self.path}: not an ELF file (too small)")
            self._map = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        except (OSError, ValueError) as e:
            raise BadInput(f"{self.path}: cannot map file: {e}") from None
        finally:
            os.close(fd)
        self.data = memoryview(self._map)
        if bytes(self.data[:4]) != b"\x7fELF":
            raise BadInput(f"{self.path}: not an ELF file")
        try:
            self._elf = _PyELF(_MapStream(self._map))
            self.sections = self._read_sections()
            self.segments = self._read_segments()
        except (ELFError, struct.error, ValueError, IndexError, KeyError, AssertionError) as e:
            raise CorruptBinary(f"{self.path}: corrupt or truncated ELF file ({e})") from None
        self.arch = ARCHES.get(self._elf["e_machine"], str(self._elf["e_machine"]))
        self.ptr_size = 8 if self._elf.elfclass == 64 else 4
        self.little_endian = self._elf.little_endian
        self.is_pie = self._elf["e_type"] == "ET_DYN"
        self._by_name = {s.name: s for s in self.sections}
        self._loads = sorted((s for s in self.segments if s.type == "PT_LOAD"), key=lambda s: s.vaddr)

    # -- structure --------------------------------------------------------------------------------
    def _read_sections(self) -> list[Section]:
        out = []
        for s in self._elf.iter_sections():
            h = s.header
            if h["sh_type"] != "SHT_NOBITS" and h["sh_offset"] + h["sh_size"] > len(self._map):
                raise CorruptBinary(f"{self.path}: truncated (section {s.name} runs past end of file)")
            out.append(Section(s.name, h["sh_addr"], h["sh_offset"], h["sh_size"], h["sh_type"], h["sh_flags"]))
        return out

    def _read_segments(self) -> list[Segment]:
        return [
            Segment(p["p_type"], p["p_vaddr"], p["p_offset"], p["p_filesz"], p["p_memsz"], p["p_flags"])
            for p in self._elf.iter_segments()
        ]

    def section(self, name: str) -> Section | None:
        return self._by_name.get(name)

    def section_bytes(self, name: str) -> memoryview | None:
        s = self._by_name.get(name)
        if s is None or s.type == "SHT_NOBITS":
            return None
        return self.data[s.offset : s.offset + s.size]

    @property
    def pyelftools(self) -> _PyELF:
        """The underlying pyelftools object, for DWARF and .eh_frame parsing."""
        return self._elf

    @cached_property
    def interp(self) -> str | None:
        s = self.section_bytes(".interp")
        if s is None:
            for seg in self.segments:
                if seg.type == "PT_INTERP":
                    s = self.data[seg.offset : seg.offset + seg.filesz]
                    break
        return bytes(s).rstrip(b"\0").decode(errors="replace") if s is not None else None

    @property
    def is_dynamic(self) -> bool:
        return any(seg.type == "PT_DYNAMIC" for seg in self.segments)

    @property
    def has_dwarf(self) -> bool:
        return any(s.name in (".debug_info", ".zdebug_info") for s in self.sections)

    @property
    def has_symtab(self) -> bool:
        s = self._by_name.get(".symtab")
        return s is not None and s.size > 0

    # -- reads by virtual address -----------------------------------------------------------------
    def vaddr_to_offset(self, vaddr: int) -> int | None:
        for seg in self._loads:
            if seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
                return seg.offset + (vaddr - seg.vaddr)
        return None

    def read(self, vaddr: int, size: int) -> memoryview:
        """Bytes at link-time address `vaddr`; bss (no file bytes) reads as zeros."""
        off = self.vaddr_to_offset(vaddr)
        if off is None or off + size > len(self.data):
            for seg in self._loads:
                if seg.vaddr <= vaddr and vaddr + size <= seg.vaddr + seg.memsz:
                    return memoryview(bytes(size))
            raise CorruptBinary(f"{self.path}: address {vaddr:#x} is outside the file's segments")
        return self.data[off : off + size]

    def read_ptr(self, vaddr: int) -> int:
        fmt = ("<" if self.little_endian else ">") + ("Q" if self.ptr_size == 8 else "I")
        return struct.unpack(fmt, self.read(vaddr, self.ptr_size))[0]

    def first_load_vaddr(self) -> int:
        """Link-time address of the first PT_LOAD, rounded down to its page (for load bias)."""
        if not self._loads:
            raise CorruptBinary(f"{self.path}: no loadable segments")
        seg = self._loads[0]
        return seg.vaddr - seg.offset

    # -- symbols (lazy) ---------------------------------------------------------------------------
    @cached_property
    def symbols(self) -> dict[str, Symbol]:
        """Name -> symbol from .symtab (empty for stripped binaries). Parsed once, on demand."""
        sec = self._by_name.get(".symtab")
        if sec is None:
            return {}
        return self._parse_symtab(sec)

    @cached_property
    def dynamic_symbols(self) -> dict[str, Symbol]:
        sec = self._by_name.get(".dynsym")
        if sec is None:
            return {}
        return self._parse_symtab(sec)

    def _parse_symtab(self, sec: Section) -> dict[str, Symbol]:
        """A direct struct walk: pyelftools' per-symbol objects are ~20x slower on big tables."""
        strtab_index = self._elf.get_section_by_name(sec.name).header["sh_link"]
        strsec = self.sections[strtab_index]
        strtab = bytes(self.data[strsec.offset : strsec.offset + strsec.size])
        raw = self.data[sec.offset : sec.offset + sec.size]
        end = "<" if self.little_endian else ">"
        types = {0: "NOTYPE", 1: "OBJECT", 2: "FUNC", 3: "SECTION", 4: "FILE", 6: "TLS"}
        out: dict[str, Symbol] = {}
        if self.ptr_size == 8:
            entry = struct.Struct(end + "IBBHQQ")
            for name_off, info, _other, _shndx, value, size in entry.iter_unpack(raw[: len(raw) // 24 * 24]):
                if name_off == 0:
                    continue
                stop = strtab.find(b"\0", name_off)
                name = strtab[name_off:stop].decode(errors="replace")
                out.setdefault(name, Symbol(name, value, size, types.get(info & 0xF, str(info & 0xF))))
        else:
            entry = struct.Struct(end + "IIIBBH")
            for name_off, value, size, info, _other, _shndx in entry.iter_unpack(raw[: len(raw) // 16 * 16]):
                if name_off == 0:
                    continue
                stop = strtab.find(b"\0", name_off)
                name = strtab[name_off:stop].decode(errors="replace")
                out.setdefault(name, Symbol(name, value, size, types.get(info & 0xF, str(info & 0xF))))
        return out

    @cached_property
    def relative_relocations(self) -> dict[int, int]:
        """Target address -> addend of R_*_RELATIVE relocations (PIE pointers whose file bytes are 0)."""
        out: dict[int, int] = {}
        end = "<" if self.little_endian else ">"
        for sec in self.sections:
            if sec.type != "SHT_RELA" or self.ptr_size != 8:
                continue
            raw = self.data[sec.offset : sec.offset + sec.size]
            for r_offset, r_info, r_addend in struct.iter_unpack(end + "QQq", raw[: len(raw) // 24 * 24]):
                if r_info & 0xFFFFFFFF in (8, 1027):  # R_X86_64_RELATIVE, R_AARCH64_RELATIVE
                    out[r_offset] = r_addend
        return out

    def read_ptr_relocated(self, vaddr: int) -> int:
        """A pointer-sized word as the loader would see it at link-time addresses."""
        v = self.read_ptr(vaddr)
        if v == 0 and self.is_pie:
            return self.relative_relocations.get(vaddr, 0)
        return v

    def close(self) -> None:
        self.data.release()
        try:
            self._map.close()
        except BufferError:
            pass  # a view is still alive somewhere; the map goes with the process

    def __enter__(self) -> ElfFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _MapStream:
    """A minimal file-like object over the mmap for pyelftools (seek/read/tell)."""

    def __init__(self, m: mmap.mmap):
        self._m = m
        self._pos = 0

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence == 0:
            self._pos = pos
        elif whence == 1:
            self._pos += pos
        else:
            self._pos = len(self._m) + pos
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = len(self._m) - self._pos
        b = self._m[self._pos : self._pos + n]
        self._pos += len(b)
        return b
