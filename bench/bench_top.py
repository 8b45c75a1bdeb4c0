"""What `goflame top` costs goflame itself, against `goflame record` doing the same sampling.

Both sample the same 2-worker cpuhog at the same rate. For each run the CPU time of the
goflame process (every thread's /proc/PID/task/TID/schedstat on-CPU time, in ns) is read
once it is sampling steadily and again `--seconds` later, so start-up (imports, attach) and
shutdown (writing the output) are left out of both. Modes, interleaved so that other load on
the machine hits each alike:

  record    goflame record --pid P -r RATE -o x.goflame   (raw recording, no conversion)
  top-tty   goflame top --pid P -r RATE in a 200x50 tmux pane (curses, refresh 1 s)
  top-pipe  goflame top --pid P -r RATE > file             (plain snapshots every 1 s)

Prints each run, then the median CPU per mode and top's ratio to record (budget: <= 1.10).

    .venv/bin/python bench/bench_top.py [--seconds 10] [--reps 3] [--rate 100]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import gotoolchain  # noqa: E402

GOFLAME = [sys.executable, "-m", "goflame.cli"]
MODES = ("record", "top-tty", "top-pipe")


def cpu_ns(pid: int) -> int:
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def wait_until(pred: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


class Run:
    """One goflame process against one hog; `pid` is goflame's, `stop()` ends it."""

    def __init__(self, mode: str, hog: int, rate: float, tmp: Path):
        self.mode, self.tmp = mode, tmp
        self.socket = f"goflame-bench-top-{os.getpid()}"
        self.out = tmp / f"{mode}.out"
        args = ["--pid", str(hog), "-r", str(rate)]
        if mode == "record":
            raw = tmp / "rec.goflame"
            self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [*GOFLAME, "record", *args, "-o", str(raw)], stdout=subprocess.DEVNULL,
                stderr=open(self.out, "wb"), cwd=REPO)  # noqa: SIM115 - closed with the process
            self.pid = self.proc.pid
            wait_until(lambda: raw.exists() and raw.stat().st_size > 500, "record to stream samples")
        elif mode == "top-pipe":
            self.proc = subprocess.Popen([*GOFLAME, "top", *args], stdout=open(self.out, "wb"),  # noqa: SIM115
                                         stderr=subprocess.DEVNULL, cwd=REPO)
            self.pid = self.proc.pid
            wait_until(lambda: self.out.read_text().count("goflame top") >= 2, "top's second snapshot")
        else:
            self.proc = None
            self.tmux("new-session", "-d", "-x", "200", "-y", "50", "-s", "b", "-c", str(REPO), "--",
                      *GOFLAME, "top", *args)
            self.pid = int(self.tmux("display", "-p", "-t", "b", "#{pane_pid}"))
            self.socket_path = self.tmux("display", "-p", "#{socket_path}").strip()
            wait_until(lambda: "main.hot1" in self.tmux("capture-pane", "-p", "-t", "b"), "top's screen")
            time.sleep(1.0)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True,
                              check=True, timeout=30).stdout

    def achieved_hz(self) -> str:
        """The sampling rate goflame reports (record: at exit; top: its latest refresh)."""
        if self.mode == "record":
            m = re.search(r"at (\d+) Hz", self.out.read_text())
        elif self.mode == "top-pipe":
            m = list(re.finditer(r"s, (\d+) Hz", self.out.read_text()))
            m = m[-1] if m else None
        else:
            m = re.search(r"s, (\d+) Hz", self.tmux("capture-pane", "-p", "-t", "b"))
        return m[1] if m else "?"

    def stop(self) -> str:
        hz = ""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=60)
        else:
            hz = self.achieved_hz()
            self.tmux("send-keys", "-t", "b", "q")
            wait_until(lambda: not Path(f"/proc/{self.pid}").exists(), "top to quit", 30)
            subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)
            Path(self.socket_path).unlink(missing_ok=True)
        return hz or self.achieved_hz()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rate", type=float, default=100.0)
    a = ap.parse_args()
    hog_bin = gotoolchain.build(REPO / "examples" / "cpuhog", gotoolchain.BuildSpec())
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    print(f"goflame's own CPU during {a.seconds:g} s of sampling a 2-worker cpuhog at {a.rate:g} Hz "
          f"(load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for rep in range(a.reps):
            order = MODES[rep % len(MODES):] + MODES[:rep % len(MODES)]
            for mode in order:
                hog = subprocess.Popen([str(hog_bin), "-d", "600s", "-workers", "2"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
                try:
                    run = Run(mode, hog.pid, a.rate, tmp)
                    c0 = cpu_ns(run.pid)
                    time.sleep(a.seconds)
                    c1 = cpu_ns(run.pid)
                    hz = run.stop()
                finally:
                    hog.kill()
                    hog.wait()
                used = (c1 - c0) / 1e9
                cpu[mode].append(used)
                print(f"  rep {rep + 1}  {mode:<9} {used:6.3f} s CPU  ({100 * used / a.seconds:4.1f} % of a core, "
                      f"achieved {hz} Hz)", flush=True)
    med = {m: statistics.median(v) for m, v in cpu.items()}
    print("median CPU seconds: " + ", ".join(f"{m} {v:.3f}" for m, v in med.items()))
    for m in ("top-tty", "top-pipe"):
        print(f"ratio {m} / record: {med[m] / med['record']:.3f}  (budget 1.10)")


if __name__ == "__main__":
    main()
