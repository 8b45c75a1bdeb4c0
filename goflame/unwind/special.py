"""The runtime functions a walk treats specially, each named once, with what it does there.

Go's own unwinder (runtime/traceback.go: `unwinder.resolveInternal`, `isInjectedCall`,
`isSyscall`) and its profiler (`sigprof`) single these out; every goflame walk does the same
at the same functions, and finds their names here only.
"""

from __future__ import annotations

# A cgo callback into Go: SPWRITE, but the walk goes on past it (resolveInternal); --native
# splices the C frames that called back in after it.
CGOCALLBACK = "runtime.cgocallback"
# Switch to g0 and back: a walk on g0 jumps there to the goroutine's stack (jumpStack).
SYSTEMSTACK = "runtime.systemstack"
# A stack check that failed: newstack runs on g0, and the walk jumps to g.sched (jumpStack).
MORESTACK = "runtime.morestack"
JUMP_STACK = frozenset({SYSTEMSTACK, MORESTACK})
# What a function's prologue stub calls when its stack must grow.
MORESTACK_ENTRIES = (MORESTACK, "runtime.morestack_noctxt")
# Met on a frame, each asks for more than the frame-size rule (one set lookup per frame).
SPECIAL = frozenset({CGOCALLBACK, SYSTEMSTACK, MORESTACK})
# newstack's ways into the scheduler (a preemption request seen at a stack check): each one
# drops the goroutine (dropg) before it schedules another, so Go's traceback of g0 ends at
# morestack (go1.26 runtime/traceback.go, unwinder.next: it jumps only while m.curg is set).
# From their first instructions to dropg, m.curg is still set: a walk through them ends at
# morestack whole even there, a few instructions' worth of samples.
DROPS_GOROUTINE = frozenset({"runtime.gopreempt_m", "runtime.goschedImpl", "runtime.preemptPark"})
# Functions whose frames are entered by an injected call (a signal handler faked a call):
# the caller's pc is the faulting instruction itself, not a return address (isInjectedCall).
TRAPS = frozenset({"runtime.sigpanic", "runtime.asyncPreempt", "runtime.debugCallV2"})
# Go's signal handler, entered by the kernel with the restorer's address on top: the
# ucontext is at the frame's fp (unwind/sigframe.py).
SIGNAL_ENTRIES = frozenset({"runtime.sigtramp", "runtime.cgoSigtramp"})
# The restorer (rt_sigreturn), entered by the handler's RET: the ucontext is at its sp.
# runtime.sigreturn before Go 1.20, runtime.sigreturn__sigaction since.
SIGNAL_RESTORERS = frozenset({"runtime.sigreturn__sigaction", "runtime.sigreturn"})
SIGNAL_FRAMES = SIGNAL_ENTRIES | SIGNAL_RESTORERS
# The Go functions that call the vDSO with the goroutine's SP saved in R12 (Go 1.17+), as
# sigprof's m.vdsoSP does for its own walk (unwind/vdsocall.py).
VDSO_CALLERS = ("time.now", "runtime.nanotime1", "runtime.walltime", "runtime.vgetrandom1")
# A cgo call's switch to g0 (the function name has an ABI suffix on some releases: a prefix).
ASMCGOCALL = "runtime.asmcgocall"
# C's entry into Go for a callback (cgo's exported-function trampoline).
CROSSCALL2 = "crosscall2"
