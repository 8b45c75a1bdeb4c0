#!/usr/bin/env python3
"""--native: what parsing CFI costs, and whether sampling with it keeps up at 100 Hz.

1. CFI of the system's libc, parsed by goflame: opening it (ELF headers and the FDE index
   from .eh_frame_hdr: what `--native` pays when a pc first lands in libc), indexing every
   FDE by scanning .eh_frame, and running every FDE's CFA program to the end (all rows).
   Baseline in the same run: reading the file into memory. pyelftools' own parse of the
   same section is printed for reference (--pyelftools). Budget: parsing once <= 0.5 s.
2. Sampling tests/fixtures/cgochain with 4 goroutines in C chains (4 threads in state R):
   Sampler.run at 100 Hz for --seconds with --native, and without it in the same run as the
   baseline. Printed: ticks/s, missed ticks / ticks (budget < 1 %), samples, errors, the
   median pause and the CPU time of one tick. On a loaded machine both runs miss ticks;
   the figure to look at is the difference --native makes.

    .venv/bin/python bench/bench_native.py [--seconds 10] [--pyelftools]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (str(REPO / "tests"), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

import gotoolchain  # noqa: E402

LIBC = Path("/lib/x86_64-linux-gnu/libc.so.6").resolve()


def load() -> str:
    a, b, c = os.getloadavg()
    return f"load {a:.1f} {b:.1f} {c:.1f} on {os.cpu_count()} CPUs"


def best_of(fn, n: int = 5) -> float:  # noqa: ANN001
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_cfi(pyelftools: bool) -> None:
    from goflame.binary.elf import ElfFile
    from goflame.unwind.cfi import CfiSection
    from goflame.unwind.images import ImageCache

    print(f"\n== libc CFI: {LIBC} ({LIBC.stat().st_size / 1e6:.1f} MB)  [{load()}]")
    read = best_of(lambda: LIBC.read_bytes())
    print(f"baseline  read the file                       {read * 1e3:8.2f} ms")

    def open_image() -> None:
        cache = ImageCache()
        img = cache.open_file(str(LIBC), str(LIBC))
        assert img is not None and img.eh is not None
        cache.close()

    opened = best_of(open_image)
    elf = ElfFile(LIBC)
    sec = elf.section(".eh_frame")
    data = bytes(elf.section_bytes(".eh_frame"))
    scan = best_of(lambda: CfiSection(data, sec.addr, eh=True))
    cfi = CfiSection(data, sec.addr, eh=True)

    def decode() -> None:
        fresh = CfiSection(data, sec.addr, eh=True)
        fresh.decode_all()

    full = best_of(decode, 3)
    rows = cfi.decode_all()
    print(f"goflame   open + index via .eh_frame_hdr      {opened * 1e3:8.2f} ms  ({opened / read:5.1f}x read)")
    print(f"goflame   index by scanning {len(cfi):5d} FDEs       {scan * 1e3:8.2f} ms  ({scan / read:5.1f}x read)")
    print(f"goflame   scan + every CFA program ({rows} rows) {full * 1e3:8.2f} ms  ({full / read:5.1f}x read)")
    ok = "ok" if full <= 0.5 else "OVER"
    print(f"BUDGET native: parse libc's CFI once <= 0.5 s: {full:.3f} s (full decode) {ok}")
    if pyelftools:
        from elftools.elf.elffile import ELFFile

        def pyelf() -> None:
            with open(LIBC, "rb") as f:
                entries = ELFFile(f).get_dwarf_info().EH_CFI_entries()
                for e in entries:
                    try:
                        e.get_decoded()
                    except Exception:  # noqa: BLE001 - pyelftools rejects some GNU opcodes
                        pass

        t = best_of(pyelf, 1)
        print(f"reference pyelftools parse + decode            {t * 1e3:8.2f} ms  ({t / full:5.1f}x goflame's)")
    elf.close()


def one_run(pid: int, native: bool, seconds: float) -> None:
    from goflame.sampler import Sampler, SamplerConfig
    from goflame.target import Target

    tick_cpu: list[float] = []
    in_c = [0]
    last = [0.0]

    def on(batch: list) -> None:
        in_c[0] += sum(1 for s in batch if s.frames and s.frames[0].function.startswith("c_"))

    def on_tick(_st: object) -> None:
        now = time.thread_time()
        tick_cpu.append(now - last[0])
        last[0] = now

    with Target(pid) as t:
        Sampler(t, SamplerConfig(rate=100, native=native)).run(on, duration=0.5)  # warm-up: caches fill
        in_c[0] = 0
        last[0] = time.thread_time()
        st = Sampler(t, SamplerConfig(rate=100, native=native)).run(on, duration=seconds, on_tick=on_tick)
    ticks = st.ticks + st.missed
    pauses = sorted(st.pause_ns)
    label = "--native" if native else "baseline"
    print(f"{label:9s} {st.ticks / st.elapsed:6.1f} ticks/s  missed {st.missed:4d}/{ticks:5d} "
          f"({100 * st.missed / max(ticks, 1):5.2f} %)  samples {st.samples:6d} (leaf in C: {in_c[0]:5d})  "
          f"errors {st.errors:3d}  median pause {pauses[len(pauses) // 2] / 1e3 if pauses else 0:6.0f} µs  "
          f"CPU per tick {statistics.median(tick_cpu) * 1e3 if tick_cpu else 0:5.2f} ms", flush=True)
    if native:
        ok = "ok" if st.missed < 0.01 * ticks else "OVER"
        print(f"BUDGET native: 100 Hz on 4 threads, missed < 1 %: {100 * st.missed / max(ticks, 1):.2f} % {ok}")


def bench_sampling(seconds: float) -> None:
    binary = gotoolchain.build(REPO / "tests" / "fixtures" / "cgochain", gotoolchain.BuildSpec(cgo=True))
    print(f"\n== sampling cgochain, 4 goroutines in C, 100 Hz, {seconds:g} s per run  [{load()}]")
    proc = subprocess.Popen([str(binary), "-mode", "chain", "-workers", "4", "-d", "1h"], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, GOMAXPROCS="4"))
    try:
        assert proc.stdout.readline().startswith("ready")
        for native in (False, True, False, True):  # interleaved: drift in the machine's load cancels
            one_run(proc.pid, native, seconds)
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--pyelftools", action="store_true", help="also time pyelftools on the same CFI (slow)")
    args = ap.parse_args()
    bench_cfi(args.pyelftools)
    bench_sampling(args.seconds)


if __name__ == "__main__":
    main()
