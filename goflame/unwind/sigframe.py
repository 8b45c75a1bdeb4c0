"""Out of the runtime's signal handler, back to what the signal interrupted.

A thread that takes a signal (SIGURG preemption every 10 ms of a busy goroutine, SIGPROF,
anything sent with kill) runs the Go handler on its gsignal stack. The Go walk of that stack
ends at runtime.sigtramp (TOPFRAME) or in the restorer: Go's own tracebacks continue from the
signal context instead (sigctxt: the registers the kernel saved), and so does this.

The kernel's frame (x86-64 `rt_sigframe`) is the restorer's address, on top of the stack when
the handler is entered, then the `ucontext` right above it. Its mcontext (after uc_flags,
uc_link and the 24-byte uc_stack) holds r8..r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from goflame.errors import InvalidMemory
from goflame.unwind.gopclntab import PTR, StackMemory, Walk
from goflame.unwind.special import SIGNAL_ENTRIES, SIGNAL_FRAMES, SIGNAL_RESTORERS
from goflame.unwind.stop import Stop

if TYPE_CHECKING:
    from goflame.process import Registers

UC_MCONTEXT = 40  # uc_flags 8, uc_link 8, uc_stack 24
# The sigcontext's general registers, in order (Registers' field names).
GREGS = ("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rdi", "rsi", "rbp", "rbx", "rdx", "rax", "rcx",
         "rsp", "rip")
# How a walk into the handler may end: sigtramp is TOPFRAME, and above the restorer lies the
# kernel's signal frame, not a return address.
_ENDS_IN_HANDLER = frozenset({Stop.TOP, Stop.UNKNOWN_PC, Stop.ZERO_PC})


# uc_stack, the alternate signal stack the kernel ran the handler on: ss_sp, then ss_size.
UC_STACK_SP = 16
UC_STACK_SIZE = 32
_RSP_IN_UC = UC_MCONTEXT + PTR * GREGS.index("rsp")
_MAX_CANDIDATES = 4


def interrupted_sp(stack: bytes, sp: int, lo: int, hi: int) -> int | None:
    """The sp the signal interrupted, found in `stack` (read from `sp` on the gsignal stack
    [lo, hi)) with no walk: fast enough to run inside a stop.

    Go runs its handler on gsignal as the alternate signal stack, so the kernel saved that
    stack's bounds in the ucontext's uc_stack (ss_sp = lo, ss_size = hi - lo: minitSignalStack
    sets it from gsignal, or gsignal from the stack C set). The last match is the kernel's
    frame: it lies above every frame of the handler, and Go blocks signals in its handler, so
    frames do not nest. A stale copy of the bounds lower down cannot outrank it."""
    needle = struct.pack("<Q", lo)
    end = len(stack)
    for _ in range(_MAX_CANDIDATES):
        at = stack.rfind(needle, 0, end)
        if at < UC_STACK_SP:
            return None
        end = at
        uc = at - UC_STACK_SP
        if (sp + uc) % PTR or uc + _RSP_IN_UC + PTR > len(stack):
            continue
        if struct.unpack_from("<Q", stack, uc + UC_STACK_SIZE)[0] != hi - lo:
            continue
        rsp = struct.unpack_from("<Q", stack, uc + _RSP_IN_UC)[0]
        if rsp and not rsp % PTR and not lo <= rsp < hi:
            return rsp
    return None


@dataclass(frozen=True, slots=True)
class SignalContext:
    """The interrupted thread's registers, as the kernel saved them."""

    regs: dict[str, int]

    @property
    def pc(self) -> int:
        return self.regs["rip"]

    @property
    def sp(self) -> int:
        return self.regs["rsp"]

    @property
    def r12(self) -> int:
        return self.regs["r12"]

    def registers(self, stopped: Registers) -> Registers:
        """The stopped thread's registers with the interrupted code's in their place."""
        return replace(stopped, **self.regs)


def ends_in_handler(walk: Walk) -> bool:
    return bool(walk.frames) and walk.frames[-1].func.name in SIGNAL_FRAMES


def interrupted(walk: Walk, mem: StackMemory) -> SignalContext | None:
    """Where the thread was when the signal came, if `walk` ended in the signal trampoline or
    its restorer; None otherwise, or if the saved context is unreadable or implausible."""
    if not walk.frames or walk.stop not in _ENDS_IN_HANDLER:
        return None
    last = walk.frames[-1]
    name = last.func.name
    if name in SIGNAL_ENTRIES:
        uc = last.fp
    elif name in SIGNAL_RESTORERS:
        uc = last.fp - PTR
    else:
        return None
    try:
        regs = {r: mem.u64(uc + UC_MCONTEXT + PTR * i) for i, r in enumerate(GREGS)}
    except InvalidMemory:
        return None
    if regs["rip"] == 0 or regs["rsp"] == 0 or regs["rsp"] % PTR:
        return None
    return SignalContext(regs)


def handler_part(walk: Walk) -> Walk:
    """The handler's own frames of a walk that `interrupted` continues: a whole part."""
    return Walk(walk.frames, Stop.TOP)
