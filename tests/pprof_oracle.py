"""`go tool pprof` as the oracle for pprof files, and real Go profiles to feed it.

Everything here runs Go's own tools; parsing their text is the only code of ours involved.
"""

from __future__ import annotations

import math
import re
import subprocess
from collections import Counter
from pathlib import Path

import gotoolchain as gt

ROOT = Path(__file__).resolve().parent.parent
REGRESS = ROOT / "examples" / "regress"

# Value columns of `go tool pprof -top`; the name may hold spaces, and an "(inline)" or
# "(partial-inline)" label may follow it.
_TOP_ROW = re.compile(r"^\s*(\S+)\s+\S+%\s+\S+%\s+(\S+)\s+\S+%\s+(.*?)(?: \((?:partial-)?inline\))?$")
_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "": 1}


def go_pprof(*args: str | Path, timeout: float = 180) -> str:
    root = gt.goroot(gt.FAST)
    r = subprocess.run([str(root / "bin" / "go"), "tool", "pprof", *map(str, args)], env=gt.go_env(root),
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"go tool pprof {' '.join(map(str, args))} failed: {r.stderr.strip()}")
    return r.stdout


def value(text: str) -> int:
    """A value as pprof prints it ("12", "10ms", "1.50s") in its base unit (ns for time)."""
    m = re.fullmatch(r"([0-9.]+)([a-zµ]*)", text)
    assert m, f"not a pprof value: {text!r}"
    return round(float(m.group(1)) * _UNITS[m.group(2)])


def top_table(path: Path, sample_index: str = "samples") -> dict[str, tuple[int, int]]:
    """function -> (flat, cum) from `go tool pprof -top`, every node (no dropping)."""
    # -unit=ns: times in whole nanoseconds (pprof otherwise rounds "1.7225s" to "1.72s")
    unit = ["-unit=ns"] if sample_index in ("cpu", "wall") else []
    out = go_pprof("-top", "-nodecount=1000000", "-nodefraction=0", "-edgefraction=0", *unit,
                   f"-sample_index={sample_index}", path)
    rows: dict[str, tuple[int, int]] = {}
    started = False
    for line in out.splitlines():
        if not started:
            started = line.split() == ["flat", "flat%", "sum%", "cum", "cum%"]
            continue
        m = _TOP_ROW.match(line)
        assert m, f"unexpected -top line: {line!r}"
        name = m.group(3)
        assert name not in rows, f"two -top rows for {name}"
        rows[name] = (value(m.group(1)), value(m.group(2)))
    assert started, f"no -top table in:\n{out}"
    return rows


def traces(path: Path, sample_index: str | None = None) -> list[tuple[int, list[tuple[str, bool]]]]:
    """Each sample of `go tool pprof -traces` as (value, [(function, inlined)] innermost first)."""
    args = ["-traces"] + ([f"-sample_index={sample_index}"] if sample_index else []) + [path]
    out = go_pprof(*args)
    samples = []
    for block in out.split("-----------+-------------------------------------------------------")[1:]:
        frames: list[tuple[str, bool]] = []
        val = None
        for line in block.splitlines():
            if not line.strip():
                continue
            head, rest = line[:10], line[10:]
            if rest.startswith(":  "):  # a label line: "%10s:  %s"
                continue
            assert rest.startswith("   "), f"unexpected -traces line: {line!r}"
            name = rest[3:]
            if head.strip():
                val = value(head.strip())
            inline = name.endswith(" (inline)")
            frames.append((name.removesuffix(" (inline)"), inline))
        if frames:
            assert val is not None
            samples.append((val, frames))
    return samples


def traces_folded(path: Path, sample_index: str | None = None) -> Counter[str]:
    """`root;...;leaf` -> summed value, from `go tool pprof -traces`.

    A name holding the folded format's separator is written with ":" for ";" (README,
    "report"): Go spells the struct types of generic shapes with ";" between fields, e.g.
    `atomic.(*Pointer[go.shape.struct { runtime.spanSetBlockHeader2; runtime.spans ... }]).StoreNoWB`,
    which the GC's sweeper runs now and then."""
    c: Counter[str] = Counter()
    for v, frames in traces(path, sample_index):
        c[";".join(name.replace(";", ":") for name, _ in reversed(frames))] += v
    return c


def raw_header(path: Path) -> dict[str, str]:
    """The header lines of `go tool pprof -raw` (PeriodType, Period, Time, Duration, ...)."""
    out = go_pprof("-raw", path)
    head: dict[str, str] = {}
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line == "Samples:":
            head["SampleTypes"] = lines[i + 1].strip()
            break
        key, sep, val = line.partition(": ")
        if sep:
            head[key] = val
    return head


def go_test_profile(out: Path, *, iterations: int, slow: bool = False, switch: str = "env",
                    timeout: float = 900) -> Path:
    """CPU profile of examples/regress's benchmark made by `go test -bench -cpuprofile` itself.

    The test binary goes to `out`'s directory (-o), so nothing is written into the example.
    Iterations rather than a duration: Go samples CPU time, so this fixes the sample count
    whatever else the machine is running.
    """
    root = gt.goroot(gt.FAST)
    env = gt.go_env(root)
    args = [str(root / "bin" / "go"), "test", "-run", "^$", "-bench", ".", "-count", "1",
            "-benchtime", f"{iterations}x", "-cpuprofile", str(out), "-o", str(out.with_suffix(".test"))]
    if slow and switch == "env":
        env["REGRESS_SLOW"] = "1"
    elif slow:
        args += ["-args", "-slow"]
    r = subprocess.run(args, cwd=REGRESS, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"go test -bench failed:\n{r.stdout}\n{r.stderr}"
    assert out.exists()
    return out


def total_samples(path: Path) -> int:
    """The profile's sample count as `go tool pprof -top -sample_index=samples` totals it."""
    out = go_pprof("-top", "-nodecount=1", "-sample_index=samples", path)
    m = re.search(r"^Showing nodes accounting for \S+, \S+% of (\S+) total$", out, re.M)
    assert m, f"no total in go tool pprof -top:\n{out}"
    return value(m.group(1))


def go_test_profiles_interleaved(sides: dict[str, bool], directory: Path, *, min_samples: int, rounds: int = 6,
                                 switch: str = "env", first_iterations: int = 3000,
                                 timeout: float = 900) -> dict[str, Path]:
    """CPU profiles of examples/regress's benchmark, `directory/<side>.pprof` for each side of
    `sides` (its value: the slow switch on), each made of chunks run in turn with the other
    sides' chunks, so that all sides see the same machine: a busy neighbour, a slow patch of
    memory or a change of CPU clock then changes every side alike, not one.

    Round after round, each side runs one chunk (the same iterations for every side; the order
    rotates each round) until every side has `min_samples` samples: sized by samples, not by
    iterations. After the first round the chunk size is set from the samples per iteration seen
    so far, so that about `rounds` rounds get there whatever the CPU's speed. Each side's chunks
    are merged by `go tool pprof -proto` (Go's own tool), and the merge is checked to hold
    exactly the chunks' samples.

    `go test -c` builds the test binary once; each chunk is that binary run the way `go test
    -bench -cpuprofile` runs it (in the package directory, -test.bench, -test.benchtime Nx,
    -test.cpuprofile), so every sample is written by the Go runtime's own profiler.
    """
    root = gt.goroot(gt.FAST)
    env = gt.go_env(root)
    directory.mkdir(parents=True, exist_ok=True)
    exe = directory / "regress.test"
    r = subprocess.run([str(root / "bin" / "go"), "test", "-c", "-o", str(exe)], cwd=REGRESS, env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"go test -c failed:\n{r.stdout}\n{r.stderr}"
    names = list(sides)
    chunks: dict[str, list[Path]] = {n: [] for n in names}
    counts: dict[str, int] = dict.fromkeys(names, 0)
    iterations = first_iterations
    for rnd in range(4 * rounds):
        if rnd and min(counts.values()) >= min_samples:
            break
        for name in names[rnd % len(names):] + names[: rnd % len(names)]:
            out = directory / f"{name}.{rnd}.pprof"
            args = [str(exe), "-test.run", "^$", "-test.bench", ".", "-test.count", "1",
                    "-test.benchtime", f"{iterations}x", "-test.cpuprofile", str(out)]
            cenv = dict(env)
            if sides[name] and switch == "env":
                cenv["REGRESS_SLOW"] = "1"
            elif sides[name]:
                args.append("-slow")
            r = subprocess.run(args, cwd=REGRESS, env=cenv, capture_output=True, text=True, timeout=timeout)
            assert r.returncode == 0, f"{' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
            chunks[name].append(out)
            counts[name] += total_samples(out)
        if rnd == 0:
            # the sparsest side's samples per iteration sizes the chunks of the rounds to come
            per_iteration = min(counts.values()) / iterations
            iterations = max(first_iterations, math.ceil(min_samples / (rounds - 1) / max(per_iteration, 1e-9)))
    else:
        raise AssertionError(f"{4 * rounds} rounds gave only {counts} samples, want {min_samples} a side")
    merged = {}
    for name in names:
        out = directory / f"{name}.pprof"
        go_pprof("-proto", "-output", out, *chunks[name])
        assert total_samples(out) == counts[name], f"{out}: the merge lost samples"
        merged[name] = out
    return merged
