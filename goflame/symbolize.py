"""pc -> logical frames (function, file, line, inlined), cached per pc.

A profile touches the same few thousand pcs over and over; each is expanded through the
pclntab and its inline tree once and then answered from a dict. Addresses here are the
process's (load bias applied), the pclntab's are link-time.
"""

from __future__ import annotations

from goflame.binary.gobinary import GoBinary
from goflame.errors import CorruptBinary
from goflame.frame import Frame, FrameKind


class Symbolizer:
    def __init__(self, binary: GoBinary, load_bias: int = 0):
        self.binary = binary
        self.bias = load_bias
        self._tab = binary.pclntab
        self._cache: dict[tuple[int, bool], tuple[Frame, ...]] = {}

    def frames(self, pc: int, return_address: bool = False) -> tuple[Frame, ...]:
        """Frames at a process pc, innermost first.

        `return_address`: pc is where a call returns to, so the call instruction (pc-1) is
        looked up — the runtime's rule for every frame but the innermost and trap frames.
        """
        key = (pc, return_address)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        lookup = pc - self.bias - (1 if return_address else 0)
        try:
            logical = self._tab.frames(lookup)
        except CorruptBinary:
            logical = []
        if logical:
            out = tuple(
                Frame(f.function, f.file, f.line, f.inlined, FrameKind.GO, pc) for f in logical
            )
        else:
            out = (Frame(f"{pc:#x}", kind=FrameKind.UNKNOWN, pc=pc),)
        self._cache[key] = out
        return out

    def function_name(self, pc: int) -> str | None:
        f = self._tab.find_func(pc - self.bias)
        return f.name if f else None

    def __len__(self) -> int:
        return len(self._cache)
