"""Runtime globals and the TLS slot of g, found in stripped binaries, against Go's own tools.

The oracle for every address is `go tool nm` on the unstripped twin (same source, same
toolchain, same flags minus `-s -w`), and for the TLS slot `go tool objdump` of
runtime.rt0_go plus the ELF facts (runtime.tlsg in the TLS segment). Nothing is compared
with goflame's own earlier output.

`-s -w` does not keep data at the same addresses: the build settings recorded in
.go.buildinfo (and a string in .rodata) grow by `-ldflags="-s -w"`, which shifts the data
sections by a few bytes. Their contents and sizes are unchanged, so stripped addresses are
compared as (section, offset in section), after checking the section sizes agree. A copy
stripped with binutils' `strip` (what distros do) keeps every address, and is compared
directly.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import time
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

import gotoolchain as gt
from conftest import FIXTURES
from goflame.binary.globals import GLOBALS, GlobalAddr, find_globals
from goflame.binary.gobinary import GoBinary
from goflame.errors import CorruptBinary, GoflameError

PROBE = FIXTURES / "binprobe"
TLSPROBE = FIXTURES / "tlsprobe"  # cgo with C thread-locals: g's slot is not at -8


# -- oracles ------------------------------------------------------------------------------------

def go_nm(minor: str, binary: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in gt.go_tool(minor, "tool", "nm", str(binary)).splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.setdefault(parts[2], int(parts[0], 16))
    return out


def expected_symbol(name: str, nm: dict[str, int]) -> tuple[str, int]:
    present = [(alias, nm[alias]) for alias in GLOBALS[name] if alias in nm]
    assert len(present) == 1, f"{name}: go tool nm lists {present}"
    return present[0]


def sections(binary: Path) -> list[tuple[str, int, int]]:
    with open(binary, "rb") as f:
        elf = ELFFile(f)
        return [(s.name, s["sh_addr"], s["sh_size"]) for s in elf.iter_sections() if s["sh_addr"]]


def section_offset(addr: int, secs: list[tuple[str, int, int]]) -> tuple[str, int]:
    hits = [(n, addr - a) for n, a, size in secs if a <= addr < a + size and n != ".tbss"]
    assert len(hits) == 1, f"{addr:#x} is in sections {hits}"
    return hits[0]


def objdump(minor: str, binary: Path, func_regexp: str) -> list[str]:
    """Instructions as `go tool objdump` prints them (Go assembler syntax)."""
    out = []
    for line in gt.go_tool(minor, "tool", "objdump", "-s", func_regexp, str(binary)).splitlines():
        cols = [c.strip() for c in line.split("\t") if c.strip()]
        if len(cols) >= 4 and cols[1].startswith("0x"):
            out.append(cols[3])
    return out


def go_objdump_g_tls_offset(minor: str, unstripped: Path) -> int:
    """The offset rt0_go stores g0 at, as Go's disassembler prints it: `MOVQ CX, FS:0xfffffff8`,
    or `MOVQ $-0x8, BX` ... `MOVQ CX, FS:0(BX)` (PIE: the linker relaxed the GOT load)."""
    insns = objdump(minor, unstripped, r"^runtime\.rt0_go(\.abi0)?$")
    consts: dict[str, int] = {}
    for i, ins in enumerate(insns):
        m = re.match(r"MOVQ \$(-?0x[0-9a-f]+), (\w+)$", ins)
        if m:
            consts[m.group(2)] = int(m.group(1), 16)
        if "FS:" in ins and i > 0 and insns[i - 1].startswith("LEAQ runtime.g0(SB)"):
            m = re.search(r"FS:(0x[0-9a-f]+)$", ins)
            if m:
                v = int(m.group(1), 16)
                return v - (1 << 32) if v >> 31 else v
            m = re.search(r"FS:0\((\w+)\)$", ins)
            assert m, ins
            return consts[m.group(1)]
    raise AssertionError("go tool objdump shows no store of g0 to FS in runtime.rt0_go")


def elf_tls_facts(unstripped: Path) -> tuple[int | None, int | None]:
    """(runtime.tlsg's offset from the thread pointer, per the TLS segment; settls's ADD) ."""
    with open(unstripped, "rb") as f:
        elf = ELFFile(f)
        tls = next((s for s in elf.iter_segments() if s["p_type"] == "PT_TLS"), None)
        symtab = elf.get_section_by_name(".symtab")
        tlsg = next((s for s in symtab.get_symbol_by_name("runtime.tlsg") or []
                     if s["st_info"]["type"] == "STT_TLS"), None) if symtab else None
        if tls is None or tlsg is None:
            return None, None
        align = max(tls["p_align"], 1)
        block = (tls["p_memsz"] + align - 1) // align * align  # x86-64 TLS variant II: block ends at tp
        return tlsg["st_value"] - block, block


# -- shared checks -------------------------------------------------------------------------------

def twin(spec: gt.BuildSpec) -> gt.BuildSpec:
    return gt.BuildSpec(go=spec.go, cgo=spec.cgo, stripped=False, pie=spec.pie, goarch=spec.goarch)


def check_symtab(spec: gt.BuildSpec) -> None:
    path = gt.build(PROBE, spec)
    nm = go_nm(spec.go, path)
    glb = find_globals(GoBinary(path))
    assert not glb.missing, dict(glb.missing)
    for name in GLOBALS:
        symbol, addr = expected_symbol(name, nm)
        g = glb[name]
        assert (g.addr, g.how, g.symbol) == (addr, "symtab", symbol), name


def check_disassembly_equals_symtab(spec: gt.BuildSpec, src: Path = PROBE) -> None:
    """The stripped-binary method, run on an unstripped binary: address for address."""
    path = gt.build(src, spec)
    nm = go_nm(spec.go, path)
    glb = find_globals(GoBinary(path), use_symtab=False)
    assert not glb.missing, dict(glb.missing)
    for name in GLOBALS:
        symbol, addr = expected_symbol(name, nm)
        g = glb[name]
        assert g.how in ("disassembly", "moduledata-scan"), (name, g.how)
        assert (hex(g.addr), g.symbol) == (hex(addr), symbol), name


def check_stripped_against_twin(spec: gt.BuildSpec, src: Path = PROBE) -> None:
    assert spec.stripped
    stripped, full = gt.build(src, spec), gt.build(src, twin(spec))
    b = GoBinary(stripped)
    assert b.stripped and not b.elf.symbols
    glb = find_globals(b)
    assert not glb.missing, dict(glb.missing)
    nm = go_nm(spec.go, full)
    s_secs, f_secs = sections(stripped), sections(full)
    for name in GLOBALS:
        _, want = expected_symbol(name, nm)
        g = glb[name]
        assert g.how == ("moduledata-scan" if name == "runtime.firstmoduledata" else "disassembly"), name
        sec, off = section_offset(want, f_secs)
        size_full = next(size for n, _, size in f_secs if n == sec)
        size_stripped = next(size for n, _, size in s_secs if n == sec)
        assert size_full == size_stripped, f"{sec} differs in size: the twin is no anchor"
        assert section_offset(g.addr, s_secs) == (sec, off), name


def check_g_tls_offset(spec: gt.BuildSpec, src: Path = PROBE) -> None:
    full = gt.build(src, twin(spec))
    want = go_objdump_g_tls_offset(spec.go, full)
    tlsg, _ = elf_tls_facts(full)
    if tlsg is not None:
        assert want == tlsg, "go tool objdump and the TLS segment disagree"
    else:  # internal linking, no runtime.tlsg: runtime.settls points FS just past m.tls[0]
        assert any(i.startswith("ADDQ $0x8, DI") for i in objdump(spec.go, full, r"^runtime\.settls(\.abi0)?$"))
        assert want == -8
    glb = find_globals(GoBinary(gt.build(src, spec)))
    assert (glb.g_tls_offset, glb.g_tls_how) == (want, "disassembly")


# -- fast tier: Go 1.27 --------------------------------------------------------------------------

FAST_SPECS = gt.matrix_specs(gt.FAST)
FAST_STRIPPED = [s for s in FAST_SPECS if s.stripped]
FAST_UNSTRIPPED = [s for s in FAST_SPECS if not s.stripped]


@pytest.mark.parametrize("spec", FAST_UNSTRIPPED, ids=lambda s: s.tag)
def test_unstripped_binary_takes_every_global_from_symtab(spec):
    check_symtab(spec)


@pytest.mark.parametrize("spec", FAST_UNSTRIPPED, ids=lambda s: s.tag)
def test_disassembly_finds_every_global_at_its_symbol_address(spec):
    check_disassembly_equals_symtab(spec)


@pytest.mark.parametrize("spec", FAST_STRIPPED, ids=lambda s: s.tag)
def test_stripped_binary_finds_every_global_where_go_nm_puts_it_in_the_twin(spec):
    check_stripped_against_twin(spec)


@pytest.mark.parametrize("spec", FAST_SPECS, ids=lambda s: s.tag)
def test_g_tls_offset_matches_go_objdump_and_the_tls_segment(spec):
    check_g_tls_offset(spec)


@pytest.mark.parametrize("pie", [False, True], ids=["exe", "pie"])
def test_g_tls_slot_moves_when_c_code_has_thread_locals(pie):
    spec = gt.BuildSpec(cgo=True, stripped=True, pie=pie)
    full = gt.build(TLSPROBE, twin(spec))
    tlsg, _ = elf_tls_facts(full)
    assert tlsg is not None and tlsg != -8  # the fixture does what it is for
    check_g_tls_offset(spec, TLSPROBE)
    check_stripped_against_twin(spec, TLSPROBE)


@pytest.mark.parametrize("pie", [False, True], ids=["exe", "pie"])
@pytest.mark.parametrize("cgo", [False, True], ids=["static", "cgo"])
def test_distro_stripped_copy_keeps_addresses_and_is_found_by_disassembly(tmp_path, cgo, pie):
    full = gt.build(PROBE, gt.BuildSpec(cgo=cgo, pie=pie))
    copy = tmp_path / "stripped"
    shutil.copy(full, copy)
    subprocess.run(["strip", "--strip-all", str(copy)], check=True)
    nm = go_nm(gt.FAST, full)
    b = GoBinary(copy)
    assert b.stripped
    glb = find_globals(b)
    assert not glb.missing, dict(glb.missing)
    for name in GLOBALS:
        _, want = expected_symbol(name, nm)
        assert glb[name].addr == want, name
        assert glb[name].how != "symtab"


def build_unoptimized(src: Path, minor: str) -> Path:
    """`-gcflags=all=-N -l` (what delve users build): no inlining, so atomics are calls."""
    h = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sorted(src.glob("*.go"))))
    out = gt.FIXTURES / f"{src.name}-{h.hexdigest()[:16]}" / f"go{minor}-amd64-static-N-l" / src.name
    if out.exists():
        return out
    work = out.parent / "src"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(src, work)
    (work / "go.mod").write_text(f"module {src.name}\n\ngo 1.19\n")
    root = gt.goroot(minor)
    subprocess.run([str(root / "bin" / "go"), "build", "-gcflags=all=-N -l", "-o", str(out) + ".tmp", "."],
                   cwd=work, env=gt.go_env(root, CGO_ENABLED="0"), check=True, capture_output=True)
    Path(str(out) + ".tmp").rename(out)
    return out


def test_unoptimized_runtime_is_read_through_its_atomic_calls():
    path = build_unoptimized(PROBE, gt.FAST)
    nm = go_nm(gt.FAST, path)
    glb = find_globals(GoBinary(path), use_symtab=False)
    assert not glb.missing, dict(glb.missing)
    for name in GLOBALS:
        assert glb[name].addr == expected_symbol(name, nm)[1], name


def test_build_version_string_is_what_go_version_reports():
    path = gt.build(PROBE, gt.BuildSpec(stripped=True, pie=True))
    b = GoBinary(path)
    g = find_globals(b)["runtime.buildVersion"]
    ptr = b.elf.read_ptr_relocated(g.addr)
    n = b.elf.read_ptr(g.addr + 8)
    text = bytes(b.elf.read(ptr, n)).decode()
    reported = gt.go_tool(gt.FAST, "version", str(path)).split(":", 1)[1].strip()
    assert text == reported.split()[0]


def test_globals_record_is_frozen_ordered_and_iterable():
    glb = find_globals(GoBinary(gt.build(PROBE, gt.BuildSpec(stripped=True))))
    assert [g.name for g in glb] == list(GLOBALS)
    assert all(isinstance(g, GlobalAddr) for g in glb)
    assert len(glb) == len(GLOBALS) and "runtime.allgs" in glb
    assert glb.get("runtime.allgs") is glb["runtime.allgs"]
    assert glb.get("runtime.nosuchglobal") is None
    with pytest.raises(FrozenInstanceError):
        glb.g_tls_offset = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        glb.found["runtime.allgs"] = glb["runtime.allgs"]  # type: ignore[index]


def _patch_function(src: Path, dst: Path, func: str, fill: bytes) -> None:
    """Overwrite a function's code (a corrupt or unfamiliar binary), keeping everything else."""
    b = GoBinary(src)
    f = b.pclntab.func_by_name(func)
    off = b.elf.vaddr_to_offset(f.entry)
    b.close()
    data = bytearray(src.read_bytes())
    data[off : off + (f.end - f.entry)] = (fill * (f.end - f.entry))[: f.end - f.entry]
    dst.write_bytes(bytes(data))


def test_unrecognisable_code_leaves_a_global_missing_not_guessed(tmp_path):
    spec = gt.BuildSpec(stripped=True)
    src = gt.build(PROBE, spec)
    bad = tmp_path / "probe"
    _patch_function(src, bad, "runtime.newproc1", b"\x90")  # nops: no `goidgen.Add(16)` any more
    _patch_function(bad, bad, "runtime.schedinit", b"\xcc")
    glb = find_globals(GoBinary(bad))
    assert "runtime.sched" not in glb
    assert "runtime.buildVersion" not in glb
    with pytest.raises(CorruptBinary, match=r"runtime\.sched .*") as e:
        glb.require("runtime.sched")
    assert str(bad) in str(e.value)
    assert isinstance(e.value, GoflameError)
    # Everything found elsewhere is still right.
    good = find_globals(GoBinary(src))
    for g in glb:
        assert good[g.name].addr == g.addr


def test_finding_globals_in_a_stripped_binary_is_cheap():
    path = gt.build(PROBE, gt.BuildSpec(cgo=True, stripped=True, pie=True))
    find_globals(GoBinary(path))  # warm imports and the page cache
    t0 = time.process_time()
    b = GoBinary(path)
    glb = find_globals(b)
    spent = time.process_time() - t0
    assert not glb.missing
    assert spent < 0.5, f"GoBinary + find_globals took {spent:.3f} s of CPU"


# -- matrix tier: every toolchain, amd64 and arm64 ------------------------------------------------

MATRIX_SPECS = [s for v in gt.MATRIX for s in gt.matrix_specs(v) + gt.matrix_specs(v, "arm64")]


@pytest.mark.matrix
@pytest.mark.parametrize("spec", MATRIX_SPECS, ids=lambda s: s.tag)
def test_matrix_globals_match_go_nm(spec):
    if spec.stripped:
        check_stripped_against_twin(spec)
    else:
        check_symtab(spec)
        check_disassembly_equals_symtab(spec)
    if spec.goarch == "amd64":
        check_g_tls_offset(spec)
    else:
        assert find_globals(GoBinary(gt.build(PROBE, spec))).g_tls_offset is None  # g lives in R28
