"""The SVG flame graph as a document: valid XML, frames that match the samples, escaping, colours."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

import export_data
from goflame.export import write_profile
from goflame.export.folded import read_folded
from goflame.export.svg import category, render_svg
from goflame.frame import Frame, FrameKind
from goflame.profile import Profile, RecordingMeta, Sample

NS = {"s": "http://www.w3.org/2000/svg"}
FH = 18  # frame height passed to the writer; depth = rows above the root


def svg_root(profile: Profile, **opts) -> ET.Element:
    return ET.fromstring("".join(render_svg(profile, **opts)).encode("utf-8"))


def frames_of(root: ET.Element) -> list[dict]:
    """Each drawn frame as {name, n, s, x, w, y, fill, depth, text}, read from the XML alone."""
    out = []
    for g in root.find(".//s:g[@id='gf-frames']", NS):
        title = g.find("s:title", NS).text
        rect = g.find("s:rect", NS)
        text = g.find("s:text", NS)
        name, _, stats = title.partition("\n")
        out.append(dict(name=name, stats=stats, n=int(g.get("data-n")), s=int(g.get("data-s")),
                        x=float(rect.get("x")), w=float(rect.get("width")), y=float(rect.get("y")),
                        fill=rect.get("fill"), text=None if text is None else text.text))
    all_y = next(f["y"] for f in out if f["name"] == "all")
    for f in out:
        f["depth"] = round(abs(all_y - f["y"]) / FH)
    return out


def expected_frames(samples: list[Sample], label=lambda f: f.function) -> Counter:
    """(depth, name, samples) of every frame a flame graph of `samples` must draw."""
    prefixes: Counter[tuple[str, ...]] = Counter()
    for s in samples:
        names = tuple(label(f) for f in reversed(s.frames))
        for d in range(1, len(names) + 1):
            prefixes[names[:d]] += s.weight
    c = Counter((len(p), p[-1], n) for p, n in prefixes.items())
    c[(0, "all", sum(s.weight for s in samples))] += 1
    return c


def test_svg_frames_match_the_samples_exactly():
    samples = export_data.random_samples(500)
    prof = Profile(export_data.meta(), tuple(samples))
    frames = frames_of(svg_root(prof, min_width=0, frame_height=FH))
    assert Counter((f["depth"], f["name"], f["n"]) for f in frames) == expected_frames(samples)


def test_frames_nest_inside_their_parents_and_siblings_are_sorted_by_name():
    frames = frames_of(svg_root(export_data.profile(500), min_width=0, frame_height=FH))
    root = next(f for f in frames if f["depth"] == 0)
    total = root["n"]
    scale = root["w"] / total
    for f in frames:
        assert f["x"] == pytest.approx(root["x"] + f["s"] * scale, abs=0.01)
        assert f["w"] == pytest.approx(f["n"] * scale, abs=0.01)
        if f["depth"]:
            parents = [p for p in frames if p["depth"] == f["depth"] - 1
                       and p["s"] <= f["s"] and f["s"] + f["n"] <= p["s"] + p["n"]]
            assert len(parents) == 1, f["name"]
            f["parent"] = id(parents[0])
    by_parent: dict[int, list[dict]] = {}
    for f in frames:
        if f["depth"]:
            by_parent.setdefault(f["parent"], []).append(f)
    for kids in by_parent.values():
        kids.sort(key=lambda k: k["s"])
        assert [k["name"] for k in kids] == sorted(k["name"] for k in kids)


def test_inverted_graph_grows_downwards():
    frames = frames_of(svg_root(export_data.profile(100), inverted=True, frame_height=FH))
    ys = {f["depth"]: f["y"] for f in frames}
    assert all(ys[d] > ys[d - 1] for d in range(1, max(ys) + 1))
    title = svg_root(export_data.profile(100), inverted=True).find(".//s:text[@id='gf-title']", NS).text
    assert title.startswith("Icicle graph")


def test_frames_narrower_than_min_width_are_pruned_with_their_children():
    big = (Frame("main.big"), Frame("main.main"))
    tiny = (Frame("main.tinyleaf"), Frame("main.tiny"), Frame("main.main"))
    prof = Profile(RecordingMeta(), (Sample(0, 1, 1, "running", big, 100_000), Sample(0, 1, 1, "running", tiny, 1)))
    names = {f["name"] for f in frames_of(svg_root(prof, frame_height=FH))}
    assert names == {"all", "main.main", "main.big"}  # 1 sample of 100001 is 0.012 px wide
    names = {f["name"] for f in frames_of(svg_root(prof, min_width=0, frame_height=FH))}
    assert {"main.tiny", "main.tinyleaf"} <= names


def test_tooltips_give_samples_and_percentage():
    frames = frames_of(svg_root(export_data.profile(300), frame_height=FH))
    total = next(f["n"] for f in frames if f["name"] == "all")
    for f in frames:
        assert f["stats"] == f"{f['n']:,} samples ({100 * f['n'] / total:.2f}%)"


def test_title_and_subtitle_come_from_the_recording_meta():
    root = svg_root(export_data.profile(100))
    title = root.find(".//s:text[@id='gf-title']", NS).text
    sub = root.find(".//s:text[@id='gf-subtitle']", NS).text
    assert title == "Flame graph: server"
    total = sum(s.weight for s in export_data.random_samples(100))
    for part in ("/usr/local/bin/server", "pid 4242", "go1.27.3", "CPU", "12.5 s", f"{total:,} samples",
                 "100 Hz", "2023-11-14 22:13:20 UTC"):
        assert part in sub
    long = svg_root(export_data.profile(10, binary="/very/long/path/" * 12 + "server"), width=800)
    sub = long.find(".//s:text[@id='gf-subtitle']", NS).text
    assert sub.startswith("server · pid 4242") and len(sub) * 12 * 0.6 <= 800 - 20
    custom = svg_root(export_data.profile(10), title="T <1>", subtitle="S & s")
    assert custom.find(".//s:text[@id='gf-title']", NS).text == "T <1>"
    assert custom.find(".//s:text[@id='gf-subtitle']", NS).text == "S & s"


def test_svg_is_self_contained():
    text = "".join(render_svg(export_data.profile(100)))
    root = ET.fromstring(text.encode())
    for el in root.iter():
        for k, v in el.attrib.items():
            assert "href" not in k, (el.tag, k)
            assert "url(" not in v and "http" not in v.replace("http://www.w3.org/2000/svg", "")
    script = root.find("s:script", NS).text
    assert "fetch(" not in script and "XMLHttpRequest" not in script and "import(" not in script
    assert "@import" not in root.find("s:style", NS).text


def expected_display(name: str) -> str:
    """What a name must look like in the SVG: XML-forbidden and control characters spelled out."""
    out = []
    for ch in name:
        c = ord(ch)
        if c < 0x20 or c == 0x7F:
            out.append(f"\\x{c:02x}")
        elif 0xD800 <= c <= 0xDFFF or c in (0xFFFE, 0xFFFF):
            out.append(f"\\u{c:04x}")
        else:
            out.append(ch)
    return "".join(out)


NASTY = [
    "main.F[go.shape.struct { a int; b string }]",
    "main.Map[...]",
    '<script>alert("x")</script>',
    "a & b > c < d \"q\" 'apos' ]]> --",
    "ünïcödé 😀 名前",
    "ctrl\x01\x02\x1b\x7f end",
    "tab\there\nnewline\rcr",
    "bad\udcff\udcfe utf8",
    "nonchar\ufffe\uffff",
    "\x00nul",
]


def nasty_profile() -> Profile:
    samples = tuple(Sample(0, 1, 1, "running", (Frame(n), Frame("main.main")), 10 + i) for i, n in enumerate(NASTY))
    meta = RecordingMeta(binary="/opt/<bin>&\"x\"", go_version="go1.27.3\x01")
    return Profile(meta, samples)


def test_every_name_is_escaped_and_round_trips_through_an_xml_parser(tmp_path):
    out = tmp_path / "nasty.svg"
    write_profile(nasty_profile(), "svg", out, frame_height=FH, width=4000)
    root = ET.parse(out).getroot()  # raises on anything XML 1.0 forbids
    frames = {f["name"]: f for f in frames_of(root)}
    for n in NASTY:
        shown = expected_display(n)
        assert shown in frames, n
        text = frames[shown]["text"]
        assert text == shown or (text.endswith("..") and shown.startswith(text[:-2])), (n, text)
    sub = root.find(".//s:text[@id='gf-subtitle']", NS).text
    assert "/opt/<bin>&\"x\"" in sub and "go1.27.3\\x01" in sub


def test_names_from_a_folded_file_are_escaped_too(tmp_path):
    src = tmp_path / "in.folded"
    src.write_bytes(b"main.main;<a&b>\x02 \"x\" 3\nmain.main;F[T] 1\n")
    root = svg_root(read_folded(src), min_width=0, frame_height=FH)
    names = {f["name"] for f in frames_of(root)}
    assert names == {"all", "main.main", "<a&b>\\x02 \"x\"", "F[T]"}


def test_colour_categories_tell_code_apart():
    cases = {
        "main.main": "user", "main.(*T).Serve": "user", "github.com/acme/store.(*DB).Get": "user",
        "example/app/internal/x.F": "user", "go.uber.org/zap.(*Logger).Info": "user",
        "net/http.(*conn).serve": "std", "encoding/json.Marshal": "std", "sync.(*Mutex).Lock": "std",
        "crypto/internal/fips140/sha256.block": "std", "vendor/golang.org/x/net/http2/hpack.Decode": "std",
        "runtime.mallocgc": "runtime", "runtime/internal/atomic.Load": "runtime",
        "internal/runtime/maps.(*Map).Get": "runtime", "internal/poll.(*FD).Read": "runtime",
        "type:.eq.main.T": "runtime", "main.Map[go.shape.int,net/http.Header]": "user",
        "net/http.HandlerFunc.ServeHTTP (/usr/lib/go/src/net/http/server.go:2220)": "std",
    }
    for name, cat in cases.items():
        assert category(Frame(name)) == cat, name
    assert category(Frame("deflate_slow", kind=FrameKind.NATIVE)) == "native"
    assert category(Frame("[chan receive]", kind=FrameKind.STATE)) == "state"
    assert category(Frame("thread 1", kind=FrameKind.THREAD)) == "root"


def rgb(fill: str) -> tuple[int, int, int]:
    r, g, b = fill.removeprefix("rgb(").removesuffix(")").split(",")
    return int(r), int(g), int(b)


def test_colours_differ_by_category_and_are_stable_per_name():
    prof = export_data.profile(400, mode="wall")
    a = frames_of(svg_root(prof, min_width=0, frame_height=FH))
    b = frames_of(svg_root(prof, min_width=0, frame_height=FH))
    assert [f["fill"] for f in a] == [f["fill"] for f in b]
    fills: dict[str, set[str]] = {}
    for f in a:
        fills.setdefault(f["name"], set()).add(f["fill"])
    assert all(len(v) == 1 for v in fills.values())
    col = {n: rgb(next(iter(v))) for n, v in fills.items()}
    r, g, b_ = col["main.worker"]
    assert r > g > b_  # warm
    r, g, b_ = col["encoding/json.Marshal"]
    assert b_ > r and g > r  # cool
    r, g, b_ = col["runtime.mallocgc"]
    assert r > g + 80 and r > b_ + 80  # red
    r, g, b_ = col["deflate_slow"]
    assert b_ > g and r > g  # purple
    r, g, b_ = col["[chan receive]"]
    assert r == g == b_  # grey
    assert len({col[n] for n in ("main.worker", "encoding/json.Marshal", "runtime.mallocgc", "deflate_slow",
                                 "[chan receive]")}) == 5


def test_lines_option_puts_file_and_line_in_labels():
    samples = export_data.random_samples(200)
    prof = Profile(export_data.meta(), tuple(samples))
    frames = frames_of(svg_root(prof, lines=True, min_width=0, frame_height=FH))
    expected = expected_frames(samples, label=lambda f: f"{f.function} ({f.file}:{f.line})" if f.file else f.function)
    assert Counter((f["depth"], f["name"], f["n"]) for f in frames) == expected


def test_thread_and_goroutine_roots():
    samples = export_data.random_samples(200)
    prof = Profile(export_data.meta(), tuple(samples))
    frames = frames_of(svg_root(prof, threads=True, goroutines=True, min_width=0, frame_height=FH))
    got = Counter((f["name"], f["n"]) for f in frames if f["depth"] == 1)
    want: Counter[str] = Counter()
    for s in samples:
        want[f"thread {s.thread}" if s.thread else "no thread"] += s.weight
    assert got == Counter(want.items())
    assert any(f["depth"] == 2 and f["name"].startswith("goroutine ") for f in frames)


def test_empty_profile_renders_a_valid_document():
    root = svg_root(Profile(RecordingMeta(), ()))
    assert root.find(".//s:text[@id='gf-empty']", NS).text == "no samples"


def test_write_profile_accepts_paths_and_text_streams(tmp_path):
    buf = io.StringIO()
    write_profile(export_data.profile(50), "svg", buf)
    path = tmp_path / "p.svg"
    write_profile(export_data.profile(50), None, path)
    assert Path(path).read_text("utf-8") == buf.getvalue()
