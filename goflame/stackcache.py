"""A walk's logical frames, as samples show them: symbolized once per distinct walk.

A CPU profile samples the same few stacks over and over, so the sampler keys each walk by its
frames' sym_pcs and its stop reason, and symbolizes (inlining expanded, wrappers elided the
way Go's own profiles elide them) only the first time a key is seen. The one frames tuple per
distinct stack also lets the recording writer find it by identity. Both engines and every
mode (`--native` included) turn walks into frames here, so a stack reads the same whichever
path took it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from goflame.frame import Frame, FrameKind
from goflame.unwind.gopclntab import PhysicalFrame
from goflame.unwind.stop import Stop

if TYPE_CHECKING:
    from goflame.symbolize import Symbolizer
    from goflame.unwind.gopclntab import Walk
    from goflame.unwind.stitch import MixedWalk

MAX_STACKS = 1 << 16  # distinct stacks kept; the cache starts over past it (a memory bound)

StackKey = tuple[int | Stop, ...]  # the walk's sym_pcs, innermost first, then its Stop


class StackCache:
    """Logical frames by walk key (`StackKey`)."""

    def __init__(self, sym: Symbolizer) -> None:
        self._sym = sym
        self._stacks: dict[StackKey, tuple[Frame, ...]] = {}
        # sym_pc -> (its frames, last funcID) when none is a wrapper, else (): see _symbolize
        self._plain: dict[int, tuple[tuple[Frame, ...], int] | tuple[()]] = {}

    def of_walk(self, walk: Walk) -> tuple[Frame, ...]:
        """The logical frames of a Go walk."""
        return self.frames((*[pf.sym_pc for pf in walk.frames], walk.stop))

    def frames(self, key: StackKey) -> tuple[Frame, ...]:
        """The logical frames of a walk given as its key."""
        hit = self._stacks.get(key)
        if hit is None:
            if len(self._stacks) >= MAX_STACKS:
                self._stacks.clear()
            hit = self._stacks[key] = self._symbolize(key)
        return hit

    def _symbolize(self, key: StackKey) -> tuple[Frame, ...]:
        sym = self._sym
        plain = self._plain
        out: list[Frame] = []
        callee = 0
        for pc in key[:-1]:
            hit = plain.get(pc)  # type: ignore[arg-type]
            if hit is None:
                pairs = sym.expand(pc)  # type: ignore[arg-type]
                # No wrapper among them: elision keeps them all, whatever the callee.
                hit = plain[pc] = ((tuple(f for f, _ in pairs), pairs[-1][1])  # type: ignore[index]
                                   if not any(sym.is_wrapper(fid) for _, fid in pairs) else ())
            if hit:
                out += hit[0]
                callee = hit[1]
            else:
                kept, callee = sym.elide(sym.expand(pc), callee)  # type: ignore[arg-type]
                out += kept
        return _marked(out, key[-1])  # type: ignore[arg-type]

    def of_mixed(self, walk: MixedWalk) -> tuple[Frame, ...]:
        """The logical frames of a walk through Go and C (`--native`), not cached: its C
        frames are keyed by no sym_pc. Wrappers are elided within each run of Go frames."""
        sym = self._sym
        out: list[Frame] = []
        callee = 0
        for pf in walk.frames:
            if not isinstance(pf, PhysicalFrame):  # a NativeFrame
                out.append(pf.frame)
                callee = 0
                continue
            kept, callee = sym.elide(sym.expand(pf.sym_pc), callee)
            out.extend(kept)
        return _marked(out, walk.stop)


def _marked(frames: list[Frame], stop: Stop) -> tuple[Frame, ...]:
    """The frames, with the `[truncated: REASON]` frame of a cut walk at the root."""
    marker = stop.marker
    if marker is not None:
        frames.append(Frame(marker, kind=FrameKind.UNKNOWN))
    return tuple(frames)
