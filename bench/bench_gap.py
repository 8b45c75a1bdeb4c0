#!/usr/bin/env python3
"""How long goflame keeps its target from running: the target's largest scheduling gap.

The target (bench/fixtures/gap) sleeps 1 ms in a loop on a thread of its own and reports how
late its wakeups were. It is measured alone, and while goflame samples it three ways:

- `boost in the stop` (what goflame does): SCHED_FIFO only while a thread of the target is
  stopped (Pauser's boost), the sampling loop itself at normal priority;
- `normal priority`: no boost at all, the reference the budget is against;
- `real-time loop` (what goflame did before): the whole sampling loop SCHED_FIFO.

Scenarios: ptrace at 100 Hz on a busy target; `--idle` on 100,000 parked goroutines; ptrace
on 2,000 threads; perf at 100 Hz. Each on 2 CPUs and with target and goflame pinned to one
CPU. Windows of the three settings are interleaved, and the median of the windows' largest
gaps is compared. Budget: boost in the stop adds at most 2 ms to the largest gap over normal
priority at 100 Hz, on 1 CPU and on 2.

    .venv/bin/python bench/bench_gap.py [--seconds 3] [--windows 5] [--only ptrace,idle]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
import gotoolchain  # noqa: E402

SCENARIOS = {
    "ptrace": dict(args=["-busy", "1"], engine="ptrace", idle=False),
    "idle-100k": dict(args=["-busy", "1", "-parked", "100000"], engine="ptrace", idle=True),
    "threads-2000": dict(args=["-busy", "1", "-threads", "2000"], engine="ptrace", idle=False),
    "perf": dict(args=["-busy", "1"], engine="perf", idle=False),
}
SETTINGS = ("alone", "boost in the stop", "normal priority", "real-time loop")
BUDGET_MS = 2.0


def gap_binary() -> Path:
    return gotoolchain.build(benchlib.BENCH / "fixtures" / "gap")


class Target:
    def __init__(self, args: list[str], cpus: set[int] | None) -> None:
        argv = [str(gap_binary()), *args]
        if cpus:
            argv = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *argv]
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, bufsize=1)
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        if not line.startswith("ready"):
            raise SystemExit(f"gap fixture did not start: {line!r}")
        self.pid = int(line.split()[1])

    def window(self) -> tuple[float, float]:
        """(largest, 99th percentile) lateness in ms since the last call."""
        os.kill(self.pid, signal.SIGUSR1)
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        fields = dict(f.split("=") for f in line.split()[1:])
        return int(fields["max_us"]) / 1000, int(fields["p99_us"]) / 1000

    def close(self) -> None:
        self.p.kill()
        self.p.wait()


@contextlib.contextmanager
def realtime_thread() -> Iterator[None]:
    before = os.sched_getscheduler(0), os.sched_getparam(0)
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    try:
        yield
    finally:
        os.sched_setscheduler(0, *before)


def sample_window(t: Target, setting: str, scenario: dict, seconds: float) -> tuple[float, float]:
    import goflame
    from goflame.sampler import Sampler, SamplerConfig

    t.window()  # reset
    if setting == "alone":
        time.sleep(seconds)
        return t.window()
    with goflame.attach(t.pid) as target:
        target.proc.pauser.boost = setting == "boost in the stop"
        sampler = Sampler(target, SamplerConfig(rate=100, engine=scenario["engine"], idle=scenario["idle"]))
        ctx = realtime_thread() if setting == "real-time loop" else contextlib.nullcontext()
        t.window()  # the attach itself is not what is measured
        with ctx:
            sampler.run(lambda s: None, duration=seconds)
        return t.window()


def run_scenario(name: str, scenario: dict, cpus: set[int] | None, seconds: float, windows: int) -> None:
    where = f"1 CPU (cpu {min(cpus)})" if cpus else f"{os.cpu_count()} CPUs"
    benchlib.section(f"{name} on {where}: largest wakeup lateness of a 1 ms sleeper, {windows} windows of {seconds:g} s")
    before = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, cpus)
    t = Target(scenario["args"], cpus)
    got: dict[str, list[float]] = {s: [] for s in SETTINGS}
    p99: dict[str, list[float]] = {s: [] for s in SETTINGS}
    try:
        time.sleep(1.0)  # the fixture's parked goroutines and threads are up (it said ready after)
        for _ in range(windows):
            for setting in SETTINGS:
                if setting == "real-time loop" and scenario["engine"] == "perf":
                    continue
                mx, p = sample_window(t, setting, scenario, seconds)
                got[setting].append(mx)
                p99[setting].append(p)
    finally:
        t.close()
        os.sched_setaffinity(0, before)
    for s in SETTINGS:
        if got[s]:
            print(f"  {s:<20s} max gap median {statistics.median(got[s]):7.2f} ms  (windows: "
                  f"{', '.join(f'{x:.1f}' for x in got[s])})  p99 median {statistics.median(p99[s]):.2f} ms")
    over = statistics.median(got["boost in the stop"]) - statistics.median(got["normal priority"])
    benchlib.budget(f"gap {name} {where}: boost in the stop over normal priority", over, BUDGET_MS, "ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated scenarios: " + ", ".join(SCENARIOS))
    ap.add_argument("--cpus", default="2,1", help="run on all CPUs (2) and/or pinned to one (1)")
    a = ap.parse_args()
    names = [n for n in a.only.split(",") if n] or list(SCENARIOS)
    for n in names:
        for c in a.cpus.split(","):
            run_scenario(n, SCENARIOS[n], {0} if c == "1" else None, a.seconds, a.windows)


if __name__ == "__main__":
    main()
