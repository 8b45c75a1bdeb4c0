"""Folded (collapsed) stacks: writer counts, reader robustness, lossless round trip."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import export_data
from goflame.errors import BadInput
from goflame.export import read_profile, write_profile
from goflame.export.folded import read_folded
from goflame.frame import FrameKind


def synth_script() -> Path:
    """The shared benchmark corpus generator: shared/ sits beside the checkout (and in CI)."""
    for base in (os.environ.get("GOFLAME_SHARED", ""), Path(__file__).resolve().parents[2] / "shared",
                 "/work/shared"):
        if base and (Path(base) / "bench" / "synth_folded.py").exists():
            return Path(base) / "bench" / "synth_folded.py"
    pytest.fail("shared/bench/synth_folded.py not found (set GOFLAME_SHARED to the shared/ folder)")


def folded_text(profile, **opts) -> str:
    out = io.StringIO()
    write_profile(profile, "folded", out, **opts)
    return out.getvalue()


def parse_counts(text: str) -> Counter[str]:
    c: Counter[str] = Counter()
    for line in text.split("\n"):
        if not line:
            continue
        stack, _, n = line.rpartition(" ")
        c[stack] += int(n)
    return c


def test_folded_counts_equal_counts_from_the_samples():
    samples = export_data.random_samples(600)
    expected: Counter[str] = Counter()
    for s in samples:
        expected[";".join(f.function for f in reversed(s.frames))] += s.weight
    text = folded_text(export_data.profile(600))
    assert parse_counts(text) == expected
    assert text.splitlines() == sorted(text.splitlines())


def test_lines_threads_goroutines_and_states_options_shape_the_stacks():
    samples = export_data.random_samples(300)
    expected: Counter[str] = Counter()
    for s in samples:
        names = [f"{f.function} ({f.file}:{f.line})" if f.file else f.function for f in reversed(s.frames)]
        if s.state not in ("", "running"):
            names.append(f"[{s.state}]")
        names.insert(0, f"goroutine {s.goroutine}" if s.goroutine else "no goroutine")
        names.insert(0, f"thread {s.thread}" if s.thread else "no thread")
        expected[";".join(names)] += s.weight
    text = folded_text(export_data.profile(300), lines=True, threads=True, goroutines=True, states=True)
    assert parse_counts(text) == expected


def test_wall_mode_adds_state_leaves_by_default_and_cpu_mode_does_not():
    wall = parse_counts(folded_text(export_data.profile(200, mode="wall")))
    cpu = parse_counts(folded_text(export_data.profile(200, mode="cpu")))
    assert any(k.endswith(";runtime.gopark;[chan receive]") for k in wall)
    assert any(k.endswith(";syscall.Syscall;[syscall]") for k in wall)
    assert not any(k.endswith(("[chan receive]", "[syscall]")) for k in cpu)
    assert sum(wall.values()) == sum(cpu.values())


TRICKY = """\
runtime.goexit;main.main;main.(*T).Serve 12
runtime.goexit;main.main;main.Map[go.shape.struct { a int, b string }] 3
runtime.goexit;main.main;main.work (/src/app/main.go:42) 5
runtime.goexit;<&> "quoted" 'single';ünïcödé 😀 7
runtime.goexit;name with  two spaces ;trailing space  1
thread 4101;goroutine 17;main.f;[chan receive] 9
\tleading tab;x\x01ctrl 2
runtime.goexit;zero 0
"""


def test_folded_round_trip_is_identical(tmp_path):
    src = tmp_path / "in.folded"
    src.write_bytes(TRICKY.encode())
    out = tmp_path / "out.folded"
    write_profile(read_folded(src), "folded", out)
    assert out.read_text().splitlines() == sorted(TRICKY.splitlines())


def test_folded_round_trip_keeps_bytes_that_are_not_utf8(tmp_path):
    raw = b"main.main;caf\xe9\xff 3\nmain.main;ok 1\n"
    src = tmp_path / "in.folded"
    src.write_bytes(raw)
    out = tmp_path / "out.folded"
    write_profile(read_profile(src), "folded", out)
    assert sorted(out.read_bytes().splitlines()) == sorted(raw.splitlines())


def test_reader_accepts_crlf_and_blank_lines(tmp_path):
    src = tmp_path / "crlf.folded"
    src.write_bytes(b"a;b 2\r\n\r\n  \na;c 3\r\n")
    p = read_folded(src)
    assert parse_counts(folded_text(p)) == Counter({"a;b": 2, "a;c": 3})


def test_reader_merges_duplicate_stacks():
    p = read_folded(io.BytesIO(b"a;b 2\na;b 3\n"))
    assert folded_text(p) == "a;b 5\n"


def test_reader_recognises_goflames_synthetic_frames():
    p = read_folded(io.BytesIO(b"thread 7;goroutine 9;main.f;[IO wait] 1\nno thread;no goroutine;x 1\n"
                               b"main.g;[native code] 1\nmain.h;[truncated: stack too deep] 1\n"))
    kinds = {f.function: f.kind for s in p.samples for f in s.frames}
    assert kinds == {"thread 7": FrameKind.THREAD, "goroutine 9": FrameKind.GOROUTINE, "main.f": FrameKind.GO,
                     "[IO wait]": FrameKind.STATE, "no thread": FrameKind.THREAD,
                     "no goroutine": FrameKind.GOROUTINE, "x": FrameKind.GO, "main.g": FrameKind.GO,
                     "[native code]": FrameKind.NATIVE, "main.h": FrameKind.GO,
                     "[truncated: stack too deep]": FrameKind.UNKNOWN}


@pytest.mark.parametrize("line, message", [
    ("a;b", "not a folded stack line"),
    ("a;b x", "sample count 'x' is not a whole number"),
    ("a;b -3", "is not a whole number"),
    ("a;b 1.5", "is not a whole number"),
    ("a;;b 3", "empty frame name"),
    (";a 3", "empty frame name"),
    (" 3", "not a folded stack line"),
])
def test_unparseable_line_is_bad_input_with_its_line_number(tmp_path, line, message):
    src = tmp_path / "bad.folded"
    src.write_text(f"ok;fine 1\n\n{line}\nok 2\n")
    with pytest.raises(BadInput, match=rf"bad\.folded:3: .*{message}") as e:
        read_profile(src)
    assert "\n" not in str(e.value)


def test_semicolons_and_newlines_inside_names_cannot_break_the_format():
    from goflame.frame import Frame
    from goflame.profile import Profile, RecordingMeta, Sample
    f = Frame("main.F[go.shape.struct { a int; b int }]")
    g = Frame("multi\nline")
    p = Profile(RecordingMeta(), (Sample(0, 1, 1, "running", (g, f), 4),))
    text = folded_text(p)
    assert text == "main.F[go.shape.struct { a int: b int }];multi line 4\n"
    assert parse_counts(text) == Counter({"main.F[go.shape.struct { a int: b int }];multi line": 4})


def test_synthetic_reference_corpus_round_trips(tmp_path):
    src = tmp_path / "synth.folded"
    with open(src, "wb") as f:
        subprocess.run([sys.executable, str(synth_script()), "3000"], stdout=f, check=True)
    out = tmp_path / "out.folded"
    write_profile(read_profile(src), "folded", out)
    assert out.read_text().splitlines() == sorted(src.read_text().splitlines())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_profile_or_one_line_bad_input(data):
    try:
        p = read_folded(io.BytesIO(data), "fuzz")
    except BadInput as e:
        assert str(e).startswith("fuzz:") and "\n" not in str(e)
    else:
        text = folded_text(p)
        assert sum(parse_counts(text).values()) == sum(s.weight for s in p.samples)


def test_lines_deeper_than_the_limit_keep_their_innermost_frames_and_are_counted():
    from goflame.inputs import Limits

    names = [f"f{i}" for i in range(12)]
    text = (";".join(names) + " 5\n" + ";".join(names[:6]) + " 2\n" + ";".join(names[:7]) + " 1\n").encode()
    p = read_folded(io.BytesIO(text), "deep", limits=Limits(max_depth=6))
    assert p.depth_cut is not None and (p.depth_cut.stacks, p.depth_cut.depth) == (2, 6)
    got = Counter({";".join(f.function for f in reversed(s.frames)): s.weight for s in p.samples})
    marker = "[truncated: deeper than 6 frames]"
    assert got == Counter({f"{marker};f7;f8;f9;f10;f11": 5, ";".join(names[:6]): 2, f"{marker};f2;f3;f4;f5;f6": 1})
    assert next(s for s in p.samples if s.weight == 5).frames[-1].kind is FrameKind.UNKNOWN
    # the cut text reads back as it was written: nothing is cut twice
    again = read_folded(io.BytesIO(folded_text(p).encode()), "again", limits=Limits(max_depth=6))
    assert again.depth_cut is None and parse_counts(folded_text(again)) == parse_counts(folded_text(p))


def test_an_empty_name_in_the_part_of_a_line_that_is_cut_is_still_bad_input():
    from goflame.inputs import Limits

    for line in (b";a;b;c;d;e;f;g 1\n", b"a;;b;c;d;e;f;g 1\n", b"a;b;;c;d;e;f;g 1\n"):
        with pytest.raises(BadInput, match="deep:1: empty frame name"):
            read_folded(io.BytesIO(line), "deep", limits=Limits(max_depth=4))


def test_an_empty_folded_file_is_an_empty_profile(tmp_path):
    # what a profile with no samples is written as, read back as one
    empty = tmp_path / "empty.folded"
    write_profile(export_data.profile(0), "folded", empty)
    assert empty.read_bytes() == b""
    for p in (read_profile(empty), read_folded(empty)):
        assert not p.samples and p.total_weight == 0 and p.depth_cut is None
