#!/usr/bin/env python3
"""goflame's accuracy against perf on realistic workloads: prints markdown tables.

    .venv/bin/python scripts/accuracy.py                        # everything, 3 runs each
    .venv/bin/python scripts/accuracy.py -w allocgc -e ptrace -g 1.27 --runs 1

For each Go version and workload (tests/fixtures/{allocgc,httpload,lockcontend}, built
unstripped by a real toolchain), the workload is started once and, run after run, each
engine is measured on it by tests/perf_oracle.py (perf and goflame on the same process at the
same time, until both have --min-samples). Per workload x engine x Go version the runs are
pooled into one table of the leaves either side gives >= --floor %, with each run's
difference beside it, then the syscall and kernel shares, goflame's errors and truncated
stacks, and the issue's verdicts per run. The definitions are perf_oracle's docstring.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import gotoolchain as gt  # noqa: E402
import perf_oracle as po  # noqa: E402
import workloads as wl  # noqa: E402

DEFAULTS = po.Settings()


@dataclass(frozen=True, slots=True)
class Config:
    workload: wl.Workload
    engine: po.Engine
    spec: gt.BuildSpec

    @property
    def title(self) -> str:
        return f"{self.workload.value} · {self.engine.value} engine · {self.spec.tag}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-w", "--workload", action="append", choices=[w.value for w in wl.Workload])
    ap.add_argument("-e", "--engine", action="append", choices=[e.value for e in po.Engine])
    ap.add_argument("-g", "--go", action="append", choices=list(gt.MATRIX), help="Go release (default 1.27, 1.19)")
    ap.add_argument("--cgo", action="store_true", help="cgo builds instead of static ones")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--min-samples", type=int, default=DEFAULTS.min_samples)
    ap.add_argument("--rate", type=float, default=DEFAULTS.rate, help="goflame's -r")
    ap.add_argument("--perf-rate", type=int, default=DEFAULTS.perf_rate, help="perf's -F")
    ap.add_argument("--max-seconds", type=float, default=DEFAULTS.max_seconds, help="per measurement")
    ap.add_argument("--floor", type=float, default=1.5, help="leaves shown: either side >= this %%")
    ap.add_argument("-o", "--output", type=Path, help="also write the markdown here")
    ap.add_argument("--keep", type=Path, help="keep every run's goflame pprof and perf.data in this directory")
    ap.add_argument("--json", type=Path, help="also save the measurements (counts) as JSON here")
    ap.add_argument("--render", type=Path, metavar="JSON", help="measure nothing: render a --json file")
    return ap.parse_args(argv)


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def measure_all(args: argparse.Namespace) -> dict[Config, list[po.Measurement]]:
    """Every configuration's runs; engines alternate on one workload process per Go version."""
    results: dict[Config, list[po.Measurement]] = {}
    engines = [po.Engine(e) for e in (args.engine or [e.value for e in po.Engine])]
    for go in args.go or ["1.27", "1.19"]:
        spec = gt.BuildSpec(go=go, cgo=args.cgo)
        for w in [wl.Workload(x) for x in (args.workload or [w.value for w in wl.Workload])]:
            running = wl.start(w, spec)
            try:
                for run in range(args.runs):
                    for e in engines:
                        cfg = Config(w, e, spec)
                        s = po.Settings(engine=e, rate=args.rate, perf_rate=args.perf_rate,
                                        min_samples=args.min_samples, max_seconds=args.max_seconds)
                        load = loadavg()
                        with tempfile.TemporaryDirectory(prefix="goflame-accuracy-") as tmp:
                            where = Path(tmp)
                            if args.keep:
                                where = args.keep / f"{w.value}-{e.value}-{spec.tag}-run{run + 1}"
                                where.mkdir(parents=True, exist_ok=True)
                            m = po.measure(running.pid, running.binary, s, where)
                        results.setdefault(cfg, []).append(m)
                        print(f"# {cfg.title} run {run + 1}: load {load}, target {m.cpus:.2f} CPUs, "
                              f"{m.seconds:.1f} s, perf {m.perf.samples:,} / goflame {m.goflame.samples:,} samples",
                              file=sys.stderr)
                        assert running.alive(), f"{w.value} died during the measurement"
            finally:
                running.close()
    return results


def config_table(cfg: Config, ms: list[po.Measurement], floor: float, min_samples: int) -> list[str]:
    """One configuration: pooled shares, each run's differences, the verdicts per run."""
    pool = sum(ms[1:], ms[0])
    lines = [f"### {cfg.title}", "",
             f"{len(ms)} run(s), {pool.seconds:.0f} s of recording, target {pool.cpus:.2f} CPUs; "
             f"perf {pool.perf.samples:,} samples, goflame {pool.goflame.samples:,}.", "",
             "| Go leaf (physical) | perf % | goflame % | diff pp (±σ) | per run |", "|---|---:|---:|---:|---|"]
    per_run = [{r.function: r for r in po.rows(m, 0.0)} for m in ms]
    for r in po.rows(pool, floor):
        runs = " / ".join(f"{d[r.function].diff:+.1f}" if r.function in d else "·" for d in per_run)
        mark = "**" if r.judged and not r.within else ""
        lines.append(f"| {mark}{r.function}{mark} | {r.perf:.1f} | {r.goflame:.1f} | {r.diff:+.1f} (±{r.sigma:.1f}) "
                     f"| {runs} |")
    sig = po.sigma_pp(pool.perf.syscall_share, pool.perf.samples, pool.goflame.syscall_share, pool.goflame.samples)
    runs = " / ".join(f"{m.goflame.syscall_share - m.perf.syscall_share:+.1f}" for m in ms)
    lines.append(f"| *syscall wrappers* | {pool.perf.syscall_share:.1f} | {pool.goflame.syscall_share:.1f} | "
                 f"{pool.goflame.syscall_share - pool.perf.syscall_share:+.1f} (±{sig:.1f}) | {runs} |")
    entry = ", ".join(f"{k.value} {po.share(n, pool.perf.samples):.1f}" for k, n in pool.perf.kernel_entry.most_common())
    g = pool.goflame
    cut = ", ".join(f"{k.removeprefix('[truncated: ').rstrip(']')} {n}" for k, n in g.truncated_by.most_common())
    lines += ["", f"perf kernel share {pool.perf.kernel_share:.1f} % ({entry or 'none'}); "
                  f"foreign {pool.perf.foreign}, unnamed Go leaves {pool.perf.unknown}"
                  + (f"; syscall-entered leaves not in the wrapper set: {dict(pool.perf.unlisted)}"
                     if pool.perf.unlisted else "") + ".",
              f"goflame errors {g.errors:,} ({po.share(g.errors, g.errors + g.samples):.1f} %), lost {g.lost:,}, truncated "
              f"{g.truncated:,} ({po.share(g.truncated, g.errors + g.samples):.1f} %{': ' + cut if cut else ''}); "
              f"errors + truncated per run: "
              + " / ".join(f"{m.goflame.bad_share:.1f} %" for m in ms) + ".", ""]
    per = [po.verdicts(m, min_samples) for m in ms]
    lines.append("Verdicts, run by run: " + "; ".join(
        f"{vs[0].criterion.value} " + "/".join("ok" if v.passed else "FAIL" for v in vs)
        for vs in zip(*per, strict=True)) + ".")
    return [*lines, ""]


def summary_table(results: dict[Config, list[po.Measurement]], min_samples: int) -> list[str]:
    lines = ["| workload | engine | build | goflame samples | errors % | truncated % | perf kernel % | "
             "perf syscall % | goflame syscall % | worst judged leaf (pp) | (a) (b) (c) runs passed |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for cfg, ms in results.items():
        pool = sum(ms[1:], ms[0])
        g, p = pool.goflame, pool.perf
        judged = [r for r in po.rows(pool, po.JUDGED_PCT) if r.judged]
        worst = max(judged, key=lambda r: abs(r.diff), default=None)
        passed = [sum(po.verdicts(m, min_samples)[i].passed for m in ms) for i in (1, 2, 3)]
        lines.append(f"| {cfg.workload.value} | {cfg.engine.value} | {cfg.spec.tag} | {g.samples:,} | "
                     f"{po.share(g.errors, g.errors + g.samples):.1f} | {po.share(g.truncated, g.errors + g.samples):.1f} | "
                     f"{p.kernel_share:.1f} | {p.syscall_share:.1f} | {g.syscall_share:.1f} | "
                     + (f"{worst.function} {worst.diff:+.1f}" if worst else "-")
                     + f" | {' '.join(f'{n}/{len(ms)}' for n in passed)} |")
    return lines


def save(results: dict[Config, list[po.Measurement]], path: Path) -> None:
    path.write_text(json.dumps([{"workload": c.workload.value, "engine": c.engine.value, "go": c.spec.go,
                                 "cgo": c.spec.cgo, "runs": [po.to_json(m) for m in ms]}
                                for c, ms in results.items()], indent=1) + "\n")


def load(path: Path) -> dict[Config, list[po.Measurement]]:
    return {Config(wl.Workload(d["workload"]), po.Engine(d["engine"]), gt.BuildSpec(go=d["go"], cgo=d["cgo"])):
            [po.from_json(r) for r in d["runs"]] for d in json.loads(path.read_text())}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = load(args.render) if args.render else measure_all(args)
    if args.json:
        save(results, args.json)
    md = ["## Summary", "", *summary_table(results, args.min_samples), ""]
    for cfg, ms in results.items():
        md += config_table(cfg, ms, args.floor, args.min_samples)
    text = "\n".join(md)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
