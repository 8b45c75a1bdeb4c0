"""speedscope's JSON file format (https://www.speedscope.app/file-format-schema.json).

Sampled profiles only. A recording with per-sample detail is written sample by sample in
time order, so speedscope's "Time Order" view shows what the program did when; an aggregated
profile (from a folded file) is written one entry per distinct stack. With `threads`, each
thread becomes its own profile (speedscope shows a thread picker) instead of a root frame.
"""

from __future__ import annotations

import json
from typing import IO, Any

from goflame import __version__
from goflame.frame import Frame, FrameKind
from goflame.profile import RUNNING, Profile

SCHEMA_URL = "https://www.speedscope.app/file-format-schema.json"


def speedscope_document(
    profile: Profile,
    *,
    lines: bool = False,
    threads: bool = False,
    goroutines: bool = False,
    states: bool | None = None,
    name: str | None = None,
    title: str | None = None,
    **_ignored: Any,
) -> dict[str, Any]:
    """The speedscope file as a JSON-ready dict (`title`, as for SVG, names it too)."""
    name = name or title
    if states is None:
        states = profile.states_by_default()
    m = profile.meta
    title = name or (f"{m.binary.rsplit('/', 1)[-1]} (pid {m.pid})" if m.binary else "goflame profile")
    frames: list[dict[str, Any]] = []
    index: dict[tuple[str, str, int], int] = {}

    def frame_id(f: Frame) -> int:
        line = f.line if lines else 0
        key = (f.function, f.file, line)
        i = index.get(key)
        if i is None:
            i = index[key] = len(frames)
            d: dict[str, Any] = {"name": f.function}
            if f.file:
                d["file"] = f.file
            if line:
                d["line"] = line
            frames.append(d)
        return i

    cache: dict[int, tuple[Frame, int]] = {}

    def fid(f: Frame) -> int:
        hit = cache.get(id(f))
        if hit is None or hit[0] is not f:
            hit = cache[id(f)] = (f, frame_id(f))
        return hit[1]

    # per profile (thread, or None for one profile): ([stack, ...], [weight, ...])
    groups: dict[int | None, tuple[list[list[int]], list[int]]] = {}
    if profile.detailed:
        samples = sorted(profile.samples, key=lambda s: s.timestamp_ns)
        by_tuple: dict[int, list[int]] = {}  # a recording shares one frames tuple per distinct stack
        for s in samples:
            base = by_tuple.get(id(s.frames))
            if base is None:
                base = by_tuple[id(s.frames)] = [fid(f) for f in reversed(s.frames)]
            stack = base.copy()
            if states and s.state and s.state != RUNNING and not (s.frames and s.frames[0].kind is FrameKind.STATE):
                stack.append(frame_id(Frame(f"[{s.state}]", kind=FrameKind.STATE)))
            if goroutines:
                g = f"goroutine {s.goroutine}" if s.goroutine else "no goroutine"
                stack.insert(0, frame_id(Frame(g, kind=FrameKind.GOROUTINE)))
            stacks, weights = groups.setdefault(s.thread if threads else None, ([], []))
            stacks.append(stack)
            weights.append(s.weight)
    else:
        agg = profile.aggregate(lines=lines, threads=threads, goroutines=goroutines, states=states)
        ids = [frame_id(f) for f in agg.frames]
        stacks, weights = groups.setdefault(None, ([], []))
        for key, c in sorted(agg.counts.items()):
            stacks.append([ids[i] for i in key])
            weights.append(c)

    profiles = []
    for thread in sorted(groups, key=lambda t: -1 if t is None else t):
        stacks, weights = groups[thread]
        if thread is None:
            pname = title
        else:
            pname = f"thread {thread}" if thread else "no thread"
        profiles.append({
            "type": "sampled",
            "name": pname,
            "unit": "none",
            "startValue": 0,
            "endValue": sum(weights),
            "samples": stacks,
            "weights": weights,
        })
    if not profiles:
        profiles.append({"type": "sampled", "name": title, "unit": "none", "startValue": 0,
                         "endValue": 0, "samples": [], "weights": []})
    return {
        "$schema": SCHEMA_URL,
        "shared": {"frames": frames},
        "profiles": profiles,
        "name": title,
        "activeProfileIndex": 0,
        "exporter": f"goflame {__version__}",
    }


def write_speedscope(profile: Profile, out: IO[str], **opts: Any) -> None:
    # ASCII escapes keep the file valid even for names holding bytes that were not UTF-8.
    # dumps, not dump: dump streams through the pure-Python encoder, several times slower.
    out.write(json.dumps(speedscope_document(profile, **opts), ensure_ascii=True, separators=(",", ":")))
    out.write("\n")
