"""pprof labels read out of live processes (goflame/labels.py) against what Go says they are.

Oracles, none of them goflame's own code:
- the fixture's truth: each goroutine's id (from its own runtime.Stack) and its labels as the
  pprof API gives them (pprof.ForLabels on the context whose labels it carries), as bytes;
- the runtime's goroutine profile at debug=1, whose "# labels: {...}" lines the runtime
  builds from g.labels, one per group of goroutines with the same stack and labels;
- Go 1.26+: the runtime's own dump of every goroutine under GODEBUG=tracebacklabels=1, which
  prints each goroutine's labels in its header.
Torn and absurd stores (cycles, huge counts, bad pointers, lengths over the caps) are built
by hand in a fake memory; everything else runs a real Go program.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import selectors
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gotoolchain as gt
from conftest import FIXTURES, record_then_ask, share_tolerance
from goflame.binary.gobinary import GoBinary
from goflame.binary.layout import layout_from_table
from goflame.labels import EMPTY, LabelCaps, LabelError, LabelReader, Labels, LabelStore
from goflame.process import Process
from goflame.profile import read_recording
from goflame.runtime import RuntimeReader

RawLabels = dict[bytes, bytes]


# --------------------------------------------------------------------------- Go's quoting


_ESCAPES = {"a": b"\a", "b": b"\b", "f": b"\f", "n": b"\n", "r": b"\r", "t": b"\t", "v": b"\v",
            "\\": b"\\", "'": b"'", '"': b'"'}


def go_unquote(text: str, pos: int) -> tuple[bytes, int]:
    """The bytes of the Go double-quoted string literal at text[pos] (strconv.Quote's and the
    runtime's printquoted's escapes), and the position after its closing quote."""
    assert text[pos] == '"', text[pos:pos + 20]
    out = bytearray()
    i = pos + 1
    while text[i] != '"':
        ch = text[i]
        if ch != "\\":
            out += ch.encode()
            i += 1
            continue
        kind = text[i + 1]
        if kind in _ESCAPES:
            out += _ESCAPES[kind]
            i += 2
        elif kind == "x":
            out.append(int(text[i + 2:i + 4], 16))
            i += 4
        elif kind in "uU":
            n = 4 if kind == "u" else 8
            out += chr(int(text[i + 2:i + 2 + n], 16)).encode()
            i += 2 + n
        elif kind in "01234567":
            out.append(int(text[i + 1:i + 4], 8))
            i += 4
        else:
            raise AssertionError(f"unknown escape \\{kind} in {text[pos:pos + 40]!r}")
    return bytes(out), i + 1


_BARE = re.compile(r"[A-Za-z0-9./_]*")


def go_token(text: str, pos: int) -> tuple[bytes, int]:
    """A quoted string, or (Go 1.27 tracebacks) a bare word that needed no quotes."""
    if text[pos] == '"':
        return go_unquote(text, pos)
    m = _BARE.match(text, pos)
    assert m is not None
    return m.group(0).encode(), m.end()


def parse_label_map(text: str, pos: int, sep: str) -> tuple[RawLabels, int]:
    """`{k<sep>v, k<sep>v}` at text[pos] -> ({k: v}, position after the closing brace)."""
    assert text[pos] == "{", text[pos:pos + 20]
    pos += 1
    out: RawLabels = {}
    if text[pos] == "}":
        return out, pos + 1
    while True:
        k, pos = go_token(text, pos)
        assert text.startswith(sep, pos), text[pos:pos + 20]
        v, pos = go_token(text, pos + len(sep))
        assert k not in out, f"key {k!r} printed twice"
        out[k] = v
        if text[pos] == "}":
            return out, pos + 1
        assert text.startswith(", ", pos), text[pos:pos + 20]
        pos += 2


def profile_label_sets(profile: str) -> Counter[frozenset[tuple[bytes, bytes]]]:
    """Goroutines per non-empty label set in a debug=1 goroutine profile."""
    out: Counter[frozenset[tuple[bytes, bytes]]] = Counter()
    lines = profile.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\d+) @", line)
        if m and i + 1 < len(lines) and lines[i + 1].startswith("# labels: "):
            text = lines[i + 1][len("# labels: "):]
            labels, end = parse_label_map(text, 0, ":")
            assert end == len(text), text
            if labels:
                out[frozenset(labels.items())] += int(m.group(1))
    return out


def traceback_labels(dump: str, minor: int) -> dict[int, RawLabels]:
    """Labels in the goroutine headers of runtime.Stack(all) with GODEBUG=tracebacklabels=1:
    Go 1.26 prints `[state labels:{"k": "v"}]:`, 1.27 `[state] {k: v}:` (quoting as needed)."""
    out: dict[int, RawLabels] = {}
    marker = " labels:{" if minor == 26 else "] {"
    for line in dump.splitlines():
        m = re.match(r"^goroutine (\d+) ", line)
        if not m:
            continue
        at = line.find(marker)
        if at < 0:
            continue
        labels, end = parse_label_map(line, at + len(marker) - 1, ": ")
        assert line[end:] == ("]:" if minor == 26 else ":"), line
        out[int(m.group(1))] = labels
    return out


# --------------------------------------------------------------------------- the fixture


@dataclass
class Truth:
    labels: dict[int, RawLabels] = field(default_factory=dict)  # goid -> its labels
    cases: dict[int, str] = field(default_factory=dict)  # goid -> what the fixture did
    profile: str = ""
    traceback: str = ""


class LabelsFixture:
    """tests/fixtures/labels running, its report parsed; `gc()` makes it run a GC cycle."""

    def __init__(self, binary: Path, *args: str):
        env = {**os.environ, "GODEBUG": "tracebacklabels=1"}
        self.proc = subprocess.Popen([str(binary), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.pid = self.proc.pid
        self._buf = b""
        try:
            self.truth = self._parse(self._until(b"ready "))
        except BaseException:
            self.close()
            raise

    def _until(self, prefix: bytes, timeout: float = 60) -> str:
        """Output up to and including the first line that starts with `prefix`."""
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(rb"(?:^|\n)" + re.escape(prefix) + rb"[^\n]*\n", self._buf)
            if m:
                text, self._buf = self._buf[:m.end()], self._buf[m.end():]
                return text.decode()
            left = deadline - time.monotonic()
            assert left > 0, f"the fixture never printed {prefix!r}"
            if sel.select(left):
                chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
                assert chunk, "the fixture exited early"
                self._buf += chunk

    @staticmethod
    def _parse(text: str) -> Truth:
        def section(name: str) -> str:
            return text.split(f"{name}-begin\n", 1)[1].split(f"\n{name}-end\n", 1)[0]

        t = Truth(profile=section("profile"), traceback=section("traceback"))
        for line in section("truth").splitlines():
            r = json.loads(line)
            t.labels[r["id"]] = {base64.b64decode(k): base64.b64decode(v) for k, v in r["labels"]}
            t.cases[r["id"]] = r["case"]
        assert text.rstrip().endswith(f"ready {len(t.labels)}")
        return t

    def gc(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"gc\n")
        self.proc.stdin.flush()
        self._until(b"gc-done")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


@contextlib.contextmanager
def attached(pid: int) -> Iterator[tuple[RuntimeReader, LabelReader]]:
    proc = Process.open(pid)
    binary = GoBinary(proc.exe_path)
    try:
        rt = RuntimeReader(proc, binary)
        yield rt, LabelReader.for_runtime(rt)
    finally:
        proc.close()
        binary.close()


@contextlib.contextmanager
def running(spec: gt.BuildSpec, *args: str) -> Iterator[tuple[LabelsFixture, RuntimeReader, LabelReader]]:
    fx = LabelsFixture(gt.build(FIXTURES / "labels", spec), *args)
    try:
        with attached(fx.pid) as (rt, lr):
            yield fx, rt, lr
    finally:
        fx.close()


def read_all(rt: RuntimeReader, lr: LabelReader) -> dict[int, Labels]:
    gs, bad = rt.goroutines()
    assert bad == 0
    return lr.of(gs)


def check_labels_equal_the_truth(spec: gt.BuildSpec) -> None:
    with running(spec) as (fx, rt, lr):
        ours = read_all(rt, lr)
        truth = fx.truth
        assert not lr.errors and not lr.last_failed, (lr.errors, lr.last_failed)
        assert set(truth.labels) <= set(ours), f"goroutines not found: {set(truth.labels) - set(ours)}"
        wrong = {g: (truth.cases[g], ours[g].raw(), want) for g, want in truth.labels.items() if ours[g].raw() != want}
        assert not wrong, f"{len(wrong)} goroutines differ, e.g. {next(iter(wrong.values()))}"
        assert sum(1 for v in truth.labels.values() if v) >= 70
        stray = {g: lab for g, lab in ours.items() if g not in truth.labels and lab}
        assert not stray, f"goroutines the fixture did not label carry labels: {stray}"
        # The runtime's own view of g.labels: its goroutine profile, and (1.26+) its dump.
        minor = int(spec.go.split(".")[1])
        # Before 1.22 the profile records no labels for the goroutine that takes it (1.21's
        # mprof.go:926-933 saves its stack only; 1.22 added `labels[0] = ourg.labels`).
        writer = {g for g, case in truth.cases.items() if case == "main"} if minor <= 21 else set()
        ours_sets = Counter(frozenset(lab.raw().items()) for g, lab in ours.items() if lab and g not in writer)
        assert ours_sets == profile_label_sets(truth.profile)
        if minor >= 26:
            printed = traceback_labels(truth.traceback, minor)
            want = {g: lab.raw() for g, lab in ours.items() if lab}
            if minor == 26:  # 1.26's printquoted prints a byte that is not UTF-8 as U+FFFD
                want = {g: {_lossy(k): _lossy(v) for k, v in lab.items()} for g, lab in want.items()}
            assert printed == want
        if lr.store is LabelStore.MAP:
            # Five of the grown-N maps are half-evacuated by construction (see main.go).
            assert lr.stats.mid_growth >= 5


def _lossy(b: bytes) -> bytes:
    return b.decode("utf-8", "replace").encode()


FAST = [gt.BuildSpec(), gt.BuildSpec(cgo=True, stripped=True, pie=True), gt.BuildSpec(go="1.23", stripped=True)]


@pytest.mark.parametrize("spec", FAST, ids=[s.tag for s in FAST])
def test_labels_of_every_goroutine_equal_the_programs_and_the_runtimes(spec):
    check_labels_equal_the_truth(spec)


MATRIX = [s for v in gt.MATRIX for s in gt.matrix_specs(v)]


@pytest.mark.matrix
@pytest.mark.parametrize("spec", MATRIX, ids=[s.tag for s in MATRIX])
def test_matrix_labels_equal_the_programs_and_the_runtimes(spec):
    check_labels_equal_the_truth(spec)


@pytest.mark.parametrize("go", ["1.27", "1.23", "1.19"])
def test_cached_label_sets_are_reused_and_stay_true_across_a_gc_cycle(go):
    with running(gt.BuildSpec(go=go)) as (fx, rt, lr):
        gs, _ = rt.goroutines()
        first = lr.of(gs)
        distinct = lr.stats.decoded
        assert distinct >= 20 and lr.stats.cache_hits == 0
        batches = lr.stats.batches
        assert lr.of(gs) == first
        if go == "1.19":  # no count of GC stop-the-worlds: every map header is read again
            assert lr.stats.revalidated == distinct and lr.stats.batches == batches + 2
        else:  # nothing read but the runtime's count of GC stop-the-worlds
            assert lr.stats.cache_hits == distinct and lr.stats.batches == batches + 1
        fx.gc()
        decoded = lr.stats.decoded
        third = lr.of(gs)
        assert {g: third[g].raw() for g in fx.truth.labels} == fx.truth.labels
        if lr.store is LabelStore.LIST:  # the GC may have freed and reused: decode again
            assert lr.stats.decoded == decoded + distinct
        else:  # an unchanged map header (random hash0 included) is the same map
            assert lr.stats.decoded == decoded


@pytest.mark.parametrize("go", ["1.27", "1.23"])
def test_pointers_to_other_objects_of_a_live_process_never_raise(go):
    """g.labels as a torn read might give it: the address of a g, of a stack, of code."""
    with running(gt.BuildSpec(go=go)) as (fx, rt, lr):
        gs, _ = rt.goroutines()
        wild = {a + d for g in gs for a in (g.addr, g.stack_lo, g.sched_sp, g.start_pc) for d in (0, 8, 3)}
        got = lr.read(wild)
        assert set(got) == wild
        assert sum(lr.errors.values()) == len(lr.last_failed) >= 1
        assert all(got[p] == EMPTY for p in lr.last_failed)
        ours = read_all(rt, lr)  # and the reader is still right afterwards
        assert {g: ours[g].raw() for g in fx.truth.labels} == fx.truth.labels


# --------------------------------------------------------------------------- hand-built stores


class FakeMemory:
    """A target's memory made of regions laid out by the test; counts read_many calls."""

    def __init__(self) -> None:
        self.regions: dict[int, bytearray] = {}
        self.calls = 0
        self._next = 0x10000

    def alloc(self, data: bytes, align: int = 16) -> int:
        """Place `data` at the next free address aligned to `align`, with a gap after it."""
        addr = (self._next + align - 1) // align * align
        self.regions[addr] = bytearray(data)
        self._next = addr + len(data) + 64 + 1
        return addr

    def region(self, addr: int) -> bytearray:
        return self.regions[addr]

    def read_many(self, requests):
        self.calls += 1
        out = []
        for a, n in requests:
            for base, buf in self.regions.items():
                if base <= a and a + n <= base + len(buf):
                    out.append(bytes(buf[a - base:a - base + n]))
                    break
            else:
                out.append(None)
        return out


LIST_LAYOUT = layout_from_table("1.27")
MAP_LAYOUT = layout_from_table("1.23")


def put_string(mem: FakeMemory, s: bytes) -> tuple[int, int]:
    return (mem.alloc(s, align=1) if s else 0), len(s)


def build_list(mem: FakeMemory, pairs: list[tuple[bytes, bytes]], *, cap: int | None = None) -> int:
    """A Go 1.24+ labelMap holding `pairs` in this order; returns its address (g.labels)."""
    elems = b"".join(struct.pack("<QQQQ", *put_string(mem, k), *put_string(mem, v)) for k, v in pairs)
    arr = mem.alloc(elems) if elems else 0
    return mem.alloc(struct.pack("<QQQ", arr, len(pairs), len(pairs) if cap is None else cap))


# tophash marks and flags of Go <= 1.23's map (runtime/map.go)
EMPTY_REST, EMPTY_ONE, EVAC_X, EVAC_Y, EVAC_EMPTY, TOP = 0, 1, 2, 3, 4, 0x80
SAME_SIZE_GROW, HASH_WRITING = 8, 4
BUCKET = 272  # bucket<string,string>: tophash[8], keys[8], values[8], overflow


def build_chain(mem: FakeMemory, cells: list[tuple[bytes, bytes]], *, tophash: int = TOP,
                marks: list[int] | None = None) -> bytes:
    """A bucket holding `cells` (more than 8 spill into overflow buckets allocated here);
    returns the head bucket's bytes, for placing in a bucket array."""
    head, rest = cells[:8], cells[8:]
    b = bytearray(BUCKET)
    for i, (k, v) in enumerate(head):
        b[i] = tophash if marks is None else marks[i]
        struct.pack_into("<QQ", b, 8 + 16 * i, *put_string(mem, k))
        struct.pack_into("<QQ", b, 136 + 16 * i, *put_string(mem, v))
    if marks is not None and not head:
        b[:8] = bytes(marks)
    if rest:
        struct.pack_into("<Q", b, 264, mem.alloc(build_chain(mem, rest, tophash=tophash)))
    return bytes(b)


def build_map(mem: FakeMemory, buckets: list[bytes], *, count: int, old: list[bytes] | None = None,
              flags: int = 0, nevacuate: int = 0, hash0: int = 0x1234) -> int:
    """A Go <= 1.23 labelMap variable -> hash<string,string> (claiming `count` entries) ->
    bucket arrays; returns the variable's address (g.labels)."""
    b = len(buckets).bit_length() - 1
    assert 1 << b == len(buckets)
    arr = mem.alloc(b"".join(buckets))
    old_arr = mem.alloc(b"".join(old)) if old else 0
    header = struct.pack("<QBBHIQQQQ", count, flags, b, 0, hash0, arr, old_arr, nevacuate, 0)
    return mem.alloc(struct.pack("<Q", mem.alloc(header)))


def reader(mem: FakeMemory, layout=LIST_LAYOUT, **kw) -> LabelReader:
    return LabelReader(mem, layout, **kw)


def raw(pairs: list[tuple[bytes, bytes]]) -> RawLabels:
    return dict(pairs)


PAIRS = [(b"", b"empty key"), (b"bin\xff\xfe", b"\x00\xffend"), (b"empty", b""), (b"k\xc3\xa9y", b"v\xe2\x82\xac")]


def test_list_store_decodes_every_byte_and_non_utf8_survives():
    mem = FakeMemory()
    p = build_list(mem, PAIRS)
    got = reader(mem).read([p, 0])
    assert got[0] is EMPTY
    assert got[p].raw() == raw(PAIRS)
    assert got[p]["k\u00e9y"] == "v\u20ac"
    assert got[p]["bin\udcff\udcfe"] == "\x00\udcffend"  # surrogateescape


def test_labels_is_an_immutable_hashable_mapping_ordered_by_key_bytes():
    a = Labels([("b", "2"), ("a", "1")])
    assert list(a) == ["a", "b"] and a == {"a": "1", "b": "2"} and a == Labels([("a", "1"), ("b", "2")])
    assert hash(a) == hash(Labels({"a": "1", "b": "2"}.items())) and len({a, Labels(a.items())}) == 1
    with pytest.raises(TypeError):
        a["c"] = "3"  # type: ignore[index]
    assert EMPTY == {} and not EMPTY


def one_error(mem: FakeMemory, p: int, **kw) -> LabelError:
    lr = reader(mem, **kw)
    got = lr.read([p])
    assert got[p] is EMPTY
    assert sum(lr.errors.values()) == 1 and list(lr.last_failed) == [p]
    return lr.last_failed[p]


def test_list_store_rejects_torn_and_absurd_slices():
    mem = FakeMemory()
    assert one_error(mem, build_list(mem, PAIRS[:2], cap=1)) is LabelError.BAD_LIST  # len > cap
    assert one_error(mem, build_list(mem, [(b"b", b"1"), (b"a", b"2")])) is LabelError.BAD_LIST  # unsorted
    assert one_error(mem, build_list(mem, [(b"a", b"1"), (b"a", b"2")])) is LabelError.BAD_LIST  # duplicate
    many = [(b"k%04d" % i, b"v") for i in range(20)]
    assert one_error(mem, build_list(mem, many), caps=LabelCaps(max_labels=19)) is LabelError.TOO_MANY
    assert one_error(mem, build_list(mem, [(b"k", b"x" * 100)]), caps=LabelCaps(max_string=99)) is LabelError.TOO_LONG
    big = [(b"a", b"x" * 60), (b"b", b"y" * 60)]
    assert one_error(mem, build_list(mem, big), caps=LabelCaps(max_total=100)) is LabelError.TOO_LONG
    assert one_error(mem, 0x7FFF_FFFF_F000) is LabelError.UNREADABLE  # nothing mapped there
    assert one_error(mem, 1 << 63) is LabelError.BAD_POINTER
    assert one_error(mem, 0x10003) is LabelError.BAD_POINTER  # misaligned
    huge = mem.alloc(struct.pack("<QQQ", 0x20000, 1 << 60, 1 << 60))
    assert one_error(mem, huge) is LabelError.TOO_MANY
    wild = mem.alloc(struct.pack("<QQQ", 0x20001, 1, 1))
    assert one_error(mem, wild) is LabelError.BAD_POINTER
    p = build_list(mem, [(b"k", b"gone")])
    arr = struct.unpack_from("<Q", mem.region(p))[0]
    struct.pack_into("<QQ", mem.region(arr), 16, 0x7FFF_0000_0000, 4)  # the value's bytes are unmapped
    assert one_error(mem, p) is LabelError.UNREADABLE
    struct.pack_into("<QQ", mem.region(arr), 16, 1 << 62, 4)
    assert one_error(mem, p) is LabelError.BAD_POINTER


def test_a_failed_set_costs_only_itself():
    mem = FakeMemory()
    good = build_list(mem, PAIRS)
    bad = build_list(mem, PAIRS[:2], cap=1)
    lr = reader(mem)
    got = lr.read([good, bad, 0])
    assert got[good].raw() == raw(PAIRS) and got[bad] is EMPTY and lr.last_failed == {bad: LabelError.BAD_LIST}


def cells(n: int, tag: bytes = b"k") -> list[tuple[bytes, bytes]]:
    return [(tag + b"%03d" % i, b"v%d" % i) for i in range(n)]


def test_map_store_reads_buckets_and_overflow_chains():
    mem = FakeMemory()
    a, b = cells(3, b"a"), cells(19, b"b")  # b: a bucket and two overflow buckets
    p = build_map(mem, [build_chain(mem, a), build_chain(mem, b)], count=22)
    lr = reader(mem, MAP_LAYOUT)
    assert lr.read([p])[p].raw() == raw(a + b)
    assert not lr.errors and lr.stats.mid_growth == 0


def test_map_store_reads_a_half_evacuated_map_like_the_runtimes_iterator():
    """Growing from 2 to 4 buckets: old bucket 0 evacuated into new 0 (X) and 2 (Y), old
    bucket 1 not yet: its keys are still only in the old array, new 1 and 3 are empty."""
    mem = FakeMemory()
    x, y, stay = cells(4, b"x"), cells(3, b"y"), cells(11, b"s")
    evacuated = build_chain(mem, [(b"stale", b"copy")] * 7, marks=[EVAC_X] * 4 + [EVAC_Y] * 3 + [EVAC_EMPTY])
    old = [evacuated, build_chain(mem, stay)]
    new = [build_chain(mem, x), build_chain(mem, []), build_chain(mem, y), build_chain(mem, [])]
    p = build_map(mem, new, old=old, nevacuate=1, count=18)
    lr = reader(mem, MAP_LAYOUT)
    assert lr.read([p])[p].raw() == raw(x + y + stay)
    assert lr.stats.mid_growth == 1 and not lr.errors


def test_map_store_reads_a_same_size_grow_in_progress():
    mem = FakeMemory()
    moved, stay = cells(5, b"m"), cells(6, b"s")
    old = [build_chain(mem, [], marks=[EVAC_X] * 5 + [EVAC_EMPTY] * 3), build_chain(mem, stay)]
    new = [build_chain(mem, moved), build_chain(mem, [])]
    p = build_map(mem, new, old=old, nevacuate=1, flags=SAME_SIZE_GROW, count=11)
    assert reader(mem, MAP_LAYOUT).read([p])[p].raw() == raw(moved + stay)


def test_map_store_empty_and_nil_maps_have_no_labels_and_no_error():
    mem = FakeMemory()
    lr = reader(mem, MAP_LAYOUT)
    nil_var = mem.alloc(struct.pack("<Q", 0))
    empty = build_map(mem, [build_chain(mem, [])], count=0)
    got = lr.read([nil_var, empty])
    assert got[nil_var] is EMPTY and got[empty] is EMPTY and not lr.errors


def map_error(mem: FakeMemory, p: int, **kw) -> LabelError:
    return one_error(mem, p, layout=MAP_LAYOUT, **kw)


def test_map_store_rejects_torn_and_absurd_maps():
    mem = FakeMemory()
    ok = [build_chain(mem, cells(3))]
    assert reader(mem, MAP_LAYOUT).read([p := build_map(mem, ok, count=3)])[p].raw() == raw(cells(3))
    assert map_error(mem, build_map(mem, ok, count=4)) is LabelError.BAD_MAP  # fewer entries than count
    assert map_error(mem, build_map(mem, ok, count=2)) is LabelError.BAD_MAP  # more entries than count
    assert map_error(mem, build_map(mem, ok, count=5000)) is LabelError.TOO_MANY
    assert map_error(mem, build_map(mem, ok, count=3, flags=HASH_WRITING)) is LabelError.BAD_MAP
    four = [build_chain(mem, cells(1, bytes([97 + i]))) for i in range(4)]
    assert map_error(mem, build_map(mem, four, count=3)) is LabelError.BAD_MAP  # more buckets than entries
    marked = build_chain(mem, cells(2), marks=[TOP, EVAC_X] + [0] * 6)
    assert map_error(mem, build_map(mem, [marked], count=2)) is LabelError.BAD_MAP  # evacuated mark in a live bucket
    dup = build_chain(mem, [(b"same", b"1"), (b"same", b"2")])
    assert map_error(mem, build_map(mem, [dup], count=2)) is LabelError.BAD_MAP
    unevacuated = [build_chain(mem, cells(2, b"o")), build_chain(mem, cells(2, b"p"))]
    new = [build_chain(mem, []) for _ in range(4)]
    assert map_error(mem, build_map(mem, new, old=unevacuated, nevacuate=1, count=4)) is LabelError.BAD_MAP
    assert map_error(mem, build_map(mem, new, old=unevacuated, nevacuate=2, count=4)) is LabelError.BAD_MAP
    wild_header = mem.alloc(struct.pack("<Q", 0x10000 + 4))
    assert map_error(mem, wild_header) is LabelError.BAD_POINTER
    p = build_map(mem, ok, count=3)
    h = struct.unpack("<Q", mem.region(p))[0]
    struct.pack_into("<Q", mem.region(h), 16, 0)  # buckets: nil, count 3
    assert map_error(mem, p) is LabelError.BAD_POINTER
    struct.pack_into("<Q", mem.region(h), 16, 0x7FFF_0000_0000)  # buckets: unmapped
    assert map_error(mem, p) is LabelError.UNREADABLE
    struct.pack_into("<QB", mem.region(h), 0, 3, 0)
    mem.region(h)[9] = 200  # B = 200
    assert map_error(mem, p) is LabelError.BAD_MAP


def test_overflow_chains_that_cycle_or_outgrow_the_map_end_quickly():
    mem = FakeMemory()
    head = bytearray(build_chain(mem, cells(8)))
    p = build_map(mem, [bytes(head)], count=9)
    h = struct.unpack("<Q", mem.region(p))[0]
    arr = struct.unpack_from("<Q", mem.region(h), 16)[0]
    struct.pack_into("<Q", mem.region(arr), 264, arr)  # the bucket is its own overflow
    assert map_error(mem, p) is LabelError.BAD_CHAIN
    # a two-bucket cycle: bucket -> overflow -> bucket
    ovf = mem.alloc(build_chain(mem, cells(1, b"z")))
    struct.pack_into("<Q", mem.region(arr), 264, ovf)
    struct.pack_into("<Q", mem.region(ovf), 264, arr)
    lr = reader(mem, MAP_LAYOUT)
    lr.read([p])
    assert lr.last_failed[p] in (LabelError.BAD_CHAIN, LabelError.BAD_MAP) and lr.stats.batches <= 6
    # a chain of 200 empty overflow buckets: stopped after as many as the map has entries
    nxt = 0
    for _ in range(200):
        b = bytearray(BUCKET)
        struct.pack_into("<Q", b, 264, nxt)
        nxt = mem.alloc(bytes(b))
    head = bytearray(build_chain(mem, cells(3)))
    struct.pack_into("<Q", head, 264, nxt)
    p = build_map(mem, [bytes(head)], count=5)
    lr = reader(mem, MAP_LAYOUT)
    lr.read([p])
    assert lr.last_failed == {p: LabelError.BAD_CHAIN} and lr.stats.batches <= 4 + 5 + 1


def _mutations():
    return st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(store=st.sampled_from(["map", "list"]), mutations=_mutations())
def test_corrupt_stores_never_raise_or_loop(store, mutations):
    mem = FakeMemory()
    if store == "list":
        p = build_list(mem, sorted(cells(12)))
        lr = reader(mem, caps=CAPS)
    else:
        old = [build_chain(mem, cells(9, b"o")), build_chain(mem, [], marks=[EVAC_Y] * 8)]
        new = [build_chain(mem, []), build_chain(mem, cells(4, b"n")), build_chain(mem, []), build_chain(mem, [])]
        p = build_map(mem, new, old=old, nevacuate=0, count=13)
        lr = reader(mem, MAP_LAYOUT, caps=CAPS)
    space = [(a, i) for a, buf in mem.regions.items() for i in range(len(buf))]
    for where, value in mutations:
        a, i = space[where % len(space)]
        mem.regions[a][i] = value
    got = lr.read([p])[p]
    assert isinstance(got, Labels) and sum(lr.errors.values()) == len(lr.last_failed) <= 1
    if p in lr.last_failed:
        assert got is EMPTY
    # two header rounds, the bucket arrays, at most one round per overflow bucket, strings
    assert lr.stats.batches <= 2 + 1 + CAPS.max_labels + 1


CAPS = LabelCaps(max_labels=64)


# --------------------------------------------------------------------------- the cache


class Epoch:
    """A fake sched.stwTotalTimeGC in the fake memory: bump() is a GC cycle."""

    def __init__(self, mem: FakeMemory, layout) -> None:
        f = layout.field("schedt", "stwTotalTimeGC")
        self.sched = mem.alloc(bytes(f.offset + f.size))
        self.buf, self.off = mem.region(self.sched), f.offset

    def bump(self) -> None:
        struct.pack_into("<Q", self.buf, self.off + 8, struct.unpack_from("<Q", self.buf, self.off + 8)[0] + 2)


def test_cache_reads_nothing_but_the_gc_count_while_it_stands_still():
    mem = FakeMemory()
    epoch = Epoch(mem, LIST_LAYOUT)
    ps = [build_list(mem, [(b"req", b"%d" % i)]) for i in range(50)]
    lr = reader(mem, sched_addr=epoch.sched)
    first = lr.read(ps)
    calls = mem.calls
    assert lr.read(ps) == first and mem.calls == calls + 1 and lr.stats.cache_hits == 50


def test_list_sets_are_decoded_again_after_a_gc_cycle_since_memory_may_be_reused():
    mem = FakeMemory()
    epoch = Epoch(mem, LIST_LAYOUT)
    p = build_list(mem, [(b"req", b"1")])
    lr = reader(mem, sched_addr=epoch.sched)
    assert lr.read([p])[p] == {"req": "1"}
    arr = struct.unpack_from("<Q", mem.region(p))[0]
    s = struct.unpack_from("<Q", mem.region(arr), 16)[0]
    mem.region(s)[0:1] = b"2"  # freed and reused for another label set, same shape
    assert lr.read([p])[p] == {"req": "1"}  # no GC cycle: it cannot have been reused
    epoch.bump()
    assert lr.read([p])[p] == {"req": "2"}


def test_list_sets_are_never_cached_without_a_gc_count():
    mem = FakeMemory()
    p = build_list(mem, [(b"req", b"1")])
    lr = reader(mem)
    lr.read([p])
    arr = struct.unpack_from("<Q", mem.region(p))[0]
    mem.region(struct.unpack_from("<Q", mem.region(arr), 16)[0])[0:1] = b"9"
    assert lr.read([p])[p] == {"req": "9"} and lr.stats.cache_hits == 0


def test_map_sets_are_kept_after_a_gc_cycle_only_if_their_header_is_unchanged():
    mem = FakeMemory()
    epoch = Epoch(mem, MAP_LAYOUT)
    p = build_map(mem, [build_chain(mem, [(b"req", b"1")])], count=1)
    lr = reader(mem, MAP_LAYOUT, sched_addr=epoch.sched)
    assert lr.read([p])[p] == {"req": "1"}
    epoch.bump()
    assert lr.read([p])[p] == {"req": "1"} and lr.stats.revalidated == 1 and lr.stats.decoded == 1
    h = struct.unpack("<Q", mem.region(p))[0]
    arr = struct.unpack_from("<Q", mem.region(h), 16)[0]
    v = struct.unpack_from("<Q", mem.region(arr), 136)[0]
    mem.region(v)[0:1] = b"2"
    struct.pack_into("<I", mem.region(h), 12, 0xBEEF)  # a new map in the same place: a new hash0
    epoch.bump()
    assert lr.read([p])[p] == {"req": "2"} and lr.stats.decoded == 2


def test_cache_is_bounded_by_entries_and_bytes_least_recently_used_first():
    mem = FakeMemory()
    epoch = Epoch(mem, LIST_LAYOUT)
    ps = [build_list(mem, [(b"k", b"%d" % i)]) for i in range(3)]
    lr = reader(mem, sched_addr=epoch.sched, cache_entries=2)
    lr.read(ps[:2])
    lr.read(ps[1:2])  # ps[1] used more recently than ps[0]
    lr.read(ps[2:])  # evicts ps[0]
    decoded = lr.stats.decoded
    lr.read(ps[1:])
    assert lr.stats.decoded == decoded
    lr.read(ps[:1])
    assert lr.stats.decoded == decoded + 1
    big = [build_list(mem, [(b"k", bytes([97 + i]) * 1000)]) for i in range(3)]
    lr = reader(mem, sched_addr=epoch.sched, cache_bytes=2500)
    lr.read(big)
    decoded = lr.stats.decoded
    lr.read(big)
    assert lr.stats.decoded == decoded + 1  # two of the three fit


def test_reads_are_split_so_that_no_call_asks_for_more_than_16_mib():
    mem = FakeMemory()
    sizes: list[int] = []
    read_many = mem.read_many

    def spy(requests):
        sizes.append(sum(n for _, n in requests))
        return read_many(requests)

    mem.read_many = spy  # type: ignore[method-assign]
    ps = [build_list(mem, [(b"k", bytes([65 + i % 26]) * (3 << 20))]) for i in range(12)]
    got = reader(mem, caps=LabelCaps(max_string=4 << 20)).read(ps)
    assert all(len(got[p]["k"]) == 3 << 20 for p in ps)
    assert max(sizes) <= 16 << 20 and len(sizes) >= 3


# --------------------------------------------------------------------------- goflame dump


def test_dump_shows_every_goroutines_labels_as_the_runtimes_own_traceback_does():
    """`goflame dump --labels` puts each goroutine's labels in its header exactly as Go 1.27's
    own traceback does (GODEBUG=tracebacklabels=1: the fixture prints runtime.Stack(all));
    `--json` gives them as an object ({} for none), equal to what the program set."""
    with running(gt.BuildSpec()) as (fx, _rt, _lr):
        r = subprocess.run([sys.executable, "-m", "goflame.cli", "dump", "--labels", "--pid", str(fx.pid)],
                           capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr
        theirs = {int(m.group(1)): m.group(2) for m in
                  re.finditer(rb"^goroutine (\d+) \[[^\]]*\]( \{.*\})?:$", fx.truth.traceback.encode(), re.M)}
        ours = {int(m.group(1)): m.group(2) for m in
                re.finditer(rb"^goroutine (\d+) \[[^\]]*\]( \{.*\})?:$", r.stdout, re.M)}
        labelled = {g for g, text in theirs.items() if text}
        assert len(labelled) >= 70
        assert {g: ours.get(g) for g in labelled} == {g: theirs[g] for g in labelled}
        j = subprocess.run([sys.executable, "-m", "goflame.cli", "dump", "--json", "--pid", str(fx.pid)],
                           capture_output=True, timeout=120)
        assert j.returncode == 0, j.stderr
        doc = json.loads(j.stdout.decode("utf-8", "surrogateescape"))
        got = {g["goid"]: {k.encode("utf-8", "surrogateescape"): v.encode("utf-8", "surrogateescape")
                           for k, v in g["labels"].items()} for g in doc["goroutines"]}
        want = {g: lab for g, lab in fx.truth.labels.items() if g in got}
        assert len(want) >= 70 and {g: got[g] for g in want} == want
        assert doc["label_errors"] == 0


def test_summary_groups_goroutines_by_a_label_as_the_program_set_them():
    """`summary --by-label a` counts goroutines per value of label "a", equal to the counts
    from the program's own report of each goroutine's labels."""
    with running(gt.BuildSpec()) as (fx, _rt, _lr):
        r = subprocess.run([sys.executable, "-m", "goflame.cli", "summary", "--json", "--by-label", "a", "--top",
                            "1000", "--pid", str(fx.pid)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        got = {g["label"]: g["count"] for g in doc["groups"] if g["label"].startswith("a=")}
        want = Counter(f"a={lab[b'a'].decode()}" for lab in fx.truth.labels.values() if b"a" in lab)
        assert want and got == dict(want)


# --------------------------------------------------------------------------- CPU by label


def pprof_tag_shares(go_minor: str, profile: Path, key: str) -> dict[str, float]:
    """`go tool pprof -tags`: the share of each value of label `key` (Go's reader, not ours)."""
    out = gt.go_tool(go_minor, "tool", "pprof", "-tags", str(profile))
    block = out.split(f"{key}:", 1)[1].split("\n\n", 1)[0]
    got = {m.group(2): float(m.group(1)) for m in re.finditer(r"\(\s*([\d.]+)%\):\s*(\S+)", block)}
    assert got, out
    return got


@pytest.mark.parametrize("engine", ["perf", pytest.param("ptrace", marks=pytest.mark.matrix)])
def test_cpu_by_label_in_goflames_pprof_equals_the_workers_own_clocks_and_the_runtimes_profile(engine, tmp_path):
    """Two labelled workers burn CPU 2:1 (by work, in lockstep rounds), each clocking its own
    thread: the split of their samples that `go tool pprof -tags` reads from goflame's pprof
    is theirs within 2 points (or the binomial bound of the samples taken, if wider), and within
    the binomial noise of the runtime's own labelled CPU profile."""
    theirs = tmp_path / "runtime.pb.gz"
    ours = tmp_path / "goflame.pb.gz"
    # ptrace at 100 Hz: beyond the ticks it can keep on a loaded machine (missed, and counted),
    # a thread that sleeps between bursts loses owed samples that one running on takes later.
    rate, samples = (1000, 10000) if engine == "perf" else (100, 3000)
    r, lines = record_then_ask([str(gt.build(FIXTURES / "labelcpu")), "-cpuprofile", str(theirs)],
                               ["--engine", engine, "-r", str(rate), "--samples", str(samples), "-d", "60",
                                "--keep-raw", "-o", str(ours)], 3, timeout=120)
    assert r.returncode == 0, r.stderr
    assert lines[2] == "done", lines
    clock = {m.group(1): int(m.group(2)) for m in (re.match(r"cpu worker=(\w) (\d+)", x) for x in lines[:2]) if m}
    own = {k: 100 * v / sum(clock.values()) for k, v in clock.items()}
    got = workers_only(pprof_tag_shares("1.27", ours, "worker"))
    assert int(re.search(r"([\d,]+) samples", r.stderr).group(1).replace(",", "")) >= samples, r.stderr
    # A ptrace sample may stand for several intervals (its weight) but is one moment: the
    # binomial bound is on the independent moments they are worth, (sum of w)^2 / sum of w^2.
    weights = [s.weight for s in read_recording(str(ours) + ".goflame").samples]
    n = round(sum(weights) ** 2 / sum(w * w for w in weights))
    for w in ("a", "b"):
        assert abs(got[w] - own[w]) <= share_tolerance(own[w], n, floor=2.0), (got, own, n)
    runtime_view = workers_only(pprof_tag_shares("1.27", theirs, "worker"))
    n_runtime = int(sum(clock.values()) / 1e7)  # the runtime's profiler: a sample per 10 ms of CPU
    for w in ("a", "b"):
        assert abs(got[w] - runtime_view[w]) <= share_tolerance(own[w], n, max(n_runtime, 1), floor=2.0), (
            got, runtime_view, n_runtime)


def workers_only(shares: dict[str, float]) -> dict[str, float]:
    """Shares of the two workers among their own samples (the runtime's few, unlabelled, left out)."""
    both = shares["a"] + shares["b"]
    return {w: 100 * shares[w] / both for w in ("a", "b")}
