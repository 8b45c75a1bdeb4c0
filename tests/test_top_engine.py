"""`goflame top` samples the way `record` does: the kernel's perf events where allowed, so that
nothing of the target is ever stopped; ptrace, with one warning, where perf is refused.

The oracle is the kernel's own view of the target's threads (TracerPid, state), polled every
few milliseconds for as long as top runs.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import gotoolchain as gt
from conftest import FIXTURES

GOFLAME = [sys.executable, "-m", "goflame.cli"]


def spinner() -> Path:
    return gt.build(FIXTURES / "spinner")


def watch_threads(pid: int, stop: threading.Event, seen: list[str]) -> None:
    """Every few ms until `stop`: each thread of `pid` that is traced or in a tracing stop."""
    while not stop.is_set():
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                status = (task / "status").read_text()
            except OSError:
                continue
            tracer = re.search(r"^TracerPid:\s+(\d+)", status, re.M)
            state = re.search(r"^State:\s+(\S)", status, re.M)
            if (tracer and tracer.group(1) != "0") or (state and state.group(1) == "t"):
                seen.append(f"{task.name}: {tracer and tracer.group(1)} {state and state.group(1)}")
        time.sleep(0.003)


def run_top_watched(extra: list[str], preexec=None) -> tuple[subprocess.CompletedProcess, list[str]]:
    target = subprocess.Popen([str(spinner()), "-spinners", "2", "-gc", "5ms"], stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout is not None and target.stdout.readline().startswith("ready")
        stop, seen = threading.Event(), []
        watcher = threading.Thread(target=watch_threads, args=(target.pid, stop, seen), daemon=True)
        watcher.start()
        try:
            r = subprocess.run([*GOFLAME, "top", "--pid", str(target.pid), "--once", "--delay", "4", *extra],
                               capture_output=True, text=True, timeout=120, preexec_fn=preexec)
        finally:
            stop.set()
            watcher.join()
        return r, seen
    finally:
        target.kill()
        target.wait()


def test_top_stops_nothing_where_perf_is_allowed():
    r, seen = run_top_watched([])
    assert r.returncode == 0, r.stderr
    assert "main.spin" in r.stdout, r.stdout
    assert not seen, seen[:10]
    assert "warning" not in r.stderr, r.stderr


def test_top_falls_back_to_ptrace_with_one_warning_where_perf_is_refused():
    from test_record import deny_perf_event_open

    r, seen = run_top_watched([], preexec=deny_perf_event_open)
    assert r.returncode == 0, r.stderr
    assert "main.spin" in r.stdout, r.stdout
    warnings = [line for line in r.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "perf_event_open was refused" in warnings[0], r.stderr
    assert seen, "ptrace pauses threads: the watcher must have seen some (else it could not see any)"

    forced, _ = run_top_watched(["--engine", "perf"], preexec=deny_perf_event_open)
    assert forced.returncode == 4, forced.stderr
    assert len(forced.stderr.strip().splitlines()) == 1 and "perf_event_open" in forced.stderr, forced.stderr
