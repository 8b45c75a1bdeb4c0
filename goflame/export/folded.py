"""Collapsed ("folded") stacks, the line format of FlameGraph and of most flame graph tools.

One line per distinct stack: frame names root first, joined by `;`, then a space and the
sample count. Names may contain anything but the two separators and a newline, so the count
is what follows the *last* space. Writing replaces `;` inside a name (a Go generic shape such
as `struct { a int; b int }` has one) with `:` and a newline with a space.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from typing import IO, Any

from goflame.errors import BadInput
from goflame.frame import Frame, FrameKind
from goflame.inputs import DEFAULT_LIMITS, MAX_DEPTH, Limits, deep_marker, open_input
from goflame.profile import DepthCut, Profile, RecordingMeta, Sample, Stacks

_STATE_RE = re.compile(r"\[[^\[\]]*\]")
_THREAD_RE = re.compile(r"thread \d+|no thread")
_GOROUTINE_RE = re.compile(r"goroutine \d+|no goroutine")


def folded_label(frame: Frame, lines: bool = False) -> str:
    """A frame's name made safe for a folded line."""
    s = frame.label(lines)
    if ";" in s or "\n" in s:
        s = s.replace(";", ":").replace("\n", " ")
    return s


def folded_lines(stacks: Stacks, lines: bool = False) -> list[str]:
    """`root;...;leaf count` lines, merged by label and sorted (so output is deterministic)."""
    labels = [folded_label(f, lines) for f in stacks.frames]
    merged: dict[str, int] = {}
    get = merged.get
    label = labels.__getitem__
    join = ";".join
    for key, count in stacks.counts.items():
        if not key:
            continue  # a sample with no frames has no place in a folded file
        s = join(map(label, key))
        merged[s] = get(s, 0) + count
    return [f"{s} {c}" for s, c in sorted(merged.items())]


def write_folded(
    profile: Profile,
    out: IO[str],
    *,
    lines: bool = False,
    threads: bool = False,
    goroutines: bool = False,
    states: bool | None = None,
    **_ignored: Any,
) -> None:
    stacks = profile.aggregate(lines=lines, threads=threads, goroutines=goroutines, states=states)
    out.writelines(line + "\n" for line in folded_lines(stacks, lines))


def frame_from_label(label: str) -> Frame:
    """A Frame for a name read from a folded file, its kind guessed from goflame's own
    synthetic names so that colours survive a round trip through folded text."""
    if label.startswith("[") and _STATE_RE.fullmatch(label):
        if label == "[native code]":  # the sampler's stand-in for code it could not name
            return Frame(label, kind=FrameKind.NATIVE)
        if label.startswith(("[truncated", "[unknown")):
            return Frame(label, kind=FrameKind.UNKNOWN)
        return Frame(label, kind=FrameKind.STATE)
    if label.startswith(("thread ", "no thread")) and _THREAD_RE.fullmatch(label):
        return Frame(label, kind=FrameKind.THREAD)
    if label.startswith(("goroutine ", "no goroutine")) and _GOROUTINE_RE.fullmatch(label):
        return Frame(label, kind=FrameKind.GOROUTINE)
    return Frame(label)


class _FrameTable(dict[str, Frame]):
    """label -> interned Frame; a miss builds the Frame once (so `map(table.__getitem__)` works)."""

    def __missing__(self, label: str) -> Frame:
        f = self[label] = frame_from_label(label)
        return f


def parse_folded(lines: Iterable[bytes], name: str = "<folded>", *, max_depth: int = MAX_DEPTH,
                 deep: list[int] | None = None) -> Iterator[tuple[tuple[Frame, ...], int]]:
    """(frames innermost first, count) for each line; BadInput names the first bad line.

    A line of more than `max_depth` frames keeps its innermost ones and the depth marker
    (goflame.inputs.cut_deep); its root side is never split into frames, so a 100 MB line
    costs its own bytes, not millions of objects. Each cut line is counted in `deep[0]`.
    """
    table = _FrameTable()
    get = table.__getitem__
    marker = deep_marker(max_depth)
    for lineno, raw in enumerate(lines, 1):
        raw = raw.rstrip(b"\r\n")  # a valid line ends in its count, so this never eats a name
        if not raw:
            continue
        line = raw.decode("utf-8", "surrogateescape")
        del raw
        stack, sep, count = line.rpartition(" ")
        if not (sep and stack and count.isdigit() and count.isascii()):
            if not line.strip():
                continue
            if not sep or not stack.strip(" "):
                raise BadInput(f"{name}:{lineno}: not a folded stack line (expected 'a;b;c COUNT')")
            raise BadInput(f"{name}:{lineno}: sample count {count[:40]!r} is not a whole number")
        del line
        parts = stack.rsplit(";", max_depth - 1)  # root first: parts[0] holds whatever is deeper
        cut = len(parts) == max_depth and ";" in parts[0]
        if cut:
            if parts[0].startswith(";") or parts[0].endswith(";") or ";;" in parts[0]:
                raise BadInput(f"{name}:{lineno}: empty frame name in stack")
            parts[0] = ""
        del stack
        if "" in parts[cut:]:
            raise BadInput(f"{name}:{lineno}: empty frame name in stack")
        parts.reverse()
        frames = tuple(map(get, parts[:-1] if cut else parts))
        if cut:
            frames = (*frames, marker)
            if deep is not None:
                deep[0] += 1
        yield frames, int(count)


def read_folded(source: str | os.PathLike[str] | IO[bytes], name: str | None = None, *,
                limits: Limits = DEFAULT_LIMITS) -> Profile:
    """A Profile whose samples are the folded lines (weight = count, no time/thread detail).

    An empty file is a valid empty profile (what `write_folded` makes of one with no samples).
    """
    deep = [0]
    if isinstance(source, (str, os.PathLike)):
        name = name or str(source)
        with open_input(source, name, limits) as f:
            samples = _samples(f, name, limits.max_depth, deep)
    else:
        samples = _samples(source, name or getattr(source, "name", "<folded>"), limits.max_depth, deep)
    total = sum(s.weight for s in samples)
    return Profile(RecordingMeta(samples=total, extra={"source": "folded"}), tuple(samples), detailed=False,
                   depth_cut=DepthCut(deep[0], limits.max_depth) if deep[0] else None)


def _samples(f: IO[bytes], name: str, max_depth: int, deep: list[int]) -> list[Sample]:
    try:
        return [Sample(0, 0, 0, "", frames, count)
                for frames, count in parse_folded(f, name, max_depth=max_depth, deep=deep)]
    except OSError as e:
        raise BadInput(f"cannot read {name}: {e.strerror or e}") from None
