"""The target's executable mappings and the ELF objects behind them, opened on first use.

A pc is looked up in `/proc/PID/maps` (re-read at most every MAPS_REFRESH_S when a pc is in no
known object), and its object opened through `/proc/PID/map_files` or `/proc/PID/root`, so a
library inside a container's mount namespace is the one the target runs. The load bias maps
process addresses to the object's link-time addresses.
"""

from __future__ import annotations

import bisect
import os
import time
from dataclasses import dataclass, field

from goflame.errors import GoflameError
from goflame.frame import Frame
from goflame.process import MemoryMap, Process
from goflame.unwind.images import ImageCache, NativeImage

MAPS_REFRESH_S = 0.5  # at most this often re-read /proc/PID/maps for a pc in no known object


@dataclass(slots=True)
class MappedObject:
    name: str
    start: int  # lowest executable mapping
    end: int
    bias: int = 0
    image: NativeImage | None = None
    opened: bool = False
    source: str = ""  # path to open, "" for the vDSO
    first_offset: int = 0  # file offset of the first executable mapping
    frames: dict[tuple[int, bool, bool], tuple[Frame, int]] = field(default_factory=dict)


class AddressSpace:
    """Executable mappings of a process and the ELF objects behind them, opened lazily."""

    def __init__(self, proc: Process, cache: ImageCache):
        self.proc = proc
        self.cache = cache
        self._objects: list[MappedObject] = []
        self._starts: list[int] = []
        self._maps: list[tuple[int, int]] = []
        self._map_starts: list[int] = []
        self._refreshed = -1e9
        self.refresh()

    def refresh(self) -> None:
        self._refreshed = time.monotonic()
        maps = self.proc.maps()
        old = {(o.name, o.start, o.end): o for o in self._objects}
        groups: dict[tuple[str, int], list[MemoryMap]] = {}
        for m in maps:
            if m.path and (m.path.startswith("/") or m.path == "[vdso]"):
                groups.setdefault((m.path, m.inode), []).append(m)
        objects: list[MappedObject] = []
        for (path, _inode), ms in groups.items():
            ex = [m for m in ms if m.executable]
            if not ex:
                continue
            lo, hi = min(m.start for m in ex), max(m.end for m in ex)
            prev = old.get((path, lo, hi))
            if prev is not None:
                objects.append(prev)
                continue
            first = min(ex, key=lambda m: m.start)
            src = "" if path == "[vdso]" else self._openable(path, first)
            objects.append(MappedObject(path, lo, hi, source=src, first_offset=first.offset))
        objects.sort(key=lambda o: o.start)
        self._objects = objects
        self._starts = [o.start for o in objects]
        self._maps = sorted((m.start, m.end) for m in maps)
        self._map_starts = [s for s, _ in self._maps]

    def _openable(self, path: str, m: MemoryMap) -> str:
        pid = self.proc.pid
        for cand in (f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}", f"/proc/{pid}/root{path}", path):
            try:
                st = os.stat(cand)
            except OSError:
                continue
            if not m.inode or st.st_ino == m.inode:
                return cand
        return ""

    def _open(self, obj: MappedObject) -> None:
        obj.opened = True
        if obj.name == "[vdso]":
            try:
                data = self.proc.memory.read(obj.start, obj.end - obj.start)
            except GoflameError:
                return
            img = self.cache.open_bytes(data, "[vdso]")
            if img is not None:
                lo_load = min((seg.vaddr for seg in img.load_segments), default=0)
                obj.image, obj.bias = img, obj.start - (lo_load & ~0xFFF)
            return
        img = self.cache.open_file(obj.source, obj.name) if obj.source else None
        if img is None:
            return
        # The first executable mapping shows file offset `first_offset` at `start`; the PT_LOAD
        # holding that offset says which link-time address it is.
        obj.image = img
        obj.bias = obj.start - obj.first_offset
        for seg in img.load_segments:
            page_off = seg.offset & ~0xFFF
            if page_off <= obj.first_offset < seg.offset + max(seg.filesz, 1):
                obj.bias = obj.start - ((seg.vaddr & ~0xFFF) + (obj.first_offset - page_off))
                break

    def object_at(self, pc: int) -> MappedObject | None:
        obj = self._find(pc)
        if obj is None and self._reread(MAPS_REFRESH_S):
            obj = self._find(pc)
        if obj is not None and not obj.opened:
            self._open(obj)
        return obj

    def _find(self, pc: int) -> MappedObject | None:
        i = bisect.bisect_right(self._starts, pc) - 1
        if i >= 0 and pc < self._objects[i].end:
            return self._objects[i]
        return None

    def mapping(self, addr: int, max_age: float = MAPS_REFRESH_S) -> tuple[int, int] | None:
        """The [start, end) of the mapping holding `addr` (a thread's stack, for bounds)."""
        hit = self._mapping(addr)
        if hit is None and self._reread(max_age):
            hit = self._mapping(addr)
        return hit

    def _reread(self, max_age: float) -> bool:
        """After a miss: read /proc/PID/maps again if the copy is older than `max_age`.
        True when it was read (a new thread's stack or a library loaded since may be in it)."""
        if time.monotonic() - self._refreshed <= max_age:
            return False
        try:
            self.refresh()
        except GoflameError:
            return False
        return True

    def cached_mapping(self, addr: int) -> tuple[int, int] | None:
        """`mapping` without re-reading /proc/PID/maps (for use while a thread is stopped)."""
        return self._mapping(addr)

    def _mapping(self, addr: int) -> tuple[int, int] | None:
        i = bisect.bisect_right(self._map_starts, addr) - 1
        if i >= 0 and addr < self._maps[i][1]:
            return self._maps[i]
        return None

    @property
    def objects(self) -> list[MappedObject]:
        return list(self._objects)
