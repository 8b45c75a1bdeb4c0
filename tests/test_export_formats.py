"""Choosing formats: by name or extension for output, by content (never by name) for input."""

from __future__ import annotations

import gzip
import io
from collections import Counter

import pytest

import export_data
from goflame.errors import BadInput
from goflame.export import FORMATS, format_from_extension, read_profile, sniff_format, write_profile
from goflame.profile import Profile, RecordingMeta, Sample, read_recording


@pytest.mark.parametrize("name, fmt", [
    ("out.svg", "svg"), ("OUT.SVG", "svg"), ("a.folded", "folded"), ("a.collapsed", "folded"),
    ("a.folded.txt", "folded"), ("p.speedscope.json", "speedscope"), ("p.json", "speedscope"),
    ("rec.goflame", "goflame"), ("cpu.pb.gz", "pprof"), ("cpu.pprof", "pprof"), ("/x/y.z/out.svg", "svg"),
])
def test_format_from_extension(name, fmt):
    assert format_from_extension(name) == fmt
    assert fmt in FORMATS


def test_unknown_extension_is_one_line_bad_input():
    with pytest.raises(BadInput, match=r"cannot tell the output format from 'out\.png'") as e:
        format_from_extension("dir/out.png")
    assert "\n" not in str(e.value)


def test_unknown_format_name_is_bad_input():
    with pytest.raises(BadInput, match="unknown output format 'gif'"):
        write_profile(export_data.profile(5), "gif", io.StringIO())


def test_input_is_recognised_by_content_not_by_name(tmp_path):
    prof = export_data.profile(80)
    rec = tmp_path / "looks-like.folded"  # a recording with a misleading name
    write_profile(prof, "goflame", rec)
    folded = tmp_path / "looks-like.goflame"  # folded text with a misleading name
    write_profile(prof, "folded", folded)
    assert sniff_format(rec) == "goflame"
    assert sniff_format(folded) == "folded"
    a, b = read_profile(rec), read_profile(folded)
    assert a.detailed and not b.detailed
    assert list(a.samples) == list(prof.samples)
    assert a.aggregate().by_frames() == prof.aggregate().by_frames()
    assert Counter(b.aggregate().by_frames().values()) == Counter(prof.aggregate().by_frames().values())


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"\x7fELF\x02\x01\x01" + bytes(60), "an ELF program"),
    (b'<?xml version="1.0"?><svg/>', "looks like XML/SVG"),
    (b'{"$schema": "https://www.speedscope.app/file-format-schema.json"}', "looks like JSON"),
    (bytes(range(256)) * 4, "not a goflame recording, folded stacks or pprof profile"),
])
def test_unreadable_inputs_are_one_line_bad_input(tmp_path, content, message):
    path = tmp_path / "in.folded"
    path.write_bytes(content)
    with pytest.raises(BadInput, match=message) as e:
        read_profile(path)
    assert "\n" not in str(e.value)


def test_pprof_looking_input_goes_to_the_pprof_reader(tmp_path):
    path = tmp_path / "cpu.folded"
    path.write_bytes(gzip.compress(b"\x0a\x04\x08\x01\x10\x02garbage"))
    assert sniff_format(path) == "pprof"
    with pytest.raises(BadInput):  # not supported yet, or (once it is) not a valid profile
        read_profile(path)


def test_missing_file_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="cannot read"):
        read_profile(tmp_path / "nope")


def test_goflame_format_via_write_profile_keeps_every_sample(tmp_path):
    prof = export_data.profile(120)
    path = tmp_path / "r.goflame"
    write_profile(prof, None, path)
    back = read_recording(path)
    assert list(back.samples) == list(prof.samples) and back.meta == prof.meta and back.complete
    buf = io.BytesIO()
    write_profile(prof, "goflame", buf)
    assert read_recording(buf.getvalue()).samples == back.samples


def test_text_formats_write_to_binary_streams_and_stdout_like_objects(tmp_path):
    prof = Profile(RecordingMeta(), (Sample(0, 1, 1, "running", export_data.random_samples(1)[0].frames, 2),))
    b = io.BytesIO()
    write_profile(prof, "folded", b)
    s = io.StringIO()
    write_profile(prof, "folded", s)
    assert b.getvalue().decode() == s.getvalue()
    wrapper = io.TextIOWrapper(io.BytesIO(), encoding="ascii")  # like a stdout in a C locale
    write_profile(prof, "folded", wrapper)
    wrapper.flush()
    assert wrapper.buffer.getvalue().decode() == s.getvalue()


def test_unwritable_output_is_an_output_error(tmp_path):
    from goflame.errors import OutputError
    with pytest.raises(OutputError, match="cannot write"):
        write_profile(export_data.profile(5), "svg", tmp_path / "no" / "such" / "dir.svg")
    with pytest.raises(OutputError, match="cannot write"):
        write_profile(export_data.profile(5), "goflame", tmp_path / "no" / "such" / "dir.goflame")


def test_options_a_format_does_not_take_are_ignored():
    for fmt in ("folded", "svg", "speedscope"):
        out = io.StringIO()
        write_profile(export_data.profile(5), fmt, out, inverted=True, title="x", min_width=3, no_such=1)
        assert out.getvalue()
