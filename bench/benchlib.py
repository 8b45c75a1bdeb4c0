"""Shared helpers for goflame's benchmarks: timing children, spreads, budgets, fixtures.

The machine the benchmarks run on is shared and noisy, so every figure is printed with the
load average at the time it was taken, next to a baseline measured in the same run, and
with both wall time and CPU time (user + sys): on an overloaded machine wall time says
how long a user waited, CPU time what goflame itself cost. Budget lines start with
`BUDGET` so `bench/run.py` can gather them into one table.
"""

from __future__ import annotations

import cProfile
import io
import math
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
for _p in (str(REPO / "tests"), str(REPO)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import gotoolchain  # noqa: E402

BIG_BINARY = Path("/usr/bin/hugo")  # Debian's hugo: 53 MB, stripped, Go 1.19, cgo


def load() -> str:
    """The 1/5/15-minute load averages, for printing next to a figure."""
    a, b, c = os.getloadavg()
    return f"load {a:.1f} {b:.1f} {c:.1f} on {os.cpu_count()} CPUs"


def section(title: str) -> None:
    print(f"\n== {title}  [{load()}]", flush=True)


def goflame_argv() -> list[str]:
    """How a user runs goflame: the venv's console script (else `python -m goflame.cli`)."""
    script = Path(sys.executable).parent / "goflame"
    return [str(script)] if script.exists() else [sys.executable, "-m", "goflame.cli"]


@dataclass(frozen=True, slots=True)
class ChildRun:
    wall: float  # seconds from fork to reaped
    cpu: float  # the child's user + sys seconds (its own children included when waited for)
    rc: int
    out: bytes


def run_child(argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
              check: bool = True) -> ChildRun:
    """Run one command to completion; wall from wait4's clock, CPU from its rusage."""
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        p = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             env=env, cwd=cwd)
        # stderr is small for every command timed here; read it after the exit.
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        rc = os.waitstatus_to_exitcode(status)
        p.returncode = rc
        err = p.stderr.read() if p.stderr else b""
        if p.stderr:
            p.stderr.close()
        out.seek(0)
        data = out.read()
    if check and rc != 0:
        raise SystemExit(f"{' '.join(argv)} exited with {rc}: {err.decode(errors='replace').strip()[:500]}")
    return ChildRun(wall, ru.ru_utime + ru.ru_stime, rc, data)


def repeat_child(argv: Sequence[str], n: int, **kw: object) -> list[ChildRun]:
    return [run_child(argv, **kw) for _ in range(n)]  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Spread:
    lo: float
    median: float
    hi: float
    n: int

    @classmethod
    def of(cls, xs: Sequence[float]) -> Spread:
        return cls(min(xs), statistics.median(xs), max(xs), len(xs))

    def fmt(self, scale: float = 1.0, unit: str = "s", digits: int = 3) -> str:
        f = f"{{:.{digits}f}}"
        return (f"median {f.format(self.median * scale)} {unit} "
                f"(min {f.format(self.lo * scale)}, max {f.format(self.hi * scale)}, n={self.n})")


def child_line(label: str, runs: Sequence[ChildRun]) -> tuple[Spread, Spread]:
    """Print one line for repeated runs of a command; returns (wall, cpu) spreads."""
    wall = Spread.of([r.wall for r in runs])
    cpu = Spread.of([r.cpu for r in runs])
    print(f"  {label:<44s} wall {wall.fmt()}   cpu median {cpu.median:.3f} s   [{load()}]", flush=True)
    return wall, cpu


def median_ci(xs: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median: the order statistics x_(k) and
    x_(n+1-k) with the largest k such that P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2
    (each value falls below the median with chance 1/2, whatever the distribution).
    (min, max) when n is too small for the confidence asked."""
    v = sorted(xs)
    n = len(v)
    tail = (1 - confidence) / 2
    k, below = 0, 0.0  # below: P(Binomial(n, 1/2) <= k - 1)
    while k < n // 2:
        nxt = below + math.comb(n, k) / 2 ** n
        if nxt > tail:
            break
        below, k = nxt, k + 1
    if k == 0:
        return v[0], v[-1]
    return v[k - 1], v[n - k]


def budget(name: str, value: float, limit: float, unit: str = "s", *, higher_is_better: bool = False,
           cpu: float | None = None, noise: float | None = None, ci: tuple[float, float] | None = None,
           note: str = "") -> bool:
    """One verdict line: `BUDGET <name>: <value> <= <limit> PASS|FAIL [cpu ...] (load ...)`.

    `cpu`, when given, is the same figure in CPU seconds: on an overloaded machine the wall
    figure fails for lack of a CPU, the CPU figure says whether goflame's own work fits.
    The verdict (PASS/FAIL) is the wall figure's; the CPU one is printed beside it.
    `noise`, in the figure's unit, is how much the baseline itself moved during the run: when
    it exceeds the limit the verdict is INCONCLUSIVE (and says which way it leaned).
    `ci`, a confidence interval of `value` (instead of `noise`): PASS or FAIL only when the
    whole interval is on one side of the limit, else INCONCLUSIVE.
    """
    ok = value >= limit if higher_is_better else value <= limit
    op = ">=" if higher_is_better else "<="
    verdict = "PASS" if ok else "FAIL"
    if noise is not None and noise > abs(limit):
        verdict = f"INCONCLUSIVE (baseline noise {noise:.3g} {unit} > the budget; leaned {verdict})"
    if ci is not None:
        inside = [(x >= limit) if higher_is_better else (x <= limit) for x in ci]
        span = f"95 % CI {ci[0]:.3g} .. {ci[1]:.3g} {unit}"
        verdict = (f"PASS ({span})" if all(inside) else f"FAIL ({span})" if not any(inside)
                   else f"INCONCLUSIVE ({span} contains the limit; leaned {verdict})")
    extra = ""
    if cpu is not None:
        cpu_ok = cpu >= limit if higher_is_better else cpu <= limit
        extra = f"  (cpu {cpu:.4g} {unit}: {'pass' if cpu_ok else 'fail'})"
    print(f"BUDGET {name}: {value:.4g} {unit} {op} {limit:g} {unit}  {verdict}{extra}"
          f"{'  ' + note if note else ''}  [{load()}]", flush=True)
    return ok


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def cpu_profile(fn: Callable[[], object], top: int = 12, sort: str = "tottime") -> str:
    """cProfile on CPU time (not wall): on a loaded machine wall-clock profiles mostly measure
    when we were descheduled. Returns the top `top` rows as text."""
    pr = cProfile.Profile(time.process_time)
    pr.enable()
    try:
        fn()
    finally:
        pr.disable()
    buf = io.StringIO()
    st = pstats.Stats(pr, stream=buf)
    st.strip_dirs().sort_stats(sort).print_stats(top)
    lines = buf.getvalue().splitlines()
    # Keep the header row and the table; drop pstats' preamble.
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    total = next((ln.strip() for ln in lines if "function calls" in ln), "")
    return "\n".join([f"    {total}"] + ["    " + ln for ln in lines[start:] if ln.strip()])


@contextmanager
def pause_spy(proc: Any) -> Iterator[list[Any]]:
    """Collect every PausedThread that `proc.pause` hands out inside the block.

    Library records keep only interrupt-to-detach (`pause_ns`), which includes a runnable
    thread's wait for a CPU to take the stop; `held_ns` (stop seen to detach) is the part of
    the stop that is goflame's alone. This wraps the real method and only watches its results.
    """
    seen: list[Any] = []
    orig = proc.pause

    def pause(*args: Any, **kwargs: Any) -> Any:
        got = orig(*args, **kwargs)
        seen.extend(got.values())
        return got

    proc.pause = pause
    try:
        yield seen
    finally:
        del proc.pause  # back to the class's method


def workload(go: str = gotoolchain.FAST) -> Path:
    """The benchmark target (bench/fixtures/workload), built and cached by a real toolchain."""
    return gotoolchain.build(BENCH / "fixtures" / "workload", gotoolchain.BuildSpec(go=go))


def start_workload(binary: Path, *args: str, gomaxprocs: int | None = None,
                   cpus: set[int] | None = None) -> tuple[subprocess.Popen[str], int]:
    """Start the workload; returns the process and the goroutine count it reports when ready."""
    env = dict(os.environ)
    if gomaxprocs:
        env["GOMAXPROCS"] = str(gomaxprocs)
    argv = [str(binary), *args]
    if cpus:
        argv = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *argv]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env, bufsize=1)
    assert p.stdout is not None
    line = p.stdout.readline()
    if not line.startswith("ready "):
        p.kill()
        raise SystemExit(f"workload did not start: {line!r}")
    return p, int(line.split()[2])


def stop(p: subprocess.Popen[str]) -> None:
    if p.poll() is None:
        p.kill()
    p.wait()
