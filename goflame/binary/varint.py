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
