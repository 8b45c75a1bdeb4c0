"""Every goroutine's stack: where its walk starts, the walk, and its logical frames.

A parked goroutine starts at `g.sched`, one in a syscall at `g.syscall{pc,sp}`, a running
one at its thread's registers — read in a PTRACE_INTERRUPT stop that lasts only for the
register read and one read of the stack top; the walk itself runs after the thread is
released. A thread found on g0 (systemstack, morestack) jumps to its user goroutine the
way the runtime's profiler does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from goflame.binary.gobinary import GoBinary
from goflame.errors import InvalidMemory
from goflame.frame import Frame
from goflame.process import Process
from goflame.runtime import G_RUNNING, G_SYSCALL, Goroutine, Machine, RuntimeReader, Snapshot
from goflame.stopreader import StopReader
from goflame.symbolize import Symbolizer
from goflame.unwind.capture import StopCapture, stop_offsets
from goflame.unwind.gopclntab import GoUnwinder, PhysicalFrame, StackMemory, Walk
from goflame.unwind.livewalk import LiveWalker, Start, ThreadFacts
from goflame.unwind.stop import Stop

if TYPE_CHECKING:
    from goflame.process import PausedThread
    from goflame.unwind.stitch import MixedWalk, NativeStitcher

STACK_WINDOW = 64 * 1024  # bytes of stack read in one go per goroutine (more on demand)


@dataclass(frozen=True, slots=True)
class StackFrame:
    """A logical frame plus what Go's traceback format needs about its physical frame."""

    frame: Frame
    pc: int  # physical pc (process address)
    entry: int  # process address of the physical function's entry
    func_id: int
    depth: int = 0  # index of the physical frame this logical frame belongs to


@dataclass(frozen=True, slots=True)
class GoroutineStack:
    g: Goroutine
    frames: tuple[StackFrame, ...]  # innermost first, nothing elided
    start: str  # "sched", "syscall", "registers", "vdso", "signal", "stale" (running, not paused)
    stop: Stop  # why the walk ended; `stop.complete`: the stack is whole
    thread: int = 0  # tid of the thread running it, if any
    pause_ns: int = 0  # how long that thread was stopped for this stack

    @property
    def logical(self) -> tuple[Frame, ...]:
        return tuple(sf.frame for sf in self.frames)


class StackCollector:
    """Turns a runtime snapshot into goroutine stacks; holds per-pc caches across samples."""

    def __init__(self, proc: Process, binary: GoBinary, reader: RuntimeReader):
        self.proc = proc
        self.binary = binary
        self.reader = reader
        self.bias = reader.bias
        self.unwinder = GoUnwinder(binary, self.bias)
        self.symbolizer = Symbolizer(binary, self.bias)
        self.pause_ns: list[int] = []
        self.native: NativeStitcher | None = None
        self._frames_at: dict[tuple[int, bool, int], tuple[StackFrame, ...]] = {}
        self._stops = StopReader(proc.memory, stop_offsets(reader), reader.in_text, curg=True)
        self._walker = LiveWalker(self.unwinder, reader.in_text, walk_unknown=False)

    def enable_native(self) -> NativeStitcher:
        """--native: C frames too. Only then is anything native imported, opened or parsed."""
        if self.native is None:
            from goflame.unwind.stitch import NativeStitcher

            self.native = NativeStitcher(self.proc, self.reader, self.unwinder)
            self._walker = LiveWalker(self.unwinder, self.reader.in_text, walk_unknown=False, native=self.native)
            self._stops = self.native.stop_reader(g_tls=None)
        return self.native

    # -- registers of running goroutines ----------------------------------------------------------
    def pause_running(self, snap: Snapshot, goroutines: list[Goroutine]) -> dict[int, PausedThread[StopCapture]]:
        """goid -> its thread's stop and what was read in it, per goroutine on a thread.

        A goroutine whose thread no longer ran it when stopped is left out: the snapshot read
        m.curg before the pause, and the scheduler may have taken the goroutine off in between
        (a preemption: the thread is then in the scheduler on g0, whose stack is not the
        goroutine's). m.curg is read again inside the stop, and `_catch_movers` reads the
        goroutine again.
        """
        by_tid: dict[int, tuple[Machine, Goroutine]] = {}
        for g in goroutines:
            if g.status != G_RUNNING and not (self.native is not None and g.status == G_SYSCALL):
                continue
            m = snap.machine_of(g)
            if g.status == G_SYSCALL and not (m is not None and m.incgo):
                continue  # --native: a thread in C (maybe blocked in libc) is paused for its C frames
            if m is not None and m.tid:
                by_tid[m.tid] = (m, g)
        if not by_tid:
            return {}
        stacks = SnapshotStacks.of(snap)
        read = self._stops.read
        paused = self.proc.pause(list(by_tid), lambda tid, regs: read(by_tid[tid][0], regs, stacks))
        out = {}
        for tid, p in paused.items():
            _m, g = by_tid[tid]
            self.pause_ns.append(p.pause_ns)
            if p.extra is None:
                continue
            if p.extra.curg in (-1, g.addr):  # -1: m.curg was unreadable; the walk checks the stack itself
                out[g.goid] = p
        return out

    # -- walks ------------------------------------------------------------------------------------
    def collect(self, snap: Snapshot, *, pause: bool = True, goroutines: list[Goroutine] | None = None
                ) -> list[GoroutineStack]:
        gs = list(snap.goroutines if goroutines is None else goroutines)
        regs = self.pause_running(snap, gs) if pause else {}
        machine_of: dict[int, Machine | None] = {g.goid: snap.machine_of(g) for g in gs if g.goid in regs}
        if pause:
            gs, snap = self._catch_movers(snap, gs, regs, machine_of)
        out = self.collect_parked([g for g in gs if g.goid not in regs])
        for g in gs:
            if g.goid not in regs:
                continue
            p = regs[g.goid]
            out.append(self._walk_running(snap, g, machine_of[g.goid], p.extra, p.pause_ns))
        order = {g.addr: i for i, g in enumerate(gs)}
        out.sort(key=lambda s: order.get(s.g.addr, 0))
        return out

    def _catch_movers(self, snap: Snapshot, gs: list[Goroutine], regs: dict, machine_of: dict
                      ) -> tuple[list[Goroutine], Snapshot]:
        """Goroutines the snapshot shows running but no paused thread ran: look again.

        The snapshot reads goroutines, then Ms, without stopping anything; a goroutine the
        scheduler moved in between (preempted, handed to another M) has no M running it in
        the snapshot, and its saved context is cleared while it runs. Re-read it: parked now,
        its fresh saved context is its stack; running, pause the M that runs it now.
        """
        for _attempt in range(3):
            movers = [i for i, g in enumerate(gs) if g.status == G_RUNNING and g.goid not in regs]
            if not movers:
                break
            self.proc.relist_threads()  # the M running it now may be a thread started since
            try:
                ms, _bad = self.reader.machines()
            except InvalidMemory:
                break
            snap = replace(snap, machines=tuple(ms))
            again: list[Goroutine] = []
            for i in movers:
                fresh = self.reader.read_g(gs[i].addr)
                if fresh is None or fresh.goid != gs[i].goid:
                    continue
                gs[i] = fresh
                if fresh.status == G_RUNNING:
                    again.append(fresh)
            if not again:
                break
            got = self.pause_running(snap, again)
            for g in again:
                if g.goid in got:
                    regs[g.goid] = got[g.goid]
                    machine_of[g.goid] = snap.machine_of(g)
        return gs, snap

    def collect_parked(self, gs: list[Goroutine]) -> list[GoroutineStack]:
        """Stacks of goroutines not on a thread, from their saved context; one batched read."""
        starts: list[tuple[Goroutine, str, int, int, int]] = []
        for g in gs:
            if g.syscall_sp and g.status != G_RUNNING:
                starts.append((g, "syscall", g.syscall_pc, g.syscall_sp, 0))
            else:
                start = "stale" if g.status == G_RUNNING else "sched"
                starts.append((g, start, g.sched_pc, g.sched_sp, g.sched_lr))
        requests = [(sp, max(0, min(STACK_WINDOW, g.stack_hi - sp))) if g.contains_sp(sp) else (0, 0)
                    for g, _s, _pc, sp, _lr in starts]
        wanted = [r for r in requests if r[1] > 0]
        datas = self.proc.memory.read_many(wanted) if wanted else []
        it = iter(datas)
        out: list[GoroutineStack] = []
        read = self.proc.memory.read
        for (g, start, pc, sp, lr), req in zip(starts, requests, strict=True):
            data = (next(it) or b"") if req[1] > 0 else b""
            mem = StackMemory(read, sp, data)
            walk = self.unwinder.unwind(pc, sp, lr, mem, g.stack_lo, g.stack_hi,
                                        from_syscall=start == "syscall")
            if self.native is not None:
                walk = self.native.splice(walk, None, g, mem)  # C frames of a callback into Go
            out.append(self._stack(g, walk, start, 0, 0))
        return out

    def collect_one(self, g: Goroutine) -> GoroutineStack:
        return self.collect_parked([g])[0]

    def _walk_running(self, snap: Snapshot, g: Goroutine, m: Machine | None, cap: StopCapture,
                      pause_ns: int) -> GoroutineStack:
        mem = cap.memory(self.proc.memory.read)
        tid = m.tid if m else 0
        facts = ThreadFacts(m, g, g0_bounds(snap), fresh=self._fresh)
        lw = self._walker.walk(cap, facts, mem)
        if lw is None:  # on none of its stacks
            moved = self._moved_off(g)
            if moved is not None:
                return moved
            return self._stack(g, Walk([], Stop.BOUNDS), Start.REGISTERS, tid, pause_ns)
        if lw.start == Start.UNKNOWN and self.native is None:
            # Outside Go, and the runtime's records do not say where it left Go: its last
            # saved context, marked as such (Go's own traceback would not show this stack).
            fresh = self._fresh(g)
            walk = self.unwinder.unwind(fresh.sched_pc, fresh.sched_sp, fresh.sched_lr, mem, g.stack_lo, g.stack_hi)
            return self._stack(g, walk, "stale", tid, pause_ns)
        return self._stack(g, lw.joined(), lw.start, tid, pause_ns)

    def _fresh(self, g: Goroutine) -> Goroutine:
        """The goroutine read again (the snapshot's copy is older than the pause)."""
        return self.reader.read_g(g.addr) or g

    def _moved_off(self, g: Goroutine) -> GoroutineStack | None:
        """A goroutine whose thread, once paused, was on none of its stacks: the scheduler took
        it off that thread in between (a stop-the-world preempts every running goroutine). Read
        again, parked now, its saved context is its stack and its state is the current one."""
        fresh = self.reader.read_g(g.addr)
        if fresh is None or fresh.goid != g.goid or fresh.status == G_RUNNING:
            return None
        return self.collect_parked([fresh])[0]

    def _stack(self, g: Goroutine, walk: Walk | MixedWalk, start: str, tid: int, pause_ns: int) -> GoroutineStack:
        frames: list[StackFrame] = []
        cache = self._frames_at
        for depth, pf in enumerate(walk.frames):
            if not isinstance(pf, PhysicalFrame):  # a native frame (--native)
                frames.append(StackFrame(pf.frame, pf.pc, pf.entry, 0, depth))
                continue
            key = (pf.pc, pf.exact, depth)
            hit = cache.get(key)
            if hit is None:
                # Thousands of goroutines parked the same way share their frames: make each once.
                entry = pf.func.entry + self.bias
                hit = tuple(StackFrame(fr, pf.pc, entry, fid, depth) for fr, fid in self.symbolizer.expand(pf.sym_pc))
                if len(cache) > 1 << 18:
                    cache.clear()
                cache[key] = hit
            frames.extend(hit)
        return GoroutineStack(g, tuple(frames), start, walk.stop, tid, pause_ns)


@dataclass(frozen=True)
class SnapshotStacks:
    """The system stacks of a snapshot's Ms (a `stopreader.SystemStacks`)."""

    g0_bounds: dict[int, tuple[int, int]]
    g0_sched_sp: dict[int, int]

    @classmethod
    def of(cls, snap: Snapshot) -> SnapshotStacks:
        return cls(g0_bounds(snap), {a: sg.sched_sp for a, sg in snap.g0s.items()})


def g0_bounds(snap: Snapshot) -> dict[int, tuple[int, int]]:
    """(stack.lo, stack.hi) of every g0 and gsignal of the snapshot, by the g's address."""
    return {a: (sg.stack_lo, sg.stack_hi) for a, sg in snap.g0s.items()}


def physical(walk: Walk) -> list[PhysicalFrame]:
    return list(walk.frames)
