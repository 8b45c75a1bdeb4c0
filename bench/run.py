#!/usr/bin/env python3
"""Run every bench/bench_*.py (or those named), stream their output, then sum up.

    .venv/bin/python bench/run.py                 # all of them (what `make bench` runs)
    .venv/bin/python bench/run.py binary sampler  # only bench_binary.py and bench_sampler.py
    .venv/bin/python bench/run.py --list

Each benchmark runs as its own child process (in its own process group, so a timeout ends
the targets it started too) with the load average printed before and after it. Lines
starting with `BUDGET` are gathered into one table at the end. A benchmark that crashes or
times out makes the exit status 1; a budget that fails does not, unless --strict: the
machines these run on are shared, and a verdict is only as good as the load beside it.
"""

from __future__ import annotations

import argparse
import ast
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


def loadavg() -> str:
    a, b, c = os.getloadavg()
    return f"load {a:.1f} {b:.1f} {c:.1f} on {os.cpu_count()} CPUs"


def discover(names: list[str]) -> list[Path]:
    found = sorted(BENCH.glob("bench_*.py"))
    if not names:
        return found
    chosen = []
    for n in names:
        hits = [p for p in found if p.stem == n or p.stem == f"bench_{n}" or n in p.stem]
        if not hits:
            sys.exit(f"run.py: no benchmark matches {n!r} (have: {', '.join(p.stem for p in found)})")
        chosen += [p for p in hits if p not in chosen]
    return chosen


def run_one(path: Path, timeout: float) -> tuple[int | None, float, list[str]]:
    """Run one benchmark, echoing its output; returns (exit code or None on timeout, seconds, BUDGET lines)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, str(path)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, bufsize=1,
                         start_new_session=True)
    budgets: list[str] = []
    timed_out = threading.Event()

    def kill_on_timeout() -> None:
        timed_out.set()
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    watchdog = threading.Timer(timeout, kill_on_timeout)
    watchdog.daemon = True
    watchdog.start()
    assert p.stdout is not None
    try:
        for line in p.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if line.startswith("BUDGET "):
                budgets.append(line.rstrip("\n")[len("BUDGET "):])
        p.wait()
    except KeyboardInterrupt:
        try:
            os.killpg(p.pid, signal.SIGINT)
            p.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            kill_on_timeout()
            p.wait()
        raise
    finally:
        watchdog.cancel()
    return (None if timed_out.is_set() else p.returncode), time.monotonic() - t0, budgets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="benchmarks to run (bench_NAME.py or a part of the name)")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per benchmark (default 1800)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when any budget fails")
    a = ap.parse_args()
    paths = discover(a.names)
    if a.list:
        for p in paths:
            try:
                doc = (ast.get_docstring(ast.parse(p.read_text())) or "").strip().splitlines()
            except SyntaxError:
                doc = []
            print(f"{p.stem:<16s} {doc[0] if doc else ''}")
        return
    if not paths:
        sys.exit("run.py: no bench/bench_*.py found")
    results: list[tuple[str, int | None, float, list[str]]] = []
    for path in paths:
        print(f"\n######## {path.name}  [{loadavg()}]", flush=True)
        rc, secs, budgets = run_one(path, a.timeout)
        status = "timed out" if rc is None else ("ok" if rc == 0 else f"exit {rc}")
        print(f"######## {path.name}: {status} after {secs:.0f} s  [{loadavg()}]", flush=True)
        results.append((path.name, rc, secs, budgets))

    print("\n######## summary")
    for name, rc, secs, _ in results:
        status = "timed out" if rc is None else ("ok" if rc == 0 else f"exit {rc}")
        print(f"  {name:<20s} {status:<10s} {secs:6.0f} s")
    all_budgets = [(name, b) for name, _rc, _s, bs in results for b in bs]
    if all_budgets:
        print("\n######## budgets")
        for name, b in all_budgets:
            print(f"  {name:<20s} {b}")
    crashed = any(rc != 0 for _n, rc, _s, _b in results)
    failed = any("FAIL" in b for _n, b in all_budgets)
    sys.exit(1 if crashed or (a.strict and failed) else 0)


if __name__ == "__main__":
    main()
