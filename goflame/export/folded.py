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
from goflame.profile import Profile, RecordingMeta, Sample, Stacks

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


def parse_folded(lines: Iterable[bytes], name: str = "<folded>") -> Iterator[tuple[tuple[Frame, ...], int]]:
    """(frames innermost first, count) for each line; BadInput names the first bad line."""
    table = _FrameTable()
    get = table.__getitem__
    for lineno, raw in enumerate(lines, 1):
        raw = raw.rstrip(b"\r\n")  # a valid line ends in its count, so this never eats a name
        if not raw:
            continue
        line = raw.decode("utf-8", "surrogateescape")
        stack, sep, count = line.rpartition(" ")
        if not (sep and stack and count.isdigit() and count.isascii()):
            if not line.strip():
                continue
            if not sep or not stack.strip(" "):
                raise BadInput(f"{name}:{lineno}: not a folded stack line (expected 'a;b;c COUNT')")
            raise BadInput(f"{name}:{lineno}: sample count {count[:40]!r} is not a whole number")
        parts = stack.split(";")
        if "" in parts:
            raise BadInput(f"{name}:{lineno}: empty frame name in stack")
        parts.reverse()
        yield tuple(map(get, parts)), int(count)


def read_folded(source: str | os.PathLike[str] | IO[bytes], name: str | None = None) -> Profile:
    """A Profile whose samples are the folded lines (weight = count, no time/thread detail)."""
    if isinstance(source, (str, os.PathLike)):
        name = name or str(source)
        try:
            with open(source, "rb") as f:
                samples = _samples(f, name)
        except OSError as e:
            raise BadInput(f"cannot read {name}: {e.strerror or e}") from None
    else:
        samples = _samples(source, name or getattr(source, "name", "<folded>"))
    total = sum(s.weight for s in samples)
    return Profile(RecordingMeta(samples=total, extra={"source": "folded"}), tuple(samples), detailed=False)


def _samples(f: IO[bytes], name: str) -> list[Sample]:
    return [Sample(0, 0, 0, "", frames, count) for frames, count in parse_folded(f, name)]
