#!/usr/bin/env python3
"""pprof reading and `goflame diff` at scale, against `go tool pprof` on the same files.

usage: bench_pprof_diff.py [--mb 50] [--stacks 100000] [--repeat 3]

1. A ~50 MB gzipped pprof (CPU profile of a service: the shared synthetic corpus's stacks,
   each frame at one of several pcs with its own line, samples labelled with goroutine and
   thread like goflame's, so many distinct samples) is read by goflame — in process
   (`read_pprof`), and as a user runs it (`goflame report folded`) — and by
   `go tool pprof -top` (the baseline: Go's reader plus its aggregation).
   A pure-Python protobuf walk over the same bytes (only the samples' location ids, the
   least any Python decoder must do) shows why goflame decodes with the protobuf package's C
   parser instead (goflame/export/pprof.py).
2. Two profiles of 100,000 distinct stacks each (80,000 shared, weights jittered) are diffed
   by `goflame diff` (JSON report; then with the differential SVG too) and by
   `go tool pprof -top -diff_base` (the baseline).
Budget: reading the 50 MB file <= 5 s; the diff <= 5 s. Wall and CPU time, median of --repeat.
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (  # benchlib puts tests/ (gotoolchain) on sys.path
    Spread,
    budget,
    child_line,
    cpu_profile,
    goflame_argv,
    gotoolchain,
    load,
    ratio,
    repeat_child,
    section,
)
from goflame.export.pprof import read_pprof, write_pprof
from goflame.frame import Frame
from goflame.profile import Profile, RecordingMeta, Sample

REPO = Path(__file__).resolve().parents[1]


def synth_script() -> Path:
    for base in (os.environ.get("GOFLAME_SHARED", ""), REPO.parent / "shared", "/work/shared"):
        if base and (Path(base) / "bench" / "synth_folded.py").exists():
            return Path(base) / "bench" / "synth_folded.py"
    sys.exit("bench_pprof_diff: shared/bench/synth_folded.py not found (set GOFLAME_SHARED)")


def corpus(n: int, seed: int = 7) -> list[tuple[list[str], int]]:
    out = subprocess.run([sys.executable, str(synth_script()), str(n), str(seed)], capture_output=True,
                         check=True).stdout.decode()
    stacks = []
    for line in out.splitlines():
        s, _, c = line.rpartition(" ")
        stacks.append((s.split(";"), int(c)))
    return stacks


class FrameMaker:
    """Frames for a corpus name: a stable file, and `variants` pcs/lines per function."""

    def __init__(self, variants: int) -> None:
        self.variants = variants
        self.cache: dict[tuple[str, int], Frame] = {}
        self.base: dict[str, int] = {}

    def __call__(self, name: str, v: int) -> Frame:
        key = (name, v % self.variants)
        f = self.cache.get(key)
        if f is None:
            b = self.base.setdefault(name, 0x401000 + 0x400 * len(self.base))
            pkg = name.rsplit(".", 1)[0] if "." in name else "main"
            f = self.cache[key] = Frame(name, f"/src/{pkg}/file.go", 10 + 3 * key[1], False, pc=b + 16 * key[1])
        return f


def big_profile(target_mb: float, work: Path) -> Path:
    """Write a gzipped pprof of about `target_mb` MiB and return its path.

    300,000 distinct pc-level stacks (the corpus's 100,000 call paths, each frame at one of 8
    pcs), sampled with goroutine and thread labels the way goflame writes a recording, until
    the file is big enough.
    """
    stacks = corpus(100_000)
    make = FrameMaker(8)
    rng = random.Random(11)
    variants = [tuple(make(nm, rng.randrange(8)) for nm in reversed(stacks[i % len(stacks)][0]))
                for i in range(300_000)]
    path = work / "big.pb.gz"
    meta = RecordingMeta(binary="/srv/bin/api", go_version="go1.27.3", mode="cpu", rate_hz=100.0,
                         start_time=time.time(), duration=600.0)
    samples: list[Sample] = []
    step = 400_000  # grow until the gzipped file reaches the target (estimated from each step)
    while True:
        for _ in range(step):
            samples.append(Sample(0, rng.randrange(1, 5000), rng.randrange(1000, 1064), "running",
                                  variants[rng.randrange(len(variants))], 1 + int(rng.paretovariate(2.0))))
        write_pprof(Profile(meta, tuple(samples)), path)
        mb = path.stat().st_size / 2**20
        print(f"  {len(samples):,} samples: {mb:.1f} MiB", flush=True)
        if mb >= target_mb * 0.97:
            return path
        step = max(50_000, int(len(samples) * (target_mb / mb - 1) * 1.02))


def diff_pair(n: int, work: Path) -> tuple[Path, Path]:
    """Two pprof profiles of `n` distinct stacks each: 80 % of the stacks shared, weights jittered."""
    extra = n // 4
    stacks = corpus(n + extra, seed=9)
    rng = random.Random(5)
    make = FrameMaker(1)
    meta = RecordingMeta(mode="cpu", rate_hz=100.0, duration=60.0)
    shared, only_a, only_b = stacks[: n - extra], stacks[n - extra: n], stacks[n: n + extra]
    paths = []
    for name, part in (("a", shared + only_a), ("b", shared + only_b)):
        samples = tuple(
            Sample(0, 0, 0, "", tuple(make(nm, 0) for nm in reversed(names)), max(1, int(c * rng.uniform(0.7, 1.3))))
            for names, c in part)
        p = work / f"{name}.pb.gz"
        write_pprof(Profile(meta, samples, detailed=False), p)
        paths.append(p)
    return paths[0], paths[1]


def pure_python_sample_walk(path: Path) -> int:
    """Decode every Sample's location ids with a plain-Python varint loop (no other field)."""
    data = gzip.decompress(path.read_bytes())
    n = len(data)
    pos = 0
    total = 0

    def varint(buf: bytes, i: int) -> tuple[int, int]:
        v = shift = 0
        while True:
            b = buf[i]
            i += 1
            v |= (b & 0x7F) << shift
            if b < 0x80:
                return v, i
            shift += 7

    while pos < n:
        tag, pos = varint(data, pos)
        wire = tag & 7
        if wire == 0:
            _, pos = varint(data, pos)
            continue
        length, pos = varint(data, pos)
        end = pos + length
        if tag >> 3 == 2:  # a Sample: walk its fields, decode the packed location ids
            i = pos
            while i < end:
                t, i = varint(data, i)
                if t & 7 == 0:
                    _, i = varint(data, i)
                    continue
                ln, i = varint(data, i)
                if t >> 3 == 1:
                    j = i
                    while j < i + ln:
                        _, j = varint(data, j)
                        total += 1
                i += ln
        pos = end
    return total


def go_pprof_argv() -> list[str]:
    root = gotoolchain.goroot(gotoolchain.FAST)
    return [str(root / "bin" / "go"), "tool", "pprof"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=50.0, help="size of the big pprof file (MiB, gzipped)")
    ap.add_argument("--stacks", type=int, default=100_000, help="distinct stacks per diffed profile")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    go_env = gotoolchain.go_env(gotoolchain.goroot(gotoolchain.FAST))
    gf = goflame_argv()

    with tempfile.TemporaryDirectory(prefix="goflame-bench-") as tmp:
        work = Path(tmp)
        section(f"making a {args.mb:g} MiB pprof file")
        t0 = time.perf_counter()
        big = big_profile(args.mb, work)
        raw_mb = len(gzip.decompress(big.read_bytes())) / 2**20
        print(f"  {big.stat().st_size / 2**20:.1f} MiB gzipped, {raw_mb:.1f} MiB of protobuf, "
              f"made in {time.perf_counter() - t0:.1f} s", flush=True)

        section("reading it")
        times, cpus = [], []
        for _ in range(args.repeat):
            c0, w0 = time.process_time(), time.perf_counter()
            prof = read_pprof(big)
            times.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
        print(f"  read_pprof (in process)                     wall {Spread.of(times).fmt()}   cpu median "
              f"{Spread.of(cpus).median:.3f} s   {len(prof.samples):,} samples   [{load()}]", flush=True)
        del prof
        rep = child_line("goflame report folded -o /dev/null",
                         repeat_child([*gf, "report", "folded", str(big), "-o", "/dev/null"], args.repeat))
        top = child_line("go tool pprof -top (baseline)",
                         repeat_child([*go_pprof_argv(), "-top", str(big)], args.repeat, env=go_env))
        c0 = time.process_time()
        n = pure_python_sample_walk(big)
        walk = time.process_time() - c0
        print(f"  pure-Python walk of the samples' location ids: cpu {walk:.2f} s ({n:,} ids): "
              f"{ratio(walk, Spread.of(cpus).median)} the CPU time of read_pprof's whole read", flush=True)
        print(f"  ratio goflame report / go tool pprof -top: wall {ratio(rep[0].median, top[0].median)}, "
              f"cpu {ratio(rep[1].median, top[1].median)}")
        budget(f"read a {args.mb:g} MiB pprof (goflame report folded)", rep[0].median, 5.0, cpu=rep[1].median,
               note=f"go tool pprof -top: {top[0].median:.2f} s")
        print(cpu_profile(lambda: read_pprof(big), top=8))

        section(f"diff of two profiles of {args.stacks:,} distinct stacks each")
        a, b = diff_pair(args.stacks, work)
        dj = child_line("goflame diff --format json > /dev/null",
                        repeat_child([*gf, "diff", str(a), str(b), "--format", "json"], args.repeat, check=False))
        ds = child_line("goflame diff -o diff.svg",
                        repeat_child([*gf, "diff", str(a), str(b), "-o", str(work / "d.svg")], args.repeat,
                                     check=False))
        gd = child_line("go tool pprof -top -diff_base (baseline)",
                        repeat_child([*go_pprof_argv(), "-top", f"-diff_base={a}", str(b)], args.repeat, env=go_env))
        print(f"  ratio goflame diff / go tool pprof -diff_base: wall {ratio(dj[0].median, gd[0].median)}, "
              f"cpu {ratio(dj[1].median, gd[1].median)}")
        budget(f"diff {args.stacks:,} x 2 distinct stacks", dj[0].median, 5.0, cpu=dj[1].median,
               note=f"go tool pprof -diff_base: {gd[0].median:.2f} s; with SVG {ds[0].median:.2f} s")

        from goflame.diff import diff_profiles
        from goflame.export import read_profile

        pa, pb = read_profile(a), read_profile(b)
        print(cpu_profile(lambda: diff_profiles(pa, pb), top=8))


if __name__ == "__main__":
    main()
