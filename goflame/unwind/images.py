"""ELF objects a C unwinder needs: unwind tables and function symbols, parsed once per build id.

One object (a libc, the program, the vDSO read out of the target's memory) is mapped by many
processes; its parsed tables are kept by build id (else by file identity) in an `ImageCache`,
which a caller can keep across targets. Per frame, `NativeImage.rule` gives the unwind row:
CFI from `.eh_frame`, else `.debug_frame`, else prologue analysis (unwind/prologue.py), else
frame pointers; the last two are marked heuristic.
"""

from __future__ import annotations

import bisect
import os
import struct
import zlib
from dataclasses import dataclass

from goflame.binary.elf import ElfFile
from goflame.errors import GoflameError
from goflame.unwind.cfi import CfiError, CfiSection, Row, prologue_row
from goflame.unwind.prologue import FRAME_POINTER, PrologueAnalyzer


@dataclass(frozen=True, slots=True)
class NativeSymbol:
    name: str
    start: int  # link-time address
    size: int


def _alias_rank(name: str) -> tuple[int, int, str]:
    """Among names for one address, prefer the public one: `read` over `__read`, `__libc_read`."""
    return (len(name) - len(name.lstrip("_")), len(name), name)


class NativeImage:
    """One ELF object's unwind tables and function symbols, shared by every mapping of it."""

    def __init__(self, elf: ElfFile, name: str, key: str, analyzer: PrologueAnalyzer):
        self.elf = elf
        self.name = name  # path as the target sees it, or "[vdso]"
        self.key = key
        self._analyzer = analyzer
        self.eh = self._eh_frame()
        self._debug: CfiSection | None | bool = False  # False: not looked at yet
        self._rules: dict[tuple[int, bool], Row] = {}
        self._symbols: tuple[list[int], list[NativeSymbol]] | None = None
        self.exec_ranges = [(s.vaddr, s.vaddr + s.memsz) for s in elf.segments
                            if s.type == "PT_LOAD" and s.flags & 1]
        self.load_segments = [s for s in elf.segments if s.type == "PT_LOAD"]

    def _eh_frame(self) -> CfiSection | None:
        sec = self.elf.section(".eh_frame")
        data = self.elf.section_bytes(".eh_frame")
        if sec is None or data is None or sec.size == 0:
            return None
        hdr_sec = self.elf.section(".eh_frame_hdr")
        hdr = self.elf.section_bytes(".eh_frame_hdr")
        try:
            return CfiSection(bytes(data), sec.addr, eh=True, hdr=bytes(hdr) if hdr is not None else None,
                              hdr_vaddr=hdr_sec.addr if hdr_sec is not None else 0)
        except (CfiError, IndexError, ValueError, struct.error):
            return None  # unreadable tables: prologue analysis and frame pointers still work

    @property
    def debug_frame(self) -> CfiSection | None:
        if self._debug is False:
            self._debug = None
            sec = self.elf.section(".debug_frame")
            data = self.elf.section_bytes(".debug_frame")
            if sec is not None and data is not None and sec.size > 0:
                raw = bytes(data)
                if sec.compressed:
                    raw = _decompress(raw)
                if raw:
                    try:
                        self._debug = CfiSection(raw, 0, eh=False)
                    except (CfiError, IndexError, ValueError, struct.error):
                        self._debug = None
        return self._debug  # type: ignore[return-value]

    # unwind rules
    def rule(self, vaddr: int, exact: bool) -> Row:
        """The rule for the frame at link-time `vaddr` (a return address unless `exact`):
        CFI from .eh_frame, else .debug_frame, else prologue analysis, else frame pointers."""
        key = (vaddr, exact)
        hit = self._rules.get(key)
        if hit is not None:
            return hit
        lookup = vaddr if exact else vaddr - 1
        row = self.eh.row_at(lookup) if self.eh is not None else None
        if row is None:
            dbg = self.debug_frame
            if dbg is not None:
                row = dbg.row_at(lookup)
        if row is None:
            row = self._heuristic(vaddr, lookup)
        if len(self._rules) > 1 << 16:
            self._rules.clear()
        self._rules[key] = row
        return row

    def _heuristic(self, pc: int, lookup: int) -> Row:
        sym = self.symbol(lookup)
        if sym is not None and 0 <= pc - sym.start <= 1 << 16:
            code = self.code(sym.start, pc - sym.start) if pc > sym.start else b""
            tail = self.code(pc, 64)
            if code or pc == sym.start:
                rule = self._analyzer.analyze(code, sym.start, pc, tail, sym.start + sym.size if sym.size else 0)
                if rule is not None:
                    return prologue_row(rule)
        return prologue_row(FRAME_POINTER)

    def code(self, vaddr: int, size: int) -> bytes:
        for lo, hi in self.exec_ranges:
            if lo <= vaddr < hi:
                size = min(size, hi - vaddr)
                try:
                    return bytes(self.elf.read(vaddr, size))
                except GoflameError:
                    return b""
        return b""

    # symbols
    def _symbol_table(self) -> tuple[list[int], list[NativeSymbol]]:
        if self._symbols is None:
            best: dict[int, NativeSymbol] = {}
            for table in (self.elf.dynamic_symbols, self.elf.symbols):
                for s in table.values():
                    if s.type not in ("FUNC", "10", "NOTYPE") or not s.value or not s.name:
                        continue  # 10: STT_GNU_IFUNC
                    if s.type == "NOTYPE" and s.name[0] in ".$":
                        continue
                    if not any(lo <= s.value < hi for lo, hi in self.exec_ranges):
                        continue
                    cur = best.get(s.value)
                    if cur is None:
                        best[s.value] = NativeSymbol(s.name, s.value, s.size)
                    elif _alias_rank(s.name) < _alias_rank(cur.name):
                        best[s.value] = NativeSymbol(s.name, s.value, max(s.size, cur.size))
                    elif s.size > cur.size:
                        best[s.value] = NativeSymbol(cur.name, cur.start, s.size)
            syms = sorted(best.values(), key=lambda s: s.start)
            self._symbols = ([s.start for s in syms], syms)
        return self._symbols

    def symbol(self, vaddr: int) -> NativeSymbol | None:
        starts, syms = self._symbol_table()
        i = bisect.bisect_right(starts, vaddr) - 1
        if i < 0:
            return None
        s = syms[i]
        if s.size and vaddr >= s.start + s.size:
            return None
        return s


def _decompress(raw: bytes) -> bytes:
    """An SHF_COMPRESSED section: Elf64_Chdr (type 1 = zlib), then the stream."""
    if len(raw) < 24:
        return b""
    ch_type = struct.unpack_from("<I", raw, 0)[0]
    if ch_type != 1:
        return b""
    try:
        return zlib.decompress(raw[24:])
    except zlib.error:
        return b""


def _build_id(elf: ElfFile) -> str | None:
    for name in (".note.gnu.build-id",):
        raw = elf.section_bytes(name)
        if raw is None or len(raw) < 16:
            continue
        namesz, descsz, ntype = struct.unpack_from("<III", raw, 0)
        off = 12 + ((namesz + 3) & ~3)
        if ntype == 3 and bytes(raw[12 : 12 + namesz]).rstrip(b"\0") == b"GNU":
            return bytes(raw[off : off + descsz]).hex()
    return None


class ImageCache:
    """Parsed objects by build id (else by file identity), reusable across processes."""

    def __init__(self) -> None:
        self._images: dict[str, NativeImage] = {}
        self.analyzer = PrologueAnalyzer()

    def open_file(self, path: str, name: str) -> NativeImage | None:
        try:
            st = os.stat(path)
            elf = ElfFile(path)
        except (GoflameError, OSError):
            return None
        if elf.arch != "amd64":
            elf.close()
            return None
        key = _build_id(elf) or f"file:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
        hit = self._images.get(key)
        if hit is not None:
            elf.close()
            return hit
        img = NativeImage(elf, name, key, self.analyzer)
        self._images[key] = img
        return img

    def open_bytes(self, data: bytes, name: str) -> NativeImage | None:
        """An image that exists only in memory (the vDSO), through a memfd."""
        import hashlib

        key = "mem:" + hashlib.sha1(data).hexdigest()
        hit = self._images.get(key)
        if hit is not None:
            return hit
        fd = os.memfd_create("goflame-" + name.strip("[]"), os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            elf = ElfFile(f"/proc/self/fd/{fd}")
        except (GoflameError, OSError):
            return None
        finally:
            os.close(fd)
        img = NativeImage(elf, name, key, self.analyzer)
        self._images[key] = img
        return img

    def __len__(self) -> int:
        return len(self._images)

    def close(self) -> None:
        for img in self._images.values():
            img.elf.close()
        self._images.clear()
