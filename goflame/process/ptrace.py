"""Stopping threads for a few microseconds: PTRACE_SEIZE + PTRACE_INTERRUPT, then detach.

Why this shape (see DESIGN.md, "Safety rules"):
- never SIGSTOP and never PTRACE_ATTACH: both leave a stop behind if goflame dies, and a
  seized thread is resumed by the kernel when its tracer exits;
- never stay attached between pauses: Go sends SIGURG to running threads all the time and
  a traced thread that gets a signal stops until its tracer services it. Every thread a
  pause seized is detached before the pause returns, on every path;
- never hold a thread while goflame itself can be stopped: a stop of goflame in the middle
  of a pause would leave the target's thread stopped until goflame runs again (guard.py);
- never touch a thread that is not the target's: ids are checked against its task list;
- never swallow a signal: when the stop we get is a signal-delivery-stop (often SIGURG,
  sometimes the user's SIGTERM or SIGHUP) the registers are just as good for a sample, and
  the signal is handed back with PTRACE_DETACH(sig). Job-control semantics stay the
  kernel's: detaching a thread whose group is stopped leaves it stopped, and a SIGCONT that
  arrives during our stop wins over a SIGSTOP we pass on.

A Pauser must be used by one thread: the kernel ties a tracee to the thread that seized it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from goflame.errors import NotPermitted, ProcessGone
from goflame.process import procfs
from goflame.process.guard import StopGuard
from goflame.process.memory import gone_message, permission_advice

PTRACE_GETREGS = 12
PTRACE_DETACH = 17
PTRACE_GETSIGINFO = 0x4202
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_EVENT_STOP = 128  # status >> 16 of an interrupt- or group-stop
WALL = 0x40000000  # __WALL: wait for clone children (threads) too
_EVENT_STOP_CODE = signal.SIGTRAP | PTRACE_EVENT_STOP << 8  # si_code of an interrupt stop
RETRY_SEIZE_S = 0.002

_libc = ctypes.CDLL(None, use_errno=True)
_ptrace = _libc.ptrace
_ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_ptrace.restype = ctypes.c_long

# struct user_regs_struct (arch/x86/include/asm/user_64.h), 27 unsigned longs.
_REG_NAMES = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
              "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
              "gs_base", "ds", "es", "fs", "gs")
_REGS = struct.Struct(f"<{len(_REG_NAMES)}Q")


@dataclass(frozen=True, slots=True)
class Registers:
    """x86_64 user_regs_struct of a stopped thread."""

    r15: int
    r14: int
    r13: int
    r12: int
    rbp: int
    rbx: int
    r11: int
    r10: int
    r9: int
    r8: int
    rax: int
    rcx: int
    rdx: int
    rsi: int
    rdi: int
    orig_rax: int
    rip: int
    cs: int
    eflags: int
    rsp: int
    ss: int
    fs_base: int
    gs_base: int
    ds: int
    es: int
    fs: int
    gs: int

    @classmethod
    def from_bytes(cls, raw: bytes) -> Registers:
        return cls(*_REGS.unpack(raw))

    @property
    def pc(self) -> int:
        return self.rip

    @property
    def sp(self) -> int:
        return self.rsp

    @property
    def fp(self) -> int:
        return self.rbp


T = TypeVar("T")  # what a pause's while_stopped callback reads in the stop


@dataclass(frozen=True, slots=True)
class PausedThread(Generic[T]):
    """What one pause of one thread produced."""

    tid: int
    regs: Registers
    pause_ns: int  # from PTRACE_INTERRUPT to PTRACE_DETACH (includes a queued thread's wait for a CPU)
    held_ns: int  # from seeing the stop to PTRACE_DETACH: the part of the stop that is ours alone
    signal: int = 0  # a signal that arrived during the stop and was passed on at detach
    extra: T | None = None  # what the while_stopped callback returned (None without one)


class _Tracee:
    """Book-keeping for one seized thread, updated right after each syscall."""

    __slots__ = ("tid", "sig", "t_interrupt", "t_stopped", "raw")

    def __init__(self, tid: int) -> None:
        self.tid = tid
        self.sig = 0
        self.t_interrupt = 0
        self.t_stopped = 0
        self.raw = b""


def _err() -> int:
    return ctypes.get_errno()


def _not_permitted(pid: int, tid: int) -> NotPermitted:
    try:
        tracer = procfs.tracer_pid(pid, tid)
    except ProcessGone:
        tracer = 0
    if tracer and tracer != os.getpid():
        return NotPermitted(f"pid {pid} is already being traced by pid {tracer} (a debugger?): "
                            f"detach it first")
    return NotPermitted(permission_advice(pid))


def _thread_alive(pid: int, tid: int) -> bool:
    state = procfs.thread_state(pid, tid)
    return state is not None and state not in "ZXx" and procfs.alive(pid)


def check_can_trace(pid: int) -> None:
    """Raise ProcessGone / NotPermitted now, with advice, instead of failing mid-sample.

    Opening /proc/PID/mem runs the kernel's ptrace access check (the same credentials,
    capability and Yama rules as PTRACE_SEIZE) without touching the target.
    """
    if not procfs.exists(pid):
        raise ProcessGone(gone_message(pid))
    if procfs.is_zombie(pid):
        raise ProcessGone(f"process {pid} has exited (it is a zombie)")
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(gone_message(pid)) from None
    except PermissionError:
        raise NotPermitted(permission_advice(pid)) from None
    os.close(fd)


def _other_tracer(pid: int, tid: int) -> int:
    """The pid of a tracer other than goflame that holds thread `tid`, else 0."""
    try:
        tracer = procfs.tracer_pid(pid, tid)
    except ProcessGone:
        return 0
    return tracer if tracer and tracer != os.getpid() else 0


class Pauser:
    """Stops threads of one process just long enough to read what a sample needs.

    `pause` detaches each thread as soon as `while_stopped` has read it, so a thread is held
    only for its own getregs/reads/detach (the sampler's path); `paused` holds them all for
    the body of a `with`, a consistent snapshot across threads at the price of longer stops.
    bench/bench_pause.py measures both. Nothing is held between calls.

    Only the target's own threads are ever touched: a thread id is checked against the
    target's task list before PTRACE_SEIZE and again after it (a thread that exited may give
    its id to another process in between); a thread another tracer holds (a debugger, a
    second goflame) is skipped and counted in `busy`, never an error.

    With `boost` the calling thread runs SCHED_FIFO (priority 1, reset on fork) for the
    duration of a pause only, at most BOOST_NS of it, when the kernel allows it: while it
    holds a thread of the target it must not lose its CPU to an ordinary thread for a
    scheduler slice; between pauses (and after the first millisecond of a long one) it runs
    at its normal priority and cannot starve anything. With `guard`, a
    `StopGuard` (guard.py) makes sure goflame cannot be stopped while it holds a thread.
    """

    def __init__(self, pid: int, task: procfs.TaskDir | None = None, *, boost: bool = True,
                 guard: bool = False) -> None:
        self.pid = pid
        self.boost = boost
        self._boosted: tuple[int, os.sched_param] | None = None
        self._boost_due = False
        self._boost_until = 0
        self._task = task
        self._want_guard = guard
        self._guard: StopGuard | None = None
        self._guard_tried = False
        self._regs = (ctypes.c_uint64 * len(_REG_NAMES))()
        self._regs_addr = ctypes.addressof(self._regs)
        self._siginfo = ctypes.create_string_buffer(128)  # siginfo_t
        self._held: dict[int, _Tracee] = {}
        self.last_pause_ns: dict[int, int] = {}
        self.last_signals: dict[int, int] = {}
        self.busy: dict[int, int] = {}  # tid -> pid of the other tracer that held it (last seen)
        self.skipped_busy = 0  # pauses skipped because another tracer held the thread
        self.not_ours = 0  # thread ids asked for that are no task of the target: never touched
        self._seized_before = False
        self._cpus = frozenset(os.sched_getaffinity(0))  # for the stop guard: see StopGuard.start

    @property
    def guarded(self) -> bool:
        return self._guard is not None

    def pause(self, tids: Iterable[int],
              while_stopped: Callable[[int, Registers], T] | None = None, *,
              overlap: bool = True, just_before: Callable[[int], None] | None = None) -> dict[int, PausedThread[T]]:
        """Stop each thread briefly and read its registers; threads that exit are left out.

        Each thread is detached as soon as its registers are read. With `overlap` every
        thread is interrupted first and served in the order their stops arrive, so the
        waits of threads queued for a CPU overlap instead of adding up; without it,
        threads are taken strictly one after the other.
        `while_stopped(tid, regs)` runs while that thread is stopped (read its stack top
        there, nothing more); its result lands in `PausedThread.extra`. `just_before(tid)` runs
        right before each PTRACE_INTERRUPT (the thread is seized, not stopped).
        """
        asked: set[int] = set()  # a thread listed twice is paused once
        out: dict[int, PausedThread[T]] = {}
        with self._holding():
            try:
                if overlap:
                    # `tids` may be a generator that decides each thread just before it is
                    # interrupted: each one is seized and interrupted as it comes.
                    pending: dict[int, _Tracee] = {}
                    for tid in tids:
                        self._boost_spent()
                        if tid not in asked:
                            asked.add(tid)
                            t = self._seize_and_interrupt(tid, just_before)
                            if t is not None:
                                pending[tid] = t
                    while pending:
                        self._boost_spent()
                        t = pending.pop(self._next_stop(pending))
                        if self._wait_stop(t):
                            self._sample(t, while_stopped, out)
                else:
                    for tid in tids:
                        self._boost_spent()
                        if tid not in asked:
                            asked.add(tid)
                            t = self._seize_and_interrupt(tid, just_before)
                            if t is not None and self._wait_stop(t):
                                self._sample(t, while_stopped, out)
            finally:
                self._release_all()
        if asked and not out and not procfs.alive(self.pid):
            raise ProcessGone(gone_message(self.pid))
        return out

    @contextmanager
    def _holding(self) -> Iterator[None]:
        """What every stretch that may hold a thread of the target runs under: the stop guard
        (started on first use, in the thread that pauses) and the real-time boost."""
        if self._want_guard and not self._guard_tried:
            self._guard_tried = True
            self._guard = StopGuard.start(self._cpus)
        guard = self._guard.holding() if self._guard is not None else contextlib.nullcontext()
        with guard:
            came_with = _policy()
            self._boost_due = self.boost  # from the first seize on: see _boost_spent
            try:
                yield
            finally:
                self._end_boost()
                if came_with is not None and _policy() != came_with:
                    # A Ctrl-C (KeyboardInterrupt) landed between the boost and its record.
                    _unboost(came_with)

    def _start_boost(self) -> None:
        """Real-time from the moment a thread of the target is first seized: what the caller
        does before (deciding which threads are due, over 2,000 of them) is no reason to
        keep the target from the CPU."""
        if self._boost_due:
            self._boost_due = False
            self._boosted = self._boost() if self.boost else None
            self._boost_until = time.perf_counter_ns() + BOOST_NS

    def _boost_spent(self) -> None:
        """Called between the steps of a pause: a pause that outlasts BOOST_NS (many due
        threads: 2,000 threads at a tick) goes on at normal priority. Real-time for that long
        would keep the target's own threads from the CPU longer than a preemption would cost
        the threads held (bench/bench_gap.py, threads-2000)."""
        if self._boosted is not None and time.perf_counter_ns() > self._boost_until:
            self._end_boost()

    def _end_boost(self) -> None:
        boosted, self._boosted = self._boosted, None
        if boosted is not None:
            _unboost(boosted)

    def _seize_and_interrupt(self, tid: int, just_before: Callable[[int], None] | None = None) -> _Tracee | None:
        if not self._owns(tid):
            self.not_ours += 1
            return None
        self._start_boost()
        t = self._seize(tid)
        if t is None:
            return None
        if not self._owns(tid):
            # The thread exited and its id went to another process between the check and the
            # seize: let that one go at once (it is seized but not stopped; stopping it is the
            # only way to detach, and takes microseconds).
            self.not_ours += 1
            self._release(t)
            return None
        if just_before is not None:
            just_before(tid)
        return t if self._interrupt(t) else None

    def _owns(self, tid: int) -> bool:
        if self._task is None:
            return os.path.exists(f"/proc/{self.pid}/task/{tid}")
        return self._task.owns(tid)

    def _next_stop(self, pending: dict[int, _Tracee]) -> int:
        """The pending thread whose stop (or exit) arrived first, without consuming it.

        waitid(P_ALL, WNOWAIT) peeks at any child of ours; if what it reports is not one
        of our tracees (a child process of this program), fall back to the first pending
        thread and a plain blocking wait on it.
        """
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WSTOPPED | os.WNOWAIT | WALL)
        except ChildProcessError:
            info = None
        if info is not None and info.si_pid in pending:
            return info.si_pid
        return next(iter(pending))

    def _sample(self, t: _Tracee, while_stopped: Callable[[int, Registers], T] | None,
                out: dict[int, PausedThread[T]]) -> None:
        """Read registers of a stopped tracee, run the callback, detach, record."""
        raw = self._getregs(t)
        if raw is None:
            self._release(t)
            return
        extra: T | None = None
        regs = None
        try:
            if while_stopped is not None:
                regs = Registers.from_bytes(raw)
                extra = while_stopped(t.tid, regs)
        finally:
            released = self._detach(t)
        t_end = time.perf_counter_ns()
        if released:
            out[t.tid] = PausedThread(t.tid, regs or Registers.from_bytes(raw), t_end - t.t_interrupt,
                                      t_end - t.t_stopped, t.sig, extra)

    @contextmanager
    def paused(self, tids: Iterable[int]) -> Iterator[dict[int, Registers]]:
        """Hold every thread stopped for the body of the `with`; detach them all on exit.

        Durations and passed-on signals are in `last_pause_ns` / `last_signals` afterwards.
        """
        self.last_pause_ns = {}
        self.last_signals = {}
        regs: dict[int, Registers] = {}
        asked = False
        with self._holding():
            try:
                tracees = []
                for tid in dict.fromkeys(tids):
                    self._boost_spent()
                    asked = True
                    t = self._seize_and_interrupt(tid)
                    if t is not None:
                        tracees.append(t)
                for t in tracees:
                    self._boost_spent()
                    if self._wait_stop(t):
                        raw = self._getregs(t)
                        if raw is not None:
                            t.raw = raw
                for t in tracees:
                    if t.raw:
                        regs[t.tid] = Registers.from_bytes(t.raw)
                if asked and not regs and not procfs.alive(self.pid):
                    raise ProcessGone(gone_message(self.pid))
                yield regs
            finally:
                held = list(self._held.values())
                self._release_all()
                now = time.perf_counter_ns()
                for t in held:
                    if t.tid in regs:
                        self.last_pause_ns[t.tid] = now - t.t_interrupt
                        self.last_signals[t.tid] = t.sig

    def close(self) -> None:
        """End the stop guard, if one was started (nothing else is held between calls)."""
        self._release_all()
        guard, self._guard = self._guard, None
        if guard is not None:
            guard.close()

    def _boost(self) -> tuple[int, os.sched_param] | None:
        try:
            policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
            if policy != os.SCHED_OTHER:
                return None  # someone chose a policy for this thread: leave it alone
            os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(1))
        except OSError:
            self.boost = False  # not permitted (no CAP_SYS_NICE): do without
            return None
        return policy, param

    # -- the steps; each updates the _Tracee right after its syscall ------------------------

    def _seize(self, tid: int, retry: bool = True) -> _Tracee | None:
        # Book it before the syscall: an exception landing right after PTRACE_SEIZE must not
        # leave a tracee nobody knows about. _release copes with one that was never seized.
        t = self._held[tid] = _Tracee(tid)
        if _ptrace(PTRACE_SEIZE, tid, None, None) != 0:
            err = _err()
            del self._held[tid]
            if err == errno.ESRCH:
                return None  # exited already
            if err == errno.EPERM:
                return self._refused(tid, retry)
            raise NotPermitted(f"cannot trace thread {tid} of pid {self.pid}: {os.strerror(err)}")
        self._seized_before = True
        return t

    def _refused(self, tid: int, retry: bool) -> _Tracee | None:
        """PTRACE_SEIZE said EPERM. Opening the target's memory passed the same access check,
        so unless tracing is forbidden outright (a seccomp profile, Yama), the thread is held
        by another tracer — a debugger, or another goflame pausing it for microseconds (gone
        again by the time we look). That thread is skipped and counted, never an error."""
        if not _thread_alive(self.pid, tid):
            return None  # the kernel refuses to seize an exiting thread
        tracer = _other_tracer(self.pid, tid)
        if not tracer and not self._seized_before and retry:
            time.sleep(RETRY_SEIZE_S)  # a pause of another goflame lasts microseconds
            return self._seize(tid, retry=False)
        if tracer or self._seized_before:
            self.busy[tid] = tracer
            self.skipped_busy += 1
            return None
        raise _not_permitted(self.pid, tid)

    def _interrupt(self, t: _Tracee) -> bool:
        t.t_interrupt = time.perf_counter_ns()
        if _ptrace(PTRACE_INTERRUPT, t.tid, None, None) != 0:
            self._forget(t)  # not traced any more: it died between seize and interrupt
            return False
        return True

    def _wait_stop(self, t: _Tracee) -> bool:
        """Wait until the thread is in a ptrace stop; False when it exited instead.

        A blocking wait measured better than polling with WNOHANG: polling keeps our CPU
        busy, and the thread we interrupted may be queued on that very CPU. There is no
        timeout because there is no safe way to give up: PTRACE_DETACH needs a stopped
        tracee, so one that is seized and interrupted must be waited for. A thread in
        uninterruptible sleep (D) delays the pause until it returns to user space; that
        is why a sampler pauses only threads in state R.
        """
        info = self._wait(t, block=True)
        if info is None:
            return False
        t.t_stopped = time.perf_counter_ns()
        return self._on_stop(t, info)

    def _wait(self, t: _Tracee, *, block: bool) -> os.waitid_result | None:
        """The thread's next stop or exit, seen without consuming it (WNOWAIT). None: not
        ours any more, or (not blocking) nothing to report yet.

        A stop is never reaped: the kernel then keeps the signal of a signal-delivery-stop
        with the thread, and if goflame dies before PTRACE_DETACH passes it on, the thread
        still gets it. Reaped, the signal would live only in goflame and die with it: a lost
        SIGURG leaves the runtime's m.signalPending set for good, no goroutine on that thread
        can be preempted again, and the next stop-the-world (the next GC) hangs the program.
        """
        try:
            info = os.waitid(os.P_PID, t.tid, os.WSTOPPED | os.WEXITED | os.WNOWAIT | WALL
                             | (0 if block else os.WNOHANG))
        except ChildProcessError:
            self._held.pop(t.tid, None)
            return None
        return info if info is not None and info.si_pid == t.tid else None

    def _on_stop(self, t: _Tracee, info: os.waitid_result) -> bool:
        if info.si_code in (os.CLD_TRAPPED, os.CLD_STOPPED):
            if info.si_status >> 8 == 0:
                # signal-delivery-stop: the signal was dequeued for this thread; pass it on.
                t.sig = info.si_status & 0x7F
            # else PTRACE_EVENT_STOP: our interrupt (SIGTRAP) or a group-stop (a stop signal);
            # neither carries a signal to deliver.
            return True
        self._forget(t)  # exited or killed: reap it
        return False

    def _getregs(self, t: _Tracee) -> bytes | None:
        if _ptrace(PTRACE_GETREGS, t.tid, None, self._regs_addr) != 0:
            return None  # killed while stopped; _release_all reaps it
        return bytes(self._regs)

    def _detach(self, t: _Tracee) -> bool:
        if _ptrace(PTRACE_DETACH, t.tid, None, t.sig) == 0:
            self._held.pop(t.tid, None)
            return True
        return False

    def _stop_signal(self, tid: int) -> int:
        """The signal a stopped tracee is being delivered (signal-delivery-stop), else 0."""
        info = self._siginfo
        if _ptrace(PTRACE_GETSIGINFO, tid, None, ctypes.addressof(info)) != 0:
            return 0  # not stopped, gone, or in a group-stop (EINVAL): nothing to pass on
        signo, _, code = struct.unpack_from("<iii", info.raw)
        return 0 if code == _EVENT_STOP_CODE else signo

    def _forget(self, t: _Tracee) -> None:
        """Reap a tracee that is no longer stoppable (it is exiting) without blocking long."""
        self._held.pop(t.tid, None)
        try:
            os.waitpid(t.tid, WALL | os.WNOHANG)
        except ChildProcessError:
            pass

    def _release_all(self) -> None:
        """Detach everything still held, whatever state it is in; retried across Ctrl-C.

        The state we recorded may lag one syscall behind (an exception can land between a
        syscall and its book-keeping), so each tracee is first simply detached, and only
        if that fails (not stopped, or gone) is it interrupted, waited for and detached.
        """
        deferred: BaseException | None = None
        while self._held:
            try:
                for t in list(self._held.values()):
                    self._release(t)
            except BaseException as e:  # KeyboardInterrupt/SystemExit mid-cleanup: finish first
                deferred = deferred or e
        if deferred is not None:
            raise deferred

    def _release(self, t: _Tracee) -> None:
        # Each turn detaches, or waits for the stop an interrupt brings: a reported ptrace
        # stop is detachable, so two turns do it. The bound makes sure a kernel answer we do
        # not foresee (a stop reported, ESRCH on detach, again and again: stops are seen with
        # WNOWAIT, so the report stays) can never spin; the kernel detaches what is left
        # when goflame exits.
        for _ in range(_RELEASE_TURNS):
            if not t.sig:
                # Our record of the stop may have been lost to an exception between waitpid
                # and the book-keeping: ask the kernel which signal (if any) is in hand.
                t.sig = self._stop_signal(t.tid)
            if self._detach(t):
                return
            if _err() != errno.ESRCH:
                self._held.pop(t.tid, None)  # nothing more we can do for it
                return
            # Not in a ptrace stop: running towards one, or exiting.
            if t.tid not in self._held:
                return
            info = self._wait(t, block=False)
            if info is None:
                if t.tid not in self._held:
                    return  # not ours any more: gone, or detached already
                if _ptrace(PTRACE_INTERRUPT, t.tid, None, None) != 0:
                    self._held.pop(t.tid, None)
                    return
                info = self._wait(t, block=True)
                if info is None:
                    return
            if not self._on_stop(t, info):
                return  # it exited and was reaped
        self._held.pop(t.tid, None)


_RELEASE_TURNS = 8
BOOST_NS = 1_000_000  # the longest stretch of a pause run SCHED_FIFO


def _policy() -> tuple[int, os.sched_param] | None:
    """The calling thread's scheduling policy and parameters; None if not readable."""
    try:
        return os.sched_getscheduler(0), os.sched_getparam(0)
    except OSError:
        return None


def _unboost(saved: tuple[int, os.sched_param]) -> None:
    try:
        os.sched_setscheduler(0, saved[0], saved[1])
    except OSError:
        pass


def pause_threads(pid: int, tids: Iterable[int],
                  while_stopped: Callable[[int, Registers], T] | None = None) -> dict[int, PausedThread[T]]:
    """One-shot `Pauser(pid).pause(tids)`."""
    return Pauser(pid).pause(tids, while_stopped)

