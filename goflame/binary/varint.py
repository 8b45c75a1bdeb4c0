"""Unsigned LEB128 varints, as Go's encoding/binary.Uvarint writes them (pclntab, buildinfo)."""

from __future__ import annotations

from goflame.errors import CorruptBinary


def uvarint(buf: bytes | memoryview, pos: int, what: str, max_shift: int = 63) -> tuple[int, int]:
    """(value, next position); CorruptBinary naming `what` when the bytes run out or never end."""
    value = shift = 0
    n = len(buf)
    while True:
        if pos >= n or shift > max_shift:
            raise CorruptBinary(f"corrupt {what} (bad varint)")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


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
