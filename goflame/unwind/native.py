"""Native frames: C code linked into the program (cgo), shared libraries (libc), the vDSO.

Go's own unwinder stops where Go code stops. Everything else on a thread's stack was
compiled by a C toolchain, which describes its frames in DWARF call-frame information:
`.eh_frame` (kept by `strip`, used by C++ exceptions) and `.debug_frame`. This module

- parses that CFI itself (struct over the section bytes: pyelftools' parser takes seconds on a
  libc, the budget is half of one), indexed through `.eh_frame_hdr`'s sorted table when there
  is one, each FDE's rows decoded only when a pc inside it is first met;
- finds the object for a pc in `/proc/PID/maps` (the vDSO image is read out of the target's
  memory), symbolizes it with `.symtab` / `.dynsym`, and keeps parsed objects per build id;
- falls back to prologue analysis (unwind/prologue.py) and then frame pointers where no
  table covers a pc, and marks such frames `[heuristic]`;
- stitches native and Go frames into one stack (`NativeStitcher`), following the runtime's
  own stack switches: a cgo call (asmcgocall on g0; the goroutine's Go stack continues at
  g.syscall{pc,sp}), a vDSO call (m.vdso{PC,SP}) and C calling back into Go (cgocallback,
  whose g0 frame holds the C caller: m.g0.sched.sp, chained through the saved copy at 0(SP)).

Registers are DWARF-numbered (x86-64 psABI): rbx 3, rbp 6, rsp 7, r12-r15 12-15, ra 16.
"""

from __future__ import annotations

import bisect
import os
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from goflame.binary.elf import ElfFile
from goflame.binary.varint import sleb128 as _sleb
from goflame.binary.varint import uleb128 as _uleb
from goflame.errors import GoflameError, InvalidMemory
from goflame.frame import Frame, FrameKind
from goflame.process import MemoryMap, Process, Registers
from goflame.unwind import sigframe
from goflame.unwind.gopclntab import PhysicalFrame, StackMemory, StackSwitch, Walk
from goflame.unwind.prologue import FRAME_POINTER, FrameRule, PrologueAnalyzer
from goflame.unwind.stop import Stop
from goflame.unwind.vdsocall import StackSpan

if TYPE_CHECKING:
    from goflame.runtime import Goroutine, Machine, RuntimeReader
    from goflame.symbolize import Symbolizer
    from goflame.unwind.gopclntab import GoUnwinder

RBX, RBP, RSP, RA = 3, 6, 7, 16
CALLEE_SAVED = (RBX, RBP, 12, 13, 14, 15)
MAX_NATIVE_FRAMES = 256
HEURISTIC = " [heuristic]"
MAPS_REFRESH_S = 0.5  # at most this often re-read /proc/PID/maps for a pc in no known object
# ... and for a stopped thread's own stack pointer: that one is surely mapped, so a miss means the
# maps are stale (a thread made since, with a new stack) and the walk would fail without them.
STACK_MAPS_REFRESH_S = 0.02
OTHER_STACK_WINDOW = 8 * 1024  # bytes read in the stop from each other stack a walk may continue on

# DW_EH_PE_* pointer encodings (LSB, "Exception Frames")
PE_OMIT = 0xFF
PE_INDIRECT = 0x80
PE_PCREL, PE_TEXTREL, PE_DATAREL, PE_FUNCREL = 0x10, 0x20, 0x30, 0x40

# Register rule kinds
SAME, UNDEF, OFFSET, VAL_OFFSET, REGISTER, EXPR, VAL_EXPR = range(7)


class CfiError(GoflameError):
    """Malformed call-frame information (caught inside this module; never reaches a user)."""


# -- little decoders ----------------------------------------------------------------------------------




_FIXED = {0x02: struct.Struct("<H"), 0x03: struct.Struct("<I"), 0x04: struct.Struct("<Q"), 0x00: struct.Struct("<Q"),
          0x0A: struct.Struct("<h"), 0x0B: struct.Struct("<i"), 0x0C: struct.Struct("<q")}


def _encoded(b: bytes, pos: int, enc: int, field_addr: int, data_base: int = 0) -> tuple[int, int]:
    """A DW_EH_PE-encoded pointer at b[pos]; `field_addr` is its own address (for pcrel)."""
    fmt = enc & 0x0F
    if fmt == 0x01:
        v, end = _uleb(b, pos)
    elif fmt == 0x09:
        v, end = _sleb(b, pos)
    else:
        st = _FIXED.get(fmt)
        if st is None:
            raise CfiError(f"unsupported pointer encoding {enc:#x}")
        v = st.unpack_from(b, pos)[0]
        end = pos + st.size
    app = enc & 0x70
    if app == PE_PCREL:
        v += field_addr
    elif app == PE_DATAREL:
        v += data_base
    elif app not in (0, PE_TEXTREL, PE_FUNCREL):
        raise CfiError(f"unsupported pointer application {enc:#x}")
    if enc & PE_INDIRECT:
        raise CfiError("indirect pointers are not supported in FDE headers")
    return v & 0xFFFFFFFFFFFFFFFF, end


# -- CFI ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Cie:
    code_align: int
    data_align: int
    ra_reg: int
    fde_enc: int
    has_aug_data: bool
    signal: bool
    instructions: tuple[int, int]  # [start, end) in the section


@dataclass(frozen=True, slots=True)
class Fde:
    begin: int  # link-time address
    end: int
    cie: Cie
    instructions: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Row:
    """The unwind rule at one pc: where the CFA is and where each register was saved."""

    cfa_reg: int  # -1 when the CFA is a DWARF expression
    cfa_offset: int
    cfa_expr: bytes
    rules: tuple[tuple[int, tuple[int, int | bytes]], ...]  # (register, (kind, offset | register | expr))
    ra_reg: int = RA
    signal: bool = False  # a signal trampoline: the caller's pc is exact, not a return address
    heuristic: str = ""  # "", or how prologue analysis found it ("prologue", "frame-pointer", ...)


class _State:
    __slots__ = ("cfa_reg", "cfa_off", "cfa_expr", "rules")

    def __init__(self) -> None:
        self.cfa_reg = RSP
        self.cfa_off = 0
        self.cfa_expr = b""
        self.rules: dict[int, tuple[int, int | bytes]] = {}

    def copy(self) -> _State:
        s = _State()
        s.cfa_reg, s.cfa_off, s.cfa_expr, s.rules = self.cfa_reg, self.cfa_off, self.cfa_expr, dict(self.rules)
        return s

    def row(self, cie: Cie) -> Row:
        return Row(self.cfa_reg, self.cfa_off, self.cfa_expr, tuple(self.rules.items()), cie.ra_reg, cie.signal)


class CfiSection:
    """One `.eh_frame` or `.debug_frame`: FDEs indexed by address, rows decoded on demand."""

    def __init__(self, data: bytes, vaddr: int, *, eh: bool, hdr: bytes | None = None, hdr_vaddr: int = 0):
        self.data = data
        self.vaddr = vaddr
        self.eh = eh
        self._cies: dict[int, Cie] = {}
        self._fdes: dict[int, Fde | None] = {}
        index = self._index_from_hdr(hdr, hdr_vaddr) if hdr else None
        if index is None:
            index = self._index_by_scan()
        self.starts, self.offsets = index

    # index
    def _index_from_hdr(self, hdr: bytes, hdr_vaddr: int) -> tuple[list[int], list[int]] | None:
        """`.eh_frame_hdr`'s binary-search table: (initial location, FDE address), sorted."""
        if len(hdr) < 4 or hdr[0] != 1:
            return None
        ptr_enc, count_enc, table_enc = hdr[1], hdr[2], hdr[3]
        try:
            frame_ptr, pos = _encoded(hdr, 4, ptr_enc, hdr_vaddr + 4, hdr_vaddr)
            if count_enc == PE_OMIT or table_enc != (PE_DATAREL | 0x0B) or frame_ptr != self.vaddr:
                return None
            count, pos = _encoded(hdr, pos, count_enc, hdr_vaddr + pos, hdr_vaddr)
        except (CfiError, IndexError, struct.error):
            return None
        if pos + 8 * count > len(hdr):
            return None
        words = struct.unpack_from(f"<{2 * count}i", hdr, pos)
        starts = [hdr_vaddr + w for w in words[0::2]]
        offsets = [hdr_vaddr + w - self.vaddr for w in words[1::2]]
        return starts, offsets

    def _index_by_scan(self) -> tuple[list[int], list[int]]:
        entries: list[tuple[int, int]] = []
        for off in self._entry_offsets():
            fde = self.fde_at(off)
            if fde is not None and fde.end > fde.begin:
                entries.append((fde.begin, off))
        entries.sort()
        return [b for b, _ in entries], [o for _, o in entries]

    def _entry_offsets(self) -> list[int]:
        """Offsets of every FDE (CIEs are parsed when an FDE names them)."""
        data = self.data
        out = []
        off = 0
        n = len(data)
        while off + 4 <= n:
            length = struct.unpack_from("<I", data, off)[0]
            if length == 0:
                if self.eh:
                    break  # the terminator
                off += 4
                continue
            hdr = 4
            idsize = 4
            if length == 0xFFFFFFFF:
                if off + 12 > n:
                    break
                length = struct.unpack_from("<Q", data, off + 4)[0]
                hdr = 12
                idsize = 4 if self.eh else 8
            end = off + hdr + length
            if end > n:
                break
            ident = int.from_bytes(data[off + hdr : off + hdr + idsize], "little")
            is_cie = ident == 0 if self.eh else ident == (1 << (8 * idsize)) - 1
            if not is_cie:
                out.append(off)
            off = end
        return out

    # entries
    def _header(self, off: int) -> tuple[int, int, int, int]:
        """(entry end, position after the id field, id value, position of the id field)."""
        data = self.data
        length = struct.unpack_from("<I", data, off)[0]
        hdr, idsize = 4, 4
        if length == 0xFFFFFFFF:
            length = struct.unpack_from("<Q", data, off + 4)[0]
            hdr = 12
            idsize = 4 if self.eh else 8
        end = off + hdr + length
        if length == 0 or end > len(data):
            raise CfiError(f"bad CFI entry length at {off:#x}")
        ident = int.from_bytes(data[off + hdr : off + hdr + idsize], "little")
        return end, off + hdr + idsize, ident, off + hdr

    def cie_at(self, off: int) -> Cie:
        hit = self._cies.get(off)
        if hit is not None:
            return hit
        data = self.data
        end, pos, _ident, _idpos = self._header(off)
        version = data[pos]
        pos += 1
        z = data.index(b"\0", pos)
        aug = data[pos:z].decode("ascii", "replace")
        pos = z + 1
        if "eh" in aug:
            raise CfiError("obsolete 'eh' augmentation")
        if version >= 4:
            pos += 2  # address_size, segment_selector_size
        code_align, pos = _uleb(data, pos)
        data_align, pos = _sleb(data, pos)
        if version == 1:
            ra_reg = data[pos]
            pos += 1
        else:
            ra_reg, pos = _uleb(data, pos)
        fde_enc = 0x00 if self.eh else 0x04  # absptr (8 bytes)
        signal = False
        has_aug = aug.startswith("z")
        if has_aug:
            aug_len, pos = _uleb(data, pos)
            aug_end = pos + aug_len
            p = pos
            for ch in aug[1:]:
                if ch == "R":
                    fde_enc = data[p]
                    p += 1
                elif ch == "P":
                    enc = data[p]
                    p += 1
                    _v, p = _encoded(data, p, enc & ~PE_INDIRECT, self.vaddr + p)
                elif ch == "L":
                    p += 1
                elif ch == "S":
                    signal = True
                elif ch in "BG":
                    pass
                else:
                    break  # unknown augmentation: the length lets us skip the rest
            pos = aug_end
        elif "S" in aug:
            signal = True
        cie = Cie(code_align, data_align, ra_reg, fde_enc, has_aug, signal, (pos, end))
        self._cies[off] = cie
        return cie

    def fde_at(self, off: int) -> Fde | None:
        if off in self._fdes:
            return self._fdes[off]
        fde = None
        try:
            data = self.data
            end, pos, ident, idpos = self._header(off)
            cie_off = idpos - ident if self.eh else ident
            cie = self.cie_at(cie_off)
            begin, pos = _encoded(data, pos, cie.fde_enc, self.vaddr + pos)
            size, pos = _encoded(data, pos, cie.fde_enc & 0x0F, 0)
            if cie.has_aug_data:
                n, pos = _uleb(data, pos)
                pos += n
            fde = Fde(begin, begin + size, cie, (pos, end))
        except (CfiError, IndexError, ValueError, struct.error):
            fde = None
        self._fdes[off] = fde
        return fde

    def find(self, pc: int) -> Fde | None:
        i = bisect.bisect_right(self.starts, pc) - 1
        if i < 0:
            return None
        fde = self.fde_at(self.offsets[i])
        if fde is not None and fde.begin <= pc < fde.end:
            return fde
        return None

    def __len__(self) -> int:
        return len(self.starts)

    # rows
    def row_at(self, pc: int) -> Row | None:
        fde = self.find(pc)
        if fde is None:
            return None
        try:
            return self._run(fde, pc, None)
        except (CfiError, IndexError, struct.error):
            return None

    def rows(self, fde: Fde) -> list[tuple[int, Row]]:
        """Every row of an FDE as (first pc it applies to, rule): what `readelf -wF` prints."""
        out: list[tuple[int, Row]] = []
        self._run(fde, None, out)
        return out

    def decode_all(self) -> int:
        """Run every FDE's instructions to the end (benchmarks, tests): the number of rows."""
        n = 0
        for off in self.offsets:
            fde = self.fde_at(off)
            if fde is not None:
                locs: list = []
                self._run(fde, None, locs, rows=False)
                n += len(locs)
        return n

    def _run(self, fde: Fde, pc: int | None, out: list | None, rows: bool = True) -> Row:
        cie = fde.cie
        st = _State()
        self._execute(cie.instructions, cie, st, None, fde.begin, None, None, rows)
        initial = dict(st.rules)
        return self._execute(fde.instructions, cie, st, initial, fde.begin, pc, out, rows)

    def _execute(self, span: tuple[int, int], cie: Cie, st: _State, initial: dict | None, loc: int,
                 pc: int | None, out: list | None, rows: bool = True) -> Row:
        """Run CFA instructions from `loc`; stop before the first row starting after `pc`.

        With `out`, every row is appended as (loc, Row), or just loc when not `rows`.
        """
        b = self.data
        pos, end = span
        stack: list[_State] = []
        ca, da = cie.code_align, cie.data_align
        rules = st.rules
        while pos < end:
            op = b[pos]
            pos += 1
            hi, low = op & 0xC0, op & 0x3F
            new_loc = -1
            if hi == 0x40:
                new_loc = loc + low * ca
            elif hi == 0x80:
                v, pos = _uleb(b, pos)
                rules[low] = (OFFSET, v * da)
            elif hi == 0xC0:
                self._restore(rules, initial, low)
            elif op == 0x00:
                pass
            elif op == 0x01:
                new_loc, pos = _encoded(b, pos, cie.fde_enc, self.vaddr + pos)
            elif op == 0x02:
                new_loc = loc + b[pos] * ca
                pos += 1
            elif op == 0x03:
                new_loc = loc + struct.unpack_from("<H", b, pos)[0] * ca
                pos += 2
            elif op == 0x04:
                new_loc = loc + struct.unpack_from("<I", b, pos)[0] * ca
                pos += 4
            elif op in (0x05, 0x11, 0x14, 0x15, 0x2F):
                reg, pos = _uleb(b, pos)
                if op in (0x05, 0x14):
                    v, pos = _uleb(b, pos)
                else:
                    v, pos = _sleb(b, pos)
                if op == 0x2F:
                    v = -v
                rules[reg] = (VAL_OFFSET if op in (0x14, 0x15) else OFFSET, v * da)
            elif op == 0x06:
                reg, pos = _uleb(b, pos)
                self._restore(rules, initial, reg)
            elif op == 0x07:
                reg, pos = _uleb(b, pos)
                rules[reg] = (UNDEF, 0)
            elif op == 0x08:
                reg, pos = _uleb(b, pos)
                rules[reg] = (SAME, 0)
            elif op == 0x09:
                reg, pos = _uleb(b, pos)
                reg2, pos = _uleb(b, pos)
                rules[reg] = (REGISTER, reg2)
            elif op == 0x0A:
                stack.append(st.copy())
            elif op == 0x0B:
                if stack:
                    saved = stack.pop()
                    # the CFA is not part of the remembered state in practice for GCC: restore all
                    st.cfa_reg, st.cfa_off, st.cfa_expr = saved.cfa_reg, saved.cfa_off, saved.cfa_expr
                    st.rules = rules = saved.rules
            elif op in (0x0C, 0x12):
                st.cfa_reg, pos = _uleb(b, pos)
                if op == 0x0C:
                    st.cfa_off, pos = _uleb(b, pos)
                else:
                    v, pos = _sleb(b, pos)
                    st.cfa_off = v * da
                st.cfa_expr = b""
            elif op == 0x0D:
                st.cfa_reg, pos = _uleb(b, pos)
                st.cfa_expr = b""
            elif op in (0x0E, 0x13):
                if op == 0x0E:
                    st.cfa_off, pos = _uleb(b, pos)
                else:
                    v, pos = _sleb(b, pos)
                    st.cfa_off = v * da
            elif op == 0x0F:
                n, pos = _uleb(b, pos)
                st.cfa_reg, st.cfa_expr = -1, bytes(b[pos : pos + n])
                pos += n
            elif op in (0x10, 0x16):
                reg, pos = _uleb(b, pos)
                n, pos = _uleb(b, pos)
                rules[reg] = (EXPR if op == 0x10 else VAL_EXPR, bytes(b[pos : pos + n]))
                pos += n
            elif op == 0x2E:
                _v, pos = _uleb(b, pos)  # DW_CFA_GNU_args_size: nothing for unwinding
            elif op == 0x2D:
                pass  # DW_CFA_GNU_window_save (SPARC / AArch64 pointer auth)
            else:
                raise CfiError(f"unknown CFA instruction {op:#x}")
            if new_loc >= 0:
                if pc is not None and new_loc > pc:
                    return st.row(cie)
                if out is not None and new_loc != loc:
                    out.append((loc, st.row(cie)) if rows else loc)
                loc = new_loc
        if out is not None:
            out.append((loc, st.row(cie)) if rows else loc)
        return st.row(cie)

    @staticmethod
    def _restore(rules: dict, initial: dict | None, reg: int) -> None:
        if initial is not None and reg in initial:
            rules[reg] = initial[reg]
        else:
            rules.pop(reg, None)


# -- DWARF expressions (CFA and register rules) -------------------------------------------------------
def eval_expr(expr: bytes, regs: dict[int, int], mem: StackMemory, initial: Sequence[int] = ()) -> int:
    """Evaluate a DWARF location expression as CFI uses them (no pieces, no frame base)."""
    stack = list(initial)
    pos = 0
    n = len(expr)
    mask = 0xFFFFFFFFFFFFFFFF
    while pos < n:
        op = expr[pos]
        pos += 1
        if 0x70 <= op <= 0x8F:  # DW_OP_breg0..31
            off, pos = _sleb(expr, pos)
            stack.append((regs[op - 0x70] + off) & mask)
        elif 0x30 <= op <= 0x4F:  # DW_OP_lit0..31
            stack.append(op - 0x30)
        elif 0x50 <= op <= 0x6F:  # DW_OP_reg0..31 (a register's value)
            stack.append(regs[op - 0x50])
        elif op == 0x92:  # bregx
            reg, pos = _uleb(expr, pos)
            off, pos = _sleb(expr, pos)
            stack.append((regs[reg] + off) & mask)
        elif op in (0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F):
            fmt = {0x08: "<B", 0x09: "<b", 0x0A: "<H", 0x0B: "<h", 0x0C: "<I", 0x0D: "<i", 0x0E: "<Q", 0x0F: "<q"}[op]
            v = struct.unpack_from(fmt, expr, pos)[0]
            pos += struct.calcsize(fmt)
            stack.append(v & mask)
        elif op == 0x10:
            v, pos = _uleb(expr, pos)
            stack.append(v)
        elif op == 0x11:
            v, pos = _sleb(expr, pos)
            stack.append(v & mask)
        elif op == 0x06:
            stack.append(mem.u64(stack.pop()))
        elif op == 0x12:
            stack.append(stack[-1])
        elif op == 0x13:
            stack.pop()
        elif op == 0x14:
            stack.append(stack[-2])
        elif op == 0x15:
            stack.append(stack[-1 - expr[pos]])
            pos += 1
        elif op == 0x16:
            stack[-1], stack[-2] = stack[-2], stack[-1]
        elif op == 0x23:
            v, pos = _uleb(expr, pos)
            stack.append((stack.pop() + v) & mask)
        elif op == 0x1F:
            stack.append(-stack.pop() & mask)
        elif op == 0x20:
            stack.append(~stack.pop() & mask)
        elif op in _BINARY:
            b, a = stack.pop(), stack.pop()
            stack.append(_BINARY[op](a, b) & mask)
        elif op == 0x96:  # nop
            pass
        else:
            raise CfiError(f"unsupported DWARF expression op {op:#x}")
    if not stack:
        raise CfiError("empty DWARF expression")
    return stack[-1]


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


_BINARY: dict[int, Callable[[int, int], int]] = {
    0x1A: lambda a, b: a & b, 0x21: lambda a, b: a | b, 0x27: lambda a, b: a ^ b,
    0x22: lambda a, b: a + b, 0x1C: lambda a, b: a - b, 0x1E: lambda a, b: a * b,
    0x24: lambda a, b: a << b if b < 64 else 0, 0x25: lambda a, b: a >> b if b < 64 else 0,
    0x26: lambda a, b: _signed(a) >> b, 0x1B: lambda a, b: int(_signed(a) / _signed(b)) if b else 0,
    0x1D: lambda a, b: a % b if b else 0,
    0x29: lambda a, b: int(a == b), 0x2E: lambda a, b: int(a != b),
    0x2A: lambda a, b: int(_signed(a) >= _signed(b)), 0x2B: lambda a, b: int(_signed(a) > _signed(b)),
    0x2C: lambda a, b: int(_signed(a) <= _signed(b)), 0x2D: lambda a, b: int(_signed(a) < _signed(b)),
}


def step(row: Row, regs: dict[int, int], mem: StackMemory) -> dict[int, int] | None:
    """The caller's registers (pc in RA, sp in RSP); None: this was the outermost frame."""
    if row.cfa_expr:
        cfa = eval_expr(row.cfa_expr, regs, mem)
    else:
        base = regs.get(row.cfa_reg)
        if base is None:
            raise CfiError(f"CFA needs register {row.cfa_reg}, which is not known here")
        cfa = base + row.cfa_offset
    new = {r: v for r, v in regs.items() if r in CALLEE_SAVED}
    ra = row.ra_reg
    ra_undefined = False
    sp = None
    for reg, (kind, arg) in row.rules:
        if kind == OFFSET:
            v = mem.u64(cfa + arg)  # type: ignore[operator]
        elif kind == VAL_OFFSET:
            v = cfa + arg  # type: ignore[operator]
        elif kind == REGISTER:
            v = regs.get(arg)  # type: ignore[arg-type]
        elif kind == EXPR:
            v = mem.u64(eval_expr(arg, regs, mem, (cfa,)))  # type: ignore[arg-type]
        elif kind == VAL_EXPR:
            v = eval_expr(arg, regs, mem, (cfa,))  # type: ignore[arg-type]
        elif kind == SAME:
            v = regs.get(reg)
        else:  # UNDEF
            v = None
            if reg == ra:
                ra_undefined = True
        if reg == RSP:
            sp = v
        elif v is None:
            new.pop(reg, None)
        else:
            new[reg] = v
    if ra_undefined:
        return None
    pc = new.pop(ra, None) if ra != RA else new.get(RA)
    if pc is None:
        if any(r == ra for r, _rule in row.rules):
            return None
        pc = mem.u64(cfa - 8)  # no rule for the return address: x86-64's call pushed it there
    new[RA] = pc
    new[RSP] = cfa if sp is None else sp
    return new


def prologue_row(rule: FrameRule) -> Row:
    return Row(rule.cfa_reg, rule.cfa_offset, b"", tuple((r, (OFFSET, off)) for r, off in rule.saved) +
               ((RA, (OFFSET, -8)),), RA, False, rule.method)


# -- ELF objects ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class NativeSymbol:
    name: str
    start: int  # link-time address
    size: int


def _alias_rank(name: str) -> tuple[int, int, str]:
    """Among names for one address, prefer the public one: `read` over `__read`, `__libc_read`."""
    return (len(name) - len(name.lstrip("_")), len(name), name)


class NativeImage:
    """One ELF object's unwind tables and function symbols, shared by every mapping of it."""

    def __init__(self, elf: ElfFile, name: str, key: str, analyzer: PrologueAnalyzer):
        self.elf = elf
        self.name = name  # path as the target sees it, or "[vdso]"
        self.key = key
        self._analyzer = analyzer
        self.eh = self._eh_frame()
        self._debug: CfiSection | None | bool = False  # False: not looked at yet
        self._rules: dict[tuple[int, bool], Row] = {}
        self._symbols: tuple[list[int], list[NativeSymbol]] | None = None
        self.exec_ranges = [(s.vaddr, s.vaddr + s.memsz) for s in elf.segments
                            if s.type == "PT_LOAD" and s.flags & 1]
        self.load_segments = [s for s in elf.segments if s.type == "PT_LOAD"]

    def _eh_frame(self) -> CfiSection | None:
        sec = self.elf.section(".eh_frame")
        data = self.elf.section_bytes(".eh_frame")
        if sec is None or data is None or sec.size == 0:
            return None
        hdr_sec = self.elf.section(".eh_frame_hdr")
        hdr = self.elf.section_bytes(".eh_frame_hdr")
        try:
            return CfiSection(bytes(data), sec.addr, eh=True, hdr=bytes(hdr) if hdr is not None else None,
                              hdr_vaddr=hdr_sec.addr if hdr_sec is not None else 0)
        except (CfiError, IndexError, ValueError, struct.error):
            return None  # unreadable tables: prologue analysis and frame pointers still work

    @property
    def debug_frame(self) -> CfiSection | None:
        if self._debug is False:
            self._debug = None
            sec = self.elf.section(".debug_frame")
            data = self.elf.section_bytes(".debug_frame")
            if sec is not None and data is not None and sec.size > 0:
                raw = bytes(data)
                if sec.compressed:
                    raw = _decompress(raw)
                if raw:
                    try:
                        self._debug = CfiSection(raw, 0, eh=False)
                    except (CfiError, IndexError, ValueError, struct.error):
                        self._debug = None
        return self._debug  # type: ignore[return-value]

    # unwind rules
    def rule(self, vaddr: int, exact: bool) -> Row:
        """The rule for the frame at link-time `vaddr` (a return address unless `exact`):
        CFI from .eh_frame, else .debug_frame, else prologue analysis, else frame pointers."""
        key = (vaddr, exact)
        hit = self._rules.get(key)
        if hit is not None:
            return hit
        lookup = vaddr if exact else vaddr - 1
        row = self.eh.row_at(lookup) if self.eh is not None else None
        if row is None:
            dbg = self.debug_frame
            if dbg is not None:
                row = dbg.row_at(lookup)
        if row is None:
            row = self._heuristic(vaddr, lookup)
        if len(self._rules) > 1 << 16:
            self._rules.clear()
        self._rules[key] = row
        return row

    def _heuristic(self, pc: int, lookup: int) -> Row:
        sym = self.symbol(lookup)
        if sym is not None and 0 <= pc - sym.start <= 1 << 16:
            code = self.code(sym.start, pc - sym.start) if pc > sym.start else b""
            tail = self.code(pc, 64)
            if code or pc == sym.start:
                rule = self._analyzer.analyze(code, sym.start, pc, tail, sym.start + sym.size if sym.size else 0)
                if rule is not None:
                    return prologue_row(rule)
        return prologue_row(FRAME_POINTER)

    def code(self, vaddr: int, size: int) -> bytes:
        for lo, hi in self.exec_ranges:
            if lo <= vaddr < hi:
                size = min(size, hi - vaddr)
                try:
                    return bytes(self.elf.read(vaddr, size))
                except GoflameError:
                    return b""
        return b""

    # symbols
    def _symbol_table(self) -> tuple[list[int], list[NativeSymbol]]:
        if self._symbols is None:
            best: dict[int, NativeSymbol] = {}
            for table in (self.elf.dynamic_symbols, self.elf.symbols):
                for s in table.values():
                    if s.type not in ("FUNC", "10", "NOTYPE") or not s.value or not s.name:
                        continue  # 10: STT_GNU_IFUNC
                    if s.type == "NOTYPE" and s.name[0] in ".$":
                        continue
                    if not any(lo <= s.value < hi for lo, hi in self.exec_ranges):
                        continue
                    cur = best.get(s.value)
                    if cur is None:
                        best[s.value] = NativeSymbol(s.name, s.value, s.size)
                    elif _alias_rank(s.name) < _alias_rank(cur.name):
                        best[s.value] = NativeSymbol(s.name, s.value, max(s.size, cur.size))
                    elif s.size > cur.size:
                        best[s.value] = NativeSymbol(cur.name, cur.start, s.size)
            syms = sorted(best.values(), key=lambda s: s.start)
            self._symbols = ([s.start for s in syms], syms)
        return self._symbols

    def symbol(self, vaddr: int) -> NativeSymbol | None:
        starts, syms = self._symbol_table()
        i = bisect.bisect_right(starts, vaddr) - 1
        if i < 0:
            return None
        s = syms[i]
        if s.size and vaddr >= s.start + s.size:
            return None
        return s


def _decompress(raw: bytes) -> bytes:
    """An SHF_COMPRESSED section: Elf64_Chdr (type 1 = zlib), then the stream."""
    if len(raw) < 24:
        return b""
    ch_type = struct.unpack_from("<I", raw, 0)[0]
    if ch_type != 1:
        return b""
    try:
        return zlib.decompress(raw[24:])
    except zlib.error:
        return b""


def _build_id(elf: ElfFile) -> str | None:
    for name in (".note.gnu.build-id",):
        raw = elf.section_bytes(name)
        if raw is None or len(raw) < 16:
            continue
        namesz, descsz, ntype = struct.unpack_from("<III", raw, 0)
        off = 12 + ((namesz + 3) & ~3)
        if ntype == 3 and bytes(raw[12 : 12 + namesz]).rstrip(b"\0") == b"GNU":
            return bytes(raw[off : off + descsz]).hex()
    return None


class ImageCache:
    """Parsed objects by build id (else by file identity), reusable across processes."""

    def __init__(self) -> None:
        self._images: dict[str, NativeImage] = {}
        self.analyzer = PrologueAnalyzer()

    def open_file(self, path: str, name: str) -> NativeImage | None:
        try:
            st = os.stat(path)
            elf = ElfFile(path)
        except (GoflameError, OSError):
            return None
        if elf.arch != "amd64":
            elf.close()
            return None
        key = _build_id(elf) or f"file:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
        hit = self._images.get(key)
        if hit is not None:
            elf.close()
            return hit
        img = NativeImage(elf, name, key, self.analyzer)
        self._images[key] = img
        return img

    def open_bytes(self, data: bytes, name: str) -> NativeImage | None:
        """An image that exists only in memory (the vDSO), through a memfd."""
        import hashlib

        key = "mem:" + hashlib.sha1(data).hexdigest()
        hit = self._images.get(key)
        if hit is not None:
            return hit
        fd = os.memfd_create("goflame-" + name.strip("[]"), os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            elf = ElfFile(f"/proc/self/fd/{fd}")
        except (GoflameError, OSError):
            return None
        finally:
            os.close(fd)
        img = NativeImage(elf, name, key, self.analyzer)
        self._images[key] = img
        return img

    def __len__(self) -> int:
        return len(self._images)

    def close(self) -> None:
        for img in self._images.values():
            img.elf.close()
        self._images.clear()


# -- the target's address space -----------------------------------------------------------------------
@dataclass(slots=True)
class MappedObject:
    name: str
    start: int  # lowest executable mapping
    end: int
    bias: int = 0
    image: NativeImage | None = None
    opened: bool = False
    source: str = ""  # path to open, "" for the vDSO
    first_offset: int = 0  # file offset of the first executable mapping
    frames: dict[tuple[int, bool, bool], tuple[Frame, int]] = field(default_factory=dict)


class AddressSpace:
    """Executable mappings of a process and the ELF objects behind them, opened lazily."""

    def __init__(self, proc: Process, cache: ImageCache):
        self.proc = proc
        self.cache = cache
        self._objects: list[MappedObject] = []
        self._starts: list[int] = []
        self._maps: list[tuple[int, int]] = []
        self._map_starts: list[int] = []
        self._refreshed = -1e9
        self.refresh()

    def refresh(self) -> None:
        self._refreshed = time.monotonic()
        maps = self.proc.maps()
        old = {(o.name, o.start, o.end): o for o in self._objects}
        groups: dict[tuple[str, int], list[MemoryMap]] = {}
        for m in maps:
            if m.path and (m.path.startswith("/") or m.path == "[vdso]"):
                groups.setdefault((m.path, m.inode), []).append(m)
        objects: list[MappedObject] = []
        for (path, _inode), ms in groups.items():
            ex = [m for m in ms if m.executable]
            if not ex:
                continue
            lo, hi = min(m.start for m in ex), max(m.end for m in ex)
            prev = old.get((path, lo, hi))
            if prev is not None:
                objects.append(prev)
                continue
            first = min(ex, key=lambda m: m.start)
            src = "" if path == "[vdso]" else self._openable(path, first)
            objects.append(MappedObject(path, lo, hi, source=src, first_offset=first.offset))
        objects.sort(key=lambda o: o.start)
        self._objects = objects
        self._starts = [o.start for o in objects]
        self._maps = sorted((m.start, m.end) for m in maps)
        self._map_starts = [s for s, _ in self._maps]

    def _openable(self, path: str, m: MemoryMap) -> str:
        pid = self.proc.pid
        for cand in (f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}", f"/proc/{pid}/root{path}", path):
            try:
                st = os.stat(cand)
            except OSError:
                continue
            if not m.inode or st.st_ino == m.inode:
                return cand
        return ""

    def _open(self, obj: MappedObject) -> None:
        obj.opened = True
        if obj.name == "[vdso]":
            try:
                data = self.proc.memory.read(obj.start, obj.end - obj.start)
            except GoflameError:
                return
            img = self.cache.open_bytes(data, "[vdso]")
            if img is not None:
                lo_load = min((seg.vaddr for seg in img.load_segments), default=0)
                obj.image, obj.bias = img, obj.start - (lo_load & ~0xFFF)
            return
        img = self.cache.open_file(obj.source, obj.name) if obj.source else None
        if img is None:
            return
        # The first executable mapping shows file offset `first_offset` at `start`; the PT_LOAD
        # holding that offset says which link-time address it is.
        obj.image = img
        obj.bias = obj.start - obj.first_offset
        for seg in img.load_segments:
            page_off = seg.offset & ~0xFFF
            if page_off <= obj.first_offset < seg.offset + max(seg.filesz, 1):
                obj.bias = obj.start - ((seg.vaddr & ~0xFFF) + (obj.first_offset - page_off))
                break

    def object_at(self, pc: int) -> MappedObject | None:
        obj = self._find(pc)
        if obj is None and time.monotonic() - self._refreshed > MAPS_REFRESH_S:
            try:
                self.refresh()
            except GoflameError:
                return None
            obj = self._find(pc)
        if obj is not None and not obj.opened:
            self._open(obj)
        return obj

    def _find(self, pc: int) -> MappedObject | None:
        i = bisect.bisect_right(self._starts, pc) - 1
        if i >= 0 and pc < self._objects[i].end:
            return self._objects[i]
        return None

    def mapping(self, addr: int, max_age: float = MAPS_REFRESH_S) -> tuple[int, int] | None:
        """The [start, end) of the mapping holding `addr` (a thread's stack, for bounds)."""
        hit = self._mapping(addr)
        if hit is None and time.monotonic() - self._refreshed > max_age:
            try:
                self.refresh()
            except GoflameError:
                return None
            hit = self._mapping(addr)
        return hit

    def cached_mapping(self, addr: int) -> tuple[int, int] | None:
        """`mapping` without re-reading /proc/PID/maps (for use while a thread is stopped)."""
        return self._mapping(addr)

    def _mapping(self, addr: int) -> tuple[int, int] | None:
        i = bisect.bisect_right(self._map_starts, addr) - 1
        if i >= 0 and addr < self._maps[i][1]:
            return self._maps[i]
        return None

    @property
    def objects(self) -> list[MappedObject]:
        return list(self._objects)


# -- native unwinding ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class NativeFrame:
    """A frame of C code in a stack (goflame's frame lists are innermost first)."""

    pc: int
    frame: Frame  # kind NATIVE; `file` is the object; a "[heuristic]" name suffix when no CFI covered it
    entry: int  # process address of the function's symbol (pc when unknown)
    method: str = "cfi"  # how its caller was found: "cfi", or the heuristic's name

    @property
    def heuristic(self) -> bool:
        return self.method != "cfi"


@dataclass(slots=True)
class NativeWalk:
    frames: list[NativeFrame]
    stop: Stop  # Stop.GO: back in Go code, regs say where; else why the C frames end
    regs: dict[int, int]


class NativeUnwinder:
    """Walks C frames with CFI (else prologue analysis, else frame pointers)."""

    def __init__(self, proc: Process, cache: ImageCache | None = None):
        self.cache = cache if cache is not None else ImageCache()
        self.space = AddressSpace(proc, self.cache)

    def frame_for(self, obj: MappedObject | None, pc: int, exact: bool, method: str) -> tuple[Frame, int]:
        if obj is None:  # executable memory outside any file (JIT code): perf's name for it
            return Frame("[unknown]" + (HEURISTIC if method != "cfi" else ""), kind=FrameKind.NATIVE, pc=pc), pc
        key = (pc, exact, method != "cfi")
        hit = obj.frames.get(key)
        if hit is not None:
            return hit
        base = os.path.basename(obj.name) if obj.name != "[vdso]" else "[vdso]"
        sym = obj.image.symbol((pc if exact else pc - 1) - obj.bias) if obj.image is not None else None
        if sym is not None:
            name, entry = sym.name, sym.start + obj.bias
        else:
            name, entry = (f"[{base}]" if not base.startswith("[") else base), pc
        if method != "cfi":
            name += HEURISTIC
        hit = (Frame(name, obj.name, 0, False, FrameKind.NATIVE, pc), entry)
        if len(obj.frames) > 1 << 16:
            obj.frames.clear()
        obj.frames[key] = hit
        return hit

    def unwind(self, regs: dict[int, int], mem: StackMemory, lo: int, hi: int, *, exact: bool,
               is_go: Callable[[int], bool], max_frames: int = MAX_NATIVE_FRAMES) -> NativeWalk:
        """Walk native frames from `regs` until Go code, the thread's root or a bad frame."""
        frames: list[NativeFrame] = []
        regs = dict(regs)
        space = self.space
        try:
            while len(frames) < max_frames:
                pc = regs.get(RA, 0)
                if pc == 0:
                    return NativeWalk(frames, Stop.ZERO_PC if frames else Stop.UNKNOWN_PC, regs)
                if is_go(pc):
                    return NativeWalk(frames, Stop.GO, regs)
                obj = space.object_at(pc)
                if obj is None or obj.image is None:
                    # Code in no readable ELF object (JIT, a deleted library): only rbp is left.
                    row = prologue_row(FRAME_POINTER)
                else:
                    row = obj.image.rule(pc - obj.bias, exact)
                new = self._step(row, regs, mem, lo, hi, is_go)
                method = row.heuristic or "cfi"
                if row.heuristic and row.heuristic != "frame-pointer" and new is None:
                    row = prologue_row(FRAME_POINTER)  # the prologue guess did not hold: try rbp
                    method = "frame-pointer"
                    new = self._step(row, regs, mem, lo, hi, is_go)
                fr, entry = self.frame_for(obj, pc, exact, method)
                frames.append(NativeFrame(pc, fr, entry, method))
                if new is None:
                    return NativeWalk(frames, Stop.BAD_FRAME, regs)
                if new == {}:
                    return NativeWalk(frames, Stop.TOP, regs)
                exact = row.signal
                regs = new
            return NativeWalk(frames, Stop.TOO_DEEP, regs)
        except InvalidMemory:
            return NativeWalk(frames, Stop.MEMORY, regs)

    def _step(self, row: Row, regs: dict[int, int], mem: StackMemory, lo: int, hi: int,
              is_go: Callable[[int], bool]) -> dict[int, int] | None:
        """Apply a rule; {} at the outermost frame, None when the result is not a plausible frame."""
        sp = regs.get(RSP, 0)
        try:
            new = step(row, regs, mem)
        except (CfiError, KeyError, IndexError, struct.error):
            return None
        except InvalidMemory:
            if row.heuristic:
                return None
            raise
        if new is None:
            return {}
        nsp, npc = new[RSP], new[RA]
        if not (sp < nsp <= hi and nsp >= lo) and not row.signal:
            return None
        if npc == 0:
            return {}
        if row.heuristic and not is_go(npc) and self.space.object_at(npc) is None:
            return None
        return new


# -- Go <-> native stitching ----------------------------------------------------------------------------
MixedFrame = PhysicalFrame | NativeFrame
# The stops of a Go walk on g0 (after C returned into Go) that leave the rest of the stack on
# the goroutine's: asmcgocall or a vDSO caller switched stacks, and the goroutine's own records
# (g.syscallsp, m.vdsoSP) say where it continues.
_LEFT_GO_ON_G0 = frozenset({Stop.SPWRITE, Stop.UNKNOWN_PC, Stop.BOUNDS, Stop.NO_FRAME_SIZE, Stop.VDSO_CALL})


@dataclass(slots=True)
class MixedWalk:
    frames: list[MixedFrame]
    stop: Stop

    @property
    def complete(self) -> bool:
        return self.stop.complete


def regs_of(r: Registers) -> dict[int, int]:
    return {RA: r.rip, RSP: r.rsp, RBP: r.rbp, RBX: r.rbx, 12: r.r12, 13: r.r13, 14: r.r14, 15: r.r15,
            0: r.rax, 1: r.rdx, 2: r.rcx, 4: r.rsi, 5: r.rdi, 8: r.r8, 9: r.r9, 10: r.r10, 11: r.r11}


@dataclass(frozen=True, slots=True)
class Stopped:
    """Memory read while a thread was stopped (see NativeStitcher.while_stopped)."""

    stack: bytes
    curg: int  # m.curg, -1 when unread
    g0_sp: int | None  # m.g0.sched.sp
    vdso: tuple[int, int] | None  # m.vdsoSP, m.vdsoPC
    syscall: tuple[int, int, int] | None  # (g address, syscallsp, syscallpc) of the M's goroutine then
    other_stacks: tuple[tuple[int, bytes], ...] = ()  # page-aligned (address, bytes) of the stacks the walk goes on to


class NativeStitcher:
    """One stack per goroutine across Go and C: the runtime's stack switches, undone.

    Made only with --native: nothing here is imported, opened or parsed otherwise.
    """

    def __init__(self, proc: Process, reader: RuntimeReader, unwinder: GoUnwinder, cache: ImageCache | None = None):
        self.proc = proc
        self.reader = reader
        self.go = unwinder
        self.native = NativeUnwinder(proc, cache)
        self._machines: dict[int, Machine] = {}

    # live threads
    def while_stopped(self, m: Machine | None, regs: Registers, window: int) -> Stopped:
        """What to read while the thread is stopped, all in one syscall.

        Besides the stack top: m.curg, m.g0.sched.sp, m.vdso{SP,PC}, and the syscall{sp,pc}
        of the goroutine the M last ran. Read after the thread runs on, these may no longer
        match the registers: a callback may have returned, a vDSO call (tens of ns) surely has.
        """
        sp = regs.rsp
        bounds = self.native.space.cached_mapping(sp)  # no /proc read inside the stop
        reqs = [(sp, min(window, bounds[1] - sp) if bounds else 0x1000 - (sp & 0xFFF))]
        offs = self._offsets
        if m is None or offs is None or not m.g0:
            data = self.proc.memory.read_many(reqs)[0]
            return Stopped(data or b"", -1, None, None, None)
        curg, vdso_sp, vdso_pc, g0_sp, sys_sp, sys_pc = offs
        reqs += ((m.addr + curg, 8), (m.addr + vdso_sp, 8), (m.addr + vdso_pc, 8), (m.g0 + g0_sp, 8))
        guess = m.curg
        if guess:
            reqs += ((guess + sys_sp, 8), (guess + sys_pc, 8))
        bufs = self.proc.memory.read_many(reqs)
        w = [int.from_bytes(b, "little") if b else None for b in bufs[1:]]
        if not guess:
            w += (None, None)
        fresh = w[0]
        if fresh and fresh != guess:
            # The goroutine changed since the Ms were last read (the scheduler moved it, or this
            # M picked up another): its syscall{sp,pc}, read for the stale guess, say nothing.
            # Read the running one's, still inside the stop: after it, C may return to Go.
            guess = fresh
            w[4:6] = [int.from_bytes(b, "little") if b else None
                      for b in self.proc.memory.read_many([(fresh + sys_sp, 8), (fresh + sys_pc, 8)])]
        # The walk continues on other stacks than the one the thread stopped on: g0 above
        # g0.sched.sp (the C frames of a callback into Go, overwritten by C as soon as the
        # callback returns), the goroutine's stack at m.vdsoSP or g.syscallsp (it runs on
        # when the vDSO or C call returns). Read them too while the thread is stopped: one
        # more, dependent, read.
        windows = []
        for addr in (w[3], w[1], w[4]):
            if addr and not (bounds and bounds[0] <= addr < bounds[1]):
                base = addr & ~0xFFF
                mapped = self.native.space.cached_mapping(addr)
                windows.append((base, min(OTHER_STACK_WINDOW, mapped[1] - base) if mapped else 0x1000))
        other = ()
        if windows:
            other = tuple((base, data) for (base, _n), data in
                          zip(windows, self.proc.memory.read_many(windows), strict=True) if data)
        return Stopped(bufs[0] or b"", -1 if w[0] is None else w[0], w[3],
                       (w[1], w[2]) if w[1] is not None and w[2] is not None else None,
                       (guess, w[4], w[5]) if w[4] is not None and w[5] is not None else None, other)

    @cached_property
    def _offsets(self) -> tuple[int, int, int, int, int, int] | None:
        """m.curg, m.vdsoSP, m.vdsoPC, g.sched.sp, g.syscallsp, g.syscallpc: None if any is unknown."""
        fm, fg = self.reader.m.spec, self.reader.g.spec
        try:
            return (fm["curg"][0], fm["vdsosp"][0], fm["vdsopc"][0], fg["sp"][0], fg["syscallsp"][0],
                    fg["syscallpc"][0])
        except KeyError:
            return None

    def thread(self, m: Machine | None, g: Goroutine | None, regs: Registers, mem: StackMemory,
               g0_bounds: dict[int, tuple[int, int]], stopped: Stopped | None = None,
               in_signal: bool = False) -> MixedWalk:
        """The stack of a stopped thread: native frames where it runs C, then its goroutine's.
        In Go's signal handler: its frames, then those of the code the signal interrupted."""
        pc, sp = regs.rip, regs.rsp
        if stopped is not None:
            mem.preload(stopped.other_stacks)
        in_go = self.reader.in_text
        if in_go(pc):
            walk = self._go_from_registers(m, g, pc, sp, regs.r12, mem, g0_bounds)
            if sigframe.ends_in_handler(walk) and not in_signal:
                ctx = sigframe.interrupted(walk, mem)
                handler = self.splice(sigframe.handler_part(walk), m, g, mem, stopped)
                if ctx is None:
                    return MixedWalk(handler.frames, Stop.SIGNAL)
                inner = self.thread(m, g, ctx.registers(regs), mem, g0_bounds, stopped, in_signal=True)
                return MixedWalk(handler.frames + inner.frames, inner.stop if inner.frames else Stop.SIGNAL)
            return self.splice(walk, m, g, mem, stopped)
        bounds = self.native.space.mapping(sp, STACK_MAPS_REFRESH_S) or (sp, sp + 1)
        nw = self.native.unwind(regs_of(regs), mem, bounds[0], bounds[1], exact=True, is_go=in_go)
        frames: list[MixedFrame] = list(nw.frames)
        if nw.stop == Stop.GO:
            rest = self._go_after_native(m, g, nw.regs, mem, g0_bounds, stopped)
        elif g is not None and not nw.stop.complete:
            # The C frames could not all be recovered, but Go's own record of where the
            # goroutine left Go still holds: show the gap, then the Go frames.
            rest = self._go_from_syscall(m, g, mem, stopped)
            if rest.frames:
                gap = Frame(f"[native unwind stopped: {nw.stop}]", kind=FrameKind.NATIVE)
                frames.append(NativeFrame(0, gap, 0, "gap"))
            else:
                rest = MixedWalk([], nw.stop)
        else:
            return MixedWalk(frames, nw.stop)
        frames.extend(rest.frames)
        return MixedWalk(frames, rest.stop)

    def _go_from_registers(self, m: Machine | None, g: Goroutine | None, pc: int, sp: int, r12: int,
                           mem: StackMemory, g0_bounds: dict[int, tuple[int, int]]) -> Walk:
        """Go code on a thread: the same walk as without --native (goroutine or system stack)."""
        if g is not None and g.contains_sp(sp):
            walk = self.go.unwind(pc, sp, 0, mem, g.stack_lo, g.stack_hi, exact=True)
        else:
            bounds = self._system_bounds(m, sp, g0_bounds)
            if bounds is None:
                return Walk([], Stop.BOUNDS)
            # A thread started by C (cgo) gets g0 bounds that end inside mstart0's frame: the
            # thread's stack mapping lets the walk reach mstart, as the runtime's own traceback does.
            mapped = self.native.space.mapping(sp, STACK_MAPS_REFRESH_S)
            hi = max(bounds[1], mapped[1]) if mapped is not None else bounds[1]
            walk = self.go.unwind(pc, sp, 0, mem, bounds[0], hi, exact=True, on_system_stack=self._switch_to(g))
        return self._out_of_vdso_call(walk, pc, True, sp, r12, m, g, mem, g0_bounds)

    def _out_of_vdso_call(self, walk: Walk, pc: int, exact: bool, sp: int, r12: int, m: Machine | None,
                          g: Goroutine | None, mem: StackMemory, g0_bounds: dict[int, tuple[int, int]]) -> Walk:
        """A walk stopped in the SPWRITE function it started in: out of a vDSO caller through
        R12 (see vdsocall.py), else as it is; None-safe for every other function."""
        if walk.stop != Stop.SPWRITE or len(walk.frames) != 1 or self.go.vdso.caller_at(pc) is None:
            return walk
        spans = [StackSpan(g.stack_lo, g.stack_hi)] if g is not None else []
        b = self._system_bounds(m, r12, g0_bounds)
        if b is not None:
            spans.append(StackSpan(b[0], b[1], self._switch_to(g)))
        out = self.go.vdso.walk(pc, sp, r12, mem, spans, exact)
        return out if out is not None else Walk(walk.frames, Stop.VDSO_CALL)

    @staticmethod
    def _switch_to(g: Goroutine | None) -> Callable[[str], StackSwitch | None] | None:
        if g is None:
            return None
        switch = StackSwitch(g.sched_pc, g.sched_sp, g.sched_lr, g.stack_lo, g.stack_hi, g.sched_bp)
        return lambda _kind: switch

    @staticmethod
    def _system_bounds(m: Machine | None, sp: int, g0_bounds: dict[int, tuple[int, int]]) -> tuple[int, int] | None:
        if m is None:
            return None
        for a in (m.g0, m.gsignal):
            b = g0_bounds.get(a)
            if b and b[0] <= sp < b[1]:
                return b
        return None

    def _go_from_syscall(self, m: Machine | None, g: Goroutine, mem: StackMemory,
                         stopped: Stopped | None) -> MixedWalk:
        """The goroutine's Go stack from where entersyscall (cgocall) recorded it."""
        if stopped is not None and stopped.syscall is not None and stopped.syscall[0] == g.addr:
            sys_sp, sys_pc = stopped.syscall[1], stopped.syscall[2]
        else:
            fresh = self.reader.read_g(g.addr) or g
            sys_sp, sys_pc = fresh.syscall_sp, fresh.syscall_pc
        if not (sys_sp and g.contains_sp(sys_sp)):
            return MixedWalk([], Stop.NO_SYSCALLSP)
        cont = self.go.unwind(sys_pc, sys_sp, 0, mem, g.stack_lo, g.stack_hi, from_syscall=True)
        return self.splice(cont, m, g, mem, stopped)

    def _go_after_native(self, m: Machine | None, g: Goroutine | None, regs: dict[int, int], mem: StackMemory,
                         g0_bounds: dict[int, tuple[int, int]], stopped: Stopped | None) -> MixedWalk:
        """C returned into Go at regs[RA]: the Go frames from there, across the switch back."""
        pc, sp = regs[RA], regs[RSP]
        if g is not None and g.contains_sp(sp):
            walk = self.go.unwind(pc, sp, 0, mem, g.stack_lo, g.stack_hi)
            return self.splice(walk, m, g, mem, stopped)
        bounds = self._system_bounds(m, sp, g0_bounds) or self.native.space.mapping(sp, STACK_MAPS_REFRESH_S)
        if bounds is None:
            return MixedWalk([], Stop.BOUNDS)
        walk = self.go.unwind(pc, sp, 0, mem, bounds[0], max(bounds[1], sp), on_system_stack=self._switch_to(g))
        if walk.stop == Stop.SPWRITE and len(walk.frames) == 1 and self.go.vdso.caller_at(pc) is not None:
            # C returned into a vDSO caller (time.now): R12, restored by the C code's CFI, leads on.
            walk = self._out_of_vdso_call(walk, pc, False, sp, regs.get(12, 0), m, g, mem, g0_bounds)
            if walk.stop != Stop.VDSO_CALL:
                return self.splice(walk, m, g, mem, stopped)
        frames: list[MixedFrame] = list(walk.frames)
        last = walk.frames[-1].func.name if walk.frames else ""
        if g is None and last.startswith("runtime.asmcgocall"):
            # A cgo call, but which goroutine made it was not read in the stop: the Go part of
            # the stack is unknown, which the walk must say rather than end as if complete.
            return MixedWalk(frames, Stop.NO_GOROUTINE)
        if g is None or walk.stop not in _LEFT_GO_ON_G0:
            return self.splice(walk, m, g, mem, stopped)
        if last.startswith("runtime.asmcgocall"):
            rest = self._go_from_syscall(m, g, mem, stopped)  # a cgo call: asmcgocall switched to g0
        else:
            vdso_sp, vdso_pc = (stopped.vdso if stopped is not None and stopped.vdso is not None
                                else self._vdso_of(m) if m is not None else (0, 0))
            if not (vdso_sp and g.contains_sp(vdso_sp)):
                return MixedWalk(frames, Stop.VDSO_CALL if walk.stop == Stop.SPWRITE else walk.stop)  # cut, never complete
            cont = self.go.unwind(vdso_pc, vdso_sp, 0, mem, g.stack_lo, g.stack_hi)  # a vDSO call
            rest = self.splice(cont, m, g, mem, stopped)
        # The Go part could not be found: say why (its stop), never end as if complete.
        return MixedWalk(frames + rest.frames, rest.stop)

    def _vdso_of(self, m: Machine) -> tuple[int, int]:
        """m.vdsoSP / m.vdsoPC now (the snapshot's copy may be older than the sample)."""
        try:
            buf = self.proc.memory.read(m.addr, self.reader.m.size)
        except InvalidMemory:
            return m.vdso_sp, m.vdso_pc
        return self.reader.m.get(buf, "vdsosp"), self.reader.m.get(buf, "vdsopc")

    # C frames between cgocallback and the Go code that called C
    def splice(self, walk: Walk, m: Machine | None, g: Goroutine | None, mem: StackMemory,
               stopped: Stopped | None = None) -> MixedWalk:
        """Insert the C frames that called back into Go after each runtime.cgocallback frame.

        cgocallback runs on g0 first: it saves g0.sched.sp at 0(SP) of its g0 frame and
        points g0.sched.sp at that frame, then copies its frame onto the goroutine's stack
        with curg.sched.pc as the return address. So the innermost cgocallback's C caller is
        found from m.g0.sched.sp (as read while the thread was stopped, with the g0 stack
        above it, when the caller has them), the next one's from the value saved there, and
        so on.
        """
        frames = walk.frames
        if not any(pf.func.name == "runtime.cgocallback" for pf in frames):
            return MixedWalk(list(frames), walk.stop)
        if m is None and g is not None:
            m = self._machine(g.m_addr or g.locked_m)
        g0 = self.reader.read_g(m.g0) if m is not None and m.g0 else None
        g0_sp = stopped.g0_sp if stopped is not None else None
        if g0_sp is None:
            g0_sp = g0.sched_sp if g0 is not None else 0
        out: list[MixedFrame] = []
        skip_switch = False
        for pf in frames:
            if skip_switch and pf.func.name == "runtime.systemstack_switch":
                continue  # asmcgocall's gosave: the same call as the asmcgocall frame just shown
            skip_switch = False
            out.append(pf)
            if pf.func.name != "runtime.cgocallback" or not g0_sp:
                continue
            seg, g0_sp, how = self._callback_caller(pf, g0_sp, g0, mem)
            out.extend(seg)
            if how == Stop.TOP:
                # A C thread called into Go: no Go caller below, and what the Go walk shows
                # next is the goexit frame the runtime gives an extra M's goroutine.
                return MixedWalk(out, Stop.TOP)
            if how != Stop.GO:
                gap = Frame(f"[native unwind stopped: {how}]", kind=FrameKind.NATIVE)
                out.append(NativeFrame(0, gap, 0, "gap"))
                g0_sp = 0
            skip_switch = True
        return MixedWalk(out, walk.stop)

    def _callback_caller(self, cb: PhysicalFrame, g0_sp: int, g0: Goroutine | None, mem: StackMemory
                         ) -> tuple[list[MixedFrame], int, Stop]:
        """Frames from cgocallback's g0 frame down to the Go code that made the cgo call.

        Returns (frames, g0.sched.sp of the next outer callback, how it ended: Stop.GO back in
        Go's asmcgocall, Stop.TOP at the thread's start, else why it stopped).
        """
        _f, spdelta = self.go.func_at(cb.pc)  # the g0 frame has the same size as the copy on curg
        if spdelta is None:
            return [], 0, Stop.NO_FRAME_SIZE
        try:
            next_sp = mem.u64(g0_sp)
            ra = mem.u64(g0_sp + spdelta)
        except InvalidMemory:
            return [], 0, Stop.MEMORY
        f, _d = self.go.func_at(ra)
        if f is None or f.name != "crosscall2":
            return [], 0, Stop.CALLBACK_RETURNED  # g0.sched.sp no longer points at this callback's frame
        sp = g0_sp + spdelta + 8
        bounds = self.native.space.mapping(g0_sp, STACK_MAPS_REFRESH_S)
        if g0 is not None and g0.stack_lo <= g0_sp < g0.stack_hi:
            lo, hi = g0.stack_lo, g0.stack_hi
            if bounds is not None:
                lo, hi = min(lo, bounds[0]), max(hi, bounds[1])
        elif bounds is not None:
            lo, hi = bounds
        else:
            return [], 0, Stop.BOUNDS
        frames: list[MixedFrame] = []
        walk = self.go.unwind(ra, sp, 0, mem, lo, hi, max_frames=8)  # crosscall2
        frames.extend(walk.frames)
        if not walk.frames:
            return frames, 0, walk.stop
        last = walk.frames[-1]
        try:
            c_pc = mem.u64(last.fp - 8)
            c_bp = mem.u64(last.fp - 16)  # Go frames save the caller's rbp just below the return address
        except InvalidMemory:
            return frames, 0, Stop.MEMORY
        nw = self.native.unwind({RA: c_pc, RSP: last.fp, RBP: c_bp}, mem, lo, hi, exact=False,
                                is_go=self.reader.in_text)
        frames.extend(nw.frames)
        if nw.stop.complete:
            return frames, 0, Stop.TOP
        if nw.stop != Stop.GO:
            return frames, 0, nw.stop
        # Back in Go on g0: asmcgocall, where the goroutine's stack switched to g0.
        back = self.go.unwind(nw.regs[RA], nw.regs[RSP], 0, mem, lo, hi, max_frames=8)
        frames.extend(back.frames)
        return frames, next_sp, Stop.GO

    def _machine(self, addr: int) -> Machine | None:
        if not addr:
            return None
        hit = self._machines.get(addr)
        if hit is None:
            try:
                ms, _bad = self.reader.machines()
            except InvalidMemory:
                return None
            self._machines = {x.addr: x for x in ms}
            hit = self._machines.get(addr)
        return hit

    # presentation
    def logical(self, walk: MixedWalk, sym: Symbolizer) -> tuple[Frame, ...]:
        """Logical frames of a mixed walk the way the sampler shows Go walks (wrappers elided)."""
        out: list[Frame] = []
        callee = 0
        for pf in walk.frames:
            if isinstance(pf, NativeFrame):
                out.append(pf.frame)
                callee = 0
                continue
            kept, callee = sym.elide(sym.expand(pf.sym_pc), callee)
            out.extend(kept)
        marker = walk.stop.marker
        if marker is not None:
            out.append(Frame(marker, kind=FrameKind.UNKNOWN))
        return tuple(out)

    def close(self) -> None:
        self.native.cache.close()

