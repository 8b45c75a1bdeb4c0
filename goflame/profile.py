"""The in-memory profile and the on-disk recording format (`.goflame`).

A recording keeps every sample with its time, goroutine, thread and state, so any view
(flame graph, per-thread speedscope, time order) can be made later from one file. It is
written as it is taken, in self-checking chunks flushed at least every `flush_interval`
seconds, so a profiler that is killed loses at most its last unflushed chunk; the reader keeps
everything before a torn tail. The byte layout is documented in docs/recording-format.md.
"""

from __future__ import annotations

import json
import math
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from typing import IO, Any, BinaryIO

from goflame import __version__
from goflame.binary.varint import append_uvarints
from goflame.errors import BadInput, OutputError
from goflame.frame import Frame, FrameKind
from goflame.inputs import (
    DEFAULT_LIMITS,
    MAX_DEPTH,
    Limits,
    deep_marker,
    read_input,  # noqa: F401 - it lived here before goflame.inputs; still importable
    source_bytes,
)

MAGIC = b"\x89goflame\r\n\x1a\n"
FORMAT_VERSION = 2  # 2: label sets and labelled samples (records 5 and 6); 1 still reads

# Chunk tags and the record types inside a sample chunk (docs/recording-format.md).
TAG_SAMPLES = 0x53  # "S"
TAG_END = 0x45  # "E"
REC_STRING = 1
REC_FRAME = 2
REC_STACK = 3
REC_SAMPLE = 4
REC_LABELS = 5
REC_LABELLED_SAMPLE = 6

# FrameKind <-> the byte stored in a frame record; codes are part of the format, never renumber.
KIND_CODES: dict[FrameKind, int] = {
    FrameKind.GO: 0,
    FrameKind.NATIVE: 1,
    FrameKind.STATE: 2,
    FrameKind.THREAD: 3,
    FrameKind.GOROUTINE: 4,
    FrameKind.UNKNOWN: 5,
    FrameKind.LABEL: 6,
}
KINDS_BY_CODE: dict[int, FrameKind] = {v: k for k, v in KIND_CODES.items()}

_HEAD = struct.Struct("<HI")  # format version, meta length
_CHUNK = struct.Struct("<BII")  # tag, payload length, crc32
_U32 = struct.Struct("<I")

RUNNING = "running"
MODES = ("cpu", "wall")


# Not frozen (but hashable): a frozen dataclass's __init__ costs ~4x, and a pprof read or a
# long recording makes millions of these. Treat it as immutable all the same.
@dataclass(slots=True, unsafe_hash=True)
class Sample:
    """One observation of one goroutine (or of a thread with no goroutine).

    `timestamp_ns` counts from the start of the recording (a monotonic clock), so samples
    stay ordered across wall-clock jumps; `RecordingMeta.start_time` anchors it to the epoch.
    `frames` is innermost first, like a Go traceback.
    """

    timestamp_ns: int
    goroutine: int  # goid; 0 when the thread ran no goroutine (g0, native code)
    thread: int  # kernel tid; 0 when the goroutine was on no thread (parked)
    state: str  # "running", "runnable", "chan receive", "IO wait", "syscall", ...
    frames: tuple[Frame, ...]
    weight: int = 1
    # The goroutine's pprof labels when it was sampled, sorted by key ((): none, or unknown).
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class RecordingMeta:
    """What a recording is of and how it was taken; shown in titles, kept in the file header."""

    goflame_version: str = __version__
    pid: int = 0
    binary: str = ""
    go_version: str = ""
    mode: str = "cpu"  # "cpu": on-CPU goroutines only; "wall": every goroutine, idle ones too
    rate_hz: float = 0.0
    start_time: float = 0.0  # seconds since the epoch
    duration: float = 0.0  # seconds
    command: tuple[str, ...] = ()
    samples: int = 0  # samples taken
    errors: int = 0  # samples dropped (torn reads, vanished threads, ...)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["command"] = list(self.command)
        d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RecordingMeta:
        """Build from a header; keys a newer goflame added land in `extra` instead of failing."""
        known = {f.name for f in fields(cls)}
        try:
            extra = dict(d.get("extra") or {})
            extra.update({k: v for k, v in d.items() if k not in known})
            return cls(
                goflame_version=str(d.get("goflame_version", "")),
                pid=int(d.get("pid", 0)),
                binary=str(d.get("binary", "")),
                go_version=str(d.get("go_version", "")),
                mode=str(d.get("mode", "cpu")),
                rate_hz=finite(d.get("rate_hz", 0.0)),
                start_time=finite(d.get("start_time", 0.0)),
                duration=finite(d.get("duration", 0.0)),
                command=tuple(str(a) for a in d.get("command", ())),
                samples=int(d.get("samples", 0)),
                errors=int(d.get("errors", 0)),
                extra=extra,
            )
        except (TypeError, ValueError, OverflowError) as e:
            raise BadInput(f"recording header has a malformed field: {e}") from None


def finite(v: Any) -> float:
    """A float field of a header or end record: NaN or an infinity there is corruption."""
    x = float(v)
    if not math.isfinite(x):
        raise ValueError(f"{v!r} is not a finite number")
    return x


@dataclass(frozen=True, slots=True)
class Stacks:
    """Stacks aggregated for a writer: distinct frames plus root-first index tuples -> weight.

    Indices instead of Frame tuples keep aggregation cheap (a Frame hashes in Python code).
    """

    frames: tuple[Frame, ...]
    counts: dict[tuple[int, ...], int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def by_frames(self) -> dict[tuple[Frame, ...], int]:
        fr = self.frames
        return {tuple(fr[i] for i in k): c for k, c in self.counts.items()}

    def cut_deep(self, max_depth: int) -> Stacks:
        """These stacks with each one deeper than `max_depth` cut to it: its innermost frames
        and the depth marker at the root (goflame.inputs.cut_deep, for root-first keys)."""
        if max(map(len, self.counts), default=0) <= max_depth:
            return self
        frames = list(self.frames)
        marker = deep_marker(max_depth)
        m = frames.index(marker) if marker in frames else len(frames)
        if m == len(frames):
            frames.append(marker)
        keep = max_depth - 1
        counts: dict[tuple[int, ...], int] = {}
        for k, c in self.counts.items():
            if len(k) > max_depth:
                k = (m, *k[len(k) - keep :])
            counts[k] = counts.get(k, 0) + c
        return Stacks(tuple(frames), counts)


class FrameTable:
    """Distinct frames of an aggregation, each once, by index; `lines` keeps their lines."""

    __slots__ = ("frames", "_index", "_lines")

    def __init__(self, lines: bool) -> None:
        self.frames: list[Frame] = []
        self._index: dict[Frame, int] = {}
        self._lines = lines

    def intern(self, f: Frame) -> int:
        nf = Frame(f.function, f.file, f.line if self._lines else 0, f.inlined, f.kind)
        i = self._index.get(nf)
        if i is None:
            i = self._index[nf] = len(self.frames)
            self.frames.append(nf)
        return i


class LazySamples(Sequence[Sample]):
    """Samples a reader kept as a weight per distinct stack, made into `Sample` objects only
    when a view needs per-sample details (threads, goroutines, states, time order).

    A 50 MB pprof file holds ~2 million samples: making a Python object for each costs several
    times the whole parse, and a flame graph or a diff only needs each stack's weight, which
    the reader sums in one pass over the raw columns (`stacks`).
    """

    __slots__ = ("_n", "_all", "_materialize", "_stacks", "has_states", "total_weight")

    def __init__(self, n: int, total_weight: int, stacks: Callable[[bool], Stacks],
                 materialize: Callable[[], Iterable[Sample]], *, has_states: bool) -> None:
        self._n = n
        self.total_weight = total_weight
        self._stacks = stacks
        self._materialize: Callable[[], Iterable[Sample]] | None = materialize
        self._all: tuple[Sample, ...] | None = None
        self.has_states = has_states  # may a sample carry a goroutine state (a label)?

    def stacks(self, lines: bool) -> Stacks:
        """Weights per root-first stack of interned frames (`Profile.aggregate` without options)."""
        return self._stacks(lines)

    def _samples(self) -> tuple[Sample, ...]:
        if self._all is None:
            assert self._materialize is not None
            self._all = tuple(self._materialize())
            self._materialize = None
        return self._all

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):  # type: ignore[override]  # int or slice, as a tuple
        return self._samples()[i]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self._samples())


class Tail(Enum):
    """How a recording that was cut short ends (docs/recording-format.md, "Reading rules")."""

    NO_END_RECORD = "no end record"
    TORN_CHUNK_HEADER = "a chunk header cut short"
    TORN_CHUNK = "the last chunk runs past the end of the file"
    BAD_LAST_CHECKSUM = "the last chunk fails its checksum"
    ZERO_TAIL = "zero bytes where the next chunk should be"


@dataclass(frozen=True, slots=True)
class CutShort:
    """Where a recording that was cut short (a killed profiler, a full disk, a copy made while
    it was written) ends, and what was kept of it: the reader keeps everything before the
    cut, and the user must be told that this is not the whole recording."""

    at: int  # bytes read: everything before this offset was kept
    size: int  # bytes in the file
    tail: Tail
    samples: int  # sample records kept
    seconds: float  # time they cover (the last sample's timestamp)

    def describe(self, name: str) -> str:
        kept = f"kept {self.samples:,} samples ({self.seconds:.1f} s)"
        if self.tail is Tail.NO_END_RECORD:
            return (f"{name}: recording cut short: it ends at byte {self.at:,} without its end record "
                    f"(the profiler was stopped abruptly); {kept}")
        return f"{name}: recording cut short at byte {self.at:,} of {self.size:,} ({self.tail.value}); {kept}"


@dataclass(frozen=True, slots=True)
class DepthCut:
    """Stacks a reader cut to `depth` frames (see goflame.inputs.cut_deep)."""

    stacks: int  # distinct stacks that were deeper
    depth: int

    def describe(self, name: str) -> str:
        s = "stack" if self.stacks == 1 else "stacks"
        return (f"{name}: {self.stacks:,} {s} deeper than {self.depth:,} frames "
                f"{'was' if self.stacks == 1 else 'were'} cut to {self.depth:,} (innermost frames kept)")


@dataclass(frozen=True, slots=True)
class Profile:
    """A recording in memory: its meta and its samples.

    `detailed` is False when the samples came from an aggregated source (a folded file): they
    then carry a weight but no real time, thread, goroutine or state. `complete` is False when
    a recording had no end record (the profiler was killed) or a torn tail was dropped;
    `cut_short` then says where it ends. `depth_cut` says how many stacks a reader cut to the
    depth limit.
    """

    meta: RecordingMeta
    samples: Sequence[Sample]  # a tuple, or LazySamples from a big pprof
    detailed: bool = True
    complete: bool = True
    cut_short: CutShort | None = None
    depth_cut: DepthCut | None = None

    @property
    def total_weight(self) -> int:
        if isinstance(self.samples, LazySamples):
            return self.samples.total_weight
        return sum(s.weight for s in self.samples)

    def states_by_default(self) -> bool:
        return self.meta.mode == "wall"

    def aggregate(
        self,
        *,
        lines: bool = False,
        threads: bool = False,
        goroutines: bool = False,
        states: bool | None = None,
    ) -> Stacks:
        """Merge samples into stacks (root first).

        lines: keep each frame's line (labels become `func (file:line)`); otherwise frames of
        one function merge. threads / goroutines: add a synthetic root per thread / goroutine
        (thread outermost when both). states: add the goroutine's state as a synthetic leaf for
        every sample not running on a CPU; default on in wall mode, where idle goroutines are
        sampled too.
        """
        if (threads or goroutines) and not self.detailed:
            what = "--threads" if threads else "--goroutines"
            raise BadInput(f"{what} needs a .goflame recording: this profile has no thread or goroutine ids")
        if states is None:
            states = self.states_by_default()
        lazy = self.samples
        if isinstance(lazy, LazySamples) and not (threads or goroutines or (states and lazy.has_states)):
            return lazy.stacks(lines)
        table = FrameTable(lines)
        intern = table.intern
        by_id: dict[int, int] = {}  # id(frame) -> index; valid while self.samples holds the frames
        synthetic: dict[tuple[FrameKind, str], int] = {}

        def intern_sample_frame(f: Frame) -> int:
            i = by_id[id(f)] = intern(f)
            return i

        def synth(kind: FrameKind, name: str) -> int:
            i = synthetic.get((kind, name))
            if i is None:
                i = synthetic[(kind, name)] = intern(Frame(name, kind=kind))
            return i

        counts: dict[tuple[int, ...], int] = {}
        get = counts.get
        lookup = by_id.__getitem__
        # A recording shares one frames tuple between all samples of a stack: translate each once.
        by_tuple: dict[int, tuple[int, ...]] = {}
        for s in self.samples:
            fr = s.frames
            k = by_tuple.get(id(fr))
            if k is None:
                try:
                    k = tuple(map(lookup, map(id, reversed(fr))))  # all in C: the hot loop
                except KeyError:
                    k = tuple([by_id[id(f)] if id(f) in by_id else intern_sample_frame(f) for f in reversed(fr)])
                by_tuple[id(fr)] = k
            if states and s.state and s.state != RUNNING and not (fr and fr[0].kind is FrameKind.STATE):
                k = (*k, synth(FrameKind.STATE, f"[{s.state}]"))
            if goroutines:
                g = f"goroutine {s.goroutine}" if s.goroutine else "no goroutine"
                k = (synth(FrameKind.GOROUTINE, g), *k)
            if threads:
                t = f"thread {s.thread}" if s.thread else "no thread"
                k = (synth(FrameKind.THREAD, t), *k)
            counts[k] = get(k, 0) + s.weight
        return Stacks(tuple(table.frames), counts)

    def stacks(self, **opts: Any) -> dict[tuple[Frame, ...], int]:
        """Aggregated stacks as root-first Frame tuples (see `aggregate` for the options)."""
        return self.aggregate(**opts).by_frames()

    def tagged(self, tags: Sequence[tuple[str, str]]) -> Profile:
        """Only the samples whose goroutine carried every label `key=value` in `tags`
        (`report --tag`, `diff --tag`); a profile without labels keeps no sample."""
        if not tags:
            return self
        want = set(tags)
        kept = tuple(s for s in self.samples if want <= set(s.labels))
        return replace(self, samples=kept)

    def rooted_by_label(self, key: str) -> Profile:
        """Each sample under a synthetic outermost frame `key=value` of its goroutine's label
        (`key=` with no value when it had none): one tower per tenant, per route, per job."""
        roots: dict[str, Frame] = {}

        def root(s: Sample) -> Frame:
            value = next((v for k, v in s.labels if k == key), None)
            name = f"{key}={value}" if value is not None else f"{key}=(none)"
            f = roots.get(name)
            if f is None:
                f = roots[name] = Frame(name, kind=FrameKind.LABEL)
            return f

        stacks: dict[tuple[int, str], tuple[Frame, ...]] = {}  # frames tuples stay shared
        out = []
        for s in self.samples:
            r = root(s)
            k = (id(s.frames), r.function)
            fr = stacks.get(k)
            if fr is None:
                fr = stacks[k] = (*s.frames, r)
            out.append(replace(s, frames=fr))
        return replace(self, samples=tuple(out))

    def reading_notes(self, name: str) -> list[str]:
        """What a user must be told about how this profile was read (one line each): a recording
        cut short, stacks cut to the depth limit. Empty for a profile read whole."""
        return [n.describe(name) for n in (self.cut_short, self.depth_cut) if n is not None]


# ---------------------------------------------------------------------------------------------
# varints (LEB128), shared by writer and reader


def _uvarint(buf: bytearray, v: int) -> None:
    append_uvarints(buf, v)


def _svarint(buf: bytearray, v: int) -> None:
    _uvarint(buf, (v << 1) if v >= 0 else ((-v) << 1) - 1)


class _Corrupt(Exception):
    """A structure inside a checksummed chunk is inconsistent; becomes BadInput at the top."""


def _encode_str(s: str) -> bytes:
    # surrogateescape round-trips names that came from non-UTF-8 bytes in a binary.
    return s.encode("utf-8", "surrogateescape")


# ---------------------------------------------------------------------------------------------
# writer


class RecordingWriter:
    """Streams samples into a `.goflame` file.

    Samples are encoded into a pending chunk; the chunk is written (one write of a
    self-checking block) when `flush_interval` has passed since the last flush, when it grows
    past `max_chunk` bytes, on `flush()`, and on `close()`. Call `tick()` from the sampling
    loop even when no sample came in, so that pending samples never wait longer than the
    interval. The file is unbuffered on our side: a flushed chunk is in the kernel, which keeps
    it even if this process is killed with SIGKILL.
    """

    def __init__(
        self,
        out: str | os.PathLike[str] | BinaryIO,
        meta: RecordingMeta,
        *,
        flush_interval: float = 0.5,
        max_chunk: int = 1 << 20,
    ) -> None:
        self._name = str(out) if isinstance(out, (str, os.PathLike)) else getattr(out, "name", "<stream>")
        if isinstance(out, (str, os.PathLike)):
            try:
                self._f: BinaryIO = open(out, "wb", buffering=0)  # noqa: SIM115 - closed in close()
            except OSError as e:
                raise OutputError(f"cannot write {out}: {e.strerror or e}") from None
            self._owns = True
        else:
            self._f = out
            self._owns = False
        self.meta = meta
        self.flush_interval = flush_interval
        self.max_chunk = max_chunk
        self._strings: dict[str, int] = {}
        self._frames: dict[tuple[str, str, int, bool, int, int], int] = {}
        self._frames_by_id: dict[int, tuple[Frame, int]] = {}
        self._stacks: dict[tuple[int, ...], int] = {}
        self._stacks_by_id: dict[int, tuple[tuple[Frame, ...], int]] = {}
        self._pending = bytearray()
        self._label_sets: dict[tuple[tuple[str, str], ...], int] = {}
        self._last_ts = 0
        self._last_flush = time.monotonic()
        self._closed = False
        self.samples_written = 0
        self.last_timestamp_ns = 0
        head = json.dumps(meta.to_json(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        body = _HEAD.pack(FORMAT_VERSION, len(head)) + head
        self._write(MAGIC + body + _U32.pack(zlib.crc32(body)))

    # -- interning: a definition goes into the pending chunk before the sample that uses it

    def _string(self, s: str) -> int:
        i = self._strings.get(s)
        if i is None:
            i = self._strings[s] = len(self._strings)
            b = _encode_str(s)
            buf = self._pending
            buf.append(REC_STRING)
            _uvarint(buf, len(b))
            buf += b
        return i

    def _frame(self, f: Frame) -> int:
        hit = self._frames_by_id.get(id(f))
        if hit is not None and hit[0] is f:
            return hit[1]
        # A tuple of plain fields hashes in C; a Frame (and its enum kind) hashes in Python.
        key = (f.function, f.file, f.line, f.inlined, id(f.kind), f.pc)
        i = self._frames.get(key)
        if i is None:
            fn, fl = self._string(f.function), self._string(f.file)
            i = self._frames[key] = len(self._frames)
            buf = self._pending
            buf.append(REC_FRAME)
            _uvarint(buf, fn)
            _uvarint(buf, fl)
            _uvarint(buf, f.line)
            buf.append(KIND_CODES[f.kind])
            buf.append(1 if f.inlined else 0)
            _uvarint(buf, f.pc)
        if len(self._frames_by_id) >= 1 << 16:
            self._frames_by_id.clear()  # bounded: a sampler that builds new Frame objects per sample
        self._frames_by_id[id(f)] = (f, i)  # keeps f alive, so its id is not reused while cached
        return i

    def _stack(self, frames: tuple[Frame, ...]) -> int:
        # A sampler that reuses frames tuples (parked goroutines, pc-keyed caches) hits here.
        hit = self._stacks_by_id.get(id(frames))
        if hit is not None and hit[0] is frames:
            return hit[1]
        cache = self._frames_by_id
        ids = []
        for f in frames:
            h = cache.get(id(f))
            ids.append(h[1] if h is not None and h[0] is f else self._frame(f))
        key = tuple(ids)
        i = self._stacks.get(key)
        if i is None:
            i = self._stacks[key] = len(self._stacks)
            buf = self._pending
            buf.append(REC_STACK)
            append_uvarints(buf, len(key), *key)
        if len(self._stacks_by_id) >= 1 << 16:
            self._stacks_by_id.clear()
        self._stacks_by_id[id(frames)] = (frames, i)
        return i

    def _labels(self, labels: tuple[tuple[str, str], ...]) -> int:
        """The id of a label set (1 and up), defined on first use."""
        i = self._label_sets.get(labels)
        if i is None:
            ids = [self._string(x) for kv in labels for x in kv]
            i = self._label_sets[labels] = len(self._label_sets) + 1
            buf = self._pending
            buf.append(REC_LABELS)
            append_uvarints(buf, len(labels), *ids)
        return i

    def add(self, sample: Sample) -> None:
        if self._closed:
            raise OutputError(f"{self._name}: recording already closed")
        state = self._string(sample.state)
        stack = self._stack(sample.frames)
        labels = self._labels(sample.labels) if sample.labels else 0
        buf = self._pending
        buf.append(REC_LABELLED_SAMPLE if labels else REC_SAMPLE)
        dt = sample.timestamp_ns - self._last_ts
        try:
            # One call for the fields (a sampler writes thousands of samples a second).
            if labels:
                append_uvarints(buf, (dt << 1) if dt >= 0 else ((-dt) << 1) - 1, sample.goroutine, sample.thread, state,
                          stack, sample.weight, labels)
            else:
                append_uvarints(buf, (dt << 1) if dt >= 0 else ((-dt) << 1) - 1, sample.goroutine, sample.thread, state,
                          stack, sample.weight)
        except ValueError as e:
            raise OutputError(f"{self._name}: cannot record sample: {e}") from None
        self._last_ts = sample.timestamp_ns
        self.last_timestamp_ns = max(self.last_timestamp_ns, sample.timestamp_ns)
        self.samples_written += 1
        if len(buf) >= self.max_chunk:
            self.flush()
        else:
            self.tick()

    def add_all(self, samples: Iterable[Sample]) -> None:
        for s in samples:
            self.add(s)

    def tick(self) -> None:
        """Flush if the pending chunk is older than the flush interval."""
        if self._pending and time.monotonic() - self._last_flush >= self.flush_interval:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if self._pending:
            payload = bytes(self._pending)
            self._pending.clear()
            self._write_chunk(TAG_SAMPLES, payload)

    def close(self, meta: RecordingMeta | None = None) -> None:
        """Flush and write the end record with the final counters (from `meta` when given)."""
        if self._closed:
            return
        self.flush()
        m = meta or replace(
            self.meta, samples=self.samples_written, duration=self.last_timestamp_ns / 1e9
        )
        trailer = {"samples": m.samples, "errors": m.errors, "duration": m.duration, "extra": dict(m.extra)}
        self._write_chunk(TAG_END, json.dumps(trailer, ensure_ascii=False).encode("utf-8"))
        self._closed = True
        if self._owns:
            self._f.close()

    def abandon(self) -> None:
        """Flush what is pending and close without an end record (used by tests and crash paths)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
        finally:
            if self._owns:
                self._f.close()

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if isinstance(exc, OutputError):  # the file cannot take more: keep what it has
            try:
                self.abandon()
            except OutputError:
                pass
            return
        self.close()  # normal end, Ctrl-C or a sampler error: write the end record too

    def _write_chunk(self, tag: int, payload: bytes) -> None:
        head = _CHUNK.pack(tag, len(payload), zlib.crc32(payload, zlib.crc32(bytes([tag]))))
        self._write(head + payload)

    def _write(self, data: bytes) -> None:
        """One chunk, written whole: a short write is retried until everything is in the kernel."""
        try:
            view = memoryview(data)
            while view:
                n = self._f.write(view)
                if n is None:  # a non-blocking stream that took nothing
                    continue
                view = view[n:]
            if not self._owns:
                self._f.flush()
        except OSError as e:
            raise OutputError(f"cannot write {self._name}: {e.strerror or e}") from None


def write_recording(profile: Profile, out: str | os.PathLike[str] | BinaryIO) -> None:
    """Save a whole in-memory profile as a `.goflame` recording."""
    with RecordingWriter(out, profile.meta, flush_interval=float("inf")) as w:
        w.add_all(profile.samples)
        w.close(profile.meta if profile.meta.samples else None)


# ---------------------------------------------------------------------------------------------
# reader


def is_recording(head: bytes) -> bool:
    """Whether the first bytes of a file are a goflame recording's magic."""
    return head[: len(MAGIC)] == MAGIC


def read_recording(source: str | os.PathLike[str] | bytes | IO[bytes], name: str | None = None, *,
                   limits: Limits = DEFAULT_LIMITS) -> Profile:
    """Read a `.goflame` file: everything up to a torn tail (said in `Profile.cut_short`);
    BadInput for foreign or corrupt data, and for a recording cut short before any sample."""
    data, name = source_bytes(source, name, "<recording>", limits)
    try:
        return _parse(data, name, limits.max_depth)
    except _Corrupt as e:
        raise BadInput(f"{name}: corrupt goflame recording: {e}") from None


# JSON in a header or end record is a flat object of counters and names; anything nested deeper
# than this is not goflame's (and deep enough nesting overflows Python's recursion limit).
_MAX_JSON_DEPTH = 32


def _no_constant(c: str) -> Any:
    raise ValueError(f"{c} is not a number goflame writes")


def _json_object(raw: bytes | memoryview, what: str) -> dict[str, Any]:
    """A header's or end record's JSON object; _Corrupt for anything else (NaN, 1e400, nesting)."""
    try:
        v = json.loads(bytes(raw).decode("utf-8"), parse_constant=_no_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise _Corrupt(f"{what} is not valid JSON ({str(e)[:200]})") from None
    if not isinstance(v, dict):
        raise _Corrupt(f"{what} is not a JSON object")
    todo: list[tuple[Any, int]] = [(v, 1)]
    while todo:
        x, depth = todo.pop()
        if depth > _MAX_JSON_DEPTH:
            raise _Corrupt(f"{what} is nested more than {_MAX_JSON_DEPTH} levels deep")
        if isinstance(x, dict):
            todo.extend((y, depth + 1) for y in x.values())
        elif isinstance(x, list):
            todo.extend((y, depth + 1) for y in x)
    return v


def _finite_float(s: str) -> float:
    x = float(s)
    if not math.isfinite(x):
        raise ValueError(f"{s[:40]} is out of range")
    return x


def _parse(data: bytes, name: str, max_depth: int = MAX_DEPTH) -> Profile:
    meta, pos = _parse_header(data, name)
    decoder = _ChunkDecoder(max_depth)
    trailer, end, tail = _read_chunks(data, pos, decoder)
    samples = tuple(decoder.samples)
    cut: CutShort | None = None
    if trailer is not None:
        try:
            extra = dict(meta.extra)
            extra.update(trailer.get("extra") or {})
            meta = replace(
                meta,
                samples=int(trailer.get("samples", len(samples))),
                errors=int(trailer.get("errors", 0)),
                duration=finite(trailer.get("duration", 0.0)),
                extra=extra,
            )
        except (TypeError, ValueError, OverflowError) as e:
            raise _Corrupt(f"end record has a malformed field: {e}") from None
    else:
        last = max((s.timestamp_ns for s in samples), default=0)
        meta = replace(meta, samples=len(samples), duration=last / 1e9)
        cut = CutShort(end, len(data), tail or Tail.NO_END_RECORD, len(samples), meta.duration)
        if not samples:
            where = (f"at byte {end:,} of {len(data):,} ({cut.tail.value})" if tail else
                     f"at byte {end:,}, without its end record")
            raise BadInput(f"{name}: recording cut short {where}, before its first sample: nothing to read")
    depth = DepthCut(decoder.deep, max_depth) if decoder.deep else None
    return Profile(meta, samples, detailed=True, complete=cut is None and tail is None, cut_short=cut,
                   depth_cut=depth)


def _parse_header(data: bytes, name: str) -> tuple[RecordingMeta, int]:
    """The meta and the offset of the first chunk."""
    if not data:
        raise BadInput(f"{name}: empty file, not a goflame recording")
    if not is_recording(data):
        raise BadInput(f"{name}: not a goflame recording (no goflame magic at the start)")
    pos = len(MAGIC)
    if len(data) < pos + _HEAD.size:
        raise BadInput(f"{name}: goflame recording truncated inside its header")
    version, mlen = _HEAD.unpack_from(data, pos)
    if version > FORMAT_VERSION:
        raise BadInput(
            f"{name}: recording format {version} is newer than this goflame reads ({FORMAT_VERSION}); "
            "upgrade goflame"
        )
    if version < 1:
        raise _Corrupt(f"format version {version}")
    end = pos + _HEAD.size + mlen
    if len(data) < end + 4:
        raise BadInput(f"{name}: goflame recording truncated inside its header")
    if zlib.crc32(data[pos:end]) != _U32.unpack_from(data, end)[0]:
        raise _Corrupt("header checksum mismatch")
    try:
        meta = RecordingMeta.from_json(_json_object(data[pos + _HEAD.size : end], "header"))
    except BadInput as e:
        raise _Corrupt(str(e).removeprefix("recording ")) from None
    return meta, end + 4


def _read_chunks(data: bytes, pos: int, decoder: _ChunkDecoder) -> tuple[dict[str, Any] | None, int, Tail | None]:
    """Decode the chunks from `pos`: (end record or None, offset where reading stopped, how a
    torn tail ended it or None). The tail rule is docs/recording-format.md's."""
    trailer: dict[str, Any] | None = None
    n = len(data)
    while pos < n:
        if trailer is not None:
            raise _Corrupt(f"data after the end record at byte {pos}")
        if data[pos] == 0 and data.count(0, pos) == n - pos:
            return None, pos, Tail.ZERO_TAIL  # a crash that extended the file without writing it
        if n - pos < _CHUNK.size:
            return None, pos, Tail.TORN_CHUNK_HEADER
        tag, plen, crc = _CHUNK.unpack_from(data, pos)
        start, stop = pos + _CHUNK.size, pos + _CHUNK.size + plen
        if tag not in (TAG_SAMPLES, TAG_END):
            raise _Corrupt(f"unknown chunk type {tag:#04x} at byte {pos}")
        if stop > n:
            return None, pos, Tail.TORN_CHUNK  # the last chunk was being written when the writer died
        payload = memoryview(data)[start:stop]
        if zlib.crc32(payload, zlib.crc32(bytes([tag]))) != crc:
            if stop == n:
                return None, pos, Tail.BAD_LAST_CHECKSUM  # its bytes never fully reached the disk
            raise _Corrupt(f"chunk at byte {pos} fails its checksum")
        if tag == TAG_SAMPLES:
            decoder.decode(payload, pos)
        else:
            trailer = _json_object(payload, "end record")
        pos = stop
    return trailer, pos, None


class _ChunkDecoder:
    """Decodes sample chunks in file order; ids defined in earlier chunks stay valid. A stack
    deeper than `max_depth` frames is cut to it (goflame.inputs.cut_deep), counted in `deep`."""

    def __init__(self, max_depth: int = MAX_DEPTH) -> None:
        self.strings: list[str] = []
        self.frames: list[Frame] = []
        self.stacks: list[tuple[Frame, ...]] = []
        self.samples: list[Sample] = []
        self.label_sets: list[tuple[tuple[str, str], ...]] = [()]  # id 0: no labels
        self.ts = 0
        self.max_depth = max_depth
        self.deep = 0

    def decode(self, payload: memoryview, at: int) -> None:
        buf = bytes(payload)
        n = len(buf)
        pos = 0
        strings, frames, stacks, samples = self.strings, self.frames, self.stacks, self.samples
        label_sets = self.label_sets

        def uv() -> int:
            nonlocal pos
            shift = result = 0
            while True:
                if pos >= n:
                    raise _Corrupt(f"record runs past the end of the chunk at byte {at}")
                b = buf[pos]
                pos += 1
                result |= (b & 0x7F) << shift
                if b < 0x80:
                    return result
                shift += 7
                if shift > 70:
                    raise _Corrupt(f"overlong number in the chunk at byte {at}")

        def ref(table: list[Any], what: str) -> Any:
            i = uv()
            if i >= len(table):
                raise _Corrupt(f"sample refers to undefined {what} {i} in the chunk at byte {at}")
            return table[i]

        ts = self.ts
        while pos < n:
            rec = buf[pos]
            pos += 1
            if rec == REC_SAMPLE:
                v = uv()
                ts += (v >> 1) ^ -(v & 1)
                samples.append(Sample(ts, uv(), uv(), ref(strings, "string"), ref(stacks, "stack"), uv()))
            elif rec == REC_LABELLED_SAMPLE:
                v = uv()
                ts += (v >> 1) ^ -(v & 1)
                samples.append(Sample(ts, uv(), uv(), ref(strings, "string"), ref(stacks, "stack"), uv(),
                                      ref(label_sets, "label set")))
            elif rec == REC_LABELS:
                k = uv()
                if 2 * k > n - pos:
                    raise _Corrupt(f"label set longer than its chunk at byte {at}")
                label_sets.append(tuple((ref(strings, "string"), ref(strings, "string")) for _ in range(k)))
            elif rec == REC_STACK:
                k = uv()
                if k > n - pos:
                    raise _Corrupt(f"stack longer than its chunk at byte {at}")
                if k > self.max_depth:
                    stacks.append(self._cut(k, lambda: ref(frames, "frame")))
                else:
                    stacks.append(tuple([ref(frames, "frame") for _ in range(k)]))
            elif rec == REC_FRAME:
                fn, fl, line = ref(strings, "string"), ref(strings, "string"), uv()
                if pos + 2 > n:
                    raise _Corrupt(f"record runs past the end of the chunk at byte {at}")
                kind = KINDS_BY_CODE.get(buf[pos])
                if kind is None:
                    raise _Corrupt(f"unknown frame kind {buf[pos]} in the chunk at byte {at}")
                inlined = bool(buf[pos + 1] & 1)
                pos += 2
                frames.append(Frame(fn, fl, line, inlined, kind, uv()))
            elif rec == REC_STRING:
                k = uv()
                if pos + k > n:
                    raise _Corrupt(f"string runs past the end of the chunk at byte {at}")
                strings.append(buf[pos : pos + k].decode("utf-8", "surrogateescape"))
                pos += k
            else:
                raise _Corrupt(f"unknown record type {rec} in the chunk at byte {at}")
        self.ts = ts

    def _cut(self, k: int, next_frame: Callable[[], Frame]) -> tuple[Frame, ...]:
        """A stack record of k > max_depth frames: its innermost frames and the depth marker;
        the ids past them are read (and checked) but never made into a tuple."""
        self.deep += 1
        kept = [next_frame() for _ in range(self.max_depth - 1)]
        for _ in range(k - len(kept)):
            next_frame()
        return (*kept, deep_marker(self.max_depth))


def iter_chunks_info(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(offset, tag, payload length) of each complete chunk: for tests and `goflame inspect`."""
    if not is_recording(data):
        return
    _, mlen = _HEAD.unpack_from(data, len(MAGIC))
    pos = len(MAGIC) + _HEAD.size + mlen + 4
    while pos + _CHUNK.size <= len(data):
        tag, plen, _ = _CHUNK.unpack_from(data, pos)
        if pos + _CHUNK.size + plen > len(data):
            return
        yield pos, tag, plen
        pos += _CHUNK.size + plen


__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "CutShort",
    "DepthCut",
    "Profile",
    "RecordingMeta",
    "RecordingWriter",
    "Sample",
    "Stacks",
    "Tail",
    "is_recording",
    "iter_chunks_info",
    "read_recording",
    "write_recording",
]
