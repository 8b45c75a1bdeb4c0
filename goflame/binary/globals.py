"""Link-time addresses of the runtime globals goflame reads: from `.symtab`, else from code.

A stripped Go binary keeps its pclntab, so every runtime function can still be found by
name; the globals those functions touch cannot. We disassemble (capstone) a handful of
runtime functions whose source has not changed in substance over Go 1.19-1.27 (each rule
was checked against every release's proc.go/asm and real builds) and pick each global out
by *what the code does with it*, not by where the operand happens to be: `allgs` is the
slice whose ptr/len/cap `allgadd` appends to, `sched` is what `newproc1` atomically adds
`_GoidCacheBatch` (16) to (`sched.goidgen`, its first field), `g0` is what `rt0_go` stores
into the TLS slot of g, and so on. A small forward dataflow over each function (which
register holds which global's address, which loaded value, which constant, which call's
result; facts survive a branch join only where all paths agree) turns instructions into
arch-neutral *events*, so amd64 and arm64 share the rules. Atomics the compiler did not
inline (`-gcflags=all=-N -l`) count as the store/add they perform. Every candidate must
land in a writable segment at its natural alignment, globals may not overlap, and where
two functions reveal the same global they must agree: a global we are unsure of is
reported missing, never guessed.

All addresses are link-time (a PIE's load bias is added by the process layer).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

import capstone
from capstone import arm64 as cs_arm64
from capstone import x86 as cs_x86

from goflame.errors import BadInput, CorruptBinary, GoflameError

if TYPE_CHECKING:
    from goflame.binary.gobinary import GoBinary

# goflame's name -> symbol names it has had (ncpu became numCPUStartup in Go 1.25).
GLOBALS: dict[str, tuple[str, ...]] = {
    "runtime.allgs": ("runtime.allgs",),
    "runtime.allglen": ("runtime.allglen",),
    "runtime.allm": ("runtime.allm",),
    "runtime.allp": ("runtime.allp",),
    "runtime.sched": ("runtime.sched",),
    "runtime.buildVersion": ("runtime.buildVersion",),
    "runtime.firstmoduledata": ("runtime.firstmoduledata",),
    "runtime.gomaxprocs": ("runtime.gomaxprocs",),
    "runtime.ncpu": ("runtime.ncpu", "runtime.numCPUStartup"),
    "runtime.m0": ("runtime.m0",),
    "runtime.g0": ("runtime.g0",),
    "runtime.iscgo": ("runtime.iscgo",),
    "runtime.runtimeInitTime": ("runtime.runtimeInitTime",),
}

HOW = ("symtab", "disassembly", "moduledata-scan")

# Offset of g.m (after stack{lo,hi}, stackguard0, stackguard1, _panic, _defer): 48 since Go 1.4.
_G_M_OFFSET = 48
_GOID_CACHE_BATCH = 16  # runtime._GoidCacheBatch, unchanged since Go 1.4
_PREFIX = 512  # bytes decoded first where the fact sits at a function's start
_MAX_FUNC_BYTES = 64 * 1024  # no function we read is near this; a corrupt end cannot make us read 40 MB


@dataclass(frozen=True, slots=True)
class GlobalAddr:
    name: str  # goflame's name for it, e.g. "runtime.ncpu"
    addr: int  # link-time address
    how: str  # one of HOW
    symbol: str = ""  # the symbol's name in this Go version (runtime.numCPUStartup for ncpu on 1.25+)


@dataclass(frozen=True, slots=True)
class Globals:
    """Where each runtime global lives; iterating yields the GlobalAddr records found."""

    binary: str
    found: MappingProxyType[str, GlobalAddr]
    missing: MappingProxyType[str, str] = field(default_factory=lambda: MappingProxyType({}))
    g_tls_offset: int | None = None  # amd64: the current g is at fs_base + this (None: not in TLS)
    g_tls_how: str | None = None

    def get(self, name: str) -> GlobalAddr | None:
        return self.found.get(name)

    def require(self, name: str) -> GlobalAddr:
        g = self.found.get(name)
        if g is None:
            why = self.missing.get(name, "not looked for")
            raise CorruptBinary(f"{self.binary}: cannot locate the Go runtime's {name} ({why}); "
                                "a build without -ldflags=-s would name it in its symbol table")
        return g

    def addr(self, name: str) -> int:
        return self.require(name).addr

    def __getitem__(self, name: str) -> GlobalAddr:
        return self.require(name)

    def __contains__(self, name: object) -> bool:
        return name in self.found

    def __iter__(self) -> Iterator[GlobalAddr]:
        return iter(self.found.values())

    def __len__(self) -> int:
        return len(self.found)

    def names(self) -> tuple[str, ...]:
        return tuple(self.found)


# -- events: what a function does with globals ---------------------------------------------------

# A register's abstract value: ("addr", A) address of global A, ("load", A, size) a value read
# from A, ("imm", v) a constant, ("ret", callee) a call's result; None: unknown.
Value = tuple | None


@dataclass(frozen=True, slots=True)
class Event:
    pc: int
    op: str  # lea | load | store | xchg | xadd | rmw | call | tls-load | tls-store | setreg
    addr: int = 0  # the global's address (for tls-*: the offset from the thread pointer)
    size: int = 0
    value: Value = None  # stored/added value, or the compared constant for a load
    callee: str = ""
    reg: str = ""  # setreg: which register (arm64 g register x28)


class _Tracer:
    """Turns a function's machine code into Events with a forward dataflow that merges at branches."""

    def __init__(self, binary: GoBinary):
        self.binary = binary
        self.elf = binary.elf
        self.arch = binary.arch
        if self.arch == "amd64":
            self.cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        elif self.arch == "arm64":
            self.cs = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
        else:
            raise BadInput(f"{binary.path}: finding runtime globals on {self.arch} is not supported")
        self.cs.detail = True
        rw = [(s.vaddr, s.vaddr + s.memsz) for s in self.elf.segments if s.type == "PT_LOAD" and s.flags & 0x2]
        self.rw = tuple(rw)
        self._cache: dict[tuple[str, int | None], tuple[Event, ...] | None] = {}

    def writable(self, addr: int) -> bool:
        return any(lo <= addr < hi for lo, hi in self.rw)

    def name_at(self, pc: int) -> str:
        f = self.binary.pclntab.find_func(pc)
        return f.name if f is not None and f.entry == pc else ""

    def events(self, func_name: str, limit: int | None = None) -> tuple[Event, ...] | None:
        """Events of `func_name` (or its .abi0 twin), or None when it isn't linked in.

        `limit` decodes only the first bytes: for facts a function establishes in its first
        few instructions, decoding all of it (procresize is 3-4 KB) is most of the cost.
        """
        key = (func_name, limit)
        if key in self._cache:
            return self._cache[key]
        out = None
        for name in (func_name, func_name + ".abi0"):
            f = self.binary.pclntab.func_by_name(name)
            if f is not None:
                size = min(f.end - f.entry, _MAX_FUNC_BYTES if limit is None else limit)
                code = bytes(self.elf.read(f.entry, size))
                insns = list(self.cs.disasm(code, f.entry))
                out = tuple(self._run(insns))
                break
        self._cache[key] = out
        return out

    def _run(self, insns: list) -> Iterator[Event]:
        amd64 = self.arch == "amd64"
        step = self._amd64 if amd64 else self._arm64
        flow = _Flow(insns, amd64)
        regs: dict[str, Value] = {}
        for ins in insns:
            regs = flow.enter(ins, regs)
            yield from step(ins, regs)
            flow.leave(ins, regs)

    # -- amd64 ------------------------------------------------------------------------------------
    def _amd64(self, ins, regs: dict[str, Value]) -> Iterator[Event]:
        """One instruction: its events, and its effect on `regs` (updated in place)."""
        mn = ins.mnemonic.removeprefix("lock ")
        ops = ins.operands
        if ins.group(cs_x86.X86_GRP_CALL):
            callee = ""
            if ops and ops[0].type == cs_x86.X86_OP_IMM:
                callee = self.name_at(ops[0].imm)
            yield Event(ins.address, "call", callee=callee)
            yield from _atomic_call(ins.address, callee, regs.get("rax"), regs.get("rbx"))
            if callee.startswith(_WRITE_BARRIERS):  # they save every register but their output
                regs.pop("r11", None)
                return
            regs.clear()
            # ABIInternal returns in AX; ABI0 (assembly: nanotime1, ...) at 0(SP).
            regs["rax"] = regs["[rsp]"] = ("ret", callee)
            return
        mem = next((o for o in ops if o.type == cs_x86.X86_OP_MEM), None)
        dst = ops[0] if ops else None
        dst_reg = _x86_family(ins.reg_name(dst.reg)) if dst is not None and dst.type == cs_x86.X86_OP_REG else ""
        new: Value = None
        if mem is not None:
            where = self._x86_mem(ins, mem, regs)
            if where is not None:
                kind, a = where
                src = _x86_source(ins, ops, regs, mem)
                size = mem.size
                if kind == "stack":  # only 0(SP) right after a call is tracked
                    if mem.access & capstone.CS_AC_WRITE:
                        regs.pop("[rsp]", None)
                    elif mn == "mov":
                        new = regs.get("[rsp]")
                elif kind == "tls":
                    op = "tls-store" if mem.access & capstone.CS_AC_WRITE else "tls-load"
                    yield Event(ins.address, op, a, size, src if op == "tls-store" else None)
                elif mn == "lea":
                    yield Event(ins.address, "lea", a, 8)
                    new = ("addr", a)
                elif mem.access & capstone.CS_AC_WRITE:
                    op = {"mov": "store", "xchg": "xchg", "xadd": "xadd"}.get(mn, "rmw")
                    yield Event(ins.address, op, a, size, src)
                    if mn == "xchg" and dst_reg == "" and len(ops) == 2 and ops[1].type == cs_x86.X86_OP_REG:
                        regs[_x86_family(ins.reg_name(ops[1].reg))] = None
                else:
                    yield Event(ins.address, "load", a, size, src if mn in ("cmp", "test") else None)
                    if mn in ("mov", "movzx", "movsx", "movsxd"):
                        new = ("load", a, size)
        elif mn == "mov" and dst_reg and len(ops) == 2:
            s = ops[1]
            if s.type == cs_x86.X86_OP_IMM:
                new = ("imm", s.imm)
            elif s.type == cs_x86.X86_OP_REG and dst.size == 8:
                new = regs.get(_x86_family(ins.reg_name(s.reg)))
            elif s.type == cs_x86.X86_OP_REG:  # a 32-bit copy keeps constants and loads, not addresses
                v = regs.get(_x86_family(ins.reg_name(s.reg)))
                new = v if v is not None and v[0] != "addr" else None
        elif mn == "xor" and len(ops) == 2 and ops[1].type == cs_x86.X86_OP_REG and ops[1].reg == dst.reg:
            new = ("imm", 0)
        _, written = ins.regs_access()
        for r in written:
            fam = _x86_family(ins.reg_name(r))
            if fam:
                regs[fam] = None
        if dst_reg and (new is not None or mn in ("lea", "mov", "xor")):
            regs[dst_reg] = new

    def _x86_mem(self, ins, mem, regs: dict[str, Value]) -> tuple[str, int] | None:
        m = mem.mem
        if m.segment != 0:
            if ins.reg_name(m.segment) != "fs":
                return None
            off = m.disp
            if m.base != 0:
                v = regs.get(_x86_family(ins.reg_name(m.base)))
                if v is None or v[0] != "imm":
                    return None
                off += v[1]
            if m.index != 0:
                return None
            return ("tls", _signed64(off))
        if m.index != 0:
            return None
        if m.base == cs_x86.X86_REG_RSP and m.disp == 0:
            return ("stack", 0)
        if m.base == 0:
            a = m.disp & 0xFFFFFFFFFFFFFFFF
        elif m.base == cs_x86.X86_REG_RIP:
            a = ins.address + ins.size + m.disp
        else:
            v = regs.get(_x86_family(ins.reg_name(m.base)))
            if v is None or v[0] not in ("addr", "imm"):
                return None
            a = v[1] + m.disp
        return ("global", a) if self.writable(a) else None

    # -- arm64 ------------------------------------------------------------------------------------
    def _arm64(self, ins, regs: dict[str, Value]) -> Iterator[Event]:
        mn = ins.mnemonic
        ops = ins.operands
        if mn in ("bl", "blr"):
            callee = ""
            if mn == "bl" and ops and ops[0].type == cs_arm64.ARM64_OP_IMM:
                callee = self.name_at(ops[0].imm)
            yield Event(ins.address, "call", callee=callee)
            yield from _atomic_call(ins.address, callee, regs.get("x0"), regs.get("x1"))
            if callee.startswith(_WRITE_BARRIERS):  # they save every register but their output
                for r in ("x25", "x27", "x30"):
                    regs.pop(r, None)
                return
            _reset_keeping_g(regs)
            # ABIInternal returns in R0; ABI0 (assembly) at 8(RSP), above the saved LR.
            regs["x0"] = regs["[sp+8]"] = ("ret", callee)
            return
        regops = [o for o in ops if o.type == cs_arm64.ARM64_OP_REG]
        dst = _arm64_family(ins.reg_name(regops[0].reg)) if regops else ""
        mem = next((o for o in ops if o.type == cs_arm64.ARM64_OP_MEM), None)
        new: Value = None
        assign = False
        if mn == "adrp" and len(ops) == 2:
            new, assign = ("addr", ops[1].imm), True
        elif mn == "add" and len(ops) == 3 and ops[2].type == cs_arm64.ARM64_OP_IMM:
            assign = True
            base = regs.get(_arm64_family(ins.reg_name(ops[1].reg)))
            if base is not None and base[0] == "addr":
                imm = ops[2].imm
                if ops[2].shift.type == cs_arm64.ARM64_SFT_LSL:
                    imm <<= ops[2].shift.value
                new = ("addr", base[1] + imm)
        elif mn in ("mov", "movz") and len(ops) == 2:
            assign = True
            if ops[1].type == cs_arm64.ARM64_OP_IMM:
                new = ("imm", ops[1].imm)
            elif ops[1].type == cs_arm64.ARM64_OP_REG:
                new = _arm64_reg_value(ins.reg_name(ops[1].reg), regs)
        elif mem is not None:
            yield from self._arm64_mem(ins, mn, ops, mem, regs)
            on_sp8 = ins.reg_name(mem.mem.base) == "sp" and mem.mem.disp == 8 and mem.mem.index == 0
            if mn in _ARM64_PLAIN_LOADS:
                assign = True
                a = self._arm64_addr(ins, mem, regs)
                if a is not None:
                    new = ("load", a, _arm64_size(mn, ins.reg_name(ops[0].reg)))
                elif on_sp8 and mn == "ldr":
                    new = regs.get("[sp+8]")
            elif on_sp8 or (mn.startswith("st") and ins.reg_name(mem.mem.base) == "sp"):
                regs.pop("[sp+8]", None)
        _, written = ins.regs_access()
        for r in written:
            fam = _arm64_family(ins.reg_name(r))
            if fam:
                regs[fam] = None
        if assign and dst:
            regs[dst] = new
            if dst == "x28" and new is not None:
                yield Event(ins.address, "setreg", value=new, reg="x28")
        if ins.writeback and mem is not None:  # pre/post-index: the base moved
            regs[_arm64_family(ins.reg_name(mem.mem.base))] = None

    def _arm64_addr(self, ins, mem, regs: dict[str, Value]) -> int | None:
        m = mem.mem
        if m.index != 0 or m.base == 0:
            return None
        v = regs.get(_arm64_family(ins.reg_name(m.base)))
        if v is None or v[0] != "addr":
            return None
        a = v[1] + m.disp
        return a if self.writable(a) else None

    def _arm64_mem(self, ins, mn: str, ops, mem, regs: dict[str, Value]) -> Iterator[Event]:
        a = self._arm64_addr(ins, mem, regs)
        if a is None:
            return
        regops = [o for o in ops if o.type == cs_arm64.ARM64_OP_REG]
        first = ins.reg_name(regops[0].reg) if regops else ""
        size = _arm64_size(mn, first)
        val = _arm64_reg_value(first, regs) if first else None
        if mn in ("ldp", "ldnp", "ldaxp", "ldxp"):
            yield Event(ins.address, "load", a, size)
            yield Event(ins.address, "load", a + size, size)
        elif mn in ("stp", "stnp"):
            yield Event(ins.address, "store", a, size, val)
            second = ins.reg_name(regops[1].reg) if len(regops) > 1 else ""
            yield Event(ins.address, "store", a + size, size, _arm64_reg_value(second, regs) if second else None)
        elif mn.startswith(("ldadd",)):
            yield Event(ins.address, "xadd", a, size, val)
        elif mn.startswith(("swp", "stlr")):
            yield Event(ins.address, "xchg", a, size, val)
        elif mn.startswith(("stlxr", "stxr")):
            second = ins.reg_name(regops[1].reg) if len(regops) > 1 else ""
            yield Event(ins.address, "xchg", a, _arm64_size(mn, second), _arm64_reg_value(second, regs))
        elif mn.startswith("st"):
            yield Event(ins.address, "store", a, size, val)
        elif mn.startswith("ld"):
            yield Event(ins.address, "load", a, size)
        else:
            yield Event(ins.address, "rmw", a, size, val)


_ARM64_PLAIN_LOADS = frozenset(("ldr", "ldrb", "ldrh", "ldrsb", "ldrsh", "ldrsw", "ldur", "ldurb", "ldurh",
                                "ldar", "ldarb", "ldarh"))
# runtime.gcWriteBarrier (<1.21) and gcWriteBarrier1..8 (1.21+) are assembly that preserves all
# general registers except the buffer pointer they return (R11 on amd64, R25 on arm64; and
# R27/LR on arm64).
_WRITE_BARRIERS = ("runtime.gcWriteBarrier",)
# Atomics the compiler did not inline (-gcflags=-l builds): a call with the global's address as
# first argument and the value as second (ABIInternal: AX, BX / R0, R1) is the store or add.
_ATOMIC_PACKAGES = ("runtime/internal/atomic.", "internal/runtime/atomic.")
_ATOMIC_STORES = frozenset(("Store", "Store64", "StoreRel", "StoreRel64", "Storeuintptr", "StorepNoWB",
                            "StoreNoWB", "atomicstorep"))
_ATOMIC_ADDS = frozenset(("Add", "Xadd", "Xadd64", "Xadduintptr"))


def _atomic_call(pc: int, callee: str, arg0: Value, arg1: Value) -> Iterator[Event]:
    if arg0 is None or arg0[0] != "addr":
        return
    if not (callee.startswith(_ATOMIC_PACKAGES) or callee == "runtime.atomicstorep"):
        return
    op = callee.rpartition(".")[2]
    if "(*" in callee:  # a method of atomic.Int32, Uint64, Uintptr, Pointer...
        size = 4 if "32)" in callee else 8
    else:  # Store/StoreRel/Xadd are the uint32 ones
        size = 4 if op in ("Store", "StoreRel", "Xadd") else 8
    if op in _ATOMIC_STORES:
        yield Event(pc, "xchg", arg0[1], size, arg1)
    elif op in _ATOMIC_ADDS:
        yield Event(pc, "xadd", arg0[1], size, arg1)


_NO_FALLTHROUGH = frozenset(("jmp", "ret", "ud2", "int3", "hlt", "b", "br", "brk", "udf"))


class _Flow:
    """Register facts at branch joins: kept only where every incoming path agrees.

    One forward pass: a forward branch hands its state to its target; a target reached by a
    backward branch (a loop head) starts from nothing, as does code after an unconditional
    jump that no branch we saw lands on. Go's g register (R28 on arm64) survives all of it.
    """

    def __init__(self, insns: list, amd64: bool):
        self.amd64 = amd64
        self.keep = () if amd64 else ("x28",)
        self.targets: set[int] = set()
        self.loop_heads: set[int] = set()
        self.pending: dict[int, list[dict[str, Value]]] = {}
        self.falls_through = True
        for ins in insns:
            t = self._target(ins)
            if t is not None:
                self.targets.add(t)
                if t <= ins.address:
                    self.loop_heads.add(t)

    def _target(self, ins) -> int | None:
        if self.amd64:
            if not ins.group(cs_x86.X86_GRP_JUMP) or ins.group(cs_x86.X86_GRP_CALL):
                return None
            imm = cs_x86.X86_OP_IMM
        else:
            if not ins.group(cs_arm64.ARM64_GRP_JUMP) or ins.group(cs_arm64.ARM64_GRP_CALL):
                return None
            imm = cs_arm64.ARM64_OP_IMM
        imms = [o.imm for o in ins.operands if o.type == imm]
        return imms[-1] if imms else None

    def _kept(self, regs: dict[str, Value]) -> dict[str, Value]:
        return {k: regs[k] for k in self.keep if regs.get(k) is not None}

    def enter(self, ins, regs: dict[str, Value]) -> dict[str, Value]:
        a = ins.address
        if a not in self.targets and self.falls_through:
            return regs
        states = self.pending.pop(a, [])
        if self.falls_through:
            states.append(regs)
        if a in self.loop_heads or not states:
            return self._kept(regs)
        first, rest = states[0], states[1:]
        return {k: v for k, v in first.items() if v is not None and all(s.get(k) == v for s in rest)}

    def leave(self, ins, regs: dict[str, Value]) -> None:
        t = self._target(ins)
        if t is not None and t > ins.address:
            self.pending.setdefault(t, []).append(dict(regs))
        self.falls_through = ins.mnemonic not in _NO_FALLTHROUGH and not (
            ins.group(cs_x86.X86_GRP_RET) if self.amd64 else ins.group(cs_arm64.ARM64_GRP_RET))


def _reset_keeping_g(regs: dict[str, Value]) -> None:
    """Forget every register but R28: Go's g register survives calls within a function."""
    g = regs.get("x28")
    regs.clear()
    if g is not None:
        regs["x28"] = g


# Every x86-64 general register name -> its 64-bit register (a write to eax is a write to rax).
_X86_FAMILIES: dict[str, str] = {
    **{sub: full for full, subs in {
        "rax": ("eax", "ax", "al", "ah"), "rbx": ("ebx", "bx", "bl", "bh"), "rcx": ("ecx", "cx", "cl", "ch"),
        "rdx": ("edx", "dx", "dl", "dh"), "rsi": ("esi", "si", "sil"), "rdi": ("edi", "di", "dil"),
        "rbp": ("ebp", "bp", "bpl"), "rsp": ("esp", "sp", "spl"),
    }.items() for sub in (full, *subs)},
    **{f"r{n}{suffix}": f"r{n}" for n in range(8, 16) for suffix in ("", "d", "w", "b")},
}


def _x86_family(name: str | None) -> str:
    return _X86_FAMILIES.get(name or "", "")


def _x86_source(ins, ops, regs: dict[str, Value], mem) -> Value:
    """The value an instruction stores/exchanges/compares: its non-memory operand."""
    for o in ops:
        if o is mem:
            continue
        if o.type == cs_x86.X86_OP_IMM:
            return ("imm", o.imm)
        if o.type == cs_x86.X86_OP_REG:
            return regs.get(_x86_family(ins.reg_name(o.reg)))
    return None


def _arm64_family(name: str | None) -> str:
    if not name:
        return ""
    if name[0] in "wx" and name[1:].isdigit():
        return "x" + name[1:]
    if name in ("fp", "x29", "w29"):
        return "x29"
    if name in ("lr", "x30", "w30"):
        return "x30"
    return ""


def _arm64_reg_value(name: str, regs: dict[str, Value]) -> Value:
    if name in ("xzr", "wzr"):
        return ("imm", 0)
    return regs.get(_arm64_family(name))


def _arm64_size(mn: str, reg: str) -> int:
    """Access width: byte/halfword mnemonics say so (ldrb, stlrb, ldaddalb), else the register does."""
    if mn.endswith("b"):
        return 1
    if mn.endswith("h"):
        return 2
    if mn.endswith("sw"):
        return 4
    return 4 if reg.startswith("w") else 8


def _signed64(v: int) -> int:
    v &= 0xFFFFFFFFFFFFFFFF
    return v - (1 << 64) if v >> 63 else v


# -- rules: one per global, each reading the events of one or two runtime functions -------------


class _NotFound(Exception):
    """A rule did not match; the message says which function and pattern (shown by require())."""


def _ev(t: _Tracer, func: str, limit: int | None = None) -> tuple[Event, ...]:
    ev = t.events(func, limit)
    if ev is None:
        raise _NotFound(f"{func} is not in the pclntab")
    return ev


def _slice_triples(events: tuple[Event, ...]) -> list[int]:
    """Globals accessed as a slice header (ptr, len and cap words), in order of first access."""
    touched = {e.addr for e in events if e.op in ("load", "store") and e.size == 8}
    order: list[int] = []
    for e in events:
        if e.op not in ("load", "store") or e.size != 8:
            continue
        for base in (e.addr, e.addr - 8, e.addr - 16):
            if base not in order and {base, base + 8, base + 16} <= touched:
                order.append(base)
    return order


def _rule_allgs(t: _Tracer) -> int:
    # allgadd: allgs = append(allgs, gp) -- the only slice it touches.
    triples = _slice_triples(_ev(t, "runtime.allgadd"))
    if len(triples) != 1:
        raise _NotFound(f"runtime.allgadd touches {len(triples)} slice headers, expected 1")
    return triples[0]


def _rule_allglen(t: _Tracer, allgs: int) -> int:
    # allgadd: atomic.Storeuintptr(&allglen, uintptr(len(allgs))) -- an atomic store of allgs' len.
    for e in _ev(t, "runtime.allgadd"):
        if e.op == "xchg" and e.size == 8 and not allgs <= e.addr < allgs + 24:
            if e.value is not None and e.value[0] == "load" and e.value[1] == allgs + 8:
                return e.addr
    raise _NotFound("no atomic store of len(allgs) in runtime.allgadd")


def _rule_allglen_race(t: _Tracer) -> int:
    # forEachGRace: ptr, length := atomicAllG() -- allglen is read first, then allgptr.
    loads = [e for e in _ev(t, "runtime.forEachGRace") if e.op == "load" and e.size == 8]
    if not loads:
        raise _NotFound("runtime.forEachGRace reads no globals")
    return loads[0].addr


def _rule_allm(t: _Tracer) -> int:
    # mcommoninit: mp.alllink = allm; atomicstorep(unsafe.Pointer(&allm), unsafe.Pointer(mp))
    ev = _ev(t, "runtime.mcommoninit")
    for i, e in enumerate(ev):
        if e.op == "xchg" and e.size == 8:
            if any(p.op == "load" and p.addr == e.addr for p in ev[:i]):
                return e.addr
    raise _NotFound("no load-then-atomic-store of one pointer in runtime.mcommoninit")


def _first_two_loads_slice(t: _Tracer, func: str) -> int:
    # `for _, pp := range allp`: the loop reads allp's ptr and len before touching anything else.
    loads = [e for e in _ev(t, func) if e.op in ("load", "lea")]
    if len(loads) >= 2:
        a, b = sorted(e.addr for e in loads[:2])
        if b == a + 8 and all(e.op == "load" and e.size == 8 for e in loads[:2]):
            return a
    raise _NotFound(f"{func} does not start by ranging over a slice")


def _rule_allp(t: _Tracer) -> int:
    return _first_two_loads_slice(t, "runtime.preemptall")


def _rule_allp_tiny(t: _Tracer) -> int:
    return _first_two_loads_slice(t, "runtime.gcMarkTinyAllocs")


def _rule_sched(t: _Tracer) -> int:
    # newproc1: pp.goidcache = sched.goidgen.Add(_GoidCacheBatch); goidgen is schedt's first field.
    for e in _ev(t, "runtime.newproc1"):
        if e.op == "xadd" and e.size == 8 and e.value == ("imm", _GOID_CACHE_BATCH):
            return e.addr
    raise _NotFound("no atomic add of _GoidCacheBatch in runtime.newproc1")


def _rule_sched_lastpoll(t: _Tracer) -> int:
    # schedinit: sched.lastpoll.Store(nanotime()) -- lastpoll is the second word of schedt.
    for e in _ev(t, "runtime.schedinit"):
        if e.op in ("store", "xchg") and e.size == 8 and _is_call_result(e.value, "runtime.nanotime"):
            return e.addr - 8
    raise _NotFound("no store of nanotime() in runtime.schedinit")


def _is_call_result(v: Value, prefix: str) -> bool:
    return v is not None and v[0] == "ret" and v[1].startswith(prefix)


def _rule_build_version(t: _Tracer) -> int:
    # schedinit: if buildVersion == "" { buildVersion = "unknown" } -- len 7 stored at +8.
    ev = _ev(t, "runtime.schedinit")
    for i, e in enumerate(ev):
        if e.op == "store" and e.size == 8 and e.value == ("imm", len("unknown")):
            base = e.addr - 8
            if any(p.op == "load" and p.addr == e.addr for p in ev[:i]) and any(
                    s.op == "store" and s.addr == base for s in ev[i:]):
                return base
    raise _NotFound('no `buildVersion = "unknown"` in runtime.schedinit')


def _rule_gomaxprocs(t: _Tracer) -> int:
    # procresize: old := gomaxprocs -- the first global it reads, an int32.
    for limit in (_PREFIX, None):
        for e in _ev(t, "runtime.procresize", limit):
            if e.op in ("load", "store", "xchg", "xadd", "rmw"):
                if e.op == "load" and e.size == 4:
                    return e.addr
                raise _NotFound("runtime.procresize does not start by reading an int32 global")
    raise _NotFound("runtime.procresize reads no global")


def _rule_ncpu(t: _Tracer) -> int:
    # osinit: ncpu = getproccount() (numCPUStartup = getCPUCount() since 1.25).
    for e in _ev(t, "runtime.osinit"):
        if e.op == "store" and e.size == 4 and e.value is not None and e.value[0] == "ret":
            if "count" in e.value[1].lower():
                return e.addr
    raise _NotFound("no int32 store of a CPU count in runtime.osinit")


def _rule_g0(t: _Tracer) -> int:
    """rt0_go makes g0 the current g: the TLS slot on amd64, register R28 on arm64."""
    g_reg: int | None = None
    for e in _ev(t, "runtime.rt0_go"):
        # amd64: get_tls(BX); LEAQ runtime·g0(SB), CX; MOVQ CX, g(BX)
        if e.op == "tls-store" and e.value is not None and e.value[0] == "addr":
            return e.value[1]
        # arm64: MOVD $runtime·g0(SB), g -- then stores through it build g0's stack bounds.
        if e.op == "setreg" and e.reg == "x28":
            g_reg = e.value[1] if e.value is not None and e.value[0] == "addr" else None
        elif e.op == "store" and g_reg is not None and t.arch == "arm64":
            return g_reg
    raise _NotFound("runtime.rt0_go never makes a global the current g")


def _rule_g0_stack(t: _Tracer) -> int:
    # rt0_go: "create istack out of the given (operating system) stack" -- g0.stack.lo/hi and
    # stackguard0/1 are g's first four words: the first global whose words 0..3 are all written.
    stored: set[int] = set()
    for e in _ev(t, "runtime.rt0_go"):
        if e.op == "store" and e.size == 8:
            stored.add(e.addr)
            for base in (e.addr, e.addr - 8, e.addr - 16, e.addr - 24):
                if {base, base + 8, base + 16, base + 24} <= stored:
                    return base
    raise _NotFound("runtime.rt0_go writes no g's stack bounds")


def _rule_m0(t: _Tracer, g0: int) -> int:
    # rt0_go: MOVQ AX(=&m0), g_m(CX=&g0) -- "save m0 to g0->m".
    for e in _ev(t, "runtime.rt0_go"):
        if e.op == "store" and e.addr == g0 + _G_M_OFFSET and e.value is not None and e.value[0] == "addr":
            return e.value[1]
    raise _NotFound("runtime.rt0_go never stores m0 into g0.m")


def _first_byte_test(t: _Tracer, func: str) -> int:
    for e in _ev(t, func):
        if e.op == "load" and e.size == 1:
            return e.addr
        if e.op in ("load", "store", "lea", "xchg", "xadd", "rmw"):
            break
    raise _NotFound(f"{func} does not start by testing a bool global")


def _rule_iscgo(t: _Tracer) -> int:
    # cgocall: if !iscgo && GOOS != ... { throw("cgocall unavailable") }
    return _first_byte_test(t, "runtime.cgocall")


def _rule_runtime_init_time(t: _Tracer) -> int:
    # main: runtimeInitTime = nanotime() -- within its first few statements.
    for limit in (_PREFIX, None):
        for e in _ev(t, "runtime.main", limit):
            if e.op in ("store", "xchg") and e.size == 8 and _is_call_result(e.value, "runtime.nanotime"):
                return e.addr
    raise _NotFound("no store of nanotime() in runtime.main")


def _g_tls_offset(t: _Tracer) -> int:
    offs = {e.addr for e in _ev(t, "runtime.rt0_go") if e.op == "tls-store" and e.value is not None
            and e.value[0] == "addr"}
    if len(offs) != 1:
        raise _NotFound("runtime.rt0_go does not store g0 in exactly one TLS slot")
    off = offs.pop()
    # Every Go function that reloads g from TLS (after calls to ABI0 code) uses the same slot.
    again = {e.addr for e in _ev(t, "runtime.main", _PREFIX) if e.op == "tls-load"}
    if again and again != {off}:
        raise _NotFound(f"runtime.main reads g from TLS offsets {sorted(again)}, rt0_go wrote {off}")
    return off


# -- putting it together -----------------------------------------------------------------------

_ALIGN = {"runtime.gomaxprocs": 4, "runtime.ncpu": 4, "runtime.iscgo": 1}


def find_globals(binary: GoBinary, *, use_symtab: bool = True) -> Globals:
    """Every global in GLOBALS that can be located, plus the TLS slot of g on amd64.

    `use_symtab=False` ignores `.symtab` even when present: what a stripped twin would get
    (the tests check the disassembly against the symbols this way, address for address).
    """
    found: dict[str, GlobalAddr] = {}
    missing: dict[str, str] = {}
    syms = binary.elf.symbols if use_symtab and binary.elf.has_symtab else {}
    for name, aliases in GLOBALS.items():
        for alias in aliases:
            s = syms.get(alias)
            if s is not None and s.value:
                found[name] = GlobalAddr(name, s.value, "symtab", alias)
                break
    if "runtime.firstmoduledata" not in found:
        md = binary.moduledata
        addr: int | None = None
        how = "moduledata-scan"
        if md is not None and md.how == "symtab" and not use_symtab:
            # GoBinary took it from .symtab; redo the stripped binary's search.
            addr = binary.scan_for_moduledata(binary.pclntab.data)
        elif md is not None:
            addr, how = md.addr, ("symtab" if md.how == "symtab" else "moduledata-scan")
        if addr is not None:
            found["runtime.firstmoduledata"] = GlobalAddr(
                "runtime.firstmoduledata", addr, how, "runtime.firstmoduledata")
        else:
            missing["runtime.firstmoduledata"] = "no moduledata points at the pclntab"

    tracer: _Tracer | None = None
    tls: int | None = None
    tls_how: str | None = None
    try:
        tracer = _Tracer(binary)
    except GoflameError as e:
        for name in GLOBALS:
            if name not in found and name not in missing:
                missing[name] = str(e)
    if tracer is not None:
        _disassemble_missing(binary, tracer, found, missing)
        if binary.arch == "amd64":
            try:
                tls, tls_how = _g_tls_offset(tracer), "disassembly"
            except (_NotFound, GoflameError, IndexError, ValueError, struct.error, capstone.CsError):
                tls = None
    order = {n: i for i, n in enumerate(GLOBALS)}
    ordered = dict(sorted(found.items(), key=lambda kv: order[kv[0]]))
    return Globals(str(binary.path), MappingProxyType(ordered), MappingProxyType(missing), tls, tls_how)


def _disassemble_missing(binary: GoBinary, t: _Tracer, found: dict[str, GlobalAddr],
                         missing: dict[str, str]) -> None:
    def have(name: str) -> int | None:
        g = found.get(name)
        return g.addr if g is not None else None

    def locate(name: str, *rules: Callable[[], int], check: Callable[[int], str] | None = None) -> None:
        """Run every rule; all that match must agree, and the address must be plausible."""
        if name in found:
            return
        hits: list[int] = []
        why: list[str] = []
        for rule in rules:
            try:
                hits.append(rule())
            except _NotFound as e:
                why.append(str(e))
            except (GoflameError, IndexError, ValueError, struct.error, capstone.CsError) as e:  # corrupt code
                why.append(f"{type(e).__name__}: {e}")
        if not hits:
            missing[name] = "; ".join(why) or "no rule"
            return
        if len(set(hits)) > 1:
            missing[name] = "functions disagree: " + ", ".join(f"{h:#x}" for h in hits)
            return
        addr = hits[0]
        problem = ""
        if not t.writable(addr):
            problem = f"{addr:#x} is not in a writable segment"
        elif addr % _ALIGN.get(name, 8):
            problem = f"{addr:#x} is misaligned"
        elif check is not None:
            problem = check(addr)
        if problem:
            missing[name] = problem
            return
        found[name] = GlobalAddr(name, addr, "disassembly", _symbol_name(name, binary.minor))

    locate("runtime.allgs", lambda: _rule_allgs(t))
    allgs = have("runtime.allgs")
    if allgs is not None:
        locate("runtime.allglen", lambda: _rule_allglen(t, allgs), lambda: _rule_allglen_race(t))
    else:
        locate("runtime.allglen", lambda: _rule_allglen_race(t))
    locate("runtime.allm", lambda: _rule_allm(t))
    locate("runtime.allp", lambda: _rule_allp(t), lambda: _rule_allp_tiny(t))
    locate("runtime.sched", lambda: _rule_sched(t), lambda: _rule_sched_lastpoll(t))
    locate("runtime.buildVersion", lambda: _rule_build_version(t),
           check=lambda a: _check_build_version(binary, a))
    locate("runtime.gomaxprocs", lambda: _rule_gomaxprocs(t))
    locate("runtime.ncpu", lambda: _rule_ncpu(t))
    locate("runtime.g0", lambda: _rule_g0(t), lambda: _rule_g0_stack(t))
    g0 = have("runtime.g0")
    if g0 is not None:
        locate("runtime.m0", lambda: _rule_m0(t, g0))
    elif "runtime.m0" not in found:
        missing["runtime.m0"] = "found through g0, which is missing"
    locate("runtime.iscgo", lambda: _rule_iscgo(t))
    locate("runtime.runtimeInitTime", lambda: _rule_runtime_init_time(t))
    _drop_overlaps(found, missing)


# Bytes each global certainly spans (a lower bound: enough to tell two globals apart).
_MIN_SIZE = {"runtime.allgs": 24, "runtime.allp": 24, "runtime.buildVersion": 16, "runtime.sched": 16,
             "runtime.m0": 56, "runtime.g0": 56, "runtime.firstmoduledata": 64}


def _drop_overlaps(found: dict[str, GlobalAddr], missing: dict[str, str]) -> None:
    """Two distinct globals cannot overlap: if disassembly says so, neither answer is trusted."""

    def span(g: GlobalAddr) -> tuple[int, int]:
        return g.addr, g.addr + _MIN_SIZE.get(g.name, _ALIGN.get(g.name, 8))

    for g in [g for g in found.values() if g.how == "disassembly"]:
        lo, hi = span(g)
        for other in found.values():
            olo, ohi = span(other)
            if other.name != g.name and lo < ohi and olo < hi:
                missing[g.name] = f"{g.addr:#x} overlaps {other.name} at {other.addr:#x}"
    for name in missing:
        found.pop(name, None)


def _symbol_name(name: str, minor: str) -> str:
    aliases = GLOBALS[name]
    if name == "runtime.ncpu":
        major, _, mnr = minor.partition(".")
        return aliases[1] if (int(major), int(mnr or 0)) >= (1, 25) else aliases[0]
    return aliases[0]


def _check_build_version(binary: GoBinary, addr: int) -> str:
    """buildVersion must be a string header holding the version .go.buildinfo names."""
    elf = binary.elf
    try:
        ptr = elf.read_ptr_relocated(addr)
        n = elf.read_ptr(addr + elf.ptr_size)
        if not 0 < n < 256:
            return f"string header at {addr:#x} has length {n}"
        text = bytes(elf.read(ptr, n)).decode(errors="replace")
    except GoflameError as e:
        return f"string header at {addr:#x} is unreadable ({e})"
    want = binary.go_version.split()[0]
    if not text.startswith(want):
        return f"string at {addr:#x} is {text!r}, not {want!r}"
    return ""
