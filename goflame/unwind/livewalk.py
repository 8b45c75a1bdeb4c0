"""The one walk of a live thread: from what its stop read to its goroutine's frames.

A stopped (ptrace) or sampled (perf) thread is in one of a few places, and each leads back to
the goroutine by the runtime's own rules (runtime/traceback.go's unwinder, and sigprof in
runtime/proc.go for a thread outside Go):
- Go code on the goroutine's stack: walked from the registers;
- Go code on a system stack (g0: the scheduler, systemstack, morestack, cgo calls; gsignal:
  the signal handler): walked there, and on at systemstack/morestack to the context the
  goroutine saved (`stackmap.switch_to`);
- a vDSO caller (time.now, nanotime1) past `MOVQ SP, R12`: R12 leads on (vdsocall.py);
- outside Go's text (the vDSO, C code, a raw syscall): the kernel's callchain (perf), R12,
  m.vdsoSP, then g.syscallsp (as sigprof tries them); with `--native`, C frames first;
- Go's signal handler: its own frames, then what the signal interrupted, from the ucontext.

dump, both sampling engines of record and top, and `--native` all walk live threads here;
they differ only in what they make of the result (Go's traceback text, a sample's stack).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING

from goflame.errors import InvalidMemory
from goflame.process import Registers
from goflame.runtime import Goroutine, Machine
from goflame.unwind import sigframe
from goflame.unwind.gopclntab import GoUnwinder, PhysicalFrame, StackMemory, StackSwitch, Walk
from goflame.unwind.stackmap import switch_to, system_span
from goflame.unwind.stop import Stop
from goflame.unwind.vdsocall import StackSpan

if TYPE_CHECKING:
    from goflame.unwind.capture import StopCapture, WalkRegs
    from goflame.unwind.stitch import MixedWalk, NativeStitcher

    AnyWalk = Walk | MixedWalk

UNKNOWN_STACK_SPAN = 1 << 30  # the runtime's largest goroutine stack: the bound of a walk on an unknown one
_NO_G = Goroutine(0, 0, 0, False, "", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)  # no goroutine known


class Start(StrEnum):
    """Where a live walk's Go frames start."""

    REGISTERS = "registers"  # the stopped thread's registers
    VDSO = "vdso"  # the SP a vDSO call saved (R12, m.vdsoSP): the thread is in the vDSO
    SYSCALL = "syscall"  # where the goroutine left Go for a syscall or C (g.syscallsp)
    SIGNAL = "signal"  # Go's signal handler, then the code the signal interrupted
    UNKNOWN = "unknown"  # outside Go, and where it left Go is not known


@dataclass(frozen=True, slots=True)
class ThreadFacts:
    """What a walk knows of a thread besides its stop: its M and the goroutine it ran (None:
    none, or not known), the system stacks' bounds by their g's address, and where to look
    for stacks the goroutine does not hold.

    `owner_bounds`: the bounds of the goroutine stack holding an address (a stack that grew
    and moved since the g was read); `stack_owner`: the running goroutine whose stack holds an
    address (the one a signal interrupted); `fresh`: the goroutine read again, for a jump
    off the system stack to the context it saved (dump's g was read before the pause)."""

    m: Machine | None
    g: Goroutine | None
    system: Mapping[int, tuple[int, int]]
    owner_bounds: Callable[[int], tuple[int, int] | None] | None = None
    stack_owner: Callable[[int], Goroutine | None] | None = None
    fresh: Callable[[Goroutine], Goroutine] | None = None


@dataclass(frozen=True, slots=True)
class LiveWalk:
    """A live thread's walk. In Go's signal handler, `handler` holds the handler's own frames
    and `walk` those of the code the signal interrupted (no frame and Stop.SIGNAL: it leads
    nowhere). `outside_go`: `walk` is of a thread stopped outside Go's text, and its frames
    begin where the goroutine left Go (with `--native`, at the C frames), `pc` being where the
    thread was."""

    walk: AnyWalk
    start: Start
    outside_go: bool = False
    handler: AnyWalk | None = None
    pc: int = 0  # where the thread was outside Go's text (outside_go)

    def joined(self) -> AnyWalk:
        """The handler's frames and the interrupted code's as one walk."""
        h = self.handler
        if h is None:
            return self.walk
        w = self.walk
        return type(h)(h.frames + w.frames, w.stop if w.frames else Stop.SIGNAL)  # type: ignore[arg-type]


class LiveWalker:
    """Walks live threads. `walk_unknown`: a thread on a stack that is neither its
    goroutine's nor a system stack is walked as it is (within the stack `owner_bounds` finds,
    else UNKNOWN_STACK_SPAN: every return address is checked and the walk ends at goexit);
    otherwise that walk is None, for the caller to decide (dump reads the goroutine again)."""

    def __init__(self, unwinder: GoUnwinder, in_text: Callable[[int], bool], *, walk_unknown: bool,
                 native: NativeStitcher | None = None) -> None:
        self._go = unwinder
        self._vdso = unwinder.vdso
        self._in_text = in_text
        self._walk_unknown = walk_unknown
        self._native = native

    def walk(self, cap: StopCapture, facts: ThreadFacts, mem: StackMemory) -> LiveWalk | None:
        """The walk of the thread whose stop `cap` is (`mem`: `cap.memory(...)`); None if its
        sp is on no stack known and nothing could be walked."""
        return self._at(cap.regs, cap, facts, mem, cap.chain, False)

    def key(self, cap: StopCapture, facts: ThreadFacts, mem: StackMemory) -> tuple[int | Stop, ...] | None:
        """The sampler's common walk, lean: the sym_pcs and stop of a thread in Go code on its
        goroutine's own stack (`GoUnwinder.live_pcs`), or None when it needs `walk`."""
        r = cap.regs
        g = facts.g
        pc, sp = r.pc, r.sp
        if g is None or not g.contains_sp(sp) or not self._in_text(pc):
            return None
        key = self._go.live_pcs(pc, sp, mem, g.stack_lo, g.stack_hi)
        if key is None or (key[-1] == Stop.SPWRITE and len(key) == 2):  # a vDSO caller's SPWRITE: walk
            return None
        return key

    def _at(self, regs: WalkRegs, cap: StopCapture, facts: ThreadFacts, mem: StackMemory, chain: tuple[int, ...],
            in_signal: bool) -> LiveWalk | None:
        pc, sp = regs.pc, regs.sp
        if not self._in_text(pc):
            if self._native is not None:
                nw = self._native.outside_go(facts.m, facts.g, regs, mem, facts.system, cap)
                return LiveWalk(nw, Start.REGISTERS, True, pc=pc)
            return self._outside_go(pc, sp, regs.r12, cap, facts, mem, chain)
        g = facts.g
        go = self._go
        if g is not None and g.contains_sp(sp):
            walk = go.unwind(pc, sp, 0, mem, g.stack_lo, g.stack_hi, exact=True)
        else:
            span = self._system_span(facts, sp, chain)
            if span is None:
                return self._on_unknown_stack(pc, sp, facts, mem)
            f = go.func_at(pc)[0] if self._vdso.caller_at(pc) is not None else None
            if f is not None:  # a vDSO caller on g0: its pcsp says nothing there
                walk = Walk([PhysicalFrame(pc, sp, sp, f, True)], Stop.SPWRITE)
            else:
                walk = go.unwind(pc, sp, 0, mem, span.lo, span.hi, exact=True, on_system_stack=span.on_system_stack)
        if walk.stop == Stop.SPWRITE and len(walk.frames) == 1:  # the spans only where out_of_call needs them
            walk = ((self._vdso.along_chain(pc, True, chain) if chain else None)
                    or self._vdso.out_of_call(walk, pc, sp, regs.r12, mem, self._spans(facts, regs.r12)))
        if sigframe.ends_in_handler(walk) and not in_signal:
            return self._out_of_handler(walk, regs, cap, facts, mem)
        return LiveWalk(self._spliced(walk, facts, mem, cap), Start.REGISTERS)

    def _outside_go(self, pc: int, sp: int, r12: int, cap: StopCapture, facts: ThreadFacts, mem: StackMemory,
                    chain: tuple[int, ...]) -> LiveWalk:
        """A thread in the vDSO, C code or a raw syscall: where Go left off, by the records
        the runtime keeps (sigprof's order), most exact first."""
        g = facts.g
        go = self._go
        walk = self._vdso.along_chain(pc, False, chain) if chain else None
        if walk is None and r12:
            walk = self._vdso.walk(None, sp, r12, mem, self._spans(facts, r12))
        if walk is not None:
            return LiveWalk(walk, Start.VDSO, True, pc=pc)
        if g is None:
            return LiveWalk(Walk([], Stop.NATIVE), Start.UNKNOWN, True, pc=pc)
        if cap.vdso is not None and cap.vdso[0] and g.contains_sp(cap.vdso[0]):  # m.vdsoSP, read in the stop
            return LiveWalk(go.unwind(cap.vdso[1], cap.vdso[0], 0, mem, g.stack_lo, g.stack_hi), Start.VDSO, True, pc=pc)
        syscall = cap.syscall
        if syscall is None or syscall[0] != g.addr:
            syscall = (g.addr, g.syscall_sp, g.syscall_pc)  # not read in the stop: as read after it
        if syscall[1] and g.contains_sp(syscall[1]):
            walk = go.unwind(syscall[2], syscall[1], 0, mem, g.stack_lo, g.stack_hi, from_syscall=True)
            return LiveWalk(walk, Start.SYSCALL, True, pc=pc)
        return LiveWalk(Walk([], Stop.NATIVE), Start.UNKNOWN, True, pc=pc)  # never shown as complete

    def _on_unknown_stack(self, pc: int, sp: int, facts: ThreadFacts, mem: StackMemory) -> LiveWalk | None:
        """A goroutine's stack that the g at hand does not hold (it grew and moved since, or
        the g register held data): walked as it was copied, if the walker does so."""
        if not self._walk_unknown:
            return None
        owner = facts.owner_bounds(sp) if facts.owner_bounds is not None else None
        lo, hi = owner if owner is not None else (sp, sp + UNKNOWN_STACK_SPAN)
        walk = self._go.unwind(pc, sp, 0, mem, lo, hi, exact=True, on_system_stack=_no_switch)
        return LiveWalk(walk, Start.REGISTERS) if walk.frames else None

    def _out_of_handler(self, walk: Walk, regs: WalkRegs, cap: StopCapture, facts: ThreadFacts, mem: StackMemory
                        ) -> LiveWalk:
        """The handler's frames, then the interrupted code's: its registers are in the signal
        frame (read in the stop: `Role.INTERRUPTED`). If they lead nowhere, the walk is cut
        at the handler (Stop.SIGNAL)."""
        handler = self._spliced(sigframe.handler_part(walk), facts, mem, cap)
        ctx = sigframe.interrupted(walk, mem)
        inner = None
        if ctx is not None:
            g, m = facts.g, facts.m
            if (g is None or not (g.contains_sp(ctx.sp) or system_span(m, ctx.sp, facts.system) is not None)) \
                    and facts.stack_owner is not None:
                facts = replace(facts, g=facts.stack_owner(ctx.sp) or g)  # the goroutine the handler interrupted
            try:
                inner = self._at(_interrupted(ctx, regs), cap, facts, mem, (), True)
            except InvalidMemory:
                inner = None
        if inner is None:
            return LiveWalk(Walk([], Stop.SIGNAL), Start.SIGNAL, handler=handler)
        return LiveWalk(inner.walk, Start.SIGNAL, inner.outside_go, handler, inner.pc)

    def _spliced(self, walk: Walk, facts: ThreadFacts, mem: StackMemory, cap: StopCapture) -> AnyWalk:
        """With `--native`, the C frames of each callback into Go, spliced in."""
        if self._native is None:
            return walk
        return self._native.splice(walk, facts.m, facts.g, mem, cap)

    def _spans(self, facts: ThreadFacts, sp: int) -> list[StackSpan]:
        """The stacks `sp` may be on: the goroutine's, and the system stack holding it."""
        g = facts.g
        spans = [StackSpan(g.stack_lo, g.stack_hi)] if g is not None else []
        system = self._system_span(facts, sp)
        if system is not None:
            spans.append(system)
        return spans

    def _system_span(self, facts: ThreadFacts, sp: int, chain: tuple[int, ...] = ()) -> StackSpan | None:
        """The system stack (g0 or gsignal) holding sp; a walk on it jumps to the goroutine at
        systemstack/morestack."""
        b = system_span(facts.m, sp, facts.system)
        if b is None:
            return None
        g = facts.g
        if g is None and not chain:
            # No goroutine known for the thread: a walk that reaches morestack is cut there
            # (Stop.MORESTACK), not whole, unless the scheduler it went through had dropped
            # the goroutine (GoUnwinder._resolve_special).
            return StackSpan(b[0], b[1], _no_switch)
        fresh = facts.fresh
        if fresh is not None and g is not None:
            owner_bounds = facts.owner_bounds

            def jump(kind: str) -> StackSwitch | None:
                to = switch_to(fresh(g), owner_bounds, chain)
                return to(kind) if to is not None else None

            return StackSpan(b[0], b[1], jump)
        return StackSpan(b[0], b[1], switch_to(g or _NO_G, facts.owner_bounds, chain))


def _no_switch(_kind: str) -> StackSwitch | None:
    """The system stack's jump when the thread's goroutine is not known: nowhere."""
    return None


@dataclass(frozen=True, slots=True)
class _Interrupted:
    """The registers a signal interrupted, as the walk reads them (a perf sample has no
    others to carry over)."""

    pc: int
    sp: int
    r12: int


def _interrupted(ctx: sigframe.SignalContext, stopped: WalkRegs) -> WalkRegs:
    """The registers the signal interrupted: all of them in a ptrace stop, which `--native`'s
    C unwinder needs; pc, sp and R12 in a perf sample."""
    if isinstance(stopped, Registers):
        return ctx.registers(stopped)
    return _Interrupted(ctx.pc, ctx.sp, ctx.r12)  # type: ignore[return-value]
