"""`go tool pprof` as the oracle for pprof files, and real Go profiles to feed it.

Everything here runs Go's own tools; parsing their text is the only code of ours involved.
"""

from __future__ import annotations

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
    """`root;...;leaf` -> summed value, from `go tool pprof -traces`."""
    c: Counter[str] = Counter()
    for v, frames in traces(path, sample_index):
        c[";".join(name for name, _ in reversed(frames))] += v
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
