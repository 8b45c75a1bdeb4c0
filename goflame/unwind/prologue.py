"""Frame recovery where no unwind table covers a pc: read the function's own instructions.

Hand-written assembly and some stripped objects carry no `.eh_frame` entry. Compilers and
assembly authors open frames the same few ways on x86-64 — `push` callee-saved registers,
`push rbp; mov rbp, rsp`, `sub rsp, N` — and close them with the mirror image before `ret`.
So, with capstone, in this order:

1. epilogue: from the pc forward, only pops / `add rsp` / `leave` before a `ret` give the
   exact distance to the return address (the pc is in the function's exit path);
2. straight line: from the entry to the pc without a jump in between gives the exact
   frame at the pc (a `call` returns to the next instruction, so it does not break it);
3. prologue: otherwise the frame the prologue built is assumed to hold in the body;
4. frame pointer: no usable instructions at all — assume `rbp` chains the frames.

The result is a CFA rule in DWARF's terms (the caller's sp, and where registers were
saved relative to it), so the native unwinder applies it like a CFI row — and marks the
frame as recovered heuristically, because none of this is a promise the code made.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

RBX, RBP, RSP = 3, 6, 7
_REG_NUMBERS = {"rbx": RBX, "rbp": RBP, "r12": 12, "r13": 13, "r14": 14, "r15": 15}
MAX_SCAN = 400  # instructions from the entry; prologues are short, bodies before the pc may not be
MAX_EPILOGUE = 16
_STOPS = frozenset({"jmp", "ret", "retq", "ud2", "hlt", "int3", "iretq", "sysret", "ljmp"})


@dataclass(frozen=True, slots=True)
class FrameRule:
    """CFA = reg + offset; each saved register sits at CFA + its offset; return address at CFA-8."""

    cfa_reg: int  # RSP or RBP (DWARF numbers)
    cfa_offset: int
    saved: tuple[tuple[int, int], ...]  # (DWARF register, offset from the CFA)
    method: str  # "epilogue", "straight-line", "prologue", "frame-pointer"


FRAME_POINTER = FrameRule(RBP, 16, ((RBP, -16),), "frame-pointer")


def _imm(text: str) -> int | None:
    try:
        return int(text, 0)
    except ValueError:
        return None


def _rsp_delta(mnemonic: str, ops: str) -> int | None:
    """How an instruction moves rsp (bytes, + = grows the frame); None: it does not touch rsp."""
    if mnemonic in ("push", "pushq", "pushfq", "pushf"):
        return 8  # a register, an immediate or a memory operand: 8 bytes in 64-bit mode
    if mnemonic in ("pop", "popq", "popfq", "popf"):
        return -8
    if ops.startswith("rsp, "):
        src = ops[5:]
        if mnemonic == "sub":
            v = _imm(src)
            return v if v is not None else None
        if mnemonic == "add":
            v = _imm(src)
            return -v if v is not None else None
        if mnemonic == "lea" and src.startswith("[rsp") and src.endswith("]"):
            inner = src[4:-1].replace(" ", "")
            if not inner:
                return 0
            v = _imm(inner.lstrip("+-"))
            if v is None:
                return None
            return v if inner.startswith("-") else -v
    return None


def _writes_rsp(mnemonic: str, ops: str) -> bool:
    return ops.startswith("rsp,") or mnemonic in ("leave", "leaveq", "enter")


class _Scan:
    """Track cfa - rsp, a frame pointer and saved registers along straight-line code."""

    def __init__(self) -> None:
        self.off = 8  # at the entry the return address is at rsp: CFA = rsp + 8
        self.fp_off: int | None = None  # CFA = rbp + fp_off once `mov rbp, rsp` ran
        self.saved: dict[int, int] = {}
        self.lost = False  # rsp moved in a way we cannot follow (and no frame pointer)

    def step(self, mnemonic: str, ops: str) -> None:
        if mnemonic in ("push", "pushq") and ops in _REG_NUMBERS:
            self.off += 8
            self.saved.setdefault(_REG_NUMBERS[ops], -self.off)
            return
        if mnemonic == "mov" and ops == "rbp, rsp":
            self.fp_off = self.off
            return
        if mnemonic in ("leave", "leaveq"):
            if self.fp_off is None:
                self.lost = True
                return
            self.off = self.fp_off - 8
            self.fp_off = None
            return
        if mnemonic in ("pop", "popq") and ops == "rbp":
            self.fp_off = None
        d = _rsp_delta(mnemonic, ops)
        if d is not None:
            self.off += d
            return
        if _writes_rsp(mnemonic, ops):
            if self.fp_off is None:
                self.lost = True
            self.off = -1  # unknown; only the frame pointer still locates the CFA
        elif ops.startswith("rbp,") and self.fp_off is not None and mnemonic != "cmp" and mnemonic != "test":
            self.fp_off = None  # rbp reused as a general register

    def rule(self, method: str) -> FrameRule | None:
        if self.fp_off is not None:
            return FrameRule(RBP, self.fp_off, tuple(sorted(self.saved.items())), method)
        if self.lost or self.off < 8:
            return None
        return FrameRule(RSP, self.off, tuple(sorted(self.saved.items())), method)


class PrologueAnalyzer:
    """Prologue/epilogue analysis of x86-64 machine code; capstone is loaded on first use."""

    @cached_property
    def _cs(self):  # noqa: ANN202 - capstone's class
        import capstone

        return capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)

    def analyze(self, code: bytes, entry: int, pc: int, tail: bytes, end: int = 0) -> FrameRule | None:
        """The frame at `pc` of the function starting at `entry`.

        `code` holds the function's bytes from `entry` up to `pc`, `tail` the bytes from
        `pc` on, `end` the function's end when its symbol has a size. For a caller's frame
        `pc` is the return address itself: the frame there is the one the call was made in.
        None: nothing trustworthy (the caller falls back to rbp).
        """
        rule = self._epilogue(tail, pc, entry, end)
        if rule is not None:
            return rule
        scan = _Scan()
        body: _Scan | None = None
        end = entry
        n = 0
        for addr, size, mnemonic, ops in self._cs.disasm_lite(code, entry):
            n += 1
            if n > MAX_SCAN:
                break
            if mnemonic in _STOPS:
                break
            if mnemonic.startswith("j") and body is None:
                # A conditional branch: code after it may run in the frame built so far.
                body = _copy(scan)
            if body is not None and (mnemonic in ("pop", "popq", "leave", "leaveq") or
                                     (mnemonic == "add" and ops.startswith("rsp, "))):
                break  # an early exit path: the fall-through no longer shows the body's frame
            scan.step(mnemonic, ops)
            end = addr + size
            if scan.lost:
                break
        reached = end == pc
        if reached and not scan.lost:
            return scan.rule("straight-line")
        return (body if body is not None and body.off >= scan.off else scan).rule("prologue")

    def _epilogue(self, tail: bytes, pc: int, entry: int = 0, end: int = 0) -> FrameRule | None:
        """From pc, only stack pops before `ret` (or a tail call): the frame is whatever they pop."""
        off = 0
        saved: dict[int, int] = {}
        n = 0
        fp_leave = False
        for _addr, _size, mnemonic, ops in self._cs.disasm_lite(tail, pc):
            n += 1
            if n > MAX_EPILOGUE:
                return None
            if mnemonic == "jmp" and (n > 1 or fp_leave) and _tail_call(ops, entry, end):
                mnemonic = "ret"  # a jump out of the function after its frame was popped
            if mnemonic in ("ret", "retq"):
                if fp_leave:
                    return FrameRule(RBP, 16, ((RBP, -16),), "epilogue")
                return FrameRule(RSP, off + 8, tuple(sorted((r, o - (off + 8)) for r, o in saved.items())),
                                 "epilogue")
            if mnemonic in ("leave", "leaveq"):
                fp_leave = True  # rsp = rbp + 8 after it: CFA = rbp + 16; earlier pops are lost
                continue
            if fp_leave:
                return None
            if mnemonic in ("pop", "popq") and ops in _REG_NUMBERS:
                saved[_REG_NUMBERS[ops]] = off
                off += 8
                continue
            if mnemonic in ("pop", "popq"):
                off += 8
                continue
            if mnemonic == "add" and ops.startswith("rsp, "):
                v = _imm(ops[5:])
                if v is None:
                    return None
                off += v
                continue
            if mnemonic in ("nop", "endbr64") or mnemonic.startswith("mov") and not ops.startswith(("rsp", "rbp")):
                continue
            return None
        return None


def _tail_call(ops: str, entry: int, end: int) -> bool:
    """`jmp` to a register, or to an address outside the function: a tail call."""
    if ops in ("rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11"):
        return True
    target = _imm(ops)
    return target is not None and end > entry and not entry <= target < end


def _copy(s: _Scan) -> _Scan:
    c = _Scan()
    c.off, c.fp_off, c.saved, c.lost = s.off, s.fp_off, dict(s.saved), s.lost
    return c
