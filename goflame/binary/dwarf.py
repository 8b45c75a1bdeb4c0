"""Just enough DWARF to read struct layouts: sections, unit headers, abbrevs and single DIEs.

Why not pyelftools' DWARF reader: it decodes whole compilation units, and the unit holding a
Go program's types has hundreds of thousands of DIEs (seconds of Python). Here a DIE is
decoded only when asked for by offset, a struct is found by a byte search for its inline
name (`find_struct`), and a compressed .debug_info is inflated only as far as the unit with
the runtime's types (`debug_info(full=False)`). pyelftools still parses the ELF file and
section headers. What the structs mean to goflame (flattening, promoted fields) is
`binary/layout.py`'s business.
"""

from __future__ import annotations

import bisect
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from elftools.elf.elffile import ELFFile

from goflame.binary.varint import encode_uvarint
from goflame.binary.varint import sleb128 as _sleb
from goflame.binary.varint import uleb128 as _uleb


def debug_section(elf: ELFFile, name: str) -> bytes | None:
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


def debug_info(elf: ELFFile, *, full: bool) -> tuple[bytes | None, bool]:
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


# DWARF tags, attributes and forms (DWARF 5 numbering; older versions use a subset).
TAG_MEMBER, _TAG_POINTER, TAG_STRUCT, _TAG_TYPEDEF = 0x0D, 0x0F, 0x13, 0x16
AT_NAME, AT_BYTE_SIZE, _AT_PRODUCER, _AT_MEMBER_LOC, _AT_TYPE = 0x03, 0x0B, 0x25, 0x38, 0x49
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
class Unit:
    offset: int  # of the unit header
    end: int  # one past the unit
    die_start: int  # of the first DIE
    version: int
    addr_size: int
    offset_size: int
    abbrev_offset: int


@dataclass(frozen=True, slots=True)
class Die:
    offset: int
    tag: int
    children: bool
    attrs: dict[int, Any]
    end: int  # one past this DIE's own attributes (its first child, if any)
    unit: Unit



class Member(NamedTuple):
    """One data member of a struct: DW_TAG_member with its resolved location."""

    name: str
    offset: int  # DW_AT_data_member_location
    type: Die | None
    embedded: bool  # Go's DW_AT_go_embedded_field: an embedded struct whose fields Go promotes


class DwarfReader:
    """Decodes single DIEs of .debug_info on demand; never walks a whole unit."""

    def __init__(self, info: bytes, abbrev: bytes, little_endian: bool = True):
        self.info = info
        self.abbrev_data = abbrev
        self.e = "<" if little_endian else ">"
        self.units = list(self._iter_units())
        self._unit_starts = [u.offset for u in self.units]
        self._abbrevs: dict[int, dict[int, _Abbrev]] = {}
        self._dies: dict[int, Die] = {}
        self._codes: list[int] | None = None

    def _iter_units(self) -> Iterator[Unit]:
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
            yield Unit(pos, end, p, version, addr_size, offset_size, abbrev_off)
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

    def unit_at(self, offset: int) -> Unit:
        i = bisect.bisect_right(self._unit_starts, offset) - 1
        if i < 0 or offset >= self.units[i].end:
            raise ValueError(f"DWARF offset {offset:#x} is outside every unit")
        return self.units[i]

    def die(self, offset: int, unit: Unit | None = None) -> Die | None:
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
        d = Die(offset, ab.tag, ab.children, attrs, pos, unit)
        self._dies[offset] = d
        return d

    def children(self, die: Die) -> Iterator[Die]:
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

    def type_die(self, die: Die) -> Die | None:
        ref = die.attrs.get(_AT_TYPE)
        return None if ref is None else self.die(ref)

    def type_size(self, t: Die | None) -> int:
        for _ in range(16):  # typedef chains are short; a cycle is corrupt DWARF
            if t is None:
                return 0
            if AT_BYTE_SIZE in t.attrs:
                return int(t.attrs[AT_BYTE_SIZE])
            if t.tag == _TAG_POINTER:
                return t.unit.addr_size
            t = self.type_die(t)
        raise ValueError("typedef cycle in DWARF")

    def resolve_struct(self, t: Die | None) -> Die | None:
        """The structure DIE behind typedefs, or None when the type is not a struct."""
        for _ in range(16):
            if t is None:
                return None
            if t.tag == TAG_STRUCT:
                return t
            if t.tag != _TAG_TYPEDEF:
                return None
            t = self.type_die(t)
        return None

    def find_struct(self, name: str, lo: int = 0, hi: int | None = None) -> Die | None:
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
                if ab.tag == TAG_STRUCT and ab.attrs and ab.attrs[0][:2] == (AT_NAME, _FORM_STRING):
                    codes.add(code)
        self._codes = sorted(codes)
        return self._codes

    def _verify_struct(self, pos: int, name: str) -> Die | None:
        try:
            unit = self.unit_at(pos)
            if pos < unit.die_start:
                return None
            d = self.die(pos, unit)
        except (ValueError, KeyError, IndexError, struct.error):
            return None
        if d is None or d.tag != TAG_STRUCT or d.attrs.get(AT_NAME) != name or AT_BYTE_SIZE not in d.attrs:
            self._dies.pop(pos, None)  # not a real DIE: forget the misparse
            return None
        return d

    @property
    def decoded(self) -> int:
        """How many DIEs were decoded so far (the point of this reader is to keep it small)."""
        return len(self._dies)

    def members(self, sdie: Die) -> Iterator[Member]:
        """The named data members of a structure DIE, in DWARF order (blank `_` fields left out)."""
        for m in self.children(sdie):
            if m.tag != TAG_MEMBER:
                continue
            name = m.attrs.get(AT_NAME, "")
            if not name or name == "_":
                continue
            loc = m.attrs.get(_AT_MEMBER_LOC, 0)
            if isinstance(loc, bytes):
                loc = _member_location(loc)
            yield Member(name, int(loc), self.type_die(m), bool(m.attrs.get(_AT_GO_EMBEDDED, False)))

    def producer(self, unit: Unit) -> str:
        """DW_AT_producer of the unit's root DIE ("" when absent), e.g. "Go cmd/compile go1.23.4"."""
        top = self.die(unit.die_start, unit)
        return str(top.attrs.get(_AT_PRODUCER, "")) if top else ""


def _member_location(expr: bytes) -> int:
    """DW_AT_data_member_location given as an expression: DW_OP_plus_uconst N."""
    if expr and expr[0] == _DW_OP_PLUS_UCONST:
        return _uleb(expr, 1)[0]
    raise ValueError("unsupported DW_AT_data_member_location expression")
