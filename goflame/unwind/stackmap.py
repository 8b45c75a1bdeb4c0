"""Which stack a live thread's sp is on, by one rule for every walk from registers.

A thread runs on its goroutine's stack or on one of its M's system stacks: g0 (the scheduler,
systemstack, morestack, cgo calls) and gsignal (the signal handler). A walk on a system stack
jumps to the goroutine at systemstack/morestack, to the context the goroutine saved there.
dump, the sampler (both engines) and --native all take both answers from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from goflame.unwind.gopclntab import StackSwitch

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from goflame.runtime import Goroutine, Machine

# Bytes past g0's stack.hi a walk may read to reach mstart. A thread started by C (cgo) gets
# g0 bounds that end inside mstart0's frame (runtime.mstart0 sets stack.hi to a local's
# address), and the runtime's own traceback walks on to mstart.
G0_SLACK = 1024


def system_span(m: Machine | None, sp: int, bounds: Mapping[int, tuple[int, int]]) -> tuple[int, int] | None:
    """The system stack of `m` (g0 or gsignal) holding sp, as a walk may read it; None if sp
    is on neither. `bounds`: each system g's (stack.lo, stack.hi) by its address."""
    if m is None:
        return None
    for a in (m.g0, m.gsignal):
        b = bounds.get(a)
        if b and b[0] <= sp < b[1]:
            return (b[0], b[1] + G0_SLACK) if a == m.g0 else b
    return None


def switch_to(g: Goroutine | None, stack_of: Callable[[int], tuple[int, int] | None] | None = None,
              chain: tuple[int, ...] = ()) -> Callable[[str], StackSwitch | None] | None:
    """Where a walk on the system stack continues at systemstack/morestack: the goroutine's
    saved context (checked against the frame pointer on g0 by the unwinder), the stack
    `stack_of` finds, or the kernel's callchain (perf). None without a goroutine."""
    if g is None:
        return None
    to = StackSwitch(g.sched_pc, g.sched_sp, g.sched_lr, g.stack_lo, g.stack_hi, g.sched_bp, stack_of, chain)
    return lambda _kind: to
