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

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from goflame.errors import InvalidMemory
from goflame.unwind.gopclntab import PTR, StackMemory, Walk
from goflame.unwind.stop import Stop

if TYPE_CHECKING:
    from goflame.process import Registers

UC_MCONTEXT = 40  # uc_flags 8, uc_link 8, uc_stack 24
# The sigcontext's general registers, in order (Registers' field names).
GREGS = ("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rdi", "rsi", "rbp", "rbx", "rdx", "rax", "rcx",
         "rsp", "rip")
# Entered by the kernel with the restorer's address on top: the ucontext is at the frame's fp.
ENTRIES = frozenset({"runtime.sigtramp", "runtime.cgoSigtramp"})
# The restorer (rt_sigreturn), entered by the handler's RET: the ucontext is at its sp.
# runtime.sigreturn before Go 1.20, runtime.sigreturn__sigaction since.
RESTORERS = frozenset({"runtime.sigreturn__sigaction", "runtime.sigreturn"})
NAMES = ENTRIES | RESTORERS
# How a walk into the handler may end: sigtramp is TOPFRAME, and above the restorer lies the
# kernel's signal frame, not a return address.
_ENDS_IN_HANDLER = frozenset({Stop.TOP, Stop.UNKNOWN_PC, Stop.ZERO_PC})


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
    return bool(walk.frames) and walk.frames[-1].func.name in NAMES


def interrupted(walk: Walk, mem: StackMemory) -> SignalContext | None:
    """Where the thread was when the signal came, if `walk` ended in the signal trampoline or
    its restorer; None otherwise, or if the saved context is unreadable or implausible."""
    if not walk.frames or walk.stop not in _ENDS_IN_HANDLER:
        return None
    last = walk.frames[-1]
    name = last.func.name
    if name in ENTRIES:
        uc = last.fp
    elif name in RESTORERS:
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
