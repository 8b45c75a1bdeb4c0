#!/usr/bin/env python3
"""The sampler: sustained samples/s on 4 CPU-bound goroutines, and what it costs the target.

Target: the workload fixture (bench/fixtures/workload) with 4 CPU-bound workers, GOMAXPROCS=4:
four threads in state R at every tick, each running a real call tree (recursion, inlined
helpers, sort, sha256). Samples go through goflame's own recording writer to a temp file,
as `goflame record` does.

1. Throughput: Sampler.run at 1000 Hz and at 250 Hz, after a 1 s warm-up: samples/s,
   ticks/s, missed ticks / ticks, errors, pause per thread, goflame's own CPU use. Budgets:
   >= 1000 samples/s, < 1 % missed. Baselines in the same run, same threads, flat out for the
   same time: a bare pause loop (Process.pause: interrupt, getregs, detach; nothing read, no
   unwinding) and the sampler at its maximum rate — the ceiling of a ptrace sampler in Python
   here, and how much of it goflame's unwinding and symbolizing keeps.
2. Slowdown: the workload's own ops/s (printed every 100 ms by the target, its own clock)
   in interleaved windows, off/on/off/on/.../off, each `on` compared with the mean of the two
   `off` windows around it so drift in the machine's load cancels. 100 Hz (budget: <= 3 %
   median slowdown), then 1000 Hz for information. goflame's own CPU use is printed too: on a
   2-CPU machine with 4 busy target threads every CPU-second the profiler uses is taken from
   the target, whatever the pauses cost. --pin puts the target on the last CPU and goflame on
   CPU 0 to separate the two.
3. A CPU profile of the sampler at 1000 Hz.

    .venv/bin/python bench/bench_sampler.py [--seconds 5] [--pairs 5] [--pairs-fast 3] [--pin] [--labels]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import benchlib as bl

WORKERS = 4
ENGINE = ["auto"]  # --engine: what record uses by default (perf where allowed), or ptrace
LABELS: list[str] = []  # --labels: ["-labels"], the workers run under pprof labels


@dataclass(frozen=True, slots=True)
class RunFigures:
    seconds: float
    ticks: int
    samples: int
    missed: int
    late: int  # woken more than one interval after their time
    skipped: int  # due while the sampler was busy with the last one: not taken (TickClock)
    errors: int
    max_lag_s: float
    pause_ns: tuple[int, ...]
    held_ns: tuple[int, ...]  # the part of each pause from the stop seen to detach
    cpu: float  # goflame's CPU seconds over the run
    engine: str = "ptrace"  # perf: `ticks` are buffer reads and `missed` samples the kernel lost

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds

    @property
    def cpu_per_tick_us(self) -> float:
        return 1e6 * self.cpu / self.ticks if self.ticks else float("nan")

    @property
    def cpu_per_sample_us(self) -> float:
        return 1e6 * self.cpu / self.samples if self.samples else float("nan")

    @property
    def missed_share(self) -> float:
        """Missed ticks over the ticks the rate asked for (taken + missed); perf: samples the
        kernel lost over the samples it took."""
        if self.engine == "perf":
            return self.missed / (self.samples + self.missed) if self.samples + self.missed else 1.0
        return self.missed / (self.ticks + self.missed) if self.ticks + self.missed else 1.0

    def stopped_share(self, threads: int) -> float:
        """Share of the target threads' time spent stopped by goflame (interrupt to detach)."""
        return sum(self.pause_ns) / 1e9 / (self.seconds * threads)


def sample_for(target, rate: float, seconds: float, out: Path) -> RunFigures:
    """Run goflame's sampler for `seconds`, streaming to a recording as `goflame record` does."""
    from goflame.profile import RecordingMeta, RecordingWriter
    from goflame.sampler import Sampler, SamplerConfig

    sampler = Sampler(target, SamplerConfig(rate=rate, engine=ENGINE[0]))
    meta = RecordingMeta(pid=target.pid, binary=target.exe_display, go_version=target.binary.go_version,
                         rate_hz=rate, start_time=time.time())
    with RecordingWriter(out, meta) as writer, bl.pause_spy(target.proc) as paused:
        c = time.process_time()
        st = sampler.run(writer.add_all, duration=seconds, on_tick=lambda _s: writer.tick())
        cpu = time.process_time() - c
    return RunFigures(st.elapsed, st.ticks, st.samples, st.missed, st.late, st.skipped, st.errors, st.max_lag_s,
                      tuple(st.pause_ns),
                      tuple(p.held_ns for p in paused), cpu, st.engine)


def bare_pauses(target, seconds: float) -> tuple[float, list[int], list[int]]:
    """Pauses per second of the running threads, flat out: no stack read, no unwinding.
    Also returns each pause (interrupt to detach) and its held part (stop seen to detach)."""
    proc = target.proc
    n = 0
    pauses: list[int] = []
    held: list[int] = []
    end = time.monotonic() + seconds
    t0 = time.monotonic()
    while time.monotonic() < end:
        running = [th.tid for th in proc.threads() if th.state == "R"]
        got = proc.pause(running)
        n += len(got)
        pauses += [p.pause_ns for p in got.values()]
        held += [p.held_ns for p in got.values()]
    return n / (time.monotonic() - t0), pauses, held


def schedstat(pid: int) -> tuple[int, int]:
    """(ns on a CPU, ns runnable but waiting for a CPU), summed over the target's threads."""
    run = wait = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                a, b, _ = fh.read().split()
        except (OSError, ValueError):
            continue
        run += int(a)
        wait += int(b)
    return run, wait


def fmt_pauses(ns: tuple[int, ...] | list[int], held: tuple[int, ...] | list[int] = ()) -> str:
    if not ns:
        return "no pauses"
    xs = sorted(ns)
    out = (f"pause median {xs[len(xs) // 2] / 1e3:.0f} us, p90 {xs[int(len(xs) * 0.9)] / 1e3:.0f} us, "
           f"max {xs[-1] / 1e3:.0f} us")
    if held:
        hs = sorted(held)
        out += f" (held: median {hs[len(hs) // 2] / 1e3:.0f} us, max {hs[-1] / 1e3:.0f} us)"
    return out


# -- 1. throughput -------------------------------------------------------------------------------
def bench_throughput(binary: Path, seconds: float, cpus: set[int] | None, tmp: Path, gomaxprocs: int) -> None:
    from goflame.target import Target

    p, _ = bl.start_workload(binary, "-workers", str(WORKERS), *LABELS, gomaxprocs=gomaxprocs, cpus=cpus)
    try:
        bl.section(f"sampler throughput: {WORKERS} CPU-bound goroutines, GOMAXPROCS={gomaxprocs}, pid {p.pid}")
        with Target(p.pid) as t:
            sample_for(t, 1000, 1.0, tmp / "warm.goflame")  # fill the per-pc caches once
            bare_rate, bare, held = bare_pauses(t, seconds / 2)
            print(f"  baseline, bare pause loop flat out: {bare_rate:7.0f} thread pauses/s   {fmt_pauses(bare, held)}"
                  f"   [{bl.load()}]")
            ceil = sample_for(t, 10_000, seconds / 2, tmp / "max.goflame")
            print(f"  goflame sampler flat out (10 kHz asked): {ceil.samples_per_s:7.0f} samples/s at "
                  f"{ceil.ticks / ceil.seconds:.0f} ticks/s, cpu {100 * ceil.cpu / ceil.seconds:.0f} % of a core, "
                  f"{ceil.cpu_per_sample_us:.0f} us cpu/sample   "
                  f"sampler/bare-pause ceiling: {bl.ratio(ceil.samples_per_s, bare_rate)}   {fmt_pauses(ceil.pause_ns, ceil.held_ns)}")
            for rate in (1000, 700, 250):
                r0, w0 = schedstat(p.pid)
                f = sample_for(t, rate, seconds, tmp / f"r{rate}.goflame")
                r1, w1 = schedstat(p.pid)
                cpus_got = (r1 - r0) / 1e9 / f.seconds
                if f.engine == "perf":
                    print(f"  {rate:5d} Hz for {f.seconds:.1f} s (perf): {f.samples_per_s:7.0f} samples/s = "
                          f"{f.samples_per_s / (rate * cpus_got):.3f} x rate x the {cpus_got:.2f} CPUs the target ran on; "
                          f"lost by the kernel {f.missed:,} = {100 * f.missed_share:.2f} %, "
                          f"errors {f.errors} ({100 * f.errors / max(f.samples + f.errors, 1):.2f} %), "
                          f"{f.ticks / f.seconds:.0f} buffer reads/s, cpu {100 * f.cpu / f.seconds:.0f} % of a core "
                          f"({f.cpu_per_sample_us:.0f} us/sample), no pauses   [{bl.load()}]")
                else:
                    print(f"  {rate:5d} Hz for {f.seconds:.1f} s: {f.samples_per_s:7.0f} samples/s, "
                          f"{f.ticks / f.seconds:6.0f} ticks/s ({f.samples / max(f.ticks, 1):.2f} threads/tick), "
                          f"missed {f.missed:,} of {f.ticks + f.missed:,} ticks = {100 * f.missed_share:.2f} % "
                          f"late {f.late:,} = {100 * f.late / max(f.ticks, 1):.2f} %, "
                          f"skipped while busy {f.skipped:,} = {100 * f.skipped / max(f.ticks + f.skipped, 1):.2f} %, "
                          f"errors {f.errors} ({100 * f.errors / max(f.samples + f.errors, 1):.2f} %), "
                          f"max lag {f.max_lag_s * 1e3:.0f} ms, cpu {100 * f.cpu / f.seconds:.0f} % of a core "
                          f"({f.cpu_per_sample_us:.0f} us/sample)   [{bl.load()}]")
                    print(f"  {'':5s}    {fmt_pauses(f.pause_ns, f.held_ns)};  samples/s vs bare-pause ceiling: "
                          f"{bl.ratio(f.samples_per_s, bare_rate)};  the target ran on {cpus_got:.2f} "
                          f"CPUs and its threads waited {(w1 - w0) / 1e9 / f.seconds:.2f} thread-s/s for one")
                    print(f"  {'':5s}    goflame cpu per tick {f.cpu_per_tick_us:.0f} us (a CPU-bound ceiling of "
                          f"{1e6 / f.cpu_per_tick_us:.0f} ticks/s); ticks taken x CPUs the target ran on = "
                          f"{f.ticks / f.seconds * cpus_got:.0f} samples/s expected of an estimator of CPU time")
                if rate * len(cpus or os.sched_getaffinity(p.pid)) >= 1000:  # else 1000/s is out of reach by design
                    bl.budget(f"sampler {rate} Hz, {WORKERS} goroutines, GOMAXPROCS={gomaxprocs}: samples/s",
                              f.samples_per_s, 1000, "/s", higher_is_better=True)
                bl.budget(f"sampler {rate} Hz, GOMAXPROCS={gomaxprocs}: "
                          f"{'samples lost' if f.engine == 'perf' else 'missed ticks'}", 100 * f.missed_share, 1.0, "%",
                          note=f"errors {f.errors}")
    finally:
        bl.stop(p)


# -- 2. slowdown ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Window:
    ops_per_s: float  # by the target's own clock
    ops_per_cpu_s: float  # per second of CPU the target got: blind to its share of the machine
    cores: float  # CPUs the target ran on, on average


class OpsReader(threading.Thread):
    """Collects the target's `ops=<n> ns=<t> cpu_ns=<c>` lines with the time each arrived here."""

    def __init__(self, p: subprocess.Popen[str]):
        super().__init__(daemon=True)
        self.p = p
        self.points: list[tuple[float, int, int, int]] = []
        self.lock = threading.Lock()

    def run(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            m = re.match(r"ops=(\d+) ns=(\d+) cpu_ns=(\d+)", line)
            if m:
                with self.lock:
                    self.points.append((time.monotonic(), int(m[1]), int(m[2]), int(m[3])))

    def window(self, start: float, end: float) -> Window:
        """Between the first and last report that arrived inside [start, end], by the target's
        own clocks (arrival times only choose the reports)."""
        with self.lock:
            pts = [x for x in self.points if start <= x[0] <= end]
        if len(pts) < 2:
            raise SystemExit("the workload stopped reporting")
        (_a, o0, n0, c0), (_b, o1, n1, c1) = pts[0], pts[-1]
        return Window((o1 - o0) / ((n1 - n0) / 1e9), (o1 - o0) / ((c1 - c0) / 1e9), (c1 - c0) / (n1 - n0))


def bench_slowdown(binary: Path, rate: float, pairs: int, seconds: float, cpus: set[int] | None, tmp: Path,
                   budget: float | None) -> None:
    from goflame.target import Target

    settle = 0.3
    p, _ = bl.start_workload(binary, "-workers", str(WORKERS), *LABELS, "-report", "100ms", gomaxprocs=WORKERS, cpus=cpus)
    reader = OpsReader(p)
    reader.start()
    try:
        bl.section(f"target slowdown at {rate:g} Hz: {pairs} x ({seconds:g} s off, {seconds:g} s on) + {seconds:g} s "
                   f"off, {WORKERS} workers, GOMAXPROCS={WORKERS}, pid {p.pid}")
        with Target(p.pid) as t:
            sample_for(t, rate, 0.5, tmp / "warm.goflame")  # caches warm; attach cost is not a window's
            offs: list[Window] = []
            ons: list[tuple[Window, RunFigures]] = []

            def off_window() -> None:
                s = time.monotonic()
                time.sleep(seconds)
                offs.append(reader.window(s + settle, time.monotonic()))

            off_window()
            for i in range(pairs):
                s = time.monotonic()
                f = sample_for(t, rate, seconds, tmp / f"on{i}.goflame")
                ons.append((reader.window(s + settle, time.monotonic()), f))
                off_window()
                on, _ = ons[-1]
                a, b = offs[-2], offs[-1]
                print(f"  pair {i + 1}: ops/s off {a.ops_per_s / 1e3:6.1f}k on {on.ops_per_s / 1e3:6.1f}k "
                      f"off {b.ops_per_s / 1e3:6.1f}k -> on/off {2 * on.ops_per_s / (a.ops_per_s + b.ops_per_s):.3f};"
                      f"  per target CPU-s on/off {2 * on.ops_per_cpu_s / (a.ops_per_cpu_s + b.ops_per_cpu_s):.3f};"
                      f"  target CPUs off {a.cores:.2f} on {on.cores:.2f} off {b.cores:.2f};"
                      f"  {f.samples_per_s:.0f} samples/s, goflame cpu {100 * f.cpu / f.seconds:.0f} %, threads stopped "
                      f"{100 * f.stopped_share(WORKERS):.1f} % of the time  [{bl.load()}]", flush=True)

        def slowdowns(key: str) -> list[float]:
            return [100 * (1 - 2 * getattr(on, key) / (getattr(offs[i], key) + getattr(offs[i + 1], key)))
                    for i, (on, _f) in enumerate(ons)]

        wall = bl.Spread.of(slowdowns("ops_per_s"))
        per_cpu = bl.Spread.of(slowdowns("ops_per_cpu_s"))
        off_rates = [w.ops_per_s for w in offs]
        # How much two neighbouring unprofiled windows differ: the noise floor of an on/off ratio.
        off_noise = statistics.median(100 * abs(offs[i + 1].ops_per_s - offs[i].ops_per_s) /
                                      ((offs[i + 1].ops_per_s + offs[i].ops_per_s) / 2) for i in range(len(offs) - 1))
        cpu_share = statistics.median(100 * f.cpu / f.seconds for _on, f in ons)
        stopped = statistics.median(100 * f.stopped_share(WORKERS) for _on, f in ons)
        print(f"  slowdown at {rate:g} Hz in ops/s (what the target sees): {wall.fmt(unit='%', digits=1)}")
        print(f"  slowdown at {rate:g} Hz in ops per target CPU-second (blind to how much CPU the loaded machine gave "
              f"it): {per_cpu.fmt(unit='%', digits=1)}")
        print(f"  off windows: spread {100 * (max(off_rates) - min(off_rates)) / statistics.median(off_rates):.1f} % "
              f"of their median, neighbours differ by {off_noise:.1f} % (median); goflame cpu median {cpu_share:.0f} % "
              f"of a core; target threads inside a pause {stopped:.2f} % of the time (median; interrupt to detach, "
              f"which includes waiting for a CPU to take the stop)")
        if budget is not None:
            # The verdict: where the median pair's slowdown lies, with 95 % confidence (the
            # neighbouring off windows' noise is in every pair, so it widens the interval).
            bl.budget(f"target slowdown at {rate:g} Hz, ops/s (median of {pairs} pairs)", wall.median, budget, "%",
                      ci=bl.median_ci(slowdowns("ops_per_s")),
                      note=f"min {wall.lo:.1f} %, max {wall.hi:.1f} %; per CPU-s {per_cpu.median:.1f} %; "
                           f"off-window noise {off_noise:.1f} %")
        else:
            print(f"  (information only) median slowdown {wall.median:.1f} % in ops/s, {per_cpu.median:.1f} % per "
                  f"CPU-s at {rate:g} Hz  [{bl.load()}]")
    finally:
        bl.stop(p)


def bench_profile(binary: Path, seconds: float, tmp: Path) -> None:
    from goflame.target import Target

    p, _ = bl.start_workload(binary, "-workers", str(WORKERS), *LABELS, gomaxprocs=WORKERS)
    try:
        bl.section(f"CPU profile of the sampler at 1000 Hz for {seconds:g} s (cProfile slows it: shares matter)")
        with Target(p.pid) as t:
            sample_for(t, 1000, 0.5, tmp / "warm.goflame")
            print(bl.cpu_profile(lambda: sample_for(t, 1000, seconds, tmp / "prof.goflame"), top=16))
    finally:
        bl.stop(p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each measured window")
    ap.add_argument("--pairs", type=int, default=5, help="off/on pairs at 100 Hz")
    ap.add_argument("--pairs-fast", type=int, default=3, help="off/on pairs at 1000 Hz (0: skip)")
    ap.add_argument("--pin", action="store_true", help="target on the last CPU, goflame on CPU 0")
    ap.add_argument("--gomaxprocs", default=None,
                    help="comma-separated GOMAXPROCS values for the throughput part (default 4, and also 2 on a "
                         "machine with fewer than 4 CPUs, where 4 threads cannot all be on a CPU at once)")
    ap.add_argument("--engine", choices=("auto", "perf", "ptrace"), default="auto",
                    help="how goflame samples running threads (auto: as `goflame record` does)")
    ap.add_argument("--labels", action="store_true",
                    help="the workers run under pprof labels (3 each): every sample then carries them (issue 16)")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-slowdown", action="store_true")
    ap.add_argument("--skip-profile", action="store_true")
    a = ap.parse_args()
    ENGINE[0] = a.engine
    if a.labels:
        LABELS.append("-labels")
    binary = bl.workload()
    cpus = None
    if a.pin:
        last = max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {0})
        cpus = {last}
        print(f"pinned: goflame on CPU 0, target on CPU {last}")
    with tempfile.TemporaryDirectory(prefix="goflame-bench-sampler-") as d:
        tmp = Path(d)
        if not a.skip_throughput:
            procs = ([int(x) for x in a.gomaxprocs.split(",")] if a.gomaxprocs
                     else [WORKERS] + ([2] if (os.cpu_count() or 1) < WORKERS else []))
            for n in procs:
                bench_throughput(binary, a.seconds, cpus, tmp, n)
        if not a.skip_slowdown and a.pairs:
            bench_slowdown(binary, 100, a.pairs, a.seconds, cpus, tmp, budget=3.0)
            if a.pairs_fast:
                bench_slowdown(binary, 1000, a.pairs_fast, a.seconds, cpus, tmp, budget=None)
        if not a.skip_profile:
            bench_profile(binary, 2.0, tmp)


if __name__ == "__main__":
    main()
