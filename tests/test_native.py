"""--native: C frames (cgo, libc, vDSO) unwound by CFI or prologue analysis, stitched into
goroutine stacks. Oracles: readelf's decoding of the same CFI, nm's symbols, perf's DWARF
unwinding of the same run, the runtime's own goroutine dump, and call chains known by
construction of the cgochain fixture (tests/fixtures/cgochain).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import gotoolchain as gt
from conftest import (
    FIXTURES,
    binomial_upper_ok,
    effective_samples,
    read_ready_line,
    share_tolerance,
    wait_until,
)
from conftest import record_until as rounds_until
from test_dump import parse_dump

if TYPE_CHECKING:
    from goflame.profile import Sample

GOFLAME = [sys.executable, "-m", "goflame.cli"]
LIBC = Path("/lib/x86_64-linux-gnu/libc.so.6").resolve()
C_CHAIN = ["c_outer", "c_middle", "c_inner"]  # call order: outermost first
GO_CHAIN = ["main.chainWorker", "main.goLevel1", "main.goLevel2", "main.callC", "main._Cfunc_c_outer",
            "runtime.cgocall", "runtime.asmcgocall"]
CGO_WRAPPER = re.compile(r"^_cgo(exp)?_[0-9a-f]+_(Cfunc_)?(\w+)$")
OWN_SHARES = {"c_outer": 20.0, "c_middle": 30.0, "c_inner": 50.0}  # chain.h: 2 / 3 / 5 units
DWARF_REGS = {0: "rax", 1: "rdx", 2: "rcx", 3: "rbx", 4: "rsi", 5: "rdi", 6: "rbp", 7: "rsp",
              **{i: f"r{i}" for i in range(8, 16)}, 16: "ra"}


# -- fixtures ---------------------------------------------------------------------------------------
def cgochain(tmp_root: Path, frame_pointers: bool = False, spec: gt.BuildSpec | None = None) -> Path:
    """The fixture, -O2 without frame pointers; or its twin with -fno-omit-frame-pointer."""
    spec = spec or gt.BuildSpec(cgo=True)
    src = FIXTURES / "cgochain"
    if not frame_pointers:
        return gt.build(src, spec)
    twin = tmp_root / "cgochain_fp"
    twin.mkdir(exist_ok=True)
    for p in src.iterdir():
        text = p.read_text()
        if p.name == "main.go":
            text = text.replace("#cgo CFLAGS: -O2 -fomit-frame-pointer", "#cgo CFLAGS: -O2 -fno-omit-frame-pointer")
            assert "-fno-omit-frame-pointer" in text
        (twin / p.name).write_text(text)
    return gt.build(twin, spec, name="cgochain_fp")


class Fixture:
    def __init__(self, binary: Path, *args: str):
        self.proc = subprocess.Popen([str(binary), *args], stdout=subprocess.PIPE, text=True)
        try:
            read_ready_line(self.proc, "cgochain")
        except BaseException:
            self.close()
            raise
        self.pid = self.proc.pid

    def runtime_dump(self, path: Path) -> str:
        """The runtime's own dump of every goroutine (runtime.Stack(buf, true)), written now."""
        return self._ask(signal.SIGUSR1, path, "its runtime dump")

    def callback_traceback(self, dump_path: Path) -> str:
        """The callback goroutine's own traceback (runtime.Stack(buf, false)), written from
        inside goCallbackSpin: a moment it is known to be in Go code, within the callback."""
        return self._ask(signal.SIGUSR2, Path(str(dump_path) + ".callback"), "the callback's own traceback")

    def _ask(self, sig: int, path: Path, what: str) -> str:
        path.unlink(missing_ok=True)
        os.kill(self.pid, sig)
        wait_until(path.exists, f"the fixture to write {what} to {path}")
        return path.read_text()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> Fixture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def goflame(*args: str, timeout: float = 180) -> str:
    r = subprocess.run([*GOFLAME, *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r.stdout


def record_until(pid: int, tmp_path: Path, args: list[str], enough: Callable[[Counter[tuple[str, ...]]], bool],
                 what: str, *, seconds: float = 3, max_seconds: float = 180) -> Counter[tuple[str, ...]]:
    """conftest.record_until (rounds of `goflame record` until the test has the samples it
    needs), stacks innermost frame first."""
    def innermost_first(stacks: dict[str, int]) -> Counter[tuple[str, ...]]:
        return Counter({tuple(reversed(k.split(";"))): n for k, n in stacks.items()})

    return innermost_first(rounds_until(pid, tmp_path, args, lambda st: enough(innermost_first(st)), what,
                                        seconds=seconds, max_seconds=max_seconds))


def strip_wrapper(name: str) -> str:
    """cgo's generated names without their package hash: _cgo_Cfunc_f, _cgoexp_f."""
    m = CGO_WRAPPER.match(name)
    if m is None:
        return name
    return f"_cgoexp_{m.group(3)}" if m.group(1) else f"_cgo_Cfunc_{m.group(3)}"


def nm(path: Path, *flags: str) -> dict[int, set[str]]:
    """Address -> names of defined text symbols, by binutils' nm."""
    out = subprocess.run(["nm", "--defined-only", *flags, str(path)], capture_output=True, text=True).stdout
    by_addr: dict[int, set[str]] = {}
    for line in out.splitlines():
        parts = line.split(None, 2)  # Go names can hold spaces: go.shape.interface {}
        if len(parts) == 3 and parts[1] in "TtWwi":
            by_addr.setdefault(int(parts[0], 16), set()).add(parts[2].split("@")[0])
    return by_addr


# -- CFI and symbols against binutils -----------------------------------------------------------------
def readelf_rows(path: Path) -> list[tuple[int, str, dict[str, str]]]:
    """(loc, CFA, {register: rule}) rows of `readelf --debug-dump=frames-interp` for .eh_frame."""
    out = subprocess.run(["readelf", "-wF", str(path)], capture_output=True, text=True).stdout
    rows, cols, section, in_fde = [], None, "", False
    for line in out.splitlines():
        if line.startswith("Contents of the"):
            section = line
        if ".eh_frame" not in section:
            continue
        if " FDE " in line or " CIE " in line:
            cols, in_fde = None, " FDE " in line  # a CIE's own table (LOC 0) is no function's
        elif line.startswith("   LOC") and in_fde:
            cols = line.split()[2:]
        elif cols is not None and (m := re.match(r"^([0-9a-f]{16}) (\S+)\s*(.*)$", line)):
            regs: list[str] = []
            for tok in m.group(3).split():
                if tok.startswith("(") and regs:
                    regs[-1] = tok.strip("()")  # a register rule: "r3 (rbx)"
                else:
                    regs.append(tok)
            rows.append((int(m.group(1), 16), m.group(2), dict(zip(cols, regs, strict=True))))
    return rows


def describe_row(row) -> tuple[str, dict[str, str]]:  # noqa: ANN001
    from goflame.unwind.cfi import EXPR, OFFSET, REGISTER, SAME, UNDEF, VAL_EXPR, VAL_OFFSET

    cfa = "exp" if row.cfa_reg < 0 else f"{DWARF_REGS.get(row.cfa_reg, row.cfa_reg)}+{row.cfa_offset}"
    rules = {}
    for reg, (kind, arg) in row.rules:
        rules[DWARF_REGS.get(reg, str(reg))] = {
            OFFSET: lambda a: f"c{a:+d}", VAL_OFFSET: lambda a: f"v{a:+d}",
            REGISTER: lambda a: DWARF_REGS.get(a, str(a)), EXPR: lambda a: "exp", VAL_EXPR: lambda a: "vexp",
            UNDEF: lambda a: "u", SAME: lambda a: "s"}[kind](arg)
    return cfa, rules


def vdso_image(tmp_path: Path) -> Path:
    """This process's vDSO (the same kernel's as every target here), copied out of memory."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith("[vdso]"):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            with open("/proc/self/mem", "rb") as f:
                f.seek(lo)
                data = f.read(hi - lo)
            out = tmp_path / "vdso.so"
            out.write_bytes(data)
            return out
    raise AssertionError("no [vdso] mapping")


def test_cfi_rows_equal_readelfs_decoding_for_libc_the_fixture_and_the_vdso(tmp_path):
    from goflame.unwind.images import ImageCache

    cache = ImageCache()
    for path in (LIBC, cgochain(tmp_path), vdso_image(tmp_path)):
        img = cache.open_file(str(path), str(path))
        assert img is not None and img.eh is not None, path
        want = readelf_rows(path)
        assert len(want) > 20, path
        checked = 0
        for loc, cfa, regs in want:
            if img.eh.find(loc) is None:
                assert loc < 0x1000, f"{path}: no FDE for {loc:#x}"
                continue  # an FDE of a discarded section (pc 0), absent from .eh_frame_hdr too
            got_cfa, got_rules = describe_row(img.eh.row_at(loc))
            assert got_cfa == cfa, (path, hex(loc), got_cfa, cfa)
            for col, rule in regs.items():
                assert got_rules.get(col, "u") == rule, (path, hex(loc), col, got_rules, regs)
            checked += 1
        assert checked >= 0.99 * len(want), (path, checked, len(want))
        assert img.eh.decode_all() >= checked


def test_native_symbols_agree_with_nm(tmp_path):
    from goflame.unwind.images import ImageCache

    cache = ImageCache()
    for path, flags in ((LIBC, ("-D",)), (cgochain(tmp_path), ())):
        img = cache.open_file(str(path), str(path))
        syms = nm(path, *flags)
        starts = sorted(syms)
        checked = 0
        for a, b in zip(starts, starts[1:], strict=False):
            if not any(lo <= a < hi for lo, hi in img.exec_ranges) or b - a < 2:
                continue
            s = img.symbol(a + (b - a) // 2)
            if s is None:
                continue  # past a sized symbol's end: padding between functions
            assert s.start == a and s.name in syms[a], (path, hex(a), s, syms[a])
            checked += 1
        assert checked > 50, path
    fixture = cache.open_file(str(cgochain(tmp_path)), "cgochain")
    by_name = {n: a for a, names in nm(cgochain(tmp_path)).items() for n in names}
    for fn in [*C_CHAIN, "asm_outer", "asm_inner", "goCallback", "c_callgo"]:
        assert fixture.symbol(by_name[fn] + 1).name == fn


def test_prologue_analysis_agrees_with_the_cfi_of_compiled_code(tmp_path):
    """Where a table exists it is the truth: the heuristic must find the same CFA almost always."""
    import capstone

    from goflame.unwind.images import ImageCache
    from goflame.unwind.prologue import PrologueAnalyzer

    analyzer = PrologueAnalyzer()
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    cache = ImageCache()
    for path, limit, floor in ((cgochain(tmp_path), None, 0.97), (LIBC, 300, 0.93)):
        img = cache.open_file(str(path), str(path))
        agree = total = 0
        for sym in img._symbol_table()[1][:limit]:
            fde = img.eh.find(sym.start) if sym.size else None
            if fde is None or fde.begin != sym.start:
                continue
            code = img.code(sym.start, sym.size)
            for addr, _size, mnemonic, _ops in md.disasm_lite(code, sym.start):
                row = img.eh.row_at(addr)
                if row is None or row.cfa_reg < 0 or mnemonic in ("nop", "int3"):
                    continue  # padding after the last instruction is never executed
                off = addr - sym.start
                rule = analyzer.analyze(code[:off], sym.start, addr, code[off:off + 64], sym.start + sym.size)
                if rule is not None and rule.cfa_reg != row.cfa_reg:
                    continue  # rsp- vs rbp-based: the same CFA can be written both ways
                total += 1
                agree += rule is not None and rule.cfa_offset == row.cfa_offset
        assert total > 300, path
        assert agree / total >= floor, (path, agree, total)


# -- CPU samples through cgo, against perf --------------------------------------------------------------
def perf_stacks(data: Path) -> Counter[tuple[str, ...]]:
    """perf script's stacks, innermost first."""
    out = subprocess.run(["perf", "script", "-i", str(data), "-F", "ip,sym"], capture_output=True, text=True,
                         timeout=300).stdout
    c: Counter[tuple[str, ...]] = Counter()
    for block in out.split("\n\n"):
        syms = [ln.split(None, 1)[1].split("+")[0].strip() for ln in block.strip().splitlines()
                if len(ln.split()) > 1]
        if syms:
            c[tuple(syms)] += 1
    return c


def c_leaf_shares(stacks: Counter[tuple[str, ...]]) -> tuple[dict[str, float], int]:
    per: Counter[str] = Counter()
    for stack, n in stacks.items():
        if stack and stack[0] in C_CHAIN:
            per[stack[0]] += n
    total = sum(per.values())
    assert total > 0, "no sample in the C chain"
    return {name: 100 * per[name] / total for name in C_CHAIN}, total


def assert_callbacks_stitched(stacks: Counter[tuple[str, ...]]) -> None:
    """Samples in the Go callback show the C caller and the Go code that called C below it.

    A sample is taken from a racing target, so as for the C chain a few torn walks are
    tolerated (at most 5 % of the samples, binomially); the offending stacks are printed whole.
    """
    callback = {s: n for s, n in stacks.items() if s[0] == "main.goCallbackSpin"}
    assert callback, "no sample in the Go callback"
    bad = {s: n for s, n in callback.items() if not ("c_callgo" in s and "main.goCaller" in s)}
    assert binomial_upper_ok(sum(bad.values()), sum(callback.values()), 0.05), "callback stacks not stitched (of {}):\n{}".format(
        sum(callback.values()), "\n".join(f"{n} {';'.join(reversed(s))}" for s, n in bad.items()))


def full_chain(stack: tuple[str, ...]) -> bool:
    """A sample in the C chain shows it up to its leaf, cgo's wrapper, the Go chain, goexit."""
    depth = C_CHAIN.index(stack[0]) + 1
    want = [*reversed(C_CHAIN[:depth]), "_cgo_Cfunc_c_outer", *reversed(GO_CHAIN)]
    return ([strip_wrapper(f) for f in stack[: len(want)]] == want
            and stack[len(want):] in (("main.main.gowrap1", "runtime.goexit"), ("runtime.goexit",)))


def record_alongside_perf(pid: int, tmp_path: Path, *, want: int, max_seconds: float
                          ) -> tuple[Counter[tuple[str, ...]], Counter[tuple[str, ...]], float]:
    """goflame --native and `perf record --call-graph dwarf` on the same process at once, and
    the moments goflame's C samples are worth (`effective_samples`).

    goflame records in rounds until its C samples are worth `want` moments: on a loaded
    machine the target gets less CPU and both profilers fewer samples, and a share measured on
    n moments is only good to ~50/sqrt(n) points. `max_seconds` is a cap no machine that can
    run the suite reaches (a round yields ~1,500 moments with a CPU to itself: the fixture's
    idle Ms take the other CPU now and then, and goflame freezes one CPU per tick).
    """
    perf_data = tmp_path / "perf.data"
    perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "--call-graph", "dwarf,512",
                             "-p", str(pid), "-o", str(perf_data), "--", "sleep", str(max_seconds + 60)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # perf has its file open (it writes the header first) before goflame starts: the
        # workload is stationary, so perf's window need only cover goflame's.
        wait_until(lambda: perf_data.exists() and perf_data.stat().st_size > 0, "perf record to start")
        ours = record_until(pid, tmp_path, ["--native", "-r", "500", "--keep-raw"],
                            lambda st: effective_samples(tmp_path, in_c) >= want,
                            f"C samples worth {want} moments", seconds=6, max_seconds=max_seconds)
    finally:
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=120)
    return ours, perf_stacks(perf_data), effective_samples(tmp_path, in_c)


def in_c(sample: Sample) -> bool:
    return bool(sample.frames) and sample.frames[0].function in C_CHAIN


def check_cpu_samples_through_cgo_as_perf_sees_them(tmp_path: Path, frame_pointers: bool) -> None:
    binary = cgochain(tmp_path, frame_pointers)
    with Fixture(binary, "-mode", "chain", "-workers", "1") as fx:
        ours, theirs, moments = record_alongside_perf(fx.pid, tmp_path, want=6000, max_seconds=300)
    # Every C sample: the C chain up to the leaf, the cgo wrapper, then the whole Go chain.
    c_samples = Counter({s: n for s, n in ours.items() if s[0] in C_CHAIN})
    complete = sum(n for s, n in c_samples.items() if full_chain(s))
    total_c = sum(c_samples.values())
    # The goroutine's syscall{sp,pc} are read for the M's goroutine as of the stop (not as of the
    # last refresh of the Ms): 0 of ~7,800 samples lost their Go part in three runs; the bar is 1 %.
    incomplete = Counter({s: n for s, n in c_samples.items() if not full_chain(s)})
    assert binomial_upper_ok(total_c - complete, total_c, 0.01), (complete, total_c, incomplete.most_common(3))
    # perf sees the same C part of these stacks (its DWARF unwinding stops at the stack switch,
    # and now and then earlier: the instrument must see 95 % of them whole to be trusted).
    perf_c = perf_complete = 0
    for stack, n in theirs.items():
        if stack[0] in C_CHAIN:
            depth = C_CHAIN.index(stack[0]) + 1
            perf_c += n
            if [strip_wrapper(f) for f in stack[: depth + 1]] == [*reversed(C_CHAIN[:depth]), "_cgo_Cfunc_c_outer"]:
                perf_complete += n
    assert perf_c >= 1000 and binomial_upper_ok(perf_c - perf_complete, perf_c, 0.05), (perf_complete, perf_c)
    ours_shares, _ = c_leaf_shares(c_samples)
    theirs_shares, n_theirs = c_leaf_shares(theirs)
    n_ours = int(moments)
    # Within 2 points of perf and 3 of the construction, or Z binomial standard errors of the
    # moments when those are more (each profiler has thousands: ~3 points).
    for name in C_CHAIN:
        p = OWN_SHARES[name]
        between = share_tolerance(p, n_ours, n_theirs, floor=2.0)
        against_truth = share_tolerance(p, n_ours, floor=3.0)
        assert abs(ours_shares[name] - theirs_shares[name]) <= between, (name, ours_shares, theirs_shares, n_ours,
                                                                         n_theirs)
        assert abs(ours_shares[name] - p) <= against_truth, (name, ours_shares, OWN_SHARES, n_ours)


@pytest.mark.matrix  # ~30 s: the slow tier (CI runs it after the fast one)
def test_cpu_samples_show_the_go_chain_the_cgo_boundary_and_the_c_chain_as_perf_does(tmp_path):
    """C built -O2 without frame pointers: the C chain is unwound by its CFI alone."""
    check_cpu_samples_through_cgo_as_perf_sees_them(tmp_path, frame_pointers=False)


@pytest.mark.matrix
def test_matrix_cpu_samples_through_cgo_with_frame_pointers_as_perf_does(tmp_path):
    """The twin built with -fno-omit-frame-pointer (CFI and the rbp chain both available)."""
    check_cpu_samples_through_cgo_as_perf_sees_them(tmp_path, frame_pointers=True)


# -- C calling Go, a goroutine blocked in libc ------------------------------------------------------------
CALLBACK_GO_INNER = ["main.goCallbackSpin", "main.goCallback"]
CALLBACK_RUNTIME = ["_cgoexp_goCallback", "runtime.cgocallbackg1", "runtime.cgocallbackg", "runtime.cgocallback",
                    "crosscall2"]  # innermost first: the //export wrapper, the runtime's way in from C
CALLBACK_C = ["goCallback", "c_callgo", "_cgo_Cfunc_c_callgo"]
CALLBACK_GO_OUTER = ["main._Cfunc_c_callgo", "main.goCaller", "main.callbackWorker"]


def test_c_calling_back_into_go_shows_go_then_c_then_go_again_in_one_stack(tmp_path):
    binary = cgochain(tmp_path)
    dump_path = tmp_path / "runtime.txt"
    with Fixture(binary, "-mode", "callback", "-dump", str(dump_path)) as fx:
        stacks = record_until(fx.pid, tmp_path, ["--native"],
                              lambda st: sum(n for s, n in st.items() if s[0] == "main.goCallbackSpin") >= 20,
                              "20 samples in the Go callback")
        # The goroutine's own traceback, taken by itself inside the callback: a dump of all
        # goroutines stops the world, and catches this one in C more often than in Go.
        (own,) = parse_dump(fx.callback_traceback(dump_path)).values()
    runtime_go = [f for f, _ in own.frames]
    # The runtime's own traceback of the callback goroutine: Go frames only, C left out.
    assert runtime_go[:2] == CALLBACK_GO_INNER and runtime_go[2:5] == CALLBACK_GO_OUTER, runtime_go
    # goflame: the same Go frames, with the C frames that called back in between.
    in_go = {s: n for s, n in stacks.items() if s[0] == "main.goCallbackSpin"}
    for stack in in_go:
        names = [strip_wrapper(f) for f in stack]
        i = names.index("main.goCallback")
        assert names[: i + 1] == CALLBACK_GO_INNER, names
        j = names.index("goCallback")  # the C stub cgo generates for the //export
        assert names[i + 1 : j] == CALLBACK_RUNTIME and names[j : j + 3] == CALLBACK_C, names
        k = names.index("main._Cfunc_c_callgo")
        assert names[j + 3 : k] == ["runtime.asmcgocall", "runtime.cgocall"], names
        assert names[k : k + 3] == CALLBACK_GO_OUTER, names


def test_a_goroutine_parked_inside_a_callback_dumps_with_the_c_frames_between_its_go_frames(tmp_path):
    binary = cgochain(tmp_path)
    dump_path = tmp_path / "runtime.txt"
    with Fixture(binary, "-mode", "callbackpark", "-dump", str(dump_path)) as fx:
        doc = json.loads(goflame("dump", "--pid", str(fx.pid), "--native", "--json"))
        theirs = parse_dump(fx.runtime_dump(dump_path))
    want = next(b for b in theirs.values() if any(f == "main.goCallbackPark" for f, _ in b.frames))
    assert want.state.startswith("chan receive")
    g = next(g for g in doc["goroutines"] if any(f["function"] == "main.goCallbackPark" for f in g["frames"]))
    frames = g["frames"]
    kinds = [f.get("kind", "go") for f in frames]
    first_c, last_c = kinds.index("native"), len(kinds) - 1 - kinds[::-1].index("native")
    assert set(kinds[:first_c]) == {"go"} and set(kinds[last_c + 1:]) == {"go"}, kinds  # Go, C, Go again
    assert [strip_wrapper(f["function"]) for f in frames[first_c : last_c + 1]] == \
        ["goCallbackPark", "c_callgo_park", "_cgo_Cfunc_c_callgo_park"], frames
    go = [(f["function"], f"{f['file']}:{f['line']}") for f in frames if f.get("kind", "go") == "go"]
    assert go == [(f, pos.strip().split(" +")[0]) for f, pos in want.frames], (go, want.frames)


def test_dump_native_shows_libc_frames_of_a_goroutine_blocked_in_read(tmp_path):
    binary = cgochain(tmp_path)
    dump_path = tmp_path / "runtime.txt"
    with Fixture(binary, "-mode", "block", "-dump", str(dump_path)) as fx:
        maps = Path(f"/proc/{fx.pid}/maps").read_text()
        doc = json.loads(goflame("dump", "--pid", str(fx.pid), "--native", "--json"))
        text = goflame("dump", "--pid", str(fx.pid), "--native")
        theirs = parse_dump(fx.runtime_dump(dump_path))
    blocked = [g for g in doc["goroutines"] if any(f["function"] == "main.blockInC" for f in g["frames"])]
    assert len(blocked) == 1, doc["goroutines"]
    frames = blocked[0]["frames"]
    # libc's read(2) wrapper first: nm names this address (its aliases included).
    libc_syms = nm(LIBC, "-D")
    read_addrs = [a for a, names in libc_syms.items() if "read" in names]
    assert len(read_addrs) == 1
    libc_base = min(int(line.split("-")[0], 16) - int(line.split()[2], 16)
                    for line in maps.splitlines() if line.endswith(str(LIBC)) or line.endswith("/libc.so.6"))
    top = frames[0]
    assert top["kind"] == "native" and Path(top["file"]).name == "libc.so.6", frames[:3]
    assert top["function"] in libc_syms[read_addrs[0]], (top, libc_syms[read_addrs[0]])
    sizes = subprocess.run(["nm", "-D", "-S", "--defined-only", str(LIBC)], capture_output=True, text=True).stdout
    size = next(int(line.split()[1], 16) for line in sizes.splitlines() if line.split()[-1].split("@")[0] == "read")
    assert read_addrs[0] <= int(top["pc"], 16) - libc_base < read_addrs[0] + size
    names = [strip_wrapper(f["function"]) for f in frames]
    assert names[1:3] == ["c_block_read", "_cgo_Cfunc_c_block_read"], names
    # Then the Go frames, exactly as the runtime shows this goroutine.
    want = next(b for b in theirs.values() if any(f == "main.blockInC" for f, _ in b.frames))
    assert want.state == "syscall"
    go = [(f["function"], f"{f['file']}:{f['line']}") for f in frames if f.get("kind", "go") == "go"]
    assert go == [(f, pos.strip().split(" +")[0]) for f, pos in want.frames], (go, want.frames)
    assert "read\n\t" in text and "c_block_read\n\t" in text and " pc=0x" in text


# -- no CFI: prologue analysis ----------------------------------------------------------------------------
def fde_ranges(path: Path) -> list[tuple[int, int]]:
    out = subprocess.run(["readelf", "-wf", str(path)], capture_output=True, text=True).stdout
    return [(int(a, 16), int(b, 16)) for a, b in re.findall(r"FDE cie=\S+ pc=([0-9a-f]+)\.\.([0-9a-f]+)", out)]


def test_frames_without_cfi_are_recovered_by_prologue_analysis_and_marked_heuristic(tmp_path):
    binary = cgochain(tmp_path)
    syms = {n: a for a, names in nm(binary).items() for n in names}
    ranges = fde_ranges(binary)
    for fn in ("asm_outer", "asm_inner"):
        assert not any(lo <= syms[fn] < hi for lo, hi in ranges), f"{fn} has CFI: the test would prove nothing"
    assert any(lo <= syms["c_inner"] < hi for lo, hi in ranges)
    with Fixture(binary, "-mode", "asm") as fx:
        stacks = record_until(fx.pid, tmp_path, ["--native", "-r", "500", "--keep-raw"],
                              lambda st: sum(n for s, n in st.items() if s[0].startswith("asm_inner")) >= 1000,
                              "1,000 samples in asm_inner")
        maps = Path(f"/proc/{fx.pid}/maps").read_text()
    in_asm = {s: n for s, n in stacks.items() if s[0].startswith("asm_inner")}
    want = ["asm_inner [heuristic]", "asm_outer [heuristic]", "_cgo_Cfunc_asm_outer", "runtime.asmcgocall",
            "runtime.cgocall", "main._Cfunc_asm_outer", "main.goAsm", "main.asmWorker"]
    good = sum(n for s, n in in_asm.items() if [strip_wrapper(f) for f in s[: len(want)]] == want)
    # Every sample recovers both frames without CFI; a rare one (a race with the scheduler moving
    # the goroutine) may lose the Go part, and is then marked truncated, never shown as complete:
    # at most 1 % of them (binomially).
    assert all([strip_wrapper(f) for f in s[:2]] == want[:2] for s in in_asm), in_asm
    incomplete = {s: n for s, n in in_asm.items() if [strip_wrapper(f) for f in s[: len(want)]] != want}
    assert all(s[-1].startswith("[truncated") for s in incomplete), incomplete
    assert binomial_upper_ok(sum(in_asm.values()) - good, sum(in_asm.values()), 0.01), incomplete
    # Only frames where no CFI covers the pc are marked, in any object: crosscall1 in
    # runtime/cgo is another, and so is a thread just back from glibc's clone3 syscall (the
    # instructions after it are in no FDE). Judged by each marked frame's pc, from the raw
    # recordings, against readelf's FDE table of its object.
    marked = heuristic_frames(tmp_path)
    assert {f for f, _, _ in marked} >= {"asm_inner [heuristic]", "asm_outer [heuristic]"}
    covered = {}
    for name, obj, pc in marked:
        assert obj.startswith("/"), (name, obj)  # the vDSO has CFI throughout
        if obj not in covered:
            covered[obj] = (load_bias(maps, obj), fde_ranges(Path(obj)))
        bias, fdes = covered[obj]
        vaddr = pc - bias  # the lookup is pc (an interrupted frame) or pc - 1 (a return address)
        assert not all(any(lo <= a < hi for lo, hi in fdes) for a in (vaddr, vaddr - 1)), (name, obj, hex(vaddr))


def heuristic_frames(recordings: Path) -> set[tuple[str, str, int]]:
    """(name, object, pc) of every native frame marked [heuristic] in the kept raw recordings."""
    from goflame.profile import read_recording

    return {(f.function, f.file, f.pc) for raw in recordings.glob("*.goflame")
            for s in read_recording(raw).samples for f in s.frames if f.function.endswith(" [heuristic]")}


def load_bias(maps: str, path: str) -> int:
    """What to subtract from a pc in `path` for its link-time address: 0 for a fixed-address
    executable, else where its first page is mapped (shared objects link at 0)."""
    with open(path, "rb") as f:
        if int.from_bytes(f.read(18)[16:18], "little") == 2:  # e_type ET_EXEC
            return 0
    starts = [int(line.split("-")[0], 16) for line in maps.splitlines()
              if line.endswith(path) and int(line.split()[2], 16) == 0]
    assert starts, f"{path} is not mapped at offset 0"
    return min(starts)


# -- the vDSO ----------------------------------------------------------------------------------------------
def test_vdso_frames_are_symbolized_from_the_image_in_the_targets_memory(tmp_path):
    binary = gt.build(FIXTURES / "cgochain", gt.BuildSpec(cgo=True, stripped=True, pie=True))
    with Fixture(binary, "-mode", "vdso") as fx:
        for line in Path(f"/proc/{fx.pid}/maps").read_text().splitlines():
            if line.endswith("[vdso]"):
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        with open(f"/proc/{fx.pid}/mem", "rb") as f:
            f.seek(lo)
            image = tmp_path / "target-vdso.so"
            image.write_bytes(f.read(hi - lo))
        vdso_names = {n for names in nm(image, "-D").values() for n in names}
        stacks = record_until(fx.pid, tmp_path, ["--native", "-r", "500"],
                              lambda st: sum(n for s, n in st.items() if s[0] in vdso_names) >= 500,
                              "500 samples in the vDSO")
    in_vdso = {s: n for s, n in stacks.items() if s[0] in vdso_names}
    # A sample may race the call's return: it must then be marked truncated. (Threads made after
    # /proc/PID/maps was read once lost 1-5 % of samples here to bad-frame, their stack unknown:
    # a stack pointer outside the known maps now re-reads them. A walk that reached time.now on
    # g0 without m.vdsoSP once ended there as if complete: R12 leads on now, or it is marked.)
    torn = {s: n for s, n in in_vdso.items() if not in_clock_loop(s) and not runtime_clock_read(s, vdso_names)}
    assert all(s[-1].startswith("[truncated") for s in torn), torn
    assert binomial_upper_ok(sum(torn.values()), sum(in_vdso.values()), 0.02), torn


def runtime_clock_read(stack: tuple[str, ...], vdso_names: set[str]) -> bool:
    """The runtime's own clock read, not the fixture's: the scheduler looking for work reads
    nanotime for its timers (schedule -> findRunnable -> timers.check -> nanotime1 -> the
    vDSO), and sysmon reads it each round (mstart1 -> sysmon -> nanotime -> nanotime1), every
    frame between the vDSO's and runtime.schedule or runtime.mstart1 a runtime function. Where
    its walk goes on from there (mcall; mstart and, with --native, the C that started the
    thread) is not this test's business: test_dump_of_goroutines_in_vdso_calls_shows_their_whole_stack
    and check_vdso_calls_lead_back_to_the_goroutine judge those ends."""
    below = [f for f in stack if f not in vdso_names]
    for root in ("runtime.schedule", "runtime.mstart1"):
        if root in below:
            return all(f.startswith("runtime.") for f in below[:below.index(root)])
    return False


def in_clock_loop(stack: tuple[str, ...]) -> bool:
    """The vdso fixture's own call chain, innermost first: ... time.Now, main.clockLoop, main.vdsoWorker."""
    go = [f for f in stack if f.startswith(("time.", "main."))]
    return go[-2:] == ["main.clockLoop", "main.vdsoWorker"] and "time.Now" in go


def check_vdso_calls_lead_back_to_the_goroutine(spec: gt.BuildSpec, engine: str, tmp_path: Path) -> None:
    binary = gt.build(FIXTURES / "cgochain", spec)
    # The vdso workers spend most of their time in the vDSO (a lone "[native code]" before) or
    # in time.now on g0's stack (a lone "time.now" before: its SPWRITE frame ended the walk).
    leaves = ("[native code]", "time.now", "runtime.nanotime1")
    with Fixture(binary, "-mode", "vdso") as fx:
        stacks = record_until(fx.pid, tmp_path, ["--engine", engine, "-r", "500"],
                              lambda st: sum(n for s, n in st.items() if s[0] in leaves) >= 1000,
                              "1,000 samples in a vDSO call")
    in_call = {s: n for s, n in stacks.items() if s[0] in leaves}
    total = sum(in_call.values())
    # Time in a vDSO call made by anything else (the scheduler's nanotime1 on g0) must end at
    # the thread's first frame (mstart), at runtime.mcall (the scheduler entered from a parking or
    # preempted goroutine: mcall is SPWRITE, where Go's own traceback ends, 1 in ~4,000 samples
    # here) or be marked truncated, never cut silently.
    # Or at runtime.goexit: the scheduler entered from morestack, whose walk goes on into the
    # goroutine it preempted, is whole there as the runtime's own traceback would be (TOPFRAME).
    # Or at runtime.morestack, once newstack has dropped that goroutine (gopreempt_m →
    # goschedImpl, or preemptPark: m.curg is nil from there on): morestack is SPWRITE, and with
    # no curg to jump to Go's traceback ends there, as at mcall. Anywhere else in newstack
    # curg is set, and a walk that ends at morestack there was cut silently.
    dropped = {"runtime.gopreempt_m", "runtime.goschedImpl", "runtime.preemptPark"}

    def ends_well(s: tuple[str, ...]) -> bool:
        return (in_clock_loop(s) or s[-1] in ("runtime.mstart", "runtime.mcall", "runtime.goexit")
                or (s[-1] == "runtime.morestack" and not dropped.isdisjoint(s)) or s[-1].startswith("[truncated"))
    assert all(ends_well(s) for s in in_call), [";".join(s) for s in in_call if not ends_well(s)]
    whole = sum(n for s, n in in_call.items() if in_clock_loop(s))
    assert binomial_upper_ok(total - whole, total, 0.03), (
        whole, total, Counter({s: n for s, n in in_call.items() if not in_clock_loop(s)}))


@pytest.mark.parametrize("engine", ["perf", "ptrace"])
def test_vdso_calls_lead_back_to_the_goroutine_that_made_them_without_native(engine, tmp_path):
    """Without --native the walk leaves the vDSO (and time.now's g0 frame) through R12, the
    goroutine's SP the runtime's vDSO calls keep there: the stacks are the fixture's own call
    chain, not a lone leaf. (Before: 40-50 % of these samples were a lone "[native code]".)"""
    check_vdso_calls_lead_back_to_the_goroutine(gt.BuildSpec(cgo=True, stripped=True, pie=True), engine, tmp_path)


def test_dump_of_goroutines_in_vdso_calls_shows_their_whole_stack(tmp_path):
    """`goflame dump` of goroutines caught in a vDSO call: each one's stack runs down to the
    goroutine's own start function, and its creator is the one the runtime's own dump gives
    that goroutine id. (Before R12 was followed, ~7 % were a lone `time.now`.) A stack may be
    cut (a signal handler interrupting the call, read after the thread went on) only if it
    says so, or end whole where Go's own traceback ends too, at an SPWRITE function (mcall
    entering the scheduler, morestack entered by a stack check); both rarely: ~0.1 % measured,
    2 % the bar."""
    from goflame.binary.pclntab import FLAG_SPWRITE
    from goflame.export.gotraceback import rules_for, stack_json
    from goflame.target import Target

    binary = gt.build(FIXTURES / "cgochain", gt.BuildSpec(cgo=True, stripped=True, pie=True))
    dump_path = tmp_path / "runtime-dump.txt"
    with Fixture(binary, "-mode", "vdso", "-workers", "2", "-dump", str(dump_path)) as fx:
        # Each worker's own traceback, taken by itself as it started (a dump of every goroutine
        # shows one in the middle of a vDSO call as "stack unavailable" now and then).
        workers = parse_dump(Path(str(dump_path) + ".workers").read_text())
        assert len(workers) == 2 and all(b.frames[1][0] == "main.vdsoWorker" for b in workers.values()), workers
        caught = [g for g in json.loads(goflame("dump", "--pid", str(fx.pid), "--json"))["goroutines"]
                  if g["status"] == "running" and g["goid"] in workers]
        # Then what `goflame dump --json` does (goroutine_stacks, stack_json) again and again on
        # one attached Target, until 1,000 snapshots have caught a worker running.
        with Target(fx.pid) as t:
            rules = rules_for(t.binary)
            spwrite = {f.name for f in t.binary.pclntab.funcs() if f.flag & FLAG_SPWRITE}

            def dump_more() -> bool:
                snap, stacks = t.goroutine_stacks(pause=True)
                caught.extend(g for g in (stack_json(s, rules, t.binary, t.reader.bias, snap.now, False)
                                          for s in stacks) if g["status"] == "running" and g["goid"] in workers)
                return len(caught) >= 1000

            wait_until(dump_more, "1,000 snapshots of a vDSO worker caught running", timeout=300, every=0)
    names = {id(g): [f["function"] for f in g["frames"]] for g in caught}
    # The fixture's workers spend most of their time in time.now's vDSO call (~95 %: 80 % is the bar).
    assert binomial_upper_ok(sum("main.clockLoop" not in names[id(g)] for g in caught), len(caught), 0.2)
    for g in caught:
        assert g["created_by"] and g["created_by"]["function"] == "main.main", g
        assert workers[g["goid"]].created[0].startswith("created by main.main"), workers[g["goid"]].created
    # Whole (unwind/stop.py): down to the worker's start function, or at an SPWRITE function.
    whole = [g for g in caught if g["complete"]]
    assert all(names[id(g)][-1] == "main.vdsoWorker" or names[id(g)][-1] in spwrite for g in whole), \
        [names[id(g)] for g in whole if names[id(g)][-1] != "main.vdsoWorker"][:5]
    to_start = [g for g in whole if names[id(g)][-1] == "main.vdsoWorker"]
    assert binomial_upper_ok(len(caught) - len(to_start), len(caught), 0.02), \
        [names[id(g)] for g in caught if names[id(g)][-1] != "main.vdsoWorker"]


MATRIX_CGO = [s for v in gt.MATRIX for s in gt.matrix_specs(v) if s.cgo and s.stripped and s.pie]


@pytest.mark.matrix
@pytest.mark.parametrize("spec", MATRIX_CGO, ids=[s.tag for s in MATRIX_CGO])
def test_matrix_vdso_calls_lead_back_to_the_goroutine(spec, tmp_path):
    check_vdso_calls_lead_back_to_the_goroutine(spec, "perf", tmp_path)


# -- without --native --------------------------------------------------------------------------------------
def test_without_native_nothing_native_is_loaded_and_dumps_do_not_change(tmp_path):
    binary = cgochain(tmp_path)
    dump_path = tmp_path / "runtime.txt"
    with Fixture(binary, "-mode", "block", "-dump", str(dump_path)) as fx:
        probe = subprocess.run([sys.executable, "-c", (
            "import sys; from goflame.dump import dump_goroutines; "
            f"text = dump_goroutines({fx.pid}); "
            "print(sorted(m for m in sys.modules if m.startswith('goflame.unwind')))")],
            capture_output=True, text=True, timeout=120)
        plain = goflame("dump", "--pid", str(fx.pid))
        native = goflame("dump", "--pid", str(fx.pid), "--native")
        theirs = parse_dump(fx.runtime_dump(dump_path))
    assert probe.returncode == 0, probe.stderr
    want = ['goflame.unwind', 'goflame.unwind.capture', 'goflame.unwind.gopclntab', 'goflame.unwind.livewalk',
            'goflame.unwind.sigframe', 'goflame.unwind.special', 'goflame.unwind.stackmap', 'goflame.unwind.stop',
            'goflame.unwind.vdsocall']  # Go's own rules
    assert probe.stdout.strip() == str(want), probe.stdout
    # Without --native the dump is Go's own: every goroutine the runtime shows parked, identical.
    ours = parse_dump(plain)
    compared = 0
    for goid, want in theirs.items():
        if want.state.split(",")[0] in ("running", "runnable") or goid not in ours:
            continue
        got = ours[goid]
        assert (got.state, got.frames, got.created) == (want.state, want.frames, want.created), goid
        compared += 1
    assert compared >= 3  # main (sleep), the signal loop, the reader blocked in C
    assert "pc=0x" not in plain and "[native" not in plain
    # --native adds C frames and changes nothing else.
    native_blocks = plain_blocks = 0
    for chunk in native.strip().split("\n\n"):
        lines = chunk.splitlines()
        kept = [ln for i, ln in enumerate(lines)
                if not (" pc=0x" in ln or (i + 1 < len(lines) and " pc=0x" in lines[i + 1]))]
        native_blocks += 1
        assert "\n".join(kept) in plain, chunk
    plain_blocks = len(plain.strip().split("\n\n"))
    assert native_blocks == plain_blocks


def test_native_dump_of_a_pure_go_program_is_the_plain_dump(tmp_path):
    """No C code in the process: --native must give the very same goroutine stacks."""
    binary = gt.build(FIXTURES / "parked", gt.BuildSpec())
    proc = subprocess.Popen([str(binary), "-dump", str(tmp_path / "d.txt"), "-spin", "0"], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().startswith("ready")
        plain = goflame("dump", "--pid", str(proc.pid))
        native = goflame("dump", "--pid", str(proc.pid), "--native")
    finally:
        proc.kill()
        proc.wait()
    assert native == plain


# -- torn or corrupt tables --------------------------------------------------------------------------------
def test_corrupt_cfi_never_raises_and_never_invents_a_row(tmp_path):
    """Real .eh_frame bytes with bytes flipped: parsing and lookups end quietly (no row, or a row)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from goflame.binary.elf import ElfFile
    from goflame.unwind.cfi import CfiSection, Row

    elf = ElfFile(cgochain(tmp_path))
    sec = elf.section(".eh_frame")
    data = bytes(elf.section_bytes(".eh_frame"))
    hdr_sec = elf.section(".eh_frame_hdr")
    hdr = bytes(elf.section_bytes(".eh_frame_hdr"))
    pcs = CfiSection(data, sec.addr, eh=True).starts

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), min_size=1, max_size=8),
           st.booleans())
    def mutated(flips, with_hdr):
        raw = bytearray(data)
        for pos, value in flips:
            raw[pos] = value
        try:
            cfi = CfiSection(bytes(raw), sec.addr, eh=True, hdr=hdr if with_hdr else None, hdr_vaddr=hdr_sec.addr)
        except Exception as e:  # noqa: BLE001
            raise AssertionError(f"constructor raised {e!r}") from e
        for pc in pcs:
            for probe in (pc, pc + 1, pc + 7):
                row = cfi.row_at(probe)
                assert row is None or isinstance(row, Row)

    mutated()


@pytest.mark.matrix
@pytest.mark.parametrize("go", list(gt.MATRIX))
def test_native_stitching_holds_on_every_go_release(tmp_path, go):
    """asmcgocall, cgocallback and crosscall2 changed shape over the releases: stitch them all."""
    binary = cgochain(tmp_path, spec=gt.BuildSpec(go=go, cgo=True))
    with Fixture(binary, "-mode", "chain,callback,block", "-workers", "1") as fx:
        stacks = record_until(fx.pid, tmp_path, ["--native", "-r", "500"],
                              lambda st: min(sum(n for s, n in st.items() if s[0] in C_CHAIN),
                                             sum(n for s, n in st.items() if s[0] == "main.goCallbackSpin")) >= 500,
                              "500 samples in the C chain and in the Go callback each")
        doc = json.loads(goflame("dump", "--pid", str(fx.pid), "--native", "--json"))
    chain = {s: n for s, n in stacks.items() if s[0] in C_CHAIN}
    full = sum(n for s, n in chain.items() if full_chain(s))
    assert binomial_upper_ok(sum(chain.values()) - full, sum(chain.values()), 0.05), chain
    assert_callbacks_stitched(stacks)
    blocked = [g for g in doc["goroutines"] if any(f["function"] == "main.blockInC" for f in g["frames"])]
    assert blocked and [strip_wrapper(f["function"]) for f in blocked[0]["frames"][1:3]] == \
        ["c_block_read", "_cgo_Cfunc_c_block_read"], blocked
