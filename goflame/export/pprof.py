"""pprof's profile.proto (gzipped), the format of `go tool pprof`, written and read.

Writing follows Go's runtime/pprof conventions so that Go's own tools treat our files like
theirs: CPU mode has sample types `samples/count` and `cpu/nanoseconds` with a period of
1e9/rate ns; wall mode (`--idle`) has `samples/count` and `wall/nanoseconds`. One Location per
pc; the frames inlined at that pc are its Line entries, innermost first, the function they were
inlined into last — as Go writes them, so `go tool pprof` shows `(inline)` frames and
`-lines`/`-addresses` work. Each goflame sample keeps its goroutine id, thread id and goroutine
state as sample labels (`goroutine`, `thread` numbers; `state` string), so reading our own file
back gives a recording that `--threads`/`--goroutines` still work on.

Reading takes any profile.proto, gzipped or not: Go's CPU profiles (`go test -cpuprofile`,
`/debug/pprof/profile`), goroutine profiles (`/debug/pprof/goroutine`, debug=0), heap, block and
mutex profiles, and our own. A sample's weight is its `count` value when the profile has one
(`samples/count`, `goroutine/count`: what the statistics of `goflame diff` need), else the
default sample type.

Encoding: the `protobuf` package's C parser (upb) with a message definition written here, as
data (`_SCHEMA`), and turned into message classes at run time — no protoc, no generated code.
A decoder of our own in pure Python was the alternative, and would be smaller; it is not
faster: it decodes varints byte by byte in Python, and merely walking the samples' location
ids that way takes longer than goflame's whole read of a 50 MB profile (bench/bench_pprof_diff.py
measures both). The definition declares the string table as `bytes` (wire-identical to
`string`): upb would reject a proto3 `string` that is not UTF-8, and a Go binary's names need
not be.

Reading is by column when it can be (`_columns`): with `sample` declared singular, upb merges
all samples into one message, so each sample's packed ids arrive as one bytes item of a list
and its values in a flat list, both made in C; the weights of each distinct stack are summed in
one pass and `Sample` objects are made only on demand (`LazySamples`). A sample whose ids are
not one packed field (Go writes 1 or 2 unpacked) cannot be lined up with its values that way:
such a file takes the per-sample path (`_samples`).
"""

from __future__ import annotations

import gzip
import os
import sys
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache, partial
from itertools import chain, islice, repeat
from operator import itemgetter
from typing import IO, Any, BinaryIO

from goflame import __version__
from goflame.binary.varint import encode_uvarint, try_uvarint
from goflame.errors import BadInput, GoflameError
from goflame.frame import Frame, FrameKind
from goflame.inputs import DEFAULT_LIMITS, Limits, cut_deep, format_size, source_bytes, too_big
from goflame.profile import (
    DepthCut,
    FrameTable,
    LazySamples,
    Profile,
    RecordingMeta,
    Sample,
    Stacks,
)

# ---------------------------------------------------------------------------------------------
# the message definition (field numbers and types from pprof's proto/profile.proto)

_U64, _I64, _BOOL, _BYTES = "uint64", "int64", "bool", "bytes"
_REP = True

# message -> (field name, number, scalar type or message name, repeated)
_SCHEMA: dict[str, tuple[tuple[str, int, str, bool], ...]] = {
    "Profile": (
        ("sample_type", 1, "ValueType", _REP),
        ("sample", 2, "Sample", _REP),
        ("mapping", 3, "Mapping", _REP),
        ("location", 4, "Location", _REP),
        ("function", 5, "Function", _REP),
        ("string_table", 6, _BYTES, _REP),
        ("drop_frames", 7, _I64, False),
        ("keep_frames", 8, _I64, False),
        ("time_nanos", 9, _I64, False),
        ("duration_nanos", 10, _I64, False),
        ("period_type", 11, "ValueType", False),
        ("period", 12, _I64, False),
        ("comment", 13, _I64, _REP),
        ("default_sample_type", 14, _I64, False),
        ("doc_url", 15, _I64, False),
    ),
    "ValueType": (("type", 1, _I64, False), ("unit", 2, _I64, False)),
    "Sample": (
        ("location_id", 1, _U64, _REP),
        ("value", 2, _I64, _REP),
        ("label", 3, "Label", _REP),
    ),
    "Label": (("key", 1, _I64, False), ("str", 2, _I64, False), ("num", 3, _I64, False),
              ("num_unit", 4, _I64, False)),
    "Mapping": (
        ("id", 1, _U64, False),
        ("memory_start", 2, _U64, False),
        ("memory_limit", 3, _U64, False),
        ("file_offset", 4, _U64, False),
        ("filename", 5, _I64, False),
        ("build_id", 6, _I64, False),
        ("has_functions", 7, _BOOL, False),
        ("has_filenames", 8, _BOOL, False),
        ("has_line_numbers", 9, _BOOL, False),
        ("has_inline_frames", 10, _BOOL, False),
    ),
    "Location": (
        ("id", 1, _U64, False),
        ("mapping_id", 2, _U64, False),
        ("address", 3, _U64, False),
        ("line", 4, "Line", _REP),
        ("is_folded", 5, _BOOL, False),
    ),
    "Line": (("function_id", 1, _U64, False), ("line", 2, _I64, False), ("column", 3, _I64, False)),
    "Function": (
        ("id", 1, _U64, False),
        ("name", 2, _I64, False),
        ("system_name", 3, _I64, False),
        ("filename", 4, _I64, False),
        ("start_line", 5, _I64, False),
    ),
}


# For reading, a Sample's location ids and labels are taken as raw bytes (wire-compatible with
# the packed ids and the Label messages): the bytes of a stack are a dict key as they are, and
# only each distinct stack and label is decoded (by upb, as a tiny `Ids` / `Label` message).
_SCHEMA["SampleIn"] = (("location_id", 1, _BYTES, _REP), ("value", 2, _I64, _REP), ("label", 3, _BYTES, _REP))
_SCHEMA["ProfileIn"] = tuple((f, n, "SampleIn" if t == "Sample" else t, r) for f, n, t, r in _SCHEMA["Profile"])
_SCHEMA["Ids"] = (("id", 1, _U64, _REP),)
# The fast read: `sample` declared singular, so the parser merges every Sample into one message
# (protobuf's rule for a repeated occurrence of a singular message field) — in C, one column per
# field: each sample's packed ids as one bytes item, all values, all labels.
_SCHEMA["SampleColumns"] = _SCHEMA["SampleIn"]
_SCHEMA["ProfileColumns"] = tuple((f, n, "SampleColumns", False) if t == "Sample" else (f, n, t, r)
                                  for f, n, t, r in _SCHEMA["Profile"])


@cache
def _message_classes() -> dict[str, type]:
    """Message classes built from `_SCHEMA` in a private descriptor pool (made once, on first use)."""
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    except ImportError:  # pragma: no cover - a declared dependency
        raise BadInput("pprof support needs the 'protobuf' package: pip install protobuf") from None
    fdp = descriptor_pb2.FieldDescriptorProto
    scalar = {_U64: fdp.TYPE_UINT64, _I64: fdp.TYPE_INT64, _BOOL: fdp.TYPE_BOOL, _BYTES: fdp.TYPE_BYTES}
    pkg = "goflame.pprof"
    f = descriptor_pb2.FileDescriptorProto(name="goflame/pprof.proto", package=pkg, syntax="proto3")
    for msg, fields in _SCHEMA.items():
        m = f.message_type.add(name=msg)
        for fname, number, typ, repeated in fields:
            fd = m.field.add(name=fname, number=number,
                             label=fdp.LABEL_REPEATED if repeated else fdp.LABEL_OPTIONAL)
            if typ in scalar:
                fd.type = scalar[typ]
            else:
                fd.type = fdp.TYPE_MESSAGE
                fd.type_name = f".{pkg}.{typ}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    get_class = getattr(message_factory, "GetMessageClass", None)  # protobuf >= 4.22
    if get_class is None:  # pragma: no cover - protobuf 4.21
        get_class = message_factory.MessageFactory(pool).GetPrototype
    return {name: get_class(pool.FindMessageTypeByName(f"{pkg}.{name}")) for name in _SCHEMA}


# ---------------------------------------------------------------------------------------------
# writing

# Label keys for what a goflame sample knows beyond its stack.
LABEL_GOROUTINE = "goroutine"
LABEL_THREAD = "thread"
LABEL_STATE = "state"

# The profile kind (see `profile_kind`) -> sample types and period type, as Go names them.
_CPU_TYPES = (("samples", "count"), ("cpu", "nanoseconds"))
_WALL_TYPES = (("samples", "count"), ("wall", "nanoseconds"))


def profile_kind(profile: Profile) -> str:
    """What a profile's weights count: "cpu", "wall", "goroutine", another pprof type, or "" (unknown)."""
    extra = profile.meta.extra
    kind = extra.get("profile_kind")
    if isinstance(kind, str):
        return kind
    if extra.get("source") == "folded":
        return ""
    return profile.meta.mode


@dataclass(frozen=True, slots=True)
class _Types:
    sample: tuple[tuple[str, str], ...]
    period: tuple[str, str]
    period_ns: int  # the period written; values[1] = count * period for time types


def _types_for(profile: Profile) -> _Types:
    kind = profile_kind(profile)
    rate = profile.meta.rate_hz
    if kind in ("cpu", "wall"):
        types = _CPU_TYPES if kind == "cpu" else _WALL_TYPES
        if rate > 0:
            return _Types(types, types[1], max(1, round(1e9 / rate)))
        return _Types(types[:1], types[0], 1)
    if kind == "goroutine":
        return _Types((("goroutine", "count"),), ("goroutine", "count"), 1)
    typ, _, unit = (str(profile.meta.extra.get("pprof_sample_type") or "samples/count")).partition("/")
    return _Types(((typ, unit or "count"),), (typ, unit or "count"), 1)


class _Strings:
    """The string table: index 0 is always the empty string."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {"": 0}
        self.table: list[str] = [""]

    def __call__(self, s: str) -> int:
        i = self.index.get(s)
        if i is None:
            i = self.index[s] = len(self.table)
            self.table.append(s)
        return i


def _start_lines(profile: Profile, binary: str | os.PathLike[str] | None, names: Iterable[str]) -> dict[str, int]:
    """name -> the line its `func` keyword is on, from the binary's pclntab (Go 1.20+).

    Frames do not carry it, so it is looked up by name in the binary the profile was taken
    of, when that file is still there and is the same Go version; else 0 ("unknown" in pprof).
    """
    path = binary if binary is not None else profile.meta.binary
    if not path:
        return {}
    try:
        from goflame.binary.gobinary import GoBinary

        b = GoBinary(path)
    except (GoflameError, OSError, ValueError):
        return {}
    found: dict[str, int] = {}
    try:
        if binary is None and profile.meta.go_version and b.go_version != profile.meta.go_version:
            return {}
        tab = b.pclntab
        for name in names:
            try:
                f = tab.func_by_name(name)
            except GoflameError:
                continue
            if f is not None and f.start_line > 0:
                found[name] = f.start_line
    except GoflameError:
        return {}
    finally:
        b.close()
    return found


def _locations_of(frames: tuple[Frame, ...]) -> list[tuple[Frame, ...]]:
    """Split a stack (innermost first) into Locations: the frames inlined at one pc, then the
    frame they were inlined into, form one; a frame with no pc (synthetic, or read from a
    folded file) is a Location of its own."""
    out: list[tuple[Frame, ...]] = []
    group: list[Frame] = []
    for f in frames:
        if group and (f.pc != group[0].pc or not group[-1].inlined):
            out.append(tuple(group))
            group = []
        group.append(f)
        if not f.pc or not f.inlined:
            out.append(tuple(group))
            group = []
    if group:
        out.append(tuple(group))
    return out


_INT64_MAX = (1 << 63) - 1


def encode_pprof(profile: Profile, *, binary: str | os.PathLike[str] | None = None) -> bytes:
    """The uncompressed profile.proto message for `profile`.

    pprof's values are 64-bit: a profile that holds a larger number (a sample count of 2^63 or
    more from a folded file, or one whose count times the period passes 2^63 ns) cannot be
    written as pprof, and clamping it would write a lie. That is BadInput (exit 2), one line,
    before anything is written.
    """
    try:
        return _encode(profile, binary)
    except ValueError as e:
        if "out of range" not in str(e):  # protobuf's words for a number past its field's 64 bits
            raise
        raise BadInput(f"this profile cannot be written as pprof: a value does not fit pprof's 64-bit "
                       f"fields ({str(e)[:80]})") from None


def _check_counts(counts: Iterable[int], period: int, timed: bool) -> None:
    big = max(counts, default=0)
    if big > _INT64_MAX:
        raise BadInput(f"this profile cannot be written as pprof: a stack's sample count ({big:,}) does not "
                       "fit pprof's 64-bit values (at most 9,223,372,036,854,775,807)")
    if timed and big * period > _INT64_MAX:
        raise BadInput(f"this profile cannot be written as pprof: a stack's {big:,} samples at {period:,} ns "
                       "each is more nanoseconds than pprof's 64-bit values hold")


def _encode(profile: Profile, binary: str | os.PathLike[str] | None) -> bytes:
    cls = _message_classes()
    p = cls["Profile"]()
    strings = _Strings()
    types = _types_for(profile)
    for typ, unit in types.sample:
        p.sample_type.add(type=strings(typ), unit=strings(unit))
    p.period_type.type = strings(types.period[0])
    p.period_type.unit = strings(types.period[1])
    p.period = types.period_ns
    timed = len(types.sample) > 1
    m = profile.meta
    if m.start_time:
        p.time_nanos = int(m.start_time * 1e9)
    if m.duration:
        p.duration_nanos = int(m.duration * 1e9)
    comments = [f"goflame {m.goflame_version or __version__}"]
    if m.pid:
        comments.append(f"pid {m.pid}")
    if m.go_version:
        comments.append(m.go_version)
    if m.errors:
        comments.append(f"{m.errors} samples dropped")
    p.comment.extend(strings(c) for c in comments)

    functions: dict[tuple[str, str], int] = {}
    locations: dict[tuple[int, tuple[tuple[str, str, int], ...], FrameKind], int] = {}
    stack_locs: dict[int, tuple[tuple[Frame, ...], tuple[int, ...]]] = {}  # id(frames) -> locations
    go_pcs: list[int] = []
    go_functions: list[tuple[int, str]] = []  # (index in p.function, name): start lines come last
    main_mapping, native_mapping = 1, 2
    uses_native = False

    def function_id(f: Frame) -> int:
        key = (f.function, f.file)
        i = functions.get(key)
        if i is None:
            i = functions[key] = len(functions) + 1
            name = strings(f.function)
            p.function.add(id=i, name=name, system_name=name, filename=strings(f.file))
            if f.kind is FrameKind.GO:
                go_functions.append((i - 1, f.function))
        return i

    def location_id(group: tuple[Frame, ...]) -> int:
        nonlocal uses_native
        head = group[0]
        key = (head.pc, tuple((f.function, f.file, f.line) for f in group), group[-1].kind)
        i = locations.get(key)
        if i is None:
            i = locations[key] = len(locations) + 1
            loc = p.location.add(id=i, address=head.pc)
            kind = group[-1].kind
            if head.pc and kind is FrameKind.GO:
                loc.mapping_id = main_mapping
                go_pcs.append(head.pc)
            elif kind is FrameKind.NATIVE:
                loc.mapping_id = native_mapping
                uses_native = True
            for f in group:
                loc.line.add(function_id=function_id(f), line=f.line)
        return i

    def locs_for(frames: tuple[Frame, ...]) -> tuple[int, ...]:
        hit = stack_locs.get(id(frames))
        if hit is not None and hit[0] is frames:
            return hit[1]
        ids = tuple(location_id(g) for g in _locations_of(frames))
        stack_locs[id(frames)] = (frames, ids)
        return ids

    # Samples that share a stack, goroutine, thread and state merge into one pprof sample.
    merged: dict[tuple[tuple[int, ...], int, int, str, tuple[tuple[str, str], ...]], int] = {}
    get = merged.get
    detailed = profile.detailed
    for s in profile.samples:
        key = ((locs_for(s.frames), s.goroutine, s.thread, s.state, s.labels) if detailed
               else (locs_for(s.frames), 0, 0, "", s.labels))
        merged[key] = get(key, 0) + s.weight
    k_goroutine, k_thread, k_state = strings(LABEL_GOROUTINE), strings(LABEL_THREAD), strings(LABEL_STATE)
    period = types.period_ns
    _check_counts(merged.values(), period, timed)
    add = p.sample.add
    for (locs, goroutine, thread, state, labels), count in merged.items():
        s = add(location_id=locs, value=(count, count * period) if timed else (count,))
        for k, v in labels:  # the goroutine's pprof labels: `go tool pprof -tags`, -tagfocus, -tagroot
            s.label.add(key=strings(k), str=strings(v))
        if detailed:
            if goroutine:
                s.label.add(key=k_goroutine, num=goroutine)
            if thread:
                s.label.add(key=k_thread, num=thread)
            if state:
                s.label.add(key=k_state, str=strings(state))

    if go_functions:
        lines = _start_lines(profile, binary, {n for _, n in go_functions})
        if lines:
            for idx, fname in go_functions:
                p.function[idx].start_line = lines.get(fname, 0)
    if go_pcs or m.binary:
        lo, hi = (min(go_pcs), max(go_pcs)) if go_pcs else (0, 0)
        p.mapping.add(id=main_mapping, memory_start=lo & ~0xFFF, memory_limit=(hi | 0xFFF) + 1 if hi else 0,
                      filename=strings(m.binary), has_functions=True, has_filenames=True,
                      has_line_numbers=True, has_inline_frames=True)
    else:
        p.mapping.add(id=main_mapping, has_functions=True)
    if uses_native:  # C code (cgo, libc, vDSO): goflame names it from ELF symbols, without lines
        p.mapping.add(id=native_mapping, filename=strings("[native]"), has_functions=True)
    p.string_table.extend(s.encode("utf-8", "surrogateescape") for s in strings.table)
    return p.SerializeToString()


def write_pprof(profile: Profile, out: str | os.PathLike[str] | BinaryIO, *,
                binary: str | os.PathLike[str] | None = None, **_ignored: Any) -> None:
    """Write a gzipped profile.proto (what `go tool pprof` and Go's runtime/pprof use)."""
    data = gzip.compress(encode_pprof(profile, binary=binary), compresslevel=6, mtime=0)
    if isinstance(out, (str, os.PathLike)):
        from goflame.export import atomic_output

        with atomic_output(out, binary=True) as fh:
            fh.write(data)
    else:
        out.write(data)


# ---------------------------------------------------------------------------------------------
# reading

# Wire type of each top-level Profile field (0 varint, 2 length-delimited); comment (13) may
# be packed (2) or not (0).
_PROFILE_WIRE = {1: {2}, 2: {2}, 3: {2}, 4: {2}, 5: {2}, 6: {2}, 7: {0}, 8: {0}, 9: {0}, 10: {0}, 11: {2},
                 12: {0}, 13: {0, 2}, 14: {0}, 15: {0}}


def looks_like_pprof(head: bytes) -> bool:
    """Whether the first bytes of a file are gzip, or top-level profile.proto fields.

    Only the structure is checked (every field a Profile field of the right wire type, as far
    as `head` goes): enough to tell a pprof file from text or another binary format.
    """
    if head[:2] == b"\x1f\x8b":
        return True
    pos, n, fields = 0, len(head), 0
    while pos < n:
        tag, pos = try_uvarint(head, pos)
        if tag is None:
            break
        number, wire = tag >> 3, tag & 7
        if wire not in _PROFILE_WIRE.get(number, ()):
            return False
        length, pos = try_uvarint(head, pos)
        if length is None:
            break
        fields += 1
        if wire == 2:
            pos += length
    return fields >= 1 and (fields >= 2 or pos >= n)


def _gzip() -> Any:
    """The gzip stream codec: Intel's ISA-L (the `isal` package) when installed — it inflates a
    50 MB profile ~2.5x faster than zlib, a fifth of the whole read — else the standard zlib."""
    try:
        from isal import isal_zlib

        return isal_zlib
    except ImportError:  # pragma: no cover - a declared dependency; zlib does the same, slower
        return zlib


def _decompress(data: bytes, name: str, cap: int) -> bytes:
    """Inflate gzip data (concatenated members are one stream, gzip's rule), refusing at more
    than `cap` bytes: each member is inflated in one call told how much it may still make, so
    a bomb costs at most the cap, never the 4 GiB it claims."""
    if data[:2] != b"\x1f\x8b":
        return data
    codec = _gzip()
    parts: list[bytes] = []
    total = 0
    view = memoryview(data)
    try:
        while True:
            d = codec.decompressobj(wbits=31)
            out = d.decompress(view, min(cap + 1 - total, sys.maxsize))
            total += len(out)
            if total > cap:
                raise too_big(name, f"gzip data of {format_size(len(data))} inflates to", cap)
            parts.append(out)
            if not d.eof:
                raise BadInput(f"{name}: truncated gzip data (the file was cut short)")
            rest = d.unused_data
            if not rest.strip(b"\0"):
                break
            view = memoryview(rest)
    except codec.error as e:
        raise BadInput(f"{name}: corrupt gzip data ({e})") from None
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _pick_value(types: list[tuple[str, str]], default: str, want: str | None, name: str) -> int:
    """Which value of each sample becomes the weight (see the module docstring)."""
    if want is not None:
        for i, (t, u) in enumerate(types):
            if want in (t, f"{t}/{u}"):
                return i
        have = ", ".join(f"{t}/{u}" for t, u in types)
        raise BadInput(f"{name}: no sample type {want!r} in this profile (it has {have})")
    for i, (t, u) in enumerate(types):
        if u == "count" and t in ("samples", "goroutine", "contentions", "count"):
            return i
    if default:
        for i, (t, _u) in enumerate(types):
            if t == default:
                return i
    return len(types) - 1


def decode_pprof(data: bytes, name: str = "<pprof>", *, sample_type: str | None = None,
                 limits: Limits = DEFAULT_LIMITS) -> Profile:
    """A Profile from profile.proto bytes (gzipped or not); BadInput for anything else.

    Gzip data may inflate to `limits.inflate_cap(len(data))` bytes at most; stacks deeper than
    `limits.max_depth` frames are cut to it (counted in `Profile.depth_cut`).
    """
    if not data:
        raise BadInput(f"{name}: empty file, not a pprof profile")
    cap = limits.inflate_cap(len(data))
    raw = _decompress(data, name, cap)
    if not raw:
        raise BadInput(f"{name}: empty pprof profile (no data inside the gzip stream)")
    cls = _message_classes()
    p = _parse(cls["ProfileColumns"], raw, name)
    strings = [s.decode("utf-8", "surrogateescape") for s in p.string_table]
    if not strings or strings[0]:
        raise BadInput(f"{name}: not a pprof profile (its string table does not start with '')")
    nstr = len(strings)

    def s_(i: int, what: str) -> str:
        if not 0 <= i < nstr:
            raise BadInput(f"{name}: corrupt pprof profile ({what} refers to string {i} of {nstr})")
        return strings[i]

    types = [(s_(v.type, "sample type"), s_(v.unit, "sample type")) for v in p.sample_type]
    if not types:
        raise BadInput(f"{name}: not a pprof profile (no sample types)" if not p.HasField("sample")
                       else f"{name}: corrupt pprof profile (samples but no sample types)")
    vi = _pick_value(types, s_(p.default_sample_type, "default sample type"), sample_type, name)
    ntypes = len(types)
    locations = _locations(p, s_, name)
    depth = limits.max_depth

    fast = _columns(p.sample, vi, ntypes, locations, cls["Ids"], name)
    if fast is None:  # ids written unpacked, empty stacks...: one Sample per sample, decoded in turn
        samples, labelled, total, deep = _samples(_parse(cls["ProfileIn"], raw, name), cls, locations, s_, vi,
                                                  ntypes, name, depth)
    else:
        n, total, blobs, weights = fast
        keys = set(strings)
        labelled = len(p.sample.label) > 0 and not keys.isdisjoint((LABEL_GOROUTINE, LABEL_THREAD, LABEL_STATE))
        deep = _deep_stacks(blobs, locations, depth)

        def materialize() -> list[Sample]:
            full = _parse(cls["ProfileIn"], _decompress(data, name, cap), name)
            return _samples(full, cls, locations, s_, vi, ntypes, name, depth)[0]

        samples = LazySamples(n, total, partial(_stacks_by_weight, blobs, weights, locations, name, depth),
                              materialize, has_states=labelled and LABEL_STATE in keys)
    meta = _meta(p, types, vi, s_, total)
    return Profile(meta, samples if isinstance(samples, LazySamples) else tuple(samples), detailed=labelled,
                   depth_cut=DepthCut(deep, depth) if deep else None)


def _locations(p: Any, s_: Callable[[int, str], str], name: str) -> dict[int, tuple[Frame, ...]]:
    """Location id -> its frames, innermost first (its Line entries, as Go writes them)."""
    # Mappings: the first is the main binary (pprof's rule); code in any other is native.
    main_mapping = p.mapping[0].id if len(p.mapping) else 0
    functions: dict[int, tuple[str, str]] = {}
    for f in p.function:
        functions[f.id] = (s_(f.name, "function") or s_(f.system_name, "function"), s_(f.filename, "function"))
    locations: dict[int, tuple[Frame, ...]] = {}
    for loc in p.location:
        addr = loc.address
        native = bool(loc.mapping_id) and loc.mapping_id != main_mapping
        lines = loc.line
        n = len(lines)
        if not n:
            locations[loc.id] = (Frame(f"{addr:#x}", kind=FrameKind.UNKNOWN, pc=addr),)
            continue
        frames = []
        for j, ln in enumerate(lines):
            fn = functions.get(ln.function_id)
            if fn is None:
                raise BadInput(f"{name}: corrupt pprof profile (location {loc.id} names no function "
                               f"{ln.function_id})")
            kind = FrameKind.NATIVE if native else _kind_of(fn[0], addr)
            frames.append(Frame(fn[0], fn[1], ln.line, j < n - 1, kind, addr))
        locations[loc.id] = tuple(frames)
    return locations


def _meta(p: Any, types: list[tuple[str, str]], vi: int, s_: Callable[[int, str], str], total: int) -> RecordingMeta:
    """What the profile is of: its kind (from the sample types), rate, binary, times, comments."""
    typ, unit = types[vi]
    period_t = (s_(p.period_type.type, "period type"), s_(p.period_type.unit, "period type"))
    all_types = {t for t, _ in types}
    if "cpu" in all_types:
        kind = "cpu"
    elif "wall" in all_types:
        kind = "wall"
    elif typ == "goroutine":
        kind = "goroutine"
    else:
        kind = f"{typ}/{unit}"
    rate = 1e9 / p.period if kind in ("cpu", "wall") and p.period > 0 and period_t[1] == "nanoseconds" else 0.0
    comments = [s_(c, "comment") for c in p.comment]
    return RecordingMeta(
        goflame_version=next((c.split(" ", 1)[1] for c in comments if c.startswith("goflame ")), ""),
        binary=s_(p.mapping[0].filename, "mapping") if len(p.mapping) else "",
        go_version=next((c for c in comments if c.startswith("go1")), ""),
        mode="cpu" if kind == "cpu" else "wall",
        rate_hz=rate,
        start_time=p.time_nanos / 1e9,
        duration=p.duration_nanos / 1e9,
        samples=total,
        extra={"source": "pprof", "profile_kind": kind, "pprof_sample_type": f"{typ}/{unit}",
               "pprof_sample_types": [f"{t}/{u}" for t, u in types], "unit": unit, "comments": comments},
    )


def _parse(cls: type, raw: bytes, name: str) -> Any:
    try:
        return cls.FromString(raw)
    except Exception as e:  # noqa: BLE001 - the protobuf runtime's DecodeError, or upb's own
        raise BadInput(f"{name}: not a pprof profile (protobuf decoding failed: {e})") from None


def _columns(cols: Any, vi: int, ntypes: int, locations: dict[int, tuple[Frame, ...]], ids_class: type,
             name: str) -> tuple[int, int, tuple[list[bytes], Any], list[int]] | None:
    """(samples, total weight, (distinct stacks' packed ids, all their ids), their weights) from the merged sample
    columns; None when the columns cannot be lined up with the samples (a sample whose ids are
    not one packed field: Go writes 1 or 2 ids unpacked), and the per-sample path must run."""
    blobs = list(cols.location_id)
    values = list(cols.value)
    n = len(blobs)
    if not n or len(values) != n * ntypes or _has_unknown_fields(cols):
        return None
    weights = values[vi::ntypes] if ntypes > 1 else values
    if min(weights) < 0:
        raise BadInput(f"{name}: pprof profile has negative sample values (a diff of two profiles?); "
                       "goflame reads plain profiles")
    # The one pass over every sample: sum the weights of each distinct stack's bytes.
    by_blob: dict[bytes, int] = {}
    get = by_blob.get
    for blob, w in zip(blobs, weights, strict=True):
        by_blob[blob] = get(blob, 0) + w
    del blobs
    stacks = [b for b, w in by_blob.items() if w]
    # (a sample may have an empty stack: its blob is b"", and its last byte b"" too)
    if max(map(itemgetter(slice(-1, None)), stacks), default=b"") >= b"\x80":
        raise BadInput(f"{name}: corrupt pprof profile (a sample's location ids end mid-varint)")
    # Every stack's ids in one parse: the blobs joined are one packed field, and a blob holds
    # as many ids as it has bytes without the varint continuation bit (each ends one, checked).
    joined = b"".join(stacks)
    ids = _parse(ids_class, b"\x0a" + encode_uvarint(len(joined)) + joined, name).id
    missing = set(ids).difference(locations)
    if missing:
        raise BadInput(f"{name}: corrupt pprof profile (a sample refers to location {min(missing)}, "
                       "which is not in the file)")
    return n - weights.count(0), sum(weights), (stacks, ids), [w for w in by_blob.values() if w]


def _stacks_by_weight(stacks: tuple[list[bytes], Any], weights: list[int], locations: dict[int, tuple[Frame, ...]],
                      name: str, max_depth: int, lines: bool) -> Stacks:
    """`_weighted_stacks`, with every stack deeper than `max_depth` frames cut to it."""
    return _weighted_stacks(stacks, weights, locations, name, lines).cut_deep(max_depth)


def _deep_stacks(stacks: tuple[list[bytes], Any], locations: dict[int, tuple[Frame, ...]], max_depth: int) -> int:
    """How many of the distinct stacks are deeper than `max_depth` frames: counted when the file
    is read (so the reader can say so), though they are cut only when aggregated. Real profiles
    never come near: a stack's bytes bound its ids, and that settles it without a look at any."""
    blobs, ids = stacks
    widest = max(map(len, locations.values()), default=1)
    if max(map(len, blobs), default=0) * widest <= max_depth:
        return 0
    nframes = {lid: len(fr) for lid, fr in locations.items()}.__getitem__
    flat = list(ids)
    deep = off = 0
    for blob in blobs:
        k = len(blob.translate(None, _CONTINUATION_BYTES))
        if k * widest > max_depth and sum(map(nframes, flat[off : off + k])) > max_depth:
            deep += 1
        off += k
    return deep


def _weighted_stacks(stacks: tuple[list[bytes], Any], weights: list[int], locations: dict[int, tuple[Frame, ...]],
                     name: str, lines: bool) -> Stacks:
    """`Profile.aggregate` (no threads, goroutines or states) over the weights of distinct stacks
    of packed location ids.

    Locations whose frames are alike once `lines` is applied are one (canonical) location; the
    ids of all stacks, in one flat list, are reversed once so that each stack reads root first.
    When every location is one frame (no inlining) a stack's key is built in C from its ids,
    and when no two locations are alike no two stacks merge: the counts are one dict(zip()).
    """
    table = FrameTable(lines)
    intern = table.intern
    frames = table.frames
    canon: dict[int, int] = {}
    canon_of: dict[tuple[int, ...], int] = {}
    root_first: list[tuple[int, ...]] = []  # canonical location -> its frames, root first
    for lid, fr in locations.items():
        key = tuple(intern(f) for f in fr)  # Line entries are innermost first
        c = canon_of.get(key)
        if c is None:
            c = canon_of[key] = len(root_first)
            root_first.append(key[::-1])
        canon[lid] = c
    single = all(len(k) == 1 for k in root_first)
    if single:
        canon = {lid: root_first[c][0] for lid, c in canon.items()}  # location -> its one frame
    blobs, ids = stacks
    flat = iter(list(ids)[::-1])  # every stack root first, the last stack first
    counts = list(map(len, map(bytes.translate, blobs, repeat(None), repeat(_CONTINUATION_BYTES))))
    counts.reverse()
    keys = map(tuple, map(map, repeat(canon.__getitem__), map(islice, repeat(flat), counts)))
    rweights = reversed(weights)
    try:
        if single and len(root_first) == len(canon):
            keys = list(keys)
            rweights = list(rweights)
            direct = dict(zip(keys, rweights, strict=True))
            if len(direct) == len(keys):  # else two encodings of one stack (not canonical varints)
                return Stacks(tuple(frames), direct)
        merged: dict[tuple[int, ...], int] = {}
        get = merged.get
        for k, w in zip(keys, rweights, strict=True):
            merged[k] = get(k, 0) + w
    except KeyError as e:
        raise BadInput(f"{name}: corrupt pprof profile (a sample refers to location {e.args[0]}, "
                       "which is not in the file)") from None
    if single:
        return Stacks(tuple(frames), merged)
    out: dict[tuple[int, ...], int] = {}
    get = out.get
    rf = root_first.__getitem__
    for k, w in merged.items():
        key = tuple(chain.from_iterable(map(rf, k)))
        out[key] = get(key, 0) + w
    return Stacks(tuple(frames), out)


_CONTINUATION_BYTES = bytes(range(0x80, 0x100))


def _has_unknown_fields(msg: Any) -> bool:
    """Fields the definition does not declare as sent (ids written unpacked arrive so)."""
    try:
        from google.protobuf import unknown_fields

        return len(unknown_fields.UnknownFieldSet(msg)) > 0
    except ImportError:  # pragma: no cover - protobuf < 4.22
        return True


def _samples(p: Any, cls: dict[str, type], locations: dict[int, tuple[Frame, ...]], s_: Callable[[int, str], str],
             vi: int, ntypes: int, name: str, max_depth: int) -> tuple[list[Sample], bool, int, int]:
    """The samples of a parsed ProfileIn, the labels seen, their weight and how many stacks were
    cut to `max_depth`; each distinct stack and label decoded once."""
    ids_cls, label_cls, sample_cls = cls["Ids"], cls["Label"], cls["Sample"]
    loc_frames = locations.__getitem__
    # Most locations hold one frame: a stack of them is one map over a dict, no chaining.
    single = {i: fr[0] for i, fr in locations.items() if len(fr) == 1}.__getitem__
    by_bytes: dict[bytes, tuple[Frame, ...]] = {}
    label_cache: dict[bytes, tuple[int, Any]] = {}
    labelled = False
    deep = 0

    def frames_of(ids: Any) -> tuple[Frame, ...]:
        try:
            fr = tuple(map(single, ids))
        except KeyError:
            try:
                fr = tuple(chain.from_iterable(map(loc_frames, ids)))
            except KeyError as e:
                raise BadInput(f"{name}: corrupt pprof profile (a sample refers to location {e.args[0]}, "
                               "which is not in the file)") from None
        if len(fr) > max_depth:
            nonlocal deep
            deep += 1
            fr = cut_deep(fr, max_depth)
        return fr

    def label(raw: bytes) -> tuple[int, Any]:
        """(0 goroutine | 1 thread | 2 state | 3 a string label (key, value) | 4 another, value):
        decoded once per distinct label."""
        nonlocal labelled
        lb = label_cls.FromString(raw)
        k = s_(lb.key, "label")
        if k == LABEL_GOROUTINE:
            out: tuple[int, int | str] = (0, lb.num)
        elif k == LABEL_THREAD:
            out = (1, lb.num)
        elif k == LABEL_STATE:
            out = (2, s_(lb.str, "label"))
        elif lb.str:  # a pprof label of the goroutine's (Go's own profiles carry them too)
            out = (3, (k, s_(lb.str, "label")))
        else:
            out = (4, 0)  # a numeric label of another kind: not kept
        labelled = labelled or out[0] < 3
        label_cache[raw] = out
        return out

    headers: dict[int, bytes] = {}

    def decode_stack(raw: bytes) -> tuple[Frame, ...]:
        n = len(raw)
        hdr = headers.get(n)
        if hdr is None:
            hdr = headers[n] = b"\x0a" + encode_uvarint(n)
        fr = by_bytes[raw] = frames_of(ids_cls.FromString(hdr + raw).id)
        return fr

    label_of = label_cache.get
    samples: list[Sample] = []
    append = samples.append
    stack_of = by_bytes.get
    total = 0
    # The per-sample loop: a long recording has millions of samples, so each step is as
    # cheap as it can be (a stack or a label set is decoded once, then found by its bytes).
    try:
        for s in p.sample:
            chunks = s.location_id
            if len(chunks) == 1:
                raw = chunks[0]
                fr = stack_of(raw) or decode_stack(raw)
            elif chunks:
                raw = b"".join(chunks)
                fr = stack_of(raw) or decode_stack(raw)
            else:  # ids written unpacked (Go does so for 1 or 2 of them), or none: decode the sample
                fr = frames_of(sample_cls.FromString(s.SerializeToString()).location_id)
            values = s.value
            if len(values) != ntypes:
                raise BadInput(f"{name}: corrupt pprof profile (a sample has {len(values)} values for "
                               f"{ntypes} sample types)")
            w = values[vi]
            if w <= 0:
                if w < 0:
                    raise BadInput(f"{name}: pprof profile has negative sample values (a diff of two profiles?); "
                                   "goflame reads plain profiles")
                continue
            total += w
            labels = s.label
            if labels:
                got: list[Any] = [0, 0, "", [], 0]
                for raw in labels:
                    t = label_of(raw) or label(raw)
                    if t[0] == 3:
                        got[3].append(t[1])
                    else:
                        got[t[0]] = t[1]
                append(Sample(0, got[0], got[1], got[2], fr, w, tuple(sorted(got[3]))))
            else:
                append(Sample(0, 0, 0, "", fr, w))
    except Exception as e:  # noqa: BLE001 - upb's DecodeError for a corrupt nested message
        if isinstance(e, GoflameError):
            raise
        raise BadInput(f"{name}: corrupt pprof profile (a sample does not decode: {e})") from None
    return samples, labelled, total, deep


def _kind_of(function: str, addr: int) -> FrameKind:
    """Synthetic frames written by goflame ("[chan receive]", "thread 7") have no address."""
    if addr == 0 and (function[:1] == "[" or function.startswith(("thread ", "goroutine ", "no thread",
                                                                   "no goroutine"))):
        from goflame.export.folded import frame_from_label

        return frame_from_label(function).kind
    return FrameKind.GO


def read_pprof(source: str | os.PathLike[str] | IO[bytes], name: str | None = None, *,
               sample_type: str | None = None, limits: Limits = DEFAULT_LIMITS) -> Profile:
    """Read a pprof file (see the module docstring); BadInput names what is wrong with it."""
    data, name = source_bytes(source, name, "<pprof>", limits)
    return decode_pprof(data, name, sample_type=sample_type, limits=limits)


__all__ = ["LABEL_GOROUTINE", "LABEL_STATE", "LABEL_THREAD", "decode_pprof", "encode_pprof", "profile_kind",
           "read_pprof", "write_pprof"]
