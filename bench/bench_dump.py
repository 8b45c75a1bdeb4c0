#!/usr/bin/env python3
"""`goflame dump`: 10,000 goroutines, and a live hugo server, against baselines in one run.

1. The workload fixture (bench/fixtures/workload) with 10,000 goroutines parked at depths
   1..12 (chan, select, mutex, cond, sleep) plus 2 CPU-bound workers:
   - baseline: the Go runtime's own dump of the same goroutines, runtime.Stack(buf, true)
     timed inside the target (SIGUSR1), and `python -c pass`;
   - `goflame dump --pid` as a user runs it: wall and CPU, start to exit;
   - in-process phases: attach (Target), snapshot (allgs/allm/allp), collect (pause the
     running threads, walk every stack), format. Budget: snapshot + collect + format <= 1 s;
   - how long each running thread is paused per snapshot (StackCollector.pause_ns), median
     and max, next to a bare pause of the same threads (Process.pause with no stack read) in
     the same run. Budget: <= 200 us;
   - a CPU profile of one in-process dump.
2. A live `hugo server` (Debian's /usr/bin/hugo: 53 MB, stripped, Go 1.19, cgo) on a new site
   bound to 127.0.0.1: `goflame dump --pid` start to exit, next to `python -c pass`,
   `goflame --version` and `goflame inspect /usr/bin/hugo`. Budget: <= 2 s. Phases and a CPU
   profile as above.

    .venv/bin/python bench/bench_dump.py [--goroutines 10000] [--reps 3] [--pauses 20] [--no-hugo]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import benchlib as bl


@dataclass(frozen=True, slots=True)
class Phases:
    attach: tuple[float, float]  # (wall, cpu) seconds
    snapshot: tuple[float, float]
    collect: tuple[float, float]
    format: tuple[float, float]
    goroutines: int
    shown: int
    pauses_ns: tuple[int, ...]
    chars: int


def dump_phases(pid: int) -> Phases:
    """The steps of goflame.dump.dump_goroutines, each timed (wall and CPU)."""
    from goflame.export.gotraceback import format_stack, rules_for
    from goflame.runtime import is_system_goroutine
    from goflame.target import Target

    pc, pt = time.perf_counter, time.process_time
    marks = [(pc(), pt())]

    def mark() -> tuple[float, float]:
        marks.append((pc(), pt()))
        (w0, c0), (w1, c1) = marks[-2], marks[-1]
        return w1 - w0, c1 - c0

    with Target(pid) as t:
        attach = mark()
        snap = t.reader.snapshot()
        snapshot = mark()
        before = len(t.stacks.pause_ns)
        stacks = t.stacks.collect(snap, pause=True)
        pauses = tuple(t.stacks.pause_ns[before:])
        collect = mark()
        rules = rules_for(t.binary)
        bias = t.reader.bias
        shown = [s for s in stacks if not is_system_goroutine(t.binary, s.g, bias)]
        text = "\n\n".join(format_stack(rules, t.binary, s, snap.now, bias, False) for s in shown) + "\n"
        fmt = mark()
    return Phases(attach, snapshot, collect, fmt, len(stacks), len(shown), pauses, len(text))


def print_phases(runs: list[Phases]) -> tuple[float, float]:
    """Median per phase; returns (wall, cpu) of snapshot+collect+format, median over runs."""
    for name in ("attach", "snapshot", "collect", "format"):
        w = [getattr(r, name)[0] for r in runs]
        c = [getattr(r, name)[1] for r in runs]
        print(f"    {name:<10s} wall {statistics.median(w) * 1e3:8.1f} ms (min {min(w) * 1e3:8.1f})   "
              f"cpu {statistics.median(c) * 1e3:8.1f} ms")
    after_w = [r.snapshot[0] + r.collect[0] + r.format[0] for r in runs]
    after_c = [r.snapshot[1] + r.collect[1] + r.format[1] for r in runs]
    w, c = statistics.median(after_w), statistics.median(after_c)
    print(f"    {'after attach':<10s} wall {w * 1e3:8.1f} ms (min {min(after_w) * 1e3:8.1f})   cpu {c * 1e3:8.1f} ms"
          f"   [{bl.load()}]")
    r = runs[0]
    print(f"    {r.goroutines:,} goroutines read, {r.shown:,} shown (runtime goroutines hidden), "
          f"{r.chars / 1e6:.1f} MB of text")
    return w, c


def runtime_dump_ns(p: subprocess.Popen[str]) -> tuple[int, int, int]:
    """(ns, bytes, goroutines) of the target's own runtime.Stack(buf, true), timed inside it."""
    assert p.stdout is not None
    os.kill(p.pid, signal.SIGUSR1)
    while True:
        line = p.stdout.readline()
        if not line:
            raise SystemExit("workload exited")
        if line.startswith("stackdump "):
            kv = dict(f.split("=") for f in line.split()[1:])
            return int(kv["ns"]), int(kv["bytes"]), int(kv["goroutines"])


def pause_figures(pid: int, rounds: int) -> None:
    """Per-thread pause of each snapshot vs a bare pause of the same threads, interleaved."""
    from goflame.target import Target

    with Target(pid) as t:
        collected: list[list[int]] = []
        collected_held: list[int] = []
        bare: list[int] = []
        held: list[int] = []
        for _ in range(rounds):
            snap = t.reader.snapshot()
            before = len(t.stacks.pause_ns)
            with bl.pause_spy(t.proc) as seen:
                t.stacks.collect(snap, pause=True)
            collected.append(list(t.stacks.pause_ns[before:]))
            collected_held += [x.held_ns for x in seen]
            running = [th.tid for th in t.proc.threads() if th.state == "R"]
            got = t.proc.pause(running).values()
            bare += [p.pause_ns for p in got]
            held += [p.held_ns for p in got]
            time.sleep(0.02)
    flat = [x for c in collected for x in c]
    if not flat:
        print("  no running thread was paused in any snapshot")
        return
    per_snap_max = [max(c) for c in collected if c]
    threads = statistics.median([len(c) for c in collected])
    print(f"  pause per running thread over {rounds} snapshots (~{threads:g} threads each): "
          f"median {statistics.median(flat) / 1e3:.0f} us, max {max(flat) / 1e3:.0f} us; "
          f"per-snapshot max: median {statistics.median(per_snap_max) / 1e3:.0f} us")
    if bare:
        print(f"  bare pause of the running threads (interrupt, getregs, detach; no stack read): "
              f"median {statistics.median(bare) / 1e3:.0f} us, max {max(bare) / 1e3:.0f} us, n={len(bare)}; "
              f"of which held (stop seen to detach) median {statistics.median(held) / 1e3:.0f} us   "
              f"collect/bare (median): {bl.ratio(statistics.median(flat), statistics.median(bare))}")
    if collected_held:
        print(f"  of each snapshot's pauses, the part held by goflame (stop seen to detach; the rest is the "
              f"thread waiting for a CPU to take the stop): median {statistics.median(collected_held) / 1e3:.0f} us, "
              f"max {max(collected_held) / 1e3:.0f} us")
    bl.budget("dump: pause per running thread, interrupt to detach (median)", statistics.median(flat) / 1e3, 200,
              "us", note=f"max {max(flat) / 1e3:.0f} us; bare pause median "
                         f"{statistics.median(bare) / 1e3 if bare else float('nan'):.0f} us")
    if collected_held:
        bl.budget("dump: pause per running thread, held by goflame (median)",
                  statistics.median(collected_held) / 1e3, 200, "us",
                  note=f"max {max(collected_held) / 1e3:.0f} us")


# -- 1. 10,000 goroutines ------------------------------------------------------------------------
def bench_many(goroutines: int, reps: int, pauses: int) -> None:
    from goflame.dump import dump_goroutines

    binary = bl.workload()
    p, n = bl.start_workload(binary, "-parked", str(goroutines), "-workers", "2", gomaxprocs=2)
    try:
        bl.section(f"goflame dump of the workload fixture: {n:,} goroutines (2 running), pid {p.pid}")
        own = [runtime_dump_ns(p) for _ in range(reps)]
        own_s = statistics.median(x[0] for x in own) / 1e9
        print(f"  Go's own runtime.Stack(all) inside the target: median {own_s * 1e3:.1f} ms "
              f"(min {min(x[0] for x in own) / 1e6:.1f}), {own[0][1] / 1e6:.1f} MB, {own[0][2]:,} goroutines")
        py, _ = bl.child_line("python -c pass", bl.repeat_child([sys.executable, "-c", "pass"], reps))
        argv = [*bl.goflame_argv(), "dump", "--pid", str(p.pid)]
        bl.run_child(argv)  # warm the page cache
        cli, cli_cpu = bl.child_line("goflame dump --pid (start to exit)", bl.repeat_child(argv, reps))
        print("  in-process phases (median of runs):")
        runs = [dump_phases(p.pid) for _ in range(reps)]
        after_w, after_c = print_phases(runs)
        print(f"  goflame dump (CLI) / runtime.Stack: {bl.ratio(cli.median, own_s)}   "
              f"after-attach / runtime.Stack: {bl.ratio(after_w, own_s)}   "
              f"CLI / python -c pass: {bl.ratio(cli.median, py.median)}")
        bl.budget(f"dump of {n:,} goroutines after attach (median wall)", after_w, 1.0, cpu=after_c,
                  note=f"runtime.Stack {own_s * 1e3:.0f} ms in the same run")
        bl.budget(f"goflame dump CLI, {n:,} goroutines, start to exit (median wall)", cli.median, 2.0,
                  cpu=cli_cpu.median, note="(information: the 2 s budget is for the hugo case)")
        pause_figures(p.pid, pauses)
        print("  CPU profile of one in-process dump_goroutines(), by own time:")
        print(bl.cpu_profile(lambda: dump_goroutines(p.pid), top=14))
    finally:
        bl.stop(p)


# -- 2. hugo server ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_hugo(hugo: Path, site: Path) -> tuple[subprocess.Popen[bytes], Path]:
    subprocess.run([str(hugo), "new", "site", str(site)], check=True, capture_output=True)
    log = site.parent / "hugo.log"
    port = free_port()
    with open(log, "wb") as fh:
        p = subprocess.Popen([str(hugo), "server", "-s", str(site), "--bind", "127.0.0.1", "--port", str(port),
                              "--disableLiveReload"], stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while b"Web Server is available" not in log.read_bytes():
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            raise SystemExit(f"hugo server did not start:\n{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    time.sleep(0.5)  # let it settle into its idle loop
    return p, log


def bench_hugo(hugo: Path, reps: int) -> None:
    from goflame.dump import dump_goroutines

    with tempfile.TemporaryDirectory(prefix="goflame-bench-hugo-") as tmp:
        p, _log = start_hugo(hugo, Path(tmp) / "site")
        try:
            bl.section(f"goflame dump of a live `hugo server` ({hugo}, {hugo.stat().st_size / 1e6:.0f} MB, "
                       f"stripped), pid {p.pid}")
            gf = bl.goflame_argv()
            argv = [*gf, "dump", "--pid", str(p.pid)]
            first = bl.run_child(argv)  # warm the page cache
            py, _ = bl.child_line("python -c pass", bl.repeat_child([sys.executable, "-c", "pass"], reps))
            floor, _ = bl.child_line("goflame --version (CLI floor)", bl.repeat_child([*gf, "--version"], reps))
            ins, _ = bl.child_line("goflame inspect /usr/bin/hugo", bl.repeat_child([*gf, "inspect", str(hugo)], reps))
            cli, cli_cpu = bl.child_line("goflame dump --pid (attach+dump+exit)", bl.repeat_child(argv, reps))
            print(f"  dump / python -c pass: {bl.ratio(cli.median, py.median)}   dump / goflame --version: "
                  f"{bl.ratio(cli.median, floor.median)}   dump / inspect: {bl.ratio(cli.median, ins.median)}   "
                  f"({first.out.count(b'goroutine ')} goroutines shown)")
            bl.budget("goflame dump of hugo, attach+dump+exit (median wall)", cli.median, 2.0, cpu=cli_cpu.median,
                      note=f"best wall {cli.lo:.3f} s")
            print("  in-process phases (median of runs):")
            runs = [dump_phases(p.pid) for _ in range(reps)]
            print_phases(runs)
            flat = [x for r in runs for x in r.pauses_ns]
            print(f"  running threads paused per snapshot: {statistics.median([len(r.pauses_ns) for r in runs]):g}"
                  + (f", pause median {statistics.median(flat) / 1e3:.0f} us, max {max(flat) / 1e3:.0f} us"
                     if flat else " (the server is idle)"))
            print("  CPU profile of one in-process dump_goroutines(), by own time:")
            print(bl.cpu_profile(lambda: dump_goroutines(p.pid), top=12))
        finally:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--goroutines", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--pauses", type=int, default=20, help="snapshots for the pause figures")
    ap.add_argument("--hugo", type=Path, default=bl.BIG_BINARY)
    ap.add_argument("--no-hugo", action="store_true")
    ap.add_argument("--no-fixture", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("note: not root; attaching needs ptrace permission (ptrace_scope 0 or CAP_SYS_PTRACE)")
    if not a.no_fixture:
        bench_many(a.goroutines, a.reps, a.pauses)
    if not a.no_hugo:
        if a.hugo.exists():
            bench_hugo(a.hugo, a.reps)
        else:
            print(f"\nskipped the hugo part: {a.hugo} not found (apt-get install hugo)")


if __name__ == "__main__":
    main()
