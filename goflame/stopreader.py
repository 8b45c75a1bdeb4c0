"""What the ptrace engine reads inside each stop of a sampled thread: a `StopCapture`.

A thread runs on the moment goflame lets it go, and the memory a walk needs beyond its stack
top changes with it: the g it ran, what leads out of C code or a vDSO call (the M's words),
the goroutine's stack where systemstack left it, the stack a signal interrupted. So each is
read inside the stop, in as few process_vm_readv calls as the thread's state allows, and
the walk (unwind/livewalk.py) prefers these windows to live memory.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from goflame.errors import InvalidMemory
from goflame.process import Registers
from goflame.resolver import GoroutineResolver
from goflame.runtime import Machine
from goflame.stacks import STOPPED_WINDOW
from goflame.unwind.capture import (
    Role,
    SchedCounts,
    Source,
    StopCapture,
    StopOffsets,
    Window,
    interrupted_window,
    read_with_machine,
)

if TYPE_CHECKING:
    from goflame.process.memory import ProcessMemory
    from goflame.unwind.stitch import NativeStitcher

GOROUTINE_WINDOW = 16 * 1024  # bytes of a goroutine's stack read in the stop of a thread on g0
_U64 = struct.Struct("<Q")


class StopReader:
    """Fills a `StopCapture` inside each ptrace stop of a sampled thread. `g_tls`: the g's
    TLS slot offset (amd64; None: not read); `native`: --native reads what stitching C
    frames needs instead (`NativeStitcher.while_stopped`)."""

    def __init__(self, mem: ProcessMemory, gs: GoroutineResolver, g_tls: int | None, offsets: StopOffsets | None,
                 in_text: Callable[[int], bool], native: NativeStitcher | None = None) -> None:
        self._mem = mem
        self._gs = gs
        self._tls = g_tls
        self._offsets = offsets
        self._in_text = in_text
        self._native = native

    def read(self, tid: int, regs: Registers, sched: SchedCounts | None) -> StopCapture:
        """The stack top, and (amd64) the g the thread runs from its TLS slot, in one read:
        exact, and it spares reading m.curg after the release; more where the thread's state
        needs it."""
        mem = self._mem
        m = self._gs.ms.get(tid)
        if self._native is not None:
            gsignal = self._gs.g0_bounds.get(m.gsignal) if m is not None else None
            return self._native.while_stopped(m, regs, STOPPED_WINDOW, sched, gsignal)
        tls = self._tls
        if tls is None:
            return StopCapture(Source.PTRACE, regs, mem.read_prefix(regs.rsp, STOPPED_WINDOW), sched=sched)
        if m is not None and (not self._in_text(regs.rip) or self._gs.on_gsignal(m, regs.rsp)):
            return self._capture_with_machine(tid, m, regs, tls, sched)
        stack, word = mem.read_pair(regs.rsp, STOPPED_WINDOW, regs.fs_base + tls, 8)
        g = _U64.unpack(word)[0] if word is not None else 0
        if stack is None:  # the window crosses the end of the mapping (a thread's OS stack)
            stack = mem.read_prefix(regs.rsp, STOPPED_WINDOW)
        return StopCapture(Source.PTRACE, regs, stack, g, windows=self._stop_windows(tid, g, regs.rsp, stack),
                           sched=sched)

    def _capture_with_machine(self, tid: int, m: Machine, regs: Registers, tls: int, sched: SchedCounts | None
                              ) -> StopCapture:
        """The stop of a thread outside Go's text (C through cgo, the vDSO) or in Go's signal
        handler: besides the stack top and the g word, the M's words that lead back to the
        goroutine (m.curg and its syscallsp/pc, m.vdsoSP/PC), and the goroutine's stack at
        syscallsp. Read after the release they are another moment's: the C call returns and
        exitsyscall clears them (a cgo profile had 3 % of its samples cut in C for this)."""
        offs = self._offsets
        if offs is None or not m.g0:
            stack, word = self._mem.read_pair(regs.rsp, STOPPED_WINDOW, regs.fs_base + tls, 8)
            return StopCapture(Source.PTRACE, regs, stack or b"", _U64.unpack(word)[0] if word else 0, sched=sched)
        (stack, word), st = read_with_machine(self._mem.read_many, [(regs.rsp, STOPPED_WINDOW), (regs.fs_base + tls, 8)],
                                              m.addr, m.g0, m.curg, offs)
        if stack is None:  # the window crosses the end of the mapping (a thread's OS stack)
            stack = self._mem.read_prefix(regs.rsp, STOPPED_WINDOW)
        g = _U64.unpack(word)[0] if word is not None and len(word) == 8 else 0
        windows = self._stop_windows(tid, g, regs.rsp, stack)
        if st.syscall is not None and st.syscall[1]:
            base = st.syscall[1] & ~0xFFF
            data = self._mem.read_many([(base, GOROUTINE_WINDOW)])[0]
            if data:
                windows += (Window(base, data, Role.SYSCALL),)
        return StopCapture(Source.PTRACE, regs, stack, g, curg=st.curg, g0_sched_sp=st.g0_sched_sp, vdso=st.vdso,
                           syscall=st.syscall, windows=windows, sched=sched)

    def _stop_windows(self, tid: int, g: int, sp: int, stack: bytes) -> tuple[Window, ...]:
        """What else the stop of a thread at `sp` on the g `g` reads, besides its stack top:
        the stack the walk goes on to, which the thread changes as soon as it runs on."""
        m = self._gs.ms.get(tid)
        if m is None:
            return ()
        gsignal = self._gs.g0_bounds.get(m.gsignal)
        if gsignal is not None and gsignal[0] <= sp < gsignal[1]:
            return interrupted_window(self._mem.read_prefix, stack, sp, gsignal)
        return self._goroutine_window(m, g, sp, stack) if g == m.g0 else ()

    def _goroutine_window(self, m: Machine, g: int, sp: int, stack: bytes) -> tuple[Window, ...]:
        """In the stop of a thread on g0: the goroutine's stack where systemstack left it.

        After the release the thread returns to its goroutine within microseconds and that
        stack changes; the walk needs the frame that called systemstack (see
        GoUnwinder._systemstack_caller). systemstack switches to g0.sched.sp, so the first
        frame on g0 saved the goroutine's frame pointer just below it: the goroutine's stack
        around that address is read now, in the stop."""
        top = self._gs.g0_sched_sp.get(g, 0)
        off = top - 2 * 8 - sp
        if not 0 <= off <= len(stack) - 8:
            return ()
        bp = _U64.unpack_from(stack, off)[0]
        base = (bp - GOROUTINE_WINDOW // 2) & ~0xFFF
        if base <= 0:
            return ()
        try:
            return (Window(base, self._mem.read(base, GOROUTINE_WINDOW), Role.SWITCH),)
        except InvalidMemory:
            return ()
