"""The .goflame recording format: round trip, streaming, crash recovery, rejection of bad files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import export_data
from goflame.errors import BadInput, OutputError
from goflame.export import read_profile
from goflame.frame import Frame, FrameKind
from goflame.inputs import Limits
from goflame.profile import (
    MAGIC,
    RecordingMeta,
    RecordingWriter,
    Sample,
    Tail,
    iter_chunks_info,
    read_recording,
)


def write(path: Path, samples: list[Sample], meta: RecordingMeta, *, close: bool = True,
          chunk_every: int = 0) -> None:
    w = RecordingWriter(path, meta, flush_interval=float("inf"))
    for i, s in enumerate(samples, 1):
        w.add(s)
        if chunk_every and i % chunk_every == 0:
            w.flush()
    if close:
        w.close(meta)
    else:
        w.abandon()


def test_every_sample_field_and_the_meta_survive_a_round_trip(tmp_path):
    samples = export_data.random_samples(500)
    odd = Sample(7, 2**40, 2**31 - 1, "IO wait", (
        Frame("main.F[go.shape.int]", "/x/é.go", 1 << 20, True, FrameKind.GO, 0xFFFF_FFFF_FFFF),
        Frame("\udcff\udcfebad-utf8", "", 0, False, FrameKind.UNKNOWN, 0),
        Frame("[IO wait]", kind=FrameKind.STATE),
        Frame("thread 9", kind=FrameKind.THREAD),
        Frame("goroutine 3", kind=FrameKind.GOROUTINE),
    ), 1000)
    samples.append(odd)
    samples.append(Sample(3, 0, 0, "", (), 1))  # timestamps may step back (threads sampled out of order)
    labelled = (("tenant", "ünï"), ("\udcffkey", ""), ("route", "/a b"))
    samples += [Sample(9, 4, 5, "running", odd.frames, 1, labelled), Sample(10, 4, 5, "running", (), 2, labelled),
                Sample(11, 6, 5, "running", (), 1, (("only", "one"),))]
    meta = export_data.meta(samples=len(samples), extra={"lagged": 5, "note": "ünïcode"})
    path = tmp_path / "r.goflame"
    write(path, samples, meta, chunk_every=37)

    p = read_recording(path)
    assert list(p.samples) == samples
    assert [f.pc for s in p.samples for f in s.frames] == [f.pc for s in samples for f in s.frames]
    assert p.meta == meta
    assert p.complete and p.detailed


def test_recording_interns_strings_frames_and_stacks(tmp_path):
    # 2000 samples over 7 paths: the file must hold each name once, not once per sample.
    samples = export_data.random_samples(2000)
    path = tmp_path / "r.goflame"
    write(path, samples, export_data.meta())
    data = path.read_bytes()
    assert data.count(b"crypto/sha256.block") == 1
    per_sample = len(data) / len(samples)
    assert per_sample < 40, f"{per_sample:.1f} bytes per sample"


def test_chunks_are_flushed_by_time_while_samples_keep_coming(tmp_path):
    path = tmp_path / "r.goflame"
    w = RecordingWriter(path, export_data.meta(), flush_interval=0.05)
    for s in export_data.random_samples(30):
        w.add(s)
        time.sleep(0.01)
    size_before_close = path.stat().st_size
    # Without close(), what reached the kernel is readable and holds nearly everything.
    p = read_recording(path)
    assert 20 <= len(p.samples) <= 30
    assert not p.complete
    assert size_before_close == path.stat().st_size
    w.tick()
    time.sleep(0.06)
    w.tick()
    assert len(read_recording(path).samples) == 30
    w.close()


def test_reader_drops_a_torn_last_chunk_at_every_cut_point(tmp_path):
    samples = export_data.random_samples(60)
    path = tmp_path / "r.goflame"
    write(path, samples, export_data.meta(), close=False, chunk_every=20)
    data = path.read_bytes()
    chunks = list(iter_chunks_info(data))
    assert len(chunks) == 3
    last_off, _, last_len = chunks[-1]
    for cut in range(last_off, len(data)):
        p = read_recording(data[:cut], "cut")
        assert list(p.samples) == samples[:40], cut
        assert not p.complete
    assert list(read_recording(data).samples) == samples


def test_zero_filled_tail_after_a_crash_is_dropped(tmp_path):
    samples = export_data.random_samples(50)
    path = tmp_path / "r.goflame"
    write(path, samples, export_data.meta(), close=False)
    p = read_recording(path.read_bytes() + bytes(4096))
    assert list(p.samples) == samples


def test_last_chunk_with_garbage_bytes_is_treated_as_torn(tmp_path):
    samples = export_data.random_samples(200)
    path = tmp_path / "r.goflame"
    write(path, samples, export_data.meta(), close=False, chunk_every=100)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # the last chunk's bytes never fully reached the disk
    assert list(read_recording(bytes(data)).samples) == samples[:100]


def test_corrupt_chunk_in_the_middle_is_bad_input(tmp_path):
    path = tmp_path / "r.goflame"
    write(path, export_data.random_samples(300), export_data.meta(), chunk_every=100)
    data = bytearray(path.read_bytes())
    off, _, plen = list(iter_chunks_info(bytes(data)))[1]
    data[off + 9 + plen // 2] ^= 0x40
    bad = tmp_path / "bad.goflame"
    bad.write_bytes(bytes(data))
    with pytest.raises(BadInput, match=r"bad\.goflame: corrupt goflame recording: chunk at byte \d+ fails its checksum"):
        read_recording(bad)


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"\x89PNG\r\n\x1a\n" + bytes(100), "not a goflame recording"),
    (b"main.main;main.f 3\n", "not a goflame recording"),
    (MAGIC + b"\x01", "truncated inside its header"),
    (MAGIC + b"\x01\x00\x10\x00\x00\x00{}", "truncated inside its header"),
    (MAGIC + b"\x09\x00\x02\x00\x00\x00{}\x00\x00\x00\x00", "newer than this goflame reads"),
    (MAGIC + b"\x01\x00\x02\x00\x00\x00{}\x00\x00\x00\x00", "header checksum mismatch"),
])
def test_foreign_truncated_and_corrupt_headers_are_bad_input(tmp_path, content, message):
    path = tmp_path / "x.goflame"
    path.write_bytes(content)
    with pytest.raises(BadInput, match=message) as e:
        read_recording(path)
    assert "\n" not in str(e.value)


def test_an_elf_file_is_refused_with_one_line(tmp_path):
    with pytest.raises(BadInput, match="not a goflame recording"):
        read_recording(sys.executable)
    with pytest.raises(BadInput, match="ELF program"):
        read_profile(sys.executable)


def test_header_with_valid_checksum_but_bad_json_is_corrupt(tmp_path):
    body = b"\x01\x00" + (4).to_bytes(4, "little") + b"{no}"
    path = tmp_path / "x.goflame"
    path.write_bytes(MAGIC + body + zlib.crc32(body).to_bytes(4, "little"))
    with pytest.raises(BadInput, match="header is not valid JSON"):
        read_recording(path)


def test_data_after_the_end_record_is_corrupt(tmp_path):
    path = tmp_path / "r.goflame"
    write(path, export_data.random_samples(20), export_data.meta())
    data = path.read_bytes()
    with pytest.raises(BadInput, match="after the end record"):
        read_recording(data + data[-40:], "twice")


def test_end_record_carries_final_counters_and_a_killed_recording_counts_what_it_has(tmp_path):
    samples = export_data.random_samples(40)
    start = export_data.meta(samples=0, errors=0, duration=0.0, extra={})
    path = tmp_path / "done.goflame"
    final = replace(start, samples=41, errors=1, duration=2.5, extra={"lagged": 4})
    write(path, samples, start)  # closes with `start` counters: overwritten below
    w = RecordingWriter(path, start)
    w.add_all(samples)
    w.close(final)
    p = read_recording(path)
    assert (p.meta.samples, p.meta.errors, p.meta.duration, p.meta.extra) == (41, 1, 2.5, {"lagged": 4})
    assert p.complete

    killed = tmp_path / "killed.goflame"
    write(killed, samples, start, close=False)
    k = read_recording(killed)
    assert not k.complete
    assert k.meta.samples == 40
    assert k.meta.duration == max(s.timestamp_ns for s in samples) / 1e9


def test_closing_without_meta_counts_the_samples_written(tmp_path):
    path = tmp_path / "r.goflame"
    samples = export_data.random_samples(25)
    with RecordingWriter(path, export_data.meta(samples=0)) as w:
        w.add_all(samples)
    p = read_recording(path)
    assert p.meta.samples == 25 and p.complete


_CHILD = r"""
import sys, time
from goflame.frame import Frame
from goflame.profile import RecordingMeta, RecordingWriter, Sample
w = RecordingWriter(sys.argv[1], RecordingMeta(pid=1, mode="cpu", rate_hz=500.0))
t0 = time.monotonic()
i = 0
while True:
    frames = tuple(Frame(f"main.f{(i + d) % 11}", "/m.go", d + 1) for d in range(1 + i % 6))
    w.add(Sample(int((time.monotonic() - t0) * 1e9), i, 1000 + i % 3, "running", frames, 1 + i % 2))
    print(i + 1, flush=True)   # i + 1 samples handed to the writer
    i += 1
    time.sleep(0.002)
"""


def test_sigkill_mid_recording_loses_at_most_the_last_second(tmp_path):
    path = tmp_path / "killed.goflame"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    progress: list[tuple[float, int]] = []

    def pump() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            progress.append((time.monotonic(), int(line)))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while (not progress or progress[-1][0] - progress[0][0] < 2.5) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    child.wait()
    reader.join(10)
    assert child.returncode == -signal.SIGKILL
    assert progress, "the recording child never started"

    p = read_recording(path)
    got = len(p.samples)
    # Handed to the writer more than a second before the kill: must all be in the file.
    owed = max((n for t, n in progress if t <= killed_at - 1.0), default=0)
    assert owed > 0
    assert owed <= got <= progress[-1][1] + 1
    # Every recovered sample is intact and in order.
    for i, s in enumerate(p.samples):
        assert s.goroutine == i and s.thread == 1000 + i % 3 and s.weight == 1 + i % 2
        assert [f.function for f in s.frames] == [f"main.f{(i + d) % 11}" for d in range(1 + i % 6)]
        assert [f.line for f in s.frames] == list(range(1, 2 + i % 6))
    ts = [s.timestamp_ns for s in p.samples]
    assert ts == sorted(ts)
    assert not p.complete


def test_a_full_disk_is_an_output_error_not_a_traceback(tmp_path):
    with pytest.raises(OutputError, match="cannot write /dev/full"):
        RecordingWriter("/dev/full", export_data.meta())
    with open("/dev/full", "wb", buffering=0) as full, pytest.raises(OutputError, match="No space"):
        RecordingWriter(full, export_data.meta())


@pytest.fixture(scope="module")
def valid_recording(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("valid") / "valid.goflame"
    write(path, export_data.random_samples(60), export_data.meta(), chunk_every=20)
    return path.read_bytes()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)), min_size=1,
                max_size=4),
       st.integers(min_value=0))
def test_damaged_recordings_give_samples_or_bad_input_never_a_crash(valid_recording, flips, cut):
    data = bytearray(valid_recording)
    for pos, bits in flips:
        data[pos % len(data)] ^= bits
    data = data[: len(data) - cut % 64]
    try:
        p = read_recording(bytes(data), "damaged")
    except BadInput as e:
        assert str(e).startswith("damaged") and "\n" not in str(e)
    else:
        assert all(isinstance(s, Sample) for s in p.samples)


# ---------------------------------------------------------------------------------------------
# recordings cut short say so; header and end record JSON within bounds; stacks within depth


def test_a_cut_recording_says_where_it_ends_and_what_it_kept(tmp_path):
    samples = export_data.random_samples(60)
    path = tmp_path / "r.goflame"
    write(path, samples, export_data.meta(), chunk_every=20)
    data = path.read_bytes()
    chunks = list(iter_chunks_info(data))
    second_off = chunks[1][0]
    third_off = chunks[2][0]
    cases = [
        (third_off + 5, third_off, Tail.TORN_CHUNK_HEADER, 40),
        (third_off + 20, third_off, Tail.TORN_CHUNK, 40),
        (second_off + 9 + chunks[1][2], second_off + 9 + chunks[1][2], Tail.NO_END_RECORD, 40),
    ]
    for cut, at, tail, kept in cases:
        p = read_recording(data[:cut], "cut.goflame")
        c = p.cut_short
        assert c is not None and not p.complete, cut
        assert (c.at, c.size, c.tail, c.samples) == (at, cut, tail, kept), cut
        assert c.seconds == max(s.timestamp_ns for s in samples[:kept]) / 1e9
        (note,) = p.reading_notes("cut.goflame")
        assert f"byte {at:,}" in note and f"kept {kept} samples" in note and "\n" not in note
    # a last chunk whose bytes never fully reached the disk, and a zero-filled tail
    damaged = bytearray(data[: third_off + 9 + chunks[2][2]])
    damaged[-1] ^= 0xFF
    assert read_recording(bytes(damaged), "x").cut_short.tail is Tail.BAD_LAST_CHECKSUM
    zeroed = data[:third_off] + bytes(500)
    c = read_recording(zeroed, "x").cut_short
    assert (c.at, c.size, c.tail) == (third_off, third_off + 500, Tail.ZERO_TAIL)
    whole = read_recording(data)
    assert whole.cut_short is None and whole.complete and whole.reading_notes("r") == []


def test_a_recording_cut_before_its_first_sample_is_bad_input(tmp_path):
    path = tmp_path / "r.goflame"
    write(path, export_data.random_samples(50), export_data.meta())
    data = path.read_bytes()
    first = next(iter_chunks_info(data))[0]
    for cut in (first, first + 3, first + 40):
        with pytest.raises(BadInput, match=r"cut\.goflame: recording cut short .*before its first sample") as e:
            read_recording(data[:cut], "cut.goflame")
        assert "\n" not in str(e.value)
    # a recording closed normally with no samples is a valid empty profile, not an error
    empty = tmp_path / "empty.goflame"
    write(empty, [], export_data.meta(samples=0))
    p = read_recording(empty)
    assert p.complete and not p.samples


def _header(meta_json: bytes) -> bytes:
    body = b"\x01\x00" + len(meta_json).to_bytes(4, "little") + meta_json
    return MAGIC + body + zlib.crc32(body).to_bytes(4, "little")


def _end_chunk(payload: bytes) -> bytes:
    return b"E" + len(payload).to_bytes(4, "little") + zlib.crc32(payload, zlib.crc32(b"E")).to_bytes(4, "little") \
        + payload


@pytest.mark.parametrize("header, end, message", [
    (b'{"extra": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None, "header is not valid JSON|nested more than"),
    (b'{"extra": ' + b"[" * 40 + b"]" * 40 + b"}", None, "header is nested more than 32 levels"),
    (b'{"samples": 1e400}', None, "header is not valid JSON"),
    (b'{"duration": NaN}', None, "header is not valid JSON"),
    (b'{"rate_hz": "inf"}', None, "malformed field"),
    (b"{}", b'{"samples": 1e400}', "end record is not valid JSON"),
    (b"{}", b'{"duration": Infinity}', "end record is not valid JSON"),
    (b"{}", b'{"samples": "1e400"}', "end record has a malformed field"),
    (b"{}", b'{"extra": ' + b"{\"a\": " * 50_000 + b"1" + b"}" * 50_000 + b"}", "end record"),
])
def test_json_that_is_deep_or_out_of_range_is_corrupt_not_a_crash(header, end, message):
    data = _header(header) + (_end_chunk(end) if end is not None else b"")
    with pytest.raises(BadInput, match=message) as e:
        read_recording(data, "x.goflame")
    assert str(e.value).startswith("x.goflame") and "\n" not in str(e.value)


def test_stack_records_deeper_than_the_limit_keep_their_innermost_frames(tmp_path):
    deep = tuple(Frame(f"main.f{i}", "/m.go", i + 1) for i in range(5000))
    samples = [Sample(1, 1, 1, "running", deep, 3), Sample(2, 1, 1, "running", deep[:10], 2)]
    path = tmp_path / "deep.goflame"
    write(path, samples, export_data.meta())
    p = read_recording(path)
    assert p.depth_cut is not None and (p.depth_cut.stacks, p.depth_cut.depth) == (1, 4096)
    cut = p.samples[0].frames
    assert len(cut) == 4096 and cut[:4095] == deep[:4095]
    assert cut[-1] == Frame("[truncated: deeper than 4096 frames]", kind=FrameKind.UNKNOWN)
    assert p.samples[1].frames == deep[:10]
    (note,) = p.reading_notes("deep.goflame")
    assert note == "deep.goflame: 1 stack deeper than 4,096 frames was cut to 4,096 (innermost frames kept)"
    small = read_recording(path, limits=Limits(max_depth=8))
    assert [len(s.frames) for s in small.samples] == [8, 8] and small.depth_cut.stacks == 2


def test_label_filter_keeps_the_labelled_samples_and_label_roots_split_them(tmp_path):
    """`report --tag` keeps the samples of goroutines with a label; `--label` gives each value a
    root of its own (one tower per tenant)."""
    frames = (Frame("main.work", "/w.go", 3),)
    samples = [Sample(i, 1, 1, "running", frames, 1, (("tenant", "a"),) if i % 3 else (("tenant", "b"),))
               for i in range(30)] + [Sample(40, 2, 1, "running", frames, 1)]
    path = tmp_path / "r.goflame"
    write(path, samples, export_data.meta(samples=len(samples)))
    p = read_recording(path)
    assert len(p.tagged((("tenant", "a"),)).samples) == 20
    assert len(p.tagged((("tenant", "b"),)).samples) == 10
    assert len(p.tagged((("tenant", "c"),)).samples) == 0
    rooted = p.rooted_by_label("tenant").stacks()
    assert {k[0].function: v for k, v in rooted.items()} == {"tenant=a": 20, "tenant=b": 10, "tenant=(none)": 1}
