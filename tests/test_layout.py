"""Runtime layouts and constants against what Go itself says about real builds.

Oracles, none of them goflame's own code:
- struct layouts: the DWARF of a fresh build read with pyelftools' full DIE parser (not our
  byte-search reader), resolving each dotted field by Go's selector rules;
- struct sizes: `go tool nm -size` of the runtime's globals of that type (g0, m0, sched, ...);
- constants: the DW_TAG_constant entries the compiler emitted (g/P status, waitReason and
  funcID values) and the runtime's own `waitReasonStrings` array read out of the binary;
- a live program: goroutines parked in known states, the runtime's dump of them
  (`runtime.Stack(all)`) against g.waitreason read out of its memory with the table.
"""

from __future__ import annotations

import functools
import os
import re
import selectors
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gotoolchain as gt
from goflame.binary import dwarf
from goflame.binary import layout as L
from goflame.binary.layout import (
    MAX_DEPTH,
    STRUCTS,
    Layout,
    LayoutFieldMissing,
    layout_from_dwarf,
    layout_from_table,
    load_layout,
)
from goflame.errors import CorruptBinary, GoflameError, UnsupportedGoVersion

PROBE = Path(__file__).resolve().parent.parent / "scripts" / "layoutprobe"
VERSIONS = list(gt.MATRIX)


@functools.cache
def probe(minor: str, cgo: bool = False, stripped: bool = False) -> Path:
    return gt.build(PROBE, gt.BuildSpec(go=minor, cgo=cgo, stripped=stripped))


# --------------------------------------------------------------------------- the DWARF oracle


@dataclass
class _Member:
    name: str
    offset: int
    type: object  # pyelftools DIE
    embedded: bool


class DwarfOracle:
    """The runtime's types and constants, parsed with pyelftools' full DWARF reader."""

    def __init__(self, path: Path):
        self._file = open(path, "rb")  # noqa: SIM115 - lives as long as the cached oracle
        self.elf = ELFFile(self._file)
        self.structs: dict[str, object] = {}
        self.consts: dict[str, int] = {}
        for cu in self.elf.get_dwarf_info().iter_CUs():
            top = cu.get_top_DIE()
            if top.attributes["DW_AT_name"].value not in (b"runtime", b"internal/abi"):
                continue
            for die in top.iter_children():
                name = die.attributes.get("DW_AT_name")
                if name is None:
                    continue
                if die.tag == "DW_TAG_structure_type":
                    self.structs.setdefault(name.value.decode(), die)
                elif die.tag == "DW_TAG_constant":
                    self.consts[name.value.decode()] = die.attributes["DW_AT_const_value"].value

    @staticmethod
    def _type(die):
        return die.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in die.attributes else None

    def type_size(self, t) -> int:
        while t is not None:
            if "DW_AT_byte_size" in t.attributes:
                return t.attributes["DW_AT_byte_size"].value
            if t.tag == "DW_TAG_pointer_type":
                return t.cu["address_size"]
            t = self._type(t)
        return 0

    def as_struct(self, t):
        while t is not None and t.tag == "DW_TAG_typedef":
            t = self._type(t)
        return t if t is not None and t.tag == "DW_TAG_structure_type" else None

    def members(self, sdie) -> list[_Member]:
        out = []
        for m in sdie.iter_children():
            if m.tag != "DW_TAG_member":
                continue
            emb = m.attributes.get("DW_AT_go_embedded_field") or m.attributes.get(0x2903)
            out.append(_Member(m.attributes["DW_AT_name"].value.decode(),
                               m.attributes["DW_AT_data_member_location"].value,
                               self._type(m), bool(emb and emb.value)))
        return out

    def select(self, sdie, name: str):
        """Go's selector x.name: the shallowest unique match, looking through embedded fields."""
        level = [(sdie, 0)]
        while level:
            hits = [(off + m.offset, m.type) for s, off in level for m in self.members(s) if m.name == name]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                return None
            level = [(self.as_struct(m.type), off + m.offset) for s, off in level
                     for m in self.members(s) if m.embedded and self.as_struct(m.type) is not None]
        return None

    def resolve(self, sdie, path: str):
        offset, t = 0, None
        cur = sdie
        for comp in path.split("."):
            if cur is None:
                return None
            hit = self.select(cur, comp)
            if hit is None:
                return None
            offset += hit[0]
            t = hit[1]
            cur = self.as_struct(t)
        return offset, self.type_size(t), t.attributes["DW_AT_name"].value.decode()

    def paths(self, sdie, prefix: str = "", depth: int = 1) -> Iterator[str]:
        """Every nested field path down to MAX_DEPTH, as written (no promotion)."""
        for m in self.members(sdie):
            if m.name == "_":
                continue
            yield prefix + m.name
            inner = self.as_struct(m.type)
            if inner is not None and depth < MAX_DEPTH:
                yield from self.paths(inner, prefix + m.name + ".", depth + 1)


@functools.cache
def oracle(binary: Path) -> DwarfOracle:
    return DwarfOracle(binary)


def layout_mismatches(layout: Layout, o: DwarfOracle) -> list[str]:
    bad = []
    want = {n for n in STRUCTS if n in o.structs}
    if set(layout.structs) != want:
        bad.append(f"structs: layout has {sorted(set(layout.structs) ^ want)} differently from DWARF")
    for name in sorted(want & set(layout.structs)):
        sdie, s = o.structs[name], layout.structs[name]
        if s.size != o.type_size(sdie):
            bad.append(f"{name}: size {s.size} != DWARF {o.type_size(sdie)}")
        for path in o.paths(sdie):
            if path not in s.fields:
                bad.append(f"{name}.{path}: missing")
        for path, f in s.fields.items():
            truth = o.resolve(sdie, path)
            if truth != (f.offset, f.size, f.type):
                bad.append(f"{name}.{path}: {(f.offset, f.size, f.type)} != DWARF {truth}")
    return bad


# --------------------------------------------------------------------------- other oracles


def nm_sizes(minor: str, binary: Path) -> dict[str, int]:
    out = {}
    for line in gt.go_tool(minor, "tool", "nm", "-size", str(binary)).splitlines():
        parts = line.split()
        if len(parts) == 4:
            out[parts[3]] = int(parts[1])
    return out


def _read_vaddr(elf: ELFFile, addr: int, size: int) -> bytes:
    for sec in elf.iter_sections():
        if sec["sh_addr"] <= addr and addr + size <= sec["sh_addr"] + sec["sh_size"] and sec["sh_addr"]:
            if sec["sh_type"] == "SHT_NOBITS":
                return bytes(size)
            start = addr - sec["sh_addr"]
            return sec.data()[start:start + size]
    raise AssertionError(f"{addr:#x} is in no section")


def runtime_wait_reason_strings(binary: Path) -> list[str]:
    """The runtime's own waitReasonStrings array, read out of the binary's data."""
    with open(binary, "rb") as fh:
        elf = ELFFile(fh)
        sym = elf.get_section_by_name(".symtab").get_symbol_by_name("runtime.waitReasonStrings")[0]
        raw = _read_vaddr(elf, sym["st_value"], sym["st_size"])
        out = []
        for i in range(0, len(raw), 16):
            ptr, n = struct.unpack_from("<QQ", raw, i)
            out.append(_read_vaddr(elf, ptr, n).decode() if n else "")
        return out


def _normalise_funcid(name: str) -> str | None:
    m = re.fullmatch(r"(?:internal/abi\.FuncID|runtime\.funcID)(_?)(\w+)", name)
    if m is None:
        return None
    return m.group(2) if m.group(1) else m.group(2)[0].lower() + m.group(2)[1:]


def constant_mismatches(layout: Layout, o: DwarfOracle) -> list[str]:
    bad = []
    c = o.consts
    for table, prefix in ((layout.g_status, "runtime."), (layout.p_status, "runtime.")):
        for name, v in table.items():
            if c.get(prefix + name) != v:
                bad.append(f"{name}: table {v} != DWARF {c.get(prefix + name)}")
    for name, v in c.items():
        if re.fullmatch(r"runtime\._Gscan\w+", name) and layout.g_status.get(name[8:]) != v:
            bad.append(f"{name}={v} is not in the table")
    reasons = {n: v for n, v in c.items() if re.fullmatch(r"runtime\.waitReason[A-Z]\w*", n)}
    if sorted(reasons.values()) != list(range(len(layout.wait_reasons))):
        bad.append(f"waitReason values in DWARF {sorted(reasons.values())} != 0..{len(layout.wait_reasons) - 1}")
    ids = {_normalise_funcid(n): v for n, v in c.items() if _normalise_funcid(n)}
    if ids != layout.func_ids:
        bad.append(f"funcIDs: table {layout.func_ids} != DWARF {ids}")
    flags = {m.group(1).lower(): v for n, v in c.items()
             if (m := re.fullmatch(r"(?:internal/abi\.FuncFlag|runtime\.funcFlag_)(\w+)", n))}
    if flags != layout.func_flags:
        bad.append(f"func flags: table {layout.func_flags} != DWARF {flags}")
    bad += map_and_label_mismatches(layout, o)
    for required in ("_Gidle", "_Grunnable", "_Grunning", "_Gsyscall", "_Gwaiting", "_Gdead", "_Gscan"):
        if required not in layout.g_status:
            bad.append(f"{required} missing")
    for required in ("wrapper", "systemstack", "goexit", "mstart", "morestack", "sigpanic", "asyncPreempt"):
        if required not in layout.func_ids:
            bad.append(f"funcID {required} missing")
    return bad


def map_and_label_mismatches(layout: Layout, o: DwarfOracle) -> list[str]:
    """The hash map constants and the pprof label store against the compiler's DWARF."""
    bad = []
    c = o.consts
    for name, v in layout.map_consts.items():
        if c.get("runtime." + name) != v:
            bad.append(f"map constant {name}: table {v} != DWARF {c.get('runtime.' + name)}")
    if not layout.map_consts and "runtime.evacuatedX" in c:
        bad.append("the table has no hash map constants but the runtime declares them")
    if layout.map_consts and "bucket<string,string>" in layout.structs:
        keys = layout.offset("bucket<string,string>", "keys")
        if c.get("runtime.dataOffset") != keys:
            bad.append(f"bucket<string,string>.keys at {keys} != runtime.dataOffset {c.get('runtime.dataOffset')}")
        if 1 << layout.map_consts["bucketCntBits"] != layout.field("bucket<string,string>", "tophash").size:
            bad.append("bucketCntBits disagrees with the size of bucket<string,string>.tophash")
    # labelMap is a struct (1.24+) or a typedef of map[string]string, whose hash<> the linker makes.
    if layout.label_store != ("list" if "runtime/pprof.labelMap" in o.structs else "map"):
        bad.append(f"label_store {layout.label_store!r}, but DWARF has labelMap as a "
                   f"{'struct' if 'runtime/pprof.labelMap' in o.structs else 'non-struct'}")
    if (layout.label_store == "map") != ("hash<string,string>" in o.structs):
        bad.append("label_store and the presence of hash<string,string> in DWARF disagree")
    return bad


# --------------------------------------------------------------------------- a live target


def park_and_read(binary: Path, layout: Layout) -> list[tuple[int, str, str]]:
    """(goid, state the runtime printed, wait reason read from g.waitreason) for each
    goroutine that the runtime's dump shows waiting and that is still waiting in memory."""
    with open(binary, "rb") as fh:
        allgs = ELFFile(fh).get_section_by_name(".symtab").get_symbol_by_name("runtime.allgs")[0]["st_value"]
    proc = subprocess.Popen([str(binary), "park"], stdout=subprocess.PIPE)
    try:
        out = b""
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 30
        while b"\nREADY\n" not in out:
            left = deadline - time.monotonic()
            assert left > 0, "the probe never printed READY"
            if sel.select(left):
                chunk = os.read(proc.stdout.fileno(), 1 << 16)
                assert chunk, "the probe exited early"
                out += chunk
        dump = out.decode()
        g_size = layout.size("g")
        o_goid, o_status, o_reason = (layout.offset("g", f) for f in ("goid", "atomicstatus", "waitreason"))
        fd = os.open(f"/proc/{proc.pid}/mem", os.O_RDONLY)
        try:
            ptr, n, _ = struct.unpack("<QQQ", os.pread(fd, 24, allgs))
            mem = {}
            for gp in struct.unpack(f"<{n}Q", os.pread(fd, 8 * n, ptr)):
                g = os.pread(fd, g_size, gp)
                goid = struct.unpack_from("<Q", g, o_goid)[0]
                mem[goid] = (struct.unpack_from("<I", g, o_status)[0], g[o_reason])
        finally:
            os.close(fd)
    finally:
        proc.kill()
        proc.wait()
    waiting = layout.g_status["_Gwaiting"]
    # What the runtime prints for a goroutine that was not waiting when it dumped.
    not_waiting = {"idle", "runnable", "running", "syscall", "dead", "copystack", "preempted", "leaked"}
    rows = []
    for m in re.finditer(r"^goroutine (\d+) [^\[\n]*\[([^\]\n]+)\]:$", dump, re.M):
        goid, state = int(m.group(1)), m.group(2).split(",")[0].strip()
        if state in not_waiting:
            continue
        if goid in mem and mem[goid][0] & ~layout.g_status["_Gscan"] == waiting:
            rows.append((goid, state, layout.wait_reason(mem[goid][1])))
    return rows


def assert_wait_reasons_match_the_runtime(minor: str) -> None:
    rows = park_and_read(probe(minor), layout_from_table(minor))
    assert len(rows) >= 10, f"too few parked goroutines to compare: {rows}"
    assert [r for r in rows if r[1] != r[2]] == []
    printed = {r[1] for r in rows}
    assert {"chan receive", "chan send", "select", "select (no cases)", "sleep", "IO wait"} <= printed


# --------------------------------------------------------------------------- fast tier (Go 1.27)


def test_table_equals_dwarf_of_a_fresh_static_build():
    assert layout_mismatches(layout_from_table(gt.FAST), oracle(probe(gt.FAST))) == []


def test_table_equals_dwarf_of_a_fresh_cgo_build():
    assert layout_mismatches(layout_from_table(gt.FAST), oracle(probe(gt.FAST, cgo=True))) == []


def test_dwarf_reader_equals_pyelftools():
    assert layout_mismatches(layout_from_dwarf(probe(gt.FAST)), oracle(probe(gt.FAST))) == []


def test_struct_sizes_equal_the_runtime_globals_in_go_tool_nm():
    _assert_nm_sizes(gt.FAST, probe(gt.FAST), layout_from_table(gt.FAST))


def _assert_nm_sizes(minor: str, binary: Path, lay: Layout) -> None:
    nm = nm_sizes(minor, binary)
    assert nm["runtime.g0"] == lay.size("g")
    assert nm["runtime.m0"] == lay.size("m")
    assert nm["runtime.sched"] == lay.size("schedt")
    assert nm["runtime.firstmoduledata"] == lay.size("moduledata")
    assert nm["runtime.allgs"] == lay.slice_size
    assert nm["runtime.waitReasonStrings"] == len(lay.wait_reasons) * lay.string_size


def test_key_fields_are_where_the_runtime_reader_needs_them():
    lay = layout_from_table(gt.FAST)
    g, gobuf = lay.struct("g"), lay.struct("gobuf")
    assert g.fields["sched"].type == "runtime.gobuf"
    assert lay.offset("g", "sched.sp") == g.fields["sched"].offset + gobuf.fields["sp"].offset
    assert lay.offset("g", "sched.pc") == g.fields["sched"].offset + gobuf.fields["pc"].offset
    assert (lay.offset("g", "stack.lo"), lay.offset("g", "stack.hi")) == (0, lay.ptr_size)
    for f in ("m", "syscallsp", "syscallpc", "atomicstatus", "goid", "waitreason", "startpc", "gopc",
              "parentGoid"):
        assert lay.has("g", f), f
    for f in ("g0", "curg", "procid", "alllink", "gsignal", "p"):
        assert lay.has("m", f), f
    for f in ("status", "schedtick", "syscalltick", "m", "runqhead", "runqtail", "runq", "runnext"):
        assert lay.has("p", f), f
    assert lay.field("m", "curg").type == "*runtime.g"
    assert lay.has("type") and lay.has("itab")


def test_embedded_struct_fields_are_promoted_like_go_selectors():
    lay = layout_from_table(gt.FAST)
    m = lay.struct("m")
    assert m.fields["mOS"].offset + lay.offset("mOS", "waitsema") == lay.offset("m", "waitsema")
    assert lay.offset("m", "waitsema") == lay.offset("m", "mOS.waitsema")


def test_constants_equal_the_compilers_dwarf_constants():
    assert constant_mismatches(layout_from_table(gt.FAST), oracle(probe(gt.FAST))) == []


def test_wait_reason_strings_equal_the_runtimes_own_array():
    assert list(layout_from_table(gt.FAST).wait_reasons) == runtime_wait_reason_strings(probe(gt.FAST))


def test_wait_reasons_read_from_memory_match_the_runtimes_goroutine_dump():
    assert_wait_reasons_match_the_runtime(gt.FAST)


def test_load_layout_uses_dwarf_when_present_and_the_table_when_stripped():
    full = load_layout(probe(gt.FAST), "go1.27.3")
    stripped = load_layout(probe(gt.FAST, stripped=True), "go1.27.3")
    table = layout_from_table(gt.FAST)
    assert full.source == "dwarf" and stripped.source == "table go1.27"
    assert layout_from_dwarf(probe(gt.FAST, stripped=True)) is None
    for lay in (full, stripped):
        assert lay.version == "1.27"
        assert (lay.wait_reasons, lay.g_status, lay.p_status, lay.func_ids) == (
            table.wait_reasons, table.g_status, table.p_status, table.func_ids)
        assert lay.structs == table.structs


def test_layout_from_dwarf_accepts_an_open_elffile():
    with open(probe(gt.FAST), "rb") as fh:
        assert layout_from_dwarf(ELFFile(fh)) == layout_from_dwarf(probe(gt.FAST))


def test_dwarf_reader_decodes_a_small_part_of_the_type_unit_and_stops_inflating_after_it():
    binary = probe(gt.FAST)
    o = oracle(binary)
    types_cu = o.structs["runtime.g"].cu
    total_dies = sum(1 for _ in types_cu.iter_DIEs())
    with open(binary, "rb") as fh:
        elf = ELFFile(fh)
        info, _ = dwarf.debug_info(elf, full=False)
        reader = dwarf.DwarfReader(info, dwarf.debug_section(elf, "abbrev"))
        assert L.layout_from_reader(reader, STRUCTS) is not None
        unit_end = types_cu.cu_offset + types_cu["unit_length"] + 4
        full, _ = dwarf.debug_info(elf, full=True)
    assert reader.decoded < 0.25 * total_dies
    assert unit_end <= len(info) <= len(full)


@functools.cache
def _inflated_sections(binary: Path) -> tuple[bytes, bytes]:
    with open(binary, "rb") as fh:
        elf = ELFFile(fh)
        return dwarf.debug_info(elf, full=True)[0], dwarf.debug_section(elf, "abbrev")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(struct_index=st.integers(0, 5), delta=st.integers(0, 1500), value=st.integers(0, 255),
       span=st.integers(1, 4))
def test_corrupt_dwarf_raises_only_corrupt_binary(struct_index, delta, value, span):
    binary = probe(gt.FAST)
    info, abbrev = _inflated_sections(binary)
    name = ("runtime.g", "runtime.m", "runtime.p", "runtime.schedt", "runtime.moduledata", "runtime.gobuf")[
        struct_index]
    at = oracle(binary).structs[name].offset + delta
    mutated = bytearray(info)
    mutated[at:at + span] = bytes([value]) * span
    try:
        L.layout_from_sections(bytes(mutated), abbrev)
    except CorruptBinary as e:
        assert "\n" not in str(e)


def test_a_file_that_is_not_elf_raises_corrupt_binary(tmp_path):
    bogus = tmp_path / "notelf"
    bogus.write_bytes(b"#!/bin/sh\necho hi\n" * 10)
    with pytest.raises(CorruptBinary):
        layout_from_dwarf(bogus)


def test_missing_field_raises_a_goflame_error_naming_it():
    lay = layout_from_table(gt.FAST)
    with pytest.raises(LayoutFieldMissing, match="nosuchfield") as e:
        lay.offset("g", "nosuchfield")
    assert isinstance(e.value, GoflameError)
    with pytest.raises(LayoutFieldMissing, match="nosuchstruct"):
        lay.size("nosuchstruct")


def test_g_status_names_include_the_scan_bit():
    lay = layout_from_table(gt.FAST)
    waiting = lay.g_status["_Gwaiting"]
    assert lay.g_status_name(waiting) == "_Gwaiting"
    assert lay.g_status_name(waiting | lay.g_status["_Gscan"]) == "_Gscanwaiting"


@pytest.mark.parametrize("version", ["1.17", "go1.28.1", "1.9", "banana"])
def test_unsupported_versions_raise_one_clear_error(version):
    with pytest.raises(UnsupportedGoVersion) as e:
        layout_from_table(version)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("version,minor,nearest", [("go1.18.10", "1.18", "1.19"), ("1.20", "1.20", "1.19")])
def test_versions_without_a_toolchain_use_the_nearest_table_and_say_so(version, minor, nearest):
    lay = layout_from_table(version)
    assert lay.source == f"table go{nearest} (nearest to go{minor})"
    assert lay.version == minor
    assert lay.structs == layout_from_table(nearest).structs


# --------------------------------------------------------------------------- matrix tier


@pytest.mark.matrix
@pytest.mark.parametrize("cgo", [False, True], ids=["static", "cgo"])
@pytest.mark.parametrize("minor", VERSIONS)
def test_matrix_table_equals_dwarf_of_a_fresh_build(minor, cgo):
    binary = probe(minor, cgo=cgo)
    table = layout_from_table(minor)
    assert table.source == f"table go{minor}"
    assert layout_mismatches(table, oracle(binary)) == []
    assert layout_mismatches(layout_from_dwarf(binary), oracle(binary)) == []
    _assert_nm_sizes(minor, binary, table)


@pytest.mark.matrix
@pytest.mark.parametrize("minor", VERSIONS)
def test_matrix_constants_equal_the_compiler_and_the_runtime(minor):
    table = layout_from_table(minor)
    assert constant_mismatches(table, oracle(probe(minor))) == []
    assert list(table.wait_reasons) == runtime_wait_reason_strings(probe(minor))


@pytest.mark.matrix
@pytest.mark.parametrize("minor", VERSIONS)
def test_matrix_wait_reasons_read_from_memory_match_the_goroutine_dump(minor):
    assert_wait_reasons_match_the_runtime(minor)


def test_a_program_without_pprof_labels_takes_their_structs_from_the_table_without_remark():
    binary = gt.build(Path(__file__).resolve().parent / "fixtures" / "parked", gt.BuildSpec())
    missing = set(L.LABEL_STRUCTS) - set(layout_from_dwarf(binary).structs)
    assert {"runtime/pprof.labelMap", "runtime/pprof.LabelSet"} <= missing  # it never imports runtime/pprof
    lay = load_layout(binary, "go1.27.3")
    table = layout_from_table(gt.FAST)
    assert lay.source == "dwarf"
    assert all(lay.structs[n] == table.structs[n] for n in L.LABEL_STRUCTS if n in table.structs)
