"""Differential profiles and the CI verdict of `goflame diff BASE NEW`.

Both profiles become shares of their own totals, per function: *self* (samples whose leaf is
the function) and *total* (samples with the function anywhere on the stack, counted once). A
change is judged by a test suited to sampled counts, so that noise never fails a build and a
real regression does:

* Two-proportion z-test per function and measure (self, total): under "no change", both
  profiles sample one share p, so z = (p_new - p_base) / sqrt(phi * p(1-p) (1/N_base + 1/N_new)).
* phi is the over-dispersion: samples of a function are correlated in time (a function runs for
  a while, GC comes in bursts), so counts vary more than a binomial's. From a recording with
  sample times it is measured — the run is cut into ~20 equal-count blocks and the spread of
  each function's share between blocks is compared with a binomial's (pooled Pearson chi-square
  per degree of freedom). A pprof or folded file has no sample times: phi is then
  `DEFAULT_DISPERSION`, what run-to-run pairs of `go test -cpuprofile` profiles showed
  (docs/diff.md). Never below 1.
* Runs differ by more than their samples: the machine (its caches, a busy neighbour, the CPU's
  clock) changes functions' costs relative to each other from one run to the next, by the same
  few per cent however long the runs are. Each profile's share gets a variance term for that,
  (sigma p(1-p))^2 — sigma the run-to-run spread of a function's relative cost, `run_noise`
  (`DEFAULT_RUN_NOISE`, measured on examples/regress: docs/diff.md) — so a long profile does not
  turn the machine's drift into a significant "regression".
* Every function with enough samples is tested for self and total share (once when the two
  are the same counts). Growth is a one-sided test — the gate only asks "did it grow?" — and
  the p-values are Holm-corrected over all functions, so `confidence` holds for the whole
  report, not per line; shrinkage (for the report and the colours) is a second such family.
* A regression is a significant growth at least as large as the thresholds (percentage points
  of all samples): `fail_on_self` for self share, `fail_on` for total share. A growth of total
  share that a regressed callee accounts for (at least half of it) is listed as explained by
  that callee, not as a regression of its own: the callers of a slow function are not culprits.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from goflame.errors import BadInput, OutputError
from goflame.export.pprof import profile_kind
from goflame.inputs import DEFAULT_LIMITS, Limits
from goflame.profile import RUNNING, LazySamples, Profile, Stacks

# phi for profiles without sample times, and the run-to-run spread of a function's relative
# cost (sigma): fitted to 30 runs of unchanged examples/regress (docs/diff.md).
DEFAULT_DISPERSION = 2.5
DEFAULT_RUN_NOISE = 0.05
BLOCKS = 20  # time blocks for measuring phi
MIN_BLOCK_SAMPLES = 25
EXPLAINED_FRACTION = 0.5  # a callee's total growth that explains its caller's

# Leaves the runtime injects on top of whatever code was running: Go's asynchronous preemption
# call. Its share follows the machine's load, not the code (3 % to 29 % in runs of the same
# unchanged benchmark here), so the diff counts its samples for the function it interrupted.
TRANSPARENT = frozenset({"runtime.asyncPreempt"})


@dataclass(frozen=True, slots=True)
class DiffOptions:
    fail_on: float | None = 1.0  # percentage points of total share; None: total share never fails
    fail_on_self: float | None = 1.0  # percentage points of self share; None: self share never fails
    confidence: float = 0.99
    min_samples: int = 10  # a function needs this many samples (base + new) to be judged
    dispersion: float | None = None  # phi; None: measured from sample times, else DEFAULT_DISPERSION
    run_noise: float = DEFAULT_RUN_NOISE  # sigma: run-to-run spread of a function's relative cost
    states: bool | None = None  # wall profiles: goroutine states as leaves (default: per mode)

    def __post_init__(self) -> None:
        if not 0.5 <= self.confidence < 1:
            raise BadInput(f"--confidence must be at least 0.5 and below 1, not {self.confidence:g}")
        if self.min_samples < 1:
            raise BadInput("--min-samples must be at least 1")
        for name, v in (("--fail-on", self.fail_on), ("--fail-on-self", self.fail_on_self)):
            if v is not None and not 0 <= v <= 100:
                raise BadInput(f"{name} must be between 0 and 100 percentage points, not {v:g}")
        if self.dispersion is not None and not self.dispersion >= 1:
            raise BadInput(f"--dispersion must be at least 1, not {self.dispersion:g}")
        if not 0 <= self.run_noise <= 1:
            raise BadInput(f"--run-noise must be between 0 and 1, not {self.run_noise:g}")


@dataclass(frozen=True, slots=True)
class Side:
    """One of the two profiles, as the diff saw it."""

    name: str
    samples: int
    kind: str  # "cpu", "wall", "goroutine", another pprof type, "" (folded: unknown)
    unit: str  # what a sample's weight counts ("count" for sampled profiles)
    dispersion: float | None  # measured from sample times, if it had them


@dataclass(frozen=True, slots=True)
class Change:
    """One function in either profile: counts, shares (fractions) and the tests' outcome."""

    function: str
    base_self: int
    base_total: int
    new_self: int
    new_total: int
    base_self_share: float
    new_self_share: float
    base_total_share: float
    new_total_share: float
    self_z: float = 0.0
    total_z: float = 0.0
    self_p: float = 1.0  # Holm-adjusted one-sided p-value in the direction of the change (1.0: not judged)
    total_p: float = 1.0
    self_significant: bool = False
    total_significant: bool = False
    regression: str = ""  # "", "self", "total" or "self+total"
    explained_by: str = ""  # callee whose growth accounts for this function's total growth

    @property
    def self_delta(self) -> float:
        """Change of self share in percentage points."""
        return (self.new_self_share - self.base_self_share) * 100

    @property
    def total_delta(self) -> float:
        return (self.new_total_share - self.base_total_share) * 100

    @property
    def significant(self) -> bool:
        return self.self_significant or self.total_significant


@dataclass(frozen=True, slots=True)
class DiffResult:
    base: Side
    new: Side
    options: DiffOptions
    dispersion: float
    dispersion_source: str
    tests: int  # how many tests the Holm correction covered
    counts_tested: bool  # False when weights are not sample counts (no significance test)
    changes: tuple[Change, ...]  # every function, most important first
    warnings: tuple[str, ...] = field(default=())

    @property
    def regressions(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.regression)

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0

    @property
    def method(self) -> str:
        o = self.options
        if not self.counts_tested:
            return (f"weights are {self.base.unit}, not sample counts: no significance test, "
                    "the thresholds alone decide")
        return (f"one-sided two-proportion z-tests on sample counts, variance x {self.dispersion:.2f} for "
                f"over-dispersion ({self.dispersion_source}) plus {o.run_noise:.0%} run-to-run spread of each "
                f"function's cost, Holm-corrected over {self.tests} functions "
                f"x measures at {o.confidence:.0%} confidence")

    @property
    def gates(self) -> str:
        o = self.options
        parts = []
        if o.fail_on_self is not None:
            parts.append(f"self share grows >= {o.fail_on_self:g} pp")
        if o.fail_on is not None:
            parts.append(f"total share grows >= {o.fail_on:g} pp")
        return ("fails when a function's " + " or ".join(parts) + ", significantly") if parts else "never fails"


# ---------------------------------------------------------------------------------------------
# statistics


def _z(a: int, na: int, b: int, nb: int, phi: float, run_noise: float = 0.0) -> float:
    """Two-proportion z score (pooled) of b/nb against a/na: sampling variance inflated by phi,
    plus each run's own spread, (run_noise p(1-p))^2 per profile (a relative change r of a
    function's cost moves its share by about r p(1-p))."""
    if not na or not nb:
        return 0.0
    p = (a + b) / (na + nb)
    q = p * (1 - p)
    var = phi * q * (1 / na + 1 / nb) + 2 * (run_noise * q) ** 2
    if var <= 0:
        return 0.0
    return (b / nb - a / na) / math.sqrt(var)


def _p_upper(z: float) -> float:
    """One-sided p-value: P(Z >= z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (valid under any dependence between the tests)."""
    m = len(pvalues)
    order = sorted(range(m), key=pvalues.__getitem__)
    out = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def _leaf_name(stacks: Stacks) -> list[str]:
    return [f.function for f in stacks.frames]


def function_counts(stacks: Stacks) -> tuple[dict[str, int], dict[str, int]]:
    """Per function name: self samples (leaf) and total samples (anywhere on the stack, once).

    Frames of TRANSPARENT functions are left out: their samples count for the function they
    interrupted.
    """
    names = _leaf_name(stacks)
    ids: dict[str, int] = {}
    fid = [ids.setdefault(n, len(ids)) for n in names]  # frame index -> function id (names merge)
    hidden = {i for i, n in enumerate(names) if n in TRANSPARENT}
    self_c = [0] * len(ids)
    total_c = [0] * len(ids)
    fmap = fid.__getitem__
    for key, c in stacks.counts.items():
        if hidden and not hidden.isdisjoint(key):
            key = tuple(i for i in key if i not in hidden)
        if not key:
            continue
        self_c[fid[key[-1]]] += c
        for i in set(map(fmap, key)):
            total_c[i] += c
    by_id = list(ids)
    return ({by_id[i]: v for i, v in enumerate(self_c) if v},
            {by_id[i]: v for i, v in enumerate(total_c) if v})


def measure_dispersion(profile: Profile, states: bool) -> float | None:
    """phi from the spread of leaf-function shares between equal-count time blocks; None when
    the profile has no sample times or too few samples for it."""
    if not profile.detailed or len(profile.samples) < 2 or isinstance(profile.samples, LazySamples):
        return None  # LazySamples come from pprof, whose samples have no times
    samples = profile.samples
    if all(s.timestamp_ns == samples[0].timestamp_ns for s in samples):
        return None
    total = sum(s.weight for s in samples)
    k = min(BLOCKS, total // MIN_BLOCK_SAMPLES)
    if k < 5:
        return None
    ordered = sorted(samples, key=lambda s: s.timestamp_ns)
    blocks: list[dict[str, int]] = [{} for _ in range(k)]
    sizes = [0] * k
    seen = 0
    for s in ordered:
        if states and s.state and s.state != RUNNING:
            name = f"[{s.state}]"
        else:
            name = next((f.function for f in s.frames if f.function not in TRANSPARENT), "")
        b = min(k - 1, seen * k // total)
        seen += s.weight
        d = blocks[b]
        d[name] = d.get(name, 0) + s.weight
        sizes[b] += s.weight
    overall: dict[str, int] = {}
    for d in blocks:
        for n, c in d.items():
            overall[n] = overall.get(n, 0) + c
    chi2 = 0.0
    df = 0
    for n, c in overall.items():
        p = c / total
        if p <= 0 or p >= 1 or min(sizes) * min(p, 1 - p) < 5:
            continue  # too rare (or everything) for the chi-square to mean anything
        for d, size in zip(blocks, sizes, strict=True):
            e = size * p
            chi2 += (d.get(n, 0) - e) ** 2 / (e * (1 - p))
        df += k - 1
    return chi2 / df if df else None


def _best_beneath(stacks: Stacks, growth: dict[str, float], targets: set[str]) -> dict[str, tuple[float, str]]:
    """For each function in `targets`: the function of `growth` with the largest growth found
    deeper on any stack that holds it (one pass over the stacks, leaf to root)."""
    labels = _leaf_name(stacks)
    delta = [growth.get(n) for n in labels]
    relevant = {i for i, d in enumerate(delta) if d is not None}
    best: dict[str, tuple[float, str]] = {}
    for key in stacks.counts:
        if relevant.isdisjoint(key):
            continue
        deeper: tuple[float, str] | None = None
        for i in reversed(key):
            d = delta[i]
            if d is None:
                continue
            name = labels[i]
            if deeper is not None and name in targets and deeper[1] != name:
                cur = best.get(name)
                if cur is None or deeper[0] > cur[0]:
                    best[name] = deeper
            if deeper is None or d > deeper[0]:
                deeper = (d, name)
    return best


def _side(name: str, profile: Profile, samples: int, states: bool) -> Side:
    unit = str(profile.meta.extra.get("unit", "count")) if profile.meta.extra.get("source") == "pprof" else "count"
    return Side(name, samples, profile_kind(profile), unit, measure_dispersion(profile, states))


def diff_profiles(base: Profile, new: Profile, options: DiffOptions = DiffOptions(), *,
                  base_name: str = "BASE", new_name: str = "NEW") -> DiffResult:
    """Compare two profiles function by function and decide the CI verdict."""
    kb, kn = profile_kind(base), profile_kind(new)
    if kb and kn and kb != kn:
        raise BadInput(f"mismatched sample types: {base_name} is a {_kind_text(kb)} profile, "
                       f"{new_name} is a {_kind_text(kn)} profile")
    states = options.states
    if states is None:
        states = (kb or kn) == "wall"
    sb, sn = base.aggregate(states=states), new.aggregate(states=states)
    nb, nn = sb.total, sn.total
    for nm, p, n in ((base_name, base, nb), (new_name, new, nn)):
        if n <= 0:
            what = "empty file" if p.meta.extra.get("source") == "folded" and not p.samples else "empty profile"
            raise BadInput(f"{nm} has no samples ({what}): nothing to compare")
    side_b = _side(base_name, base, nb, states)
    side_n = _side(new_name, new, nn, states)
    if side_b.unit != side_n.unit:
        raise BadInput(f"mismatched sample types: {base_name} counts {side_b.unit}, {new_name} counts {side_n.unit}")

    warnings: list[str] = []
    enough = 10 * options.min_samples
    for side in (side_b, side_n):
        if side.samples < enough:
            warnings.append(f"{side.name} has only {side.samples:,} samples: too few to judge small changes "
                            f"(want at least {enough:,}; profile longer)")
    for nm, p in ((base_name, base), (new_name, new)):
        notes = p.reading_notes(nm)
        if not p.complete and p.cut_short is None:
            notes.append(f"{nm} is an incomplete recording (the profiler was stopped abruptly)")
        warnings.extend(notes)
    counts_tested = side_b.unit == "count"
    if not counts_tested:
        warnings.append(f"weights are {side_b.unit}, not sample counts: significance cannot be tested")

    if options.dispersion is not None:
        phi, source = options.dispersion, "given by --dispersion"
    else:
        measured = [d for d in (side_b.dispersion, side_n.dispersion) if d is not None]
        if len(measured) == 2:
            phi, source = max(1.0, *measured), "measured from sample times"
        else:
            phi, source = DEFAULT_DISPERSION, "default for profiles without sample times"
            if measured:
                phi = max(phi, measured[0])

    self_b, total_b = function_counts(sb)
    self_n, total_n = function_counts(sn)
    names = sorted(set(total_b) | set(total_n))
    rows: list[dict[str, Any]] = []
    zs: list[float] = []
    slots: list[list[tuple[int, str]]] = []  # per test: the (row, measure) pairs it decides
    for name in names:
        a_s, a_t, b_s, b_t = self_b.get(name, 0), total_b.get(name, 0), self_n.get(name, 0), total_n.get(name, 0)
        row: dict[str, Any] = dict(function=name, base_self=a_s, base_total=a_t, new_self=b_s, new_total=b_t,
                                   base_self_share=a_s / nb, new_self_share=b_s / nn,
                                   base_total_share=a_t / nb, new_total_share=b_t / nn)
        for what, a, b in (("self", a_s, b_s), ("total", a_t, b_t)):
            if a + b >= options.min_samples:
                z = _z(a, nb, b, nn, phi, options.run_noise)
                row[f"{what}_z"] = z
                if what == "total" and (a, b) == (a_s, b_s) and "self_z" in row:
                    slots[-1].append((len(rows), what))  # a leaf-only function: one test, not two
                    continue
                zs.append(z)
                slots.append([(len(rows), what)])
        rows.append(row)
    alpha = 1 - options.confidence
    # Growth and shrinkage are two one-sided families, each Holm-corrected: the gate asks only
    # "did it grow?"; shrinkage is judged for the report and the colours.
    grow = holm([_p_upper(z) for z in zs])
    shrink = holm([_p_upper(-z) for z in zs])
    adjusted = [g if z > 0 else sh for z, g, sh in zip(zs, grow, shrink, strict=True)]
    if not counts_tested:
        adjusted = [0.0] * len(zs)
    for group, p in zip(slots, adjusted, strict=True):
        for i, what in group:
            rows[i][f"{what}_p"] = p
            rows[i][f"{what}_significant"] = p < alpha

    # The verdict: significant growth over a threshold; callers explained by a regressed callee.
    def grew(r: dict[str, Any], what: str, threshold: float | None) -> bool:
        if threshold is None or not r.get(f"{what}_significant"):
            return False
        d = (r[f"new_{what}_share"] - r[f"base_{what}_share"]) * 100
        return d > 0 and d >= threshold

    for r in rows:
        kinds = [w for w, t in (("self", options.fail_on_self), ("total", options.fail_on)) if grew(r, w, t)]
        r["regression"] = "+".join(kinds)
    candidates = {r["function"]: r for r in rows if r["regression"]}
    total_only = [r for r in candidates.values() if r["regression"] == "total"]
    if total_only:
        growth = {n: r["new_total_share"] - r["base_total_share"] for n, r in candidates.items()}
        beneath = _best_beneath(sn, growth, {r["function"] for r in total_only})
        for r in total_only:
            hit = beneath.get(r["function"])
            if hit is not None and hit[0] >= EXPLAINED_FRACTION * growth[r["function"]]:
                r["explained_by"] = hit[1]
                r["regression"] = ""

    changes = [Change(**r) for r in rows]
    changes.sort(key=_importance)
    tests = len(zs)
    return DiffResult(side_b, side_n, options, phi, source, tests, counts_tested, tuple(changes), tuple(warnings))


def _importance(c: Change) -> tuple[int, float, str]:
    rank = 0 if c.regression else 1 if c.significant else 2
    size = max(abs(c.self_delta), abs(c.total_delta)) if rank < 2 else max(c.new_total_share, c.base_total_share)
    return rank, -size, c.function


def _kind_text(kind: str) -> str:
    return {"cpu": "CPU (samples/count, cpu/nanoseconds)", "wall": "wall-clock (samples/count, wall/nanoseconds)",
            "goroutine": "goroutine (goroutine/count)"}.get(kind, kind)


def diff_files(base: str | os.PathLike[str], new: str | os.PathLike[str],
               options: DiffOptions = DiffOptions(), *, limits: Limits = DEFAULT_LIMITS,
               tags: tuple[tuple[str, str], ...] = ()) -> tuple[DiffResult, Profile, Profile]:
    """Read both files (recording, folded or pprof, by content, within `limits`) and diff them,
    only the samples of goroutines carrying every pprof label in `tags` when given."""
    from goflame.export import read_profile

    pb = read_profile(base, limits=limits).tagged(tags)
    pn = read_profile(new, limits=limits).tagged(tags)
    return diff_profiles(pb, pn, options, base_name=str(base), new_name=str(new)), pb, pn


def parse_threshold(value: str | None, option: str) -> float | None:
    """'5', '5%', '5pp' -> 5.0; 'off'/'none' -> None."""
    if value is None:
        return None
    v = value.strip().lower()
    if v in ("off", "none", "never"):
        return None
    v = v.removesuffix("pp").removesuffix("%").strip()
    try:
        x = float(v)
    except ValueError:
        raise BadInput(f"{option} wants percentage points like 5 or 5%, not {value!r}") from None
    if not math.isfinite(x):
        raise BadInput(f"{option} wants a finite number, not {value!r}")
    return x


# ---------------------------------------------------------------------------------------------
# reports


def _pct(x: float) -> str:
    return f"{x * 100:.1f}"


def _pp(x: float) -> str:
    return f"{x:+.1f}"


def _mark(significant: bool) -> str:
    return "*" if significant else " "


def _shown(result: DiffResult, top: int) -> list[Change]:
    """Regressions and significant changes first, then the biggest others, up to `top` rows."""
    must = [c for c in result.changes if c.regression or c.explained_by]
    rest = [c for c in result.changes if not (c.regression or c.explained_by)]
    return must + rest[: max(0, top - len(must))]


def _describe(c: Change) -> str:
    parts = []
    if "self" in c.regression:
        parts.append(f"self {_pct(c.base_self_share)}% -> {_pct(c.new_self_share)}% "
                     f"({_pp(c.self_delta)} pp, p={c.self_p:.2g})")
    if "total" in c.regression or not parts:
        parts.append(f"total {_pct(c.base_total_share)}% -> {_pct(c.new_total_share)}% "
                     f"({_pp(c.total_delta)} pp, p={c.total_p:.2g})")
    return f"{c.function}: " + "; ".join(parts)


def verdict_line(result: DiffResult) -> str:
    n = len(result.regressions)
    if n:
        return f"{n} regression{'s' if n > 1 else ''} found (exit 1)"
    return "no significant regression over the thresholds (exit 0)"


def render_text(result: DiffResult, top: int = 20) -> str:
    b, n = result.base, result.new
    lines = [
        f"goflame diff: {b.name} ({b.samples:,} samples) -> {n.name} ({n.samples:,} samples)"
        + (f", {_kind_text(b.kind or n.kind)}" if b.kind or n.kind else ""),
        f"method: {result.method}",
        f"gate: {result.gates}",
    ]
    lines += [f"warning: {w}" for w in result.warnings]
    rows = _shown(result, top)
    width = max([len("function"), *(len(c.function) for c in rows)])
    width = min(width, 80)
    group = f"{'':<{width}}  {'self share %':^22}   {'total share %':^22}"
    head = (f"{'function':<{width}}  {'base':>6} {'new':>6} {'Δpp':>7}    "
            f"{'base':>6} {'new':>6} {'Δpp':>7}")
    lines += ["", group, head, "-" * len(head)]
    for c in rows:
        name = c.function if len(c.function) <= width else "…" + c.function[-(width - 1):]
        note = ""
        if c.regression:
            note = "  REGRESSION"
        elif c.explained_by:
            note = f"  (explained by {c.explained_by})"
        lines.append(
            f"{name:<{width}}  {_pct(c.base_self_share):>6} {_pct(c.new_self_share):>6} "
            f"{_pp(c.self_delta):>7}{_mark(c.self_significant)}   {_pct(c.base_total_share):>6} "
            f"{_pct(c.new_total_share):>6} {_pp(c.total_delta):>7}{_mark(c.total_significant)}{note}")
    hidden = len(result.changes) - len(rows)
    lines.append(f"(* significant at {result.options.confidence:.0%}; shares are % of all samples"
                 + (f"; {hidden:,} more functions not shown" if hidden > 0 else "") + ")")
    lines.append("")
    for c in result.regressions:
        lines.append(f"REGRESSION {_describe(c)}")
    lines.append(verdict_line(result))
    return "\n".join(lines) + "\n"


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("*", "\\*").replace("_", "\\_").replace("<", "&lt;")


def render_markdown(result: DiffResult, top: int = 20) -> str:
    b, n = result.base, result.new
    regs = result.regressions
    head = (f"### goflame diff: {len(regs)} regression{'s' if len(regs) != 1 else ''}" if regs
            else "### goflame diff: no significant regression")
    out = [head, ""]
    if regs:
        out += [f"- **{_md_escape(_describe(c).split(': ', 1)[0])}**: {_md_escape(_describe(c).split(': ', 1)[1])}"
                for c in regs]
        out.append("")
    out += [f"> **Warning:** {_md_escape(w)}" for w in result.warnings]
    if result.warnings:
        out.append("")
    out += [
        "| function | self base | self new | Δ self | total base | total new | Δ total | |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in _shown(result, top):
        note = "**regression**" if c.regression else (
            f"explained by `{c.explained_by}`" if c.explained_by else "")
        sd = f"{_pp(c.self_delta)} pp" + (" ✱" if c.self_significant else "")
        td = f"{_pp(c.total_delta)} pp" + (" ✱" if c.total_significant else "")
        code = c.function.replace("`", "'").replace("|", "\\|")  # GFM tables split code spans at '|'
        out.append(f"| `{code}` | {_pct(c.base_self_share)}% | {_pct(c.new_self_share)}% "
                   f"| {sd} | {_pct(c.base_total_share)}% | {_pct(c.new_total_share)}% | {td} | {note} |")
    out += [
        "",
        f"✱ significant at {result.options.confidence:.0%}. Base: `{b.name}` ({b.samples:,} samples); "
        f"new: `{n.name}` ({n.samples:,} samples).",
        "",
        "<details><summary>method</summary>",
        "",
        f"{result.method}. Gate: {result.gates}. Shares are percentages of all samples in each profile; "
        "Δ is in percentage points.",
        "",
        "</details>",
        "",
    ]
    return "\n".join(out)


def to_json(result: DiffResult) -> dict[str, Any]:
    def change(c: Change) -> dict[str, Any]:
        d = asdict(c)
        d["self_delta_pp"] = round(c.self_delta, 4)
        d["total_delta_pp"] = round(c.total_delta, 4)
        return d

    return {
        "verdict": "regression" if result.regressions else "ok",
        "exit_code": result.exit_code,
        "base": asdict(result.base),
        "new": asdict(result.new),
        "options": asdict(result.options),
        "method": result.method,
        "gate": result.gates,
        "dispersion": result.dispersion,
        "dispersion_source": result.dispersion_source,
        "tests": result.tests,
        "warnings": list(result.warnings),
        "regressions": [change(c) for c in result.regressions],
        "functions": [change(c) for c in result.changes],
    }


_SURROGATE = re.compile("[\ud800-\udfff]")


def render_json(result: DiffResult, top: int = 0) -> str:
    """JSON, non-ASCII names as they are; a name from bytes that are not UTF-8 (a lone
    surrogate here) is written as its \\uXXXX escape, so the output stays valid UTF-8 JSON and
    reads back to the same name."""
    text = json.dumps(to_json(result), indent=1, ensure_ascii=False) + "\n"
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


RENDERERS: dict[str, Callable[[DiffResult, int], str]] = {
    "text": render_text,
    "markdown": render_markdown,
    "json": render_json,
}


# ---------------------------------------------------------------------------------------------
# the differential flame graph

_GREY = (205, 205, 205)
_RED = ((252, 222, 214), (200, 25, 25))  # light -> deep
_BLUE = ((218, 228, 252), (35, 85, 205))


def _blend(pair: tuple[tuple[int, int, int], tuple[int, int, int]], t: float) -> str:
    lo, hi = pair
    t = max(0.0, min(1.0, t))
    return "rgb({},{},{})".format(*(round(a + (b - a) * t) for a, b in zip(lo, hi, strict=True)))


def diff_colours(result: DiffResult) -> Callable[[str], str]:
    """name -> fill: red grew, blue shrank (deeper for bigger changes), grey unchanged.

    A significant self change sets the colour; a function whose self share did not change
    but whose total did (a caller on the way to a change) gets a pale tint of the same hue.
    """
    by_name = {c.function: c for c in result.changes}
    scale = max((abs(c.self_delta) for c in result.changes if c.self_significant), default=0.0) or 1.0
    tscale = max((abs(c.total_delta) for c in result.changes if c.total_significant), default=0.0) or 1.0

    def fill(name: str) -> str:
        c = by_name.get(name)
        if c is None:
            return "rgb({},{},{})".format(*_GREY)
        if c.self_significant and c.self_delta:
            t = 0.3 + 0.7 * abs(c.self_delta) / scale
            return _blend(_RED if c.self_delta > 0 else _BLUE, t)
        if c.total_significant and c.total_delta:
            return _blend(_RED if c.total_delta > 0 else _BLUE, 0.35 * abs(c.total_delta) / tscale)
        return "rgb({},{},{})".format(*_GREY)

    return fill


def diff_tooltips(result: DiffResult) -> Callable[[str], str]:
    by_name = {c.function: c for c in result.changes}

    def tip(name: str) -> str:
        c = by_name.get(name)
        if c is None:
            return ""
        verdict = ("REGRESSION" if c.regression else f"explained by {c.explained_by}" if c.explained_by
                   else "significant change" if c.significant else "no significant change")
        return (f"self {_pct(c.base_self_share)}% -> {_pct(c.new_self_share)}% ({_pp(c.self_delta)} pp)"
                f"{_mark(c.self_significant).strip()}\n"
                f"total {_pct(c.base_total_share)}% -> {_pct(c.new_total_share)}% ({_pp(c.total_delta)} pp)"
                f"{_mark(c.total_significant).strip()}\n{verdict}")

    return tip


DIFF_LEGEND: tuple[tuple[str, str], ...] = (
    (_blend(_RED, 1.0), "grew"),
    (_blend(_BLUE, 1.0), "shrank"),
    ("rgb({},{},{})".format(*_GREY), "no significant change"),
)


def render_diff_svg(result: DiffResult, new: Profile, *, title: str | None = None, **opts: Any) -> list[str]:
    """NEW's flame graph, each frame coloured by its function's change (see `diff_colours`)."""
    from goflame.export.svg import render_svg

    states = result.options.states
    if states is None:
        states = (result.base.kind or result.new.kind) == "wall"
    sub = (f"{os.path.basename(result.base.name)} -> {os.path.basename(result.new.name)} · "
           f"red grew, blue shrank (share of all samples), width = NEW · "
           f"{len(result.regressions)} regression{'s' if len(result.regressions) != 1 else ''}")
    return render_svg(new, states=states, title=title or "Differential flame graph", subtitle=sub,
                      fill_for=diff_colours(result), tooltip_for=diff_tooltips(result), legend=DIFF_LEGEND,
                      **opts)


def write_diff_svg(result: DiffResult, new: Profile, out: str | os.PathLike[str] | IO[str], **opts: Any) -> None:
    """The differential flame graph to a path (written atomically, like every output file) or a stream."""
    pieces = render_diff_svg(result, new, **opts)
    if isinstance(out, (str, os.PathLike)):
        from goflame.export import atomic_output

        with atomic_output(out, binary=False) as fh:
            fh.writelines(pieces)
    else:
        try:
            out.writelines(pieces)
        except OSError as e:
            raise OutputError(f"cannot write {getattr(out, 'name', out)}: {e.strerror or e}") from None


__all__ = ["DEFAULT_DISPERSION", "Change", "DiffOptions", "DiffResult", "RENDERERS", "Side", "diff_files",
           "diff_profiles", "function_counts", "holm", "measure_dispersion", "parse_threshold",
           "render_diff_svg", "render_json", "render_markdown", "render_text", "to_json", "write_diff_svg"]
