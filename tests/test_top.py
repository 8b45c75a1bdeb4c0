"""`goflame top` in a real terminal (tmux) and in pipes, against real Go programs.

Oracles: cpuhog's own clock for the CPU split, cpuhog's source for declaring lines and
the body of each function, its construction for the goroutine count, the runtime's own
dump of the parked fixture for goroutine groups and states, tmux's view of the pane's
terminal modes for a restored terminal.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import gotoolchain as gt
from conftest import FIXTURES
from test_dump import Fixture, parse_dump

ROOT = Path(__file__).resolve().parent.parent
GOFLAME = [sys.executable, "-m", "goflame.cli"]
HOT = ("main.hot1", "main.hot2", "main.hot3")
PROMPT = "PROMPT$ "
_sessions = itertools.count()

def cpuhog() -> Path:
    return gt.build(ROOT / "examples" / "cpuhog", gt.BuildSpec())


def start_hog(duration: str, workers: int = 2) -> subprocess.Popen[str]:
    return subprocess.Popen([str(cpuhog()), "-d", duration, "-workers", str(workers)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


# ---------------------------------------------------------------------------------------------
# a real terminal


class Tmux:
    """A shell in a detached tmux pane on a private server, driven by keys, read by capture."""

    def __init__(self, width: int = 200, height: int = 50):
        self.socket = f"goflame-test-top-{os.getpid()}-{next(_sessions)}"
        self.tmux(["new-session", "-d", "-x", str(width), "-y", str(height), "-s", "top",
                   f"env PS1='{PROMPT}' bash --norc --noprofile"])
        self.socket_path = self.tmux(["display", "-p", "#{socket_path}"]).strip()
        try:
            self.wait_for(lambda s: PROMPT.rstrip() in s, "the shell prompt")
        except BaseException:
            self.close()
            raise

    def tmux(self, args: list[str]) -> str:
        r = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, (args, r.stderr)
        return r.stdout

    def run(self, command: str) -> None:
        self.tmux(["send-keys", "-t", "top", "-l", command])
        self.tmux(["send-keys", "-t", "top", "Enter"])

    def keys(self, *keys: str) -> None:
        self.tmux(["send-keys", "-t", "top", *keys])

    def type(self, text: str) -> None:
        self.tmux(["send-keys", "-t", "top", "-l", text])

    def screen(self) -> str:
        return self.tmux(["capture-pane", "-p", "-t", "top"])

    def flags(self) -> dict[str, str]:
        out = self.tmux(["display", "-p", "-t", "top",
                         "alternate_on=#{alternate_on} cursor_flag=#{cursor_flag} "
                         "keypad_cursor_flag=#{keypad_cursor_flag}"])
        return dict(kv.split("=") for kv in out.split())

    def wait_for(self, pred: Callable[[str], object], what: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        s = ""
        while time.monotonic() < deadline:
            s = self.screen()
            if pred(s):
                return s
            time.sleep(0.15)
        raise AssertionError(f"timed out waiting for {what}; screen:\n{s}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)
        Path(self.socket_path).unlink(missing_ok=True)


def top_command(*args: str) -> str:
    return f"cd {ROOT} && {' '.join(GOFLAME)} top {' '.join(args)}"


def prompt_is_back(s: str) -> bool:
    lines = [ln for ln in s.splitlines() if ln.strip()]
    return bool(lines) and lines[-1].rstrip() == PROMPT.rstrip()


def assert_terminal_sane(t: Tmux) -> None:
    """The screen and modes top changed are back, and a typed command echoes and runs."""
    flags = t.flags()
    assert flags == {"alternate_on": "0", "cursor_flag": "1", "keypad_cursor_flag": "0"}, flags
    t.run("stty -a | tr ' ;' '\\n\\n' | grep -xE -- '-?(icanon|echo|icrnl|opost)' | tr '\\n' ' '; "
          "echo; echo ok-$((40+2))")
    s = t.wait_for(lambda s: "ok-42" in s.split("echo ok-")[-1], "echo ok to run")
    modes = set(s.split("echo ok-$((40+2))")[-1].split("ok-42")[0].split())
    assert modes == {"icanon", "echo", "icrnl", "opost"}, modes


# ---------------------------------------------------------------------------------------------
# reading the screen


@dataclass(frozen=True)
class Row:
    own_pct: float
    total_pct: float
    own_s: float
    total_s: float
    label: str

    @property
    def function(self) -> str:
        m = re.fullmatch(r"(.*?) \(([^()]*)\)", self.label)  # "name (file.go:12)"
        return m[1] if m else self.label


ROW = re.compile(r"^\s*([\d.]+)%\s+([\d.]+)%\s+(\S+)\s+(\S+)\s{2}(\S.*?)\s*$")
GROUP = re.compile(r"^\s*(\d+)\s+([+-]\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s{2}(\S+)\s*(.*?)\s*$")
SAMPLES = re.compile(r"Samples ([\d,]+) \(\+([\d,]+) in")


def seconds(text: str) -> float:
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:([\d.]+)s)?", text)
    assert m and text, text
    h, mi, s = m.groups()
    return int(h or 0) * 3600 + int(mi or 0) * 60 + float(s or 0)


def function_rows(screen: str) -> list[Row]:
    lines = screen.splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if "%Own" in ln and "Function" in ln)
    except StopIteration:
        return []
    rows = []
    for ln in lines[start + 1:]:
        m = ROW.match(ln)
        if not m:
            break
        rows.append(Row(float(m[1]), float(m[2]), seconds(m[3]), seconds(m[4]), m[5]))
    return rows


@dataclass(frozen=True)
class Group:
    count: int
    delta: int
    running: int
    runnable: int
    syscall: int
    waiting: int
    start: str
    reason: str


def group_rows(screen: str) -> dict[str, Group]:
    out = {}
    for ln in screen.splitlines():
        m = GROUP.match(ln)
        if m:
            out[m[7]] = Group(*map(int, m.groups()[:6]), m[7], m[8])
    return out


def samples(screen: str) -> tuple[int, int]:
    m = SAMPLES.search(screen)
    assert m, screen
    return int(m[1].replace(",", "")), int(m[2].replace(",", ""))


def hog_source_lines() -> dict[str, tuple[int, int]]:
    """Each hot function's declaring line and last line, from cpuhog's source."""
    lines = (ROOT / "examples" / "cpuhog" / "main.go").read_text().splitlines()
    out = {}
    for i, ln in enumerate(lines, 1):
        m = re.match(r"func (hot\d)\(", ln)
        if m:
            end = next(j for j in range(i, len(lines) + 1) if lines[j - 1] == "}")
            out[f"main.{m[1]}"] = (i, end)
    return out


def normalised(values: dict[str, float]) -> dict[str, float]:
    total = sum(values[h] for h in HOT)
    assert total > 0, values
    return {h: 100 * values[h] / total for h in HOT}


# ---------------------------------------------------------------------------------------------
# the functions view against the workload's own clock


@pytest.mark.slow
def test_functions_view_ranks_hot1_first_with_the_workloads_own_shares_and_stops_when_it_exits():
    hog = start_hog("0")  # until SIGTERM, then it prints its own shares
    t = Tmux()
    try:
        t.run(top_command("--pid", str(hog.pid), "--delay", "2"))
        t.wait_for(lambda s: (rows := function_rows(s)) and rows[0].function == "main.hot1",
                   "main.hot1 to lead the list", timeout=40)
        # Shares need samples: wait for ~1,000 (binomial σ of a share < 1.6 points), then stop the hog.
        s = t.wait_for(lambda s: samples(s)[0] >= 1000, "1,000 samples", timeout=180)
        rows = {r.function: r for r in function_rows(s)}
        assert set(HOT) <= set(rows), s
        total, window = samples(s)
        hog.terminate()
        own_text, _ = hog.communicate(timeout=60)
        own = {m[1]: float(m[2]) for m in re.finditer(r"share (\S+) ([\d.]+)%", own_text)}
        by_time = normalised({h: rows[h].own_s for h in HOT})
        by_pct = normalised({h: rows[h].own_pct for h in HOT})
        # Each share is judged on the samples behind it, with their binomial noise (4 σ) and at
        # least 5 points: Own (s) on every sample so far, %Own on the last refresh's.
        hot_share = sum(rows[h].own_pct for h in HOT) / 100
        for h in HOT:
            for got, n in ((by_time, total * hot_share), (by_pct, window * hot_share)):
                sigma = 100 * math.sqrt(own[h] / 100 * (1 - own[h] / 100) / max(n, 1))
                assert abs(got[h] - own[h]) <= max(5.0, 4 * sigma), (h, got, own, n)
        # The target exited: top says so, returns to the shell with status 0, terminal intact.
        s = t.wait_for(prompt_is_back, "top to stop after the target exited", timeout=30)
        assert f"goflame: process {hog.pid} exited" in s and "[process exited]" in s, s
        t.run("echo rc=$?")
        t.wait_for(lambda s: "rc=0" in s, "top's exit status")
        assert_terminal_sane(t)
    finally:
        hog.kill()
        t.close()


# ---------------------------------------------------------------------------------------------
# every key


def header(s: str) -> str:
    return "\n".join(s.splitlines()[:5])


def sorted_by(rows: list[Row], column: str) -> bool:
    vals = [getattr(r, column) for r in rows]
    return len(vals) >= 4 and all(a >= b for a, b in itertools.pairwise(vals))


def test_every_key_changes_the_view_and_q_leaves_the_terminal_usable():
    hog = start_hog("120s")
    t = Tmux()
    src = hog_source_lines()
    try:
        t.run(top_command("--pid", str(hog.pid)))
        s = t.wait_for(lambda s: len(function_rows(s)) >= 4 and samples(s)[0] > 300, "rows", timeout=40)
        assert t.flags()["alternate_on"] == "1"  # so the checks after q below mean something
        # Default: one row per function, labelled with its declaring line.
        rows = {r.function: r for r in function_rows(s)}
        for h in HOT:
            if h in rows:
                assert rows[h].label == f"{h} (main.go:{src[h][0]})", rows[h]

        # 1-4: sort by each column.
        orders = {}
        for key, name, column in [("2", "%Total", "total_pct"), ("3", "OwnTime", "own_s"),
                                  ("4", "TotalTime", "total_s"), ("1", "%Own", "own_pct")]:
            t.keys(key)
            s = t.wait_for(lambda s, n=name, c=column: f"sort {n} " in header(s) + " "
                           and sorted_by(function_rows(s), c), f"rows sorted by {name}")
            orders[name] = [r.function for r in function_rows(s)]
        assert orders["%Total"][0] not in HOT and orders["%Own"][0] in HOT, orders
        assert orders["TotalTime"][0] not in HOT and orders["OwnTime"][0] in HOT, orders

        # l: one row per source line, every hot1 row on a line of hot1's body.
        t.keys("l")
        s = t.wait_for(lambda s: "by line" in header(s) and any(r.function == "main.hot1" for r in function_rows(s)),
                       "per-line rows")
        lo, hi = src["main.hot1"]
        hot1_lines = [int(r.label.rsplit(":", 1)[1].rstrip(")")) for r in function_rows(s) if r.function == "main.hot1"]
        assert hot1_lines and all(lo <= n <= hi for n in hot1_lines), (hot1_lines, lo, hi)
        t.keys("l")
        t.wait_for(lambda s: "by function" in header(s), "per-function rows again")

        # r: the counts start again from zero.
        before = samples(t.screen())[0]
        t.keys("r")
        s = t.wait_for(lambda s: samples(s)[0] < min(before / 2, 150), "a reset sample count", timeout=10)

        # g: goroutines grouped by start function: the two workers of main.main.func1.
        t.keys("g")
        s = t.wait_for(lambda s: "View goroutines" in s and "main.main.func1" in group_rows(s), "goroutines view")
        w = group_rows(s)["main.main.func1"]
        assert w.count == 2 and w.running + w.runnable + w.syscall + w.waiting == 2, w
        assert "Start function" in s and "%Own" not in s
        t.keys("g")
        t.wait_for(lambda s: "View functions" in s and function_rows(s), "functions view again")

        # /: type a filter, Enter applies it; Esc cancels an edit; an empty filter clears it.
        t.keys("/")
        t.type("hot2")
        t.wait_for(lambda s: "Filter: hot2_" in s, "the filter being typed")
        t.keys("Enter")
        s = t.wait_for(lambda s: "filter 'hot2'" in header(s) and function_rows(s), "filtered rows")
        assert all("hot2" in r.label for r in function_rows(s)), function_rows(s)
        t.keys("/")
        t.type("zz")
        t.wait_for(lambda s: "Filter: hot2zz_" in s, "an edit")
        t.keys("Escape")
        s = t.wait_for(lambda s: "Filter:" not in s and "filter 'hot2'" in header(s) and function_rows(s),
                       "the edit cancelled")
        assert all("hot2" in r.label for r in function_rows(s))
        t.keys("/", "BSpace", "BSpace", "BSpace", "BSpace", "Enter")
        t.wait_for(lambda s: "filter" not in header(s) and any(r.function == "main.hot1" for r in function_rows(s)),
                   "the filter cleared")

        # ?: help; any key closes it.
        t.keys("?")
        t.wait_for(lambda s: "goflame top: keys" in s and not function_rows(s), "help")
        t.keys("x")
        t.wait_for(lambda s: "goflame top: keys" not in s and function_rows(s), "help closed")

        # q: back to the shell, terminal as it was.
        t.keys("q")
        t.wait_for(prompt_is_back, "the shell prompt after q")
        t.run("echo rc=$?")
        t.wait_for(lambda s: "rc=0" in s, "top's exit status")
        assert_terminal_sane(t)
        assert hog.poll() is None
    finally:
        hog.kill()
        t.close()


@pytest.mark.matrix  # ~13 s: the slow tier
def test_ctrl_c_and_a_launched_command_ending_both_restore_the_terminal(tmp_path):
    hog = start_hog("120s")
    t = Tmux()
    try:
        t.run(top_command("--pid", str(hog.pid)))
        t.wait_for(lambda s: function_rows(s), "rows", timeout=40)
        t.keys("C-c")
        t.wait_for(prompt_is_back, "the shell prompt after Ctrl-C")
        t.run("echo rc=$?")
        t.wait_for(lambda s: "rc=0" in s, "top's exit status")
        assert_terminal_sane(t)
        assert hog.poll() is None
        t.run("clear")
        # A launched command: its output goes to a log (not over the screen), its end is reported.
        t.run(top_command("--delay", "0.5", "--", str(cpuhog()), "-d", "10s"))
        t.wait_for(lambda s: any(r.function in HOT for r in function_rows(s)), "rows of the launched command",
                   timeout=40)
        s = t.wait_for(prompt_is_back, "top to stop when the command ends", timeout=30)
        assert "exited with status 0" in s, s
        m = re.search(r"is in (\S+\.log)", s)
        assert m, s
        log = Path(m[1]).read_text()
        os.unlink(m[1])
        assert "share main.hot1" in log, log
        assert_terminal_sane(t)
    finally:
        hog.kill()
        t.close()


# ---------------------------------------------------------------------------------------------
# plain output


def run_top(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GOFLAME, "top", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_goroutines_view_matches_the_runtimes_own_dump(tmp_path):
    fx = Fixture(gt.build(FIXTURES / "parked", gt.BuildSpec()), tmp_path, spin=0)
    try:
        r = run_top("--pid", str(fx.pid), "--once", "--view", "goroutines", "--delay", "0.3")
        theirs = parse_dump(fx.runtime_dump())
    finally:
        fx.close()
    assert r.returncode == 0, r.stderr
    ours = group_rows(r.stdout)
    # The runtime's dump: group by outermost frame (the start function), count per state.
    want: dict[str, Counter[str]] = {}
    for goid, b in theirs.items():
        if goid == 1 or not b.frames or b.frames[-1][0].startswith("..."):
            continue  # goroutine 1 is the one dumping (running); an elided stack has no outermost
        want.setdefault(b.frames[-1][0], Counter())[b.state] += 1
    assert len(want) >= 20
    for start, states in want.items():
        got = ours.get(start)
        assert got is not None, (start, sorted(ours))
        waiting = {k: v for k, v in states.items() if k not in ("running", "runnable", "syscall")}
        if start == "os/signal.loop":
            # The goroutine that carries the SIGUSR1 asking for the runtime's dump: at that dump
            # it is back in signal_recv (syscall) or on its way there (runnable, running).
            assert got.count == sum(states.values()) and not waiting, (start, got, states)
            continue
        assert (got.count, got.running, got.runnable, got.syscall, got.waiting) == (
            sum(states.values()), states["running"], states["runnable"], states["syscall"], sum(waiting.values())
        ), (start, got, states)
        if waiting:
            top_reason = max(waiting.items(), key=lambda kv: (kv[1], kv[0]))[0]
            assert got.reason.split(" (+")[0] == top_reason, (start, got, states)
    assert sum(g.count for g in ours.values()) == sum(sum(c.values()) for c in want.values()) + 1


def test_idle_mode_state_leaves_and_recursive_totals_match_the_runtimes_dump(tmp_path):
    fx = Fixture(gt.build(FIXTURES / "parked", gt.BuildSpec()), tmp_path, spin=0)
    try:
        r = run_top("--pid", str(fx.pid), "--once", "--idle", "--delay", "0.5")
        recurse = run_top("--pid", str(fx.pid), "--once", "--idle", "--delay", "0.5", "--filter", "main.recurse")
        theirs = parse_dump(fx.runtime_dump())
    finally:
        fx.close()
    assert r.returncode == 0, r.stderr
    per_tick = float(re.search(r"goroutines per tick ([\d.]+)", r.stdout)[1])
    rows = {r.function: r for r in function_rows(r.stdout)}
    want = Counter(b.state for b in theirs.values())
    one = 100 / per_tick  # one goroutine's share
    for state in ("chan send", "sync.Mutex.Lock", "sleep", "IO wait", "select (no cases)", "sync.Cond.Wait"):
        got = rows[f"[{state}]"].own_pct
        assert abs(got - want[state] * one) < min(0.3, one / 2), (state, got, want[state], per_tick)
    # Each sample counts a function once however deep it recurses: 3 goroutines park in recurse(600).
    recursing = sum(1 for b in theirs.values() if any(f == "main.recurse" for f, _ in b.frames))
    assert recursing == 3
    assert recurse.returncode == 0, recurse.stderr
    rows = {r.function: r for r in function_rows(recurse.stdout)}
    assert set(rows) == {"main.recurse"}, recurse.stdout  # --filter keeps only matching rows
    assert abs(rows["main.recurse"].total_pct - recursing * one) < min(0.3, one / 2), rows["main.recurse"]


@pytest.mark.slow
def test_piped_output_prints_snapshots_and_says_when_the_target_exits():
    hog = start_hog("120s")
    try:
        p = subprocess.Popen([*GOFLAME, "top", "--pid", str(hog.pid), "--delay", "0.5"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT)
        assert p.stdout is not None
        head = []
        deadline = time.monotonic() + 60  # start-up time varies with the machine's load
        while time.monotonic() < deadline and sum("goflame top  pid" in ln for ln in head) < 3:
            head.append(p.stdout.readline())
        hog.send_signal(signal.SIGINT)  # cpuhog exits cleanly on SIGINT
        rest, err = p.communicate(timeout=60)
    finally:
        hog.kill()
    out = "".join(head) + rest
    assert p.returncode == 0, err
    snaps = out.split("goflame top  pid")[1:]
    assert len(snaps) >= 3, out
    assert "[process exited]" in snaps[-1] and all("[process exited]" not in s for s in snaps[:-1])
    assert f"goflame: process {hog.pid} exited" in err
    assert "\x1b" not in out  # plain text: no terminal control sequences
    assert any(r.function == "main.hot1" for s in snaps for r in function_rows(s))


def test_once_prints_one_snapshot_and_leaves_the_target_running():
    hog = start_hog("60s")
    try:
        r = run_top("--pid", str(hog.pid), "--once", "--delay", "1")
        assert hog.poll() is None
    finally:
        hog.kill()
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("goflame top  pid") == 1 and r.stderr == ""
    rows = function_rows(r.stdout)
    assert rows and rows[0].function in HOT and sorted_by(rows, "own_pct"), r.stdout


@pytest.mark.parametrize("args,code,words", [
    (["--pid", "999999999"], 3, "no process"),
    ([], 2, "give either"),
    (["--pid", str(os.getpid())], 2, "not a Go program"),
    (["--pid", "1", "--delay", "0"], 2, "--delay"),
    (["--pid", "1", "-r", "0"], 2, "rate"),
    (["--", "/nonexistent/prog"], 2, "no such file"),
])
def test_top_bad_input_gets_one_line_and_an_exit_code(args, code, words):
    r = run_top(*args)
    assert r.returncode == code, r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_sigterm_stops_top_and_leaves_the_target_running():
    hog = start_hog("60s")
    try:
        p = subprocess.Popen([*GOFLAME, "top", "--pid", str(hog.pid), "--delay", "0.5"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT)
        deadline = time.monotonic() + 40
        assert p.stdout is not None
        while time.monotonic() < deadline and "goflame top" not in p.stdout.readline():
            pass
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        assert hog.poll() is None
        for tid in os.listdir(f"/proc/{hog.pid}/task"):
            state = Path(f"/proc/{hog.pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            assert state not in ("t", "T"), "top left a thread of the target stopped"
    finally:
        hog.kill()
