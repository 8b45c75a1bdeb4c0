"""The realistic workloads of the accuracy tests, started and stopped the way tests need them.

Each workload is a Go program under tests/fixtures/ that runs until killed and prints one
ready line when it is warmed up; `start` waits for that line (never a fixed sleep). httpload
is a server: its load comes from a separate program (httpclient), started here too, whose
own ready line says requests are flowing. Only the workload's `pid` is to be profiled.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import gotoolchain as gt

FIXTURES = Path(__file__).resolve().parent / "fixtures"
READY_TIMEOUT_S = 60.0
DEFAULT = gt.BuildSpec()


class Workload(Enum):
    """The workloads, by fixture directory. Their sources say what each exercises."""

    ALLOCGC = "allocgc"
    HTTPLOAD = "httpload"
    LOCKCONTEND = "lockcontend"


# httpclient: 32 clients asking for 64 items each keep the server at ~1.1 CPU on a 2-CPU
# machine while the client itself takes ~0.6 (measured): the profilers still have room.
HTTPCLIENT_ARGS = ("-c", "32", "-n", "64", "-fresh", "0.1")


@dataclass(slots=True)
class Running:
    """A started workload (and its load generator): kill it with `close`, on every path."""

    workload: Workload
    binary: Path
    proc: subprocess.Popen
    ready: str
    helpers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None and all(h.poll() is None for h in self.helpers)

    def close(self) -> None:
        for p in (*self.helpers, self.proc):
            if p.poll() is None:
                p.kill()
            p.wait()
            if p.stdout is not None:
                p.stdout.close()


def binaries(workload: Workload, spec: gt.BuildSpec) -> list[Path]:
    """The workload's binary (and its load generator's), built by a real toolchain. Never
    stripped: `perf` names Go functions from .symtab, which stripping removes."""
    assert not spec.stripped, "perf needs .symtab to name Go functions: build the workloads unstripped"
    names = [workload.value] + (["httpclient"] if workload is Workload.HTTPLOAD else [])
    return [gt.build(FIXTURES / name, spec) for name in names]


def read_ready_line(proc: subprocess.Popen, what: str, timeout: float = READY_TIMEOUT_S) -> str:
    """The first stdout line of `proc` that starts with "ready", or an AssertionError."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            raise AssertionError(f"{what} printed no ready line (exit status {proc.poll()}, output {buf!r})")
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                continue
            buf += chunk
    line = buf.split(b"\n", 1)[0].decode()
    assert line.startswith("ready"), f"{what}: unexpected first line {line!r}"
    return line


def start(workload: Workload, spec: gt.BuildSpec = DEFAULT) -> Running:
    """Start `workload` built with `spec` and wait until it (and its load) is warmed up."""
    bins = binaries(workload, spec)
    proc = subprocess.Popen([str(bins[0])], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    run = Running(workload, bins[0], proc, "")
    try:
        run.ready = read_ready_line(proc, workload.value)
        if workload is Workload.HTTPLOAD:
            port = re.search(r"port=(\d+)", run.ready)
            assert port, run.ready
            client = subprocess.Popen([str(bins[1]), "-port", port.group(1), *HTTPCLIENT_ARGS],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            run.helpers.append(client)
            read_ready_line(client, "httpclient")
    except BaseException:
        run.close()
        raise
    return run


def process_cpu_ns(pid: int) -> int:
    """CPU time the kernel has given all of a process's threads (schedstat's first field)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            pass  # a thread that exited meanwhile
    return total
