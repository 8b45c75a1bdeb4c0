"""pprof in and out, judged by Go itself: `go tool pprof` reads what goflame writes, goflame
reads what Go's runtime/pprof writes (go test -cpuprofile, /debug/pprof/profile and
/debug/pprof/goroutine), and both sides agree stack for stack and total for total."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

import export_data
import gotoolchain as gt
from conftest import FIXTURES
from goflame.errors import BadInput
from goflame.export import read_profile, sniff_format, write_profile
from goflame.export.folded import folded_lines
from goflame.export.pprof import _message_classes, decode_pprof, encode_pprof, read_pprof
from goflame.frame import Frame
from goflame.profile import Profile, RecordingMeta, Sample, read_recording
from pprof_oracle import go_pprof, go_test_profile, raw_header, top_table, traces, traces_folded

ROOT = Path(__file__).resolve().parent.parent
GOFLAME = [sys.executable, "-m", "goflame.cli"]


def goflame(*args: str | Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*GOFLAME, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def folded_of(profile: Profile) -> Counter[str]:
    c: Counter[str] = Counter()
    for line in folded_lines(profile.aggregate(states=False)):
        stack, _, n = line.rpartition(" ")
        c[stack] += int(n)
    return c


def flat_cum(samples: tuple[Sample, ...]) -> dict[str, tuple[int, int]]:
    """Per function: samples with it as the leaf frame, and samples with it anywhere (once)."""
    flat: Counter[str] = Counter()
    cum: Counter[str] = Counter()
    for s in samples:
        if not s.frames:
            continue
        flat[s.frames[0].function] += s.weight
        for name in {f.function for f in s.frames}:
            cum[name] += s.weight
    return {name: (flat[name], cum[name]) for name in cum}


def tag_counts(path: Path) -> dict[str, Counter[str]]:
    """`go tool pprof -tags`: label key -> {value: samples}."""
    out: dict[str, Counter[str]] = {}
    key = None
    for line in go_pprof("-tags", "-sample_index=samples", path).splitlines():
        m = re.match(r"^\s*(\S+): Total \d+ of \d+", line)
        if m:
            key = m.group(1)
            out[key] = Counter()
            continue
        m = re.match(r"^\s*(\d+) \(\s*[0-9.]+%\): (.*)$", line)
        if m and key:
            out[key][m.group(2)] += int(m.group(1))
    return out


class PprofServer:
    """tests/fixtures/pprofserve: net/http/pprof on 127.0.0.1, a CPU-bound chain with an inlined
    leaf (main.mix inlined into main.spin) and goroutines parked on a channel and a mutex."""

    def __init__(self) -> None:
        exe = gt.build(FIXTURES / "pprofserve", gt.BuildSpec())
        self.proc = subprocess.Popen([str(exe)], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("listening "), line
        self.addr = line.split()[1]
        self.pid = self.proc.pid

    def fetch(self, path: str, out: Path, timeout: float = 60) -> Path:
        with urllib.request.urlopen(f"http://{self.addr}{path}", timeout=timeout) as r:
            out.write_bytes(r.read())
        return out

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def server():
    s = PprofServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def go_cpu_profile(tmp_path_factory) -> Path:
    """A CPU profile of examples/regress written by `go test -bench -cpuprofile`."""
    return go_test_profile(tmp_path_factory.mktemp("gotest") / "cpu.pprof", iterations=3000)  # ~40 samples


@pytest.fixture(scope="module")
def goflame_recording(tmp_path_factory, server) -> tuple[Path, Path]:
    """goflame's pprof of pprofserve and the raw recording it was made from (--keep-raw)."""
    d = tmp_path_factory.mktemp("rec")
    out = d / "cpu.pb.gz"
    r = goflame("record", "--pid", server.pid, "-d", "4", "-r", "400", "-f", "pprof", "--keep-raw", "-o", out)
    assert r.returncode == 0, r.stderr
    return out, Path(str(out) + ".goflame")


# ---------------------------------------------------------------------------------------------
# goflame -> go tool pprof


def test_go_tool_pprof_top_equals_goflames_own_totals(goflame_recording):
    pb, raw = goflame_recording
    rec = read_recording(raw)
    assert rec.meta.samples > 50
    expected = flat_cum(rec.samples)
    assert top_table(pb, "samples") == expected
    # the default sample type is CPU time: every sample is worth one period (1e9 / rate ns)
    period = round(1e9 / rec.meta.rate_hz)
    assert top_table(pb, "cpu") == {k: (f * period, c * period) for k, (f, c) in expected.items()}


def test_go_tool_pprof_traces_show_goflames_stacks_and_labels(goflame_recording):
    pb, raw = goflame_recording
    rec = read_recording(raw)
    want: Counter[str] = Counter()
    for s in rec.samples:
        want[";".join(f.function for f in reversed(s.frames))] += s.weight
    assert traces_folded(pb, "samples") == want
    # goroutine, thread and state are sample labels: -tags counts samples per label value
    tags = tag_counts(pb)
    want_tags = {"goroutine": Counter(), "thread": Counter(), "state": Counter()}
    for s in rec.samples:
        for key, v in (("goroutine", s.goroutine), ("thread", s.thread), ("state", s.state)):
            if v:
                want_tags[key][str(v)] += s.weight
    assert tags == {k: v for k, v in want_tags.items() if v}


def compiler_inlining(src: Path) -> set[tuple[str, str]]:
    """(callee, caller) pairs of package main that the Go compiler inlines (`-gcflags=-m`)."""
    root = gt.goroot(gt.FAST)
    work = src  # the fixture has no go.mod: build the file directly
    r = subprocess.run([str(root / "bin" / "go"), "build", "-gcflags=-m", "-o", os.devnull, "main.go"], cwd=work,
                       env=gt.go_env(root), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = (src / "main.go").read_text().splitlines()
    pairs = set()
    for m in re.finditer(r"^\./main\.go:(\d+):\d+: inlining call to (\w+)", r.stderr, re.M):
        lineno = int(m.group(1))
        caller = next(re.match(r"func (\w+)", lines[i]).group(1) for i in range(lineno - 1, -1, -1)
                      if lines[i].startswith("func "))
        pairs.add((f"main.{m.group(2)}", f"main.{caller}"))
    return pairs


def test_inlined_frames_are_lines_of_one_location_as_go_writes_them(goflame_recording):
    pb, _ = goflame_recording
    inlined = compiler_inlining(FIXTURES / "pprofserve")
    assert ("main.mix", "main.spin") in inlined, "the fixture's inlining changed: fix the fixture"
    ours = set()
    for _, frames in traces(pb, "samples"):
        for (inner, inl), (outer, _) in zip(frames, frames[1:], strict=False):
            if inl:
                ours.add((inner, outer))
    assert ("main.mix", "main.spin") in ours
    assert {p for p in ours if p[0].startswith("main.")} <= inlined
    # -raw lists a location's lines under it: main.mix, then main.spin on the next line at one address
    raw = go_pprof("-raw", pb)
    loc_lines = raw[raw.index("Locations"):].splitlines()
    assert any("main.mix " in a and "main.spin " in b and not b.lstrip()[0].isdigit()
               for a, b in zip(loc_lines, loc_lines[1:], strict=False))


def test_go_runtime_pprof_writes_the_same_inlined_locations(server, tmp_path):
    """Go's own profile of the same fixture shows main.mix inlined into main.spin too: the
    form goflame copies (sampled for seconds until it does, on a busy machine)."""
    seen = False
    for i in range(5):
        own = server.fetch("/debug/pprof/profile?seconds=3", tmp_path / f"go-cpu{i}.pb.gz")
        if any(("main.mix", True) in frames and frames[frames.index(("main.mix", True)) + 1][0] == "main.spin"
               for _, frames in traces(own, "samples")):
            seen = True
            break
    assert seen


def test_sample_types_period_and_times_follow_gos_conventions(goflame_recording, tmp_path):
    pb, raw = goflame_recording
    rec = read_recording(raw)
    head = raw_header(pb)
    assert head["SampleTypes"].split() == ["samples/count", "cpu/nanoseconds"]
    assert head["PeriodType"] == "cpu nanoseconds"
    assert head["Period"] == str(round(1e9 / rec.meta.rate_hz))
    assert float(head["Duration"].rstrip("s")) == pytest.approx(rec.meta.duration, abs=0.01)
    # wall mode (--idle) has a wall-clock type instead
    wall = Profile(RecordingMeta(mode="wall", rate_hz=50.0, duration=1.0, start_time=time.time()), rec.samples)
    write_profile(wall, "pprof", tmp_path / "wall.pb.gz")
    head = raw_header(tmp_path / "wall.pb.gz")
    assert head["SampleTypes"].split() == ["samples/count", "wall/nanoseconds"]
    assert head["PeriodType"] == "wall nanoseconds" and head["Period"] == "20000000"


def test_go_tool_pprof_renders_goflames_file_as_a_graph(goflame_recording):
    pb, raw = goflame_recording
    dot = go_pprof("-dot", "-nodefraction=0", pb)
    assert dot.startswith("digraph") and "main.spin" in dot and "main.churn" in dot


def test_functions_carry_file_and_start_line_from_the_binary(goflame_recording):
    pb, _ = goflame_recording
    raw = go_pprof("-raw", pb)
    src = (FIXTURES / "pprofserve" / "main.go").read_text().splitlines()
    spin_line = next(i for i, s in enumerate(src, 1) if s.startswith("func spin("))
    churn_line = next(i for i, s in enumerate(src, 1) if s.startswith("func churn("))
    assert any(" main.spin " in ln and "main.go:" in ln and ln.endswith(f" s={spin_line}") for ln in raw.splitlines())
    assert any(" main.churn " in ln and ln.endswith(f" s={churn_line}") for ln in raw.splitlines())


# ---------------------------------------------------------------------------------------------
# Go's runtime/pprof -> goflame


def test_go_test_cpuprofile_reads_as_go_tool_pprof_traces(go_cpu_profile):
    prof = read_profile(go_cpu_profile)
    assert sniff_format(go_cpu_profile) == "pprof"
    assert prof.meta.mode == "cpu" and prof.meta.rate_hz == 100.0
    assert folded_of(prof) == traces_folded(go_cpu_profile, "samples")
    assert sum(folded_of(prof).values()) > 20


def test_report_folded_of_a_go_profile_equals_traces(go_cpu_profile, tmp_path):
    out = tmp_path / "out.folded"
    r = goflame("report", "folded", go_cpu_profile, "-o", out)
    assert r.returncode == 0, r.stderr
    got = Counter()
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        got[stack] += int(n)
    assert got == traces_folded(go_cpu_profile, "samples")


def test_debug_pprof_profile_and_goroutine_profile_read_as_traces(server, tmp_path):
    cpu = server.fetch("/debug/pprof/profile?seconds=2", tmp_path / "profile")
    gor = server.fetch("/debug/pprof/goroutine", tmp_path / "goroutine")
    assert folded_of(read_pprof(cpu)) == traces_folded(cpu, "samples")
    g = read_pprof(gor)
    assert g.meta.extra["profile_kind"] == "goroutine"
    assert folded_of(g) == traces_folded(gor)
    stacks = folded_of(g)
    assert stacks[next(k for k in stacks if k.endswith("main.waitOnChannel;runtime.chanrecv1;runtime.chanrecv;"
                                                       "runtime.gopark"))] == 3


def test_pprof_goflame_pprof_keeps_totals_and_stacks(go_cpu_profile, tmp_path):
    again = tmp_path / "again.pb.gz"
    write_profile(read_profile(go_cpu_profile), "pprof", again)
    assert traces_folded(again, "samples") == traces_folded(go_cpu_profile, "samples")
    assert traces_folded(again, "cpu") == traces_folded(go_cpu_profile, "cpu")
    assert top_table(again) == top_table(go_cpu_profile)
    assert raw_header(again)["Period"] == raw_header(go_cpu_profile)["Period"]


def test_recording_to_pprof_and_back_keeps_goroutines_threads_and_states(tmp_path):
    samples = export_data.random_samples(600)
    prof = Profile(export_data.meta(), tuple(samples))
    write_profile(prof, "pprof", tmp_path / "p.pb.gz")
    back = read_profile(tmp_path / "p.pb.gz")
    assert back.detailed

    def key(s: Sample) -> tuple:
        return (tuple((f.function, f.file, f.line) for f in s.frames), s.goroutine, s.thread, s.state)

    want: Counter = Counter()
    for s in samples:
        want[key(s)] += s.weight
    got: Counter = Counter()
    for s in back.samples:
        got[key(s)] += s.weight
    assert got == want
    assert {f.kind for s in back.samples for f in s.frames} == {f.kind for s in samples for f in s.frames}


def test_frames_of_one_pc_become_one_location_with_lines_innermost_first():
    inner = Frame("main.mix", "/src/m.go", 20, True, pc=0x401234)
    mid = Frame("main.step", "/src/m.go", 30, True, pc=0x401234)
    outer = Frame("main.spin", "/src/m.go", 40, False, pc=0x401234)
    caller = Frame("main.main", "/src/m.go", 50, False, pc=0x401500)
    prof = Profile(RecordingMeta(rate_hz=100.0), (Sample(0, 1, 2, "running", (inner, mid, outer, caller), 3),))
    back = decode_pprof(encode_pprof(prof))
    (s,) = back.samples
    assert [(f.function, f.line, f.inlined, f.pc) for f in s.frames] == [
        ("main.mix", 20, True, 0x401234), ("main.step", 30, True, 0x401234),
        ("main.spin", 40, False, 0x401234), ("main.main", 50, False, 0x401500)]


def _uvarint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    return bytes(out) + bytes([v])


def test_goflames_pprof_with_inlined_locations_reads_back_as_go_tool_pprof_traces(goflame_recording):
    """Locations of several Line entries (inlined frames) and labelled samples, through the
    column reader: the stacks equal what Go's own reader makes of the same file."""
    pb, _raw = goflame_recording
    back = read_profile(pb)
    assert type(back.samples).__name__ == "LazySamples" and back.detailed
    assert folded_of(back) == traces_folded(pb, "samples")


def test_both_pprof_readers_agree_with_go_tool_pprof_traces(go_cpu_profile, tmp_path):
    """Samples whose ids are one packed field take the column reader (weights summed per stack,
    no Sample objects until a view needs them); Go writes 1 or 2 ids unpacked, which sends the
    whole file through the per-sample reader. Go's own -traces judges both, and the samples
    the column reader makes on demand. (Go's profile has a short stack now and then: its
    samples are packed by protobuf's own encoder first, so the column path is always taken.)"""
    p = _message_classes()["Profile"].FromString(gzip.decompress(go_cpu_profile.read_bytes()))
    raw = p.SerializeToString()  # proto3: every repeated id field packed
    packed = tmp_path / "packed.pb.gz"
    packed.write_bytes(gzip.compress(raw))
    fast = read_profile(packed)
    assert type(fast.samples).__name__ == "LazySamples"
    go_says = traces_folded(packed, "samples")
    assert go_says == traces_folded(go_cpu_profile, "samples")
    assert folded_of(fast) == go_says and fast.total_weight == sum(go_says.values())
    materialized = Profile(fast.meta, tuple(fast.samples), detailed=fast.detailed)
    assert folded_of(materialized) == go_says and len(materialized.samples) == len(fast.samples)

    # the same file plus one sample written as Go writes a short stack: ids unpacked
    loc = p.location[0].id
    values = b"".join(b"\x10" + _uvarint(v) for v in (3, 3 * p.period))
    body = b"\x08" + _uvarint(loc) + values
    short = tmp_path / "short.pb.gz"
    short.write_bytes(gzip.compress(raw + b"\x12" + _uvarint(len(body)) + body))
    slow = read_profile(short)
    assert type(slow.samples) is tuple
    want = traces_folded(short, "samples")
    assert folded_of(slow) == want
    assert sum(want.values()) == sum(go_says.values()) + 3

    # a sample whose packed ids are empty (a stack of nothing): column path, no frames shown
    body = b"\x0a\x00\x12\x02\x01\x01"
    empty = tmp_path / "empty.pb.gz"
    empty.write_bytes(gzip.compress(raw + b"\x12" + _uvarint(len(body)) + body))
    back = read_profile(empty)
    assert type(back.samples).__name__ == "LazySamples"
    assert folded_of(back) == traces_folded(empty, "samples") == go_says


def test_pprof_is_recognised_by_content_gzipped_or_not(go_cpu_profile, tmp_path):
    disguised = tmp_path / "looks.folded"
    disguised.write_bytes(go_cpu_profile.read_bytes())
    plain = tmp_path / "plain.goflame"
    plain.write_bytes(gzip.decompress(go_cpu_profile.read_bytes()))
    assert sniff_format(disguised) == "pprof" and sniff_format(plain) == "pprof"
    assert folded_of(read_profile(plain)) == folded_of(read_profile(go_cpu_profile))


# ---------------------------------------------------------------------------------------------
# bad input: one line, exit 2


def test_truncated_gzip_is_one_line_bad_input(go_cpu_profile, tmp_path):
    cut = tmp_path / "cut.pb.gz"
    data = go_cpu_profile.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInput, match="truncated gzip"):
        read_profile(cut)
    r = goflame("report", "folded", cut)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "truncated" in r.stderr


@pytest.mark.parametrize("payload, message", [
    (gzip.compress(b"main;work 12\n"), "not a pprof profile"),
    (gzip.compress(b""), "empty pprof profile"),
    (b"\x1f\x8b\x08\x00garbage-after-the-magic" * 3, "corrupt gzip data"),
    (b"\x0a\x05\x08\x01\x10\x02\xff\xff\xff", "not a pprof profile"),
])
def test_broken_pprof_files_are_one_line_bad_input(tmp_path, payload, message):
    p = tmp_path / "bad.pb.gz"
    p.write_bytes(payload)
    with pytest.raises(BadInput, match=message) as e:
        read_profile(p)
    assert "\n" not in str(e.value)


def test_corrupt_references_inside_a_valid_protobuf_are_bad_input(go_cpu_profile):
    cls = _message_classes()["Profile"]
    p = cls()
    p.ParseFromString(gzip.decompress(go_cpu_profile.read_bytes()))
    p.sample[0].location_id.append(10 ** 9)
    with pytest.raises(BadInput, match="refers to location 1000000000"):
        decode_pprof(p.SerializeToString(), "x")
    p.ClearField("sample_type")
    with pytest.raises(BadInput, match="samples but no sample types"):
        decode_pprof(p.SerializeToString(), "x")


# ---------------------------------------------------------------------------------------------
# bounded reading: what gzip may inflate to, how deep a stack may be; 64-bit values on writing


def test_gzip_inflating_past_the_cap_is_bad_input_and_the_cap_scales_with_the_file(tmp_path):
    from goflame.inputs import INFLATE_FLOOR, INFLATE_RATIO, Limits, format_size

    raw = encode_pprof(export_data.profile(400))
    whole = gzip.compress(raw)
    assert folded_of(decode_pprof(whole, "ok", limits=Limits(max_inflate=len(raw)))) == \
        folded_of(decode_pprof(whole, "ok"))
    with pytest.raises(BadInput, match=rf"big: gzip data of .* inflates to more than {format_size(len(raw) - 1)}, goflame's limit"):
        decode_pprof(whole, "big", limits=Limits(max_inflate=len(raw) - 1))
    # concatenated members count together
    half = len(raw) // 2
    members = gzip.compress(raw[:half]) + gzip.compress(raw[half:])
    assert folded_of(decode_pprof(members, "m", limits=Limits(max_inflate=len(raw)))) == \
        folded_of(decode_pprof(whole, "ok"))
    with pytest.raises(BadInput, match="inflates to more than"):
        decode_pprof(members, "m", limits=Limits(max_inflate=half + 10))
    # the default: a multiple of the compressed size, with a floor
    assert Limits().inflate_cap(1000) == INFLATE_FLOOR == 256 << 20
    assert Limits().inflate_cap(100 << 20) == INFLATE_RATIO * (100 << 20) == 3200 << 20
    assert Limits(max_inflate=5).inflate_cap(100 << 20) == 5


def test_a_gzip_bomb_is_refused_by_the_default_cap():
    from goflame.inputs import INFLATE_FLOOR

    bomb = gzip_bomb()
    assert len(bomb) < 5 << 20  # 4 MiB that inflate to 4 GiB
    with pytest.raises(BadInput, match=r"bomb\.pb\.gz: gzip data of 4\.1 MiB inflates to more than 256 MiB") as e:
        decode_pprof(bomb, "bomb.pb.gz")
    assert "--max-inflate" in str(e.value) and INFLATE_FLOOR == 256 << 20


def gzip_bomb(gib: int = 4) -> bytes:
    """A gzip stream of `gib` GiB of zero bytes, made in milliseconds: deflate blocks of 1 MiB of
    zeros, each ended by a full flush, are identical, so one is repeated; the trailer (CRC and
    size) is never reached by a reader that stops at its cap, so it is left zero."""
    import zlib

    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    c.compress(bytes(1 << 20))
    c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + block * (gib << 10) + b"\x03\x00" + bytes(8)


def _deep_profile() -> tuple[Profile, list[tuple[Frame, ...]]]:
    """Stacks of 30 and 3 frames (innermost first), pairs of them inlined at one pc."""
    def stack(n: int, tag: str) -> tuple[Frame, ...]:
        return tuple(Frame(f"main.{tag}{i}", "/m.go", i + 1, i % 2 == 0, pc=0x401000 + 16 * (i // 2) +
                           (0x8000 if tag == "b" else 0)) for i in range(n))

    stacks = [stack(30, "a"), stack(3, "b"), stack(31, "b")]
    samples = tuple(Sample(0, 0, 0, "", fr, w) for fr, w in zip(stacks, (5, 2, 1), strict=True))
    return Profile(RecordingMeta(mode="cpu", rate_hz=100.0), samples, detailed=False), stacks


def test_pprof_stacks_deeper_than_the_limit_are_cut_on_both_read_paths():
    from goflame.inputs import Limits, cut_deep

    prof, stacks = _deep_profile()
    data = gzip.compress(encode_pprof(prof))
    want_prof = Profile(prof.meta, tuple(Sample(0, 0, 0, "", cut_deep(s.frames, 10), s.weight)
                                         for s in prof.samples), detailed=False)
    want = folded_of(want_prof)
    assert max(len(k.split(";")) for k in want) == 10 and any(k.startswith("[truncated: deeper than 10 frames]")
                                                              for k in want)
    fast = decode_pprof(data, "deep", limits=Limits(max_depth=10))
    assert type(fast.samples).__name__ == "LazySamples"
    assert fast.depth_cut is not None and (fast.depth_cut.stacks, fast.depth_cut.depth) == (2, 10)
    assert folded_of(fast) == want
    materialized = Profile(fast.meta, tuple(fast.samples), detailed=False)
    assert folded_of(materialized) == want
    assert all(len(s.frames) <= 10 for s in materialized.samples)
    # within the default limit nothing is cut, and nothing is said
    whole = decode_pprof(data, "deep")
    assert whole.depth_cut is None and folded_of(whole) == folded_of(prof)


def test_a_count_past_64_bits_cannot_be_written_as_pprof_and_nothing_is_written(tmp_path):
    out = tmp_path / "out.pb.gz"
    out.write_bytes(b"the previous profile")
    src = tmp_path / "huge.folded"
    src.write_bytes(b"main.main;main.big 9223372036854775808\nmain.main 1\n")
    with pytest.raises(BadInput, match=r"cannot be written as pprof: a stack's sample count \(9,223,372,036,854,775,808\)"):
        write_profile(read_profile(src), "pprof", out)
    assert out.read_bytes() == b"the previous profile" and sorted(os.listdir(tmp_path)) == ["huge.folded",
                                                                                            "out.pb.gz"]
    # the largest count pprof holds is written, and read back as it was
    src.write_bytes(b"main.main;main.big 9223372036854775807\n")
    write_profile(read_profile(src), "pprof", out)
    assert read_profile(out).total_weight == 2 ** 63 - 1
    # a CPU profile also stores count x period nanoseconds: that must fit too
    timed = Profile(RecordingMeta(mode="cpu", rate_hz=100.0), (Sample(0, 0, 0, "", (Frame("main.f"),), 2 ** 62),))
    with pytest.raises(BadInput, match="more nanoseconds than pprof's 64-bit values hold"):
        write_profile(timed, "pprof", out)
    src.write_bytes(b"main.main;main.big 9223372036854775808\n")
    r = goflame("report", "pprof", src, "-o", out)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot be written as pprof" in r.stderr, r.stderr
    assert read_profile(out).total_weight == 2 ** 63 - 1
