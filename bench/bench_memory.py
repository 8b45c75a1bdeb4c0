"""Reads per second from a live target: one by one vs batched, per backend.

    .venv/bin/python bench/bench_memory.py [--reads 100000]

Prints CPU time per read (our process's user+sys, so other load on the machine does not
count) and the batched/one-by-one ratio, for 8-byte words (pointer chasing) and 256-byte
stack tops, against the spinner fixture.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import gotoolchain  # noqa: E402
from goflame.process import procfs  # noqa: E402
from goflame.process.memory import ProcessMemory  # noqa: E402


def per_read_us(fn, n: int) -> float:
    t = time.process_time()
    fn()
    return (time.process_time() - t) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reads", type=int, default=100_000)
    n = ap.parse_args().reads
    binary = gotoolchain.build(REPO / "tests" / "fixtures" / "spinner", gotoolchain.BuildSpec())
    p = subprocess.Popen([str(binary), "-spinners", "1", "-gc", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        p.stdout.readline()
        heap = max((m for m in procfs.maps(p.pid) if m.perms.startswith("rw") and not m.inode),
                   key=lambda m: m.end - m.start)
        span = min(heap.end - heap.start - 4096, 1 << 20)
        for size in (8, 256):
            requests = [(heap.start + (i * 4104) % span, size) for i in range(n)]
            for backend in ("procmem", "vm_readv"):
                mem = ProcessMemory(p.pid, backend)  # type: ignore[arg-type]
                read = mem.read
                one = per_read_us(lambda: [read(a, s) for a, s in requests], n)  # noqa: B023
                many = per_read_us(lambda: mem.read_many(requests), n)  # noqa: B023
                print(f"{size:4d}-byte reads via {backend:8s}: one by one {one:5.2f} us ({1 / one:5.2f} M/s), "
                      f"read_many {many:5.2f} us ({1 / many:5.2f} M/s): batched is {one / many:4.1f}x")
                mem.close()
            auto = ProcessMemory(p.pid)
            print(f"{size:4d}-byte reads, default: single reads via {auto.backend}, "
                  f"batches via {auto.batch_backend}")
    finally:
        p.kill()
        p.wait()


if __name__ == "__main__":
    main()
