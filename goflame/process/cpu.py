"""The CPU the sampling thread runs on, and the CPU it wakes on next.

The ptrace engine's samples are the registers of threads it stops, and stopping takes a CPU:
the thread goflame preempts there is frozen where it was at goflame's wakeup, while threads on
the other CPUs run on without it, and a program whose threads wait for each other (locks,
spinning, hand-offs) reacts within microseconds. So the threads goflame preempts are the
tick's samples (see `Sampler._frozen_first`), and goflame moves itself, before it sleeps, to a
CPU where a thread owed samples runs: each CPU the target runs on is visited in turn. Only the
calling thread is moved, within the CPUs it was allowed when it started; `close` gives it back
its own set.

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
import time
from collections.abc import Iterator

# How long the sampler may stay real-time after a wakeup to look at the target's threads
# before it stops the ones it froze.
WAKE_REALTIME_NS = 1_000_000

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.sched_getcpu.restype = ctypes.c_int


def current_cpu() -> int:
    """The CPU the calling thread runs on now; -1 if the kernel will not say."""
    return int(_LIBC.sched_getcpu())


def _to_realtime() -> os.sched_param | None:
    """Make the calling thread SCHED_FIFO 1 and return what to restore; None (and nothing
    changed) where not permitted (no CAP_SYS_NICE) or the thread has a policy of someone
    else's choosing."""
    try:
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            return None
        param = os.sched_getparam(0)
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(1))
    except OSError:
        return None
    return param


class CpuPin:
    """Moves the calling thread to one CPU for its next wakeup, or lets it run anywhere."""

    def __init__(self) -> None:
        self._allowed = frozenset(os.sched_getaffinity(0))
        self._pinned: int | None = None
        self._next: int | None = None
        self._ordinary_param: os.sched_param | None = None  # set while `waking` left it real-time
        self._woke_ns = 0

    @property
    def pinned(self) -> int | None:
        """The CPU the thread is held to, None when it may run anywhere it was allowed."""
        return self._pinned

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
        param = _to_realtime()
        # Moved only now, real-time: moved as an ordinary thread onto a CPU a thread of the
        # target keeps busy, goflame waited there for that thread's scheduler tick.
        self._move(self._next)
        if param is None:
            yield
            return
        self._ordinary_param = param
        try:
            yield
        except BaseException:
            self.ordinary()
            raise
        self._woke_ns = time.perf_counter_ns()

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
