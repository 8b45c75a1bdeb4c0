"""The CPU the sampling thread runs on, and the CPU it wakes on next.

The ptrace engine's samples are the registers of threads it stops, and stopping takes a CPU:
the thread goflame preempts there is frozen where it was at goflame's wakeup, while threads on
the other CPUs run on without it, and a program whose threads wait for each other (locks,
spinning, hand-offs) reacts within microseconds. So the threads goflame preempts are the
tick's samples (see `CreditScheduler.frozen_first`, goflame/credit.py), and goflame moves itself, before it sleeps, to a
CPU where a thread owed samples runs: each CPU the target runs on is visited in turn. Only the
calling thread is moved, within the CPUs it was allowed when it started; `close` gives it back
its own set.

Which thread goflame took the CPU from, it learns from the kernel's scheduler: the switch that
put goflame on the CPU stamped the run-queue clock on both (`se.exec_start` in
/proc/TID/sched), so the thread whose stamp equals goflame's own is that thread, whether it
waits in the run queue now (preempted) or sleeps (it ran kernel code, which this kernel does
not preempt, into a futex or a poll). `switched_in_ns` is goflame's stamp of its last wakeup.

The thread there must be frozen at the moment goflame's timer fires, not at the next point
where the kernel would switch anyway (a page fault, a syscall's return, its scheduler tick),
and must stay frozen until goflame has stopped it. So the sampler sleeps real-time (`waking`):
a real-time thread that wakes takes its CPU at once. It is ordinary again once the frozen
threads are read, and after at most WAKE_REALTIME_NS: the rest of its work cannot starve the
target.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import time
from collections.abc import Iterator

from goflame.process.procfs import parse_exec_start

# How long the sampler may stay real-time after a wakeup to look at the target's threads
# before it stops the ones it froze.
WAKE_REALTIME_NS = 1_000_000

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.sched_getcpu.restype = ctypes.c_int


def current_cpu() -> int:
    """The CPU the calling thread runs on now; -1 if the kernel will not say."""
    return int(_LIBC.sched_getcpu())


def _ordinary_param() -> os.sched_param | None:
    """The calling thread's parameters if it runs SCHED_OTHER (what `waking` restores); None
    if it has a policy of someone else's choosing, left alone."""
    try:
        return os.sched_getparam(0) if os.sched_getscheduler(0) == os.SCHED_OTHER else None
    except OSError:
        return None


def _to_realtime() -> bool:
    """Make the calling thread SCHED_FIFO 1; False (nothing changed) where not permitted (no
    CAP_SYS_NICE)."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(1))
    except OSError:
        return False
    return True


class CpuPin:
    """Moves the calling thread to one CPU for its next wakeup, or lets it run anywhere."""

    def __init__(self) -> None:
        self._allowed = frozenset(os.sched_getaffinity(0))
        self._pinned: int | None = None
        self._next: int | None = None
        self._ordinary_param: os.sched_param | None = None  # set while `waking` left it real-time
        self._woke_ns = 0
        self._switched_in_ns: int | None = None
        self._own_files: tuple[int, int, int] | None = None  # (thread id, fds of its sched, schedstat)

    @property
    def pinned(self) -> int | None:
        """The CPU the thread is held to, None when it may run anywhere it was allowed."""
        return self._pinned

    @property
    def allowed(self) -> list[int]:
        """The CPUs the thread was allowed when it started, in order."""
        return sorted(self._allowed)

    def allows(self, cpu: int) -> bool:
        return cpu in self._allowed

    def wake_on(self, cpu: int | None) -> None:
        """Wake on `cpu` (None: anywhere it was allowed) from the next `waking` on."""
        self._next = cpu

    def release(self) -> None:
        """Let the thread run anywhere again until the next `waking`: the rest of a tick's
        work (walking, writing) need not share the CPU of the thread it just froze."""
        self._move(None)

    def _move(self, cpu: int | None) -> None:
        """Run the calling thread on `cpu` from now on (None: anywhere it was allowed)."""
        if cpu is not None and cpu not in self._allowed:
            cpu = None
        if cpu == self._pinned:
            return
        try:
            os.sched_setaffinity(0, self._allowed if cpu is None else {cpu})
        except OSError:  # the CPU went offline, or a cpuset changed under us: run anywhere
            cpu = None
            try:
                os.sched_setaffinity(0, self._allowed)
            except OSError:
                return
        self._pinned = cpu

    @contextlib.contextmanager
    def waking(self) -> Iterator[None]:
        """Sleep inside this block as a real-time thread (SCHED_FIFO 1), when allowed and the
        thread has no policy of someone else's choosing. It stays real-time after the block,
        until `ordinary()`: the sampler calls it once the frozen threads' stops are read (or
        before a pause of many threads, which boosts itself), at the end of the tick, and once
        the look at the threads has taken WAKE_REALTIME_NS (`overdue`). Ordinary any sooner,
        goflame lost its CPU to the very thread it had frozen, for a scheduler slice: the
        thread ran on, and most ticks came too late."""
        self.ordinary()
        self._switched_in_ns = None
        # What to restore is kept before the switch: a Ctrl-C landing between the two still
        # finds it (`ordinary`, `close`).
        self._ordinary_param = _ordinary_param()
        if self._ordinary_param is not None and not _to_realtime():
            self._ordinary_param = None
        # Moved only now, real-time: moved as an ordinary thread onto a CPU a thread of the
        # target keeps busy, goflame waited there for that thread's scheduler tick.
        self._move(self._next)
        if self._ordinary_param is None:
            yield
            return
        before = self._own_runs()
        try:
            yield
        except BaseException:
            self.ordinary()
            raise
        stamp = parse_exec_start(self._own_read(0, 256))
        self._woke_ns = time.perf_counter_ns()
        # Put on a CPU once since: by the wakeup. More, and the last switch-in was not the
        # wakeup's (a tracer such as strace stopped goflame on its way out of the sleep).
        after = self._own_runs()
        self._switched_in_ns = stamp if before is not None and after == before + 1 else None

    @property
    def switched_in_ns(self) -> int | None:
        """The run-queue clock when the last real-time wakeup put this thread on its CPU (the
        thread switched out then holds the same stamp); None if not known: no such wakeup yet,
        or the kernel has no sched file. Read first thing after the wakeup, as a real-time
        thread: only a scheduler tick, rarely, moves the stamp before the sampler compares it."""
        return self._switched_in_ns

    def _own_runs(self) -> int | None:
        """How often the calling thread was put on a CPU so far (schedstat's third field)."""
        fields = self._own_read(1, 128).split()
        return int(fields[2]) if len(fields) == 3 else None

    def _own_read(self, which: int, size: int) -> bytes:
        """The calling thread's /proc/thread-self/sched (0) or schedstat (1); b"" if the kernel
        has none. Kept open per thread: read each tick."""
        tid = threading.get_native_id()
        if self._own_files is None or self._own_files[0] != tid:
            self._close_own_files()
            self._own_files = (tid, *(self._open_own(name) for name in ("sched", "schedstat")))
        fd = self._own_files[1 + which]
        if fd < 0:
            return b""
        try:
            return os.pread(fd, size, 0)
        except OSError:
            return b""

    @staticmethod
    def _open_own(name: str) -> int:
        try:
            return os.open(f"/proc/thread-self/{name}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return -1  # not asked again: the kernel has no such file

    def _close_own_files(self) -> None:
        if self._own_files is not None:
            for fd in self._own_files[1:]:
                if fd >= 0:
                    os.close(fd)
            self._own_files = None

    def overdue(self) -> bool:
        """Real-time for WAKE_REALTIME_NS since the wakeup already."""
        return self._ordinary_param is not None and time.perf_counter_ns() - self._woke_ns > WAKE_REALTIME_NS

    def ordinary(self) -> None:
        """Back to the policy the thread slept with (SCHED_OTHER), if `waking` changed it."""
        param, self._ordinary_param = self._ordinary_param, None
        if param is not None:
            os.sched_setscheduler(0, os.SCHED_OTHER, param)

    def close(self) -> None:
        self.ordinary()
        self._move(None)
        self._close_own_files()
