#!/usr/bin/env python3
"""SVG rendering: goflame vs FlameGraph's flamegraph.pl on the same folded file, in one run.

usage: bench_svg.py [--flamegraph PATH] [--stacks N] [--folded FILE] [--repeat K]

flamegraph.pl is not part of goflame: pass its path (or set FLAMEGRAPH_PL). The input is the
shared deterministic corpus (shared/bench/synth_folded.py N, default 100,000 distinct stacks)
unless --folded names a file. Each renderer runs as its own child process, timed by wall clock,
with its peak RSS taken from wait4(); the best of K runs is kept. Both use a 1200 px wide graph
and 0.1 px minimum frame width (flamegraph.pl's defaults). Budget: goflame >= 3x faster and at
most half the peak memory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import budget, goflame_argv, section

REPO = Path(__file__).resolve().parents[1]


def synth_script() -> Path:
    for base in (os.environ.get("GOFLAME_SHARED", ""), REPO.parent / "shared", "/work/shared"):
        if base and (Path(base) / "bench" / "synth_folded.py").exists():
            return Path(base) / "bench" / "synth_folded.py"
    sys.exit("bench_svg: shared/bench/synth_folded.py not found (set GOFLAME_SHARED)")


def run(argv: list[str], stdout_path: Path) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (MiB) of one child process.

    CPU time is reported too because wall time on a shared machine moves with the load."""
    with open(stdout_path, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"bench_svg: {argv[:2]} exited with {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # ru_maxrss is KiB on Linux


def best(argv: list[str], out: Path, repeat: int) -> tuple[float, float, float]:
    runs = [run(argv, out) for _ in range(repeat)]
    return min(r[0] for r in runs), min(r[1] for r in runs), min(r[2] for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flamegraph", default=os.environ.get("FLAMEGRAPH_PL"), help="path of flamegraph.pl")
    ap.add_argument("--stacks", type=int, default=100_000)
    ap.add_argument("--folded", type=Path, help="use this folded file instead of the synthetic corpus")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    if not args.flamegraph or not Path(args.flamegraph).exists():
        sys.exit("bench_svg: give the path of FlameGraph's flamegraph.pl (--flamegraph or FLAMEGRAPH_PL)")

    with tempfile.TemporaryDirectory(prefix="goflame-bench-") as tmp:
        work = Path(tmp)
        folded = args.folded
        if folded is None:
            folded = work / f"synth{args.stacks}.folded"
            with open(folded, "wb") as f:
                subprocess.run([sys.executable, str(synth_script()), str(args.stacks)], stdout=f, check=True)
        lines = sum(1 for _ in open(folded, "rb"))
        size = folded.stat().st_size / 2**20
        section(f"SVG rendering: {folded.name}, {lines:,} stacks, {size:.1f} MiB")

        gf_out, fg_out = work / "goflame.svg", work / "flamegraph.svg"
        fg_t, fg_c, fg_m = best(["perl", args.flamegraph, str(folded)], fg_out, args.repeat)
        gf_t, gf_c, gf_m = best([*goflame_argv(), "report", "svg", str(folded), "-o", str(gf_out)],
                                work / "stdout", args.repeat)
        gf_frames = gf_out.read_text("utf-8").count("<g data-s=")
        fg_frames = fg_out.read_text("utf-8", "replace").count("<g >")  # its per-frame groups

    print(f"flamegraph.pl  {fg_t:7.2f} s wall  {fg_c:7.2f} s CPU  {fg_m:7.1f} MiB peak RSS  {fg_frames:,} frames")
    print(f"goflame        {gf_t:7.2f} s wall  {gf_c:7.2f} s CPU  {gf_m:7.1f} MiB peak RSS  {gf_frames:,} frames")
    budget("svg speed vs flamegraph.pl (wall)", fg_t / gf_t, 3, "x", higher_is_better=True)
    budget("svg speed vs flamegraph.pl (CPU)", fg_c / gf_c, 3, "x", higher_is_better=True)
    budget("svg peak RSS, flamegraph.pl / goflame", fg_m / gf_m, 2, "x", higher_is_better=True)


if __name__ == "__main__":
    main()
