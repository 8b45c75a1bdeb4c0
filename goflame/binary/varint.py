"""LEB128 varints, every reader and writer of them: Go's encoding/binary.Uvarint (pclntab,
buildinfo), DWARF and CFI (signed and unsigned), protobuf (pprof) and goflame's own recordings."""

from __future__ import annotations

from goflame.errors import CorruptBinary


def try_uvarint(buf: bytes | memoryview, pos: int, max_shift: int = 63) -> tuple[int | None, int]:
    """(value, next position); (None, where it stopped) when the bytes run out or the varint
    never ends. For sniffing a file's head, where a cut varint is an answer, not an error."""
    value = shift = 0
    n = len(buf)
    while pos < n and shift <= max_shift:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
    return None, pos


def uvarint(buf: bytes | memoryview, pos: int, what: str, max_shift: int = 63) -> tuple[int, int]:
    """(value, next position); CorruptBinary naming `what` when the bytes run out or never end."""
    value, pos = try_uvarint(buf, pos, max_shift)
    if value is None:
        raise CorruptBinary(f"corrupt {what} (bad varint)")
    return value, pos


def uleb128(buf: bytes, pos: int) -> tuple[int, int]:
    """DWARF/CFI unsigned LEB128 on the hot path: no bounds check (IndexError past the end)."""
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def sleb128(buf: bytes, pos: int) -> tuple[int, int]:
    """DWARF/CFI signed LEB128, same contract as `uleb128`."""
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            if b & 0x40:
                result -= 1 << shift
            return result, pos


def encode_uvarint(v: int) -> bytes:
    """The unsigned LEB128 bytes of `v` >= 0."""
    out = bytearray()
    append_uvarints(out, v)
    return bytes(out)


def append_uvarints(buf: bytearray, *values: int) -> None:
    """Unsigned LEB128 varints appended one after another (one call for a whole record: the
    recording writer's hot path); ValueError for a negative value."""
    append = buf.append
    for v in values:
        if v < 0:
            raise ValueError(f"negative value {v} in an unsigned field")
        while v >= 0x80:
            append((v & 0x7F) | 0x80)
            v >>= 7
        append(v)
