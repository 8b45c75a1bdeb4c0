"""Call-frame information: how to find a C function's caller from any pc inside it.

C toolchains describe each function's frame in DWARF CFI: `.eh_frame` (kept by `strip`, used
by C++ exceptions) and `.debug_frame`. Each FDE is a program of CFA instructions whose rows say,
per pc range, where the canonical frame address is and where the caller's registers were
saved. This module parses the sections itself (struct over the bytes: pyelftools' parser takes
seconds on a libc, the budget is half of one), indexes FDEs through `.eh_frame_hdr`'s sorted
table when there is one, runs an FDE's program only when a pc inside it is first met, and
applies a row to registers and stack memory (`step`).

Registers are DWARF-numbered (x86-64 psABI): rbx 3, rbp 6, rsp 7, r12-r15 12-15, ra 16.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from goflame.binary.varint import sleb128 as _sleb
from goflame.binary.varint import uleb128 as _uleb
from goflame.errors import GoflameError
from goflame.unwind.gopclntab import StackMemory
from goflame.unwind.prologue import FrameRule

RBX, RBP, RSP, RA = 3, 6, 7, 16
CALLEE_SAVED = (RBX, RBP, 12, 13, 14, 15)

# DW_EH_PE_* pointer encodings (LSB, "Exception Frames")
PE_OMIT = 0xFF
PE_INDIRECT = 0x80
PE_PCREL, PE_TEXTREL, PE_DATAREL, PE_FUNCREL = 0x10, 0x20, 0x30, 0x40

# Register rule kinds
SAME, UNDEF, OFFSET, VAL_OFFSET, REGISTER, EXPR, VAL_EXPR = range(7)

# DW_CFA_* instructions (DWARF 5, section 6.4.2, and the GNU extensions). The first three are
# "primary": the top two bits of the byte, with an operand in the low six.
DW_CFA_advance_loc, DW_CFA_offset, DW_CFA_restore = 0x40, 0x80, 0xC0
DW_CFA_nop, DW_CFA_set_loc = 0x00, 0x01
DW_CFA_advance_loc1, DW_CFA_advance_loc2, DW_CFA_advance_loc4 = 0x02, 0x03, 0x04
DW_CFA_offset_extended, DW_CFA_restore_extended, DW_CFA_undefined = 0x05, 0x06, 0x07
DW_CFA_same_value, DW_CFA_register, DW_CFA_remember_state, DW_CFA_restore_state = 0x08, 0x09, 0x0A, 0x0B
DW_CFA_def_cfa, DW_CFA_def_cfa_register, DW_CFA_def_cfa_offset = 0x0C, 0x0D, 0x0E
DW_CFA_def_cfa_expression, DW_CFA_expression, DW_CFA_offset_extended_sf = 0x0F, 0x10, 0x11
DW_CFA_def_cfa_sf, DW_CFA_def_cfa_offset_sf = 0x12, 0x13
DW_CFA_val_offset, DW_CFA_val_offset_sf, DW_CFA_val_expression = 0x14, 0x15, 0x16
DW_CFA_GNU_window_save, DW_CFA_GNU_args_size, DW_CFA_GNU_negative_offset_extended = 0x2D, 0x2E, 0x2F
_ADVANCE = {DW_CFA_set_loc: 0, DW_CFA_advance_loc1: 1, DW_CFA_advance_loc2: 2, DW_CFA_advance_loc4: 4}
_CFA_RULE = frozenset({DW_CFA_def_cfa, DW_CFA_def_cfa_register, DW_CFA_def_cfa_offset, DW_CFA_def_cfa_expression,
                       DW_CFA_def_cfa_sf, DW_CFA_def_cfa_offset_sf})
_REGISTER_RULE = frozenset({DW_CFA_offset_extended, DW_CFA_restore_extended, DW_CFA_undefined, DW_CFA_same_value,
                            DW_CFA_register, DW_CFA_expression, DW_CFA_offset_extended_sf, DW_CFA_val_offset,
                            DW_CFA_val_offset_sf, DW_CFA_val_expression, DW_CFA_GNU_negative_offset_extended})


class CfiError(GoflameError):
    """Malformed call-frame information (caught inside this module; never reaches a user)."""


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
        saved: list[_State] = []
        while pos < end:
            op = b[pos]
            pos += 1
            new_loc = -1
            if op & 0xC0 == DW_CFA_advance_loc:
                new_loc = loc + (op & 0x3F) * cie.code_align
            elif op & 0xC0 == DW_CFA_offset:
                v, pos = _uleb(b, pos)
                st.rules[op & 0x3F] = (OFFSET, v * cie.data_align)
            elif op & 0xC0 == DW_CFA_restore:
                self._restore(st.rules, initial, op & 0x3F)
            elif op in _ADVANCE:
                new_loc, pos = self._advance(op, b, pos, cie, loc)
            elif op in _CFA_RULE:
                pos = self._cfa_rule(op, b, pos, cie, st)
            elif op in _REGISTER_RULE:
                pos = self._register_rule(op, b, pos, cie, st.rules, initial)
            elif op == DW_CFA_remember_state:
                saved.append(st.copy())
            elif op == DW_CFA_restore_state:
                if saved:  # GCC treats the CFA as part of the remembered state: restore it all
                    s = saved.pop()
                    st.cfa_reg, st.cfa_off, st.cfa_expr, st.rules = s.cfa_reg, s.cfa_off, s.cfa_expr, s.rules
            elif op == DW_CFA_GNU_args_size:
                _v, pos = _uleb(b, pos)  # the size of outgoing arguments: nothing for unwinding
            elif op not in (DW_CFA_nop, DW_CFA_GNU_window_save):  # the latter: SPARC, AArch64 pointer auth
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

    def _advance(self, op: int, b: bytes, pos: int, cie: Cie, loc: int) -> tuple[int, int]:
        """(the new location, the position after the operand) of a set_loc or advance_locN."""
        if op == DW_CFA_set_loc:
            return _encoded(b, pos, cie.fde_enc, self.vaddr + pos)
        size = _ADVANCE[op]
        return loc + int.from_bytes(b[pos:pos + size], "little") * cie.code_align, pos + size

    @staticmethod
    def _cfa_rule(op: int, b: bytes, pos: int, cie: Cie, st: _State) -> int:
        """The def_cfa family: where the CFA is (a register plus an offset, or an expression)."""
        if op in (DW_CFA_def_cfa, DW_CFA_def_cfa_sf, DW_CFA_def_cfa_register):
            st.cfa_reg, pos = _uleb(b, pos)
            st.cfa_expr = b""
        if op in (DW_CFA_def_cfa, DW_CFA_def_cfa_offset):
            st.cfa_off, pos = _uleb(b, pos)
        elif op in (DW_CFA_def_cfa_sf, DW_CFA_def_cfa_offset_sf):
            v, pos = _sleb(b, pos)
            st.cfa_off = v * cie.data_align
        elif op == DW_CFA_def_cfa_expression:
            n, pos = _uleb(b, pos)
            st.cfa_reg, st.cfa_expr = -1, bytes(b[pos:pos + n])
            pos += n
        return pos

    def _register_rule(self, op: int, b: bytes, pos: int, cie: Cie, rules: dict, initial: dict | None) -> int:
        """The rules that say where one register of the caller is."""
        reg, pos = _uleb(b, pos)
        if op in (DW_CFA_offset_extended, DW_CFA_val_offset, DW_CFA_GNU_negative_offset_extended):
            v, pos = _uleb(b, pos)
            v = -v if op == DW_CFA_GNU_negative_offset_extended else v
            rules[reg] = (VAL_OFFSET if op == DW_CFA_val_offset else OFFSET, v * cie.data_align)
        elif op in (DW_CFA_offset_extended_sf, DW_CFA_val_offset_sf):
            v, pos = _sleb(b, pos)
            rules[reg] = (VAL_OFFSET if op == DW_CFA_val_offset_sf else OFFSET, v * cie.data_align)
        elif op == DW_CFA_restore_extended:
            self._restore(rules, initial, reg)
        elif op == DW_CFA_undefined:
            rules[reg] = (UNDEF, 0)
        elif op == DW_CFA_same_value:
            rules[reg] = (SAME, 0)
        elif op == DW_CFA_register:
            reg2, pos = _uleb(b, pos)
            rules[reg] = (REGISTER, reg2)
        else:  # DW_CFA_expression, DW_CFA_val_expression
            n, pos = _uleb(b, pos)
            rules[reg] = (EXPR if op == DW_CFA_expression else VAL_EXPR, bytes(b[pos:pos + n]))
            pos += n
        return pos

    @staticmethod
    def _restore(rules: dict, initial: dict | None, reg: int) -> None:
        if initial is not None and reg in initial:
            rules[reg] = initial[reg]
        else:
            rules.pop(reg, None)


# -- DWARF expressions (CFA and register rules) -------------------------------------------------------
# DW_OP_* opcodes (DWARF 5, section 7.7.1): the subset CFI expressions use.
DW_OP_deref = 0x06
DW_OP_constu, DW_OP_consts = 0x10, 0x11
DW_OP_dup, DW_OP_drop, DW_OP_over, DW_OP_pick, DW_OP_swap = 0x12, 0x13, 0x14, 0x15, 0x16
DW_OP_neg, DW_OP_not, DW_OP_plus_uconst = 0x1F, 0x20, 0x23
DW_OP_lit0, DW_OP_reg0, DW_OP_breg0 = 0x30, 0x50, 0x70  # each followed by 31 more, one per number
DW_OP_bregx, DW_OP_nop = 0x92, 0x96
_CONSTANTS = {0x08: struct.Struct("<B"), 0x09: struct.Struct("<b"), 0x0A: struct.Struct("<H"),  # const1u ..
              0x0B: struct.Struct("<h"), 0x0C: struct.Struct("<I"), 0x0D: struct.Struct("<i"),
              0x0E: struct.Struct("<Q"), 0x0F: struct.Struct("<q")}  # .. const8s
_MASK = 0xFFFFFFFFFFFFFFFF


def eval_expr(expr: bytes, regs: dict[int, int], mem: StackMemory, initial: Sequence[int] = ()) -> int:
    """Evaluate a DWARF location expression as CFI uses them (no pieces, no frame base)."""
    stack = list(initial)
    pos = 0
    while pos < len(expr):
        op = expr[pos]
        pos += 1
        if DW_OP_breg0 <= op < DW_OP_breg0 + 32:
            off, pos = _sleb(expr, pos)
            stack.append((regs[op - DW_OP_breg0] + off) & _MASK)
        elif DW_OP_lit0 <= op < DW_OP_lit0 + 32:
            stack.append(op - DW_OP_lit0)
        elif DW_OP_reg0 <= op < DW_OP_reg0 + 32:  # the register's value itself
            stack.append(regs[op - DW_OP_reg0])
        elif op == DW_OP_bregx:
            reg, pos = _uleb(expr, pos)
            off, pos = _sleb(expr, pos)
            stack.append((regs[reg] + off) & _MASK)
        elif op in _CONSTANTS:
            st = _CONSTANTS[op]
            stack.append(st.unpack_from(expr, pos)[0] & _MASK)
            pos += st.size
        elif op in (DW_OP_constu, DW_OP_plus_uconst):
            v, pos = _uleb(expr, pos)
            stack.append(v if op == DW_OP_constu else (stack.pop() + v) & _MASK)
        elif op == DW_OP_consts:
            v, pos = _sleb(expr, pos)
            stack.append(v & _MASK)
        elif op == DW_OP_pick:
            stack.append(stack[-1 - expr[pos]])
            pos += 1
        elif op in _BINARY:
            b, a = stack.pop(), stack.pop()
            stack.append(_BINARY[op](a, b) & _MASK)
        elif op != DW_OP_nop:
            _stack_op(op, stack, mem)
    if not stack:
        raise CfiError("empty DWARF expression")
    return stack[-1]


def _stack_op(op: int, stack: list[int], mem: StackMemory) -> None:
    """The operand-less operators on the top of the stack."""
    if op == DW_OP_deref:
        stack.append(mem.u64(stack.pop()))
    elif op == DW_OP_dup:
        stack.append(stack[-1])
    elif op == DW_OP_drop:
        stack.pop()
    elif op == DW_OP_over:
        stack.append(stack[-2])
    elif op == DW_OP_swap:
        stack[-1], stack[-2] = stack[-2], stack[-1]
    elif op == DW_OP_neg:
        stack.append(-stack.pop() & _MASK)
    elif op == DW_OP_not:
        stack.append(~stack.pop() & _MASK)
    else:
        raise CfiError(f"unsupported DWARF expression op {op:#x}")


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


_BINARY: dict[int, Callable[[int, int], int]] = {  # DW_OP_and .. DW_OP_ne: b on top, a below it
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
