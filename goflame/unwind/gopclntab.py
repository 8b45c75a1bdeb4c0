"""The Go unwinder, by the runtime's own rules (runtime/traceback.go, `unwinder`).

Each frame's size comes from the function's pcsp table: the return address sits at
`sp + spdelta`, the caller's sp is just above it (amd64). The walk stops where the runtime's
stops: TOPFRAME functions (goexit, mstart, rt0_go), SPWRITE functions (they switch stacks in
ways pcsp cannot describe), pc 0, an unknown pc, or a pc/sp that leaves the goroutine's stack.
When a thread is on g0 (systemstack) or in morestack, the walk jumps to the user goroutine,
as the runtime's profiler does. Memory is the target's, read while it runs: every value is
validated and a bad walk ends early with a reason instead of raising.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, NamedTuple

from goflame.binary.gobinary import GoBinary
from goflame.binary.pclntab import FLAG_SPWRITE, FLAG_TOPFRAME, Func
from goflame.errors import GoflameError, InvalidMemory
from goflame.unwind.special import (
    CGOCALLBACK,
    DROPS_GOROUTINE,
    JUMP_STACK,
    MORESTACK,
    MORESTACK_ENTRIES,
    SPECIAL,
    SYSTEMSTACK,
    TRAPS,
)
from goflame.unwind.stop import Stop

if TYPE_CHECKING:
    from goflame.unwind.vdsocall import VdsoCalls

MAX_FRAMES = 100_000
# A zero return address ends a stack only at its top (Go: frame.sp == g.stktopsp, which newproc
# sets 32 bytes below stack.hi on amd64); inside the stack it is memory that changed under the
# walk (read after the sample: the goroutine returned, or its stack was freed), a cut.
STACK_TOP_SLACK = 64
PTR = 8
_U64 = struct.Struct("<Q")


class _Frame(NamedTuple):
    """The state of GoUnwinder.unwind's loop at one frame, as _resolve_special sees it and
    _jump_stack makes it anew on the goroutine's stack."""

    pc: int
    sp: int
    lr: int
    lo: int
    hi: int
    func: Func
    spdelta: int | None
    flag: int
    trap: bool
    on_system_stack: Callable[[str], StackSwitch | None] | None


_PLAIN, _TOP, _FULL = 0, 1, 2  # kinds of frame for GoUnwinder.live_pcs
_CALL_REL32 = 0xE8
_REL32 = struct.Struct("<i")
MAX_CALLER_SCAN = 64 * 1024  # bytes below a frame pointer searched for the call into systemstack


@dataclass(slots=True, unsafe_hash=True)  # not frozen: a frozen dataclass's __init__ costs ~4x; walks make many
class PhysicalFrame:
    pc: int  # process address of the instruction being executed / returned to
    sp: int
    fp: int  # caller's sp: sp + frame size + return address
    func: Func
    exact: bool  # pc is the instruction itself (innermost live frame, or after a trap)

    @property
    def sym_pc(self) -> int:
        """The pc whose line and inlining describe this frame (runtime: unwinder.symPC)."""
        return self.pc if self.exact else self.pc - 1


@dataclass(frozen=True, slots=True)
class StackSwitch:
    """Where to continue when the walk reaches systemstack/morestack on g0: the goroutine's
    saved context (g.sched) and stack, as last read, and where to find the stack holding any
    address when that context turns out to be another moment's (`stack_of`)."""

    pc: int
    sp: int
    lr: int
    lo: int
    hi: int
    bp: int = 0  # g.sched.bp: the goroutine's frame pointer when it called systemstack
    stack_of: Callable[[int], tuple[int, int] | None] | None = None
    # The return addresses the kernel took along the frame pointers at the sample (perf):
    # what lies past systemstack when the goroutine's stack has changed since.
    chain: tuple[int, ...] = ()


@dataclass(slots=True)
class Walk:
    frames: list[PhysicalFrame]
    stop: Stop  # why the walk ended

    @property
    def complete(self) -> bool:
        return self.stop.complete


class StackMemory:
    """Word reads from a target stack: a prefetched window first, the process for the rest."""

    def __init__(self, read: Callable[[int, int], bytes], base: int = 0, data: bytes = b""):
        self._read = read
        self.base = base
        self.data = data
        self._pages: dict[int, bytes] = {}

    def preload(self, windows: Iterable[tuple[int, bytes]]) -> None:
        """Page-aligned (address, bytes) read earlier (in a stop): served instead of live memory."""
        pages = self._pages
        for base, data in windows:
            for o in range(0, len(data), 0x1000):
                pages.setdefault(base + o, data[o:o + 0x1000])

    def u64(self, addr: int) -> int:
        off = addr - self.base
        if 0 <= off and off + 8 <= len(self.data):
            return struct.unpack_from("<Q", self.data, off)[0]
        page = addr & ~0xFFF
        chunk = self._pages.get(page)
        if chunk is None:
            if len(self._pages) > 4096:
                raise InvalidMemory("stack walk read too much memory")
            chunk = self._read(page, 0x1000)
            self._pages[page] = chunk
        o = addr - page
        if o + 8 > len(chunk):
            return int.from_bytes(chunk[o:] + self._read(page + 0x1000, 8 - (len(chunk) - o)), "little")
        return struct.unpack_from("<Q", chunk, o)[0]


def _dropped(frames: list[PhysicalFrame]) -> bool:
    """Whether a walk on g0 that reached morestack went through the scheduler entered from
    newstack, which had dropped the goroutine."""
    return any(fr.func.name in DROPS_GOROUTINE for fr in frames)


class GoUnwinder:
    def __init__(self, binary: GoBinary, bias: int = 0):
        self.tab = binary.pclntab
        self.bias = bias
        self._binary = binary
        text_lo, text_hi = binary.text_range
        self.text_lo, self.text_hi = text_lo + bias, text_hi + bias
        self._spdelta_cache: dict[int, tuple[Func | None, int | None]] = {}
        self._steps: dict[int, tuple[int, int, int]] = {}  # see live_pcs
        self._call_targets: dict[int, int] = {}  # see call_target

    @cached_property
    def vdso(self) -> VdsoCalls:
        """How to walk out of the runtime's vDSO calls (found on first use)."""
        from goflame.unwind.vdsocall import VdsoCalls

        return VdsoCalls(self._binary, self)

    def func_at(self, pc: int) -> tuple[Func | None, int | None]:
        """(function, spdelta) at a process pc, cached: the per-sample hot path."""
        hit = self._spdelta_cache.get(pc)
        if hit is None:
            f = self.tab.find_func(pc - self.bias) if self.text_lo <= pc < self.text_hi else None
            d = self.tab.spdelta(f, pc - self.bias) if f is not None and f.pcsp else None
            hit = (f, d)
            if len(self._spdelta_cache) > 1 << 20:
                self._spdelta_cache.clear()
            self._spdelta_cache[pc] = hit
        return hit

    def _step_at(self, pc: int) -> tuple[int, int, int]:
        """(frame size + return address, kind, 1 unless pc is its function's entry) for `live_pcs`.

        Kind: _PLAIN (a frame the walk steps over by its size), _TOP (the walk ends here), or
        _FULL (special, trap, SPWRITE, unknown, no frame size: the full rules of `unwind`).
        """
        f, spdelta = self.func_at(pc)
        if (f is None or not f.pcsp or spdelta is None or spdelta < 0 or f.name in SPECIAL
                or f.name in TRAPS or f.flag & FLAG_SPWRITE):
            step = (0, _FULL, 0)
        else:
            step = (spdelta + PTR, _TOP if f.flag & FLAG_TOPFRAME else _PLAIN, int(pc - self.bias != f.entry))
        if len(self._steps) > 1 << 20:
            self._steps.clear()
        self._steps[pc] = step
        return step

    @cached_property
    def _systemstack_entry(self) -> int:
        f = self.tab.func_by_name(SYSTEMSTACK)
        return f.entry + self.bias if f is not None else -1

    def _systemstack_caller(self, frames: list[PhysicalFrame], switch: StackSwitch, mem: StackMemory,
                            pc: int) -> tuple[int, int, int] | None:
        """(sp, lo, hi) of runtime.systemstack's frame on the goroutine's stack, where the walk
        continues past it.

        systemstack keeps the goroutine's frame pointer in BP across the switch (asm_amd64.s:
        "useful for stack unwinding"), so the first frame on g0 (the function systemstack
        called) saved it: read from the g0 stack as it was at the sample, it is the frame
        pointer of systemstack's own frame on the goroutine's stack (its prologue pushed BP;
        before Go 1.21 or so, its caller's). The goroutine's saved context (g.sched: sp and bp
        there) is used when it is of that very call; read later it may be another's (the
        goroutine ran on, or another one runs on the M now). Else the frame is found from the
        frame pointer: systemstack's frame (pcsp at `pc`) holds the return address into its
        caller, which must be the address after a CALL of systemstack, or, where systemstack
        saves no frame pointer, the caller's frame below it must lead exactly to it.
        """
        if not frames:
            return None
        try:
            bp = mem.u64(frames[-1].fp - 2 * PTR)
        except InvalidMemory:
            return None
        if switch.sp and switch.bp == bp and switch.lo <= switch.sp <= bp < switch.hi:
            return switch.sp, switch.lo, switch.hi
        if switch.lo <= bp < switch.hi:
            lo, hi = switch.lo, switch.hi
        else:
            bounds = switch.stack_of(bp) if switch.stack_of is not None else None
            if bounds is None:
                return None
            lo, hi = bounds
        _f, own = self.func_at(pc)
        try:
            if own:  # BP was pushed: the frame lies just below the slot BP points at
                sp = bp - (own - PTR)
                ra = mem.u64(sp + own)
                ok = lo <= sp and self.call_target(ra) == self._systemstack_entry
                return (sp, lo, hi) if ok else None
            return self._scan_for_call(bp, lo, hi, mem)
        except InvalidMemory:
            return None

    def _along_chain(self, frames: list[PhysicalFrame], pc: int, f: Func, chain: tuple[int, ...]) -> Walk:
        """The walk past systemstack from the kernel's frame-pointer callchain, taken at the
        sample: every Go function that calls saves BP, so the chain names each caller (a
        frameless one that calls nothing but a tail of its own is the rare miss)."""
        i = chain.index(pc)
        frames.append(PhysicalFrame(pc, 0, 0, f, False))
        return self.along_return_addresses(frames, chain[i + 1:])

    def along_return_addresses(self, frames: list[PhysicalFrame], ras: Sequence[int]) -> Walk:
        """`frames` and then one frame per return address of a callchain (perf's, taken along
        frame pointers at the sample), up to the first TOPFRAME function."""
        for ra in ras:
            g, _ = self.func_at(ra)
            if g is None:
                return Walk(frames, Stop.UNKNOWN_PC)
            frames.append(PhysicalFrame(ra, 0, 0, g, False))
            if g.flag & FLAG_TOPFRAME:
                return Walk(frames, Stop.TOP)
        return Walk(frames, Stop.CHAIN_END)

    def _scan_for_call(self, bp: int, lo: int, hi: int, mem: StackMemory) -> tuple[int, int, int] | None:
        """A frameless systemstack: BP is its caller's frame pointer. The return address into
        the caller sits below it, at the slot from which the caller's frame size (pcsp) leads
        exactly to that frame pointer."""
        entry = self._systemstack_entry
        slot = bp - PTR
        end = max(lo, bp - MAX_CALLER_SCAN)
        while slot >= end:
            ra = mem.u64(slot)
            if self.text_lo <= ra < self.text_hi and self.call_target(ra) == entry:
                _f, spdelta = self.func_at(ra)
                if spdelta is not None and slot + spdelta == bp:
                    return slot, lo, hi
            slot -= PTR
        return None

    def call_target(self, ra: int) -> int:
        """Where the direct CALL ending at return address `ra` goes (0: not a direct call)."""
        hit = self._call_targets.get(ra)
        if hit is None:
            hit = 0
            if self.text_lo + 5 <= ra < self.text_hi:
                try:
                    code = bytes(self._binary.elf.read(ra - self.bias - 5, 5))
                except (GoflameError, ValueError):
                    code = b""
                if len(code) == 5 and code[0] == _CALL_REL32:
                    hit = ra + _REL32.unpack_from(code, 1)[0]
            if len(self._call_targets) > 1 << 16:
                self._call_targets.clear()
            self._call_targets[ra] = hit
        return hit

    def live_pcs(self, pc: int, sp: int, mem: StackMemory, lo: int, hi: int) -> tuple[int | Stop, ...] | None:
        """The sampler's common walk, lean: a live pc on its goroutine's own stack.

        Returns the sym_pcs of the frames `unwind(pc, sp, 0, mem, lo, hi, exact=True)` would
        make, outermost last, followed by its stop reason — or None when the walk meets a
        frame that needs `unwind`'s full rules (or would end for any reason but Stop.TOP,
        Stop.ZERO_PC or Stop.STALE); the caller then runs `unwind`. No frame objects: a busy sampler walks
        thousands of stacks a second and needs only the pcs (its stacks are keyed by them).
        """
        steps = self._steps
        data, base = mem.data, mem.base
        data_end = base + len(data) - PTR
        unpack = _U64.unpack_from
        text_lo, text_hi = self.text_lo, self.text_hi
        out: list[int | Stop] = []
        append = out.append
        dec = 0  # the innermost pc is the instruction itself
        try:
            while len(out) < MAX_FRAMES:
                size, kind, not_entry = steps.get(pc) or self._step_at(pc)
                if kind == _FULL:
                    return None
                fp = sp + size
                if not (lo <= sp <= hi and fp <= hi):
                    return None
                append(pc - (dec & not_entry))
                if kind == _TOP:
                    append(Stop.TOP)
                    return tuple(out)
                ra = fp - PTR
                lr = unpack(data, ra - base)[0] if base <= ra <= data_end else mem.u64(ra)
                if lr == 0:
                    append(Stop.ZERO_PC if hi - fp <= STACK_TOP_SLACK else Stop.STALE)
                    return tuple(out)
                if not text_lo <= lr < text_hi or (lr == pc and fp == sp):
                    return None
                pc, sp, dec = lr, fp, 1
        except InvalidMemory:
            return None
        return None

    def _saved_by_morestack(self, switch: StackSwitch) -> bool:
        """Whether the goroutine's g.sched, as read, is still what morestack saved in it: its pc
        returns from a call to morestack (a function's prologue stub) and its sp is set. gogo
        clears sched.sp when newstack resumes the goroutine, and any later switch saves another
        pc: read after the sample (perf reads 10-50 ms later), the context is often gone. The
        walk then ends at morestack, cut."""
        if not (switch.sp and switch.lo <= switch.sp < switch.hi):
            return False
        target = self.call_target(switch.pc)
        f = self.func_at(target)[0] if target else None
        return f is not None and f.name.startswith(MORESTACK_ENTRIES)

    def _jump_stack(self, name: str, switch: StackSwitch, frames: list[PhysicalFrame], pc: int, lr: int,
                    f: Func, spdelta: int | None, mem: StackMemory) -> Walk | _Frame | None:
        """Where a walk on g0 goes on at runtime.systemstack or runtime.morestack, as Go's
        unwinder does (jumpStack): to the goroutine's stack; a Walk if it ends here; None if
        it cannot go on at morestack (the walk ends there, cut)."""
        if name == MORESTACK:
            # morestack never returns: newstack gogo's to curg.sched. Match that, while that
            # context is still the one morestack saved (None: it is not; see _saved_by_morestack).
            if not self._saved_by_morestack(switch):
                return None
            to, delta = self.func_at(switch.pc)
            if to is None:
                return None
            return _Frame(switch.pc, switch.sp, switch.lr, switch.lo, switch.hi, to, delta, to.flag, False, None)
        if pc in switch.chain:  # taken at the sample: exact, where memory may be stale
            return self._along_chain(frames, pc, f, switch.chain)
        back = self._systemstack_caller(frames, switch, mem, pc)
        if back is None:
            return Walk(frames, Stop.SYSTEMSTACK)
        return _Frame(pc, back[0], lr, back[1], back[2], f, spdelta, f.flag & ~FLAG_SPWRITE, False, None)

    def _resolve_special(self, name: str, at: _Frame, frames: list[PhysicalFrame], mem: StackMemory,
                         entered_from_syscall: bool) -> _Frame | Walk:
        """The frame at a special runtime function (unwind/special.py), as Go's unwinder
        resolves it (resolveInternal): cgocallback and a syscall's innermost frame are not
        SPWRITE stops; at systemstack and morestack on g0 the walk jumps to the goroutine's
        stack (_jump_stack). A Walk where it ends there."""
        flag, on_system_stack = at.flag, at.on_system_stack
        if name == CGOCALLBACK or entered_from_syscall:
            flag &= ~FLAG_SPWRITE
        if on_system_stack is not None and name == MORESTACK and _dropped(frames):
            # The scheduler entered from newstack (a preemption) dropped the goroutine:
            # m.curg was nil at the sample, and Go's traceback ends here.
            on_system_stack = None
        if on_system_stack is None or name not in JUMP_STACK:
            return at._replace(flag=flag, on_system_stack=on_system_stack)
        switch = on_system_stack(name)
        jump = None if switch is None else self._jump_stack(name, switch, frames, at.pc, at.lr, at.func, at.spdelta,
                                                            mem)
        if isinstance(jump, Walk):
            return jump
        if jump is None:
            return at._replace(flag=flag)
        return jump._replace(trap=at.trap and name == SYSTEMSTACK)

    def unwind(self, pc: int, sp: int, lr: int, mem: StackMemory, lo: int, hi: int, *, exact: bool = False,
               from_syscall: bool = False, on_system_stack: Callable[[str], StackSwitch | None] | None = None,
               max_frames: int = MAX_FRAMES) -> Walk:
        """Walk from (pc, sp[, lr]) on the stack [lo, hi).

        `exact`: pc is a live instruction (registers of a stopped thread), else a saved
        return address (gobuf of a parked goroutine). `on_system_stack(kind)` is called when
        the walk meets runtime.systemstack / runtime.morestack and should return where the
        user goroutine's stack continues (None: stay).
        """
        frames: list[PhysicalFrame] = []
        bias = self.bias
        text_lo, text_hi = self.text_lo, self.text_hi
        cached = self._spdelta_cache.get
        func_at = self.func_at
        append = frames.append
        # The stack window read ahead of the walk, inlined here: this loop runs per frame.
        data, base = mem.data, mem.base
        unpack = _U64.unpack_from
        data_end = base + len(data) - PTR
        try:
            if pc == 0:  # a call through a nil func: the return address is on top of the stack
                if not lo <= sp < hi:
                    return Walk(frames, Stop.BOUNDS)
                pc = mem.u64(sp)
                sp += PTR
            trap = exact
            innermost = True
            while len(frames) < max_frames:
                f, spdelta = cached(pc) or func_at(pc)
                if f is None:
                    return Walk(frames, Stop.UNKNOWN_PC if pc else Stop.ZERO_PC)
                if not f.pcsp:
                    return Walk(frames, Stop.EXTERNAL)
                flag = f.flag
                name = f.name
                if name in SPECIAL or (from_syscall and innermost):
                    at = _Frame(pc, sp, lr, lo, hi, f, spdelta, flag, trap, on_system_stack)
                    at = self._resolve_special(name, at, frames, mem, from_syscall and innermost)
                    if isinstance(at, Walk):
                        return at
                    pc, sp, lr, lo, hi, f, spdelta, flag, trap, on_system_stack = at
                if spdelta is None or spdelta < 0:
                    return Walk(frames, Stop.NO_FRAME_SIZE)
                fp = sp + spdelta + PTR
                if not (lo <= sp <= hi and fp <= hi):
                    return Walk(frames, Stop.BOUNDS)
                append(PhysicalFrame(pc, sp, fp, f, trap or (pc - bias) == f.entry))
                if flag & (FLAG_TOPFRAME | FLAG_SPWRITE):
                    if name == MORESTACK and not innermost and on_system_stack is not None:
                        # newstack's caller on g0 with no goroutine to jump to: Go's traceback
                        # would have gone on into curg, so this stack is cut, not whole.
                        return Walk(frames, Stop.MORESTACK)
                    return Walk(frames, Stop.TOP if flag & FLAG_TOPFRAME else Stop.SPWRITE)
                if lr == 0:
                    ra = fp - PTR
                    lr = unpack(data, ra - base)[0] if base <= ra <= data_end else mem.u64(ra)
                    if lr == 0:
                        return Walk(frames, Stop.ZERO_PC if hi - fp <= STACK_TOP_SLACK else Stop.STALE)
                if not text_lo <= lr < text_hi:
                    return Walk(frames, Stop.UNKNOWN_PC)
                if lr == pc and fp == sp:
                    return Walk(frames, Stop.STUCK)
                trap = name in TRAPS
                pc, sp, lr = lr, fp, 0
                innermost = False
            return Walk(frames, Stop.TOO_DEEP)
        except InvalidMemory:
            return Walk(frames, Stop.MEMORY)
