"""A self-contained interactive SVG flame graph (or icicle graph with `inverted`).

The frames are plain SVG elements, so the picture renders anywhere; flame.js and flame.css
(inlined, nothing is fetched) add click-to-zoom, regex search with the matched share, and a
details line. Layout avoids a tree: the stacks are sorted (root first, siblings by name) and
one pass over neighbouring stacks opens and closes frames, the way a folded file is merged;
a frame narrower than `min_width` pixels is dropped before anything is formatted.
"""

from __future__ import annotations

import inspect
import re
import zlib
from bisect import bisect_right
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import IO, Any

from goflame.frame import Frame, FrameKind
from goflame.profile import Profile, Stacks

# Characters XML 1.0 forbids (and the whitespace controls, which would break a name apart)
# are shown as \xNN / \uNNNN so that a name stays one visible line.
_FORBIDDEN = re.compile("[\x00-\x1f\x7f\ud800-\udfff\ufffe\uffff]")

# Top-level packages of the Go standard library (go/src); anything else without a dot in its
# first path element is a module of the user's (e.g. `example/app`).
_STD_ROOTS = frozenset(
    "archive arena bufio builtin bytes cmp compress container context crypto database debug embed "
    "encoding errors expvar flag fmt go hash html image index io iter log maps math mime net os path "
    "plugin reflect regexp slices sort strconv strings structs sync syscall testing text time "
    "unicode unique unsafe weak vendor".split()
)

# (base rgb, spread rgb, grey): a name's crc32 picks a point in the spread, so colours are
# stable across runs and neighbours with different names still differ.
_PALETTES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], bool]] = {
    "user": ((215, 105, 25), (40, 105, 45), False),  # warm: oranges and yellows
    "std": ((55, 145, 175), (45, 60, 50), False),  # cool: teals and blues
    "runtime": ((195, 45, 55), (60, 50, 40), False),  # reds: runtime, internal/*, generated code
    "native": ((150, 115, 205), (40, 40, 45), False),  # purples: C, libc, vDSO
    "state": ((165, 165, 165), (45, 45, 45), True),  # greys: "[chan receive]" and other states
    "root": ((180, 190, 212), (25, 25, 25), False),  # steel: "thread N", "goroutine N"
    "unknown": ((110, 110, 110), (30, 30, 30), True),
    "all": ((205, 205, 205), (0, 0, 0), True),
}
_LEGEND = (("user", "user code"), ("std", "standard library"), ("runtime", "runtime"),
           ("native", "native"), ("state", "goroutine state"))
_LEGEND_COLOURS = {"user": "rgb(240,160,40)", "std": "rgb(75,180,205)", "runtime": "rgb(220,70,75)",
                   "native": "rgb(170,135,230)", "state": "rgb(185,185,185)"}


def display_name(s: str) -> str:
    """A name as shown: characters XML cannot carry (or that break lines) become \\xNN/\\uNNNN."""
    return _FORBIDDEN.sub(_visible, s)


def _visible(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def xml_text(s: str) -> str:
    """Escape for XML character data and attribute values (always double-quoted here)."""
    s = display_name(s)
    if "&" in s:
        s = s.replace("&", "&amp;")
    if "<" in s:
        s = s.replace("<", "&lt;")
    if ">" in s:
        s = s.replace(">", "&gt;")
    if '"' in s:
        s = s.replace('"', "&quot;")
    return s


def category(frame: Frame) -> str:
    """Which palette a frame gets: user, std, runtime, native, state, root or unknown."""
    k = frame.kind
    if k is FrameKind.NATIVE:
        return "native"
    if k is FrameKind.STATE:
        return "state"
    if k is FrameKind.THREAD or k is FrameKind.GOROUTINE or k is FrameKind.LABEL:
        return "root"
    if k is FrameKind.UNKNOWN:
        return "unknown"
    return go_category(frame.function)


@cache
def go_category(name: str) -> str:
    """Classify a Go symbol by its import path (`net/http.(*conn).serve` -> std)."""
    for cut in ("[", " ("):  # generic arguments and `--lines` suffixes hold '/' and '.' too
        i = name.find(cut)
        if i > 0:
            name = name[:i]
    if name.startswith(("type:", "type..", "go:", "_cgo_")):
        return "runtime"  # compiler-generated equality/hash functions and cgo glue
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    pkg = name[:dot] if dot > 0 else name
    first = pkg.split("/", 1)[0]
    if pkg == "runtime" or first in ("runtime", "internal"):
        return "runtime"
    if pkg == "main" or "." in first:
        return "user"
    return "std" if first in _STD_ROOTS else "user"


def colour(cat: str, name: str) -> str:
    (r, g, b), (dr, dg, db), grey = _PALETTES[cat]
    h = zlib.crc32(name.encode("utf-8", "surrogatepass"))
    v1, v2, v3 = (h & 0xFF) / 255, ((h >> 8) & 0xFF) / 255, ((h >> 16) & 0xFF) / 255
    if grey:
        v2 = v3 = v1
    return f"rgb({r + int(dr * v1)},{g + int(dg * v2)},{b + int(db * v3)})"


@cache
def _asset(name: str) -> str:
    text = resources.files("goflame.export").joinpath(name).read_text("utf-8")
    if "]]>" in text:  # would end the CDATA section early
        raise ValueError(f"{name} must not contain ']]>'")
    return text


def layout(stacks: Stacks, min_samples: float) -> tuple[list[str], list[tuple[int, int, int, int]], int]:
    """Frames to draw as (depth, label id, first sample, samples); depth 0 is the root "all".

    Labels are numbered in sorted order, so sorting the stacks as tuples of label ids orders
    siblings by name; then each stack shares a prefix with the previous one, frames past that
    prefix close (emitted if wide enough) and the new stack's frames open. Widths only shrink
    with depth, so the frames to keep are found by bisecting the open frames' start offsets.
    """
    names = sorted({f.function for f in stacks.frames})
    rank = {n: i for i, n in enumerate(names)}
    # frame index -> label id (frames that share a label, e.g. with and without inlining, merge)
    fl = [rank[f.function] for f in stacks.frames]
    merged: dict[tuple[int, ...], int] = {}
    get = merged.get
    for key, c in stacks.counts.items():
        if c <= 0:
            continue
        k = tuple(map(fl.__getitem__, key))
        merged[k] = get(k, 0) + c

    out: list[tuple[int, int, int, int]] = []
    emit = out.append
    prev: tuple[int, ...] = ()
    starts: list[int] = []  # start offset of each open frame, by depth - 1
    x = 0
    for stack, c in sorted(merged.items()):
        k, m = 0, min(len(prev), len(stack))
        while k < m and prev[k] == stack[k]:
            k += 1
        if k < len(prev):
            cut = bisect_right(starts, x - min_samples, k)
            for d in range(k, cut):
                emit((d + 1, prev[d], starts[d], x - starts[d]))
            del starts[k:]
        starts.extend([x] * (len(stack) - k))
        x += c
        prev = stack
    cut = bisect_right(starts, x - min_samples, 0)
    for d in range(cut):
        emit((d + 1, prev[d], starts[d], x - starts[d]))
    if x:
        out.append((0, -1, 0, x))
    return names, out, x


def subtitle_for(profile: Profile, total: int, max_chars: int = 1000) -> str:
    """Binary, pid, Go version, mode, duration, samples, rate and date, on one line that fits:
    a long binary path shrinks to its base name first (the full path is in the tooltip)."""
    m = profile.meta
    parts: list[str] = []
    if m.binary:
        parts.append(m.binary)
    if m.pid:
        parts.append(f"pid {m.pid}")
    if m.go_version:
        v = m.go_version
        parts.append(v if v.startswith("go") else f"Go {v}")
    if profile.detailed:
        parts.append({"cpu": "CPU", "wall": "wall clock"}.get(m.mode, m.mode))
    if m.duration:
        parts.append(f"{m.duration:.1f} s")
    parts.append(f"{total:,} samples")
    if m.rate_hz:
        parts.append(f"{m.rate_hz:g} Hz")
    if m.start_time:
        parts.append(datetime.fromtimestamp(m.start_time, UTC).strftime("%Y-%m-%d %H:%M:%S UTC"))
    if not profile.complete:
        parts.append("recording cut short")
    line = " · ".join(parts)
    if len(line) > max_chars and m.binary:
        parts[0] = m.binary.rsplit("/", 1)[-1]
        line = " · ".join(parts)
    if len(line) > max_chars:
        line = line[: max(max_chars - 1, 0)] + "…"
    return line


def render_svg(
    profile: Profile,
    *,
    lines: bool = False,
    threads: bool = False,
    goroutines: bool = False,
    states: bool | None = None,
    inverted: bool = False,
    title: str | None = None,
    subtitle: str | None = None,
    width: int = 1200,
    frame_height: int = 16,
    font_size: int = 12,
    min_width: float = 0.1,
    fill_for: Callable[[str], str] | None = None,
    tooltip_for: Callable[[str], str] | None = None,
    legend: Sequence[tuple[str, str]] | None = None,
) -> list[str]:
    """The SVG document as a list of string pieces (join or writelines them).

    fill_for / tooltip_for / legend let another view (goflame diff's differential graph) reuse
    this renderer: frame name -> fill colour, frame name -> extra tooltip line(s), and the
    legend's (colour, caption) items.
    """
    stacks = profile.aggregate(lines=lines, threads=threads, goroutines=goroutines, states=states)
    if lines:  # the label carries file:line; `layout` merges by `function`, so fold it in
        stacks = Stacks(tuple(Frame(f.label(True), "", 0, f.inlined, f.kind) for f in stacks.frames),
                        stacks.counts)
    pad, header, footer = 10, 52, 44
    full = width - 2 * pad
    total_hint = stacks.total
    min_samples = min_width * total_hint / full if total_hint else 0.0
    names, nodes, total = layout(stacks, min_samples)
    depth = max((n[0] for n in nodes), default=0) + 1
    height = header + depth * frame_height + footer + (0 if nodes else 40)
    scale = full / total if total else 0.0
    cw = font_size * 0.6

    kinds: dict[str, FrameKind] = {}
    for f in stacks.frames:
        kinds.setdefault(f.function, f.kind)
    esc = [xml_text(n) for n in names]
    shown = [display_name(n) for n in names]
    fills = ([fill_for(n) for n in names] if fill_for is not None else
             [colour(category(Frame(n, kind=kinds.get(n, FrameKind.GO))), n) for n in names])
    tips = ["".join("\n" + xml_text(ln) for ln in tooltip_for(n).splitlines()) for n in names] if tooltip_for else None

    m = profile.meta
    if title is None:
        base = m.binary.rsplit("/", 1)[-1] if m.binary else ""
        title = ("Icicle graph" if inverted else "Flame graph") + (f": {base}" if base else "")
    if subtitle is None:
        subtitle = subtitle_for(profile, total, int((width - 2 * pad) / (12 * 0.6)))
    sub_tip = f"<title>{xml_text(m.binary)}</title>" if m.binary else ""

    if inverted:
        y_base, direction = header, 1
    else:
        y_base, direction = height - footer, -1
    out: list[str] = [
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n',
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" data-total="{total}" data-pad="{pad}" data-fh="{frame_height}" '
        f'data-cw="{cw:g}" data-base="{y_base}" data-dir="{direction}" data-minw="{min_width:g}">\n',
        f"<!-- made by goflame {xml_text(m.goflame_version)} -->\n",
        f"<style><![CDATA[\n{_asset('flame.css')}#gf-frames text {{ font-size: {font_size}px; }}\n]]></style>\n",
        f'<rect class="gf-bg" x="0" y="0" width="{width}" height="{height}"/>\n',
        f'<text id="gf-title" x="{width / 2:g}" y="22">{xml_text(title)}</text>\n',
        f'<g>{sub_tip}<text id="gf-subtitle" x="{width / 2:g}" y="40">{xml_text(subtitle)}</text></g>\n',
        f'<text id="gf-reset" class="gf-ctl" x="{pad}" y="22" visibility="hidden">Reset Zoom</text>\n',
        f'<text id="gf-search" class="gf-ctl" x="{width - pad}" y="22" text-anchor="end">Search</text>\n',
        '<g id="gf-frames">\n',
    ]
    emit = out.append
    fh, th = frame_height - 1, frame_height - 5
    all_name = "all"
    pct_k = 100.0 / total if total else 0.0
    for d, lid, s, n in nodes:
        x = pad + s * scale
        w = n * scale
        y = y_base + d * frame_height if inverted else y_base - (d + 1) * frame_height
        if lid < 0:
            name, label, fill = all_name, all_name, colour("all", all_name)
        else:
            name, label, fill = esc[lid], shown[lid], fills[lid]
        chars = int((w - 6) / cw)
        if chars >= 3:
            if len(label) > chars:
                label = label[: chars - 2] + ".."
            text = f'<text x="{x + 3:.2f}" y="{y + th}">{xml_text(label)}</text>'
        else:
            text = ""
        emit(
            f'<g data-s="{s}" data-n="{n}"><title>{name}\n{n:,} samples ({n * pct_k:.2f}%)'
            f'{tips[lid] if tips is not None and lid >= 0 else ""}</title>'
            f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{fh}" fill="{fill}"/>{text}</g>\n'
        )
    out.append("</g>\n")
    if not nodes:
        out.append(f'<text id="gf-empty" x="{width / 2:g}" y="{header + 30}">no samples</text>\n')
    out.append(f'<text id="gf-details" x="{pad}" y="{height - 26}"> </text>\n')
    out.append(f'<text id="gf-matched" x="{width - pad}" y="{height - 26}" text-anchor="end"></text>\n')
    out.append('<g class="gf-legend">')
    lx = pad
    items = legend if legend is not None else [(_LEGEND_COLOURS[key], caption) for key, caption in _LEGEND]
    for lc, caption in items:
        out.append(f'<rect x="{lx}" y="{height - 17}" width="10" height="10" fill="{lc}"/>'
                   f'<text x="{lx + 14}" y="{height - 8}">{xml_text(caption)}</text>')
        lx += 24 + int(len(caption) * 6.6)
    out.append("</g>\n")
    out.append(f'<script type="text/ecmascript"><![CDATA[\n{_asset("flame.js")}]]></script>\n</svg>\n')
    return out


_OPTIONS = frozenset(inspect.signature(render_svg).parameters) - {"profile"}


def write_svg(profile: Profile, out: IO[str], **opts: Any) -> None:
    """Options render_svg does not take (another format's) are ignored, like every writer does."""
    out.writelines(render_svg(profile, **{k: v for k, v in opts.items() if k in _OPTIONS}))
