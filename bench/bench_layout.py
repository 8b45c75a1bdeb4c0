#!/usr/bin/env python3
"""How much getting the runtime layout from DWARF costs, as ratios measured in one run.

The target is a big unstripped Go binary: the Go compiler (cmd/compile) built from the
fast-tier toolchain's own source, cached after the first run (about a minute to build).
Baselines, on the same file in the same run:
- opening it: pyelftools parsing the ELF and section headers (what any use of it costs);
- the straightforward way: pyelftools' DWARF reader (which inflates every debug section)
  walking every DIE of the runtime's units until the one that holds its struct types.

    .venv/bin/python bench/bench_layout.py [BINARY]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from elftools.elf.elffile import ELFFile  # noqa: E402

import gotoolchain as gt  # noqa: E402
from goflame.binary import dwarf  # noqa: E402
from goflame.binary import layout as L  # noqa: E402


def big_binary() -> Path:
    root = gt.goroot(gt.FAST)
    version = (root / "VERSION").read_text().splitlines()[0]
    out = gt.FIXTURES / f"bench-cmd-compile-{version}" / "compile"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        print(f"building cmd/compile with {version} (once) ...", file=sys.stderr)
        subprocess.run([str(root / "bin" / "go"), "build", "-o", str(out), "cmd/compile"],
                       cwd=root / "src", env=gt.go_env(root, GOFLAGS=""), check=True)
    return out


def best_of(n: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) if n < 5 else statistics.median(times)


def open_elf(path: Path) -> None:
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        for _ in elf.iter_sections():
            pass


def naive(path: Path) -> int:
    """Every DIE of the runtime's units up to the one that holds its struct types."""
    with open(path, "rb") as fh:
        dwarf = ELFFile(fh).get_dwarf_info()
        for cu in dwarf.iter_CUs():
            if cu.get_top_DIE().attributes["DW_AT_name"].value != b"runtime":
                continue
            n, structs = 0, 0
            for die in cu.iter_DIEs():
                n += 1
                structs += die.tag == "DW_TAG_structure_type"
            if structs:
                return n
    return 0


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else big_binary()
    size = path.stat().st_size
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        sec = elf.get_section_by_name(".debug_info")
        stored = sec["sh_size"] if sec is not None else 0
        full, _ = dwarf.debug_info(elf, full=True)
        part, complete = dwarf.debug_info(elf, full=False)
        reader = dwarf.DwarfReader(part, dwarf.debug_section(elf, "abbrev"))
        layout = L.layout_from_reader(reader, L.STRUCTS)
    assert layout is not None, f"{path} has no usable DWARF"

    t_open = best_of(5, lambda: open_elf(path))
    t_layout = best_of(5, lambda: L.layout_from_dwarf(path))
    t_naive = best_of(1, lambda: naive(path))

    print(f"binary: {path} ({size / 1e6:.1f} MB, Go {layout.version})")
    print(f".debug_info: {stored / 1e6:.2f} MB stored, {len(full) / 1e6:.2f} MB inflated; "
          f"inflated by layout_from_dwarf: {len(part) / 1e6:.2f} MB "
          f"({100 * len(part) / len(full):.0f}%{'' if not complete else ', all'})")
    print(f"structs: {len(layout.structs)}, fields: {sum(len(s.fields) for s in layout.structs.values())}, "
          f"DIEs decoded: {reader.decoded}")
    print(f"open ELF (pyelftools, section headers):  {t_open * 1e3:8.1f} ms")
    print(f"layout_from_dwarf:                       {t_layout * 1e3:8.1f} ms"
          f"   = {t_layout / t_open:6.1f} x open")
    print(f"pyelftools walk of the type unit:        {t_naive * 1e3:8.1f} ms"
          f"   = {t_naive / t_layout:6.1f} x layout_from_dwarf")


if __name__ == "__main__":
    main()
