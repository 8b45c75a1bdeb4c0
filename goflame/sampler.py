"""The sampling loop: what a sample is, when it is taken, and what it costs the target.

CPU mode (default): at each tick, the threads the kernel shows running (state R) are paused
one at a time — PTRACE_SEIZE, INTERRUPT, registers and one read of the stack top, DETACH —
and the goroutine each runs is unwound from those registers after the thread is released.
Wall mode (`idle=True`) adds every other goroutine, unwound from its saved context; a parked
goroutine's stack cannot change while it stays parked, so its walk is cached by its context.
Ticks are jittered around the rate so periodic work is not aliased; lag is accounted for.
"""

from __future__ import annotations

import contextlib
import gc
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from goflame.credit import CreditScheduler, Due
from goflame.engine import PerfEngine, PtraceEngine, SamplingEngine
from goflame.errors import BadInput, GoflameError, InvalidMemory, ProcessGone, TargetExeced
from goflame.frame import Frame, FrameKind
from goflame.labels import LabelReader
from goflame.process import Registers
from goflame.process.cpu import CpuPin
from goflame.process.perf import KernelSample, PerfSampling, PerfUnavailable
from goflame.profile import Sample
from goflame.resolver import GoroutineResolver
from goflame.runtime import G_RUNNING, Goroutine, Machine, is_system_goroutine
from goflame.stackcache import StackCache
from goflame.stacks import GoroutineStack
from goflame.stopreader import StopReader
from goflame.target import Target
from goflame.unwind.capture import (
    StopCapture,
    stop_offsets,
)
from goflame.unwind.livewalk import LiveWalker, ThreadFacts

if TYPE_CHECKING:
    from goflame.process import PausedThread

TIDS_REFRESH_S = 0.05


class TargetEnd(Enum):
    """How the target ended a recording that it ended (RUNNING: it did not)."""

    RUNNING = "running"
    EXITED = "exited"
    EXECED = "exec'd a new program"


@dataclass(slots=True)
class SamplerStats:
    engine: str = "ptrace"  # what sampled the running threads: "ptrace" or "perf"
    fallback: str = ""  # engine "auto" in CPU mode: why perf could not be used ("" if it was)
    ticks: int = 0  # ptrace: sampling ticks; perf: reads of the kernel's buffers
    samples: int = 0
    errors: int = 0  # samples dropped: torn memory, a thread gone mid-pause, an undecodable g
    busy: int = 0  # ptrace: samples not taken because another tracer (a debugger) held the thread
    deferred: int = 0  # ptrace: stops that found the thread woken from a wait, not running: taken later
    missed: int = 0  # the skipped ticks beyond CATCH_UP_S (a stall); perf: samples the kernel lost
    missed_s: float = 0.0  # the time those ticks stood for: how far sampling fell behind, in all
    skipped: int = 0  # ptrace: ticks due while the sampler was busy, not taken late (TickClock)
    late: int = 0  # ticks whose wakeup came more than one interval after they were due
    max_lag_s: float = 0.0  # the longest the sampler was behind a tick
    pause_ns: list[int] = field(default_factory=list)
    started: float = 0.0
    # CLOCK_MONOTONIC, ns, at the recording's time zero: a sample's timestamp_ns counts from
    # it, so samples line up with other tools' records of the same moments (perf -k mono).
    zero_ns: int = 0
    elapsed: float = 0.0
    cpu_ns: int = 0  # perf: the CPU time of the threads sampled, as the kernel counted it
    end: TargetEnd = TargetEnd.RUNNING

    def target_gone(self, e: ProcessGone, execed: bool = False) -> None:
        self.end = TargetEnd.EXECED if execed or isinstance(e, TargetExeced) else TargetEnd.EXITED

    @property
    def rate(self) -> float:
        """Achieved sampling rate, Hz: ticks per second (ptrace), samples per CPU-second (perf)."""
        if self.engine == "perf":
            return self.samples / (self.cpu_ns / 1e9) if self.cpu_ns > 0 else 0.0
        return self.ticks / self.elapsed if self.elapsed > 0 else 0.0


@dataclass(frozen=True, slots=True)
class SamplerConfig:
    rate: float = 100.0
    idle: bool = False  # wall-clock: every goroutine, not just those on a CPU
    nonblocking: bool = False  # never pause: running goroutines are read from their last saved context
    include_system: bool = True  # runtime goroutines (GC workers ...) are part of CPU time
    native: bool = False  # unwind C frames too (cgo, libc, vDSO) and stitch them into the goroutine's stack
    # How running threads are sampled: "perf" (the kernel samples each thread's CPU time,
    # nothing is stopped; see process/perf.py), "ptrace" (pause the threads on a CPU at each
    # tick), "auto" (perf where the kernel allows it and the mode is plain CPU sampling).
    engine: str = "auto"
    labels: bool = True  # each sample carries its goroutine's pprof labels (goflame/labels.py)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise BadInput(f"unknown sampling engine {self.engine!r} (one of {', '.join(ENGINES)})")
        if self.engine == "perf" and (self.idle or self.nonblocking or self.native):
            raise BadInput("the perf engine samples running goroutines only: "
                           "--idle, --native and --nonblocking need --engine ptrace (or auto)")


ENGINES = ("auto", "perf", "ptrace")


class Sampler:
    def __init__(self, target: Target, config: SamplerConfig = SamplerConfig()):
        if not 1 <= config.rate <= 10_000:  # NaN too
            raise GoflameError(f"rate {config.rate} Hz is out of range (1..10000)")
        self.t = target
        self.cfg = config
        self.stats = SamplerStats()
        self._parked: dict[tuple[int, int, int, int, int], tuple[Frame, ...]] = {}
        self._rng = random.Random()
        mem = target.proc.memory
        self._mem = mem
        lay = target.reader
        self._collector = target.stacks
        self._gs = GoroutineResolver(lay, mem, target.stacks.unwinder.vdso)
        self._sym = target.stacks.symbolizer
        self._unwinder = target.stacks.unwinder
        self._native = target.stacks.enable_native() if config.native else None
        g_tls = target.binary.globals.g_tls_offset
        self._stops = (self._native.stop_reader(g_tls=None) if self._native is not None
                       else StopReader(mem, stop_offsets(lay), target.reader.in_text, g_tls=g_tls))
        self._tids: list[int] = []
        self._tids_time = float("-inf")
        self._cache = StackCache(self._sym)
        self._walker = LiveWalker(self._unwinder, target.reader.in_text, walk_unknown=True, native=self._native)
        self._kernel: PerfSampling | None = None  # opened by choose_engine, taken by run
        self._unlabelled: list[tuple[Sample, int]] = []  # see _labelled
        self._label_reader = _label_reader(target) if config.labels else None
        self._engine_chosen = False
        self._pin = CpuPin() if not config.nonblocking else None
        self._credits = CreditScheduler(target.proc, config.rate, self._pin, self._rng)

    # -- labels -----------------------------------------------------------------------------------
    def _labelled(self, sample: Sample, g: Goroutine | None) -> Sample:
        """The sample, to be given its goroutine's pprof labels by `_resolve_labels` (all of a
        tick's at once: one batch of reads, and a published label set is decoded only once)."""
        if g is not None and g.labels and self._label_reader is not None:
            self._unlabelled.append((sample, g.labels))
        return sample

    def _resolve_labels(self) -> None:
        pending, self._unlabelled = self._unlabelled, []
        if not pending:
            return
        try:
            by_ptr = self._label_reader.read(p for _, p in pending)  # type: ignore[union-attr]
        except InvalidMemory:
            return
        for sample, ptr in pending:
            labels = by_ptr.get(ptr)
            if labels:
                sample.labels = tuple(labels.items())

    # -- one tick ---------------------------------------------------------------------------------
    def sample(self, ts_ns: int) -> list[Sample]:
        try:
            return self._sample_tick(ts_ns)
        finally:
            if self._pin is not None:
                self._pin.ordinary()

    def _sample_tick(self, ts_ns: int) -> list[Sample]:
        now = time.monotonic()
        tids = self._threads(now)
        credits = self._credits
        credits.weights = {}
        first = credits.taken_from(now, tids, self._gs.known) if not self.cfg.nonblocking else None
        if self._native is not None:
            self._gs.refresh_for(tids, now)  # --native reads an M in the stop: known before
        out: list[Sample] = []
        on_cpu_goids: set[int] = set()
        if self.cfg.nonblocking:
            out += self._sample_running_nonblocking(ts_ns, list(self._on_cpu(tids, now)), on_cpu_goids)
        elif credits.stamped:
            # The frozen thread is stopped and let go first; the others are looked at after.
            out += self._sample_running(ts_ns, [first] if first is not None else [], on_cpu_goids)
            due = self._scan(tids, now)
            if credits.looked is not None:
                credits.where_it_went(credits.looked)
            credits.frozen_first(due)
        else:
            # Each thread is interrupted the moment it is found due (its state and schedstat
            # just read): see CreditScheduler._where_it_ran.
            out += self._sample_running(ts_ns, self._on_cpu(tids, now), on_cpu_goids)
        self._gs.refresh_for((), time.monotonic())
        if self.cfg.idle:
            out += self._sample_idle(ts_ns, on_cpu_goids)
        self._resolve_labels()
        self.stats.samples += sum(s.weight for s in out)
        return out

    def _threads(self, now: float) -> list[int]:
        """The target's thread ids, listed again every TIDS_REFRESH_S (a new thread waits that
        long for its first sample; one that exits drops out at once: its schedstat is gone).
        A thread not seen before is looked for among the Ms at once: its stop reads what
        leads out of C code or the signal handler only if its M is known by then (a stop of
        a new M in Go's handler was cut there, its interrupted context read after the release)."""
        if now - self._tids_time > TIDS_REFRESH_S:
            self._tids = self.t.proc.tids()
            self.t.proc.check_alive()  # exited, its pid reused, or exec'd: ProcessGone
            self._tids_time = now
            self._gs.listed(self._tids, now)
        return self._tids

    def _on_cpu(self, tids: list[int], now: float) -> Iterator[int]:
        """The threads to interrupt this tick when the scheduler's stamps do not tell the one
        goflame froze (`CreditScheduler.taken_from`): those it picks among the due ones."""
        yield from self._credits.frozen_first(self._scan(tids, now))

    def _scan(self, tids: list[int], now: float) -> list[Due]:
        """The threads owed samples (`CreditScheduler.scan`); with every thread listed gone,
        the threads are listed again (ProcessGone if the process exited)."""
        due = self._credits.scan(tids, now)
        if due is None:
            self._tids_time = float("-inf")
            self._threads(now)
            return []
        return due


    def _stop_reader(self) -> Callable[[int, Registers], StopCapture]:
        """What the ptrace engine reads inside each stop (`Pauser.pause`'s callback): the
        sampling rule's counts first, then what the walk needs (`StopReader`)."""
        in_stop = self._credits.in_stop
        read = self._stops.read
        ms = self._gs.ms
        stacks = self._gs

        def reads(tid: int, regs: Registers) -> StopCapture:
            return read(ms.get(tid), regs, stacks, in_stop(tid, regs))

        return reads

    def _sample_running(self, ts_ns: int, due: Iterable[int], on_cpu: set[int]) -> list[Sample]:
        pauser = self.t.proc.pauser
        busy_before = pauser.skipped_busy
        tids: list[int] = []
        paused = self.t.proc.pause(_kept(due, tids), self._stop_reader(), just_before=self._credits.counts_before)
        if self._pin is not None:  # real-time through the stops of the frozen threads only
            self._pin.ordinary()
            self._pin.release()
        if not tids:
            return []
        now = time.monotonic()
        self._gs.refresh_for(tids, now)  # a thread to sample may be no M we know (a new M, or C's own)
        busy = pauser.skipped_busy - busy_before
        self.stats.busy += busy
        self.stats.errors += len(tids) - len(paused) - busy
        credits = self._credits
        weights = credits.weights
        for tid, p in list(paused.items()):
            self.stats.pause_ns.append(p.held_ns)
            w = credits.weight(tid, p)
            if w:
                weights[tid] = w
            else:
                del paused[tid]
                self.stats.deferred += 1
        # After the threads are released: which goroutine was each running?
        order = [tid for tid in paused if tid in self._gs.ms]
        foreign = [tid for tid in paused if tid not in self._gs.ms]  # threads the Go runtime does not own
        if self._native is None:
            self.stats.errors += len(foreign)
        gs = self._running_gs(order, paused)
        out: list[Sample] = []
        for tid in order:
            g = gs.get(tid, False)
            if g is False:
                self.stats.errors += 1
                continue
            frames = self._walk_capture(self._gs.ms[tid], g, paused[tid].extra)
            if not frames:
                self.stats.errors += 1
                continue
            if g is not None:
                on_cpu.add(g.goid)
            out.append(self._labelled(Sample(ts_ns, g.goid if g else 0, tid, "running", frames, weights.get(tid, 1)), g))
        if self._native is not None:
            out += self._sample_foreign(ts_ns, foreign, paused)
        return out

    def _running_gs(self, order: list[int], paused: dict[int, PausedThread[StopCapture]]
                    ) -> dict[int, Goroutine | None]:
        """tid -> the goroutine it was running (None: none, on g0 in the scheduler); left out:
        unreadable. See `GoroutineResolver.of`."""
        items = [(self._gs.ms[tid], paused[tid].extra) for tid in order]
        if self._native is not None:  # m.curg as it was in the stop, consistent with the registers
            gs = self._gs.of([(m, max(c.curg, 0), c.regs.sp, True) for m, c in items])
        else:
            gs = self._gs.by_capture(items)
        return {tid: g for tid, g in zip(order, gs, strict=True) if g is not False}

    def _sample_foreign(self, ts_ns: int, tids: list[int], paused: dict[int, PausedThread[StopCapture]]
                        ) -> list[Sample]:
        """--native: a thread that is no M (C's own threads) is one native stack, goroutine 0."""
        out = []
        for tid in tids:
            p = paused[tid]
            lw = self._walker.walk(p.extra, ThreadFacts(None, None, {}), p.extra.memory(self._mem.read))
            frames = self._cache.of_mixed(lw.joined()) if lw is not None else ()
            if not frames:
                self.stats.errors += 1
                continue
            out.append(Sample(ts_ns, 0, tid, "running", frames, self._credits.weights.get(tid, 1)))
        return out

    def _walk_capture(self, m: Machine, g: Goroutine | None, cap: StopCapture) -> tuple[Frame, ...]:
        """The logical frames of a sampled thread's stack, from what its sample captured; ()
        if its sp was on no stack known and nothing could be walked (an error)."""
        gs = self._gs
        facts = ThreadFacts(m, g, gs.g0_bounds, gs.owner_bounds, gs.stack_owner)
        mem = cap.memory(self._mem.read)
        key = self._walker.key(cap, facts, mem) if self._native is None else None
        if key is not None:
            return self._cache.frames(key)
        lw = self._walker.walk(cap, facts, mem)
        if lw is None:
            return ()
        cache = self._cache
        if self._native is not None:
            frames = cache.of_mixed(lw.walk)
            return (*cache.of_mixed(lw.handler), *frames) if lw.handler is not None else frames
        frames = cache.of_walk(lw.walk)  # type: ignore[arg-type]
        if lw.outside_go:  # where the thread was, in native code (vDSO, libc, cgo) or the kernel
            frames = (Frame("[native code]", kind=FrameKind.NATIVE, pc=lw.pc), *frames)
        return (*cache.of_walk(lw.handler), *frames) if lw.handler is not None else frames  # type: ignore[arg-type]

    def _sample_running_nonblocking(self, ts_ns: int, tids: list[int], on_cpu: set[int]) -> list[Sample]:
        """No ptrace: a running goroutine is shown at its last saved context (stale by design)."""
        out = []
        for tid in tids:
            m = self._gs.ms.get(tid)
            if m is None or not m.curg:
                continue
            g = self.t.reader.read_g(m.curg)
            if g is None:
                self.stats.errors += 1
                continue
            stack = self._collector.collect_one(g)
            on_cpu.add(g.goid)
            out.append(self._labelled(Sample(ts_ns, g.goid, tid, "running", self._frames_of(stack)), g))
        return out

    def _frames_of(self, stack: GoroutineStack) -> tuple[Frame, ...]:
        sym = self._sym
        out: list[Frame] = []
        callee = 0
        for sf in stack.frames:
            kept, callee = sym.elide(((sf.frame, sf.func_id),), callee)
            out.extend(kept)
        return tuple(out)

    def _sample_idle(self, ts_ns: int, on_cpu: set[int]) -> list[Sample]:
        reader = self.t.reader
        gs, bad = reader.goroutines()
        self.stats.errors += bad
        bias = reader.bias
        out = []
        need: list[Goroutine] = []
        keys = {}
        for g in gs:
            if g.goid in on_cpu or g.status == G_RUNNING:
                continue
            if not self.cfg.include_system and is_system_goroutine(self.t.binary, g, bias):
                continue
            key = (g.addr, g.goid, g.sched_pc, g.sched_sp, g.syscall_sp)
            keys[g.goid] = key
            if key not in self._parked:
                need.append(g)
        if need:
            for stack in self._collector.collect_parked(need):
                self._parked[keys[stack.g.goid]] = self._frames_of(stack)
        if len(self._parked) > 200_000:
            self._parked.clear()
        for g in gs:
            key = keys.get(g.goid)
            if key is None:
                continue
            frames = self._parked.get(key)
            if frames is None:
                continue
            out.append(self._labelled(Sample(ts_ns, g.goid, 0, g.state, frames), g))
        return out

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, on_samples: Callable[[list[Sample]], None], *, duration: float | None = None,
            should_stop: Callable[[], bool] = lambda: False, on_tick: Callable[[SamplerStats], None] | None = None,
            ) -> SamplerStats:
        """Sample until `duration` passes, `should_stop()` says so, or the target exits, with
        the engine `choose_engine` picks (goflame/engine.py)."""
        engine = self.open_engine()
        start = engine.start
        st = self.stats
        busy = 0.0  # how long the last step took
        # What exists now (binary tables, caches) lives as long as the recording: kept out of
        # the cyclic GC's full collections, which otherwise walk it all and stall a tick.
        gc.freeze()
        try:
            ended = False
            while not ended:
                now = time.monotonic()
                ended = should_stop() or (duration is not None and now - start >= duration)
                if not ended:
                    # Behind or not, rest a share of the last step's time: a sampler asked for
                    # more than it can do must still leave the CPU to others. A tick due before
                    # then is skipped, not taken late (TickClock).
                    if busy:  # after a step: before the first there is nothing to skip
                        engine.not_before(now + busy * engine.rest_share)
                    wake = max(engine.next, now + busy * engine.rest_share)
                    if duration is not None:
                        wake = min(wake, start + duration)
                    if now < wake:
                        with engine.waking():
                            time.sleep(wake - now)
                        now = time.monotonic()
                batch = engine.step(now, final=ended)
                ended = ended or batch.gone
                if batch.samples:
                    on_samples(batch.samples)
                st.elapsed = time.monotonic() - start
                if on_tick is not None:
                    on_tick(st)
                busy = time.monotonic() - now
        finally:
            engine.close()  # the calling thread as it came: its own policy and CPUs
            gc.unfreeze()
            st.elapsed = time.monotonic() - start
        return st

    def open_engine(self) -> SamplingEngine:
        """The engine `choose_engine` picked, started now: for `run`, or a caller with a loop
        of its own (`top`). Closing it closes the sampler too."""
        self.choose_engine()
        kernel, self._kernel = self._kernel, None
        if kernel is not None:
            return PerfEngine(KernelPoller(self, kernel))
        self.stats.started = time.time()
        self.stats.zero_ns = time.monotonic_ns()
        return PtraceEngine(self, self.stats.zero_ns / 1e9)

    def waking(self) -> AbstractContextManager[None]:
        """Where a ptrace-sampling loop sleeps between ticks (see `CpuPin`); it leaves the
        thread real-time until `sample` (or `ordinary`) runs."""
        return self._pin.waking() if self._pin is not None else contextlib.nullcontext()

    def ordinary(self) -> None:
        """Back to normal priority after `waking`, when no tick follows the wakeup."""
        if self._pin is not None:
            self._pin.ordinary()

    # -- the kernel samples (perf) ----------------------------------------------------------------
    def choose_engine(self) -> str:
        """Decide how running threads are sampled and open the perf events now: `--engine perf`
        where the machine refuses perf fails here, before anything is written (PerfUnavailable).
        `run` calls it if nobody did; `close` closes what it opened if `run` never comes."""
        if not self._engine_chosen:
            self._kernel = self._kernel_sampling()
            self._engine_chosen = True
            self.stats.engine = "perf" if self._kernel is not None else "ptrace"
        return self.stats.engine

    def close(self) -> None:
        if self._pin is not None:
            self._pin.close()
        kernel, self._kernel = self._kernel, None
        if kernel is not None:
            kernel.close()

    def _kernel_sampling(self) -> PerfSampling | None:
        """A PerfSampling for `run`, or None to pause threads with ptrace instead."""
        cfg = self.cfg
        plain = not (cfg.idle or cfg.nonblocking or cfg.native)
        if cfg.engine == "ptrace" or (cfg.engine == "auto" and not plain):
            return None
        rate = cfg.rate
        ps = PerfSampling(rate, drain_interval=_drain_interval(rate))  # opens nothing yet
        try:
            for tid in self._threads(time.monotonic()):
                ps.add(tid)
            if not ps.tids and self.t.proc.tids():
                raise PerfUnavailable("no thread of the target could be sampled")
        except PerfUnavailable as e:
            ps.close()
            if cfg.engine == "perf":
                raise
            self.stats.fallback = str(e)
            return None
        except BaseException:
            ps.close()
            raise
        return ps

    def _from_kernel(self, raw: list[KernelSample], start_ns: int) -> list[Sample]:
        """Samples from what the kernel recorded: the goroutine from Go's g register (R14 in
        Go code) or m.curg, then the same walk as a ptrace sample, on the kernel's stack copy."""
        if not raw:
            return []
        raw.sort(key=_by_time)
        now = time.monotonic()
        self._gs.refresh_for({k.tid for k in raw}, now)
        ms = self._gs.ms
        mine = [k for k in raw if k.tid in ms]
        self.stats.errors += len(raw) - len(mine)  # threads the Go runtime does not own
        caps = [(ms[k.tid], StopCapture.from_kernel(k)) for k in mine]
        gs = self._gs.by_capture(caps)
        out: list[Sample] = []
        for k, (m, cap), g in zip(mine, caps, gs, strict=True):
            if g is False:
                self.stats.errors += 1
                continue
            frames = self._walk_capture(m, g, cap)  # type: ignore[arg-type]
            if not frames:
                self.stats.errors += 1
                continue
            out.append(self._labelled(Sample(max(0, k.time_ns - start_ns), g.goid if g else 0, k.tid, "running",
                                             frames), g))
        self._resolve_labels()
        return out


class KernelPoller:
    """One step at a time of the perf engine: read what the kernel sampled, keep the set of
    sampled threads up to date, jitter their periods. `PerfEngine` (goflame/engine.py) calls
    `poll` every drain interval, for `Sampler.run` and `top` alike."""

    def __init__(self, sampler: Sampler, ps: PerfSampling) -> None:
        self.sampler = sampler
        self.ps = ps
        st = sampler.stats
        st.engine = "perf"
        self.start = time.monotonic()
        self.start_ns = st.zero_ns = time.monotonic_ns()
        st.started = time.time()
        self.period = 1e9 / sampler.cfg.rate
        self.interval = _drain_interval(sampler.cfg.rate)
        self._cpu: dict[int, int] = {}  # tid -> its task-clock count when last read
        self._jitter_at: dict[int, float] = {}  # tid -> when its sampling period is next changed
        self._cpu_read = 0.0

    def poll(self, final: bool = False) -> tuple[list[Sample], bool]:
        """(the samples the kernel took since the last poll, whether the target is gone)."""
        s, ps, st = self.sampler, self.ps, self.sampler.stats
        now = time.monotonic()
        ended = False
        gone: set[int] = set()
        if now - s._tids_time > TIDS_REFRESH_S or final:
            tids = self._threads(now)
            ended = not tids  # what it sampled before is still read
            gone = ps.tids - tids
        if final or ended or gone or now - self._cpu_read > 0.5:
            self._read_cpu(now)
        raw, lost = ps.drain()  # after reading the counts: every sample counted is here
        if ps.execed:
            st.end, ended = TargetEnd.EXECED, True
        for tid in gone:
            ps.remove(tid)
            self._jitter_at.pop(tid, None)
        st.missed += lost
        st.missed_s += lost * self.period / 1e9
        st.ticks += 1
        try:
            samples = s._from_kernel(raw, self.start_ns)
        except ProcessGone as e:  # exited: its memory went with it, and these samples too
            st.target_gone(e, s.t.proc.memory.ended_by_exec())
            samples, ended = [], True
        st.samples += len(samples)
        self._jitter(now)
        st.elapsed = time.monotonic() - self.start
        return samples, ended

    def _threads(self, now: float) -> set[int]:
        """The target's threads now; new ones get an event (checked to be the target's after
        the open: an id may have gone to another process since it was listed)."""
        s, ps = self.sampler, self.ps
        try:
            tids = set(s._threads(now))
        except ProcessGone as e:
            s.stats.target_gone(e, s.t.proc.memory.ended_by_exec())
            return set()
        for tid in tids - ps.tids:
            if ps.add(tid) and not s.t.proc.owns(tid):
                ps.remove(tid)
        return tids

    def _read_cpu(self, now: float) -> None:
        for tid in self.ps.tids:
            c = self.ps.cpu_ns(tid)
            if c is not None:
                self._cpu[tid] = c
        self.sampler.stats.cpu_ns = sum(self._cpu.values())
        self._cpu_read = now

    def _jitter(self, now: float) -> None:
        """Each thread's sampling frequency is drawn again every JITTER_S or so, within
        +-JITTER of the rate (mean exactly the rate, so counts stay CPU time): a loop whose
        period locks to the sampling period is seen at a new phase each time. Not more often:
        a new period starts from zero, so the CPU time since the thread's last sample goes
        unsampled (half a period on average: 0.5 % of the samples of a thread on a CPU half
        the time, at 100 Hz)."""
        rng, jitter_at = self.sampler._rng, self._jitter_at
        for tid in self.ps.tids:
            if now >= jitter_at.get(tid, 0.0):
                if tid in jitter_at:
                    self.ps.jitter(tid, int(self.period / (1 + JITTER * (2 * rng.random() - 1))))
                jitter_at[tid] = now + JITTER_S * (0.5 + rng.random())

    def close(self) -> None:
        self.ps.close()


def _label_reader(target: Target) -> LabelReader | None:
    """The target's label reader, or None where this Go release's labels cannot be read."""
    try:
        return target.labels
    except GoflameError:
        return None


def _kept(items: Iterable[int], into: list[int]) -> Iterator[int]:
    """`items`, each also appended to `into` as it passes."""
    for x in items:
        into.append(x)
        yield x




def _by_time(k: KernelSample) -> int:
    return k.time_ns


JITTER_S = 2.0  # perf: how often (on average) a thread's sampling frequency is drawn again
JITTER = 0.1  # perf: within this share of the rate


def _drain_interval(rate: float) -> float:
    """How often the kernel's buffers are read: every 50 ms, or every 5 samples of a thread
    that is always on a CPU at high rates (PerfSampling sizes its rings for that)."""
    return min(0.05, 5.0 / rate)


# A sampler behind its ticks by more than this (a stall of the machine, not one slow tick)
# counts the ticks beyond it as missed, and says so (`SamplerStats.missed`).
CATCH_UP_S = 0.02


class TickClock:
    """When the next tick is due: jittered ticks, and the ticks the sampler could not take;
    shared by record and top.

    A tick is never taken late. One that falls due while the sampler is still busy with the
    last (a stop that waited behind another thread for its CPU, a slow write) is skipped, and
    the next is drawn afresh from the moment the sampler is free (`not_before`). Taken at once
    instead, a late tick sampled the moment the contention that held the sampler ended, not a
    moment independent of what the target does: on tests/fixtures/allocgc the slow ticks came
    while the GC's mark workers kept both CPUs busy, and the ticks taken right after them put
    the GC's marking 3 points under perf's share (docs/accuracy.md). A skipped tick loses no
    CPU time: each thread's time is credited as it runs (goflame/credit.py) and its next
    sample carries it as weight. A sampler behind by more than CATCH_UP_S also counts the
    ticks beyond it as missed.
    """

    def __init__(self, rate: float, stats: SamplerStats, rng: random.Random, start: float):
        self.interval = 1.0 / rate
        self.catch_up = max(CATCH_UP_S, self.interval)
        self.stats = stats
        self.rng = rng
        self.next = start

    def take(self, now: float) -> None:
        """A tick is taken at `now` (its wakeup may still come late: counted, not made up)."""
        lag = now - self.next
        st = self.stats
        st.max_lag_s = max(st.max_lag_s, lag)
        if lag > self.interval:
            st.late += 1

    def not_before(self, ready: float) -> None:
        """The sampler can take no tick before `ready`: a tick due earlier is skipped, and the
        next one drawn afresh, a jittered interval after `ready`."""
        behind = ready - self.next
        if behind <= 0:
            return
        st = self.stats
        st.skipped += math.ceil(behind / self.interval)
        st.max_lag_s = max(st.max_lag_s, behind)
        if behind > self.catch_up:
            lost = math.ceil((behind - self.catch_up) / self.interval)
            st.missed += lost
            st.missed_s += lost * self.interval
        self.next = ready + self.interval * (0.5 + self.rng.random())

    def advance(self) -> None:
        """Schedule the next tick, jittered by up to ±50 % so periodic work is not aliased."""
        self.next += self.interval * (0.5 + self.rng.random())
