"""The two ways running threads are sampled, behind one interface that `record` and `top` share.

- `PtraceEngine`: at each jittered tick (`TickClock`), the thread goflame's wakeup froze is
  stopped and walked (`Sampler.sample`, `CreditScheduler`); it sleeps real-time between ticks.
- `PerfEngine`: the kernel samples each thread's CPU time (process/perf.py) and goflame reads
  its buffers every few tens of ms (`KernelPoller`); nothing of the target is ever stopped.

Either one yields `Batch`es: the samples since the last step and whether the target is gone.
A loop tells `not_before` when it is free again (a ptrace tick due earlier is skipped, never
taken late), asks `next` when to step, sleeps inside `waking()`, and calls `ordinary()` when it
woke for anything but a step (a key, a refresh).
"""

from __future__ import annotations

import contextlib
import random
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from goflame.errors import InvalidMemory, ProcessGone
from goflame.profile import Sample

if TYPE_CHECKING:
    from goflame.sampler import KernelPoller, Sampler

REST_SHARE = 0.25  # the ptrace sampler sleeps at least this share of each tick's time (CPU use <= 80 %)


@dataclass(frozen=True, slots=True)
class Batch:
    """What one step of an engine sampled. `intervals`: the sampling intervals it stands for
    (a ptrace tick is one; a read of perf's buffers stands for the time since the last read)."""

    samples: list[Sample]
    intervals: float
    gone: bool = False  # the target exited or exec'd (SamplerStats.end says which)


class SamplingEngine(Protocol):
    name: str  # "ptrace" or "perf"
    start: float  # time.monotonic() when sampling began
    rest_share: float  # of a step's own time, the least a loop sleeps after it

    @property
    def next(self) -> float:
        """When the next step is due (time.monotonic())."""
        ...

    def step(self, now: float, final: bool = False) -> Batch:
        """Sample (a ptrace tick; a read of perf's buffers). `final`: the loop ends after
        this one (perf reads what is left; ptrace takes no tick)."""
        ...

    def not_before(self, ready: float) -> None:
        """The loop steps no sooner than `ready` (it rests, or it was busy): a ptrace tick due
        earlier is skipped, never taken late (`TickClock`)."""
        ...

    def waking(self) -> AbstractContextManager[None]: ...

    def ordinary(self) -> None: ...

    def close(self) -> None: ...


class PtraceEngine:
    """Ticks of the ptrace sampler, on its jittered clock."""

    name = "ptrace"
    rest_share = REST_SHARE

    def __init__(self, sampler: Sampler, start: float) -> None:
        from goflame.sampler import TickClock

        self._sampler = sampler
        self.start = start
        self._clock = TickClock(sampler.cfg.rate, sampler.stats, random.Random(), start)

    @property
    def next(self) -> float:
        return self._clock.next

    def step(self, now: float, final: bool = False) -> Batch:
        if final:
            return Batch([], 0.0)
        s = self._sampler
        clock = self._clock
        clock.take(now)
        try:
            samples = s.sample(int((now - self.start) * 1e9))
        except ProcessGone as e:
            s.stats.target_gone(e, s.t.proc.memory.ended_by_exec())
            return Batch([], 0.0, True)
        except InvalidMemory:
            # Torn runtime structures (the thread list mid-update): a dropped sample, not a failure.
            s.stats.errors += 1
            samples = []
        s.stats.ticks += 1
        clock.advance()
        return Batch(samples, 1.0)

    def not_before(self, ready: float) -> None:
        self._clock.not_before(ready)

    def waking(self) -> AbstractContextManager[None]:
        """Real-time sleep (`CpuPin`): the wakeup must take its CPU at once."""
        return self._sampler.waking()

    def ordinary(self) -> None:
        self._sampler.ordinary()

    def close(self) -> None:
        self._sampler.close()


class PerfEngine:
    """Reads of the kernel's samples, every `KernelPoller.interval`."""

    name = "perf"
    rest_share = 0.0

    def __init__(self, poller: KernelPoller) -> None:
        self._poller = poller
        self.start = poller.start
        self._rate = poller.sampler.cfg.rate
        self._last = poller.start
        self._next = poller.start + poller.interval

    @property
    def next(self) -> float:
        return self._next

    def step(self, now: float, final: bool = False) -> Batch:
        samples, gone = self._poller.poll(final=final)
        intervals = (now - self._last) * self._rate  # time stands in for ticks: a sample is 1/rate s of CPU
        self._last = now
        self._next = now + self._poller.interval
        return Batch(samples, intervals, gone)

    def not_before(self, ready: float) -> None:
        """A late read of the buffers is still a read of all they hold: nothing to skip."""

    def waking(self) -> AbstractContextManager[None]:
        """An ordinary sleep: reading buffers needs no exact wakeup."""
        return contextlib.nullcontext()

    def ordinary(self) -> None:
        pass

    def close(self) -> None:
        self._poller.close()
        self._poller.sampler.close()
