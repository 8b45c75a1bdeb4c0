"""A Go executable as goflame sees it: ELF + build info + pclntab + moduledata, found once.

Opening is cheap by design (mmap, no DWARF, no symbol-table walk): layout and globals are
computed on first use. Everything here is link-time; a live process adds its load bias.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from goflame.binary.buildinfo import BuildInfo, read_buildinfo
from goflame.binary.elf import ElfFile
from goflame.binary.pclntab import FORMATS, MAGIC_116, MAGIC_118, MAGIC_120, Pclntab
from goflame.errors import CorruptBinary, GoflameError, NotGoBinary, UnsupportedGoVersion

SUPPORTED = ((1, 18), (1, 27))
PCLNTAB_SECTIONS = (".gopclntab", ".data.rel.ro.gopclntab")
MODULEDATA_SECTIONS = (".go.module", ".noptrdata", ".data", ".data.rel.ro")


@dataclass(frozen=True, slots=True)
class ModuleData:
    addr: int
    how: str  # "symtab" or "scan" (found by its pointer to the pclntab)
    text: int
    etext: int
    gofunc: int | None


class GoBinary:
    """Static facts about a Go ELF executable, shared by every later layer."""

    def __init__(self, path: str | Path, *, check_version: bool = True):
        self.path = Path(path)
        self.elf = ElfFile(path)
        self.buildinfo: BuildInfo = read_buildinfo(self.elf)
        self.go_version = self.buildinfo.go_version
        major, minor, _ = self.buildinfo.version_tuple
        if check_version and not SUPPORTED[0] <= (major, minor) <= SUPPORTED[1]:
            lo, hi = SUPPORTED
            raise UnsupportedGoVersion(
                f"{self.path}: built with {self.go_version}; goflame supports Go {lo[0]}.{lo[1]} to {hi[0]}.{hi[1]}")
        self.minor = f"{major}.{minor}"
        self.pclntab_addr, pcln_bytes = self._locate_pclntab()
        self.moduledata = self._locate_moduledata(pcln_bytes)
        self.pclntab = Pclntab(
            pcln_bytes,
            addr=self.pclntab_addr,
            text_start=self.moduledata.text if self.moduledata else None,
            gofunc=self.moduledata.gofunc if self.moduledata else None,
            read=self.elf.read,
        )

    # -- pclntab ----------------------------------------------------------------------------------
    def _locate_pclntab(self) -> tuple[int, memoryview]:
        for name in PCLNTAB_SECTIONS:
            sec = self.elf.section(name)
            if sec is not None and sec.type != "SHT_NOBITS" and sec.size >= 16:
                return sec.addr, self.elf.data[sec.offset : sec.offset + sec.size]
        # Section headers gone (sstrip) or renamed: find the header by its magic in read-only data.
        for magic in (MAGIC_120, MAGIC_118, MAGIC_116):
            needle = struct.pack("<IBB", magic, 0, 0)
            for seg in self.elf.segments:
                if seg.type != "PT_LOAD" or seg.flags & 0x1:  # skip executable segments
                    continue
                raw = bytes(self.elf.data[seg.offset : seg.offset + seg.filesz])
                i = raw.find(needle)
                while i >= 0:
                    if i % 8 == 0 and raw[i + 6] in (1, 2, 4) and raw[i + 7] in (4, 8):
                        return seg.vaddr + i, self.elf.data[seg.offset + i : seg.offset + seg.filesz]
                    i = raw.find(needle, i + 1)
        raise NotGoBinary(f"{self.path}: has Go build info but no pclntab (not a Go executable?)")

    def _moduledata_fields(self) -> tuple[int, int, int | None]:
        """Offsets of text, etext and gofunc in runtime.moduledata for this Go version."""
        try:
            from goflame.binary.layout import layout_from_table

            lay = layout_from_table(self.minor)
            md = "runtime.moduledata"
            gofunc = lay.offset(md, "gofunc") if lay.has(md, "gofunc") else None
            return lay.offset(md, "text"), lay.offset(md, "etext"), gofunc
        except (ImportError, GoflameError):  # no table: the fixed prefix still gives text/etext
            # pcHeader ptr + 6 slices + findfunctab + minpc + maxpc precede text (stable 1.18-1.27).
            return 8 + 6 * 24 + 8 + 8 + 8, 8 + 6 * 24 + 8 + 8 + 8 + 8, None

    def _locate_moduledata(self, pcln: memoryview) -> ModuleData | None:
        elf = self.elf
        addr: int | None = None
        how = "scan"
        sym = elf.symbols.get("runtime.firstmoduledata") if elf.has_symtab else None
        if sym is not None:
            addr, how = sym.value, "symtab"
        else:
            addr = self.scan_for_moduledata(pcln)
        if addr is None:
            return None
        text_off, etext_off, gofunc_off = self._moduledata_fields()
        try:
            text = elf.read_ptr_relocated(addr + text_off)
            etext = elf.read_ptr_relocated(addr + etext_off)
            gofunc = elf.read_ptr_relocated(addr + gofunc_off) if gofunc_off is not None else None
        except CorruptBinary:
            return None
        return ModuleData(addr, how, text, etext, gofunc or None)

    def scan_for_moduledata(self, pcln: memoryview) -> int | None:
        """moduledata starts with a pointer to the pclntab header, followed by funcnametab."""
        elf = self.elf
        ps = elf.ptr_size
        fmt = "<Q" if ps == 8 else "<I"
        target = struct.pack(fmt, self.pclntab_addr)
        magic = struct.unpack_from("<I", pcln, 0)[0]
        names_word = 8 + ps * (2 if magic == MAGIC_116 else 3)
        funcname_off = struct.unpack_from(fmt, pcln, names_word)[0]
        want_names = self.pclntab_addr + funcname_off

        def plausible(a: int) -> bool:
            try:
                return elf.read_ptr_relocated(a + ps) == want_names
            except CorruptBinary:
                return False

        regions = [elf.section(n) for n in MODULEDATA_SECTIONS]
        spans = [(s.addr, s.offset, s.size) for s in regions if s is not None and s.type != "SHT_NOBITS"]
        if not spans:
            spans = [(g.vaddr, g.offset, g.filesz) for g in elf.segments if g.type == "PT_LOAD" and g.flags & 0x2]
        for vaddr, offset, size in spans:
            raw = bytes(elf.data[offset : offset + size])
            i = raw.find(target)
            while i >= 0:
                if (vaddr + i) % ps == 0 and plausible(vaddr + i):
                    return vaddr + i
                i = raw.find(target, i + 1)
        if elf.is_pie:  # pointers may live only in RELATIVE relocations
            for where, addend in elf.relative_relocations.items():
                if addend == self.pclntab_addr and plausible(where):
                    return where
        return None

    # -- derived facts ----------------------------------------------------------------------------
    @property
    def pclntab_format(self) -> str:
        return FORMATS[self.pclntab.magic]

    @property
    def arch(self) -> str:
        return self.elf.arch

    @property
    def stripped(self) -> bool:
        return not self.elf.has_symtab

    @property
    def has_dwarf(self) -> bool:
        return self.elf.has_dwarf

    @property
    def is_pie(self) -> bool:
        return self.elf.is_pie

    @cached_property
    def uses_cgo(self) -> bool:
        """True when C code is linked in through cgo (runtime/cgo's Go side is present)."""
        if self.buildinfo.settings.get("CGO_ENABLED") == "0":
            return False
        return self.pclntab.func_by_name("runtime/cgo.init") is not None or self.pclntab.func_by_name(
            "_cgo_topofstack") is not None

    @property
    def text_range(self) -> tuple[int, int]:
        return self.pclntab.text_start, self.pclntab.text_end

    @cached_property
    def layout(self):
        from goflame.binary.layout import load_layout

        return load_layout(self.elf, self.minor)

    @cached_property
    def globals(self):
        from goflame.binary.globals import find_globals

        return find_globals(self)

    def close(self) -> None:
        self.elf.close()

    def __enter__(self) -> GoBinary:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
