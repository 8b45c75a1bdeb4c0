"""`goflame dump` and `goflame summary`: one snapshot of a live Go process, rendered.

Dump output is the runtime's own `runtime.Stack(buf, true)` format, so tools that parse Go
tracebacks (panicparse and friends) read it; `--json` gives the same facts structured.
Summary is the at-a-glance view: Ps, threads, goroutines by state and by start function.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from goflame.export.gotraceback import format_stack, rules_for, stack_json
from goflame.runtime import G_RUNNING, Goroutine, is_system_goroutine
from goflame.target import Target


def dump_goroutines(pid: int, *, all_frames: bool = False, as_json: bool = False, nonblocking: bool = False,
                    native: bool = False, labels: bool = False) -> str:
    """Every goroutine's stack; `labels`: their pprof labels in the text too, the way Go's own
    traceback prints them (`--json` always has them)."""
    with Target(pid) as t:
        if native:
            t.stacks.enable_native()
        snap, stacks = t.goroutine_stacks(pause=not nonblocking)
        rules = rules_for(t.binary)
        bias = t.reader.bias
        shown = [s for s in stacks if all_frames or not is_system_goroutine(t.binary, s.g, bias)]
        by_goid = t.labels.of(s.g for s in shown) if as_json or labels else {}
        if as_json:
            doc = {
                "pid": pid, "binary": t.exe_display, "go_version": snap.go_version,
                "gomaxprocs": snap.gomaxprocs, "nonblocking": nonblocking,
                "paused_threads": len(t.stacks.pause_ns),
                "max_pause_us": round(max(t.stacks.pause_ns, default=0) / 1000, 1),
                "goroutines": [stack_json(s, rules, t.binary, bias, snap.now, all_frames, by_goid.get(s.g.goid))
                               for s in shown],
                "errors": snap.errors,
                "label_errors": sum(t.labels.errors.values()),
            }
            return json.dumps(doc, indent=2) + "\n"
        blocks = [format_stack(rules, t.binary, s, snap.now, bias, all_frames, by_goid.get(s.g.goid)) for s in shown]
        return "\n\n".join(blocks) + "\n"


def _start_name(t: Target, pc: int) -> str:
    name = t.binary.pclntab.find_func(pc - t.reader.bias) if pc else None
    return name.name if name else "?"


def goroutine_groups(t: Target, goroutines: Iterable[Goroutine],
                     names: dict[int, str] | None = None) -> dict[str, Counter[str]]:
    """Goroutines by start function, counted per state (the runtime traceback's wording).

    A leak shows as one start function whose count keeps growing; `summary` and `top` both
    list these. `names` caches start pc -> name across calls (top refreshes every second).
    """
    names = {} if names is None else names
    groups: dict[str, Counter[str]] = defaultdict(Counter)
    for g in goroutines:
        name = names.get(g.start_pc)
        if name is None:
            name = names[g.start_pc] = _start_name(t, g.start_pc)
        groups[name][g.state] += 1
    return groups


def label_groups(t: Target, goroutines: Iterable[Goroutine], key: str) -> dict[str, Counter[str]]:
    """Goroutines by the value of one pprof label (NO_LABEL for those without it), per state."""
    gs = list(goroutines)
    labels = t.labels.of(gs)
    groups: dict[str, Counter[str]] = defaultdict(Counter)
    for g in gs:
        value = labels.get(g.goid, {}).get(key)
        groups[NO_LABEL if value is None else f"{key}={value}"][g.state] += 1
    return groups


NO_LABEL = "(no such label)"


def _groups(t: Target, user: list[Goroutine], label: str | None) -> dict[str, Counter[str]]:
    return label_groups(t, user, label) if label else goroutine_groups(t, user)


def summary_data(t: Target, top_n: int = 10, label: str | None = None, growth_s: float = 0.0) -> dict[str, Any]:
    """What `summary` shows. `label`: group goroutines by that pprof label's value instead of
    by start function. `growth_s`: look again that many seconds later and report how each
    group grew (a goroutine leak shows as a group that only grows)."""
    before = None
    if growth_s > 0:
        snap0 = t.snapshot()
        bias0 = t.reader.bias
        before = {k: sum(c.values()) for k, c in _groups(
            t, [g for g in snap0.goroutines if not is_system_goroutine(t.binary, g, bias0)], label).items()}
        time.sleep(growth_s)
    snap = t.snapshot()
    bias = t.reader.bias
    threads = {th.tid: th for th in t.proc.threads()}
    g_by_addr = snap.goroutine_by_addr()
    m_by_addr = {m.addr: m for m in snap.machines}
    state_names = {"R": "running", "S": "sleeping", "D": "disk sleep", "T": "stopped", "t": "stopped",
                   "Z": "zombie", "X": "dead", "I": "idle"}
    thread_counts = Counter(state_names.get(th.state, th.state) for th in threads.values())
    user = [g for g in snap.goroutines if not is_system_goroutine(t.binary, g, bias)]
    by_status = Counter(g.status_text for g in snap.goroutines)
    by_reason = Counter(g.wait_reason for g in snap.goroutines if g.wait_reason)
    groups = _groups(t, user, label)
    if before is not None:
        grew = {k: sum(c.values()) - before.get(k, 0) for k, c in groups.items()}
        top = sorted(groups.items(), key=lambda kv: (-grew[kv[0]], -sum(kv[1].values()), kv[0]))[:top_n]
    else:
        grew = {}
        top = sorted(groups.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))[:top_n]
    procs = []
    for p in sorted(snap.processors, key=lambda p: p.id):
        m = m_by_addr.get(p.m)
        g = g_by_addr.get(m.curg) if m else None
        procs.append({"id": p.id, "status": p.status_name, "schedtick": p.schedtick,
                      "syscalltick": p.syscalltick, "runqueue": p.runq_size,
                      "thread": m.tid if m else None, "goroutine": g.goid if g else None})
    ms = []
    for m in snap.machines:
        th = threads.get(m.tid)
        g = g_by_addr.get(m.curg)
        ms.append({"id": m.id, "thread": m.tid, "state": state_names.get(th.state, th.state) if th else "gone",
                   "goroutine": g.goid if g else None, "spinning": m.spinning, "in_cgo": m.incgo})
    return {
        "pid": t.pid, "binary": t.exe_display, "go_version": snap.go_version,
        "gomaxprocs": snap.gomaxprocs, "ncpu": snap.ncpu,
        "processors": procs,
        "threads": {"total": len(threads), **dict(thread_counts)},
        "machines": ms,
        "goroutines": {"total": len(snap.goroutines), "user": len(user),
                       "system": len(snap.goroutines) - len(user), "by_status": dict(by_status.most_common()),
                       "by_wait_reason": dict(by_reason.most_common())},
        "grouped_by": f"label {label}" if label else "start function",
        "growth_seconds": growth_s or None,
        "groups": [{("label" if label else "start_function"): name, "count": sum(c.values()),
                    "states": dict(c.most_common()), **({"grew": grew[name]} if before is not None else {})}
                   for name, c in top],
        "errors": snap.errors,
    }


def summarize(pid: int, *, as_json: bool = False, top_n: int = 10, label: str | None = None,
              growth_s: float = 0.0) -> str:
    with Target(pid) as t:
        d = summary_data(t, top_n, label, growth_s)
    if as_json:
        return json.dumps(d, indent=2) + "\n"
    out = [
        f"process     {d['pid']}  {d['binary']}",
        f"go version  {d['go_version']}",
        f"GOMAXPROCS  {d['gomaxprocs']} (ncpu {d['ncpu']})",
        "",
        "processors (P)",
    ]
    for p in d["processors"]:
        running = f"goroutine {p['goroutine']}" if p["goroutine"] else "-"
        out.append(f"  P{p['id']:<3} {p['status']:<8} schedtick {p['schedtick']:<10} "
                   f"syscalltick {p['syscalltick']:<8} runq {p['runqueue']:<4} {running}")
    th = d["threads"]
    detail = ", ".join(f"{v} {k}" for k, v in th.items() if k != "total")
    out += ["", f"threads     {th['total']} ({detail})"]
    for m in d["machines"]:
        g = f"goroutine {m['goroutine']}" if m["goroutine"] else "idle"
        flags = " spinning" if m["spinning"] else ""
        flags += " in cgo" if m["in_cgo"] else ""
        out.append(f"  M{m['id']:<3} thread {m['thread']:<8} {m['state']:<9} {g}{flags}")
    gd = d["goroutines"]
    out += ["", f"goroutines  {gd['total']} ({gd['user']} user, {gd['system']} runtime)"]
    out.append("  by status       " + ", ".join(f"{k} {v}" for k, v in gd["by_status"].items()))
    if gd["by_wait_reason"]:
        out.append("  by wait reason")
        for k, v in gd["by_wait_reason"].items():
            out.append(f"    {v:>6}  {k}")
    if d["growth_seconds"]:
        out += ["", f"groups by {d['grouped_by']} that grew most in {d['growth_seconds']:g} s"]
    else:
        out += ["", f"largest groups by {d['grouped_by']}"]
    for grp in d["groups"]:
        states = ", ".join(f"{v} {k}" for k, v in grp["states"].items())
        name = grp.get("label", grp.get("start_function"))
        grew = f" {grp['grew']:>+6}" if "grew" in grp else ""
        out.append(f"  {grp['count']:>6}{grew}  {name}  ({states})")
    if d["errors"]:
        out.append(f"\n{d['errors']} runtime structures could not be read (memory changed while reading)")
    return "\n".join(out) + "\n"


__all__ = ["dump_goroutines", "goroutine_groups", "summarize", "summary_data", "G_RUNNING"]
