#!/usr/bin/env python3
"""How often `goflame diff` fails unchanged code, and how often it catches a real regression,
on real runs of examples/regress made by `go test -bench -cpuprofile` on this machine.

usage: bench_diff_noise.py [--base 30] [--slow 8] [--iterations 45000]

Collects --base profiles of the unchanged benchmark and --slow with `checksum` 2x slower
(REGRESS_SLOW=1), one after the other, then diffs every ordered pair of unchanged runs (each
must pass) and every (unchanged, slow) pair (each must flag `checksum` alone), with the default
options and with the sampling-only test of earlier releases (phi 2, no run-to-run term) as
the baseline. Also prints each function's spread of share across the unchanged runs next to
what sampling alone explains: the run-to-run part is what `--run-noise` models (docs/diff.md).
No budget of its own: the matrix test judges 20 pairs against the 1 % rate; this measures the
rates behind it. ~7 s per profile here.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import tempfile
import time
from pathlib import Path

import benchlib as bl  # puts tests/ on sys.path
from goflame.diff import DiffOptions, diff_profiles, function_counts
from goflame.export import read_profile
from pprof_oracle import go_test_profile

CHECKSUM = "example.com/regress.checksum"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=int, default=30, help="profiles of the unchanged benchmark")
    ap.add_argument("--slow", type=int, default=8, help="profiles with checksum 2x slower")
    ap.add_argument("--iterations", type=int, default=45000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="goflame-bench-diff-noise-") as d:
        tmp = Path(d)
        t0 = time.monotonic()
        base = [read_profile(go_test_profile(tmp / f"b{i}.pprof", iterations=a.iterations)) for i in range(a.base)]
        slow = [read_profile(go_test_profile(tmp / f"s{i}.pprof", iterations=a.iterations, slow=True))
                for i in range(a.slow)]
        print(f"{a.base} unchanged and {a.slow} slow profiles in {time.monotonic() - t0:.0f} s  [{bl.load()}]")

    counts = [(p.aggregate().total, function_counts(p.aggregate())[0]) for p in base]
    print("self share across the unchanged runs (pp): spread (SD) vs what sampling alone explains")
    names = {f for _n, c in counts for f, k in c.items() if k >= 20}
    for f in sorted(names):
        shares = [c.get(f, 0) / n for n, c in counts]
        p = statistics.mean(shares)
        binom = statistics.mean(math.sqrt(p * (1 - p) / n) for n, _c in counts)
        print(f"  {f:48s} {100 * p:5.1f} %  SD {100 * statistics.stdev(shares):4.2f}  sampling {100 * binom:4.2f}")

    for label, opts in (("default (phi 2.5, run-to-run 5 %)", DiffOptions()),
                        ("sampling only (phi 2, no run-to-run term)", DiffOptions(dispersion=2.0, run_noise=0.0))):
        false = sum(diff_profiles(x, y, opts).exit_code != 0 for x, y in itertools.permutations(base, 2))
        consecutive = sum(diff_profiles(base[i], base[i + 1], opts).exit_code != 0 for i in range(len(base) - 1))
        caught = 0
        missed = []
        for i, x in enumerate(base):
            for j, y in enumerate(slow):
                r = diff_profiles(x, y, opts)
                if r.exit_code == 1 and [c.function for c in r.regressions] == [CHECKSUM]:
                    caught += 1
                else:
                    c = next(c for c in r.changes if c.function == CHECKSUM)
                    missed.append(f"base {i} ({100 * c.base_self_share:.1f} % of {r.base.samples}) -> slow {j} "
                                  f"({100 * c.new_self_share:.1f} % of {r.new.samples}): z {c.self_z:.2f}, "
                                  f"adjusted p {c.self_p:.2g}, flagged {[c.function for c in r.regressions]}")
        pairs = len(base) * (len(base) - 1)
        print(f"{label}: unchanged pairs failed {false} of {pairs} ({100 * false / max(pairs, 1):.1f} %), "
              f"consecutive {consecutive} of {len(base) - 1}; 2x checksum caught alone in {caught} of "
              f"{len(base) * len(slow)}  [{bl.load()}]")
        for m in missed[:10]:
            print(f"    not caught: {m}")


if __name__ == "__main__":
    main()
