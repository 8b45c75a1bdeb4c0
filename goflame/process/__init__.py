"""A live Linux target: memory reads, threads, ptrace pauses, /proc parsing.

This layer knows nothing of Go: it hands out bytes, registers and kernel facts, and turns
every kernel refusal into a GoflameError with one line of advice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from goflame.errors import BadInput, ProcessGone
from goflame.process import procfs
from goflame.process.memory import Backend, ProcessMemory, gone_message
from goflame.process.procfs import ExePath, MemoryMap, ThreadInfo
from goflame.process.ptrace import PausedThread, Pauser, Registers, check_can_trace

__all__ = ["ExePath", "MemoryMap", "PausedThread", "Process", "ProcessMemory", "Registers",
           "ThreadInfo", "check_can_trace"]


class Process:
    """An opened target process. Use `Process.open(pid)`; close it (or use `with`)."""

    def __init__(self, pid: int, memory: ProcessMemory, task: procfs.TaskDir, exe: ExePath,
                 starttime: int) -> None:
        self.pid = pid
        self.memory = memory
        self.exe = exe
        self.starttime = starttime
        self._task = task
        self._pauser = Pauser(pid)

    @classmethod
    def open(cls, pid: int, backend: Backend = "auto") -> Process:
        """Validate `pid` and open it: ProcessGone / NotPermitted / BadInput with advice."""
        if pid <= 0:
            raise BadInput(f"{pid} is not a process id")
        if not procfs.exists(pid):
            raise ProcessGone(f"no process with pid {pid}")
        st = procfs.stat(pid)
        if st.zombie:
            raise ProcessGone(f"process {pid} ({st.comm}) has exited: it is a zombie "
                              f"waiting for its parent (pid {st.ppid}) to reap it")
        group = procfs.tgid(pid)
        if group != pid:
            raise BadInput(f"{pid} is a thread of process {group}: use --pid {group}")
        check_can_trace(pid)
        memory = ProcessMemory(pid, backend)
        task = None
        try:
            memory.probe()
            task = procfs.TaskDir(pid)
            exe = procfs.exe_path(pid)
        except BaseException:
            memory.close()
            if task is not None:
                task.close()
            raise
        return cls(pid, memory, task, exe, st.starttime)

    @property
    def exe_path(self) -> str:
        """The path to open the executable by (/proc/PID/exe): valid across mount namespaces."""
        return self.exe.path

    def threads(self) -> list[ThreadInfo]:
        return self._task.threads()

    def thread_state(self, tid: int) -> str | None:
        """One thread's state letter (R, S, D, t...), None if it exited."""
        return self._task.state(tid)

    def run_time_ns(self, tid: int) -> int | None:
        """CPU time of one thread so far, in ns (None if it exited)."""
        return self._task.run_time_ns(tid)

    def tids(self) -> list[int]:
        return self._task.tids()

    def maps(self) -> list[MemoryMap]:
        return procfs.maps(self.pid)

    def load_bias(self, segments: Sequence[tuple[int, int]]) -> int:
        """PIE load bias of the executable, given its PT_LOAD (p_vaddr, p_offset) pairs."""
        return procfs.load_bias(self.maps(), segments, inode=self.exe.inode, dev=self.exe.dev,
                                path=self.exe.target)

    def alive(self) -> bool:
        """Still running, and still the process we opened (not a reused pid)."""
        try:
            st = procfs.stat(self.pid)
        except ProcessGone:
            return False
        return not st.zombie and st.starttime == self.starttime

    def check_alive(self) -> None:
        if not self.alive():
            raise ProcessGone(gone_message(self.pid))

    def pause(self, tids: Iterable[int], while_stopped: Callable[[int, Registers], Any] | None = None,
              *, overlap: bool = True) -> dict[int, PausedThread]:
        """Stop each thread briefly and return its registers (see Pauser.pause)."""
        return self._pauser.pause(tids, while_stopped, overlap=overlap)

    def paused(self, tids: Iterable[int]) -> AbstractContextManager[dict[int, Registers]]:
        """Hold all `tids` stopped inside a `with` block (see Pauser.paused)."""
        return self._pauser.paused(tids)

    @property
    def pauser(self) -> Pauser:
        return self._pauser

    def close(self) -> None:
        self.memory.close()
        self._task.close()

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Process(pid={self.pid}, exe={self.exe.target!r})"

