"""Why a stack walk ended, and whether the stack it gives is whole.

Every walk (Go, native, or the two stitched together) ends for one reason out of a closed
set, and whether that end is the real end of the stack is decided here and nowhere else:
`dump --json`'s "complete", the `[truncated: REASON]` frame of a flame graph and the checks
inside the unwinders all ask `Stop.complete` / `Stop.marker`.

A walk is complete where the Go runtime's own traceback ends (runtime/traceback.go): at a
TOPFRAME function (goexit, mstart, rt0_go), at a zero return address at the stack's top
(finishInternal: frame.sp == g.stktopsp; anywhere else it is an error), or at an SPWRITE
function (mcall, gogo, the switches to g0: their pcsp cannot say where the caller is, and Go
sets frame.lr = 0 there, silently for its profiler and its tracebacks). Every other reason
is a cut: the stack goes on, but goflame could not follow it.

Members are strings (StrEnum): they compare equal to, hash and format as the words used
before, so caches keyed by them, the `[truncated: REASON]` frame names written in recordings
and anything that compares against a literal keep working unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class Stop(StrEnum):
    # Complete: where Go's own traceback ends too.
    TOP = "top"  # a TOPFRAME function (goexit, mstart, rt0_go), or a C thread's root (--native)
    ZERO_PC = "zero-pc"  # a zero return address at the top of the stack (Go: at g.stktopsp)
    SPWRITE = "spwrite"  # an SPWRITE function (mcall, gogo, ...): Go's traceback stops there

    # Cuts: the stack goes on, goflame could not follow it.
    UNKNOWN_PC = "unknown-pc"  # a return address in no known function
    BOUNDS = "bounds"  # a pc/sp outside the stack being walked
    MEMORY = "memory"  # the target's memory could not be read
    TOO_DEEP = "too-deep"  # more frames than a walk takes
    STUCK = "stuck"  # a frame that leads to itself
    STALE = "stale"  # a zero return address inside the stack: it changed under the walk (read after the sample)
    EXTERNAL = "external"  # a Go function without a pcsp table
    NO_FRAME_SIZE = "no-frame-size"  # pcsp has no frame size at the pc
    SYSTEMSTACK = "systemstack"  # systemstack's caller on the goroutine's stack not found
    MORESTACK = "morestack"  # morestack on g0: no goroutine to jump to, or its saved context is gone
    CHAIN_END = "chain-end"  # the kernel's frame-pointer callchain ended before a TOPFRAME
    SIGNAL = "signal"  # the signal context leads nowhere
    VDSO_CALL = "vdso-call"  # no way out of a vDSO call (time.now, nanotime1)
    NATIVE = "native"  # in native code, and where the thread left Go is not known
    NO_GOROUTINE = "no-goroutine"  # a cgo call whose goroutine was not read (--native)
    NO_SYSCALLSP = "no-syscallsp"  # a goroutine in C with no usable g.syscallsp (--native)
    BAD_FRAME = "bad-frame"  # a C frame whose caller is implausible (--native)
    CALLBACK_RETURNED = "callback-returned"  # g0.sched.sp no longer at a callback's frame (--native)
    # Not an end of a whole walk: the native unwinder handing over to Go code.
    GO = "go"

    @property
    def complete(self) -> bool:
        """The walk ended where the stack does (as Go's own traceback would end it)."""
        return self in _COMPLETE

    @property
    def marker(self) -> str | None:
        """The name of the frame that marks a cut stack's outermost end; None if complete."""
        return None if self in _COMPLETE else f"[truncated: {self.value}]"


_COMPLETE = frozenset({Stop.TOP, Stop.ZERO_PC, Stop.SPWRITE})
