"""Go version, main module, dependencies and build settings from `.go.buildinfo`.

The blob survives `-ldflags='-s -w'` and distro stripping, so it is how goflame learns the
Go version of a stripped binary. Layout (see debug/buildinfo): 14-byte magic, pointer size,
flags; since Go 1.18 (flag bit 0x2) two varint-length-prefixed strings follow the 32-byte
header inline: the version and the modinfo text (framed by 16-byte sentinels).
Before 1.18 the header held two pointers to Go string headers instead.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from goflame.binary.elf import ElfFile
from goflame.binary.varint import uvarint
from goflame.errors import CorruptBinary, NotGoBinary

MAGIC = b"\xff Go buildinf:"
HEADER_SIZE = 32
FLAG_BIG_ENDIAN = 0x1
FLAG_INLINE_STRINGS = 0x2


@dataclass(frozen=True, slots=True)
class Module:
    path: str
    version: str = ""
    sum: str = ""
    replaced_by: Module | None = None


@dataclass(frozen=True, slots=True)
class BuildInfo:
    go_version: str  # as the binary says, e.g. "go1.27.3" or "go1.22.10 X:nocoverageredesign"
    path: str = ""  # main package path
    main: Module | None = None
    deps: tuple[Module, ...] = ()
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def version_tuple(self) -> tuple[int, int, int]:
        return parse_go_version(self.go_version)

    @property
    def minor(self) -> str:
        major, minor, _ = self.version_tuple
        return f"{major}.{minor}"


_VERSION_RE = re.compile(r"go(\d+)\.(\d+)(?:\.(\d+))?")


def parse_go_version(v: str) -> tuple[int, int, int]:
    """'go1.22.10' -> (1, 22, 10); 'go1.21rc2' -> (1, 21, 0); devel builds -> (0, 0, 0)."""
    m = _VERSION_RE.match(v.strip())
    if not m:
        return (0, 0, 0)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def _find_blob(elf: ElfFile) -> tuple[int, memoryview]:
    """(vaddr, bytes from the header on) of the build info blob."""
    sec = elf.section(".go.buildinfo")
    if sec is not None and sec.type != "SHT_NOBITS":
        data = elf.data[sec.offset : sec.offset + sec.size]
        if bytes(data[: len(MAGIC)]) == MAGIC:
            return sec.addr, data
    # No section headers (sstrip) or a renamed section: search writable data segments, 16-aligned.
    for seg in elf.segments:
        if seg.type != "PT_LOAD" or not (seg.flags & 0x2):
            continue
        data = elf.data[seg.offset : seg.offset + seg.filesz]
        raw = bytes(data)
        i = raw.find(MAGIC)
        while i >= 0:
            if (seg.vaddr + i) % 16 == 0 and len(raw) - i >= HEADER_SIZE:
                return seg.vaddr + i, data[i:]
            i = raw.find(MAGIC, i + 1)
    raise NotGoBinary(f"{elf.path}: not a Go program (no Go build info found)")


def read_buildinfo(elf: ElfFile) -> BuildInfo:
    _addr, blob = _find_blob(elf)
    if len(blob) < HEADER_SIZE:
        raise CorruptBinary(f"{elf.path}: truncated .go.buildinfo")
    ptr_size = blob[14]
    flags = blob[15]
    if flags & FLAG_INLINE_STRINGS:
        version_len, pos = uvarint(blob, HEADER_SIZE, ".go.buildinfo")
        version = bytes(blob[pos : pos + version_len]).decode(errors="replace")
        pos += version_len
        mod_len, pos = uvarint(blob, pos, ".go.buildinfo")
        modinfo = bytes(blob[pos : pos + mod_len]).decode(errors="replace")
        if len(version) != version_len:
            raise CorruptBinary(f"{elf.path}: truncated .go.buildinfo")
    else:
        if ptr_size not in (4, 8):
            raise CorruptBinary(f"{elf.path}: corrupt .go.buildinfo (pointer size {ptr_size})")
        end = ">" if flags & FLAG_BIG_ENDIAN else "<"
        fmt = end + ("Q" if ptr_size == 8 else "I")
        vers_ptr = struct.unpack_from(fmt, blob, 16)[0]
        mod_ptr = struct.unpack_from(fmt, blob, 16 + ptr_size)[0]
        version = _read_go_string(elf, vers_ptr, fmt, ptr_size)
        modinfo = _read_go_string(elf, mod_ptr, fmt, ptr_size)
    if not version.startswith("go") and not version.startswith("devel"):
        raise CorruptBinary(f"{elf.path}: corrupt .go.buildinfo (version {version[:40]!r})")
    # modinfo is framed by two 16-byte sentinels when present.
    if len(modinfo) >= 33 and modinfo[-17] == "\n":
        modinfo = modinfo[16:-16]
    return _parse_modinfo(version, modinfo)


def _read_go_string(elf: ElfFile, hdr: int, fmt: str, ptr_size: int) -> str:
    if hdr == 0:
        return ""
    try:
        data_ptr = struct.unpack(fmt, elf.read(hdr, ptr_size))[0]
        length = struct.unpack(fmt, elf.read(hdr + ptr_size, ptr_size))[0]
        if length > 1 << 20:
            raise CorruptBinary(f"{elf.path}: corrupt .go.buildinfo string")
        return bytes(elf.read(data_ptr, length)).decode(errors="replace")
    except CorruptBinary:
        return ""


def _parse_modinfo(version: str, text: str) -> BuildInfo:
    path = ""
    main: Module | None = None
    deps: list[Module] = []
    settings: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split("\t")
        kind = parts[0]
        if kind == "path" and len(parts) > 1:
            path = parts[1]
        elif kind == "mod" and len(parts) > 1:
            main = Module(*parts[1:4])
        elif kind == "dep" and len(parts) > 1:
            deps.append(Module(*parts[1:4]))
        elif kind == "=>" and len(parts) > 1 and deps:
            deps[-1] = Module(deps[-1].path, deps[-1].version, deps[-1].sum, Module(*parts[1:4]))
        elif kind == "build" and len(parts) > 1:
            key, _, value = parts[1].partition("=")
            if value.startswith('"'):
                try:
                    import json

                    value = json.loads(value)
                except ValueError:
                    pass
            settings[key] = value
    return BuildInfo(version, path, main, tuple(deps), settings)
