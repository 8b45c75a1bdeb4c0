"""A live Linux target: memory reads, threads, ptrace pauses, /proc parsing.

This layer knows nothing of Go: it hands out bytes, registers and kernel facts, and turns
every kernel refusal into a GoflameError with one line of advice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import TypeVar

from goflame.errors import BadInput, ProcessGone, TargetExeced
from goflame.process import procfs
from goflame.process.memory import Backend, ProcessMemory, exec_message, gone_message
from goflame.process.procfs import ExePath, MemoryMap, ThreadInfo
from goflame.process.ptrace import PausedThread, Pauser, Registers, check_can_trace

NS_REFRESH_S = 0.05

__all__ = ["ExePath", "MemoryMap", "PausedThread", "Process", "ProcessMemory", "Registers",
           "ThreadInfo", "check_can_trace"]

T = TypeVar("T")  # what a pause's while_stopped callback reads in the stop


class Process:
    """An opened target process. Use `Process.open(pid)`; close it (or use `with`)."""

    def __init__(self, pid: int, memory: ProcessMemory, task: procfs.TaskDir, exe: ExePath,
                 starttime: int, startstack: int = 0) -> None:
        self.pid = pid
        self.memory = memory
        self.exe = exe
        self.starttime = starttime
        self.startstack = startstack
        self._task = task
        self._pauser = Pauser(pid, task, guard=True)
        self._host_tids: dict[int, int] = {}  # see host_tid
        self._host_tids_time = float("-inf")

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
        procfs.check_pid_namespace()
        check_can_trace(pid)
        memory = ProcessMemory(pid, backend)
        task = None
        try:
            memory.probe()
            task = procfs.TaskDir(pid)
            exe = procfs.exe_path(pid)
            mine = procfs.exe_mappings(procfs.maps(pid), inode=exe.inode, dev=exe.dev, path=exe.target)
            if mine:
                memory.watch_image(min(m.start for m in mine))
        except BaseException:
            memory.close()
            if task is not None:
                task.close()
            raise
        return cls(pid, memory, task, exe, st.starttime, st.startstack)

    @property
    def exe_path(self) -> str:
        """The path to open the executable by (/proc/PID/exe): valid across mount namespaces."""
        return self.exe.path

    def threads(self) -> list[ThreadInfo]:
        return self._task.threads()

    def run_state_and_split(self, tid: int) -> tuple[str, int, int, int] | None:
        """(state letter, its CPU, clock ticks in user mode, in kernel mode) of one thread, from
        one read; None if it exited."""
        return self._task.run_state_and_split(tid)

    def exec_start(self, tid: int) -> int | None:
        """The run-queue clock (ns) when the thread last started or stopped running (see
        `CpuPin.switched_in_ns`); None if it exited or the kernel will not say."""
        return self._task.exec_start(tid)

    def run_state(self, tid: int) -> tuple[str, int] | None:
        """(state letter, the CPU it runs or last ran on) of one thread; None if it exited."""
        return self._task.run_state(tid)

    def thread_state(self, tid: int) -> str | None:
        """One thread's state letter (R, S, D, t...), None if it exited."""
        return self._task.state(tid)

    def schedstat(self, tid: int) -> tuple[int, int, int] | None:
        """(CPU ns, run-queue wait ns, times switched in) of one thread so far; None if it exited."""
        return self._task.schedstat(tid)

    def switches(self, tid: int) -> tuple[str, int, int] | None:
        """(state letter, voluntary and involuntary context switches so far) of one thread;
        None if it exited."""
        return self._task.switches(tid)

    def tids(self) -> list[int]:
        return self._task.tids()

    def owns(self, tid: int) -> bool:
        """Whether `tid` is a thread of the target now: nothing is done to any other."""
        return self._task.owns(tid)

    def host_tid(self, ns_tid: int) -> int:
        """The thread id goflame must use for the target's own id of a thread (m.procid), 0 if
        no task of the target has it. The same number unless the target is in a pid namespace
        of its own (a container) seen from outside it; the map is read again, at most every
        NS_REFRESH_S, when an id is not in it (a new thread)."""
        tid = self._host_tids.get(ns_tid)
        if tid is None and ns_tid > 0:
            now = time.monotonic()
            if now - self._host_tids_time >= NS_REFRESH_S:
                self._host_tids = self._task.ns_tids()
                self._host_tids_time = now
                tid = self._host_tids.get(ns_tid)
        return tid or 0

    def relist_threads(self) -> None:
        """Let the next unknown thread id read the task list again at once (not after
        NS_REFRESH_S): for a one-shot look, such as a dump's second try at a goroutine the
        scheduler moved to a thread started since the list was read."""
        self._host_tids_time = float("-inf")

    def maps(self) -> list[MemoryMap]:
        return procfs.maps(self.pid)

    def load_bias(self, segments: Sequence[tuple[int, int]]) -> int:
        """PIE load bias of the executable, given its PT_LOAD (p_vaddr, p_offset) pairs."""
        return procfs.load_bias(self.maps(), segments, inode=self.exe.inode, dev=self.exe.dev,
                                path=self.exe.target)

    def alive(self) -> bool:
        """Still running, and still the program we opened (not a reused pid, no execve since)."""
        try:
            self.check_alive()
        except ProcessGone:
            return False
        return True

    def check_alive(self) -> None:
        """ProcessGone if it exited or its pid is another process now; TargetExeced if it
        replaced its program."""
        try:
            st = procfs.stat(self.pid)
        except ProcessGone:
            raise ProcessGone(gone_message(self.pid)) from None
        if st.zombie or st.starttime != self.starttime:
            raise ProcessGone(gone_message(self.pid))
        if self.memory.image_replaced() or (self.startstack and st.startstack and st.startstack != self.startstack):
            raise TargetExeced(exec_message(self.pid))

    def pause(self, tids: Iterable[int], while_stopped: Callable[[int, Registers], T] | None = None,
              *, overlap: bool = True, just_before: Callable[[int], None] | None = None) -> dict[int, PausedThread[T]]:
        """Stop each thread briefly and return its registers (see Pauser.pause)."""
        return self._pauser.pause(tids, while_stopped, overlap=overlap, just_before=just_before)

    def paused(self, tids: Iterable[int]) -> AbstractContextManager[dict[int, Registers]]:
        """Hold all `tids` stopped inside a `with` block (see Pauser.paused)."""
        return self._pauser.paused(tids)

    @property
    def pauser(self) -> Pauser:
        return self._pauser

    def close(self) -> None:
        try:
            self._pauser.close()
        finally:
            self.memory.close()
            self._task.close()

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Process(pid={self.pid}, exe={self.exe.target!r})"

