"""The ptrace engine's sampling rule: which threads a tick stops, and what each stop weighs.

Each thread of the target earns credit for the CPU time it ran (schedstat), in units of the
sampling interval, and is owed one sample per whole credit. A tick stops the thread goflame's
wakeup froze on its own CPU (the kernel's stamps name it) and takes all its whole credits as
that sample's weight; goflame then chooses the CPU to wake on next. The credit that is owed to
kernel time is spent on stops in a syscall, the rest on stops in user mode, so the samples
estimate CPU time per function the way perf's do. `Sampler` asks this unit whom to stop and
what each stop stands for; it reads nothing of Go. docs/design.md ("The sampling rule") tells
why each piece is there.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple

from goflame.process import Process, Registers
from goflame.process.cpu import CpuPin, current_cpu
from goflame.unwind.capture import SchedCounts

if TYPE_CHECKING:
    from goflame.process import PausedThread
    from goflame.unwind.capture import StopCapture

NOT_IN_SYSCALL = (1 << 64) - 1  # orig_rax of a thread stopped outside a syscall (-1)
# Syscalls in which a thread sleeps or yields its CPU, whatever the file (a Go program's reads
# and accepts never block): poll, select, sched_yield, pause, nanosleep, wait4, rt_sigtimedwait,
# rt_sigsuspend, futex, clock_nanosleep, epoll_wait, waitid, pselect6, ppoll, epoll_pwait,
# epoll_pwait2, futex_waitv. A thread found in one may have been woken and not run since.
SLEEPING_SYSCALLS = frozenset({7, 23, 24, 34, 35, 61, 128, 130, 202, 230, 232, 247, 270, 271, 281, 441, 449})
_FUTEX, _EPOLL_WAIT, _EPOLL_PWAIT = 202, 232, 281
# futex operations that never sleep (FUTEX_WAKE, _REQUEUE, _CMP_REQUEUE, _WAKE_OP, _UNLOCK_PI,
# _WAKE_BITSET), the operation being the low 7 bits of the second argument.
_FUTEX_WAKING = frozenset({1, 3, 4, 5, 7, 10})
# How much longer than the tick so far a frozen thread may have waited for its CPU and still
# count as running when the tick began: the tick's own start is read a little after goflame woke.
RAN_AT_TICK_SLACK_NS = 20_000
RAN_AT_TICK_LAG_NS = 120_000
# Samples a thread can be owed (while its interrupt is carried over, or it is not running at
# the ticks it is due): at least 3, or 100 ms of its CPU time. Bounds the burst that follows.
MAX_CREDIT = 3.0
MAX_CREDIT_S = 0.1
# The most threads whose sched file a tick reads to find the one goflame's wakeup preempted.
MAX_STAMP_READS = 8
# A thread's kernel time is owed as samples taken in a syscall; what exceeds this many (time
# in page faults or interrupts, which no syscall stands for) goes to samples in user mode.
MAX_KERNEL_CREDIT = 3.0
KERNEL_PRIOR = 0.1  # kernel ticks assumed before any are seen (one in ten)
# A thread whose CPU time has not grown for QUIET_S (longer than a few scheduler ticks, at
# which the kernel adds a running thread's time) is read only every QUIET_RECHECK_S.
QUIET_S = 0.05
QUIET_RECHECK_S = 0.02


class Due(NamedTuple):
    """A thread owed a sample, as a look at it found it."""

    tid: int
    cpu: int  # the CPU it was last on
    credit: float  # in sampling intervals, capped
    running: bool  # in state R (running or queued), not asleep


def _working(regs: Registers) -> bool:
    """Whether a thread stopped with these registers was at work rather than asleep or just
    woken: in user mode, in a syscall that does not sleep, waking others with futex, or
    polling epoll without a timeout (Go's netpoll(0)). Arguments stay in their registers
    across a syscall on x86-64."""
    nr = regs.orig_rax
    if nr == NOT_IN_SYSCALL or nr not in SLEEPING_SYSCALLS:
        return True
    if nr == _FUTEX:
        return regs.rsi & 0x7F in _FUTEX_WAKING
    if nr in (_EPOLL_WAIT, _EPOLL_PWAIT):
        return regs.r10 & 0xFFFFFFFF == 0
    return False


class CreditScheduler:
    """Whom a tick of the ptrace engine stops, and how many intervals each stop stands for.

    `pin` is the sampler's own CPU (None: --nonblocking, nothing is frozen), shared with the
    sampler, which sleeps through it."""

    def __init__(self, proc: Process, rate: float, pin: CpuPin | None, rng: random.Random) -> None:
        self._proc = proc
        self._rate = rate
        self._pin = pin
        self._rng = rng
        self.weights: dict[int, int] = {}  # tid -> the weight of its sample this tick: see frozen_first
        self.stamped = False  # whether the scheduler's stamps told the frozen thread (taken_from)
        self.looked: int | None = None  # the thread taken_from looked at this tick
        self._run_ns: dict[int, tuple[int, float]] = {}  # tid -> (CPU ns, when read)
        self._kernel_credit: dict[int, float] = {}  # tid -> the part of its credit owed to kernel time
        self._kernel_share: dict[int, float] = {}  # tid -> the share of its CPU time in the kernel (_split)
        self._switched_in: dict[int, tuple[int, int, int]] = {}  # see counts_before
        self._ticks: dict[int, tuple[int, int]] = {}  # tid -> (user, system) ticks when first seen
        self._credit: dict[int, float] = {}  # tid -> CPU time accrued towards its next sample, in intervals
        self._grew: dict[int, float] = {}  # tid -> when its run time was last seen to grow
        self._frozen: set[int] = set()  # the threads this tick froze by taking their CPU: see frozen_first
        self._ran_at_tick: set[int] = set()  # of those, the ones that were running then, not queued
        self._cpu_of: dict[int, int] = {}  # tid -> the CPU it was last seen on
        self._lately: dict[int, int] = {}  # tid -> its last CPU, for the threads seen to run within QUIET_S
        self._delay_before: dict[int, int] = {}
        self._tick_start = 0.0

    def in_stop(self, tid: int, regs: Registers) -> SchedCounts | None:
        """Read inside a thread's stop (`Pauser.pause`'s callback, before any memory): whether
        a frozen thread was running at the tick (`_was_running`), and for a stop in a syscall
        what the thread did since its interrupt (`_on_its_cpu`)."""
        if tid in self._frozen and not self.stamped:
            self._was_running(tid)
        if regs.orig_rax == NOT_IN_SYSCALL:
            return None
        proc = self._proc
        st, sw = proc.schedstat(tid), proc.switches(tid)
        return SchedCounts(st[2], sw[1], sw[2]) if st and sw else None

    def scan(self, tids: list[int], now: float) -> list[Due] | None:
        """The threads owed samples: each one's credit brought up to date (`_look`); None if
        no thread listed is there any more (the process exited, or its threads must be listed
        again).

        Each thread accrues as credit the CPU time it actually ran since the last look
        (schedstat), in units of the sampling interval, and is sampled once per whole credit:
        the samples are an unbiased estimate of CPU time even when the machine is overloaded,
        and systematic, without coin-flip noise. A thread owed a sample that is not taken now
        keeps its credit for a later tick. A thread whose run time has not grown for QUIET_S
        (an idle M parked in the kernel: most of a server's threads) is looked at only every
        QUIET_RECHECK_S; the CPU time it ran in between is credited all the same.
        """
        self._tick_start = now
        self._delay_before = {}
        due: list[Due] = []
        seen = self.looked is not None
        for tid in tids:
            if self._pin is not None and self._pin.overdue():
                self._pin.ordinary()
            if tid == self.looked:
                continue
            d = self._look(tid, now)
            if d is None:
                continue
            seen = True
            if d:
                due.append(d)
        if not seen:
            return None
        self._forget_old(tids, now)
        return due

    def _look(self, tid: int, now: float) -> Due | tuple[()] | None:
        """Credit one thread with the CPU time it ran since the last look: (tid, its CPU, its
        credit, whether in state R) if it is owed a sample and running, queued or asleep (the
        thread goflame took the CPU from may have gone to sleep since); () if not; None if it
        is gone."""
        run_ns = self._run_ns
        prev = run_ns.get(tid)
        if prev is not None and now - self._grew[tid] > QUIET_S and now - prev[1] < QUIET_RECHECK_S:
            return ()
        proc = self._proc
        st = proc.schedstat(tid)
        if st is None:
            return None
        rt = st[0]
        run_ns[tid] = (rt, now)
        if prev is None or now <= prev[1]:
            self._grew[tid] = now
            rs = proc.run_state_and_split(tid)
            self._split(tid, 0.0, rs)
            if rs is None:
                return ()
            self._cpu_of[tid] = self._lately[tid] = rs[1]
            if rs[0] != "R":
                return ()
            self._delay_before[tid] = st[1]
            return Due(tid, rs[1], 0.0, True)
        # Not clipped: the kernel adds a running thread's time in lumps (at its scheduler
        # tick, every few ms), and at a high rate most intervals see none, some several ms.
        c = self._credit.get(tid)
        if c is None:
            c = self._rng.random()  # random start: no phase lock between threads
        rs = None
        if rt > prev[0]:
            self._grew[tid] = now
            earned = (rt - prev[0]) * self._rate / 1e9
            c += earned
            rs = proc.run_state_and_split(tid)
            self._split(tid, earned, rs)
            if rs is not None:
                self._cpu_of[tid] = self._lately[tid] = rs[1]
        due: Due | tuple[()] = ()
        if c >= 1.0:
            if rs is None:
                rs = proc.run_state_and_split(tid)
                if rs is not None:
                    self._cpu_of[tid] = rs[1]
                    if tid in self._lately:
                        self._lately[tid] = rs[1]
            c = min(c, max(MAX_CREDIT, MAX_CREDIT_S * self._rate))
            if rs is not None and rs[0] in "RS":
                due = Due(tid, rs[1], c, rs[0] == "R")
                self._delay_before[tid] = st[1]
        self._credit[tid] = c
        return due

    def _forget_old(self, tids: list[int], now: float) -> None:
        """Drop what is kept of threads not seen for a while."""
        run_ns = self._run_ns
        if len(run_ns) <= 4 * len(tids) + 1024:
            return
        keep = {t for t, v in run_ns.items() if now - v[1] < 10}
        self._run_ns = {t: run_ns[t] for t in keep}
        for name in ("_credit", "_grew", "_kernel_credit", "_kernel_share", "_ticks", "_switched_in", "_cpu_of"):
            setattr(self, name, {t: v for t, v in getattr(self, name).items() if t in keep})

    def taken_from(self, now: float, tids: list[int], known: Callable[[int], bool]) -> int | None:
        """The thread of the target that goflame's wakeup took this CPU from, if it is owed a
        sample; its credits are taken out as its weight.

        The switch that put goflame on its CPU stamped the run-queue clock on both
        (`CpuPin.switched_in_ns`): among the threads that ran lately, the one with goflame's
        stamp ran there at the tick's moment, whether it waits in the run queue now
        or went to sleep in a syscall since (kernel code runs on to its sleep before it yields
        the CPU). Looked for first thing: queued, it is soon pulled to another CPU that goes
        idle, and runs on there. Sets `stamped` when the stamps are known (not when no
        wakeup came before this tick, or the kernel has no sched files); without them every
        thread queued on goflame's CPU is taken and judged in its stop (`_was_running`)."""
        pin = self._pin
        stamp = pin.switched_in_ns if pin is not None else None
        self.looked = None
        self._frozen = set()
        self._ran_at_tick = set()
        self.stamped = False
        if stamp is None:
            return None
        here = current_cpu()
        exec_start = self._proc.exec_start
        grew = self._grew
        cpu_of = self._cpu_of
        # The threads that ran lately, those last seen here first (a thread moves between
        # CPUs between looks), latest first, at most MAX_STAMP_READS: a thread quiet for a
        # while (an M parked in the kernel: most of a server's) is not read each tick.
        lately = sorted((t for t in cpu_of if now - grew[t] <= QUIET_S),
                        key=lambda t: (cpu_of[t] == here, grew[t]), reverse=True)
        for tid in lately[:MAX_STAMP_READS]:
            at = exec_start(tid)
            if at is None and tid in tids:
                return None  # the kernel will not say (a live thread): judged in the stop
            if at != stamp:
                continue
            self.stamped = True
            if not known(tid):
                return None  # an M not known yet (see Sampler._threads): taken once it is, its credit kept
            self.looked = tid
            d = self._look(tid, now)
            if not d or d[2] < 1.0:
                return None
            w = int(d[2])
            self._credit[tid] -= w
            self.weights[tid] = w
            self._frozen, self._ran_at_tick = {tid}, {tid}
            return tid
        self.stamped = True
        return None

    def where_it_went(self, tid: int) -> None:
        """The CPU the thread `taken_from` looked at runs on now: let go from its stop, it is
        mostly woken on the CPU that idled while goflame held its own, and the next wakeup must
        be there to freeze it again (on the cgochain fixture, a third of the ticks found no
        thread of the target where goflame woke, against 7 % with this)."""
        rs = self._proc.run_state_and_split(tid)
        if rs is not None:
            self._cpu_of[tid] = self._lately[tid] = rs[1]

    def frozen_first(self, due: list[Due]) -> Iterator[int]:
        """The due threads to interrupt when `taken_from` could not tell, and the CPU to wake
        on next.

        goflame took a CPU when it woke, so a thread of the target there is frozen where it
        was at this tick's moment, and its stop shows exactly that. The threads on the other
        CPUs ran on meanwhile, short of the one goflame preempted: a thread spinning for a lock
        that one holds, or handing it work, was sampled in that wait (tests/fixtures/handoff:
        77 % of the samples waiting where the threads' own CPU clocks say 53 %). So only the
        frozen thread is taken, with all of its whole credits as its sample's weight, and
        goflame wakes next on a CPU drawn at random (`_wake_cpu`), by what the threads ran
        lately, never by what they do at that moment: drawn by who was owed the most, the
        wakeups followed context switches, and code right after them came out high. Without the
        scheduler's stamps, every thread queued on goflame's CPU is taken and judged in its
        stop (`_was_running`). Without a CPU to wake on (none allowed to goflame, or
        --nonblocking), every due running thread is taken, where the tick finds it
        (`_where_it_ran`)."""
        pin = self._pin
        running = [d for d in due if d[3]]
        if pin is not None:
            pin.wake_on(self._wake_cpu(pin))
        if self.stamped:
            return iter(())
        return self._queued_here(due, running)

    def _wake_cpu(self, pin: CpuPin) -> int:
        """A CPU drawn at random among the last CPUs of the target's threads that ran lately
        (within QUIET_S) and are owed a sample; if none is owed, among those of all that ran
        lately; else among all allowed. Never by whether a thread runs at the moment of the
        draw: the wakeup comes an interval later, and a thread that works in rounds is then in
        the other half of its round (drawn among threads in state R at the draw, a labelled
        worker that sleeps half of each round got 31.6 % of the samples where its own clock
        said 33.3 %). Owed first: a thread that runs in bursts is owed samples that a wakeup
        elsewhere does not take. Then the others: the thread just sampled is owed none, but a
        wakeup on a CPU with no thread of the target takes no sample, and the next samples
        stand for more intervals each (on cgochain a third of the wakeups found none when
        only CPUs of owed threads were drawn; 7 % with this)."""
        credit, grew, now = self._credit, self._grew, self._tick_start
        # Only threads seen to run since their entry's QUIET_S are kept: a server's hundreds of
        # parked Ms are not gone through at every tick.
        lately = self._lately = {tid: cpu for tid, cpu in self._lately.items()
                                 if tid in grew and now - grew[tid] <= QUIET_S}
        allowed = {tid: cpu for tid, cpu in lately.items() if pin.allows(cpu)}
        owed = {cpu for tid, cpu in allowed.items() if credit.get(tid, 0.0) >= 1.0}
        cpus = sorted(owed or set(allowed.values()))
        return self._rng.choice(cpus or pin.allowed)

    def _queued_here(self, due: list[Due], running: list[Due]
                     ) -> Iterator[int]:
        """The due threads queued on goflame's CPU (or, unpinned, all running ones), each with
        its whole credits as weight."""
        pin = self._pin
        here = current_cpu() if pin is not None else -1
        frozen = [d for d in due if d[1] == here and d[3]]
        self._frozen = {d[0] for d in frozen}
        take = frozen if frozen or (pin is not None and pin.pinned is not None) else running
        if pin is not None and not frozen:
            pin.ordinary()  # a pause of many threads boosts itself, within its own bound
        credit = self._credit
        for tid, _cpu, c, _running in take:
            w = max(int(c), 1)
            if c >= 1.0:
                credit[tid] -= w
            self.weights[tid] = w
            yield tid

    def weight(self, tid: int, p: PausedThread[StopCapture]) -> int:
        """How many samples of the thread's CPU time its stop stands for (0: none, its credit is
        kept for a later tick). `frozen_first` took all its whole credits out for it."""
        taken = self.weights.get(tid, 1)
        credit = self._credit
        frozen = tid in self._frozen
        if p.extra is None or (frozen and tid not in self._ran_at_tick):  # queued, not running
            credit[tid] = credit.get(tid, 0.0) + taken
            return 0
        if frozen and (self.stamped or _working(p.regs)):  # where it ran, in user mode or the kernel
            self._spent_frozen(tid, taken)
            return taken
        credit[tid] = credit.get(tid, 0.0) + taken - 1
        if not self._where_it_ran(tid, p.regs, p.extra.sched):
            credit[tid] += 1.0
            return 0
        if p.regs.orig_rax != NOT_IN_SYSCALL:
            return 1
        # In user mode on another CPU, in a tick that froze no one: a sample of its user time.
        more = min(taken - 1, max(int(credit[tid] - self._kernel_credit.get(tid, 0.0)), 0))
        credit[tid] -= more
        return 1 + more

    def _was_running(self, tid: int) -> None:
        """Read in the stop of a thread on goflame's CPU: whether it was running when goflame
        took the CPU, or already queued there (preempted earlier, or woken and not yet run: its
        registers are then no sample of CPU time). The kernel adds a thread's wait in the run
        queue to its schedstat when it gets a CPU again: since the tick began for the first,
        since some earlier moment for the second."""
        st = self._proc.schedstat(tid)
        before = self._delay_before.get(tid)
        if st is None or before is None:
            return
        lag_ns = (time.monotonic() - self._tick_start) * 1e9 - (st[1] - before)
        if -RAN_AT_TICK_SLACK_NS <= lag_ns <= RAN_AT_TICK_LAG_NS:
            self._ran_at_tick.add(tid)

    def _spent_frozen(self, tid: int, weight: int) -> None:
        """A frozen sample stands for `weight` intervals of the thread's CPU time, user and
        kernel alike, where the split itself is seen: the kernel's share of them is no longer
        owed to a syscall stop."""
        k = self._kernel_credit.get(tid, 0.0) - weight * self._kernel_share.get(tid, 0.0)
        self._kernel_credit[tid] = max(k, 0.0)

    def _split(self, tid: int, earned: float, stat: tuple[str, int, int, int] | None) -> None:
        """The part of a thread's new credit owed to its time in the kernel, by the kernel's own
        account of its user and system ticks since goflame first looked (a prior of one tick
        in ten until it has some). `stat`: the thread's `run_state_and_split`."""
        if stat is None:
            return
        first = self._ticks.setdefault(tid, (stat[2], stat[3]))
        user, system = stat[2] - first[0], stat[3] - first[1]
        share = self._kernel_share[tid] = (system + KERNEL_PRIOR) / (user + system + 1.0)
        k = self._kernel_credit.get(tid, 0.0) + earned * share
        self._kernel_credit[tid] = min(k, MAX_KERNEL_CREDIT)

    def counts_before(self, tid: int) -> None:
        """Read right before the interrupt (the thread is seized, not stopped): how often the
        thread was switched in, slept and was preempted so far (see `_on_its_cpu`)."""
        proc = self._proc
        st = proc.schedstat(tid)  # first: a thread switched in between the reads is not taken as running
        seen = proc.switches(tid)
        if st is None or seen is None:
            self._switched_in.pop(tid, None)
        else:
            self._switched_in[tid] = (st[2], seen[1], seen[2])

    def _on_its_cpu(self, tid: int, in_stop: SchedCounts | None) -> bool:
        """Whether a thread stopped in a syscall was on its CPU from right before our interrupt
        to our stop: never switched in again (or only after it was preempted), and it slept
        only to enter our stop (that is one voluntary switch itself)."""
        before = self._switched_in.get(tid)
        if in_stop is None or before is None or in_stop[1] - before[1] > 1:
            return False
        return in_stop[0] == before[0] or in_stop[2] > before[2]

    def _where_it_ran(self, tid: int, regs: Registers, in_stop: SchedCounts | None) -> bool:
        """Whether a stopped thread's registers are a sample of the CPU time it is owed.

        A thread in state R when the tick looked may have been running, or waiting for a CPU
        after a wakeup, or it went to sleep in a syscall in the tens of microseconds before our
        interrupt landed: it enters our stop on its way out of futex, epoll_wait or nanosleep.
        Taken as they come, half the samples of busy Go programs were such syscall wrappers,
        where perf sees a twentieth to a quarter of the CPU time in the kernel. So a thread's
        CPU time is split as the kernel itself accounts it, tick by tick, between user mode
        and kernel mode (/proc/TID/stat), and each sample is taken where the thread is of the
        kind it is owed: a stop in user mode (orig_rax -1) for user time, a stop in a syscall
        (kernel time, charged to its wrapper, as perf's callchains would) for system time. A
        stop of the other kind leaves the credit for a later tick. Kernel time that no syscall
        stands for (page faults, interrupts) overflows MAX_KERNEL_CREDIT into user samples,
        where perf charges it too: to the function that faulted.
        """
        kernel = self._kernel_credit.get(tid, 0.0)
        if regs.orig_rax != NOT_IN_SYSCALL:
            # A syscall it was working in when interrupted, first; one it was waiting in (woken
            # by our interrupt or before it) only for kernel time no such stop comes for: the
            # scheduler's own work of sleeping and waking, in futex, nanosleep, epoll_wait.
            if kernel >= 1.0 and (self._on_its_cpu(tid, in_stop) or kernel >= MAX_KERNEL_CREDIT - 0.5):
                self._kernel_credit[tid] = kernel - 1.0
                return True
            return False
        return self._credit.get(tid, 0.0) + 1.0 - kernel >= 1.0 or kernel >= MAX_KERNEL_CREDIT
