"""A typed snapshot of a Go runtime, read out of a live process's memory.

Goroutines come from `runtime.allgs`, threads (Ms) from the `runtime.allm` list, processors
(Ps) from `runtime.allp`. Every struct is read whole in one batched read and decoded at the
offsets the layout gives for this Go release. Memory of a running process can be torn: every
pointer is checked before it is followed, and a goroutine that does not decode is dropped
and counted, never raised.
"""

from __future__ import annotations

import operator
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from goflame.binary.gobinary import GoBinary
from goflame.binary.layout import Layout
from goflame.errors import CorruptBinary, GoflameError, InvalidMemory
from goflame.process import Process

MAX_GOROUTINES = 10_000_000
MAX_MS = 100_000
MAX_PS = 100_000

# g.atomicstatus values (runtime2.go; stable 1.18-1.27 for the ones we name)
G_IDLE, G_RUNNABLE, G_RUNNING, G_SYSCALL, G_WAITING, G_DEAD, G_COPYSTACK, G_PREEMPTED = 0, 1, 2, 3, 4, 6, 8, 9
G_SCAN = 0x1000

STATUS_TEXT = {G_IDLE: "idle", G_RUNNABLE: "runnable", G_RUNNING: "running", G_SYSCALL: "syscall",
               G_WAITING: "waiting", G_DEAD: "dead", G_COPYSTACK: "copystack", G_PREEMPTED: "preempted"}


# Not frozen (but hashable): a frozen dataclass's __init__ costs ~4x, and a dump decodes tens
# of thousands, a sampler one per sample. Treat it as immutable all the same.
@dataclass(slots=True, unsafe_hash=True)
class Goroutine:
    addr: int
    goid: int
    status: int  # atomicstatus without the scan bit
    scan: bool
    wait_reason: str  # "" unless waiting
    wait_since: int  # nanotime() when it blocked; 0 if unknown
    start_pc: int
    creator_pc: int  # gopc: the go statement
    parent_goid: int  # 0 before Go 1.21
    stack_lo: int
    stack_hi: int
    sched_pc: int
    sched_sp: int
    sched_lr: int
    sched_bp: int
    syscall_pc: int
    syscall_sp: int
    m_addr: int
    locked_m: int
    labels: int = 0

    @property
    def status_text(self) -> str:
        return STATUS_TEXT.get(self.status, f"unknown status {self.status}")

    @property
    def state(self) -> str:
        """What the runtime's own traceback header shows: the wait reason or the status."""
        if self.status == G_WAITING and self.wait_reason:
            return self.wait_reason
        return self.status_text

    def contains_sp(self, sp: int) -> bool:
        return self.stack_lo <= sp < self.stack_hi


@dataclass(frozen=True, slots=True)
class Machine:
    """An M: an OS thread the runtime owns."""

    addr: int
    id: int
    tid: int  # its thread id here (0: no thread of the target has it now); see ns_tid
    curg: int  # address of the user goroutine it runs (0 if none)
    g0: int
    gsignal: int
    p: int
    spinning: bool
    blocked: bool
    incgo: bool
    vdso_sp: int
    vdso_pc: int
    locked_g: int
    ns_tid: int = 0  # m.procid: the id in the target's own pid namespace, as the runtime knows it


@dataclass(frozen=True, slots=True)
class Processor:
    addr: int
    id: int
    status: int
    status_name: str
    schedtick: int
    syscalltick: int
    m: int
    runq_size: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    go_version: str
    gomaxprocs: int
    ncpu: int
    goroutines: tuple[Goroutine, ...]
    machines: tuple[Machine, ...]
    processors: tuple[Processor, ...]
    now: int  # nanotime() (CLOCK_MONOTONIC) when read, for wait durations
    errors: int = 0  # goroutines/Ms/Ps dropped because their memory did not decode
    g0s: dict[int, Goroutine] = field(default_factory=dict)  # g0/gsignal stacks by g address

    def goroutine_by_addr(self) -> dict[int, Goroutine]:
        return {g.addr: g for g in self.goroutines}

    def machine_of(self, g: Goroutine) -> Machine | None:
        for m in self.machines:
            if m.curg == g.addr and g.addr:
                return m
        return None


_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}
# The g fields decode_g reads, in the order it unpacks them.
G_DECODED = ("status", "lo", "hi", "waitreason", "goid", "waitsince", "startpc", "gopc", "parent", "pc", "sp",
             "lr", "bp", "syscallpc", "syscallsp", "m", "lockedm", "labels")


class _Fields:
    """Offsets and widths of the fields goflame reads, resolved once per layout."""

    def __init__(self, lay: Layout, names: dict[str, str], struct_name: str):
        self.size = lay.size(struct_name)
        self.spec: dict[str, tuple[int, int]] = {}
        for key, fname in names.items():
            for candidate in fname.split("|"):
                if lay.has(struct_name, candidate):
                    f = lay.field(struct_name, candidate)
                    self.spec[key] = (f.offset, f.size)
                    break

    def get(self, buf: bytes, key: str, default: int = 0) -> int:
        s = self.spec.get(key)
        if s is None:
            return default
        off, size = s
        if size == 8:
            return struct.unpack_from("<Q", buf, off)[0]
        if size == 4:
            return struct.unpack_from("<I", buf, off)[0]
        if size == 1:
            return buf[off]
        if size == 2:
            return struct.unpack_from("<H", buf, off)[0]
        return int.from_bytes(buf[off : off + min(size, 8)], "little")

    def has(self, key: str) -> bool:
        return key in self.spec

    def reader(self, keys: tuple[str, ...]) -> Callable[[bytes], tuple[int, ...]]:
        """buf -> the values of `keys` (0 for fields this release lacks), in one struct unpack.

        The hot path of a dump decodes ten thousand gs: one precompiled Struct per layout
        instead of a lookup and an unpack per field.
        """
        present = sorted((self.spec[k][0], self.spec[k][1], k) for k in keys if k in self.spec)
        fmt, pos, slot = "<", 0, {}
        for off, size, k in present:
            if off < pos or size not in _CODES:
                return lambda buf: tuple(self.get(buf, k) for k in keys)  # overlapping or odd-sized
            fmt += f"{off - pos}x{_CODES[size]}" if off > pos else _CODES[size]
            slot[k] = len(slot)
            pos = off + size
        unpack = struct.Struct(fmt).unpack_from
        pick = operator.itemgetter(*(slot.get(k, len(slot)) for k in keys))
        return lambda buf: pick(unpack(buf, 0) + (0,))


G_FIELDS = {
    "goid": "goid", "status": "atomicstatus.value|atomicstatus", "waitreason": "waitreason",
    "waitsince": "waitsince", "startpc": "startpc", "gopc": "gopc", "parent": "parentGoid",
    "lo": "stack.lo", "hi": "stack.hi", "pc": "sched.pc", "sp": "sched.sp", "lr": "sched.lr",
    "bp": "sched.bp", "syscallpc": "syscallpc", "syscallsp": "syscallsp", "m": "m",
    "lockedm": "lockedm", "labels": "labels",
}
M_FIELDS = {
    "id": "id", "procid": "procid", "curg": "curg", "g0": "g0", "gsignal": "gsignal", "p": "p",
    "alllink": "alllink", "spinning": "spinning", "blocked": "blocked", "incgo": "incgo",
    "vdsosp": "vdsoSP", "vdsopc": "vdsoPC", "lockedg": "lockedg",
}
P_FIELDS = {
    "id": "id", "status": "status", "schedtick": "schedtick", "syscalltick": "syscalltick", "m": "m",
    "runqhead": "runqhead", "runqtail": "runqtail", "runnext": "runnext",
}


class RuntimeReader:
    """Reads goroutines, Ms and Ps of one process; reusable across samples."""

    def __init__(self, proc: Process, binary: GoBinary):
        self.proc = proc
        self.mem = proc.memory
        self.binary = binary
        self.layout = binary.layout
        segs = [(s.vaddr, s.offset) for s in binary.elf.segments if s.type == "PT_LOAD"]
        self.bias = proc.load_bias(segs) if binary.is_pie else 0
        glb = binary.globals
        self.addr = {name: glb.require(name).addr + self.bias for name in
                     ("runtime.allgs", "runtime.allm", "runtime.allp")}
        for opt in ("runtime.allglen", "runtime.gomaxprocs", "runtime.ncpu", "runtime.sched"):
            g = glb.get(opt)
            if g is not None:
                self.addr[opt] = g.addr + self.bias
        self.g = _Fields(self.layout, G_FIELDS, "runtime.g")
        self._g_values = self.g.reader(G_DECODED)
        self.m = _Fields(self.layout, M_FIELDS, "runtime.m")
        self.p = _Fields(self.layout, P_FIELDS, "runtime.p")
        text_lo, text_hi = binary.text_range
        self.text = (text_lo + self.bias, text_hi + self.bias)
        # Free g's: _Gdead, and from Go 1.26 _Gdeadextra (an extra M's g parked for cgo callbacks).
        self.dead = {G_DEAD} | {v for k, v in self.layout.g_status.items() if k == "_Gdeadextra"}

    # -- helpers ----------------------------------------------------------------------------------
    def _u64(self, addr: int) -> int:
        return self.mem.u64(addr)

    def _slice(self, addr: int) -> tuple[int, int]:
        raw = self.mem.read(addr, 24)
        ptr, length, cap = struct.unpack("<QQQ", raw)
        if length > cap:
            raise InvalidMemory(f"slice at {addr:#x} has len {length} > cap {cap}")
        return ptr, length

    def in_text(self, pc: int) -> bool:
        return self.text[0] <= pc < self.text[1]

    # -- goroutines -------------------------------------------------------------------------------
    def goroutine_addrs(self) -> list[int]:
        ptr, n = self._slice(self.addr["runtime.allgs"])
        if "runtime.allglen" in self.addr:
            n = min(n, self._u64(self.addr["runtime.allglen"]))
        if n == 0:
            return []
        if n > MAX_GOROUTINES or ptr == 0:
            raise InvalidMemory(f"implausible allgs slice ({n} goroutines at {ptr:#x})")
        raw = self.mem.read(ptr, 8 * n)
        return [a for a in struct.unpack(f"<{n}Q", raw) if a]

    def goroutines(self, addrs: list[int] | None = None, include_dead: bool = False) -> tuple[list[Goroutine], int]:
        """(goroutines, number dropped as undecodable)."""
        if addrs is None:
            addrs = self.goroutine_addrs()
        size = self.g.size
        bufs = self.mem.read_many([(a, size) for a in addrs])
        out: list[Goroutine] = []
        bad = 0
        for a, buf in zip(addrs, bufs, strict=True):
            if buf is None:
                bad += 1
                continue
            g = self.decode_g(a, buf)
            if g is None:
                bad += 1
                continue
            if g.status in self.dead and not include_dead:
                continue
            out.append(g)
        return out, bad

    def decode_g(self, addr: int, buf: bytes) -> Goroutine | None:
        if len(buf) < self.g.size:
            return None
        (raw_status, lo, hi, reason_code, goid, since, start, gopc, parent, pc, sp, lr, bp, sys_pc, sys_sp,
         m, locked, labels) = self._g_values(buf)
        status = raw_status & ~G_SCAN
        if status > 20:
            return None
        if status != G_DEAD and not (0 < lo < hi and hi - lo <= 1 << 30):
            return None
        reason = self.layout.wait_reason(reason_code) if status == G_WAITING else ""
        return Goroutine(addr, goid, status, bool(raw_status & G_SCAN), reason, since, start, gopc, parent, lo, hi,
                         pc, sp, lr, bp, sys_pc, sys_sp, m, locked, labels)

    def read_g(self, addr: int) -> Goroutine | None:
        try:
            buf = self.mem.read(addr, self.g.size)
        except InvalidMemory:
            return None
        return self.decode_g(addr, buf)

    # -- threads and processors -------------------------------------------------------------------
    def machines(self) -> tuple[list[Machine], int]:
        out: list[Machine] = []
        seen: set[int] = set()
        addr = self._u64(self.addr["runtime.allm"])
        bad = 0
        while addr and addr not in seen and len(out) < MAX_MS:
            seen.add(addr)
            try:
                buf = self.mem.read(addr, self.m.size)
            except InvalidMemory:
                bad += 1
                break
            f = self.m
            procid = f.get(buf, "procid")
            out.append(Machine(
                addr=addr, id=f.get(buf, "id"), tid=self.proc.host_tid(procid), ns_tid=procid, curg=f.get(buf, "curg"),
                g0=f.get(buf, "g0"), gsignal=f.get(buf, "gsignal"), p=f.get(buf, "p"),
                spinning=bool(f.get(buf, "spinning")), blocked=bool(f.get(buf, "blocked")),
                incgo=bool(f.get(buf, "incgo")), vdso_sp=f.get(buf, "vdsosp"), vdso_pc=f.get(buf, "vdsopc"),
                locked_g=f.get(buf, "lockedg"),
            ))
            addr = f.get(buf, "alllink")
        return out, bad

    def processors(self) -> tuple[list[Processor], int]:
        ptr, n = self._slice(self.addr["runtime.allp"])
        if n > MAX_PS:
            raise InvalidMemory(f"implausible allp slice ({n})")
        if n == 0:
            return [], 0
        addrs = struct.unpack(f"<{n}Q", self.mem.read(ptr, 8 * n))
        bufs = self.mem.read_many([(a, self.p.size) for a in addrs if a])
        out, bad = [], 0
        f = self.p
        for a, buf in zip([a for a in addrs if a], bufs, strict=True):
            if buf is None:
                bad += 1
                continue
            status = f.get(buf, "status")
            head, tail = f.get(buf, "runqhead"), f.get(buf, "runqtail")
            out.append(Processor(
                addr=a, id=f.get(buf, "id"), status=status, status_name=self._p_status(status),
                schedtick=f.get(buf, "schedtick"), syscalltick=f.get(buf, "syscalltick"), m=f.get(buf, "m"),
                runq_size=(tail - head) & 0xFFFFFFFF if tail >= head else 0,
            ))
        return out, bad

    def _p_status(self, v: int) -> str:
        name = self.layout.p_status_name(v)
        return name.removeprefix("_P").lower() if name.startswith("_P") else name

    def _i32(self, name: str) -> int:
        a = self.addr.get(name)
        if a is None:
            return 0
        try:
            return struct.unpack("<i", self.mem.read(a, 4))[0]
        except InvalidMemory:
            return 0

    def snapshot(self) -> Snapshot:
        gs, bad_g = self.goroutines()
        ms, bad_m = self.machines()
        ps, bad_p = self.processors()
        g0s: dict[int, Goroutine] = {}
        for m in ms:
            for a in (m.g0, m.gsignal):
                if a:
                    g = self.read_g(a)
                    if g is not None:
                        g0s[a] = g
        return Snapshot(
            go_version=self.binary.go_version, gomaxprocs=self._i32("runtime.gomaxprocs"),
            ncpu=self._i32("runtime.ncpu"), goroutines=tuple(gs), machines=tuple(ms), processors=tuple(ps),
            now=time.monotonic_ns(), errors=bad_g + bad_m + bad_p, g0s=g0s,
        )


def is_system_goroutine(binary: GoBinary, g: Goroutine, bias: int) -> bool:
    """The runtime's isSystemGoroutine: started in package runtime (not runtime.main)."""
    f = binary.pclntab.find_func(g.start_pc - bias)
    if f is None:
        return False
    name = f.name
    if name in ("runtime.main", "runtime.handleAsyncEvent", "runtime.corostart"):
        return False
    if name in ("runtime.runfinq", "runtime.runFinalizers", "runtime.runCleanups"):
        return True  # unless running a user finalizer; goflame cannot tell cheaply
    return name.startswith("runtime.")


__all__ = ["Goroutine", "Machine", "Processor", "RuntimeReader", "Snapshot", "is_system_goroutine",
           "CorruptBinary", "GoflameError"]
