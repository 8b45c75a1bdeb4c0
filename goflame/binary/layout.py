"""Runtime struct layouts and per-release runtime constants.

goflame reads the runtime's own structs (g, m, p, gobuf, schedt, moduledata, ...) out of a
live process, and their field offsets change between Go releases. When the binary has DWARF
the offsets come from it; stripped binaries (`-ldflags=-s -w`, distro builds) use tables that
`scripts/gen_layouts.py` generated from real builds of every supported release. The constants
the runtime reader needs (wait reason strings, g/P status values, funcIDs, the hash map's
tophash marks, how runtime/pprof stores labels) are not in a stripped binary, and wait reason strings are not in DWARF at all, so they always come from
the table of the binary's release (parsed from that release's own runtime source).

DWARF is read lazily and narrowly: a big binary has megabytes of .debug_info, and a Python
walk of every DIE costs seconds. The Go linker puts every type DIE into one compilation unit
of the runtime, and a struct DIE starts with its abbrev code followed by its name as an
inline string, so each wanted struct is found with a byte search, checked by decoding the
DIE at the hit, and only those DIEs and their members' types are decoded.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as dc_field
from importlib import resources
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from goflame.binary.varint import encode_uvarint
from goflame.binary.varint import sleb128 as _sleb
from goflame.binary.varint import uleb128 as _uleb
from goflame.errors import CorruptBinary, UnsupportedGoVersion

# Oldest and newest Go release goflame knows how to read.
MIN_MINOR = 18
MAX_MINOR = 27

# Releases without a table of their own (no toolchain for them here) use the nearest one
# that has a table; the Layout's source says so. 1.18 -> 1.19: the same pclntab format and,
# as far as goflame reads them, the same g/m/p. 1.20 -> 1.19: the 1.20 g and m keep
# 1.19's layout (parentGoid and the gTraceState/mTraceState refactor came in 1.21, and
# they move g.gopc, g.startpc, m.vdsoSP/vdsoPC), which matters more to goflame than the
# pclntab-side structs (_func, moduledata) where 1.20 resembles 1.21. Wait reasons past
# index 20 may differ in 1.20.
NEAREST: dict[str, str] = {"1.18": "1.19", "1.20": "1.19"}

# Struct types goflame reads from a target, under their DWARF names. Not every release has
# all of them (internal/abi.Type replaced runtime._type in 1.21); whatever exists is kept.
STRUCTS: tuple[str, ...] = (
    "runtime.g", "runtime.m", "runtime.p", "runtime.gobuf", "runtime.stack", "runtime.schedt",
    "runtime.moduledata", "runtime.sudog", "runtime.waitq", "runtime.hchan", "runtime.mutex",
    "runtime.note", "runtime.funcval", "runtime._defer", "runtime._panic", "runtime.libcall",
    "runtime.sigctxt", "runtime.gsignalStack", "runtime.textsect", "runtime.functab",
    "runtime.pcHeader", "runtime._func", "runtime.inlinedCall", "runtime.findfuncbucket",
    "runtime.modulehash", "runtime.bitvector", "runtime.gList", "runtime.gQueue", "runtime.mOS",
    "runtime.sigcontext", "runtime.ucontext", "runtime.stackt", "runtime.siginfo",
    "runtime.slice", "runtime.stringStruct", "runtime.iface", "runtime.eface",
    "runtime._type", "runtime.itab", "runtime.uncommontype",
    "internal/abi.Type", "internal/abi.ITab", "internal/abi.UncommonType",
    "string",
)

# pprof labels (goflame/labels.py). Up to Go 1.23 g.labels leads to a map[string]string,
# whose header and bucket the linker describes as hash<K,V> and bucket<K,V>; from 1.24 to a
# labelMap struct holding a sorted slice of label (1.26+: internal/runtime/pprof/label).
# A program that never imports runtime/pprof (or makes no map[string]string) has none of
# them in its DWARF: load_layout takes them from the table without remark.
LABEL_STRUCTS: tuple[str, ...] = (
    "hash<string,string>", "bucket<string,string>",
    "runtime/pprof.labelMap", "runtime/pprof.LabelSet", "runtime/pprof.label",
    "internal/runtime/pprof/label.Set", "internal/runtime/pprof/label.Label",
)
STRUCTS += LABEL_STRUCTS

# Short names the runtime reader may use for types that were renamed between releases.
ALIASES: dict[str, tuple[str, ...]] = {
    "type": ("internal/abi.Type", "runtime._type"),
    "_type": ("internal/abi.Type", "runtime._type"),
    "itab": ("internal/abi.ITab", "runtime.itab"),
    "uncommontype": ("internal/abi.UncommonType", "runtime.uncommontype"),
}

# Nested struct fields are flattened with dots down to this many components (g.sched.sp
# is 2, schedt.gFree.stack.head is 3): deep enough for anything goflame reads.
MAX_DEPTH = 4

_G_SCAN = 0x1000


class LayoutFieldMissing(UnsupportedGoVersion):
    """The layout of this Go release has no such struct or field: goflame cannot read it."""


@dataclass(frozen=True, slots=True)
class Field:
    offset: int
    size: int
    type: str


@dataclass(frozen=True, slots=True)
class StructLayout:
    name: str
    size: int
    fields: dict[str, Field]

    def offset(self, field_name: str) -> int:
        f = self.fields.get(field_name)
        if f is None:
            raise LayoutFieldMissing(f"{self.name} has no field {field_name!r} in this Go release")
        return f.offset


@dataclass(frozen=True, slots=True)
class Layout:
    """Everything goflame needs to know about one Go release's runtime data structures."""

    version: str  # "1.23"
    source: str  # "dwarf" or "table go1.23"
    structs: dict[str, StructLayout]
    ptr_size: int = 8
    wait_reasons: tuple[str, ...] = ()  # index = waitReason value
    g_status: dict[str, int] = dc_field(default_factory=dict)  # "_Grunning" -> 2, "_Gscan" -> 0x1000
    p_status: dict[str, int] = dc_field(default_factory=dict)
    func_ids: dict[str, int] = dc_field(default_factory=dict)  # "wrapper" -> 23 (normalised names)
    func_flags: dict[str, int] = dc_field(default_factory=dict)  # "topframe" -> 1
    # The runtime's classic hash map (Go <= 1.23; empty later): tophash marks, flags,
    # bucketCntBits, e.g. "evacuatedX" -> 2. Read from runtime/map.go.
    map_consts: dict[str, int] = dc_field(default_factory=dict)
    # How runtime/pprof keeps a goroutine's labels (runtime/pprof/label.go's labelMap):
    # "map" (map[string]string, Go <= 1.23) or "list" (a struct holding a sorted slice, 1.24+).
    label_store: str = ""

    def struct(self, name: str) -> StructLayout:
        """The struct called `name` ("runtime.g", "g", or an alias such as "itab")."""
        for candidate in _candidates(name):
            s = self.structs.get(candidate)
            if s is not None:
                return s
        raise LayoutFieldMissing(f"no struct {name!r} in the Go {self.version} runtime layout ({self.source})")

    def offset(self, struct_name: str, field_name: str) -> int:
        return self.struct(struct_name).offset(field_name)

    def field(self, struct_name: str, field_name: str) -> Field:
        s = self.struct(struct_name)
        f = s.fields.get(field_name)
        if f is None:
            raise LayoutFieldMissing(
                f"{s.name} has no field {field_name!r} in the Go {self.version} runtime ({self.source})")
        return f

    def size(self, struct_name: str) -> int:
        return self.struct(struct_name).size

    def has(self, struct_name: str, field_name: str | None = None) -> bool:
        s = next((self.structs[c] for c in _candidates(struct_name) if c in self.structs), None)
        return s is not None and (field_name is None or field_name in s.fields)

    @property
    def slice_size(self) -> int:
        return self.size("runtime.slice") if self.has("runtime.slice") else 3 * self.ptr_size

    @property
    def string_size(self) -> int:
        return self.size("string") if self.has("string") else 2 * self.ptr_size

    def wait_reason(self, value: int) -> str:
        """The runtime's text for waitReason `value`, as its own tracebacks print it."""
        if 0 <= value < len(self.wait_reasons):
            return self.wait_reasons[value]
        return "unknown wait reason"

    def g_status_name(self, value: int) -> str:
        """Name of a g.atomicstatus value, e.g. 0x1004 -> "_Gscanwaiting"."""
        for name, v in self.g_status.items():
            if v == value:
                return name
        base = value & ~_G_SCAN
        for name, v in self.g_status.items():
            if v == base and not name.startswith("_Gscan"):
                return ("_Gscan" + name[2:]) if value & _G_SCAN else name
        return f"status {value:#x}"

    def p_status_name(self, value: int) -> str:
        return next((n for n, v in self.p_status.items() if v == value), f"status {value}")


def _candidates(name: str) -> tuple[str, ...]:
    if name in ALIASES:
        return ALIASES[name]
    if "." in name or name == "string":
        return (name,)
    return (name, "runtime." + name)


# --------------------------------------------------------------------------- versions


def go_minor(version: str) -> int:
    """Minor number of a Go version string: "go1.23.4", "1.23", "go1.24rc1" -> 23."""
    m = re.search(r"(?:^|go|\s)1\.(\d+)", version.strip())
    if m is None:
        raise UnsupportedGoVersion(f"cannot understand the Go version {version!r}")
    return int(m.group(1))


def _check_supported(version: str) -> str:
    minor = go_minor(version)
    if not MIN_MINOR <= minor <= MAX_MINOR:
        raise UnsupportedGoVersion(
            f"Go 1.{minor} is not supported: goflame reads Go 1.{MIN_MINOR} to 1.{MAX_MINOR} binaries")
    return f"1.{minor}"


# --------------------------------------------------------------------------- tables


def available_tables() -> list[str]:
    """Releases with a generated table, e.g. ["1.19", "1.21", ...], oldest first."""
    out = []
    for entry in resources.files(__package__).joinpath("layouts").iterdir():
        m = re.fullmatch(r"go(1\.\d+)\.json", entry.name)
        if m:
            out.append(m.group(1))
    return sorted(out, key=lambda v: int(v.split(".")[1]))


def layout_from_table(version: str) -> Layout:
    """The shipped table for Go `version`, or the nearest release's when it has none."""
    want = _check_supported(version)
    have = available_tables()
    use = want if want in have else NEAREST.get(want)
    if use is None or use not in have:
        raise UnsupportedGoVersion(f"goflame has no runtime layout table for Go {want}")
    try:
        raw = resources.files(__package__).joinpath("layouts", f"go{use}.json").read_text()
        data = json.loads(raw)
    except (OSError, ValueError) as e:
        raise UnsupportedGoVersion(f"the runtime layout table for Go {use} is unreadable: {e}") from None
    source = f"table go{use}" if use == want else f"table go{use} (nearest to go{want})"
    return layout_from_dict(data, version=want, source=source)


def layout_from_dict(data: dict[str, Any], *, version: str | None = None, source: str | None = None) -> Layout:
    """Inverse of `layout_to_dict` (the JSON table format)."""
    structs = {
        name: StructLayout(name, s["size"], {f: Field(o, z, t) for f, (o, z, t) in s["fields"].items()})
        for name, s in data["structs"].items()
    }
    return Layout(
        version=version or data["go"],
        source=source or f"table go{data['go']}",
        structs=structs,
        ptr_size=data.get("ptr_size", 8),
        wait_reasons=tuple(data.get("wait_reasons", ())),
        g_status=dict(data.get("g_status", {})),
        p_status=dict(data.get("p_status", {})),
        func_ids=dict(data.get("func_ids", {})),
        func_flags=dict(data.get("func_flags", {})),
        map_consts=dict(data.get("map_consts", {})),
        label_store=data.get("label_store", ""),
    )


def layout_to_dict(layout: Layout, **extra: Any) -> dict[str, Any]:
    """The JSON table format: fields as [offset, size, type], sorted by offset then name."""
    out: dict[str, Any] = {"go": layout.version, **extra, "ptr_size": layout.ptr_size}
    out["structs"] = {
        name: {
            "size": s.size,
            "fields": {
                f: [v.offset, v.size, v.type]
                for f, v in sorted(s.fields.items(), key=lambda kv: (kv[1].offset, kv[0]))
            },
        }
        for name, s in sorted(layout.structs.items())
    }
    out["wait_reasons"] = list(layout.wait_reasons)
    for key in ("g_status", "p_status", "func_ids", "func_flags", "map_consts"):
        out[key] = dict(sorted(getattr(layout, key).items(), key=lambda kv: (kv[1], kv[0])))
    out["label_store"] = layout.label_store
    return out


def dump_table(data: dict[str, Any]) -> str:
    """JSON with one struct field or constant per line: stable and easy to diff."""
    lines = ["{"]
    items = list(data.items())
    for i, (key, value) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if key == "structs":
            lines.append('  "structs": {')
            snames = list(value)
            for j, sname in enumerate(snames):
                s = value[sname]
                lines.append(f"    {json.dumps(sname)}: {{")
                lines.append(f'      "size": {s["size"]},')
                lines.append('      "fields": {')
                fields = list(s["fields"].items())
                for k, (fname, fv) in enumerate(fields):
                    fc = "," if k < len(fields) - 1 else ""
                    lines.append(f"        {json.dumps(fname)}: {json.dumps(fv)}{fc}")
                lines.append("      }")
                lines.append("    }" + ("," if j < len(snames) - 1 else ""))
            lines.append("  }" + comma)
        elif isinstance(value, list) and value:
            lines.append(f"  {json.dumps(key)}: [")
            lines += [f"    {json.dumps(v)}" + ("," if k < len(value) - 1 else "") for k, v in enumerate(value)]
            lines.append("  ]" + comma)
        elif isinstance(value, dict) and value:
            lines.append(f"  {json.dumps(key)}: {{")
            kv = list(value.items())
            lines += [f"    {json.dumps(k)}: {json.dumps(v)}" + ("," if n < len(kv) - 1 else "")
                      for n, (k, v) in enumerate(kv)]
            lines.append("  }" + comma)
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- loading


def load_layout(elf: Any, version: str) -> Layout:
    """The layout of the runtime in `elf` (Go `version`): DWARF when present, else the table.

    Constants always come from the release's table: wait reason strings are not in DWARF.
    A struct that this binary's DWARF lacks (never referenced) is taken from the table, and
    `source` says how many, unless they are only LABEL_STRUCTS (most programs have none).
    """
    table = layout_from_table(version)
    dwarf = layout_from_dwarf(elf)
    if dwarf is None:
        return table
    structs = dict(dwarf.structs)
    borrowed = sorted(n for n in table.structs if n not in structs)
    for n in borrowed:
        structs[n] = table.structs[n]
    noted = [n for n in borrowed if n not in LABEL_STRUCTS]
    source = "dwarf" if not noted else f"dwarf (+{table.source} for {len(noted)} structs)"
    return Layout(
        version=dwarf.version or table.version,
        source=source,
        structs=structs,
        ptr_size=dwarf.ptr_size,
        wait_reasons=table.wait_reasons,
        g_status=table.g_status,
        p_status=table.p_status,
        func_ids=table.func_ids,
        func_flags=table.func_flags,
        map_consts=table.map_consts,
        label_store=table.label_store,
    )


def layout_from_dwarf(elf: Any, names: tuple[str, ...] = STRUCTS) -> Layout | None:
    """Struct layouts from the binary's DWARF, or None when it has none.

    `elf` is a path, a pyelftools ELFFile, or any object whose `pyelftools` attribute is one.
    The layout's version comes from the DW_AT_producer of the runtime's compilation unit;
    its constants are empty (see load_layout).
    """
    if isinstance(elf, str | os.PathLike):
        try:
            with open(elf, "rb") as fh:
                return layout_from_dwarf(ELFFile(fh), names)
        except OSError as e:
            raise CorruptBinary(f"cannot read {os.fspath(elf)}: {e.strerror}") from None
        except ELFError as e:
            raise CorruptBinary(f"{os.fspath(elf)} is not a readable ELF file: {e}") from None
    pyelf = elf if isinstance(elf, ELFFile) else getattr(elf, "pyelftools", None)
    if not isinstance(pyelf, ELFFile):
        raise TypeError(f"layout_from_dwarf needs a path or an ELFFile, not {type(elf).__name__}")
    try:
        abbrev = _debug_section(pyelf, "abbrev")
        info, complete = _debug_info(pyelf, full=False)
    except (ELFError, struct.error, ValueError, zlib.error) as e:
        raise CorruptBinary(f"the DWARF sections of this binary are corrupt: {e}") from None
    if info is None or abbrev is None:
        return None
    layout = layout_from_sections(info, abbrev, pyelf.little_endian, names)
    if layout is None and not complete:  # the early stop guessed wrong: read it all
        try:
            info, _ = _debug_info(pyelf, full=True)
        except (ELFError, struct.error, ValueError, zlib.error) as e:
            raise CorruptBinary(f"the DWARF sections of this binary are corrupt: {e}") from None
        layout = layout_from_sections(info or b"", abbrev, pyelf.little_endian, names)
    return layout


def layout_from_sections(info: bytes, abbrev: bytes, little_endian: bool = True,
                         names: tuple[str, ...] = STRUCTS) -> Layout | None:
    """Struct layouts from inflated .debug_info and .debug_abbrev bytes."""
    try:
        return _DwarfReader(info, abbrev, little_endian).layout(names)
    except (struct.error, IndexError, KeyError, ValueError, UnicodeError, RecursionError) as e:
        raise CorruptBinary(f"the DWARF of this binary is corrupt: {e!r}") from None


def _debug_section(elf: ELFFile, name: str) -> bytes | None:
    """Contents of .debug_NAME, decompressed (SHF_COMPRESSED or the older .zdebug_NAME)."""
    sec = elf.get_section_by_name(f".debug_{name}")
    if sec is not None:
        return None if sec["sh_type"] == "SHT_NOBITS" else sec.data()  # pyelftools inflates
    sec = elf.get_section_by_name(f".zdebug_{name}")
    if sec is None:
        return None
    raw = sec.data()
    if raw[:4] != b"ZLIB":
        raise ValueError(f".zdebug_{name} has no ZLIB header")
    return zlib.decompress(raw[12:])


# A struct DIE's name, inline: found in the unit that holds every type of the program.
_ANCHOR = b"runtime.g\0"
_ELFCOMPRESS_ZLIB = 1
_SHF_COMPRESSED = 0x800


def _debug_info(elf: ELFFile, *, full: bool) -> tuple[bytes | None, bool]:
    """.debug_info, and whether it is complete.

    A compressed .debug_info of a big program inflates to tens of megabytes, and the unit
    with the runtime's types is usually far from the end (a fifth of the way into the Go
    compiler's), so unless `full` the inflating stops at the end of that unit.
    """
    sec = elf.get_section_by_name(".debug_info")
    if sec is None:
        zsec = elf.get_section_by_name(".zdebug_info")
        if zsec is None:
            return None, True
        raw = zsec.data()
        if raw[:4] != b"ZLIB":
            raise ValueError(".zdebug_info has no ZLIB header")
        stream = memoryview(raw)[12:]
    elif sec["sh_type"] == "SHT_NOBITS":
        return None, True
    elif not sec["sh_flags"] & _SHF_COMPRESSED:
        return sec.data(), True
    else:
        sec.stream.seek(sec["sh_offset"])
        raw = sec.stream.read(sec["sh_size"])
        chdr = 24 if elf.elfclass == 64 else 12
        (ch_type,) = struct.unpack_from("<I" if elf.little_endian else ">I", raw, 0)
        if ch_type != _ELFCOMPRESS_ZLIB:
            return sec.data(), True  # another algorithm: let pyelftools deal with it
        stream = memoryview(raw)[chdr:]
    if full:
        return zlib.decompress(stream), True
    return _inflate_through_types(stream, elf.little_endian)


def _inflate_through_types(stream: memoryview, little_endian: bool) -> tuple[bytes, bool]:
    inflater = zlib.decompressobj()
    out = bytearray()
    step, pos, searched, anchor = 1 << 16, 0, 0, -1
    while pos < len(stream):
        out += inflater.decompress(stream[pos:pos + step])
        pos += step
        if anchor < 0:
            anchor = out.find(_ANCHOR, max(0, searched - len(_ANCHOR)))
            searched = len(out)
        if anchor >= 0:
            end = _unit_end(out, anchor, little_endian)
            if end is not None and len(out) >= end:
                return bytes(out), False
    out += inflater.flush()
    return bytes(out), True


def _unit_end(info: bytearray, offset: int, little_endian: bool) -> int | None:
    """End of the unit that contains `offset`, from the unit headers before it."""
    fmt = "<" if little_endian else ">"
    pos = 0
    while pos + 12 <= len(info):
        (length,) = struct.unpack_from(fmt + "I", info, pos)
        end = pos + 4 + length
        if length == 0xFFFFFFFF:
            (length,) = struct.unpack_from(fmt + "Q", info, pos + 4)
            end = pos + 12 + length
        if offset < end:
            return end
        pos = end
    return None


# --------------------------------------------------------------------------- DWARF reader

# DWARF tags, attributes and forms (DWARF 5 numbering; older versions use a subset).
_TAG_MEMBER, _TAG_POINTER, _TAG_STRUCT, _TAG_TYPEDEF = 0x0D, 0x0F, 0x13, 0x16
_AT_NAME, _AT_BYTE_SIZE, _AT_PRODUCER, _AT_MEMBER_LOC, _AT_TYPE = 0x03, 0x0B, 0x25, 0x38, 0x49
_AT_GO_EMBEDDED = 0x2903
_FORM_STRING, _FORM_IMPLICIT_CONST, _FORM_INDIRECT = 0x08, 0x21, 0x16
_FIXED_FORMS = {  # form -> size in bytes ("a": address size, "o": offset size)
    0x01: "a", 0x05: 2, 0x06: 4, 0x07: 8, 0x0B: 1, 0x0C: 1, 0x0E: "o", 0x11: 1, 0x12: 2, 0x13: 4,
    0x14: 8, 0x17: "o", 0x19: 0, 0x1C: 4, 0x1D: "o", 0x1E: 16, 0x1F: "o", 0x20: 8, 0x24: 8,
    0x25: 1, 0x26: 2, 0x27: 3, 0x28: 4, 0x29: 1, 0x2A: 2, 0x2B: 3, 0x2C: 4, 0x1F20: "o", 0x1F21: "o",
}
_ULEB_FORMS = {0x0F, 0x15, 0x1A, 0x1B, 0x22, 0x23, 0x1F01, 0x1F02}
_BLOCK_FORMS = {0x03: 2, 0x04: 4, 0x09: 0, 0x0A: 1, 0x18: 0}  # length prefix size (0: uleb)
_CU_REF_FORMS = {0x11, 0x12, 0x13, 0x14, 0x15}
_DW_OP_PLUS_UCONST = 0x23


@dataclass(frozen=True, slots=True)
class _Abbrev:
    tag: int
    children: bool
    attrs: tuple[tuple[int, int, int], ...]  # (attribute, form, implicit_const)


@dataclass(frozen=True, slots=True)
class _Unit:
    offset: int  # of the unit header
    end: int  # one past the unit
    die_start: int  # of the first DIE
    version: int
    addr_size: int
    offset_size: int
    abbrev_offset: int


@dataclass(frozen=True, slots=True)
class _Die:
    offset: int
    tag: int
    children: bool
    attrs: dict[int, Any]
    end: int  # one past this DIE's own attributes (its first child, if any)
    unit: _Unit


class _DwarfReader:
    """Decodes single DIEs of .debug_info on demand; never walks a whole unit."""

    def __init__(self, info: bytes, abbrev: bytes, little_endian: bool = True):
        self.info = info
        self.abbrev_data = abbrev
        self.e = "<" if little_endian else ">"
        self.units = list(self._iter_units())
        self._unit_starts = [u.offset for u in self.units]
        self._abbrevs: dict[int, dict[int, _Abbrev]] = {}
        self._dies: dict[int, _Die] = {}
        self._codes: list[int] | None = None

    def _iter_units(self) -> Iterator[_Unit]:
        info, e, pos = self.info, self.e, 0
        while pos + 11 <= len(info):
            (length,) = struct.unpack_from(e + "I", info, pos)
            hdr, offset_size = pos + 4, 4
            if length == 0xFFFFFFFF:
                (length,) = struct.unpack_from(e + "Q", info, hdr)
                hdr, offset_size = pos + 12, 8
            end = hdr + length
            (version,) = struct.unpack_from(e + "H", info, hdr)
            p = hdr + 2
            if version >= 5:
                unit_type, addr_size = info[p], info[p + 1]
                abbrev_off = int.from_bytes(info[p + 2:p + 2 + offset_size], "little" if e == "<" else "big")
                p += 2 + offset_size
                if unit_type in (0x02, 0x06):  # type unit: signature + type offset
                    p += 8 + offset_size
                elif unit_type in (0x04, 0x05):  # skeleton/split compile unit: dwo id
                    p += 8
            else:
                abbrev_off = int.from_bytes(info[p:p + offset_size], "little" if e == "<" else "big")
                addr_size = info[p + offset_size]
                p += offset_size + 1
            if end > len(info):
                return  # a partial unit: the data was inflated only as far as needed
            if length == 0:
                raise ValueError(f"empty compilation unit at {pos:#x} in .debug_info")
            yield _Unit(pos, end, p, version, addr_size, offset_size, abbrev_off)
            pos = end

    def abbrevs(self, offset: int) -> dict[int, _Abbrev]:
        table = self._abbrevs.get(offset)
        if table is not None:
            return table
        data, pos, table = self.abbrev_data, offset, {}
        while True:
            code, pos = _uleb(data, pos)
            if code == 0:
                break
            tag, pos = _uleb(data, pos)
            children = data[pos] != 0
            pos += 1
            attrs = []
            while True:
                at, pos = _uleb(data, pos)
                form, pos = _uleb(data, pos)
                implicit = 0
                if form == _FORM_IMPLICIT_CONST:
                    implicit, pos = _sleb(data, pos)
                if at == 0 and form == 0:
                    break
                attrs.append((at, form, implicit))
            table[code] = _Abbrev(tag, children, tuple(attrs))
        self._abbrevs[offset] = table
        return table

    def unit_at(self, offset: int) -> _Unit:
        i = bisect.bisect_right(self._unit_starts, offset) - 1
        if i < 0 or offset >= self.units[i].end:
            raise ValueError(f"DWARF offset {offset:#x} is outside every unit")
        return self.units[i]

    def die(self, offset: int, unit: _Unit | None = None) -> _Die | None:
        """The DIE at `offset`, or None for the null entry that ends a sibling list."""
        cached = self._dies.get(offset)
        if cached is not None:
            return cached
        unit = unit or self.unit_at(offset)
        info, e = self.info, self.e
        code, pos = _uleb(info, offset)
        if code == 0:
            return None
        ab = self.abbrevs(unit.abbrev_offset)[code]
        attrs: dict[int, Any] = {}
        for at, form, implicit in ab.attrs:
            while form == _FORM_INDIRECT:
                form, pos = _uleb(info, pos)
            if form == _FORM_STRING:
                nul = info.index(b"\0", pos)
                value: Any = info[pos:nul].decode("utf-8", "replace")
                pos = nul + 1
            elif form in _ULEB_FORMS:
                value, pos = _uleb(info, pos)
                if form in _CU_REF_FORMS:
                    value += unit.offset
            elif form == 0x0D:  # sdata
                value, pos = _sleb(info, pos)
            elif form == _FORM_IMPLICIT_CONST:
                value = implicit
            elif form in _BLOCK_FORMS:
                prefix = _BLOCK_FORMS[form]
                if prefix == 0:
                    n, pos = _uleb(info, pos)
                else:
                    n = int.from_bytes(info[pos:pos + prefix], "little" if e == "<" else "big")
                    pos += prefix
                value = bytes(info[pos:pos + n])
                pos += n
            elif form == 0x10:  # ref_addr: section offset, address-sized in DWARF 2
                size = unit.addr_size if unit.version <= 2 else unit.offset_size
                value = int.from_bytes(info[pos:pos + size], "little" if e == "<" else "big")
                pos += size
            elif form in _FIXED_FORMS:
                size_spec = _FIXED_FORMS[form]
                size = unit.addr_size if size_spec == "a" else unit.offset_size if size_spec == "o" else size_spec
                value = int.from_bytes(info[pos:pos + size], "little" if e == "<" else "big") if size else True
                if form in _CU_REF_FORMS:
                    value += unit.offset
                pos += size
            else:
                raise ValueError(f"unknown DWARF form {form:#x} at {pos:#x}")
            attrs[at] = value
        d = _Die(offset, ab.tag, ab.children, attrs, pos, unit)
        self._dies[offset] = d
        return d

    def children(self, die: _Die) -> Iterator[_Die]:
        """Direct children of `die`, skipping over grandchildren."""
        if not die.children:
            return
        pos, depth = die.end, 0
        while pos < die.unit.end:
            child = self.die(pos, die.unit)
            if child is None:
                pos += 1
                if depth == 0:
                    return
                depth -= 1
                continue
            if depth == 0:
                yield child
            pos = child.end
            if child.children:
                depth += 1

    # ---- types

    def type_die(self, die: _Die) -> _Die | None:
        ref = die.attrs.get(_AT_TYPE)
        return None if ref is None else self.die(ref)

    def type_size(self, t: _Die | None) -> int:
        for _ in range(16):  # typedef chains are short; a cycle is corrupt DWARF
            if t is None:
                return 0
            if _AT_BYTE_SIZE in t.attrs:
                return int(t.attrs[_AT_BYTE_SIZE])
            if t.tag == _TAG_POINTER:
                return t.unit.addr_size
            t = self.type_die(t)
        raise ValueError("typedef cycle in DWARF")

    def resolve_struct(self, t: _Die | None) -> _Die | None:
        """The structure DIE behind typedefs, or None when the type is not a struct."""
        for _ in range(16):
            if t is None:
                return None
            if t.tag == _TAG_STRUCT:
                return t
            if t.tag != _TAG_TYPEDEF:
                return None
            t = self.type_die(t)
        return None

    def find_struct(self, name: str, lo: int = 0, hi: int | None = None) -> _Die | None:
        """The structure DIE called `name`: byte search for name+NUL preceded by a struct
        abbrev code, then verified by decoding the DIE there."""
        hi = len(self.info) if hi is None else hi
        encoded = name.encode() + b"\0"
        codes = [encode_uvarint(c) for c in self._struct_codes()]
        pos = self.info.find(encoded, lo, hi)
        while pos >= 0:
            for code in codes:
                start = pos - len(code)
                if start >= lo and self.info[start:pos] == code:
                    d = self._verify_struct(start, name)
                    if d is not None:
                        return d
            pos = self.info.find(encoded, pos + 1, hi)
        return None

    def _struct_codes(self) -> list[int]:
        if self._codes is not None:
            return self._codes
        codes: set[int] = set()
        for off in {u.abbrev_offset for u in self.units}:
            for code, ab in self.abbrevs(off).items():
                if ab.tag == _TAG_STRUCT and ab.attrs and ab.attrs[0][:2] == (_AT_NAME, _FORM_STRING):
                    codes.add(code)
        self._codes = sorted(codes)
        return self._codes

    def _verify_struct(self, pos: int, name: str) -> _Die | None:
        try:
            unit = self.unit_at(pos)
            if pos < unit.die_start:
                return None
            d = self.die(pos, unit)
        except (ValueError, KeyError, IndexError, struct.error):
            return None
        if d is None or d.tag != _TAG_STRUCT or d.attrs.get(_AT_NAME) != name or _AT_BYTE_SIZE not in d.attrs:
            self._dies.pop(pos, None)  # not a real DIE: forget the misparse
            return None
        return d

    def struct_layout(self, sdie: _Die) -> StructLayout:
        fields: dict[str, Field] = {}
        promoted: dict[str, tuple[int, str | None, Field]] = {}  # alias -> (depth, full path, field)
        self._flatten(sdie, "", 0, fields, promoted, 1, elided="", embedded_seen=False)
        for alias, (_, full, f) in promoted.items():
            if full is not None and alias not in fields:
                fields[alias] = f
        return StructLayout(sdie.attrs[_AT_NAME], int(sdie.attrs[_AT_BYTE_SIZE]), fields)

    def _flatten(self, sdie: _Die, prefix: str, base: int, fields: dict[str, Field],
                 promoted: dict[str, tuple[int, str | None, Field]], depth: int,
                 elided: str, embedded_seen: bool) -> None:
        for m in self.children(sdie):
            if m.tag != _TAG_MEMBER:
                continue
            name = m.attrs.get(_AT_NAME, "")
            if not name or name == "_":
                continue
            loc = m.attrs.get(_AT_MEMBER_LOC, 0)
            if isinstance(loc, bytes):
                loc = _member_location(loc)
            t = self.type_die(m)
            f = Field(base + int(loc), self.type_size(t), (t.attrs.get(_AT_NAME, "?") if t else "?"))
            path = prefix + name
            fields[path] = f
            embedded = bool(m.attrs.get(_AT_GO_EMBEDDED, False))
            # Go promotes the fields of embedded structs: m.procid may live in m.mOS.procid.
            alias = elided + name
            if embedded_seen and alias != path:
                prev = promoted.get(alias)
                if prev is None or depth < prev[0]:
                    promoted[alias] = (depth, path, f)
                elif depth == prev[0] and prev[1] != path:
                    promoted[alias] = (depth, None, f)  # ambiguous at equal depth: not promoted
            inner = self.resolve_struct(t)
            if inner is not None and depth < MAX_DEPTH:
                self._flatten(inner, path + ".", f.offset, fields, promoted, depth + 1,
                              elided=(elided if embedded else alias + "."),
                              embedded_seen=embedded_seen or embedded)

    def producer_version(self, unit: _Unit) -> str:
        top = self.die(unit.die_start, unit)
        producer = str(top.attrs.get(_AT_PRODUCER, "")) if top else ""
        m = re.search(r"go1\.(\d+)", producer)
        return f"1.{m.group(1)}" if m else ""

    def layout(self, names: tuple[str, ...]) -> Layout | None:
        anchor = self.find_struct("runtime.g")
        if anchor is None:
            return None  # DWARF without the runtime's types: not usable
        # Every type DIE is in the unit that holds runtime.g; search only there.
        unit = anchor.unit
        structs: dict[str, StructLayout] = {}
        for name in names:
            d = anchor if name == "runtime.g" else self.find_struct(name, unit.die_start, unit.end)
            if d is not None:
                structs[name] = self.struct_layout(d)
        return Layout(version=self.producer_version(unit), source="dwarf", structs=structs,
                      ptr_size=unit.addr_size)


def _member_location(expr: bytes) -> int:
    """DW_AT_data_member_location given as an expression: DW_OP_plus_uconst N."""
    if expr and expr[0] == _DW_OP_PLUS_UCONST:
        return _uleb(expr, 1)[0]
    raise ValueError("unsupported DW_AT_data_member_location expression")
