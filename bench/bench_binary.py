#!/usr/bin/env python3
"""`goflame inspect` and symbolization on a big stripped Go binary, against baselines in one run.

Default binary: Debian's /usr/bin/hugo (53 MB, stripped, Go 1.19, cgo) — a real distro build.

1. `goflame inspect BINARY`, start to output, as a user runs it (the venv's console script),
   next to `python -c pass` (interpreter start), `goflame --version` (interpreter + click +
   goflame.cli: the CLI's floor) and Go's own `go version -m BINARY` (go 1.27 from
   tests/gotoolchain). Budget: <= 1 s wall. Then where the time goes, each phase timed in a
   fresh interpreter: imports, GoBinary open, runtime layout, runtime globals, describe+render;
   the slowest imports (-X importtime) and a CPU profile of the in-process work.
2. Symbolizing N (100,000) distinct pcs spread over every function of the binary, with inline
   expansion (Symbolizer.expand): a cold pass over a fresh GoBinary, shuffled (a profile sees
   pcs in no particular order) and in address order; then the cached lookup. Baseline: the
   same loop over a plain dict (`d.get`) and over a minimal Python method that does only the
   cache probe. Budgets: cold pass <= 2 s, cached lookup <= 1 us.

    .venv/bin/python bench/bench_binary.py [--binary PATH] [--pcs 100000] [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import benchlib as bl
from benchlib import gotoolchain

PHASES = r"""
import json, sys, time
pc, pt = time.perf_counter, time.process_time
out = []
t, c = pc(), pt()
def mark(name):
    global t, c
    out.append((name, pc() - t, pt() - c))
    t, c = pc(), pt()
import goflame.cli
mark("import goflame.cli + click")
from goflame.binary.describe import describe, render_text
from goflame.binary.gobinary import GoBinary
mark("import binary readers (pyelftools)")
import goflame.binary.layout, goflame.binary.globals
mark("import layout + globals (capstone)")
b = GoBinary(sys.argv[1])
mark("GoBinary open (buildinfo, pclntab, moduledata)")
b.layout
mark("runtime layout (table or DWARF)")
b.globals
mark("runtime globals (symtab or disassembly)")
render_text(describe(b))
mark("describe + render (cgo check, the rest)")
print(json.dumps(out))
"""

IMPORTS = "import goflame.cli, goflame.binary.describe, goflame.binary.layout, goflame.binary.globals"


# -- 1. inspect ----------------------------------------------------------------------------------
def bench_inspect(binary: Path, reps: int) -> None:
    bl.section(f"goflame inspect {binary} ({binary.stat().st_size / 1e6:.0f} MB)")
    py = sys.executable
    gf = bl.goflame_argv()
    root = gotoolchain.goroot("1.27")
    go_env = gotoolchain.go_env(root)
    # Warm the page cache and the interpreter's bytecode caches once; every timed run is warm.
    bl.run_child([*gf, "inspect", str(binary)])
    bl.run_child([str(root / "bin" / "go"), "version", "-m", str(binary)], env=go_env)
    base_py, _ = bl.child_line("python -c pass", bl.repeat_child([py, "-c", "pass"], reps))
    base_cli, _ = bl.child_line("goflame --version (CLI floor)", bl.repeat_child([*gf, "--version"], reps))
    base_go, _ = bl.child_line("go version -m (Go's own reader)",
                               bl.repeat_child([str(root / "bin" / "go"), "version", "-m", str(binary)], reps,
                                               env=go_env))
    ins, ins_cpu = bl.child_line("goflame inspect", bl.repeat_child([*gf, "inspect", str(binary)], reps))
    js, _ = bl.child_line("goflame inspect --json", bl.repeat_child([*gf, "inspect", "--json", str(binary)], reps))
    print(f"  inspect / python -c pass: {bl.ratio(ins.median, base_py.median)}   "
          f"inspect / goflame --version: {bl.ratio(ins.median, base_cli.median)}   "
          f"inspect / go version -m: {bl.ratio(ins.median, base_go.median)}   "
          f"inspect beyond the CLI floor: {ins.median - base_cli.median:.3f} s")
    bl.budget("goflame inspect (median wall)", ins.median, 1.0, cpu=ins_cpu.median,
              note=f"best wall {ins.lo:.3f} s; go version -m {base_go.median:.3f} s")

    print("  phases, each run in a fresh interpreter (wall / cpu, median of runs):")
    runs = [json.loads(bl.run_child([py, "-c", PHASES, str(binary)]).out) for _ in range(reps)]
    for i, (name, _w, _c) in enumerate(runs[0]):
        w = bl.Spread.of([r[i][1] for r in runs])
        c = bl.Spread.of([r[i][2] for r in runs])
        print(f"    {name:<48s} wall {w.median * 1e3:7.1f} ms (min {w.lo * 1e3:6.1f})  cpu {c.median * 1e3:7.1f} ms")
    total = bl.Spread.of([sum(x[1] for x in r) for r in runs])
    print(f"    {'total in-process':<48s} wall {total.median * 1e3:7.1f} ms (min {total.lo * 1e3:6.1f})")

    rows = _importtime([py, "-X", "importtime", "-c", IMPORTS], reps)
    print(f"  slowest imports (self time, -X importtime, min of {reps} runs):")
    for self_us, cum_us, name in sorted(rows, reverse=True)[:8]:
        print(f"    {self_us / 1e3:6.1f} ms self  {cum_us / 1e3:6.1f} ms cumulative  {name}")
    print("  top-level imports (cumulative):")
    for cum_us, name in sorted(((c, n) for _s, c, n in rows if not n.startswith(" ")), reverse=True)[:6]:
        print(f"    {cum_us / 1e3:6.1f} ms  {name}")

    from goflame.binary.describe import describe, render_text
    from goflame.binary.gobinary import GoBinary

    def inspect_in_process() -> None:
        with GoBinary(binary) as b:
            render_text(describe(b))

    print("  CPU profile of GoBinary + layout + globals + describe (imports excluded), by own time:")
    print(bl.cpu_profile(inspect_in_process, top=10))


def _importtime(argv: list[str], reps: int) -> list[tuple[int, int, str]]:
    """(self us, cumulative us, indented name) per module, the minimum over `reps` runs: a
    single run on a loaded machine mostly shows which import happened to be descheduled."""
    best: dict[str, tuple[int, int]] = {}
    for _ in range(reps):
        r = subprocess.run(argv, capture_output=True, text=True, check=True)
        for line in r.stderr.splitlines():
            m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (.*)$", line)
            if m:
                name = m[3].rstrip()
                old = best.get(name, (1 << 62, 1 << 62))
                best[name] = (min(old[0], int(m[1])), min(old[1], int(m[2])))
    return [(s, c, n) for n, (s, c) in best.items()]


# -- 2. symbolization ----------------------------------------------------------------------------
def pick_pcs(binary: Path, n: int, seed: int = 1) -> list[int]:
    """n distinct pcs spread over the binary's functions: round-robin over the functions in a
    random order, a random offset inside each, so small and big functions are both hit."""
    from goflame.binary.gobinary import GoBinary

    with GoBinary(binary) as b:
        tab = b.pclntab
        funcs = [(f.entry, f.end) for f in tab.funcs() if f.end > f.entry]
    rng = random.Random(seed)
    rng.shuffle(funcs)
    if n > sum(e - s for s, e in funcs):
        raise SystemExit(f"the binary has fewer than {n} text bytes")
    pcs: dict[int, None] = {}
    while len(pcs) < n:
        for s, e in funcs:
            pcs[rng.randrange(s, e)] = None
            if len(pcs) >= n:
                break
    return list(pcs)


class _MinimalCache:
    """The least a cached symbolizer can do per lookup: a method call and a dict probe."""

    def __init__(self, d: dict[int, object]):
        self._cache = d

    def expand(self, pc: int) -> object:
        hit = self._cache.get(pc)
        if hit is not None:
            return hit
        return None


def bench_symbolize(binary: Path, n: int, reps: int) -> None:
    from goflame.binary.gobinary import GoBinary
    from goflame.symbolize import Symbolizer

    bl.section(f"symbolizing {n:,} distinct pcs of {binary.name} with inline expansion")
    pcs = pick_pcs(binary, n)
    shuffled = list(pcs)
    random.Random(2).shuffle(shuffled)
    ordered = sorted(pcs)
    pt, pc = time.process_time, time.perf_counter

    def cold(order: list[int]) -> tuple[float, float, Symbolizer]:
        b = GoBinary(binary)
        sym = Symbolizer(b)  # loads the layout's funcID table; counted in the open, not here
        expand = sym.expand
        t, c = pc(), pt()
        for x in order:
            expand(x)
        return pc() - t, pt() - c, sym

    cold_runs = [cold(shuffled) for _ in range(max(1, reps // 2))]
    wall, cpu, sym = min(cold_runs, key=lambda r: r[0])
    inlined = sum(1 for x in pcs if len(sym.expand(x)) > 1)
    depth = max(len(sym.expand(x)) for x in pcs)
    unknown = sum(1 for x in pcs if sym.function_name(x) is None)
    print(f"  {inlined:,} of {n:,} pcs are inside inlined code (up to {depth} logical frames); "
          f"{unknown} outside any function")
    ow, oc, _ = cold(ordered)
    print(f"  cold, shuffled order:  wall {wall:.3f} s ({wall / n * 1e6:.1f} us/pc)  cpu {cpu:.3f} s  "
          f"(best of {len(cold_runs)})  [{bl.load()}]")
    print(f"  cold, address order:   wall {ow:.3f} s ({ow / n * 1e6:.1f} us/pc)  cpu {oc:.3f} s  "
          f"shuffled/ordered {bl.ratio(wall, ow)}")

    # Cached lookups: the same pcs again, against a dict and a minimal method in the same run.
    # CPU time, interleaved rounds, best round: a descheduled round says nothing about lookups.
    d = {x: sym.expand(x) for x in pcs}
    minimal = _MinimalCache(d)
    loops = {"dict.get": d.get, "minimal method": minimal.expand, "Symbolizer.expand": sym.expand,
             "Symbolizer.frames": sym.frames}
    best = dict.fromkeys(loops, float("inf"))
    for _ in range(reps * 2):
        for name, fn in loops.items():
            c = pt()
            for x in shuffled:
                fn(x)
            best[name] = min(best[name], (pt() - c) / n)
    t_dict, t_min, t_expand, t_frames = (best[k] for k in loops)
    print(f"  cached, ns of CPU per lookup (best of {reps * 2} interleaved rounds):  "
          + "   ".join(f"{k} {v * 1e9:.0f}" for k, v in best.items()))
    print(f"  expand / dict.get: {bl.ratio(t_expand, t_dict)}   expand / minimal method: "
          f"{bl.ratio(t_expand, t_min)}   frames / expand: {bl.ratio(t_frames, t_expand)} "
          f"(frames builds a new tuple per call)")
    print(f"  a cold lookup costs {cpu / n / t_dict:,.0f} dict.get's of CPU in this run "
          f"({cpu / n * 1e6:.1f} us cpu per pc)")
    bl.budget(f"symbolize {n:,} distinct pcs cold, shuffled", wall, 2.0, cpu=cpu)
    bl.budget("cached Symbolizer.expand per lookup (cpu)", t_expand * 1e6, 1.0, "us",
              note=f"dict.get {t_dict * 1e9:.0f} ns in the same run")

    sub = shuffled[: min(n, 20_000)]

    def cold_sub() -> None:
        s = Symbolizer(GoBinary(binary))
        for x in sub:
            s.expand(x)

    print(f"  CPU profile of a cold pass over {len(sub):,} of those pcs (GoBinary open included), by own time:")
    print(bl.cpu_profile(cold_sub, top=12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", type=Path, default=bl.BIG_BINARY)
    ap.add_argument("--pcs", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--skip-inspect", action="store_true")
    ap.add_argument("--skip-symbolize", action="store_true")
    a = ap.parse_args()
    if not a.binary.exists():
        sys.exit(f"bench_binary: {a.binary} not found (apt-get install hugo, or pass --binary)")
    size = a.binary.stat().st_size
    if size < 40e6:
        print(f"note: {a.binary} is {size / 1e6:.0f} MB; the budgets are for >= 40 MB stripped binaries")
    if not a.skip_inspect:
        bench_inspect(a.binary, a.reps)
    if not a.skip_symbolize:
        bench_symbolize(a.binary, a.pcs, a.reps)


if __name__ == "__main__":
    main()
