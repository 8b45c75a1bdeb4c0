"""Back from a vDSO call to the goroutine that made it (linux/amd64).

Go reads the clock through the vDSO in assembly (runtime/time_linux_amd64.s `time·now`,
runtime/sys_linux_amd64.s `nanotime1`, `vgetrandom1`): each copies SP into R12 ("unchanged by C
code"), moves SP to g0's stack when on a goroutine, aligns it, and calls C. Their pcsp tables
cannot describe that (the functions are SPWRITE), so a walk from inside one, or from the vDSO
below it, ends right there: programs that call time.Now often had 5-50 % of their samples
cut off at `time.now` or a lone `[native code]`.

Go's own profiler walks on from m.vdsoPC/m.vdsoSP, which those functions set for it. goflame
uses R12 instead: every sample has the registers (ptrace and perf alike), while the M's fields
would have to be read in the stop, and a kernel sample has no memory but the stack. The return
address sits at R12 + the frame size the function had when it copied SP, and it is trusted only
if the instruction before it is a CALL of that very function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from goflame.binary.gobinary import GoBinary
from goflame.binary.pclntab import Func
from goflame.errors import GoflameError, InvalidMemory
from goflame.unwind.gopclntab import PTR, GoUnwinder, PhysicalFrame, StackMemory, StackSwitch, Walk
from goflame.unwind.special import VDSO_CALLERS
from goflame.unwind.stop import Stop


@dataclass(frozen=True, slots=True)
class VdsoCaller:
    func: Func
    entry: int  # process address
    end: int
    saved_at: int  # process pc just after `MOVQ SP, R12`: from here on R12 holds the frame's SP
    frame: int  # spdelta there: the return address is at R12 + frame


@dataclass(frozen=True, slots=True)
class StackSpan:
    """A stack the saved SP may be on, and where a walk on it jumps when it reaches
    systemstack/morestack (None: it does not; see GoUnwinder.unwind)."""

    lo: int
    hi: int
    on_system_stack: Callable[[str], StackSwitch | None] | None = None


class VdsoCalls:
    """The binary's vDSO-calling functions, found once by name and by their `MOVQ SP, R12`."""

    def __init__(self, binary: GoBinary, unwinder: GoUnwinder):
        self._binary = binary
        self._go = unwinder
        self._callers = self._find()
        self._ranges = tuple((c.entry, c.end) for c in self._callers)

    def _find(self) -> tuple[VdsoCaller, ...]:
        if self._binary.arch != "amd64":
            return ()
        import capstone  # only for these few functions, once

        cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        tab, bias = self._binary.pclntab, self._go.bias
        out = []
        for name in VDSO_CALLERS:
            f = tab.func_by_name(name)
            if f is None or not f.pcsp:
                continue
            try:
                code = bytes(self._binary.elf.read(f.entry, min(f.end - f.entry, 512)))
            except (GoflameError, ValueError):
                continue
            for ins in cs.disasm(code, f.entry):
                if ins.mnemonic == "mov" and ins.op_str == "r12, rsp":
                    at = ins.address + ins.size
                    frame = tab.spdelta(f, at)
                    if frame is not None and frame >= 0:
                        out.append(VdsoCaller(f, f.entry + bias, f.end + bias, at + bias, frame))
                    break
        return tuple(out)

    def caller_at(self, pc: int) -> VdsoCaller | None:
        """The vDSO-calling function containing pc, if it is one."""
        for i, (lo, hi) in enumerate(self._ranges):
            if lo <= pc < hi:
                return self._callers[i]
        return None

    def saved_sp(self, pc: int, in_go: bool, sp: int, r12: int) -> int:
        """Where the goroutine's stack is for a thread at (pc, sp): R12 in the vDSO (`in_go`
        False) or in a vDSO caller past its `MOVQ SP, R12`, else sp."""
        if not in_go:
            return r12 or sp
        c = self.caller_at(pc)
        return r12 if c is not None and pc >= c.saved_at and r12 else sp

    def walk(self, pc: int | None, sp: int, r12: int, mem: StackMemory, spans: Sequence[StackSpan],
             exact: bool = True) -> Walk | None:
        """The walk of a thread stopped inside a vDSO caller (pc; `exact`: the instruction
        itself, not a return address) or in the vDSO under one (pc None: which caller is found
        from its return address), or None if the registers do not lead back to a call of it."""
        if pc is None:
            for c in self._callers:
                w = self._walk_from(c, c.saved_at, True, r12, c.frame, mem, spans)
                if w is not None:
                    return w
            return None
        c = self.caller_at(pc)
        if c is None:
            return None
        if pc < c.saved_at:  # SP is still the goroutine's, and pcsp right
            frame = self._go.func_at(pc)[1]
            return None if frame is None or frame < 0 else self._walk_from(c, pc, exact, sp, frame, mem, spans)
        return self._walk_from(c, pc, exact, r12, c.frame, mem, spans)

    def along_chain(self, pc: int, in_go: bool, chain: Sequence[int]) -> Walk | None:
        """The walk of a thread in the vDSO or in a vDSO caller past `MOVQ SP, R12`, from the
        kernel's callchain (perf), None unless the chain leads through a vDSO caller to goexit
        or mstart.

        The chain was taken along frame pointers at the sample, and each vDSO caller keeps BP
        at its frame on the goroutine's stack while SP is on g0 (the vDSO's own code keeps its
        frame too: its return into the caller is the chain's second entry). So the chain names
        the goroutine's callers as they were, where the stack at R12, read 10-50 ms later,
        has often moved on (0.4 % of an HTTP server's samples were cut for that)."""
        if len(chain) < 2 or chain[0] != pc:
            return None
        if in_go:
            c = self.caller_at(pc)
            if c is None or pc < c.saved_at:
                return None
            frames = [PhysicalFrame(pc, 0, 0, c.func, True)]
        else:
            c = self.caller_at(chain[1])
            if c is None:
                return None
            frames = []
        walk = self._go.along_return_addresses(frames, chain[1:])
        # Short of goexit or mstart, the chain ended where Go's rules decide (mcall and
        # morestack clear BP; their end is whole or cut by whether m.curg was set), which
        # the walk from R12 applies.
        return walk if walk.stop == Stop.TOP else None

    def out_of_call(self, walk: Walk, pc: int, sp: int, r12: int, mem: StackMemory, spans: Sequence[StackSpan],
                    exact: bool = True) -> Walk:
        """`walk`, the walk of a thread at pc, unless it stopped at once in the vDSO caller it
        started in (SPWRITE: past `MOVQ SP, R12` its pcsp says nothing). Then R12 leads on to
        the caller's caller; where it does not, the walk is cut there (`Stop.VDSO_CALL`),
        never shown as whole: the callers exist (Go's own profiler goes on from m.vdsoSP)."""
        if walk.stop != Stop.SPWRITE or len(walk.frames) != 1 or self.caller_at(pc) is None:
            return walk
        out = self.walk(pc, sp, r12, mem, spans, exact)
        return out if out is not None else Walk(walk.frames, Stop.VDSO_CALL)

    def _walk_from(self, c: VdsoCaller, pc: int, exact: bool, base: int, frame: int, mem: StackMemory,
                   spans: Sequence[StackSpan]) -> Walk | None:
        slot = base + frame
        for span in spans:
            if span.lo <= base and slot + PTR <= span.hi:
                break
        else:
            return None
        try:
            ra = mem.u64(slot)
        except InvalidMemory:
            return None
        if self._go.call_target(ra) != c.entry:
            return None
        rest = self._go.unwind(ra, slot + PTR, 0, mem, span.lo, span.hi, on_system_stack=span.on_system_stack)
        return Walk([PhysicalFrame(pc, base, slot + PTR, c.func, exact), *rest.frames], rest.stop)
