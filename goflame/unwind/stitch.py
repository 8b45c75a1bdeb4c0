"""One stack per goroutine across Go and C: the runtime's stack switches, undone (--native).

The stitcher follows the runtime's own switches between Go and C: a cgo call (asmcgocall on
g0; the goroutine's Go stack continues at g.syscall{pc,sp}), a vDSO call (m.vdso{PC,SP}) and C
calling back into Go (cgocallback, whose g0 frame holds the C caller: m.g0.sched.sp, chained
through the saved copy at 0(SP)). C frames come from the C unwinder (unwind/native.py), Go
frames from the binary's pclntab (unwind/gopclntab.py).

Made only with --native: nothing here is imported, opened or parsed otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from goflame.errors import InvalidMemory
from goflame.frame import Frame, FrameKind
from goflame.process import Process, Registers
from goflame.stopreader import StopReader
from goflame.unwind.capture import StopCapture, stop_offsets
from goflame.unwind.cfi import RA, RBP, RBX, RSP
from goflame.unwind.gopclntab import PhysicalFrame, StackMemory, Walk
from goflame.unwind.images import ImageCache
from goflame.unwind.native import NativeFrame, NativeUnwinder
from goflame.unwind.special import ASMCGOCALL, CGOCALLBACK, CROSSCALL2
from goflame.unwind.stackmap import switch_to, system_span
from goflame.unwind.stop import Stop
from goflame.unwind.vdsocall import StackSpan

if TYPE_CHECKING:
    from goflame.runtime import Goroutine, Machine, RuntimeReader
    from goflame.unwind.gopclntab import GoUnwinder

# ... a stopped thread's own stack pointer is surely mapped, so a miss means the maps are stale
# (a thread made since, with a new stack) and the walk would fail without them.
STACK_MAPS_REFRESH_S = 0.02


MixedFrame = PhysicalFrame | NativeFrame
# The stops of a Go walk on g0 (after C returned into Go) that leave the rest of the stack on
# the goroutine's: asmcgocall or a vDSO caller switched stacks, and the goroutine's own records
# (g.syscallsp, m.vdsoSP) say where it continues.
_LEFT_GO_ON_G0 = frozenset({Stop.SPWRITE, Stop.UNKNOWN_PC, Stop.BOUNDS, Stop.NO_FRAME_SIZE, Stop.VDSO_CALL})


@dataclass(slots=True)
class MixedWalk:
    frames: list[MixedFrame]
    stop: Stop

    @property
    def complete(self) -> bool:
        return self.stop.complete


def regs_of(r: Registers) -> dict[int, int]:
    return {RA: r.rip, RSP: r.rsp, RBP: r.rbp, RBX: r.rbx, 12: r.r12, 13: r.r13, 14: r.r14, 15: r.r15,
            0: r.rax, 1: r.rdx, 2: r.rcx, 4: r.rsi, 5: r.rdi, 8: r.r8, 9: r.r9, 10: r.r10, 11: r.r11}


class NativeStitcher:
    """One stack per goroutine across Go and C: the runtime's stack switches, undone.

    Made only with --native: nothing here is imported, opened or parsed otherwise.
    """

    def __init__(self, proc: Process, reader: RuntimeReader, unwinder: GoUnwinder, cache: ImageCache | None = None):
        self.proc = proc
        self.reader = reader
        self.go = unwinder
        self.native = NativeUnwinder(proc, cache)
        self._machines: dict[int, Machine] = {}

    # live threads
    def stop_reader(self, g_tls: int | None) -> StopReader:
        """What a stop of a thread reads for a mixed walk: the M's words in every stop, and
        each window bounded by its mapping (no /proc read inside the stop), g0 above
        g0.sched.sp included: the C frames of a callback into Go."""
        return StopReader(self.proc.memory, stop_offsets(self.reader), self.reader.in_text, g_tls=g_tls,
                          machine=True, mapping=self.native.space.cached_mapping)

    def outside_go(self, m: Machine | None, g: Goroutine | None, regs: Registers, mem: StackMemory,
                   g0_bounds: dict[int, tuple[int, int]], stopped: StopCapture | None = None) -> MixedWalk:
        """The stack of a thread stopped outside Go's text (C code, the vDSO): its native
        frames, then its goroutine's Go frames from where the C code returns into Go, or from
        where the goroutine left Go. `mem` serves what `stopped` read (StopCapture.memory)."""
        sp = regs.rsp
        bounds = self.native.space.mapping(sp, STACK_MAPS_REFRESH_S) or (sp, sp + 1)
        nw = self.native.unwind(regs_of(regs), mem, bounds[0], bounds[1], exact=True, is_go=self.reader.in_text)
        frames: list[MixedFrame] = list(nw.frames)
        if nw.stop == Stop.GO:
            rest = self._go_after_native(m, g, nw.regs, mem, g0_bounds, stopped)
        elif g is not None and not nw.stop.complete:
            # The C frames could not all be recovered, but Go's own record of where the
            # goroutine left Go still holds: show the gap, then the Go frames.
            rest = self._go_from_syscall(m, g, mem, stopped)
            if rest.frames:
                gap = Frame(f"[native unwind stopped: {nw.stop}]", kind=FrameKind.NATIVE)
                frames.append(NativeFrame(0, gap, 0, "gap"))
            else:
                rest = MixedWalk([], nw.stop)
        else:
            return MixedWalk(frames, nw.stop)
        frames.extend(rest.frames)
        return MixedWalk(frames, rest.stop)

    @staticmethod
    def _vdso_spans(m: Machine | None, g: Goroutine | None, r12: int, g0_bounds: dict[int, tuple[int, int]]
                    ) -> list[StackSpan]:
        """The stacks the SP a vDSO caller saved in R12 may be on."""
        spans = [StackSpan(g.stack_lo, g.stack_hi)] if g is not None else []
        b = system_span(m, r12, g0_bounds)
        if b is not None:
            spans.append(StackSpan(b[0], b[1], switch_to(g)))
        return spans

    def _go_from_syscall(self, m: Machine | None, g: Goroutine, mem: StackMemory,
                         stopped: StopCapture | None) -> MixedWalk:
        """The goroutine's Go stack from where entersyscall (cgocall) recorded it."""
        if stopped is not None and stopped.syscall is not None and stopped.syscall[0] == g.addr:
            sys_sp, sys_pc = stopped.syscall[1], stopped.syscall[2]
        else:
            fresh = self.reader.read_g(g.addr) or g
            sys_sp, sys_pc = fresh.syscall_sp, fresh.syscall_pc
        if not (sys_sp and g.contains_sp(sys_sp)):
            return MixedWalk([], Stop.NO_SYSCALLSP)
        cont = self.go.unwind(sys_pc, sys_sp, 0, mem, g.stack_lo, g.stack_hi, from_syscall=True)
        return self.splice(cont, m, g, mem, stopped)

    def _go_after_native(self, m: Machine | None, g: Goroutine | None, regs: dict[int, int], mem: StackMemory,
                         g0_bounds: dict[int, tuple[int, int]], stopped: StopCapture | None) -> MixedWalk:
        """C returned into Go at regs[RA]: the Go frames from there, across the switch back."""
        pc, sp = regs[RA], regs[RSP]
        if g is not None and g.contains_sp(sp):
            walk = self.go.unwind(pc, sp, 0, mem, g.stack_lo, g.stack_hi)
            return self.splice(walk, m, g, mem, stopped)
        bounds = system_span(m, sp, g0_bounds) or self.native.space.mapping(sp, STACK_MAPS_REFRESH_S)
        if bounds is None:
            return MixedWalk([], Stop.BOUNDS)
        walk = self.go.unwind(pc, sp, 0, mem, bounds[0], max(bounds[1], sp), on_system_stack=switch_to(g))
        if walk.stop == Stop.SPWRITE and len(walk.frames) == 1 and self.go.vdso.caller_at(pc) is not None:
            # C returned into a vDSO caller (time.now): R12, restored by the C code's CFI, leads on.
            r12 = regs.get(12, 0)
            walk = self.go.vdso.out_of_call(walk, pc, sp, r12, mem, self._vdso_spans(m, g, r12, g0_bounds), False)
            if walk.stop != Stop.VDSO_CALL:
                return self.splice(walk, m, g, mem, stopped)
        frames: list[MixedFrame] = list(walk.frames)
        last = walk.frames[-1].func.name if walk.frames else ""
        if g is None and last.startswith(ASMCGOCALL):
            # A cgo call, but which goroutine made it was not read in the stop: the Go part of
            # the stack is unknown, which the walk must say rather than end as if complete.
            return MixedWalk(frames, Stop.NO_GOROUTINE)
        if g is None or walk.stop not in _LEFT_GO_ON_G0:
            return self.splice(walk, m, g, mem, stopped)
        if last.startswith(ASMCGOCALL):
            rest = self._go_from_syscall(m, g, mem, stopped)  # a cgo call: asmcgocall switched to g0
        else:
            vdso_sp, vdso_pc = (stopped.vdso if stopped is not None and stopped.vdso is not None
                                else self._vdso_of(m) if m is not None else (0, 0))
            if not (vdso_sp and g.contains_sp(vdso_sp)):
                return MixedWalk(frames, Stop.VDSO_CALL if walk.stop == Stop.SPWRITE else walk.stop)  # cut, never complete
            cont = self.go.unwind(vdso_pc, vdso_sp, 0, mem, g.stack_lo, g.stack_hi)  # a vDSO call
            rest = self.splice(cont, m, g, mem, stopped)
        # The Go part could not be found: say why (its stop), never end as if complete.
        return MixedWalk(frames + rest.frames, rest.stop)

    def _vdso_of(self, m: Machine) -> tuple[int, int]:
        """m.vdsoSP / m.vdsoPC now (the snapshot's copy may be older than the sample)."""
        try:
            buf = self.proc.memory.read(m.addr, self.reader.m.size)
        except InvalidMemory:
            return m.vdso_sp, m.vdso_pc
        return self.reader.m.get(buf, "vdsosp"), self.reader.m.get(buf, "vdsopc")

    # C frames between cgocallback and the Go code that called C
    def splice(self, walk: Walk, m: Machine | None, g: Goroutine | None, mem: StackMemory,
               stopped: StopCapture | None = None) -> MixedWalk:
        """Insert the C frames that called back into Go after each runtime.cgocallback frame.

        cgocallback runs on g0 first: it saves g0.sched.sp at 0(SP) of its g0 frame and
        points g0.sched.sp at that frame, then copies its frame onto the goroutine's stack
        with curg.sched.pc as the return address. So the innermost cgocallback's C caller is
        found from m.g0.sched.sp (as read while the thread was stopped, with the g0 stack
        above it, when the caller has them), the next one's from the value saved there, and
        so on.
        """
        frames = walk.frames
        if not any(pf.func.name == CGOCALLBACK for pf in frames):
            return MixedWalk(list(frames), walk.stop)
        if m is None and g is not None:
            m = self._machine(g.m_addr or g.locked_m)
        g0 = self.reader.read_g(m.g0) if m is not None and m.g0 else None
        g0_sp = stopped.g0_sched_sp if stopped is not None else None
        if g0_sp is None:
            g0_sp = g0.sched_sp if g0 is not None else 0
        out: list[MixedFrame] = []
        skip_switch = False
        for pf in frames:
            if skip_switch and pf.func.name == "runtime.systemstack_switch":
                continue  # asmcgocall's gosave: the same call as the asmcgocall frame just shown
            skip_switch = False
            out.append(pf)
            if pf.func.name != CGOCALLBACK or not g0_sp:
                continue
            seg, g0_sp, how = self._callback_caller(pf, g0_sp, g0, mem)
            out.extend(seg)
            if how == Stop.TOP:
                # A C thread called into Go: no Go caller below, and what the Go walk shows
                # next is the goexit frame the runtime gives an extra M's goroutine.
                return MixedWalk(out, Stop.TOP)
            if how != Stop.GO:
                gap = Frame(f"[native unwind stopped: {how}]", kind=FrameKind.NATIVE)
                out.append(NativeFrame(0, gap, 0, "gap"))
                g0_sp = 0
            skip_switch = True
        return MixedWalk(out, walk.stop)

    def _callback_caller(self, cb: PhysicalFrame, g0_sp: int, g0: Goroutine | None, mem: StackMemory
                         ) -> tuple[list[MixedFrame], int, Stop]:
        """Frames from cgocallback's g0 frame down to the Go code that made the cgo call.

        Returns (frames, g0.sched.sp of the next outer callback, how it ended: Stop.GO back in
        Go's asmcgocall, Stop.TOP at the thread's start, else why it stopped).
        """
        _f, spdelta = self.go.func_at(cb.pc)  # the g0 frame has the same size as the copy on curg
        if spdelta is None:
            return [], 0, Stop.NO_FRAME_SIZE
        try:
            next_sp = mem.u64(g0_sp)
            ra = mem.u64(g0_sp + spdelta)
        except InvalidMemory:
            return [], 0, Stop.MEMORY
        f, _d = self.go.func_at(ra)
        if f is None or f.name != CROSSCALL2:
            return [], 0, Stop.CALLBACK_RETURNED  # g0.sched.sp no longer points at this callback's frame
        sp = g0_sp + spdelta + 8
        bounds = self.native.space.mapping(g0_sp, STACK_MAPS_REFRESH_S)
        if g0 is not None and g0.stack_lo <= g0_sp < g0.stack_hi:
            lo, hi = g0.stack_lo, g0.stack_hi
            if bounds is not None:
                lo, hi = min(lo, bounds[0]), max(hi, bounds[1])
        elif bounds is not None:
            lo, hi = bounds
        else:
            return [], 0, Stop.BOUNDS
        frames: list[MixedFrame] = []
        walk = self.go.unwind(ra, sp, 0, mem, lo, hi, max_frames=8)  # crosscall2
        frames.extend(walk.frames)
        if not walk.frames:
            return frames, 0, walk.stop
        last = walk.frames[-1]
        try:
            c_pc = mem.u64(last.fp - 8)
            c_bp = mem.u64(last.fp - 16)  # Go frames save the caller's rbp just below the return address
        except InvalidMemory:
            return frames, 0, Stop.MEMORY
        nw = self.native.unwind({RA: c_pc, RSP: last.fp, RBP: c_bp}, mem, lo, hi, exact=False,
                                is_go=self.reader.in_text)
        frames.extend(nw.frames)
        if nw.stop.complete:
            return frames, 0, Stop.TOP
        if nw.stop != Stop.GO:
            return frames, 0, nw.stop
        # Back in Go on g0: asmcgocall, where the goroutine's stack switched to g0.
        back = self.go.unwind(nw.regs[RA], nw.regs[RSP], 0, mem, lo, hi, max_frames=8)
        frames.extend(back.frames)
        return frames, next_sp, Stop.GO

    def _machine(self, addr: int) -> Machine | None:
        if not addr:
            return None
        hit = self._machines.get(addr)
        if hit is None:
            try:
                ms, _bad = self.reader.machines()
            except InvalidMemory:
                return None
            self._machines = {x.addr: x for x in ms}
            hit = self._machines.get(addr)
        return hit

    def close(self) -> None:
        self.native.cache.close()
