"""Runtime struct layouts and per-release runtime constants.

goflame reads the runtime's own structs (g, m, p, gobuf, schedt, moduledata, ...) out of a
live process, and their field offsets change between Go releases. When the binary has DWARF
the offsets come from it; stripped binaries (`-ldflags=-s -w`, distro builds) use tables that
`scripts/gen_layouts.py` generated from real builds of every supported release. The constants
the runtime reader needs (wait reason strings, g/P status values, funcIDs, the hash map's
tophash marks, how runtime/pprof stores labels) are not in a stripped binary, and wait reason strings are not in DWARF at all, so they always come from
the table of the binary's release (parsed from that release's own runtime source).

DWARF is read lazily and narrowly (binary/dwarf.py): a big binary has megabytes of
.debug_info, and a Python walk of every DIE costs seconds. The Go linker puts every type DIE
into one compilation unit of the runtime, and a struct DIE starts with its abbrev code
followed by its name as an inline string, so each wanted struct is found with a byte search,
checked by decoding the DIE at the hit, and only those DIEs and their members' types are
decoded. Here they are flattened into dotted field paths, with Go's promoted fields.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from dataclasses import dataclass
from dataclasses import field as dc_field
from importlib import resources
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from goflame.binary.dwarf import AT_BYTE_SIZE, AT_NAME, Die, DwarfReader, debug_info, debug_section
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
    """A Layout from the JSON table format (written by scripts/gen_layouts.py)."""
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
        abbrev = debug_section(pyelf, "abbrev")
        info, complete = debug_info(pyelf, full=False)
    except (ELFError, struct.error, ValueError, zlib.error) as e:
        raise CorruptBinary(f"the DWARF sections of this binary are corrupt: {e}") from None
    if info is None or abbrev is None:
        return None
    layout = layout_from_sections(info, abbrev, pyelf.little_endian, names)
    if layout is None and not complete:  # the early stop guessed wrong: read it all
        try:
            info, _ = debug_info(pyelf, full=True)
        except (ELFError, struct.error, ValueError, zlib.error) as e:
            raise CorruptBinary(f"the DWARF sections of this binary are corrupt: {e}") from None
        layout = layout_from_sections(info or b"", abbrev, pyelf.little_endian, names)
    return layout


def layout_from_sections(info: bytes, abbrev: bytes, little_endian: bool = True,
                         names: tuple[str, ...] = STRUCTS) -> Layout | None:
    """Struct layouts from inflated .debug_info and .debug_abbrev bytes."""
    try:
        return layout_from_reader(DwarfReader(info, abbrev, little_endian), names)
    except (struct.error, IndexError, KeyError, ValueError, UnicodeError, RecursionError) as e:
        raise CorruptBinary(f"the DWARF of this binary is corrupt: {e!r}") from None


# --------------------------------------------------------------------------- Go structs from DWARF


def layout_from_reader(reader: DwarfReader, names: tuple[str, ...] = STRUCTS) -> Layout | None:
    """The wanted structs, flattened, from the unit that holds the runtime's types."""
    anchor = reader.find_struct("runtime.g")
    if anchor is None:
        return None  # DWARF without the runtime's types: not usable
    # Every type DIE is in the unit that holds runtime.g; search only there.
    unit = anchor.unit
    structs: dict[str, StructLayout] = {}
    for name in names:
        d = anchor if name == "runtime.g" else reader.find_struct(name, unit.die_start, unit.end)
        if d is not None:
            structs[name] = _struct_layout(reader, d)
    m = re.search(r"go1\.(\d+)", reader.producer(unit))
    return Layout(version=f"1.{m.group(1)}" if m else "", source="dwarf", structs=structs,
                  ptr_size=unit.addr_size)


def _struct_layout(reader: DwarfReader, sdie: Die) -> StructLayout:
    fields: dict[str, Field] = {}
    promoted: dict[str, tuple[int, str | None, Field]] = {}  # alias -> (depth, full path, field)
    _flatten(reader, sdie, "", 0, fields, promoted, 1, elided="", embedded_seen=False)
    for alias, (_, full, f) in promoted.items():
        if full is not None and alias not in fields:
            fields[alias] = f
    return StructLayout(sdie.attrs[AT_NAME], int(sdie.attrs[AT_BYTE_SIZE]), fields)


def _flatten(reader: DwarfReader, sdie: Die, prefix: str, base: int, fields: dict[str, Field],
             promoted: dict[str, tuple[int, str | None, Field]], depth: int,
             elided: str, embedded_seen: bool) -> None:
    for m in reader.members(sdie):
        t = m.type
        f = Field(base + m.offset, reader.type_size(t), (t.attrs.get(AT_NAME, "?") if t else "?"))
        path = prefix + m.name
        fields[path] = f
        # Go promotes the fields of embedded structs: m.procid may live in m.mOS.procid.
        alias = elided + m.name
        if embedded_seen and alias != path:
            prev = promoted.get(alias)
            if prev is None or depth < prev[0]:
                promoted[alias] = (depth, path, f)
            elif depth == prev[0] and prev[1] != path:
                promoted[alias] = (depth, None, f)  # ambiguous at equal depth: not promoted
        inner = reader.resolve_struct(t)
        if inner is not None and depth < MAX_DEPTH:
            _flatten(reader, inner, path + ".", f.offset, fields, promoted, depth + 1,
                     elided=(elided if m.embedded else alias + "."),
                     embedded_seen=embedded_seen or m.embedded)
