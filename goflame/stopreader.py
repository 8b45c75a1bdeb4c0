"""What goflame reads inside each ptrace stop of a thread: a `StopCapture`.

A thread runs on the moment goflame lets it go, and the memory a walk needs beyond its stack
top changes with it: the g it ran, what leads out of C code or a vDSO call (the M's words),
the goroutine's stack where systemstack left it or where it left Go, the stack a signal
interrupted. So each is read inside the stop, in as few process_vm_readv calls as the
thread's state allows (one on the common path, two where another stack is needed), and the
walk (unwind/livewalk.py) prefers these windows to live memory.

One reader for every stop: dump's, the ptrace engine's (record, top) and --native's. They
differ only in what they always want (`StopReader`'s arguments), never in how a window is
found or read.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from goflame.unwind.capture import (
    MachineState,
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
    from goflame.process import Registers
    from goflame.process.memory import ProcessMemory
    from goflame.runtime import Machine

STOPPED_WINDOW = 16 * 1024  # bytes of the stack top read while a thread is stopped: keep the stop short
GOROUTINE_WINDOW = 16 * 1024  # bytes of another stack the walk goes on to, read in the same stop
_U64 = struct.Struct("<Q")


class SystemStacks(Protocol):
    """The system stacks (g0, gsignal) of the target's Ms, as last read."""

    @property
    def g0_bounds(self) -> Mapping[int, tuple[int, int]]: ...  # g0/gsignal address -> (stack.lo, stack.hi)

    @property
    def g0_sched_sp(self) -> Mapping[int, int]: ...  # g0 address -> g0.sched.sp: where systemstack switches to


class StopReader:
    """Fills a `StopCapture` inside a ptrace stop.

    `g_tls`: the g's TLS slot offset (amd64), read with the stack top (None: not read).
    `curg`: read m.curg with the stack top instead (dump: it tells a goroutine that moved).
    `machine`: read the M's words (m.curg, m.vdsoSP/PC, g0.sched.sp, curg.syscallsp/pc) in
    every stop, which --native needs to stitch C frames. Otherwise they are read only where
    the walk needs them: outside Go's text and in Go's signal handler.
    `mapping`: --native's cached map of the address space, which bounds each window by its
    mapping and adds the C frames of a callback into Go (g0 above g0.sched.sp)."""

    def __init__(self, mem: ProcessMemory, offsets: StopOffsets | None, in_text: Callable[[int], bool], *,
                 g_tls: int | None = None, curg: bool = False, machine: bool = False,
                 mapping: Callable[[int], tuple[int, int] | None] | None = None) -> None:
        self._mem = mem
        self._offsets = offsets
        self._in_text = in_text
        self._tls = g_tls
        self._curg = curg
        self._always = machine
        self._mapping = mapping

    def read(self, m: Machine | None, regs: Registers, stacks: SystemStacks, sched: SchedCounts | None = None
             ) -> StopCapture:
        """Everything the walk of the thread `m` stopped at `regs` will need of memory that
        changes once it runs on. `sched`: the sampling rule's counts, taken in the stop."""
        sp = regs.rsp
        gsignal = stacks.g0_bounds.get(m.gsignal) if m is not None else None
        in_handler = gsignal is not None and gsignal[0] <= sp < gsignal[1]
        offs = self._offsets
        if (offs is not None and m is not None and m.g0
                and (self._always or in_handler or not self._in_text(regs.rip))):
            return self._with_machine(m, regs, stacks, gsignal, offs, sched)
        stack, g, curg = self._stack_and_word(regs, m, offs)
        if in_handler:
            windows = interrupted_window(self._mem.read_prefix, stack, sp, gsignal)
        elif m is not None and m.g0 and (g == m.g0 if g else _holds(stacks.g0_bounds.get(m.g0), sp)):
            windows = self._windows(self._switch_request(stacks.g0_sched_sp.get(m.g0, 0), sp, stack))
        else:
            windows = ()
        return StopCapture(Source.PTRACE, regs, stack, g, curg=curg, windows=windows, sched=sched)

    def _stack_and_word(self, regs: Registers, m: Machine | None, offs: StopOffsets | None
                        ) -> tuple[bytes, int, int]:
        """The common stop, in one read: the stack top and one word, the TLS g (the sampler)
        or m.curg (`curg`: dump, which must tell a goroutine that moved). (stack, g, curg),
        0 and -1 for what was not read."""
        sp, mem = regs.rsp, self._mem
        size = STOPPED_WINDOW if self._mapping is None else self._top_size(sp)
        if self._tls is not None:
            addr = regs.fs_base + self._tls
        elif self._curg and m is not None and offs is not None:
            addr = m.addr + offs.m_curg
        else:
            return mem.read_prefix(sp, size), 0, -1
        stack, word = mem.read_pair(sp, size, addr, 8)
        if stack is None:  # the window crosses the end of the mapping (a thread's OS stack)
            stack = mem.read_prefix(sp, size)
        if word is None or len(word) != 8:
            return stack, 0, -1
        w = _U64.unpack(word)[0]
        return (stack, w, -1) if self._tls is not None else (stack, 0, w)

    def _with_machine(self, m: Machine, regs: Registers, stacks: SystemStacks, gsignal: tuple[int, int] | None,
                      offs: StopOffsets, sched: SchedCounts | None) -> StopCapture:
        """The stop with the M's words: in one read with the stack top (two if m.curg is not
        the goroutine the M was last known to run), then the stacks those words lead to.
        Read after the release they are another moment's: the C call returns and exitsyscall
        clears them (a cgo profile had 3 % of its samples cut in C for this)."""
        sp = regs.rsp
        reqs = [(sp, self._top_size(sp))]
        if self._tls is not None:
            reqs.append((regs.fs_base + self._tls, 8))
        bufs, st = read_with_machine(self._mem.read_many, reqs, m.addr, m.g0, m.curg, offs)
        stack = bufs[0] if bufs[0] is not None else self._top(sp)
        word = bufs[1] if len(bufs) > 1 else None
        g = _U64.unpack(word)[0] if word is not None and len(word) == 8 else 0
        if gsignal is not None and gsignal[0] <= sp < gsignal[1]:
            windows = interrupted_window(self._mem.read_prefix, stack, sp, gsignal)
        else:
            on_g0 = g == m.g0 if g else _holds(stacks.g0_bounds.get(m.g0), sp)
            g0_top = st.g0_sched_sp or stacks.g0_sched_sp.get(m.g0, 0)
            switch = self._switch_request(g0_top, sp, stack) if on_g0 else ()
            windows = self._windows((*switch, *self._machine_requests(st, sp)))
        return StopCapture(Source.PTRACE, regs, stack, g, curg=st.curg, g0_sched_sp=st.g0_sched_sp, vdso=st.vdso,
                           syscall=st.syscall, windows=windows, sched=sched)

    def _top_size(self, sp: int) -> int:
        bounds = self._mapping(sp) if self._mapping is not None else None
        return min(STOPPED_WINDOW, bounds[1] - sp) if bounds is not None else STOPPED_WINDOW

    def _top(self, sp: int) -> bytes:
        return self._mem.read_prefix(sp, self._top_size(sp))

    @staticmethod
    def _switch_request(g0_sched_sp: int, sp: int, stack: bytes) -> tuple[tuple[int, Role], ...]:
        """On g0: the goroutine's stack where systemstack left it.

        After the release the thread returns to its goroutine within microseconds and that
        stack changes; the walk needs the frame that called systemstack (see
        GoUnwinder._systemstack_caller). systemstack switches to g0.sched.sp, so the first
        frame on g0 saved the goroutine's frame pointer just below it: the goroutine's stack
        around that address is read now, in the stop."""
        off = g0_sched_sp - 2 * 8 - sp
        if not 0 <= off <= len(stack) - 8:
            return ()
        base = (_U64.unpack_from(stack, off)[0] - GOROUTINE_WINDOW // 2) & ~0xFFF
        return ((base, Role.SWITCH),) if base > 0 else ()

    def _machine_requests(self, st: MachineState, sp: int) -> tuple[tuple[int, Role], ...]:
        """The stacks the M's words lead to, off the stack top: the goroutine's at m.vdsoSP
        and g.syscallsp (it runs on there when the vDSO or C call returns) and, with
        --native, g0 above g0.sched.sp (the C frames of a callback into Go, which C
        overwrites as soon as the callback returns)."""
        top = sp + STOPPED_WINDOW
        out = []
        wanted = ((st.vdso[0] if st.vdso else 0, Role.VDSO), (st.syscall[1] if st.syscall else 0, Role.SYSCALL))
        if self._mapping is not None:
            wanted = ((st.g0_sched_sp or 0, Role.G0_CALLBACK), *wanted)
        for addr, role in wanted:
            if addr and not sp <= addr < top:
                out.append((addr & ~0xFFF, role))
        return tuple(out)

    def _windows(self, wanted: tuple[tuple[int, Role], ...]) -> tuple[Window, ...]:
        """The pages at each (base, role), GOROUTINE_WINDOW bytes or up to their mapping's
        end, in one read; a window that crosses an unmapped page is read up to it."""
        if not wanted:
            return ()
        sizes = []
        for base, _role in wanted:
            bounds = self._mapping(base) if self._mapping is not None else None
            sizes.append(min(GOROUTINE_WINDOW, bounds[1] - base) if bounds is not None else GOROUTINE_WINDOW)
        got = self._mem.read_many([(base, n) for (base, _r), n in zip(wanted, sizes, strict=True)])
        out = []
        for (base, role), n, data in zip(wanted, sizes, got, strict=True):
            if data is None:
                data = self._mem.read_prefix(base, n)
            if data:
                out.append(Window(base, data, role))
        return tuple(out)


def _holds(bounds: tuple[int, int] | None, sp: int) -> bool:
    return bounds is not None and bounds[0] <= sp < bounds[1]
