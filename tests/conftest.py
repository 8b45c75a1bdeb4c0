"""Shared by the tests: where fixtures live, and what every test that runs a real program
needs to reach a verdict deterministically (the design brief's "A verdict is deterministic"):

- fixtures print a ready line and tests wait for it (`read_ready_line`, `start_cpuhog`), never
  a fixed sleep;
- a test waits on a deadline with a reason (`wait_until`), never on a count of tries;
- a rate is judged on a count the test itself ensured, against a binomial bound
  (`binomial_upper_ok`, `share_tolerance`), with a false-alarm chance per verdict small enough
  that the whole suite stays green run after run (`Z`, `ALPHA`).
"""

from __future__ import annotations

import math
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))

import gotoolchain as gt  # noqa: E402

if TYPE_CHECKING:
    from goflame.profile import Sample

FIXTURES = TESTS / "fixtures"
ROOT = TESTS.resolve().parent
READY_TIMEOUT_S = 60.0


@pytest.fixture(scope="session")
def go():
    return gt


def build_fixture(name: str, spec: gt.BuildSpec) -> Path:
    return gt.build(FIXTURES / name, spec)


# A correct goflame must pass every statistical verdict of the suite run after run: each
# verdict's chance of failing it by sampling noise alone is at most ALPHA (two-sided normal
# bounds use Z standard errors, ~7e-6). A few dozen such verdicts then fail a good commit
# about once in a few thousand runs of the fast tier.
ALPHA = 1e-5
Z = 4.5

T = TypeVar("T")


# -- ready lines and deadlines ----------------------------------------------------------------


def read_ready_line(proc: subprocess.Popen, what: str, timeout: float = READY_TIMEOUT_S,
                    prefix: str = "ready") -> str:
    """The first stdout line of `proc`, which must start with `prefix`; an AssertionError if it
    does not come within `timeout`. Reads the pipe byte by byte, so whatever the program
    prints after it is left for `proc.stdout` (or `communicate()`) to read."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or (not select.select([fd], [], [], 0)[0] and proc.poll() is not None):
            raise AssertionError(f"{what} printed no {prefix} line within {timeout:.0f} s "
                                 f"(exit status {proc.poll()}, output {buf!r})")
        if select.select([fd], [], [], min(left, 0.5))[0]:
            chunk = os.read(fd, 1)
            if not chunk:
                continue
            buf += chunk
    line = buf.decode().rstrip("\n")
    assert line.startswith(prefix), f"{what}: unexpected first line {line!r}"
    return line


def wait_until(cond: Callable[[], T], what: str | Callable[[], str], timeout: float = 60.0,
               every: float = 0.02) -> T:
    """Poll `cond` until it returns something true (returned), or fail naming `what` (a
    callable: made at the failure, to describe the state then)."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what() if callable(what) else what}")
        time.sleep(every)


# -- cpuhog: the CPU split known by construction ---------------------------------------------


def cpuhog(spec: gt.BuildSpec | None = None) -> Path:
    return gt.build(ROOT / "examples" / "cpuhog", spec or gt.BuildSpec())


def start_cpuhog(*args: str, workers: int = 1, spec: gt.BuildSpec | None = None,
                 gomaxprocs: int | None = None, stderr: int | None = subprocess.DEVNULL) -> subprocess.Popen:
    """cpuhog with `workers` goroutines (and `args`, e.g. "-d", "60s" or "-cpu", "3s"),
    once every worker has run each hot function (its ready line). Its stdout stays open:
    `communicate()` gives the "share main.hotN X%" lines of its own clock after it exits."""
    env = dict(os.environ)
    if gomaxprocs:
        env["GOMAXPROCS"] = str(gomaxprocs)
    proc = subprocess.Popen([str(cpuhog(spec)), "-workers", str(workers), *args], stdout=subprocess.PIPE,
                            stderr=stderr, text=True, env=env)
    try:
        read_ready_line(proc, "cpuhog")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def hog_shares(text: str) -> dict[str, float]:
    """cpuhog's own measured shares (percent) from its exit output."""
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"share (\S+) ([\d.]+)%", text)}


# -- processes as the kernel sees them --------------------------------------------------------


def task_states(pid: int) -> dict[int, str]:
    """tid -> state letter of every thread of `pid` (threads that end meanwhile left out)."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        out[int(tid)] = stat.rsplit(")", 1)[1].split()[0]
    return out


def signal_status(pid: int) -> str:
    """State, signal masks, wait channel and current syscall of each thread of `pid`, for a
    failure message."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            lines = (task / "status").read_text().splitlines()
            wchan = (task / "wchan").read_text().strip()
            syscall = (task / "syscall").read_text().split()[0]
        except (OSError, IndexError):
            continue
        keep = [ln for ln in lines if ln.split(":")[0] in ("State", "TracerPid", "SigPnd", "ShdPnd", "SigBlk",
                                                          "SigIgn")]
        out.append(f"{task.name}: " + ", ".join(" ".join(ln.split()) for ln in keep)
                   + f", wchan {wchan}, syscall {syscall}")
    return "; ".join(out)



def cpu_ns(pid: int) -> int:
    """CPU time the kernel has given all of a process's threads (schedstat's first field)."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            pass  # a thread that exited meanwhile
    return total


def stopped_for_good(pid: int, settle: float = 0.15) -> bool:
    """Whether `pid` is stopped and stays so: every thread in a stop (T or t) and no CPU time
    added, at every look for `settle` seconds. A thread that is merely in a tracing stop for
    a moment (a tracer looking at a signal) runs again within that time."""
    end = time.monotonic() + settle
    before = cpu_ns(pid)
    while True:
        states = task_states(pid)
        if not states or any(s not in "tT" for s in states.values()):
            return False
        if time.monotonic() >= end:
            return cpu_ns(pid) == before
        time.sleep(0.01)


# -- statistics --------------------------------------------------------------------------------


def share_tolerance(p: float, *counts: int, floor: float = 0.0) -> float:
    """Points by which a share measured on `counts` samples (one count: against the truth; two:
    two independent estimates against each other) may differ, for a true share `p` (percent):
    Z binomial standard errors, at least `floor`."""
    q = p / 100 * (1 - p / 100)
    var = sum(q / n for n in counts if n > 0)
    assert all(n > 0 for n in counts), counts
    return max(floor, Z * 100 * math.sqrt(var))


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    total = 0.0
    for i in range(k, n + 1):
        total += math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq)
    return min(1.0, total)


def binomial_upper_ok(k: int, n: int, p_max: float, alpha: float = ALPHA) -> bool:
    """Whether `k` events in `n` trials is consistent with a rate of at most `p_max`: false
    only when so many would come by chance less often than `alpha` at the rate `p_max`."""
    return binomial_tail(k, n, p_max) >= alpha


# -- goflame run until it has the samples a verdict needs --------------------------------------

GOFLAME = [sys.executable, "-m", "goflame.cli"]


def folded_file(path: Path) -> dict[str, int]:
    """`root;...;leaf count` lines -> {stack: count} (stacks that repeat are summed)."""
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        out[stack] = out.get(stack, 0) + int(n)
    return out


def record_then_ask(fixture: list[str], record_args: list[str], answer_lines: int,
                    timeout: float = 150) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Start a fixture that prints "ready ..." and, on a line "stop" on stdin, its own account
    of the run in `answer_lines` lines; run `goflame record --pid PID RECORD_ARGS` on it in
    between. Returns goflame's result and the fixture's lines."""
    fx = subprocess.Popen(fixture, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert fx.stdin is not None and fx.stdout is not None
        assert fx.stdout.readline().startswith("ready")
        r = subprocess.run([sys.executable, "-m", "goflame.cli", "record", "--pid", str(fx.pid), *record_args],
                           capture_output=True, text=True, timeout=timeout)
        fx.stdin.write("stop\n")
        fx.stdin.flush()
        lines = [fx.stdout.readline().strip() for _ in range(answer_lines)]
    finally:
        fx.kill()
        fx.wait()
    return r, lines


def record_until(pid: int, tmp_path: Path, args: list[str], enough: Callable[[dict[str, int]], bool], what: str,
                 *, seconds: float = 3, max_seconds: float = 180) -> dict[str, int]:
    """`goflame record --pid PID ARGS -d SECONDS -f folded` in rounds, their stacks summed
    (root first, as folded files have them), until `enough(stacks)`: a sample count the test
    needs, which a fixed duration yields only on a machine with CPU to spare. Fails, naming
    `what`, once `max_seconds` of rounds have not got there."""
    stacks: dict[str, int] = {}
    start = time.monotonic()
    i = 0
    while not enough(stacks):
        if time.monotonic() - start > max_seconds:
            top = sorted(stacks.items(), key=lambda kv: -kv[1])[:3]
            raise AssertionError(f"{what}: not reached in {max_seconds:.0f} s of recording; "
                                 f"{sum(stacks.values())} samples, e.g. {top}")
        out = tmp_path / f"round{i}.folded"
        r = subprocess.run([*GOFLAME, "record", "--pid", str(pid), *args, "-d", f"{seconds:g}", "-f", "folded",
                            "-o", str(out)], capture_output=True, text=True, timeout=seconds + 300)
        assert r.returncode == 0, r.stderr
        for stack, n in folded_file(out).items():
            stacks[stack] = stacks.get(stack, 0) + n
        i += 1
    return stacks


def effective_samples(tmp_path: Path, keep: Callable[[Sample], bool]) -> float:
    """The number of independent moments that the samples `keep` selects are worth, over the
    rounds of `record_until` run with --keep-raw: (sum of weights)^2 / sum of squares. A
    ptrace sample of a thread goflame could not freeze at earlier ticks stands for several
    intervals but is one moment, so a share's binomial bound is on this, not on the weights'
    sum (their count in a folded file)."""
    from goflame.profile import read_recording

    total = squares = 0
    for raw in sorted(tmp_path.glob("round*.folded.goflame")):
        for s in read_recording(raw).samples:
            if keep(s):
                total += s.weight
                squares += s.weight * s.weight
    return total * total / squares if squares else 0.0


def streamed_samples(raw: Path) -> int:
    """Samples in goflame's streamed recording so far (0 before it exists): what a test waits
    for before it stops goflame, so that the output holds the samples its verdict needs."""
    from goflame.profile import read_recording

    try:
        return len(read_recording(raw).samples)
    except Exception:  # noqa: BLE001 - not there yet, or no sample chunk written yet
        return 0
