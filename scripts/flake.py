#!/usr/bin/env python3
"""The fast tier's health: run it K times and count, for every test, the runs it failed.

A test that is red on a good commit one run in ten is a defect of the test (the design
brief, "A verdict is deterministic"). This runs `pytest` (the fast tier: the `-m 'not
matrix'` default of pyproject.toml) K times, each with its own JUnit XML report, and prints
one table: every test that failed or errored at least once, with its count, then each run's
outcome and wall time. With --load, a spinner process keeps one CPU busy all the while (as
a colleague's benchmark would on a shared machine).

    .venv/bin/python scripts/flake.py                  # 10 runs of the fast tier
    .venv/bin/python scripts/flake.py --runs 3 --load
    .venv/bin/python scripts/flake.py --runs 5 -- tests/test_native.py -k vdso
    make flake RUNS=5 FLAKE_ARGS=--load

Exit status: 0 when every run passed, 1 when any test failed in any run.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPIN = "while True:\n    pass\n"


@dataclass
class Run:
    index: int
    wall: float
    rc: int
    tests: int = 0
    failed: list[str] = field(default_factory=list)  # failures and errors, by test id
    skipped: int = 0
    note: str = ""


def test_id(case: ET.Element) -> str:
    """`tests/test_x.py::test_name[param]` from a JUnit testcase (classname `tests.test_x`)."""
    cls = case.get("classname", "")
    name = case.get("name", "")
    parts = cls.split(".")
    path = "/".join(parts) + ".py" if parts and parts[-1].startswith("test_") else cls
    return f"{path}::{name}"


def read_junit(path: Path, run: Run) -> None:
    if not path.exists():
        run.note = "no report (pytest did not finish)"
        return
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        run.tests += 1
        if case.find("failure") is not None or case.find("error") is not None:
            run.failed.append(test_id(case))
        elif case.find("skipped") is not None:
            run.skipped += 1


def start_load() -> subprocess.Popen:
    """One CPU kept busy by a process of its own, at normal priority."""
    return subprocess.Popen([sys.executable, "-c", SPIN], stdin=subprocess.DEVNULL, start_new_session=True)


def default_signals() -> None:
    """preexec_fn: SIGINT and SIGQUIT as a terminal's `make test` has them, even when this
    script runs as a background job (whose shell set them to SIG_IGN, which children inherit)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def run_once(i: int, repo: Path, out: Path, pytest_args: list[str], quiet: bool) -> Run:
    report = out / f"run-{i}.xml"
    log = out / f"run-{i}.log"
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *pytest_args]
    t0 = time.monotonic()
    with open(log, "w") as f:
        p = subprocess.run(argv, cwd=repo, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           preexec_fn=default_signals)
    run = Run(i, time.monotonic() - t0, p.returncode)
    read_junit(report, run)
    if not quiet:
        status = "ok" if not run.failed and run.rc == 0 else f"{len(run.failed)} failed (rc {run.rc})"
        print(f"run {i}: {run.tests} tests, {status}, {run.wall:.0f} s   [{load()}]  log {log}", flush=True)
        for t in run.failed:
            print(f"    FAILED {t}", flush=True)
    return run


def load() -> str:
    a, b, c = os.getloadavg()
    return f"load {a:.1f} {b:.1f} {c:.1f}"


def table(runs: list[Run]) -> str:
    k = len(runs)
    fails = Counter(t for r in runs for t in set(r.failed))
    lines = [f"== {k} runs of the fast tier: {sum(1 for r in runs if not r.failed and r.rc == 0)} green"]
    if fails:
        width = max(len(t) for t in fails)
        lines.append(f"{'test':<{width}}  failed")
        for t, n in sorted(fails.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"{t:<{width}}  {n}/{k}")
    else:
        lines.append("no test failed in any run")
    lines.append("")
    lines.append("run  tests  failed  skipped  wall")
    for r in runs:
        lines.append(f"{r.index:>3}  {r.tests:>5}  {len(r.failed):>6}  {r.skipped:>7}  {r.wall:5.0f} s"
                     + (f"  ({r.note})" if r.note else "") + (f"  rc {r.rc}" if r.rc not in (0, 1) else ""))
    walls = sorted(r.wall for r in runs)
    lines.append(f"wall time: median {walls[len(walls) // 2]:.0f} s, min {walls[0]:.0f} s, max {walls[-1]:.0f} s")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10, help="how many runs of the fast tier (default 10)")
    ap.add_argument("--load", action="store_true", help="keep one CPU busy with a spinner process meanwhile")
    ap.add_argument("--repo", type=Path, default=REPO, help="the checkout whose tests are run (default: this one)")
    ap.add_argument("--out", type=Path, help="where the JUnit reports and logs go (default: a new temp dir)")
    ap.add_argument("pytest_args", nargs="*", help="after --: passed to pytest (e.g. a file, -k EXPR)")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    out = args.out or Path(tempfile.mkdtemp(prefix="goflame-flake-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"{args.runs} runs of `pytest {' '.join(args.pytest_args)}` in {args.repo}"
          f"{', one CPU kept busy' if args.load else ''}; reports in {out}", flush=True)
    spinner = start_load() if args.load else None
    runs: list[Run] = []
    try:
        for i in range(1, args.runs + 1):
            runs.append(run_once(i, args.repo.resolve(), out, args.pytest_args, quiet=False))
    except KeyboardInterrupt:
        print("interrupted: the table covers the runs that finished", flush=True)
    finally:
        if spinner is not None:
            os.killpg(spinner.pid, signal.SIGKILL)
            spinner.wait()
    if not runs:
        return 1
    print()
    print(table(runs))
    return 0 if all(not r.failed and r.rc == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
