"""The pclntab parser on bytes: a Go 1.16-format table built by hand from the documented
layout, and real tables mutated by hypothesis (only goflame's own error may escape, and no
lookup may loop)."""

from __future__ import annotations

import signal
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gotoolchain as gt
from conftest import FIXTURES
from goflame.binary.gobinary import GoBinary
from goflame.binary.pclntab import MAGIC_116, Pclntab
from goflame.errors import GoflameError


def uvarint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pcvalue_table(entry: int, rows: list[tuple[int, int]], quantum: int = 1) -> bytes:
    """rows: (end pc, value) pairs; encoded as Go does (zig-zag value delta, pc delta / quantum)."""
    out = bytearray()
    val, pc = -1, entry
    for end, v in rows:
        d = v - val
        out += uvarint((d << 1) if d >= 0 else ((-d << 1) - 1))
        out += uvarint((end - pc) // quantum)
        val, pc = v, end
    out.append(0)
    return bytes(out)


def build_go116_table() -> tuple[bytes, dict]:
    names = b"main.main\x00main.helper\x00"
    files = b"/src/main.go\x00/src/helper.go\x00"
    cutab = struct.pack("<II", 0, len(b"/src/main.go\x00"))
    funcs = [  # entry, end, name offset, file index, [(end, line)], [(end, spdelta)]
        (0x401000, 0x401040, 0, 0, [(0x401010, 10), (0x401040, 12)], [(0x401004, 0), (0x401040, 24)]),
        (0x401040, 0x401080, 10, 1, [(0x401080, 7)], [(0x401080, 8)]),
    ]
    pctab = bytearray(b"\x00")  # offset 0 means "no table"
    recs = []
    for entry, end, _name, fileno, lines, sps in funcs:
        sp_off = len(pctab)
        pctab += pcvalue_table(entry, sps)
        file_off = len(pctab)
        pctab += pcvalue_table(entry, [(end, fileno)])
        ln_off = len(pctab)
        pctab += pcvalue_table(entry, lines)
        recs.append((sp_off, file_off, ln_off))
    nfunc = len(funcs)
    ftab_size = (nfunc + 1) * 16
    func_records = bytearray()
    funcoffs = []
    for (entry, _end, name, _f, _l, _s), (sp, fl, ln) in zip(funcs, recs, strict=True):
        funcoffs.append(ftab_size + len(func_records))
        func_records += struct.pack("<QiiIIIIII", entry, name, 0, 0, sp, fl, ln, 0, 0)
        func_records += struct.pack("<BBBB", 0, 0, 0, 0)
        while len(func_records) % 8:
            func_records.append(0)
    ftab = b"".join(struct.pack("<QQ", f[0], off) for f, off in zip(funcs, funcoffs, strict=True))
    ftab += struct.pack("<QQ", funcs[-1][1], 0)
    pclntable = ftab + bytes(func_records)
    header_size = 8 + 7 * 8
    off_names = header_size
    off_cu = off_names + len(names)
    off_files = off_cu + len(cutab)
    off_pc = off_files + len(files)
    off_pcln = off_pc + len(pctab)
    header = struct.pack("<IBBBB", MAGIC_116, 0, 0, 1, 8) + struct.pack(
        "<7Q", nfunc, 2, off_names, off_cu, off_files, off_pc, off_pcln)
    data = header + names + cutab + files + bytes(pctab) + pclntable
    return data, {"funcs": funcs}


def test_go116_table_built_by_hand_is_read_per_its_layout():
    data, _ = build_go116_table()
    t = Pclntab(data)
    assert t.format == "1.16" and t.nfunc == 2
    assert [f.name for f in t.funcs()] == ["main.main", "main.helper"]
    f = t.find_func(0x401020)
    assert f.name == "main.main" and (f.entry, f.end) == (0x401000, 0x401040)
    assert t.file_line(f, 0x401005) == ("/src/main.go", 10)
    assert t.file_line(f, 0x401030) == ("/src/main.go", 12)
    assert t.spdelta(f, 0x401002) == 0 and t.spdelta(f, 0x401020) == 24
    g = t.find_func(0x401050)
    assert g.name == "main.helper" and t.file_line(g, 0x401050) == ("/src/helper.go", 7)
    assert [fr.function for fr in t.frames(0x401050)] == ["main.helper"]
    assert t.find_func(0x400FFF) is None and t.find_func(0x401080) is None


@pytest.fixture(scope="module")
def real_table():
    b = GoBinary(gt.build(FIXTURES / "binprobe", gt.BuildSpec(stripped=True)))
    data = bytes(b.pclntab.data)
    return b, data


class _Timeout(Exception):
    pass


def _alarm(_sig, _frame):
    raise _Timeout("a lookup did not finish: the parser looped")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(st.data())
def test_mutated_pclntab_only_raises_goflame_errors_and_never_loops(real_table, data):
    b, raw = real_table
    buf = bytearray(raw)
    # Mutations concentrated where they hurt: the header, the function table, the pc tables.
    hot = [0, 64, len(buf) // 3, len(buf) // 2, len(buf) - 4096]
    for _ in range(data.draw(st.integers(1, 12))):
        base = data.draw(st.sampled_from(hot))
        pos = min(len(buf) - 1, max(0, base + data.draw(st.integers(0, 4095))))
        buf[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(8, len(buf)))
        del buf[cut:]
    pcs = data.draw(st.lists(st.integers(b.text_range[0] - 16, b.text_range[1] + 16), min_size=1, max_size=20))
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(10)
    try:
        t = Pclntab(bytes(buf), text_start=b.moduledata.text, gofunc=b.moduledata.gofunc, read=b.elf.read)
        for pc in pcs:
            f = t.find_func(pc)
            if f is not None:
                t.spdelta(f, pc)
                t.file_line(f, pc)
                t.frames(pc)
        for i in range(0, t.nfunc, max(1, t.nfunc // 50)):
            t.func_at_index(i)
    except GoflameError:
        pass
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
