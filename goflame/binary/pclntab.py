"""Go's pc-line table (`.gopclntab`): functions, frame sizes, file/line and inlining per pc.

This is what the Go runtime itself uses for tracebacks, so answering from it gives the
runtime's answers — on stripped binaries too, since `-s -w` keeps it. Formats handled:
Go 1.16–1.17 (magic 0xfffffffa), 1.18–1.19 (0xfffffff0) and 1.20+ (0xfffffff1); see
runtime/symtab.go and runtime2.go (`_func`, `pcHeader`, `inlinedCall`) of each release.

Everything from the (possibly hostile) bytes is bounds-checked: a corrupt table raises
`CorruptBinary` and never loops, because every walk advances and is bounded by the table size.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable
from dataclasses import dataclass

from goflame.binary.varint import uvarint
from goflame.errors import CorruptBinary
from goflame.frame import Frame, FrameKind

MAGIC_116 = 0xFFFFFFFA
MAGIC_118 = 0xFFFFFFF0
MAGIC_120 = 0xFFFFFFF1
MAGIC_12 = 0xFFFFFFFB
FORMATS = {MAGIC_116: "1.16", MAGIC_118: "1.18", MAGIC_120: "1.20", MAGIC_12: "1.2"}

# _func.flag bits (stable since 1.17)
FLAG_TOPFRAME = 0x1
FLAG_SPWRITE = 0x2
FLAG_ASM = 0x4

PCDATA_UNSAFE_POINT = 0
PCDATA_STACK_MAP_INDEX = 1
PCDATA_INL_TREE_INDEX = 2
FUNCDATA_INL_TREE = 3

MAX_INLINE_DEPTH = 1000  # no real inline chain is this deep; guards against cyclic corrupt trees


@dataclass(slots=True, unsafe_hash=True)  # not frozen: ~4x cheaper to make; treat as immutable
class Func:
    """One function's `_func` record; addresses are link-time (add the load bias for a process)."""

    entry: int
    end: int
    name: str
    args: int
    deferreturn: int
    pcsp: int
    pcfile: int
    pcln: int
    npcdata: int
    cu_offset: int
    start_line: int  # 0 before Go 1.20
    func_id: int
    flag: int
    nfuncdata: int
    index: int  # position in the function table
    record: int  # offset of the _func in the pclntable (pcdata/funcdata follow it)
    inl_index: int = 0  # offset of the inline-tree-index pcdata table in pctab, 0 if none

    @property
    def is_topframe(self) -> bool:
        return bool(self.flag & FLAG_TOPFRAME)

    @property
    def is_spwrite(self) -> bool:
        return bool(self.flag & FLAG_SPWRITE)

    @property
    def is_asm(self) -> bool:
        return bool(self.flag & FLAG_ASM)


@dataclass(frozen=True, slots=True)
class InlinedCall:
    func_id: int
    name_off: int
    parent_pc: int  # offset from the outer function's entry of an instruction at the call site
    start_line: int  # 0 before 1.20


class Pclntab:
    """Reader over the raw bytes of a pclntab.

    `text_start` is `runtime.text` (moduledata.text): needed for 1.18+ whose entries are
    offsets from it, and whose header copy is 0 from Go 1.26 on. `read` reads link-time
    addresses of the binary, for funcdata (the inline tree lives in `go:func.*`, at `gofunc`).
    """

    def __init__(
        self,
        data: bytes | memoryview,
        *,
        addr: int = 0,
        text_start: int | None = None,
        gofunc: int | None = None,
        read: Callable[[int, int], bytes | memoryview] | None = None,
    ):
        self.data = memoryview(data).toreadonly() if not isinstance(data, bytes) else data
        self.addr = addr
        if len(self.data) < 16:
            raise CorruptBinary("corrupt pclntab: too short for a header")
        magic = struct.unpack_from("<I", self.data, 0)[0]
        if magic not in FORMATS:
            raise CorruptBinary(f"not a Go 1.16+ pclntab (magic {magic:#x})")
        if magic == MAGIC_12:
            raise CorruptBinary("pclntab format of Go 1.2–1.15 is not supported")
        self.magic = magic
        self.format = FORMATS[magic]
        self.quantum = self.data[6]
        self.ptr_size = self.data[7]
        if self.quantum not in (1, 2, 4) or self.ptr_size not in (4, 8):
            raise CorruptBinary(f"corrupt pclntab header (quantum {self.quantum}, ptrsize {self.ptr_size})")
        ps = self.ptr_size
        if len(self.data) < 8 + 8 * ps:
            raise CorruptBinary("corrupt pclntab: too short for its header")
        self._uintptr = "<Q" if ps == 8 else "<I"
        words = [struct.unpack_from(self._uintptr, self.data, 8 + i * ps)[0] for i in range(8)]
        self.nfunc = words[0]
        self.nfiles = words[1]
        if magic == MAGIC_116:
            header_text = 0
            names, cu, files, pct, pcln = words[2:7]
        else:
            header_text = words[2]
            names, cu, files, pct, pcln = words[3:8]
        size = len(self.data)
        for what, off in (("funcnametab", names), ("cutab", cu), ("filetab", files),
                          ("pctab", pct), ("pclntable", pcln)):
            if not 0 < off <= size:
                raise CorruptBinary(f"corrupt pclntab: {what} offset {off:#x} outside the table")
        # Name and file tables are copied once (a few MB at most) so C-string scans are bytes.find.
        self.funcnametab = bytes(self.data[names : cu if cu > names else size])
        self.cutab = self.data[cu:]
        self.filetab = bytes(self.data[files : pct if pct > files else size])
        self.pctab = self.data[pct:]
        self._pctab = bytes(self.data[pct : pcln if pcln > pct else size])  # one copy: bytes index fast
        self.pclntable = self.data[pcln:]
        self.text_start = text_start if text_start else header_text
        if self.format != "1.16" and not self.text_start:
            raise CorruptBinary("pclntab has no text start and none was given (Go 1.26+ needs moduledata)")
        self.gofunc = gofunc
        self._read = read
        # The function table: nfunc+1 entries (the last one is the end of the last function).
        if self.format == "1.16":
            self._ftab_fmt = struct.Struct("<QQ" if ps == 8 else "<II")
        else:
            self._ftab_fmt = struct.Struct("<II")
        need = (self.nfunc + 1) * self._ftab_fmt.size
        if self.nfunc <= 0 or need > len(self.pclntable):
            raise CorruptBinary(f"corrupt pclntab: {self.nfunc} functions do not fit the table")
        raw = self.pclntable[:need]
        pairs = list(self._ftab_fmt.iter_unpack(raw))
        base = 0 if self.format == "1.16" else self.text_start
        self._entries = [base + e for e, _ in pairs]
        self._funcoffs = [f for _, f in pairs]
        for i in range(len(self._entries) - 1):
            if self._entries[i] > self._entries[i + 1]:
                raise CorruptBinary("corrupt pclntab: function table is not sorted")
        # where a _func's pcdata offsets start: after the fixed fields of this format's record
        self._pcdata_base = ps + 36 if self.format == "1.16" else (44 if self.format == "1.20" else 40)
        self._func_cache: dict[int, Func] = {}
        self._name_cache: dict[int, str] = {}
        self._file_cache: dict[int, str] = {}
        self._by_name: dict[str, int] | None = None

    # -- function table ---------------------------------------------------------------------------
    @property
    def text_end(self) -> int:
        return self._entries[-1]

    def func_at_index(self, i: int) -> Func:
        f = self._func_cache.get(i)
        if f is None:
            f = self._read_func(i)
            self._func_cache[i] = f
        return f

    def find_func(self, pc: int) -> Func | None:
        """The function containing pc (a link-time address), or None outside Go text."""
        entries = self._entries
        if pc < entries[0] or pc >= entries[-1]:
            return None
        i = bisect.bisect_right(entries, pc) - 1
        if i < 0 or i >= self.nfunc:
            return None
        return self.func_at_index(i)

    def funcs(self):
        for i in range(self.nfunc):
            yield self.func_at_index(i)

    def func_by_name(self, name: str) -> Func | None:
        """The function called `name`: its name is found in funcnametab first, then the one
        function record pointing at that offset — no index of every name is built."""
        if self._by_name is not None:
            i = self._by_name.get(name)
            return None if i is None else self.func_at_index(i)
        want = name.encode()
        tab = self.funcnametab
        offsets = []
        if tab.startswith(want + b"\0"):
            offsets.append(0)
        pos = tab.find(b"\0" + want + b"\0")
        while pos >= 0:
            offsets.append(pos + 1)
            pos = tab.find(b"\0" + want + b"\0", pos + 1)
        if not offsets:
            return None
        t = self.pclntable
        field = self.ptr_size if self.format == "1.16" else 4
        limit = len(t) - field - 4
        wanted = set(offsets)
        unpack = struct.Struct("<i").unpack_from
        for i, off in enumerate(self._funcoffs[: self.nfunc]):
            if off <= limit and unpack(t, off + field)[0] in wanted:
                return self.func_at_index(i)
        return None

    def _name_at_index(self, i: int) -> str:
        off = self._funcoffs[i]
        pos = off + (self.ptr_size if self.format == "1.16" else 4)
        if pos + 4 > len(self.pclntable):
            raise CorruptBinary("corrupt pclntab: function record outside the table")
        return self.name(struct.unpack_from("<i", self.pclntable, pos)[0])

    def _read_func(self, i: int) -> Func:
        off = self._funcoffs[i]
        t = self.pclntable
        if self.format == "1.16":
            ps = self.ptr_size
            if off + ps + 32 + 4 > len(t):
                raise CorruptBinary("corrupt pclntab: function record outside the table")
            entry = struct.unpack_from(self._uintptr, t, off)[0]
            (name_off, args, deferreturn, pcsp, pcfile, pcln, npcdata, cu_off) = struct.unpack_from(
                "<iiIIIIII", t, off + ps)
            func_id, flag, _pad, nfuncdata = struct.unpack_from("<BBBB", t, off + ps + 32)
            start_line = 0
        else:
            rec = _FUNC_120 if self.format == "1.20" else _FUNC_118
            if off + rec.size > len(t):
                raise CorruptBinary("corrupt pclntab: function record outside the table")
            if rec is _FUNC_120:
                (entry_off, name_off, args, deferreturn, pcsp, pcfile, pcln, npcdata, cu_off, start_line,
                 func_id, flag, _pad, nfuncdata) = rec.unpack_from(t, off)
            else:
                (entry_off, name_off, args, deferreturn, pcsp, pcfile, pcln, npcdata, cu_off,
                 func_id, flag, _pad, nfuncdata) = rec.unpack_from(t, off)
                start_line = 0
            entry = self.text_start + entry_off
        if entry != self._entries[i]:
            raise CorruptBinary(f"corrupt pclntab: function {i} entry disagrees with the function table")
        if npcdata > 1000 or nfuncdata > 255:
            raise CorruptBinary("corrupt pclntab: implausible pcdata/funcdata counts")
        end = self._entries[i + 1]
        inl = 0
        if npcdata > PCDATA_INL_TREE_INDEX:
            pos = off + self._pcdata_base + 4 * PCDATA_INL_TREE_INDEX
            if pos + 4 > len(t):
                raise CorruptBinary("corrupt pclntab: pcdata outside the table")
            inl = _U32.unpack_from(t, pos)[0]
        return Func(entry, end, self.name(name_off), args, deferreturn, pcsp, pcfile, pcln, npcdata,
                    cu_off, start_line, func_id, flag, nfuncdata, i, off, inl)

    # -- strings ----------------------------------------------------------------------------------
    def name(self, off: int) -> str:
        s = self._name_cache.get(off)
        if s is None:
            s = _cstring(self.funcnametab, off, "function name")
            self._name_cache[off] = s
        return s

    def file_name(self, cu_offset: int, fileno: int) -> str:
        key = (cu_offset + fileno)
        s = self._file_cache.get(key)
        if s is None:
            pos = key * 4
            if fileno < 0 or pos + 4 > len(self.cutab):
                return "?"
            off = struct.unpack_from("<I", self.cutab, pos)[0]
            if off == 0xFFFFFFFF:
                return "?"
            s = _cstring(self.filetab, off, "file name")
            self._file_cache[key] = s
        return s

    # -- pcvalue tables ---------------------------------------------------------------------------
    def pcvalue(self, f: Func, table_off: int, pc: int) -> int | None:
        """The value of a pcvalue table at `pc`, decoding only up to it (the runtime's `pcvalue`).

        Lookups are answered once per pc and cached by the callers, so stopping at the target is
        cheaper than decoding whole tables: most of a table lies after the pc asked about.
        """
        if table_off == 0:
            return None
        p = self._pctab
        pos = table_off
        cur = f.entry
        end = f.end
        q = self.quantum
        val = -1
        try:
            b = p[pos]
            while True:
                # value delta: zigzag varint; a 0 byte after the first pair ends the table
                if b < 0x80:
                    pos += 1
                elif p[pos + 1] < 0x80:  # two bytes: common enough to skip the call
                    b = (b & 0x7F) | (p[pos + 1] << 7)
                    pos += 2
                else:
                    b, pos = uvarint(p, pos, "pclntab: pcvalue table", 35)
                val += -((b >> 1) + 1) if b & 1 else b >> 1
                b = p[pos]  # pc delta, in units of the quantum
                if b < 0x80:
                    pos += 1
                elif p[pos + 1] < 0x80:
                    b = (b & 0x7F) | (p[pos + 1] << 7)
                    pos += 2
                else:
                    b, pos = uvarint(p, pos, "pclntab: pcvalue table", 35)
                cur += b * q
                if pc < cur:
                    return val
                if cur >= end:
                    return None
                b = p[pos]
                if b == 0:
                    return None
        except IndexError:
            raise CorruptBinary("corrupt pclntab: pcvalue table runs past its end") from None

    def spdelta(self, f: Func, pc: int) -> int | None:
        """Frame size at pc: bytes between the sp at pc and the return address slot."""
        return self.pcvalue(f, f.pcsp, pc)

    def pcdata_offset(self, f: Func, table: int) -> int:
        if table >= f.npcdata:
            return 0
        pos = f.record + self._pcdata_base + 4 * table
        if pos + 4 > len(self.pclntable):
            raise CorruptBinary("corrupt pclntab: pcdata outside the table")
        return struct.unpack_from("<I", self.pclntable, pos)[0]

    def pcdata(self, f: Func, table: int, pc: int) -> int | None:
        return self.pcvalue(f, self.pcdata_offset(f, table), pc)

    def funcdata_addr(self, f: Func, index: int) -> int | None:
        """Link-time address of funcdata[index], or None when absent."""
        if index >= f.nfuncdata:
            return None
        base = f.record + self._pcdata_base + 4 * f.npcdata
        if self.format == "1.16":
            base = (base + self.ptr_size - 1) & ~(self.ptr_size - 1)
            pos = base + self.ptr_size * index
            if pos + self.ptr_size > len(self.pclntable):
                raise CorruptBinary("corrupt pclntab: funcdata outside the table")
            v = struct.unpack_from(self._uintptr, self.pclntable, pos)[0]
            return v or None
        pos = base + 4 * index
        if pos + 4 > len(self.pclntable):
            raise CorruptBinary("corrupt pclntab: funcdata outside the table")
        off = struct.unpack_from("<I", self.pclntable, pos)[0]
        if off == 0xFFFFFFFF or self.gofunc is None:
            return None
        return self.gofunc + off

    def file_line(self, f: Func, pc: int) -> tuple[str, int]:
        fileno = self.pcvalue(f, f.pcfile, pc)
        line = self.pcvalue(f, f.pcln, pc)
        file = "?" if fileno is None else self.file_name(f.cu_offset, fileno)
        return file, (0 if line is None else line)

    # -- inlining ---------------------------------------------------------------------------------
    def inlined_call(self, f: Func, index: int) -> InlinedCall | None:
        tree = self.funcdata_addr(f, FUNCDATA_INL_TREE)
        if tree is None or self._read is None or index < 0:
            return None
        if self.format == "1.20":
            raw = self._read(tree + 16 * index, 16)
            func_id, _p1, _p2, _p3, name_off, parent_pc, start_line = struct.unpack("<BBBBiii", raw)
            return InlinedCall(func_id, name_off, parent_pc, start_line)
        raw = self._read(tree + 20 * index, 20)
        _parent, func_id, _pad, _file, _line, name_off, parent_pc = struct.unpack("<hBBiiii", raw)
        return InlinedCall(func_id, name_off, parent_pc, 0)

    def expand(self, pc: int, frame_pc: int | None = None) -> tuple[tuple[Frame, int], ...]:
        """Logical frames at `pc` (exact instruction address), innermost first, each with its funcID.

        For a return address pass `pc - 1` (as the runtime does) so the call instruction's
        line, not the next statement's, is reported. The funcID (of the inlined callee for
        inlined frames) is what the runtime's traceback uses to elide wrappers. The frames
        carry `frame_pc` (a process address, say) if given, else `pc`.

        This is the symbolizer's cold path, once per distinct pc of a profile: the lookups are
        written out here rather than through `find_func`/`file_line` (a call costs as much as
        a pcvalue step), and a pc outside inlined code, ~90 % of them, takes the short way.
        """
        entries = self._entries
        if pc < entries[0] or pc >= entries[-1]:
            return ()
        i = bisect.bisect_right(entries, pc) - 1
        f = self._func_cache.get(i)
        if f is None:
            if i >= self.nfunc:
                return ()
            f = self.func_at_index(i)
        if frame_pc is None:
            frame_pc = pc
        pcvalue = self.pcvalue
        ix = pcvalue(f, f.inl_index, pc) if f.inl_index else None
        if ix is None or ix < 0:
            fileno = pcvalue(f, f.pcfile, pc)
            file = "?" if fileno is None else (self._file_cache.get(f.cu_offset + fileno)
                                               or self.file_name(f.cu_offset, fileno))
            line = pcvalue(f, f.pcln, pc)
            return ((Frame(f.name, file, line or 0, False, FrameKind.GO, frame_pc), f.func_id),)
        out: list[tuple[Frame, int]] = []
        cur = pc
        depth = 0
        while ix is not None and ix >= 0:
            call = self.inlined_call(f, ix)
            if call is None:
                break
            file, line = self.file_line(f, cur)
            out.append((Frame(self.name(call.name_off), file, line, True, FrameKind.GO, frame_pc), call.func_id))
            parent = f.entry + call.parent_pc
            if not f.entry <= parent < f.end:
                raise CorruptBinary(f"corrupt inline tree in {f.name}")
            cur = parent
            ix = pcvalue(f, f.inl_index, cur)
            depth += 1
            if depth > MAX_INLINE_DEPTH:
                raise CorruptBinary(f"corrupt inline tree in {f.name} (cycle)")
        file, line = self.file_line(f, cur)
        out.append((Frame(f.name, file, line, False, FrameKind.GO, frame_pc), f.func_id))
        return tuple(out)

    def frames(self, pc: int) -> list[Frame]:
        """Logical frames at `pc`, innermost first (see `expand`)."""
        return [fr for fr, _ in self.expand(pc)]


_U32 = struct.Struct("<I")
_FUNC_118 = struct.Struct("<IiiIIIIIIBBBB")  # _func of Go 1.18/1.19 (entryOff ... nfuncdata)
_FUNC_120 = struct.Struct("<IiiIIIIIIiBBBB")  # Go 1.20+: startLine before funcID


def _cstring(buf: bytes, off: int, what: str) -> str:
    if off < 0 or off >= len(buf):
        raise CorruptBinary(f"corrupt pclntab: {what} offset {off:#x} outside its table")
    end = buf.find(b"\0", off)
    if end < 0:
        raise CorruptBinary(f"corrupt pclntab: unterminated {what}")
    return buf[off:end].decode("utf-8", errors="replace")
