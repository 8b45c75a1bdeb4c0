"""A stopped goflame must never hold a stopped thread of its target.

goflame's pauses last microseconds, but between PTRACE_INTERRUPT and PTRACE_DETACH a thread
of the target sits in a ptrace stop that only goflame can end. If goflame itself is stopped
right then — `kill -STOP`, a debugger attaching, a job-control stop — that thread stays
stopped until goflame runs again, and the target's next stop-the-world (a GC) waits for it:
the whole program hangs. A signal handler cannot help (SIGSTOP cannot be caught).

The guard is a tiny helper process that PTRACE_SEIZEs goflame's sampling thread. Every stop
of that thread is then reported to the guard first, and ptrace lets a tracer resume a thread
of a stopped group. While goflame holds a thread of the target (`StopGuard.holding`), the
guard lets goflame's thread run on through a group stop; goflame finishes the pause, lets go
of the target's thread and then stops itself, which the guard now lets happen
(PTRACE_LISTEN: stopped with its group until SIGCONT). Outside a pause the guard passes
every stop and signal on unchanged, so goflame's own job control behaves as usual.

The guard costs nothing between pauses (it sleeps in waitpid). goflame's sampling thread
blocks SIGCHLD while guarded: every stop of a target thread sends the tracer a SIGCHLD, and
each delivered signal would be a round trip through the guard; goflame learns of stops with
waitpid, never from the signal.

It dies with goflame (PR_SET_PDEATHSIG) and leaves goflame's session (setsid), so neither a
terminal's Ctrl-C/Ctrl-Z nor a stop of goflame's process group reaches it. Where it cannot
trace goflame (goflame is itself under a debugger or strace), `StopGuard.start` returns
None and pauses run unguarded, as before: microseconds long, and released on every path.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import signal
import time
from collections.abc import Iterator

PTRACE_CONT = 7
PTRACE_SEIZE = 0x4206
PTRACE_LISTEN = 0x4208
PTRACE_EVENT_STOP = 128
WALL = 0x40000000
PR_SET_PDEATHSIG = 1
PR_SET_PTRACER = 0x59616D61  # Yama: let this process trace us (harmless without Yama)
SYS_GETTID = 186  # x86_64
STOP_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})
START_TIMEOUT_S = 2.0

# The page goflame and the guard share: one byte each.
HOLDING = 0  # goflame: 1 while a thread of the target may be in a stop of ours
DEFERRED = 1  # guard: a stop came while goflame held a thread; goflame stops itself after
READY = 2  # guard: tracing goflame's thread (2: could not)
RESTOP = 3  # goflame: the SIGSTOP it sends itself now is the deferred stop

_libc = ctypes.CDLL(None, use_errno=True)
_ptrace = _libc.ptrace
_ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_ptrace.restype = ctypes.c_long


def gettid() -> int:
    return _libc.syscall(SYS_GETTID)


class StopGuard:
    """One guard process for one thread of goflame (the one that pauses the target's threads).

    Use `holding()` around every stretch in which a thread of the target may be stopped by
    goflame. `close()` ends the guard (also on goflame's exit: the kernel kills it)."""

    def __init__(self, pid: int, tid: int, shared: mmap.mmap, mask_before: set[signal.Signals]) -> None:
        self.pid = pid  # the guard process
        self.tid = tid  # goflame's guarded thread
        self._shared = shared
        self._mask_before = mask_before

    @classmethod
    def start(cls, cpus: frozenset[int] | None = None) -> StopGuard | None:
        """A guard for the calling thread, or None where it cannot be had. It runs on `cpus`
        (the calling thread may be held to one CPU for the moment: see process/cpu.py)."""
        tid = gettid()
        shared = mmap.mmap(-1, mmap.PAGESIZE, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        parent = os.getpid()
        try:
            child = os.fork()
        except OSError:
            return None
        if child == 0:  # pragma: no cover - runs in the guard process
            _guard_main(parent, tid, shared, cpus)
        _libc.prctl(PR_SET_PTRACER, child, 0, 0, 0)
        deadline = time.monotonic() + START_TIMEOUT_S
        while shared[READY] == 0 and time.monotonic() < deadline:
            time.sleep(0.0005)
        if shared[READY] != 1:
            _end(child)
            return None
        mask_before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        return cls(child, tid, shared, mask_before)

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """The body may hold threads of the target stopped: no stop of goflame takes effect
        until it ends; a stop that came meanwhile is taken right after."""
        shared = self._shared
        shared[HOLDING] = 1
        try:
            yield
        finally:
            shared[HOLDING] = 0
            if shared[DEFERRED]:
                self._stop_now()

    def _stop_now(self) -> None:
        """Take the stop that was deferred: nothing of the target is held any more. The guard
        clears DEFERRED when goflame's group is continued meanwhile, and then drops this
        SIGSTOP (a SIGCONT that came first must not be undone)."""
        shared = self._shared
        shared[RESTOP] = 1
        try:
            os.kill(os.getpid(), signal.SIGSTOP)
        finally:
            shared[RESTOP] = 0

    def close(self) -> None:
        if self.pid:
            _end(self.pid)
            self.pid = 0
            signal.pthread_sigmask(signal.SIG_SETMASK, self._mask_before)


def _end(child: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(child, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(child, 0)


def _guard_main(parent: int, tid: int, shared: mmap.mmap,
                cpus: frozenset[int] | None) -> None:  # pragma: no cover - guard process
    """The guard process: trace goflame's thread and serve its stops until it is gone."""
    code = 0
    try:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if cpus:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, cpus)
        if os.getppid() != parent:
            os._exit(0)
        os.setsid()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if _ptrace(PTRACE_SEIZE, tid, None, None) != 0:
            shared[READY] = 2
            os._exit(1)
        shared[READY] = 1
        _serve(tid, shared)
    except BaseException:
        code = 1
    os._exit(code)


def _serve(tid: int, shared: mmap.mmap) -> None:  # pragma: no cover - guard process
    while True:
        try:
            _pid, status = os.waitpid(tid, WALL)
        except ChildProcessError:
            return
        except InterruptedError:
            continue
        if not os.WIFSTOPPED(status):
            return  # goflame's thread is gone
        sig = os.WSTOPSIG(status)
        if status >> 16 == PTRACE_EVENT_STOP:
            if sig in STOP_SIGNALS:  # its group is stopping
                if shared[HOLDING]:
                    shared[DEFERRED] = 1  # run on: goflame stops itself once it let go
                    _ptrace(PTRACE_CONT, tid, None, None)
                else:
                    shared[DEFERRED] = 0
                    _ptrace(PTRACE_LISTEN, tid, None, None)  # stopped with its group until SIGCONT
            else:
                shared[DEFERRED] = 0  # the group was continued (SIGCONT): nothing left to take
                _ptrace(PTRACE_CONT, tid, None, None)
            continue
        # A signal on its way to goflame's thread: pass it on, as if nobody were looking,
        # except goflame's own deferred SIGSTOP once a SIGCONT made it moot.
        if sig == signal.SIGSTOP and shared[RESTOP] and not shared[DEFERRED]:
            sig = 0
        _ptrace(PTRACE_CONT, tid, None, ctypes.c_void_p(sig))
