"""Choosing formats: by name or extension for output, by content (never by name) for input."""

from __future__ import annotations

import gzip
import io
import os
import stat
import threading
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


# ---------------------------------------------------------------------------------------------
# output files appear whole or not at all; empty input is an empty profile


def test_an_empty_file_is_an_empty_profile_that_every_format_can_write(tmp_path):
    empty = tmp_path / "empty.folded"
    empty.write_bytes(b"")
    assert sniff_format(empty) == "folded"
    p = read_profile(empty)
    assert not p.samples and p.total_weight == 0
    for fmt in FORMATS:
        out = tmp_path / f"out-{fmt}"
        write_profile(p, fmt, out)
        if fmt in ("folded", "goflame", "pprof"):  # read back: still no samples
            assert read_profile(out).total_weight == 0
        else:  # an empty document (an SVG that says "no samples", a speedscope file with none)
            assert out.stat().st_size > 0


def test_a_failed_write_leaves_the_previous_file_as_it_was_and_no_temporary_file(tmp_path):
    out = tmp_path / "out.pb.gz"
    out.write_bytes(b"the previous profile")
    os.chmod(out, 0o640)
    huge = Profile(RecordingMeta(), (Sample(0, 0, 0, "", export_data.random_samples(1)[0].frames, 2 ** 64),),
                   detailed=False)
    with pytest.raises(BadInput, match="cannot be written as pprof"):
        write_profile(huge, "pprof", out)
    assert out.read_bytes() == b"the previous profile" and os.listdir(tmp_path) == ["out.pb.gz"]
    # a write that works replaces the file whole and keeps its permissions
    write_profile(export_data.profile(50), "pprof", out)
    assert read_profile(out).total_weight == export_data.profile(50).total_weight
    assert stat.S_IMODE(out.stat().st_mode) == 0o640 and os.listdir(tmp_path) == ["out.pb.gz"]


def test_a_fifo_or_device_output_is_written_in_place_never_replaced(tmp_path):
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    write_profile(export_data.profile(30), "folded", fifo)
    reader.join(10)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and os.listdir(tmp_path) == ["out.fifo"]
    expected = io.StringIO()
    write_profile(export_data.profile(30), "folded", expected)
    assert got == [expected.getvalue().encode()]
    link = tmp_path / "null.svg"
    link.symlink_to(os.devnull)
    write_profile(export_data.profile(30), "svg", link)
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode) and link.is_symlink()
