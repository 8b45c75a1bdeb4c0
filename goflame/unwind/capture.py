"""What one stop of a thread yields: its registers and the memory read at that moment.

A stack walk runs after the thread has run on, so whatever it needs of memory that the
thread will change within microseconds must be read at the sample: the stack top, and, by
the thread's state, the stacks the walk goes on to (the goroutine's stack below a
systemstack switch, below a vDSO or C call). `StopCapture` is that record, one type for both
ways goflame samples:
- a ptrace stop, filled by the stop's callback (`Source.PTRACE`);
- a kernel sample of the perf engine, which copies the registers, the stack top and a
  frame-pointer callchain and can read nothing else (`Source.PERF`, `from_kernel`).

Walks read a capture's windows first and the live process only for the rest
(`StopCapture.memory`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, NamedTuple, Protocol

from goflame.unwind import sigframe
from goflame.unwind.gopclntab import StackMemory

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from goflame.process.perf import KernelSample
    from goflame.runtime import RuntimeReader


INTERRUPTED_WINDOW = 16 * 1024  # like the stack top: the interrupted code's innermost frames


class Source(IntEnum):
    """How the thread was sampled."""

    PTRACE = 1  # stopped with PTRACE_INTERRUPT; memory read inside the stop
    PERF = 2  # the kernel's copy at a perf_event sample; no other memory


class Role(IntEnum):
    """What a window read in the stop holds, besides the stack top."""

    SWITCH = 1  # the goroutine's stack where systemstack left it (its saved BP)
    VDSO = 2  # the goroutine's stack at m.vdsoSP
    SYSCALL = 3  # the goroutine's stack at g.syscallsp (a cgo call)
    G0_CALLBACK = 4  # g0 above g0.sched.sp: the C frames of a callback into Go
    INTERRUPTED = 5  # the stack of the code a signal interrupted, at the sp its ucontext saved


class WalkRegs(Protocol):
    """The registers a walk reads. ptrace's `Registers` and perf's `KernelSample` both are."""

    @property
    def pc(self) -> int: ...

    @property
    def sp(self) -> int: ...

    @property
    def fp(self) -> int: ...

    @property
    def r12(self) -> int: ...

    @property
    def r14(self) -> int: ...


class SchedCounts(NamedTuple):
    """A thread's scheduler counts (/proc/TID/schedstat and status), taken in a syscall stop:
    whether it stayed on its CPU from the tick to the stop (`CreditScheduler._on_its_cpu`)."""

    timeslices: int
    voluntary: int
    involuntary: int


class StopOffsets(NamedTuple):
    """Where the words a stop reads of the M and of a g are (the release's layout)."""

    m_curg: int
    m_vdso_sp: int
    m_vdso_pc: int
    g_sched_sp: int
    g_syscall_sp: int
    g_syscall_pc: int


class MachineState(NamedTuple):
    """The M's words as they were in the stop (see read_with_machine)."""

    curg: int  # m.curg; -1: unread
    g0_sched_sp: int | None
    vdso: tuple[int, int] | None  # m.vdsoSP, m.vdsoPC
    syscall: tuple[int, int, int] | None  # (curg, curg.syscallsp, curg.syscallpc)


@dataclass(frozen=True, slots=True)
class Window:
    """Page-aligned bytes of a stack other than the one the thread stopped on."""

    addr: int
    data: bytes
    role: Role


@dataclass(frozen=True, slots=True)
class StopCapture:
    """Everything a walk of one sampled thread needs that was read at the sample.

    Fields a stop did not read keep their defaults, and the walk reads live memory for them:
    perf reads nothing but the stack top; ptrace reads what the thread's state asks for.
    Slots: one is made per sample, on the perf engine's hot path."""

    source: Source
    regs: WalkRegs
    stack: bytes  # the stack from regs.sp up (b"": unreadable)
    g_word: int = 0  # the g the thread runs: its TLS slot (ptrace), R14 (perf); 0: unknown
    curg: int = -1  # m.curg as it was in the stop; -1: not read
    g0_sched_sp: int | None = None  # m.g0.sched.sp in the stop
    vdso: tuple[int, int] | None = None  # m.vdsoSP, m.vdsoPC in the stop
    syscall: tuple[int, int, int] | None = None  # (g, g.syscallsp, g.syscallpc) of m.curg in the stop
    windows: tuple[Window, ...] = ()
    chain: tuple[int, ...] = ()  # perf: the kernel's frame-pointer callchain, the pc first
    sched: SchedCounts | None = None  # ptrace engine, syscall stops only

    @classmethod
    def from_kernel(cls, k: KernelSample) -> StopCapture:
        return cls(Source.PERF, k, k.stack, k.r14, chain=k.callchain)

    def memory(self, read: Callable[[int, int], bytes]) -> StackMemory:
        """Word reads for a walk: the stack top and the windows, then the live process."""
        mem = StackMemory(read, self.regs.sp, self.stack)
        if self.windows:
            mem.preload((w.addr, w.data) for w in self.windows)
        return mem

    def window(self, role: Role) -> Window | None:
        return next((w for w in self.windows if w.role == role), None)


def interrupted_window(read_prefix: Callable[[int, int], bytes], stack: bytes, sp: int,
                       gsignal: tuple[int, int] | None) -> tuple[Window, ...]:
    """Inside the stop of a thread in Go's signal handler (sp on gsignal, `stack` read from
    sp): the stack of the code the signal interrupted, at the sp its ucontext saved.

    That code runs on within microseconds of the release, and a walk that read its frames
    then found them gone: a cut in ~20 % of handler samples. () when sp is not on gsignal, or
    the ucontext is not in `stack` (the walk then reads live memory, as it would anyway)."""
    if gsignal is None or not gsignal[0] <= sp < gsignal[1]:
        return ()
    rsp = sigframe.interrupted_sp(stack, sp, gsignal[0], gsignal[1])
    if rsp is None:
        return ()
    base = rsp & ~0xFFF
    data = read_prefix(base, INTERRUPTED_WINDOW)  # short where an OS thread's stack ends
    return (Window(base, data, Role.INTERRUPTED),) if data else ()


def _words(bufs: Sequence[bytes | None]) -> list[int | None]:
    return [int.from_bytes(b, "little") if b else None for b in bufs]


def read_with_machine(read_many: Callable[[Sequence[tuple[int, int]]], list[bytes | None]],
                      reqs: Sequence[tuple[int, int]], m_addr: int, g0: int, guess: int, offs: StopOffsets
                      ) -> tuple[list[bytes | None], MachineState]:
    """`reqs`, and in the same process_vm_readv the M's words a walk out of non-Go code needs:
    m.curg, m.vdsoSP/PC, g0.sched.sp, and g.syscallsp/pc of `guess`, the goroutine the M was
    last known to run. If m.curg is another goroutine, its syscallsp/pc are read next, still
    in the stop: once the thread runs on, C returns to Go and exitsyscall clears them."""
    n = len(reqs)
    batch = [*reqs, (m_addr + offs.m_curg, 8), (m_addr + offs.m_vdso_sp, 8), (m_addr + offs.m_vdso_pc, 8),
             (g0 + offs.g_sched_sp, 8)]
    if guess:
        batch += [(guess + offs.g_syscall_sp, 8), (guess + offs.g_syscall_pc, 8)]
    bufs = read_many(batch)
    w = _words(bufs[n:])
    if not guess:
        w += [None, None]
    curg = w[0]
    if curg and curg != guess:
        guess = curg
        w[4:6] = _words(read_many([(curg + offs.g_syscall_sp, 8), (curg + offs.g_syscall_pc, 8)]))
    vdso = (w[1], w[2]) if w[1] is not None and w[2] is not None else None
    syscall = (guess, w[4], w[5]) if w[4] is not None and w[5] is not None else None
    return bufs[:n], MachineState(-1 if curg is None else curg, w[3], vdso, syscall)


def stop_offsets(reader: RuntimeReader) -> StopOffsets | None:
    """The offsets of the words a stop reads, from the release's layout; None if one is unknown."""
    fm, fg = reader.m.spec, reader.g.spec
    try:
        return StopOffsets(fm["curg"][0], fm["vdsosp"][0], fm["vdsopc"][0], fg["sp"][0], fg["syscallsp"][0],
                           fg["syscallpc"][0])
    except KeyError:
        return None
