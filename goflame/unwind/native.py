"""The C unwinder: native frames (cgo, shared libraries, the vDSO) from registers, until Go code.

Go's own unwinder stops where Go code stops. Everything else on a thread's stack was compiled
by a C toolchain. Each frame's rule comes from its object (unwind/images.py: CFI, else prologue
analysis, else frame pointers), found through the target's mappings (unwind/addrspace.py), and
is applied by unwind/cfi.py's `step`. Frames found without CFI are named with a "[heuristic]"
suffix. A caller's frame must lie on the same stack, above the callee's: anything else is a
bad frame, and the walk ends there. Where Go code resumes is for the stitcher
(unwind/stitch.py) to follow.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from goflame.errors import InvalidMemory
from goflame.frame import Frame, FrameKind
from goflame.process import Process
from goflame.unwind.addrspace import AddressSpace, MappedObject
from goflame.unwind.cfi import RA, RSP, CfiError, Row, prologue_row, step
from goflame.unwind.gopclntab import StackMemory
from goflame.unwind.images import ImageCache
from goflame.unwind.prologue import FRAME_POINTER
from goflame.unwind.stop import Stop

MAX_NATIVE_FRAMES = 256
HEURISTIC = " [heuristic]"


@dataclass(frozen=True, slots=True)
class NativeFrame:
    """A frame of C code in a stack (goflame's frame lists are innermost first)."""

    pc: int
    frame: Frame  # kind NATIVE; `file` is the object; a "[heuristic]" name suffix when no CFI covered it
    entry: int  # process address of the function's symbol (pc when unknown)
    method: str = "cfi"  # how its caller was found: "cfi", or the heuristic's name

    @property
    def heuristic(self) -> bool:
        return self.method != "cfi"


@dataclass(slots=True)
class NativeWalk:
    frames: list[NativeFrame]
    stop: Stop  # Stop.GO: back in Go code, regs say where; else why the C frames end
    regs: dict[int, int]


class NativeUnwinder:
    """Walks C frames with CFI (else prologue analysis, else frame pointers)."""

    def __init__(self, proc: Process, cache: ImageCache | None = None):
        self.cache = cache if cache is not None else ImageCache()
        self.space = AddressSpace(proc, self.cache)

    def frame_for(self, obj: MappedObject | None, pc: int, exact: bool, method: str) -> tuple[Frame, int]:
        if obj is None:  # executable memory outside any file (JIT code): perf's name for it
            return Frame("[unknown]" + (HEURISTIC if method != "cfi" else ""), kind=FrameKind.NATIVE, pc=pc), pc
        key = (pc, exact, method != "cfi")
        hit = obj.frames.get(key)
        if hit is not None:
            return hit
        base = os.path.basename(obj.name) if obj.name != "[vdso]" else "[vdso]"
        sym = obj.image.symbol((pc if exact else pc - 1) - obj.bias) if obj.image is not None else None
        if sym is not None:
            name, entry = sym.name, sym.start + obj.bias
        else:
            name, entry = (f"[{base}]" if not base.startswith("[") else base), pc
        if method != "cfi":
            name += HEURISTIC
        hit = (Frame(name, obj.name, 0, False, FrameKind.NATIVE, pc), entry)
        if len(obj.frames) > 1 << 16:
            obj.frames.clear()
        obj.frames[key] = hit
        return hit

    def unwind(self, regs: dict[int, int], mem: StackMemory, lo: int, hi: int, *, exact: bool,
               is_go: Callable[[int], bool], max_frames: int = MAX_NATIVE_FRAMES) -> NativeWalk:
        """Walk native frames from `regs` until Go code, the thread's root or a bad frame."""
        frames: list[NativeFrame] = []
        regs = dict(regs)
        space = self.space
        try:
            while len(frames) < max_frames:
                pc = regs.get(RA, 0)
                if pc == 0:
                    return NativeWalk(frames, Stop.ZERO_PC if frames else Stop.UNKNOWN_PC, regs)
                if is_go(pc):
                    return NativeWalk(frames, Stop.GO, regs)
                obj = space.object_at(pc)
                if obj is None or obj.image is None:
                    # Code in no readable ELF object (JIT, a deleted library): only rbp is left.
                    row = prologue_row(FRAME_POINTER)
                else:
                    row = obj.image.rule(pc - obj.bias, exact)
                new = self._step(row, regs, mem, lo, hi, is_go)
                method = row.heuristic or "cfi"
                if row.heuristic and row.heuristic != "frame-pointer" and new is None:
                    row = prologue_row(FRAME_POINTER)  # the prologue guess did not hold: try rbp
                    method = "frame-pointer"
                    new = self._step(row, regs, mem, lo, hi, is_go)
                fr, entry = self.frame_for(obj, pc, exact, method)
                frames.append(NativeFrame(pc, fr, entry, method))
                if new is None:
                    return NativeWalk(frames, Stop.BAD_FRAME, regs)
                if new == {}:
                    return NativeWalk(frames, Stop.TOP, regs)
                exact = row.signal
                regs = new
            return NativeWalk(frames, Stop.TOO_DEEP, regs)
        except InvalidMemory:
            return NativeWalk(frames, Stop.MEMORY, regs)

    def _step(self, row: Row, regs: dict[int, int], mem: StackMemory, lo: int, hi: int,
              is_go: Callable[[int], bool]) -> dict[int, int] | None:
        """Apply a rule; {} at the outermost frame, None when the result is not a plausible frame."""
        sp = regs.get(RSP, 0)
        try:
            new = step(row, regs, mem)
        except (CfiError, KeyError, IndexError, struct.error):
            return None
        except InvalidMemory:
            if row.heuristic:
                return None
            raise
        if new is None:
            return {}
        nsp, npc = new[RSP], new[RA]
        if not (sp < nsp <= hi and nsp >= lo) and not row.signal:
            return None
        if npc == 0:
            return {}
        if row.heuristic and not is_go(npc) and self.space.object_at(npc) is None:
            return None
        return new
