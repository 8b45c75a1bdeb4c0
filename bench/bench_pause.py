"""How long a pause holds a thread, and what pause-only sampling costs the target.

Runs the spinner fixture (N goroutines in a call-free loop, GOMAXPROCS=N) and prints:
  1. per-thread pause time, median and p99: from PTRACE_INTERRUPT to PTRACE_DETACH (this
     includes a runnable thread's wait for a CPU before it can stop) and from seeing the
     stop to PTRACE_DETACH (ours alone), for Pauser.pause serial and overlapped, with and
     without the SCHED_FIFO boost, and for all-at-once holds (Pauser.paused);
  2. the target's own ops/s while we pause its running threads at 100 Hz and 1000 Hz,
     as a ratio against unprofiled runs measured in this same script (interleaved, so
     drift from other load on the machine hits every mode alike).
Nothing is unwound or read: this is the floor a sampler pays for stopping threads.

    .venv/bin/python bench/bench_pause.py [--threads 4] [--seconds 3] [--reps 3] [--pinned]

--pinned also runs a one-thread target pinned to CPU 1 with the profiler on CPU 0: on a
small machine the profiler's own CPU use otherwise competes with the target for cores.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import gotoolchain  # noqa: E402
from benchlib import budget, load  # noqa: E402
from goflame.process import Process  # noqa: E402


def spinner() -> Path:
    return gotoolchain.build(REPO / "tests" / "fixtures" / "spinner", gotoolchain.BuildSpec())


def start(binary: Path, threads: int, seconds: float, cpu: int | None) -> subprocess.Popen[str]:
    env = dict(os.environ, GOMAXPROCS=str(threads))
    args = [str(binary), "-spinners", str(threads), "-gc", "0", "-duration", f"{seconds}s"]
    if cpu is not None:
        args = ["taskset", "-c", str(cpu), *args]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout is not None
    line = p.stdout.readline()
    if not line.startswith("ready"):
        raise SystemExit(f"spinner did not start: {line!r}")
    return p


def result(p: subprocess.Popen[str]) -> float:
    out, _ = p.communicate()
    m = re.search(r"result ops_per_sec=(\d+)", out)
    if not m:
        raise SystemExit(f"spinner printed no result: {out!r}")
    return float(m[1])


def quantiles(ns: list[int]) -> str:
    xs = sorted(ns)
    return (f"n={len(xs):6d}  median={xs[len(xs) // 2] / 1e3:8.1f} us  "
            f"p90={xs[int(len(xs) * 0.9)] / 1e3:8.1f} us  p99={xs[int(len(xs) * 0.99)] / 1e3:8.1f} us")


def pause_times(binary: Path, threads: int, seconds: float) -> None:
    p = start(binary, threads, seconds * 5 + 2, None)
    try:
        time.sleep(0.3)
        with Process.open(p.pid) as proc:
            for overlap, boost in ((False, False), (False, True), (True, False), (True, True)):
                proc.pauser.boost = boost
                total: list[int] = []
                held: list[int] = []
                rounds = 0
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    running = [t.tid for t in proc.threads() if t.running]
                    for r in proc.pause(running, overlap=overlap).values():
                        total.append(r.pause_ns)
                        held.append(r.held_ns)
                    rounds += 1
                    time.sleep(0.001)
                how = f"{'overlapped' if overlap else 'serial'}{', boosted' if boost else ''}"
                print(f"{threads}-thread target, {how:20s} ({rounds / seconds:4.0f} rounds/s) "
                      f"interrupt->detach: {quantiles(total)}")
                print(f"{threads}-thread target, {how:20s} {'':16s} stop seen->detach: {quantiles(held)}")
                if overlap and not boost:  # what Process.pause does by default
                    held.sort()
                    budget("pause per running thread, stop seen->detach, p99 (overlapped)",
                           held[int(len(held) * 0.99)] / 1e3, 200, "us")
            together: list[int] = []
            rounds = 0
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                running = [t.tid for t in proc.threads() if t.running]
                with proc.paused(running):
                    pass
                together += list(proc.pauser.last_pause_ns.values())
                rounds += 1
                time.sleep(0.001)
            print(f"{threads}-thread target, {'all held at once':20s} ({rounds / seconds:4.0f} rounds/s) "
                  f"interrupt->detach: {quantiles(together)}")
    finally:
        p.kill()
        p.wait()


Mode = tuple[int, bool, bool]  # (Hz, overlap, boost)


def profiled_run(binary: Path, threads: int, seconds: float, mode: Mode, cpu: int | None) -> tuple[float, int]:
    """ops/s of one run while pausing its running threads at `hz` (0: not profiled)."""
    hz, overlap, boost = mode
    p = start(binary, threads, seconds, cpu)
    samples = 0
    if hz:
        with Process.open(p.pid) as proc:
            proc.pauser.boost = boost
            period = 1.0 / hz
            tick = time.monotonic()
            while p.poll() is None:
                try:
                    running = [t.tid for t in proc.threads() if t.running]
                    samples += len(proc.pause(running, overlap=overlap))
                except Exception:  # the target exits at the end of its run
                    break
                tick += period
                delay = tick - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    tick = time.monotonic()  # fell behind: do not burst
    return result(p), samples


MODES: list[Mode] = [(0, True, False), (100, True, False), (1000, True, False), (100, True, True),
                     (1000, True, True), (100, False, False), (1000, False, False)]


def slowdown(binary: Path, threads: int, seconds: float, reps: int, cpu: int | None, label: str) -> None:
    rates: dict[Mode, list[float]] = {m: [] for m in MODES}
    samples: dict[Mode, int] = {m: 0 for m in MODES}
    for _ in range(reps):
        for mode in MODES:
            ops, n = profiled_run(binary, threads, seconds, mode, cpu)
            rates[mode].append(ops)
            samples[mode] += n
    base = statistics.median(rates[MODES[0]])
    print(f"{label}: unprofiled {base / 1e6:.1f} Mops/s (median of {reps} x {seconds:g} s)  [{load()}]")
    for mode in MODES[1:]:
        hz, overlap, boost = mode
        how = f"{'overlapped' if overlap else 'serial'}{', boosted' if boost else ''}"
        r = statistics.median(rates[mode]) / base
        print(f"{label}: pause-only sampling at {hz:4d} Hz, {how:20s}: ops ratio {r:.3f} "
              f"(slowdown {100 * (1 - r):5.1f} %), {samples[mode] / (reps * seconds):5.0f} thread pauses/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--pinned", action="store_true")
    a = ap.parse_args()
    binary = spinner()
    print(f"[{load()}]")
    pause_times(binary, a.threads, a.seconds)
    slowdown(binary, a.threads, a.seconds, a.reps, None, f"{a.threads} threads")
    if a.pinned:
        os.sched_setaffinity(0, {0})
        slowdown(binary, 1, a.seconds, a.reps, 1, "1 thread pinned to cpu1, profiler on cpu0")


if __name__ == "__main__":
    main()
