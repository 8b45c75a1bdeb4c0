"""The pclntab reader against Go's own tools: `go tool nm`, `go tool addr2line` and the
runtime's `runtime.CallersFrames` (inlined frames included), on real builds."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

import gotoolchain as gt
from conftest import FIXTURES
from goflame.binary.gobinary import GoBinary
from goflame.symbolize import Symbolizer, func_name_for_print

PROBE = FIXTURES / "binprobe"


def nm_text_symbols(minor: str, binary: Path) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for line in gt.go_tool(minor, "tool", "nm", str(binary)).splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[1] in ("T", "t"):
            # Assembly functions carry their ABI in the symbol name; the runtime's name does not.
            name = parts[2].removesuffix(".abi0")
            out.setdefault(int(parts[0], 16), set()).add(name)
    return out


def addr2line(minor: str, binary: Path, pcs: list[int]) -> list[tuple[str, str, int]]:
    root = gt.goroot(minor)
    r = subprocess.run([str(root / "bin" / "go"), "tool", "addr2line", str(binary)],
                       input="".join(f"{pc:#x}\n" for pc in pcs), capture_output=True, text=True,
                       env=gt.go_env(root), check=True)
    lines = r.stdout.splitlines()
    assert len(lines) == 2 * len(pcs)
    res = []
    for i in range(len(pcs)):
        name = lines[2 * i]
        file, _, line = lines[2 * i + 1].rpartition(":")
        if file == "":  # no file info (padding): the runtime says "?:0" (runtime.funcline1)
            file, line = "?", "0"
        res.append((name, file, int(line)))
    return res


def runtime_frames(binary: Path, main_entry: int, pcs: list[int]) -> dict[int, list[tuple[str, str, int]]]:
    """What the Go runtime itself says (runtime.CallersFrames) about each pc of its own binary."""
    r = subprocess.run([str(binary), "oracle"], input=f"{main_entry:#x}\n" + "".join(f"{pc:#x}\n" for pc in pcs),
                       capture_output=True, text=True, check=True, timeout=60)
    out = {}
    for line in r.stdout.splitlines():
        head, *frames = line.split("\t")
        out[int(head, 16)] = [(f.split("|")[0], f.split("|")[1], int(f.split("|")[2])) for f in frames]
    return out


def sample_pcs(b: GoBinary, n: int, seed: int = 1) -> list[int]:
    """n pcs spread over every part of the text: each function gets its share, at random offsets."""
    rng = random.Random(seed)
    funcs = list(b.pclntab.funcs())
    pcs = [f.entry for f in funcs[:: max(1, len(funcs) // (n // 3))]]
    while len(pcs) < n:
        f = rng.choice(funcs)
        if f.end > f.entry:
            pcs.append(rng.randrange(f.entry, f.end))
    main_funcs = [f for f in funcs if f.name.startswith("main.")]
    for f in main_funcs:  # every pc of the fixture's own code: that is where the inlining is
        pcs.extend(range(f.entry, f.end))
    return sorted(set(pcs))


def check_against_go(minor: str, spec: gt.BuildSpec) -> None:
    bin_path = gt.build(PROBE, spec)
    twin = gt.build(PROBE, gt.BuildSpec(go=spec.go, cgo=spec.cgo, stripped=False, pie=spec.pie, goarch=spec.goarch))
    b = GoBinary(bin_path)
    assert b.buildinfo.minor == minor

    # 1. Every function's name and entry equal `go tool nm` of the unstripped twin.
    nm = nm_text_symbols(gt.FAST, twin)  # the newest tools read every older format
    funcs = list(b.pclntab.funcs())
    assert len(funcs) == b.pclntab.nfunc > 1000
    # Go 1.18/1.19 linkers store generic names with their shape already printed as "[...]".
    # Some releases' symbol tables spell the middle dot of generated names (`·4`) as `.`.
    missing = [(hex(f.entry), f.name) for f in funcs if f.name not in nm.get(f.entry, ())
               and f.name not in {func_name_for_print(n) for n in nm.get(f.entry, ())}
               and f.name.replace("·", ".") not in nm.get(f.entry, ())]
    assert not missing, f"{len(missing)} functions disagree with go tool nm, e.g. {missing[:5]}"
    go_text = {a: n for a, ns in nm.items() for n in ns
               if b.text_range[0] <= a < b.text_range[1] and not n.startswith(("runtime.text", "runtime.etext"))
               and "." in n and not n.startswith(("_cgo_", "x_cgo", "go:"))}
    ours = {(f.entry, f.name) for f in funcs}
    unmatched = [(hex(a), n) for a, n in go_text.items() if (a, n) not in ours and n in {f.name for f in funcs}]
    assert not unmatched, unmatched[:5]

    if spec.goarch != "amd64":
        return  # cannot run arm64 binaries here; names/entries/lines still checked below
    # 2. file:line of >= 1000 pcs equal `go tool addr2line` (innermost position, outer function name).
    pcs = sample_pcs(b, 1200)
    assert len(pcs) >= 1000
    want = addr2line(gt.FAST, twin, pcs)
    sym = Symbolizer(b)
    bad = []
    for pc, (name, file, line) in zip(pcs, want, strict=True):
        frames = sym.frames(pc)
        if (frames[-1].function, frames[0].file, frames[0].line) != (name, file, line):
            bad.append((hex(pc), (frames[-1].function, frames[0].file, frames[0].line), (name, file, line)))
    assert not bad, f"{len(bad)}/{len(pcs)} pcs disagree with addr2line, e.g. {bad[:3]}"

    # 3. Inline expansion equals what the runtime reports for the same pc.
    main_entry = b.pclntab.func_by_name("main.main").entry
    truth = runtime_frames(twin if not spec.stripped else bin_path, main_entry, pcs)
    bad = []
    inlined_seen = 0
    minor = int(spec.go.split(".")[1])

    def printed(name: str) -> str:  # Frame.Function is the name as that release prints it
        return func_name_for_print(name, minor)

    entries = {f.entry for f in funcs} | {b.text_range[1]}
    # Does this release's Frames.Next expand inlined callers of a single pc? (its source says)
    expands = "nextPC" in (gt.goroot(spec.go) / "src" / "runtime" / "symtab.go").read_text()
    sentinel = b.pclntab.func_by_name("main.sentinel")
    for pc in pcs:
        if pc + 1 in entries or pc in entries or sentinel.entry <= pc < sentinel.end:
            # The oracle passes pc+1 as a return address: at the next function's entry it does not
            # back up; at a function's own entry some releases name the frame ""; the sentinel
            # pc ends its own expansion. (No return address ever equals an entry.)
            continue
        # CallersFrames keeps the innermost frame of a pc and elides wrapper callers above it.
        pairs = sym.expand(pc)
        kept = [pairs[0][0]] + sym.elide(pairs[1:], pairs[0][1])[0]
        inlined_seen += len(kept) > 1
        ours = [(printed(f.function), f.file, f.line) for f in kept]
        if truth[pc] and truth[pc][0][0] == "":
            # 1.21/1.22 CallersFrames names an inlined body of an autogenerated wrapper "": no answer.
            continue
        if not expands:
            # Before Go 1.23 CallersFrames does not expand inlining itself (runtime.Callers
            # emitted the parents as separate pcs): compare the innermost frame here; whole
            # inlined chains of those releases are checked against the runtime's goroutine dump.
            ours = ours[:1]
        if ours != truth[pc]:
            bad.append((hex(pc), ours, truth[pc]))
    assert inlined_seen > 20, "the fixture should exercise inlined frames"
    assert not bad, f"{len(bad)}/{len(pcs)} pcs disagree with runtime.CallersFrames, e.g. {bad[:3]}"


FAST_SPECS = gt.matrix_specs(gt.FAST)


@pytest.mark.parametrize("spec", FAST_SPECS, ids=[s.tag for s in FAST_SPECS])
def test_functions_lines_and_inlining_match_go_tools(spec):
    check_against_go(gt.FAST, spec)


def test_go119_pclntab_format_matches_go_tools():
    check_against_go("1.19", gt.BuildSpec(go="1.19", stripped=True))


MATRIX_SPECS = [s for v in gt.MATRIX for s in gt.matrix_specs(v) + gt.matrix_specs(v, "arm64")]


@pytest.mark.matrix
@pytest.mark.parametrize("spec", MATRIX_SPECS, ids=[s.tag for s in MATRIX_SPECS])
def test_matrix_functions_lines_and_inlining_match_go_tools(spec):
    check_against_go(spec.go, spec)


def test_a_walk_into_the_scheduler_ends_whole_at_runtime_mcall():
    """A thread on g0 in the scheduler (park_m, called by mcall) is walked up to runtime.mcall
    and ends there whole, unmarked, as Go's own traceback ends it: the Go linker flags mcall
    SPWRITE, and traceback.go stops at an SPWRITE function (frame.lr = 0) just as at a
    TOPFRAME one."""
    from goflame.binary.pclntab import FLAG_SPWRITE, FLAG_TOPFRAME
    from goflame.errors import InvalidMemory
    from goflame.unwind.gopclntab import GoUnwinder, StackMemory
    from goflame.unwind.stop import Stop

    b = GoBinary(gt.build(PROBE, gt.BuildSpec(go=gt.FAST)))
    park, mcall = b.pclntab.func_by_name("runtime.park_m"), b.pclntab.func_by_name("runtime.mcall")
    goexit = b.pclntab.func_by_name("runtime.goexit")
    assert park and mcall and goexit and mcall.flag & FLAG_SPWRITE and goexit.flag & FLAG_TOPFRAME
    u = GoUnwinder(b)
    # A pc inside park_m's body (its frame is open), and the return address into mcall.
    pc, size = next((p, d) for p in range(park.entry + 1, park.end) if (d := u.func_at(p)[1]) and d > 0)
    ra = next(p for p in range(mcall.end - 1, mcall.entry, -1) if u.func_at(p)[1] is not None)
    sp, stack = 0x7F00_0000_0000, bytearray(4096)
    stack[size:size + 8] = ra.to_bytes(8, "little")

    def unreadable(addr: int, n: int) -> bytes:
        raise InvalidMemory(f"no memory at {addr:#x}")

    walk = u.unwind(pc, sp, 0, StackMemory(unreadable, sp, bytes(stack)), sp, sp + len(stack), exact=True)
    assert [f.func.name for f in walk.frames] == ["runtime.park_m", "runtime.mcall"], walk
    assert walk.stop is Stop.SPWRITE and walk.complete and walk.stop.marker is None
