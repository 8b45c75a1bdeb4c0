"""The unit every layer agrees on: one logical frame of a stack.

A physical Go frame with inlined calls becomes several Frames (innermost first), the way
the runtime's traceback and pprof show them. Synthetic frames (a goroutine's state as an
off-CPU leaf, a thread or goroutine root) carry their own kind so exporters can colour them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class FrameKind(str, Enum):  # noqa: UP042 - str() of members is relied on as "FrameKind.X"-free .value
    GO = "go"            # Go code, symbolized through pclntab
    NATIVE = "native"    # C / libc / vDSO, symbolized through ELF symbols
    STATE = "state"      # synthetic leaf: "[chan receive]", "[runnable]", ...
    THREAD = "thread"    # synthetic root with --threads
    GOROUTINE = "goroutine"  # synthetic root with --goroutines
    LABEL = "label"  # synthetic root with --label KEY: "KEY=value" of the sample's goroutine
    UNKNOWN = "unknown"  # a pc nothing could symbolize


# Not frozen (but hashable): a frozen dataclass's __init__ costs ~4x and symbolizing a big
# binary cold makes one Frame per logical frame. Treat it as immutable all the same.
@dataclass(slots=True, unsafe_hash=True)
class Frame:
    function: str
    file: str = ""
    line: int = 0
    inlined: bool = False
    kind: FrameKind = FrameKind.GO
    pc: int = 0  # the pc this frame came from (0 for synthetic frames); not part of aggregation keys

    def label(self, lines: bool = False) -> str:
        """The frame's name in a flame graph; with `lines`, `func (file:line)`-style detail."""
        if lines and self.file:
            return f"{self.function} ({self.file}:{self.line})"
        return self.function
