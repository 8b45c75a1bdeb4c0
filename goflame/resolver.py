"""Which M each thread of the target is, and which goroutine each sampled thread ran.

A sample is a thread's registers and stack; what a user sees is a goroutine. The runtime's
M list (allm) tells which threads are Ms and where their g0 and gsignal stacks are; the g a
thread ran comes from what its stop read (the TLS g word, m.curg, the SP a vDSO call saved)
or, when that g no longer holds the stack, from a map of every goroutine's stack. Both
engines resolve their samples here, and the walks ask it whose stack an address is on.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Collection
from typing import TYPE_CHECKING

from goflame.errors import InvalidMemory
from goflame.runtime import G_RUNNING, Goroutine, Machine, RuntimeReader
from goflame.unwind.stackmap import system_span

if TYPE_CHECKING:
    from goflame.process.memory import ProcessMemory
    from goflame.unwind.capture import StopCapture
    from goflame.unwind.vdsocall import VdsoCalls

M_REFRESH_S = 1.0
# A thread listed this long before an M refresh that found no M for it is not one (C's own): a
# new M's thread is listed before it has stored its tid in the M (minit), microseconds later.
M_START_S = 0.01
M_UNKNOWN_REFRESH_S = 0.05  # sooner when a thread to sample is no M we know (a new M, or C's own)
STACK_OWNERS_S = 0.1  # how often, at most, every goroutine's stack bounds are read again
OWNERS_COST_SHARE = 30  # ... and at most every 30x as long as that read took


class GoroutineResolver:
    """The M table (`ms`: tid -> Machine, re-read every M_REFRESH_S or sooner for a thread
    not known), the system stacks' bounds, and the goroutine behind each sample."""

    def __init__(self, reader: RuntimeReader, mem: ProcessMemory, vdso: VdsoCalls) -> None:
        self._reader = reader
        self._mem = mem
        self._vdso = vdso
        self._g_size = reader.g.size
        self._m_size = reader.m.size
        self.ms: dict[int, Machine] = {}
        self.ms_time = 0.0  # when the Ms were last read
        self.g0_bounds: dict[int, tuple[int, int]] = {}  # g0/gsignal address -> stack bounds
        self.g0_sched_sp: dict[int, int] = {}  # g0 address -> g0.sched.sp: where systemstack switches to
        self._listed: list[int] = []  # the threads last listed
        self._listed_at: dict[int, float] = {}  # tid -> when goflame first listed it
        self._foreign: set[int] = set()  # threads listed M_START_S before the last M refresh, not Ms then
        self._owners: list[tuple[int, int, int]] = []  # (stack lo, hi, g address): see stack_owner
        self._owners_time = float("-inf")
        self._owners_every = STACK_OWNERS_S

    # -- Ms (threads) -----------------------------------------------------------------------------
    def listed(self, tids: list[int], now: float) -> None:
        """The target's threads were listed again: a thread not seen before is looked for
        among the Ms at once. Its stop reads what leads out of C code or the signal handler
        only if its M is known by then (a stop of a new M in Go's handler was cut there, its
        interrupted context read after the release)."""
        self._listed = tids
        listed = self._listed_at
        self._listed_at = {t: listed.get(t, now) for t in tids}
        known = self.ms.keys() | self._foreign
        if now - self.ms_time > M_UNKNOWN_REFRESH_S and not known >= set(tids):
            self.refresh(now)

    def refresh(self, now: float) -> None:
        """Read the M list again."""
        ms, _bad = self._reader.machines()
        self.ms = {m.tid: m for m in ms if m.tid}
        for m in ms:
            for a in (m.g0, m.gsignal):
                if a and a not in self.g0_bounds:
                    g = self._reader.read_g(a)
                    if g is not None:
                        self.g0_bounds[a] = (g.stack_lo, g.stack_hi)
                        self.g0_sched_sp[a] = g.sched_sp
        self.ms_time = now
        listed = self._listed_at
        self._foreign = {t for t in self._listed if t not in self.ms and now - listed.get(t, now) >= M_START_S}

    def refresh_for(self, tids: Collection[int], now: float) -> None:
        """Read the Ms again, at most every M_UNKNOWN_REFRESH_S, if a thread to sample is no
        M known (a new M, or C's own thread); every M_REFRESH_S anyway."""
        since = now - self.ms_time
        if since > M_REFRESH_S or (since > M_UNKNOWN_REFRESH_S and not self.ms.keys() >= set(tids)):
            self.refresh(now)

    def known(self, tid: int) -> bool:
        """Whether the last M refresh told what the thread is: an M, or C's own thread."""
        return tid in self.ms or tid in self._foreign

    def on_gsignal(self, m: Machine, sp: int) -> bool:
        b = self.g0_bounds.get(m.gsignal)
        return b is not None and b[0] <= sp < b[1]

    # -- goroutines -------------------------------------------------------------------------------
    def by_capture(self, items: list[tuple[Machine, StopCapture]]) -> list[Goroutine | None | bool]:
        """`of` for threads by their captures. In the vDSO or a vDSO call sp is on
        g0 and, in C, the g register is whatever C left there: the goroutine is the one whose
        stack holds the SP those calls save in R12 (vdsocall.py)."""
        vdso = self._vdso
        in_text = self._reader.in_text
        hints = [vdso.saved_sp(c.regs.pc, in_text(c.regs.pc), c.regs.sp, c.regs.r12) for _m, c in items]
        # m.curg read in the stop (outside Go, in the handler) is exact; the g word is checked.
        gs = self.of([(m, c.curg, h, True) if c.curg >= 0 else (m, c.g_word, h, False)
                                  for (m, c), h in zip(items, hints, strict=True)])
        for i, (m, c) in enumerate(items):
            sp = c.regs.sp
            h = hints[i]
            g = gs[i]
            if h != sp and not (isinstance(g, Goroutine) and g.contains_sp(h)):
                gs[i] = self.stack_owner(h) or g
            elif (h == sp and not (isinstance(g, Goroutine) and g.contains_sp(sp))
                  and system_span(m, sp, self.g0_bounds) is None):
                # On a goroutine's stack that the g found does not hold (it moved on, or the g
                # register held data): the one that does, or none known.
                gs[i] = self.stack_owner(sp, any_status=True)
        return gs

    def of(self, items: list[tuple[Machine, int, int, bool]]) -> list[Goroutine | None | bool]:
        """For each (M, g word, sp, exact) the goroutine the thread was running: None if none
        (on g0 in the scheduler), False if unreadable. Batched reads: the g's named by the
        words (the thread's TLS slot read in the stop, or Go's g register in a kernel sample),
        and for the rest (on g0 or gsignal, word unknown) m.curg first. `exact`: the word is
        m.curg as it was at the sample (--native), taken as it is.

        The word is exact; m.curg is read after the sample and with more goroutines than Ps
        is often already another goroutine (preempted, moved to another M): taking it dropped
        ~1.5 % of samples at GOMAXPROCS=2 with 4 busy goroutines, the TLS g none. A word is
        trusted if the g it names still says it runs on this M, or if the thread's sp was on
        its stack (by now it may have been preempted and moved on); anything else (a torn
        TLS word; R14, which assembly may use as it likes) is checked against m.curg.
        """
        reader = self._reader
        mem = self._mem
        n = len(items)
        out: list[Goroutine | None | bool] = [False] * n
        addr: list[int] = [0] * n
        via_m: list[int] = []
        todo: list[int] = []
        for i, (m, a, _sp, exact) in enumerate(items):
            if exact or (a and a not in (m.g0, m.gsignal)):
                addr[i] = a
                todo.append(i)
            else:
                via_m.append(i)  # 0: no g there (C code?), or the system stack: ask the M
        for attempt in range(2):
            if via_m:
                mbufs = mem.read_many([(items[i][0].addr, self._m_size) for i in via_m])
                for i, buf in zip(via_m, mbufs, strict=True):
                    if buf is not None:
                        addr[i] = reader.m.get(buf, "curg")
                        todo.append(i)
                via_m = []
            gbufs = mem.read_many([(addr[i], self._g_size) for i in todo if addr[i]])
            git = iter(gbufs)
            for i in todo:
                a = addr[i]
                if not a:
                    out[i] = None
                    continue
                buf = next(git)
                g = reader.decode_g(a, buf) if buf is not None else None
                m, _a, sp, exact = items[i]
                if g is not None and (exact or attempt or g.m_addr == m.addr or g.contains_sp(sp)):
                    out[i] = g
                elif attempt == 0 and not exact:
                    via_m.append(i)
            todo = []
            if not via_m:
                break
        return out

    def owner_bounds(self, addr: int) -> tuple[int, int] | None:
        """The bounds of the goroutine stack holding `addr`, whatever the goroutine's status
        (one in systemstack may say it is waiting: GC workers do)."""
        g = self.stack_owner(addr, any_status=True)
        return (g.stack_lo, g.stack_hi) if g is not None else None

    def stack_owner(self, sp: int, any_status: bool = False) -> Goroutine | None:
        """The goroutine whose stack holds sp, from a map of all goroutines' stacks redrawn at
        most every STACK_OWNERS_S (stacks move when they grow: the g is re-read and checked)."""
        now = time.monotonic()
        owners = self._owners
        i = bisect.bisect_right(owners, (sp, math.inf)) - 1
        if (i < 0 or not owners[i][0] <= sp < owners[i][1]) and now - self._owners_time > self._owners_every:
            try:
                gs, _bad = self._reader.goroutines()
            except InvalidMemory:
                gs = []
            owners = self._owners = sorted((g.stack_lo, g.stack_hi, g.addr) for g in gs)
            self._owners_time = time.monotonic()
            # New goroutines and moved stacks are looked for again soon, at a cost kept to a
            # few per cent of goflame's time however many goroutines there are.
            self._owners_every = max(STACK_OWNERS_S, OWNERS_COST_SHARE * (self._owners_time - now))
            i = bisect.bisect_right(owners, (sp, math.inf)) - 1
        if i < 0 or not owners[i][0] <= sp < owners[i][1]:
            return None
        g = self._reader.read_g(owners[i][2])
        return g if g is not None and g.contains_sp(sp) and (any_status or g.status == G_RUNNING) else None
