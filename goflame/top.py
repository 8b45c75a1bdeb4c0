"""`goflame top`: a live view of where a Go process spends its time.

Two views, like py-spy's top plus what a Go service needs:
- functions: %Own / %Total over the last refresh (what it does *now*), own / total time
  accumulated since start or the last reset (where the time *went*). Own = the innermost
  frame of a sample, total = anywhere in its stack, counted once per sample (recursion too).
- goroutines: goroutines grouped by start function with counts per state, the most common
  wait reason and the growth since the view started, so a leak stands out at a glance.

Terminal: curses from the standard library, not rich. top needs key input (single keys, a
typed filter, Esc) and raw terminal modes, which curses owns and rich's Live does not (we
would hand-roll termios around it); curses sends only the cells that changed, where a rich
Table is laid out in Python on every refresh, and that CPU is charged to the same process
that samples; and it adds no dependency. `curses.endwin()` in a `finally` restores the
terminal on every exit path: q, Ctrl-C, SIGTERM, the target exiting, an exception.

Cost model: sampling runs in this process on the sampler's clock. Per sample, top only
counts the stack under a key of frame ids (frames are cached per pc by the symbolizer, so
the key is built in C); once per refresh the distinct stacks of the interval are folded
into per-function counts and the runtime is read for goroutine states. Rendering happens
at most once per refresh, plus once per key press.
"""

from __future__ import annotations

import contextlib
import locale
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any

from goflame.dump import goroutine_groups, label_groups
from goflame.engine import SamplingEngine
from goflame.errors import BadInput, GoflameError, ProcessGone
from goflame.frame import Frame
from goflame.lifecycle import Signals, Watch, attach_launched, finish_child, launch
from goflame.process.procfs import CLOCK_TICKS
from goflame.profile import RUNNING, Sample
from goflame.runtime import STATUS_TEXT, Goroutine, is_system_goroutine
from goflame.sampler import Sampler, SamplerConfig
from goflame.target import Target
from goflame.unwind.stop import Stop

VIEWS = ("functions", "goroutines")
FUNCTION_SORTS = ("%Own", "%Total", "OwnTime", "TotalTime")
GROUP_SORTS = ("Count", "Delta", "Running", "Waiting")
PLAIN_ROWS = 40  # rows per view in a plain-text snapshot
MAX_STACKS = 100_000  # distinct stacks remembered before the cache is dropped (counts stay)
STATE_CATEGORIES = ("running", "runnable", "waiting", "syscall")

KEY_HINTS = "1-4 sort  l lines  g goroutines  / filter  r reset  ? help  q quit"
HELP = """\
goflame top: keys

  1 2 3 4   sort by %Own, %Total, OwnTime, TotalTime
            (goroutines view: Count, Delta, Running, Waiting)
  l         toggle granularity: one row per function / per source line
  g         switch between the functions and the goroutines view
  /         filter rows by substring: type, Enter to apply, Esc to cancel
            (an empty filter, or Esc outside the prompt, shows everything again)
  r         reset the counts (time, samples, goroutine growth)
  ?         this help (any key closes it)
  q         quit (Ctrl-C too)

Columns
  %Own      share of the samples of the last refresh with this function innermost
  %Total    share of the samples of the last refresh with this function anywhere
  OwnTime   time spent in the function itself since the start (or the last reset)
  TotalTime time spent in the function and everything it called
  function (file:line)   the declaring line in the functions view, the sampled
            line with l. With --idle, a goroutine off the CPU ends in [its state].
  Delta     goroutines in the group now minus when the view started (leaks grow)
"""


@dataclass(frozen=True, slots=True)
class TopOptions:
    pid: int | None = None
    command: tuple[str, ...] = ()
    rate: float = 100.0
    idle: bool = False
    nonblocking: bool = False
    delay: float = 1.0  # seconds between refreshes
    once: bool = False
    view: str = "functions"
    lines: bool = False
    filter: str = ""  # what `/` would set: rows whose label contains it (case-insensitive)
    native: bool = False  # unwind C frames too (cgo, libc, vDSO)
    engine: str = "auto"  # how running threads are sampled: see SamplerConfig.engine
    group_label: str | None = None  # goroutines view: group by this pprof label's value
    tags: tuple[tuple[str, str], ...] = ()  # functions view: only samples with these pprof labels


@dataclass(frozen=True, slots=True)
class FunctionRow:
    function: str
    where: str  # "file.go:12" or "" (native code, synthetic frames)
    own_pct: float
    total_pct: float
    own_s: float
    total_s: float

    @property
    def label(self) -> str:
        return f"{self.function} ({self.where})" if self.where else self.function


@dataclass(frozen=True, slots=True)
class GroupRow:
    start: str  # the goroutines' start function
    count: int
    delta: int  # count now minus count when the view started (or was reset)
    running: int
    runnable: int
    syscall: int
    waiting: int
    reason: str  # most common wait reason among the waiting ones ("" if none wait)
    other_reasons: int  # how many other wait reasons the group has

    @property
    def reason_text(self) -> str:
        return self.reason + (f" (+{self.other_reasons} other)" if self.other_reasons else "")


@dataclass(frozen=True, slots=True)
class Status:
    """What the header shows; one per refresh."""

    pid: int
    binary: str
    go_version: str
    uptime_s: float
    mode: str
    rate: float
    samples: int  # since start or reset
    window_samples: int  # during the last refresh
    window_s: float
    achieved_hz: float
    on_cpu: float  # goroutines sampled per tick in the last refresh (CPU mode: busy CPUs)
    errors: int
    goroutines: int
    runtime_goroutines: int
    by_state: dict[str, int]
    threads: int
    gomaxprocs: int
    exited: bool = False

    @property
    def error_rate(self) -> float:
        tried = self.samples + self.errors
        return 100.0 * self.errors / tried if tried else 0.0


@dataclass(slots=True)
class ViewState:
    """What the user chose with keys."""

    view: str = "functions"
    lines: bool = False
    filter: str = ""  # what `/` would set: rows whose label contains it (case-insensitive)
    sort: int = 0  # index into FUNCTION_SORTS
    group_sort: int = 0  # index into GROUP_SORTS
    filter: str = ""
    help: bool = False
    typing: str | None = None  # the filter being typed after '/', None when not typing


@dataclass(slots=True)
class TopResult:
    pid: int
    target_exited: bool = False
    exit_status: int | None = None  # a launched command's exit status
    command_log: str | None = None  # where a launched command's output went (interactive mode)
    snapshots: int = 0
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# the functions model


def state_category(state: str) -> str:
    """running / runnable / waiting / syscall, from the traceback wording of a state."""
    if state in ("running", "copystack"):
        return "running"
    if state in ("runnable", "preempted"):
        return "runnable"
    if state == "syscall":
        return "syscall"
    return "waiting"


class FunctionCounts:
    """Own and total sample counts per function and per source line.

    `add` runs per sample batch and only counts stacks (key: state + frame ids, built in C);
    `fold` runs per refresh and spreads the distinct stacks of the interval over functions.
    The frames of every remembered stack are kept alive, so their ids cannot be reused.
    """

    def __init__(self, declared_line: Callable[[Frame], int] = lambda f: 0, *, state_leaves: bool = False):
        self._declared_line = declared_line
        self._state_leaves = state_leaves
        self._pending: dict[tuple[Any, ...], int] = {}
        self._new: dict[tuple[Any, ...], Sample] = {}
        self._stacks: dict[tuple[Any, ...], tuple[int, tuple[int, ...], int, tuple[int, ...], Sample]] = {}
        # per function: name, a frame (for file and declared line), counts
        self._fn_index: dict[str, int] = {}
        self._fn_frame: list[Frame | None] = []
        self._fn_where: list[str | None] = []
        self._ln_index: dict[tuple[str, str, int], int] = {}
        self._ln_key: list[tuple[str, str, int]] = []
        self.own_f: list[int] = []
        self.tot_f: list[int] = []
        self.own_l: list[int] = []
        self.tot_l: list[int] = []
        self.win_own_f: dict[int, int] = {}
        self.win_tot_f: dict[int, int] = {}
        self.win_own_l: dict[int, int] = {}
        self.win_tot_l: dict[int, int] = {}
        self.samples = 0  # folded, since start or reset
        self.window_samples = 0  # folded in the last fold
        self.pending_samples = 0

    def add(self, samples: Sequence[Sample]) -> None:
        pending, stacks, new = self._pending, self._stacks, self._new
        get = pending.get
        n = 0
        for s in samples:
            k = (s.state, *map(id, s.frames))
            c = get(k)
            w = s.weight  # a ptrace sample may stand for several intervals (CreditScheduler.frozen_first)
            n += w
            if c is None:
                pending[k] = w
                if k not in stacks and k not in new:
                    new[k] = s  # keeps its frames alive until folded
            else:
                pending[k] = c + w
        self.pending_samples += n

    # -- interning --------------------------------------------------------------------------------
    def _function(self, name: str, frame: Frame | None) -> int:
        i = self._fn_index.get(name)
        if i is None:
            i = self._fn_index[name] = len(self._fn_frame)
            self._fn_frame.append(frame)
            self._fn_where.append(None)
            self.own_f.append(0)
            self.tot_f.append(0)
        elif frame is not None and not frame.inlined:
            known = self._fn_frame[i]
            if known is None or known.inlined:
                self._fn_frame[i] = frame  # an out-of-line frame knows its declaring line
                self._fn_where[i] = None
        return i

    def _line(self, key: tuple[str, str, int]) -> int:
        i = self._ln_index.get(key)
        if i is None:
            i = self._ln_index[key] = len(self._ln_key)
            self._ln_key.append(key)
            self.own_l.append(0)
            self.tot_l.append(0)
        return i

    def _describe(self, s: Sample) -> tuple[int, tuple[int, ...], int, tuple[int, ...], Sample]:
        fs = [self._function(f.function, f) for f in s.frames]
        ls = [self._line((f.function, f.file, f.line)) for f in s.frames]
        if self._state_leaves and s.state != RUNNING:
            leaf = f"[{s.state}]"
            fs.insert(0, self._function(leaf, None))
            ls.insert(0, self._line((leaf, "", 0)))
        return fs[0], tuple(dict.fromkeys(fs)), ls[0], tuple(dict.fromkeys(ls)), s

    # -- per refresh ------------------------------------------------------------------------------
    def fold(self) -> None:
        """Move the samples counted since the last fold into the per-function counts."""
        stacks = self._stacks
        for k, s in self._new.items():
            stacks[k] = self._describe(s)
        self._new.clear()
        own_f, tot_f, own_l, tot_l = self.own_f, self.tot_f, self.own_l, self.tot_l
        w_own_f: dict[int, int] = {}
        w_tot_f: dict[int, int] = {}
        w_own_l: dict[int, int] = {}
        w_tot_l: dict[int, int] = {}
        for k, c in self._pending.items():
            of, tf, ol, tl, _ = stacks[k]
            own_f[of] += c
            w_own_f[of] = w_own_f.get(of, 0) + c
            own_l[ol] += c
            w_own_l[ol] = w_own_l.get(ol, 0) + c
            for i in tf:
                tot_f[i] += c
                w_tot_f[i] = w_tot_f.get(i, 0) + c
            for i in tl:
                tot_l[i] += c
                w_tot_l[i] = w_tot_l.get(i, 0) + c
        self.win_own_f, self.win_tot_f, self.win_own_l, self.win_tot_l = w_own_f, w_tot_f, w_own_l, w_tot_l
        self.window_samples = self.pending_samples
        self.samples += self.pending_samples
        self.pending_samples = 0
        self._pending.clear()
        if len(stacks) > MAX_STACKS:
            stacks.clear()  # nothing pending refers to them now

    def reset(self) -> None:
        """Forget the counts (not the interned names: they are only a cache)."""
        self._pending.clear()
        self._new.clear()
        for counts in (self.own_f, self.tot_f, self.own_l, self.tot_l):
            counts[:] = [0] * len(counts)
        self.win_own_f, self.win_tot_f, self.win_own_l, self.win_tot_l = {}, {}, {}, {}
        self.samples = self.window_samples = self.pending_samples = 0

    def _where(self, i: int) -> str:
        w = self._fn_where[i]
        if w is None:
            f = self._fn_frame[i]
            if f is None or not f.file:
                w = ""
            else:
                line = 0 if f.inlined else self._declared_line(f)
                base = f.file.rsplit("/", 1)[-1]
                w = f"{base}:{line}" if line else base
            self._fn_where[i] = w
        return w

    def rows(self, *, lines: bool, sort: int, text: str = "", seconds_per_sample: float = 0.0,
             limit: int | None = None) -> tuple[list[FunctionRow], int]:
        """(rows sorted by column `sort` of FUNCTION_SORTS, how many matched before `limit`)."""
        if lines:
            own, tot, w_own, w_tot = self.own_l, self.tot_l, self.win_own_l, self.win_tot_l
            names = [(fn, f"{fl.rsplit('/', 1)[-1]}:{ln}" if fl else "") for fn, fl, ln in self._ln_key]
        else:
            own, tot, w_own, w_tot = self.own_f, self.tot_f, self.win_own_f, self.win_tot_f
            names = [(fn, self._where(i)) for fn, i in self._fn_index.items()]  # in index order
        win = self.window_samples or 1
        needle = text.lower()
        out = []
        for i, (fn, where) in enumerate(names):
            if not tot[i] and not w_tot.get(i):
                continue
            row = FunctionRow(fn, where, 100.0 * w_own.get(i, 0) / win, 100.0 * w_tot.get(i, 0) / win,
                              own[i] * seconds_per_sample, tot[i] * seconds_per_sample)
            if needle and needle not in row.label.lower():
                continue
            out.append((row, own[i], tot[i]))
        key: Callable[[tuple[FunctionRow, int, int]], tuple[Any, ...]] = [
            lambda r: (-r[0].own_pct, -r[1], -r[2], r[0].label),
            lambda r: (-r[0].total_pct, -r[2], -r[1], r[0].label),
            lambda r: (-r[1], -r[0].own_pct, -r[2], r[0].label),
            lambda r: (-r[2], -r[0].total_pct, -r[1], r[0].label),
        ][sort]
        out.sort(key=key)
        rows = [r for r, _, _ in out]
        return (rows if limit is None else rows[:limit]), len(rows)


# ---------------------------------------------------------------------------------------------
# the goroutines model


class GroupCounts:
    """Goroutine groups of the latest runtime snapshot, and their growth since a baseline."""

    def __init__(self) -> None:
        self.groups: dict[str, Counter[str]] = {}
        self._baseline: dict[str, int] | None = None

    def update(self, groups: dict[str, Counter[str]]) -> None:
        self.groups = groups
        if self._baseline is None:
            self._baseline = {name: sum(c.values()) for name, c in groups.items()}

    def reset(self) -> None:
        self._baseline = None
        if self.groups:
            self.update(self.groups)

    def rows(self, *, sort: int, text: str = "", limit: int | None = None) -> tuple[list[GroupRow], int]:
        base = self._baseline or {}
        needle = text.lower()
        out = []
        for name, states in self.groups.items():
            cat: Counter[str] = Counter()
            reasons: Counter[str] = Counter()
            for st, n in states.items():
                c = state_category(st)
                cat[c] += n
                if c == "waiting":
                    reasons[st] += n
            top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
            count = sum(states.values())
            row = GroupRow(name, count, count - base.get(name, 0), cat["running"], cat["runnable"],
                           cat["syscall"], cat["waiting"], top[0][0] if top else "", max(len(top) - 1, 0))
            if needle and needle not in name.lower() and needle not in row.reason_text.lower():
                continue
            out.append(row)
        key: Callable[[GroupRow], tuple[Any, ...]] = [
            lambda r: (-r.count, r.start),
            lambda r: (-r.delta, -r.count, r.start),
            lambda r: (-r.running, -r.runnable, -r.count, r.start),
            lambda r: (-r.waiting, -r.count, r.start),
        ][sort]
        out.sort(key=key)
        return (out if limit is None else out[:limit]), len(out)


# ---------------------------------------------------------------------------------------------
# rendering: plain text lines, shared by the snapshot printer and the curses screen


def fmt_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.2f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def fmt_uptime(s: float) -> str:
    s = max(0, int(s))
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def header_lines(st: Status, vs: ViewState) -> list[str]:
    states = ", ".join(f"{st.by_state.get(c, 0)} {c}" for c in STATE_CATEGORIES)
    sort = GROUP_SORTS[vs.group_sort] if vs.view == "goroutines" else FUNCTION_SORTS[vs.sort]
    grain = "" if vs.view == "goroutines" else ("  by line" if vs.lines else "  by function")
    filt = f"  filter {vs.filter!r}" if vs.filter else ""
    exited = "  [process exited]" if st.exited else ""
    return [
        f"goflame top  pid {st.pid}  {st.binary}  {st.go_version}  up {fmt_uptime(st.uptime_s)}  "
        f"{time.strftime('%H:%M:%S')}{exited}",
        f"Samples {st.samples:,} (+{st.window_samples:,} in {st.window_s:.1f} s, {st.achieved_hz:.0f} Hz "
        f"{st.mode} at {st.rate:g} Hz)  errors {st.error_rate:.1f}%  "
        + (f"on CPU {st.on_cpu:.2f}" if st.mode.startswith("cpu") else f"goroutines per tick {st.on_cpu:.1f}"),
        f"Goroutines {st.goroutines} ({st.runtime_goroutines} runtime): {states}  "
        f"Threads {st.threads}  GOMAXPROCS {st.gomaxprocs}",
        f"View {vs.view}  sort {sort}{grain}{filt}",
    ]


FUNCTION_HEADER = "  %Own  %Total   OwnTime  TotalTime  Function (file:line)"


def function_line(r: FunctionRow) -> str:
    return f"{r.own_pct:5.1f}% {r.total_pct:6.1f}% {fmt_seconds(r.own_s):>9} {fmt_seconds(r.total_s):>10}  {r.label}"


def group_lines(rows: Sequence[GroupRow]) -> list[str]:
    width = min(max((len(r.start) for r in rows), default=14), 70)
    head = f"{'Count':>6} {'Delta':>6} {'Running':>7} {'Runnable':>8} {'Syscall':>7} {'Waiting':>7}  " \
           f"{'Start function':<{width}}  Most common wait reason"
    out = [head]
    for r in rows:
        out.append(f"{r.count:>6} {r.delta:>+6} {r.running:>7} {r.runnable:>8} {r.syscall:>7} {r.waiting:>7}  "
                   f"{r.start:<{width}}  {r.reason_text}")
    return out


# ---------------------------------------------------------------------------------------------
# the session: sampler + models + runtime snapshots


class TopSession:
    """One target being watched: samples on its clock, refreshes on the display's."""

    def __init__(self, target: Target, opts: TopOptions, child: subprocess.Popen | None = None):
        self.t = target
        self.opts = opts
        self.child = child
        self.engine: SamplingEngine | None = None  # how running threads are sampled (start_engine)
        self.sampler = Sampler(target, SamplerConfig(rate=opts.rate, idle=opts.idle, native=opts.native, engine=opts.engine,
                                                     nonblocking=opts.nonblocking))
        bias = target.reader.bias
        pcln = target.binary.pclntab

        def declared_line(f: Frame) -> int:
            fn = pcln.find_func(f.pc - bias) if f.pc else None
            return fn.start_line if fn is not None and fn.name == f.function else 0

        self.functions = FunctionCounts(declared_line, state_leaves=opts.idle)
        self.groups = GroupCounts()
        self.view = ViewState(view=opts.view, lines=opts.lines, filter=opts.filter)
        self._start_names: dict[int, str] = {}
        self._system: dict[int, bool] = {}
        self.exited = False
        self.ticks = 0
        self._window_ticks = 0
        self._base_errors = 0
        self._reset_at = time.monotonic()
        self._window_start = self._reset_at
        self._window_s = 0.0
        self.status: Status | None = None
        self._rng = random.Random()

    # -- sampling ---------------------------------------------------------------------------------
    def start_engine(self) -> str:
        """Choose how running threads are sampled, as `record` does: perf where the kernel
        allows it (nothing of the target is stopped), else ptrace; the reason perf was not
        used is in `sampler.stats.fallback`."""
        self.engine = self.sampler.open_engine()
        return self.engine.name

    def _tagged(self, samples: list[Sample]) -> list[Sample]:
        if not self.opts.tags:
            return samples
        want = set(self.opts.tags)
        return [s for s in samples if want <= set(s.labels)]

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        self.sampler.close()

    def waking(self) -> AbstractContextManager[None]:
        """Where the loop sleeps: real-time only for the ptrace engine's ticks (`CpuPin`)."""
        return self.engine.waking() if self.engine is not None else contextlib.nullcontext()

    def ordinary(self) -> None:
        """Woken for a key or a refresh, not for a step: back to normal priority."""
        if self.engine is not None:
            self.engine.ordinary()

    def step(self, now: float) -> None:
        """One step of the engine: its samples counted, the target's end noted."""
        assert self.engine is not None
        batch = self.engine.step(now)
        if batch.gone:
            self.exited = True
        self.ticks += batch.intervals
        self._window_ticks += batch.intervals
        if batch.samples:
            self.functions.add(self._tagged(batch.samples))

    def target_gone(self) -> bool:
        if self.child is not None and self.child.poll() is not None:
            return True
        return not self.t.proc.alive()

    # -- per refresh ------------------------------------------------------------------------------
    def refresh(self) -> Status:
        now = time.monotonic()
        window_ticks = self._window_ticks
        self.functions.fold()
        self._window_s = now - self._window_start
        self._window_start = now
        self._window_ticks = 0
        if not self.exited and self.target_gone():
            self.exited = True
        snap = None
        if not self.exited:
            try:
                snap = self.t.snapshot()
            except ProcessGone:
                self.exited = True
            except GoflameError:
                snap = None  # torn read: keep the last goroutine figures
        prev = self.status
        if snap is not None:
            reader = self.t.reader
            user = []
            by_state: Counter[str] = Counter()
            for g in snap.goroutines:
                sysg = self._system.get(g.start_pc)
                if sysg is None:
                    sysg = self._system[g.start_pc] = is_system_goroutine(self.t.binary, g, reader.bias)
                if not sysg:
                    user.append(g)
                by_state[_category_of_status(g.status)] += 1
            unresolved = self._name_wrapped_starts(user)
            if self.opts.group_label:
                self.groups.update(label_groups(self.t, user, self.opts.group_label))
            else:
                self.groups.update(goroutine_groups(self.t, user, self._start_names))
            for pc in unresolved:
                self._start_names.pop(pc, None)  # try again at the next refresh
            goroutines, runtime_gs, gomaxprocs = len(snap.goroutines), len(snap.goroutines) - len(user), \
                snap.gomaxprocs
            states = dict(by_state)
        elif prev is not None:
            goroutines, runtime_gs, gomaxprocs, states = (prev.goroutines, prev.runtime_goroutines,
                                                          prev.gomaxprocs, prev.by_state)
        else:
            goroutines = runtime_gs = gomaxprocs = 0
            states = {}
        threads = prev.threads if prev else 0
        uptime = prev.uptime_s + self._window_s if prev else 0.0
        if not self.exited:
            with contextlib.suppress(GoflameError, OSError):
                threads = len(self.t.proc.tids())
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open("/proc/uptime") as f:
                    uptime = float(f.read().split()[0]) - self.t.proc.starttime / CLOCK_TICKS
        fc = self.functions
        self.status = Status(
            pid=self.t.pid, binary=self.t.exe_display, go_version=self.t.binary.go_version or "go?",
            uptime_s=uptime, mode=self.mode, rate=self.opts.rate,
            samples=fc.samples, window_samples=fc.window_samples, window_s=self._window_s,
            achieved_hz=window_ticks / self._window_s if self._window_s > 0 else 0.0,
            on_cpu=fc.window_samples / window_ticks if window_ticks else 0.0,
            errors=self.sampler.stats.errors - self._base_errors, goroutines=goroutines,
            runtime_goroutines=runtime_gs, by_state=states, threads=threads, gomaxprocs=gomaxprocs,
            exited=self.exited,
        )
        return self.status

    def _name_wrapped_starts(self, user: Sequence[Goroutine]) -> set[int]:
        """Name goroutines started through a compiler wrapper after the function it wraps.

        `go f(x)` starts a generated `gowrapN` that calls f; the runtime's tracebacks elide
        wrappers, so its dump shows f as the goroutine's outermost frame: so does top. The
        name comes from one goroutine's stack, once per start pc. Returns pcs left unnamed.
        """
        sym = self.t.stacks.symbolizer
        pcln = self.t.binary.pclntab
        bias = self.t.reader.bias
        unresolved: set[int] = set()
        for g in user:
            pc = g.start_pc
            if pc in self._start_names or pc in unresolved:
                continue
            fn = pcln.find_func(pc - bias) if pc else None
            if fn is None or not sym.is_wrapper(fn.func_id):
                continue
            try:
                stack = self.t.stacks.collect_one(g)
            except GoflameError:
                stack = None
            outer = None
            if stack is not None and stack.stop == Stop.TOP:
                for sf in reversed(stack.frames):
                    if not sym.is_wrapper(sf.func_id) and sf.frame.function != "runtime.goexit":
                        outer = sf.frame.function
                        break
            if outer is None:
                unresolved.add(pc)
            else:
                self._start_names[pc] = outer
        return unresolved

    def reset(self) -> None:
        self.functions.reset()
        self.groups.reset()
        self.ticks = 0
        self._window_ticks = 0
        self._base_errors = self.sampler.stats.errors
        self._reset_at = self._window_start = time.monotonic()
        if self.status is not None:
            self.status = replace(self.status, samples=0, window_samples=0, errors=0, on_cpu=0.0)

    @property
    def mode(self) -> str:
        return ("wall" if self.opts.idle else "cpu") + (", nonblocking" if self.opts.nonblocking else "")

    @property
    def seconds_per_sample(self) -> float:
        """The mean tick interval actually achieved: each sample stands for that much time."""
        elapsed = time.monotonic() - self._reset_at
        return elapsed / self.ticks if self.ticks else 1.0 / self.opts.rate

    # -- text -------------------------------------------------------------------------------------
    def body_lines(self, limit: int | None) -> list[str]:
        vs = self.view
        if vs.view == "goroutines":
            rows, n = self.groups.rows(sort=vs.group_sort, text=vs.filter, limit=limit)
            out = group_lines(rows)
        else:
            frows, n = self.functions.rows(lines=vs.lines, sort=vs.sort, text=vs.filter,
                                           seconds_per_sample=self.seconds_per_sample, limit=limit)
            out = [FUNCTION_HEADER, *map(function_line, frows)]
        if n > len(out) - 1:
            out.append(f"  ... {n - (len(out) - 1)} more")
        if n == 0:
            out.append("  (no samples yet)" if vs.view == "functions" and not vs.filter else "  (nothing matches)")
        return out

    def snapshot_text(self) -> str:
        assert self.status is not None
        return "\n".join([*header_lines(self.status, self.view), "", *self.body_lines(PLAIN_ROWS)]) + "\n"


def _category_of_status(status: int) -> str:
    return state_category(STATUS_TEXT.get(status, "waiting"))


# ---------------------------------------------------------------------------------------------
# the terminal


class Screen:
    """curses, set up and torn down around the session; `restore` runs on every exit path."""

    def __init__(self) -> None:
        import curses

        self.curses = curses
        self.scr: Any = None
        self.styles: dict[str, int] = {}
        self.resized = False
        self._old_winch: Any = None

    def __enter__(self) -> Screen:
        curses = self.curses
        with contextlib.suppress(locale.Error):
            locale.setlocale(locale.LC_ALL, "")
        self.scr = curses.initscr()
        try:
            curses.noecho()
            curses.cbreak()
            self.scr.keypad(True)
            self.scr.nodelay(True)
            with contextlib.suppress(curses.error):
                curses.curs_set(0)
            with contextlib.suppress(AttributeError, curses.error):
                curses.set_escdelay(25)
            bold, rev = curses.A_BOLD, curses.A_REVERSE
            self.styles = {"title": bold, "header": 0, "table": rev, "row": 0, "status": rev}
            self._old_winch = signal.signal(signal.SIGWINCH, self._on_winch)
        except BaseException:
            self.restore()
            raise
        return self

    def _on_winch(self, _signum: int, _frame: object) -> None:
        self.resized = True

    def restore(self) -> None:
        curses = self.curses
        if self._old_winch is not None:
            signal.signal(signal.SIGWINCH, self._old_winch)
            self._old_winch = None
        if self.scr is not None:
            with contextlib.suppress(curses.error):
                self.scr.keypad(False)
            with contextlib.suppress(curses.error):
                curses.curs_set(1)
            with contextlib.suppress(curses.error):
                curses.nocbreak()
                curses.echo()
            with contextlib.suppress(curses.error):
                curses.endwin()
            self.scr = None

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def wait_keys(self, timeout: float) -> list[str | int]:
        """Keys pressed within `timeout` seconds (returns at the first key)."""
        keys: list[str | int] = []
        try:
            ready, _, _ = select.select([sys.stdin], [], [], max(0.0, timeout))
        except (InterruptedError, ValueError):
            ready = []
        if ready or self.resized:
            while True:
                try:
                    k = self.scr.get_wch()
                except self.curses.error:
                    break
                keys.append(k)
        return keys

    def size(self) -> tuple[int, int]:
        if self.resized:
            self.resized = False
            try:
                cols, rows = os.get_terminal_size(sys.stdout.fileno())
                self.curses.resizeterm(rows, cols)
            except (OSError, self.curses.error):
                pass
        return self.scr.getmaxyx()

    def draw(self, lines: Sequence[tuple[str, str]], status: str) -> None:
        h, w = self.size()
        scr = self.scr
        scr.erase()
        for y, (text, style) in enumerate(lines[: max(0, h - 1)]):
            attr = self.styles.get(style, 0)
            with contextlib.suppress(self.curses.error):
                if style in ("table", "status"):
                    text = text.ljust(w)
                scr.addnstr(y, 0, text, max(0, w - 1), attr)
        with contextlib.suppress(self.curses.error):
            scr.addnstr(h - 1, 0, status.ljust(w), max(0, w - 1), self.styles["status"])
        scr.noutrefresh()
        self.curses.doupdate()


def screen_lines(session: TopSession, height: int) -> list[tuple[str, str]]:
    vs = session.view
    assert session.status is not None
    head = header_lines(session.status, vs)
    out = [(head[0], "title"), *[(h, "header") for h in head[1:]], ("", "row")]
    if vs.help:
        return out + [(line, "row") for line in HELP.splitlines()]
    limit = max(1, height - len(out) - 3)
    body = session.body_lines(limit)
    out.append((body[0], "table"))
    out += [(line, "row") for line in body[1:]]
    return out


def status_line(session: TopSession) -> str:
    vs = session.view
    if vs.typing is not None:
        return f"Filter: {vs.typing}_   (Enter apply, Esc cancel)"
    return KEY_HINTS


def handle_key(session: TopSession, key: str | int, curses_mod: Any) -> str | None:
    """Apply one key; returns "quit" to leave, else None."""
    vs = session.view
    if vs.typing is not None:
        if key in ("\n", "\r") or key == curses_mod.KEY_ENTER:
            vs.filter, vs.typing = vs.typing, None
        elif key == "\x1b":
            vs.typing = None
        elif key in ("\x7f", "\b") or key == curses_mod.KEY_BACKSPACE:
            vs.typing = vs.typing[:-1]
        elif key == "\x15":  # Ctrl-U
            vs.typing = ""
        elif isinstance(key, str) and key.isprintable():
            vs.typing += key
        return None
    if key == "q":
        return "quit"
    if vs.help:
        vs.help = False
        return None
    if key == "?":
        vs.help = True
    elif key in ("1", "2", "3", "4"):
        if vs.view == "goroutines":
            vs.group_sort = int(key) - 1
        else:
            vs.sort = int(key) - 1
    elif key == "l":
        vs.lines = not vs.lines
    elif key == "g":
        vs.view = "goroutines" if vs.view == "functions" else "functions"
    elif key == "r":
        session.reset()
    elif key == "/":
        vs.typing = vs.filter
    elif key == "\x1b":
        vs.filter = ""
    return None


# ---------------------------------------------------------------------------------------------
# the loop


@contextlib.contextmanager
def _child_stdio(log_fd: int | None) -> Iterator[None]:
    """While launching: the command's stdin from /dev/null and its output into `log_fd`.

    The screen owns the terminal: a command writing to it would scribble over the view, and
    one reading it would steal keys (or stop on SIGTTIN in its own process group). The
    descriptors are swapped around the fork only, before the screen is set up.
    """
    if log_fd is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        yield
    finally:
        for fd, s in zip((0, 1, 2), saved, strict=True):
            os.dup2(s, fd)
            os.close(s)
        os.close(null)


def _interactive_default(opts: TopOptions) -> bool:
    if opts.once:
        return False
    try:
        return sys.stdin.isatty() and sys.stdout.isatty() and os.environ.get("TERM", "dumb") != "dumb"
    except (AttributeError, ValueError):
        return False


def run_top(opts: TopOptions, *, on_snapshot: Callable[[str], None] = lambda s: None,
            interactive: bool | None = None, on_warning: Callable[[str], None] = lambda s: None) -> TopResult:
    """Watch a process until q, Ctrl-C, SIGTERM or its exit (or one refresh with --once).

    Interactive (a terminal on stdin and stdout): a curses screen. Otherwise each refresh is a
    plain-text snapshot handed to `on_snapshot`.
    """
    if (opts.pid is None) == (not opts.command):
        raise BadInput("give either --pid PID or a command after --")
    if not opts.delay > 0:
        raise BadInput("--delay must be positive")
    if not 1 <= opts.rate <= 10_000:
        raise BadInput(f"rate {opts.rate:g} Hz is out of range (1..10000)")
    if opts.view not in VIEWS:
        raise BadInput(f"unknown view {opts.view!r}: choose functions or goroutines")
    if interactive is None:
        interactive = _interactive_default(opts)
    if interactive:
        try:
            import curses

            curses.setupterm()
        except Exception:  # no usable terminal description: plain snapshots instead
            interactive = False
    result = TopResult(opts.pid or 0)
    child = None
    # No child for the Watch: top is a viewer, so the first Ctrl-C or SIGTERM ends it at once
    # (record forwards it and keeps recording the command's shutdown); a launched command is
    # then finished as record finishes it.
    watch = Watch()
    with watch.handlers(hangup=True):  # from before the launch, as record: a SIGTERM still finishes the child
        try:
            if opts.command:
                child = _launch(opts.command, result, interactive)
                pid = result.pid = child.pid
            else:
                assert opts.pid is not None
                pid = opts.pid
            target = attach_launched(child) if child is not None else Target(pid)
            with target:
                _watch(TopSession(target, opts, child), opts, result, interactive, on_snapshot, on_warning,
                       watch.signals)
        finally:
            if child is not None:
                result.exit_status = finish_child(child)
            log = result.command_log
            if log is not None and os.path.exists(log) and os.path.getsize(log) == 0:
                os.unlink(log)
                result.command_log = None
    return result


def _launch(command: Sequence[str], result: TopResult, interactive: bool) -> subprocess.Popen:
    """Start the command; on a screen its output goes to a log file (`result.command_log`)."""
    log_fd = None
    if interactive:
        log_fd, result.command_log = tempfile.mkstemp(prefix="goflame-top-", suffix=".log")
    try:
        with _child_stdio(log_fd):
            return launch(command)
    finally:
        if log_fd is not None:
            os.close(log_fd)


def _watch(session: TopSession, opts: TopOptions, result: TopResult, interactive: bool,
           on_snapshot: Callable[[str], None], on_warning: Callable[[str], None], signals: Signals) -> None:
    """Choose the engine, then show refreshes until the end."""
    screen = None
    try:
        session.start_engine()  # a refused --engine perf fails here, before the screen
        fallback = session.sampler.stats.fallback
        if fallback:
            msg = f"{fallback}; sampling with ptrace instead, which stops each sampled thread for tens of µs"
            result.warnings.append(msg)
            on_warning(msg)
        if interactive:
            screen = Screen()
            with screen:
                _ticks(session, opts, signals, result, on_snapshot, screen)
        else:
            _ticks(session, opts, signals, result, on_snapshot, None)
    finally:
        session.close()
    result.target_exited = session.exited
    if session.exited and screen is not None and session.status is not None:
        on_snapshot(session.snapshot_text())  # the last picture outlives the screen


def _ticks(session: TopSession, opts: TopOptions, signals: Signals, result: TopResult,
           on_snapshot: Callable[[str], None], screen: Screen | None) -> None:
    """The engine's steps (ptrace: jittered ticks, missed ticks skipped; perf: reads of the
    kernel's buffers) with refreshes and keys between.

    Waiting happens in select() on the terminal, so a key is handled at once, whatever the rate.
    """
    start = time.monotonic()
    next_refresh = start + opts.delay
    st = session.sampler.stats
    engine = session.engine
    assert engine is not None
    session.refresh()  # goroutines, threads, uptime now: the header has them even if the target exits
    redraw = screen is not None  # a first picture while the samples come in
    while not signals.stop:
        now = time.monotonic()
        if now >= engine.next:
            session.step(now)
            st.elapsed = time.monotonic() - engine.start
            if session.exited:
                next_refresh = now  # say so now
        now = time.monotonic()
        if now >= next_refresh:
            session.refresh()
            next_refresh = max(next_refresh + opts.delay, now + opts.delay / 2)
            if screen is None:
                on_snapshot(session.snapshot_text())
                result.snapshots += 1
                if opts.once:
                    return
            else:
                redraw = True
            if session.exited:
                return
        if redraw and screen is not None:
            h, _ = screen.size()
            screen.draw(screen_lines(session, h), status_line(session))
            redraw = False
        engine.not_before(time.monotonic())  # a tick due during the refresh is skipped, not taken late
        timeout = min(engine.next, next_refresh) - time.monotonic()
        if screen is None:
            if timeout > 0:
                with session.waking():
                    time.sleep(timeout)
                if time.monotonic() < engine.next:
                    session.ordinary()  # woken for a refresh, not for a tick
            continue
        with session.waking():
            keys = screen.wait_keys(timeout)
        if keys or time.monotonic() < engine.next:
            session.ordinary()  # woken for a key or a refresh, not for a tick
        for key in keys:
            if key == screen.curses.KEY_RESIZE:
                screen.resized = True
                redraw = True
                continue
            if handle_key(session, key, screen.curses) == "quit":
                return
            redraw = True
        if screen.resized:
            redraw = True
        if redraw and session.status is None:
            redraw = False  # nothing to show before the first refresh


__all__ = ["FunctionCounts", "FunctionRow", "GroupCounts", "GroupRow", "Status", "TopOptions", "TopResult",
           "TopSession", "run_top"]
