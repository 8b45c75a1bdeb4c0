"""Every pprof label of every goroutine, read out of a live Go process's memory.

Go code tags work with runtime/pprof labels (`pprof.Do`, `SetGoroutineLabels`); a goroutine
started under labels inherits them. The runtime keeps a goroutine's current labels behind
one pointer, `g.labels`, which `RuntimeReader` already hands out as `Goroutine.labels`.
This module turns that pointer into a `Labels` mapping, for parked and running goroutines
alike, without stopping anything.

What the pointer leads to depends on the release (`Layout.label_store`, parsed by
scripts/gen_layouts.py from each release's runtime/pprof/label.go):

- `map` (Go <= 1.23): a `labelMap` variable, i.e. a map[string]string, i.e. a pointer to
  the runtime's classic hash map header (`hash<string,string>` in DWARF): count, flags, B,
  hash0, buckets, oldbuckets, nevacuate. Buckets hold 8 tophash bytes, 8 keys, 8 values and
  an overflow pointer. `WithLabels` fills a fresh map and publishes it; it is never written
  again, so a map whose growth was under way when the last key went in stays
  half-evacuated for good. The entries are therefore collected the way the runtime's own
  iterator (`mapiternext` in runtime/map.go) finds them: a new bucket whose old bucket is
  not yet evacuated is read from the old bucket instead (each such old bucket once: the
  iterator reads it for both of its new halves, keeping the keys whose hash goes there),
  and cells marked empty or evacuated are skipped. The number found must equal `count`.
- `list` (Go 1.24+): a `labelMap` struct embedding a LabelSet (1.26+: `label.Set`) whose
  slice of {key, value string} is sorted by key (pprof.Labels sorts and dedupes,
  mergeLabelSets merges in order); the order is checked.

The process runs while we read, so everything read is validated: pointers (user space,
aligned where the allocator aligns), counts, lengths and sizes against `LabelCaps`, bucket
counts against the entry count, overflow chains against cycles and their length, and the
entries found against the count the map claims. A store that fails any check yields no
labels for its goroutines and one counted `LabelError`; nothing raises but a process-level
failure of the memory reader itself (the process is gone, reading is not permitted).

Reads are batched (`read_many`): one round per level of indirection across all the label
sets asked for at once, so a dump of 10,000 labelled goroutines costs a handful of
`process_vm_readv` calls. Decoded sets are cached by the `g.labels` pointer, which is sound
because a published label set is immutable, for as long as its memory cannot have been
freed and reused: an object that a goroutine references cannot be freed before a GC cycle
that begins after it is dropped, and every cycle stops the world twice. The runtime counts
those stops (`sched.stwTotalTimeGC`, Go 1.22+), so while that count stands still a cached
set is returned without reading anything. After it moves, a map is kept only if its header
(address, random hash seed `hash0`, count, buckets) is unchanged; a list is decoded again.
Releases without the counter (1.19, 1.21) check the map header on every read.

Keys and values are Go strings: arbitrary bytes. They are decoded as UTF-8 with
`surrogateescape`, so bytes that are not UTF-8 survive: `s.encode("utf-8", "surrogateescape")`
gives back exactly the bytes the program set (`Labels.raw()` does it for a whole set).
"""

from __future__ import annotations

import contextlib
import enum
import gc
import operator
import struct
from collections import Counter, OrderedDict
from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, Sequence, ValuesView
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from goflame.binary.layout import Layout, LayoutFieldMissing
from goflame.errors import UnsupportedGoVersion
from goflame.runtime import _Fields

if TYPE_CHECKING:
    from goflame.runtime import Goroutine, RuntimeReader

# User-space addresses on x86-64 (Go's heap and binary sit far below 2^47); the first page
# is never mapped.
_MIN_ADDR = 0x1000
_MAX_ADDR = 1 << 47
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"
_U64 = struct.Struct("<Q")
_STRING = struct.Struct("<QQ")  # a Go string header on amd64: data pointer, length
_SLICE = struct.Struct("<QQQ")  # a Go slice header on amd64: array, len, cap
_LABEL = struct.Struct("<QQQQ")  # a label: key and value string headers
_BATCH_BYTES = 16 << 20  # the most one read_many call asks for


class LabelStore(enum.Enum):
    """What g.labels points at (runtime/pprof/label.go's labelMap)."""

    MAP = "map"  # *map[string]string: the classic hash map (Go <= 1.23)
    LIST = "list"  # *struct{LabelSet}: a slice of {key, value} sorted by key (Go 1.24+)


class LabelError(enum.Enum):
    """Why a label set read out of a running process was rejected (and counted)."""

    BAD_POINTER = "a pointer outside user space or misaligned"
    UNREADABLE = "memory that cannot be read"
    TOO_MANY = "more labels than LabelCaps.max_labels"
    TOO_LONG = "a key or value, or all of them, longer than the caps"
    BAD_MAP = "a hash map whose header, marks or entry count do not add up"
    BAD_CHAIN = "an overflow chain that cycles or outgrows the map"
    BAD_LIST = "a label slice with len > cap or keys out of order"


@dataclass(frozen=True)
class LabelCaps:
    """Limits on what one goroutine's labels may be; anything beyond is torn or absurd.

    Real label sets are a handful of short strings; the caps leave room for generous ones
    (hundreds of keys, values of a megabyte) while bounding what a torn length can make us
    read: at most max_total bytes of strings and 2 * max_labels buckets per set.
    """

    max_labels: int = 1024
    max_string: int = 1 << 20
    max_total: int = 4 << 20


class Labels(Mapping[str, str]):
    """One goroutine's pprof labels: an immutable, hashable mapping, ordered by key bytes
    (the order Go 1.24+ keeps them in and `debug=1` profiles print them in)."""

    __slots__ = ("_map",)  # a dump makes one per distinct label set: 10,000s

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        pairs = list(items)
        if len(pairs) > 1:
            if "".join(k for k, _ in pairs).isascii():  # str order is byte order only for ASCII
                pairs.sort(key=operator.itemgetter(0))
            else:
                pairs.sort(key=lambda kv: kv[0].encode(_ENCODING, _ERRORS))
        self._map = dict(pairs)

    @classmethod
    def _in_order(cls, pairs: Iterable[tuple[str, str]]) -> Labels:
        """Labels of pairs already sorted by key bytes, without sorting them again."""
        self = object.__new__(cls)
        self._map = dict(pairs)
        return self

    def __getitem__(self, key: str) -> str:
        return self._map[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    # The dict's own (read-only) views and lookups: Mapping's generic ones go through
    # __getitem__ once per key, and a dump walks 10,000s of sets.
    def __contains__(self, key: object) -> bool:
        return key in self._map

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return self._map.get(key, default)

    def keys(self) -> KeysView[str]:
        return self._map.keys()

    def values(self) -> ValuesView[str]:
        return self._map.values()

    def items(self) -> ItemsView[str, str]:
        return self._map.items()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Labels):
            return self._map == other._map
        if isinstance(other, Mapping):
            return self._map == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self._map.items()))

    def __repr__(self) -> str:
        return f"Labels({self._map!r})"

    def raw(self) -> dict[bytes, bytes]:
        """The exact bytes of every key and value, as the Go program set them."""
        return {k.encode(_ENCODING, _ERRORS): v.encode(_ENCODING, _ERRORS) for k, v in self._map.items()}


EMPTY = Labels()


class BatchMemory(Protocol):
    """What the reader needs of a target's memory (ProcessMemory has it): every (address,
    size) request answered, None for the ones that cannot be read."""

    def read_many(self, requests: Sequence[tuple[int, int]]) -> list[bytes | None]: ...


@dataclass
class LabelStats:
    """Running totals of one LabelReader (mutable: the reader adds to it on every read)."""

    decoded: int = 0  # label sets decoded from memory
    cache_hits: int = 0  # label sets returned from the cache without reading them
    revalidated: int = 0  # cached maps whose header was read and found unchanged
    mid_growth: int = 0  # maps decoded while half-evacuated (oldbuckets != nil)
    batches: int = 0  # read_many calls
    errors: Counter[LabelError] = field(default_factory=Counter)


class _Reject(Exception):
    """A label set failed a check; carries the reason. Never leaves this module."""

    def __init__(self, why: LabelError) -> None:
        super().__init__(why.value)
        self.why = why


def _check_ptr(p: int, align: int = 8) -> None:
    if not (_MIN_ADDR <= p < _MAX_ADDR) or p % align:
        raise _Reject(LabelError.BAD_POINTER)


# _Entry and _Job: slots, since a dump of 10,000 labelled goroutines makes one of each per set.
@dataclass(slots=True)
class _Entry:
    labels: Labels
    epoch: int | None
    fingerprint: tuple[int, ...] | None  # the map header it was decoded from (MAP store)
    size: int  # bytes of keys and values, for the cache's bound


@dataclass(slots=True)
class _Job:
    """One label set being decoded: where it is, what has been learnt, what is wrong."""

    ptr: int
    fingerprint: tuple[int, ...] | None = None
    strings: list[tuple[int, int]] = field(default_factory=list)  # key, value, key, value, ...
    size: int = 0  # bytes of all keys and values
    count: int = 0  # MAP: entries the header claims
    seen: set[int] = field(default_factory=set)  # MAP: addresses of the buckets visited
    overflows: int = 0  # MAP: overflow buckets visited
    pending: list[int] = field(default_factory=list)  # MAP: overflow buckets to read next
    error: LabelError | None = None
    result: Labels | None = None  # known without reading further: empty, or a cache hit
    hit: bool = False  # result is the cached set, its header found unchanged


# Map header fields, in the order _MapShape.header unpacks them.
_HMAP_FIELDS = {"count": "count", "flags": "flags", "B": "B", "hash0": "hash0", "buckets": "buckets",
                "oldbuckets": "oldbuckets", "nevacuate": "nevacuate"}
_HMAP_ORDER = tuple(_HMAP_FIELDS)


class _MapShape:
    """Offsets and constants of map[string]string in one release (Go <= 1.23)."""

    def __init__(self, layout: Layout) -> None:
        hdr = _Fields(layout, _HMAP_FIELDS, "hash<string,string>")
        missing = [k for k in _HMAP_FIELDS if not hdr.has(k)]
        if missing:
            raise LayoutFieldMissing(f"hash<string,string> lacks {missing} in the Go {layout.version} layout")
        self.header_size = hdr.size
        self.header = hdr.reader(_HMAP_ORDER)
        b = layout.struct("bucket<string,string>")
        self.bucket_size = b.size
        self.tophash = b.offset("tophash")
        self.keys = b.offset("keys")
        self.values = b.offset("values")
        self.overflow = b.offset("overflow")
        c = layout.map_consts
        try:
            self.slots = 1 << c["bucketCntBits"]
            self.empty_one, self.evac_x, self.evac_y = c["emptyOne"], c["evacuatedX"], c["evacuatedY"]
            self.evac_empty, self.min_top = c["evacuatedEmpty"], c["minTopHash"]
            self.same_size, self.writing = c["sameSizeGrow"], c["hashWriting"]
        except KeyError as e:
            raise LayoutFieldMissing(f"the Go {layout.version} table has no hash map constant {e}") from None
        self.evacuated = frozenset((self.evac_x, self.evac_y, self.evac_empty))
        self.cells = struct.Struct(f"<{2 * self.slots}Q")  # the string headers of a bucket's keys or values
        self.stable_flags = self.same_size | self.writing
        if self.keys + self.slots * _STRING.size > self.values or \
                self.values + self.slots * _STRING.size > self.overflow:
            raise LayoutFieldMissing(f"bucket<string,string> of Go {layout.version} does not hold 8 strings")


class _ListShape:
    """Offsets of labelMap and its label elements in one release (Go 1.24+)."""

    def __init__(self, layout: Layout) -> None:
        lm = layout.struct("runtime/pprof.labelMap")
        name = next((n for n in ("List", "list") if n in lm.fields), None)
        if name is None:
            raise LayoutFieldMissing(f"runtime/pprof.labelMap of Go {layout.version} holds no label slice")
        self.map_size = lm.size
        self.slice = lm.offset(f"{name}.array")
        if (lm.offset(f"{name}.len"), lm.offset(f"{name}.cap")) != (self.slice + 8, self.slice + 16):
            raise LayoutFieldMissing(f"the label slice of Go {layout.version} is not {{array, len, cap}}")
        elem = layout.struct(lm.fields[name].type.removeprefix("[]"))
        key = next(n for n in ("Key", "key") if n in elem.fields)
        value = next(n for n in ("Value", "value") if n in elem.fields)
        self.elem_size = elem.size
        self.key, self.value = elem.offset(key), elem.offset(value)
        self.packed = (self.elem_size, self.key, self.value) == (_LABEL.size, 0, _STRING.size)


class LabelReader:
    """Decodes `g.labels` pointers of one process into `Labels`; reusable across samples.

    `read(pointers)` answers a batch; `of(goroutines)` is the same keyed by goroutine id.
    Each distinct pointer is decoded once per batch and then cached (see the module doc for
    when a cached set is trusted); the cache keeps at most `cache_entries` sets and
    `cache_bytes` bytes of keys and values, evicting the least recently used.
    """

    def __init__(self, memory: BatchMemory, layout: Layout, *, sched_addr: int | None = None,
                 caps: LabelCaps = LabelCaps(), cache_entries: int = 100_000, cache_bytes: int = 64 << 20):
        if layout.ptr_size != 8:
            raise UnsupportedGoVersion("goflame reads pprof labels of 64-bit targets only")
        try:
            self.store = LabelStore(layout.label_store)
        except ValueError:
            raise UnsupportedGoVersion(
                f"goflame does not know how Go {layout.version} stores pprof labels") from None
        self.mem = memory
        self.caps = caps
        self.stats = LabelStats()
        self._map = _MapShape(layout) if self.store is LabelStore.MAP else None
        self._list = _ListShape(layout) if self.store is LabelStore.LIST else None
        self._epoch_at: tuple[int, int] | None = None
        if sched_addr and layout.has("schedt", "stwTotalTimeGC"):
            f = layout.field("schedt", "stwTotalTimeGC")
            self._epoch_at = (sched_addr + f.offset, f.size - f.size % 8)
        self._cache: OrderedDict[int, _Entry] = OrderedDict()
        self._cache_entries, self._cache_bytes, self._cached_bytes = cache_entries, cache_bytes, 0
        self.last_failed: dict[int, LabelError] = {}

    @classmethod
    def for_runtime(cls, rt: RuntimeReader, **kwargs: object) -> LabelReader:
        """The reader for the process and binary a RuntimeReader reads."""
        return cls(rt.mem, rt.layout, sched_addr=rt.addr.get("runtime.sched"), **kwargs)  # type: ignore[arg-type]

    @property
    def errors(self) -> Counter[LabelError]:
        return self.stats.errors

    def of(self, goroutines: Iterable[Goroutine]) -> dict[int, Labels]:
        """Labels of each goroutine, by goroutine id (EMPTY where it has none or they do not
        decode; see `last_failed`)."""
        gs = list(goroutines)
        by_ptr = self.read(g.labels for g in gs)
        return {g.goid: by_ptr[g.labels] for g in gs}

    def read(self, pointers: Iterable[int]) -> dict[int, Labels]:
        """Labels behind each `g.labels` pointer (0: none). A set that fails a check maps to
        EMPTY, is counted in `errors` and is listed in `last_failed` until the next read."""
        out: dict[int, Labels] = {}
        todo: list[int] = []
        epoch = self._epoch()
        for p in set(pointers):
            if p == 0:
                out[0] = EMPTY
                continue
            e = self._cache.get(p)
            if e is not None and epoch is not None and e.epoch == epoch:
                self._cache.move_to_end(p)
                self.stats.cache_hits += 1
                out[p] = e.labels
            else:
                todo.append(p)
        self.last_failed = {}
        if todo:
            with _collector_paused():
                out.update(self._decode([_Job(p) for p in todo], epoch))
        return out

    # -- decoding ------------------------------------------------------------------------------

    def _decode(self, jobs: list[_Job], epoch: int | None) -> dict[int, Labels]:
        if self.store is LabelStore.MAP:
            self._map_headers(jobs, epoch)
            self._map_buckets([j for j in jobs if j.result is None and j.error is None])
        else:
            self._list_headers(jobs)
        live = [j for j in jobs if j.result is None and j.error is None]
        texts = self._strings(live)
        out: dict[int, Labels] = {}
        for j in jobs:
            if j.result is not None:
                out[j.ptr] = j.result
                if not j.hit:
                    self.stats.decoded += 1
                    self._remember(j, j.result, epoch)
                continue
            if j.error is None:
                try:
                    labels = self._labels(j, texts)
                except _Reject as r:
                    j.error = r.why
                else:
                    out[j.ptr] = labels
                    self.stats.decoded += 1
                    self._remember(j, labels, epoch)
                    continue
            out[j.ptr] = EMPTY
            self.stats.errors[j.error] += 1
            self.last_failed[j.ptr] = j.error
            self._forget(j.ptr)
        return out

    def _read(self, requests: list[tuple[int, int]]) -> list[bytes | None]:
        """read_many, in calls of at most _BATCH_BYTES: torn sets may each ask for up to the
        caps, and the memory reader allocates one buffer for a whole call."""
        out: list[bytes | None] = []
        start, total = 0, 0
        for i, (_, n) in enumerate(requests):
            if total + n > _BATCH_BYTES and i > start:
                out += self.mem.read_many(requests[start:i])
                self.stats.batches += 1
                start, total = i, 0
            total += n
        if start < len(requests):
            out += self.mem.read_many(requests[start:])
            self.stats.batches += 1
        return out

    def _epoch(self) -> int | None:
        """The runtime's count of GC stop-the-worlds (None where it has none or it cannot be
        read): while it stands still, no memory a goroutine referenced can have been reused."""
        if self._epoch_at is None:
            return None
        (raw,) = self._read([self._epoch_at])
        if raw is None:
            return None
        return sum(struct.unpack(f"<{len(raw) // 8}Q", raw))

    def _list_headers(self, jobs: list[_Job]) -> None:
        """LIST: labelMap -> (array, len, cap) -> the label elements -> their strings."""
        shape = self._list
        assert shape is not None
        live = _valid_pointers(jobs)
        arrays: list[tuple[_Job, int, int]] = []
        for j, raw in zip(live, self._read([(j.ptr, shape.map_size) for j in live]), strict=True):
            if raw is None:
                j.error = LabelError.UNREADABLE
                continue
            arr, n, cap = _SLICE.unpack_from(raw, shape.slice)
            if n > cap:
                j.error = LabelError.BAD_LIST
            elif n > self.caps.max_labels:
                j.error = LabelError.TOO_MANY
            elif n == 0:
                j.result = EMPTY
            elif not (_MIN_ADDR <= arr < _MAX_ADDR and arr % 8 == 0):
                j.error = LabelError.BAD_POINTER
            else:
                arrays.append((j, arr, n))
        got = self._read([(arr, n * shape.elem_size) for _, arr, n in arrays])
        for (j, _, n), raw in zip(arrays, got, strict=True):
            if raw is None:
                j.error = LabelError.UNREADABLE
                continue
            if shape.packed:  # {key, value string}: string headers key, value, key, value, ...
                j.strings = list(_STRING.iter_unpack(raw))
                continue
            for i in range(n):
                base = i * shape.elem_size
                j.strings.append(_STRING.unpack_from(raw, base + shape.key))
                j.strings.append(_STRING.unpack_from(raw, base + shape.value))

    def _map_headers(self, jobs: list[_Job], epoch: int | None) -> None:
        """MAP: the labelMap variable -> the map header; a cached map whose header is
        unchanged is done here."""
        live = _valid_pointers(jobs)
        hmaps: list[tuple[_Job, int]] = []
        for j, raw in zip(live, self._read([(j.ptr, 8) for j in live]), strict=True):
            if raw is None:
                j.error = LabelError.UNREADABLE
                continue
            (h,) = _U64.unpack(raw)
            if h == 0:
                j.result = EMPTY  # a nil map: no labels
            elif _MIN_ADDR <= h < _MAX_ADDR and h % 8 == 0:
                hmaps.append((j, h))
            else:
                j.error = LabelError.BAD_POINTER
        shape = self._map
        assert shape is not None
        got = self._read([(h, shape.header_size) for _, h in hmaps])
        for (j, h), raw in zip(hmaps, got, strict=True):
            if raw is None:
                j.error = LabelError.UNREADABLE
                continue
            count, flags, b, hash0, buckets, old, nevacuate = shape.header(raw)
            # The iterator bits of flags change whenever the program ranges over the map
            # (pprof.ForLabels); the rest of the header never changes once published.
            j.fingerprint = (h, count, flags & shape.stable_flags, b, hash0, buckets, old, nevacuate)
            cached = self._cache.get(j.ptr)
            if cached is not None and cached.fingerprint == j.fingerprint:
                cached.epoch = epoch
                self._cache.move_to_end(j.ptr)
                self.stats.revalidated += 1
                j.result, j.hit = cached.labels, True
                continue
            try:
                self._check_header(j)
            except _Reject as r:
                j.error = r.why

    def _check_header(self, j: _Job) -> None:
        shape = self._map
        assert shape is not None and j.fingerprint is not None
        _, count, flags, b, _, buckets, old, nevacuate = j.fingerprint
        if count > self.caps.max_labels:
            raise _Reject(LabelError.TOO_MANY)
        # Built by inserts and never shrunk, a map has no more buckets than entries
        # (makemap sizes for the hint, growth doubles at 6.5 per bucket).
        if flags & shape.writing or b > 30 or (1 << b) > max(1, count):
            raise _Reject(LabelError.BAD_MAP)
        if count == 0:
            j.result = EMPTY
            return
        _check_ptr(buckets)
        if old:
            _check_ptr(old)
            n_old = (1 << b) if flags & shape.same_size else (1 << b) >> 1
            if n_old == 0 or nevacuate >= n_old:  # all evacuated: growWork drops oldbuckets
                raise _Reject(LabelError.BAD_MAP)
        j.count = count

    def _map_buckets(self, jobs: list[_Job]) -> None:
        """MAP: the bucket arrays (new, and old while growing), then overflow chains level
        by level, collecting entries the way mapiternext finds them."""
        shape = self._map
        assert shape is not None
        requests: list[tuple[int, int]] = []
        for j in jobs:
            assert j.fingerprint is not None
            _, _, flags, b, _, buckets, old, _ = j.fingerprint
            requests.append((buckets, (1 << b) * shape.bucket_size))
            n_old = ((1 << b) if flags & shape.same_size else (1 << b) >> 1) if old else 0
            requests.append((old, n_old * shape.bucket_size))
        got = self._read([r for r in requests if r[1]])
        it = iter(got)
        for j, (_, old_size) in zip(jobs, requests[1::2], strict=True):
            new_raw, old_raw = next(it), (next(it) if old_size else b"")
            if new_raw is None or old_raw is None:
                j.error = LabelError.UNREADABLE
                continue
            if old_size:
                self.stats.mid_growth += 1
            try:
                self._start_chains(j, new_raw, old_raw)
            except _Reject as r:
                j.error = r.why
        self._follow_overflow([j for j in jobs if j.error is None])
        for j in jobs:
            if j.error is None and len(j.strings) != 2 * j.count:
                j.error = LabelError.BAD_MAP

    def _start_chains(self, j: _Job, new: bytes, old: bytes) -> None:
        """The head bucket of every chain the iterator would read: new bucket i, unless its
        old bucket is not yet evacuated, in which case that old bucket (once, for both of the
        new buckets it splits into)."""
        shape = self._map
        assert shape is not None and j.fingerprint is not None
        size = shape.bucket_size
        n_new = len(new) // size
        n_old = len(old) // size
        *_, new_at, old_at, nevacuate = j.fingerprint
        if not n_old:
            for i in range(n_new):
                self._bucket(j, new, i * size, new_at + i * size)
            return
        for i in range(n_new):
            if n_old:
                o = i & (n_old - 1)
                evacuated = old[o * size + shape.tophash] in shape.evacuated
                if o < nevacuate and not evacuated:
                    raise _Reject(LabelError.BAD_MAP)  # growWork evacuates in order up to nevacuate
                if not evacuated:
                    if i == o:
                        self._bucket(j, old, o * size, old_at + o * size)
                    continue
            self._bucket(j, new, i * size, new_at + i * size)

    def _bucket(self, j: _Job, buf: bytes, base: int, addr: int) -> None:
        """The live cells of the bucket at `addr`, and its overflow bucket for the next round."""
        shape = self._map
        assert shape is not None
        j.seen.add(addr)
        tophash = base + shape.tophash
        tops = buf[tophash:tophash + shape.slots]
        if shape.evac_x in tops or shape.evac_y in tops:
            # evacuatedX/Y: only in an evacuated old bucket, which is never read.
            raise _Reject(LabelError.BAD_MAP)
        min_top = shape.min_top
        live = [i for i, top in enumerate(tops) if top >= min_top]
        if live:
            keys = shape.cells.unpack_from(buf, base + shape.keys)  # address, length, address, ...
            values = shape.cells.unpack_from(buf, base + shape.values)
            strings = j.strings
            for i in live:
                strings += ((keys[2 * i], keys[2 * i + 1]), (values[2 * i], values[2 * i + 1]))
        (nxt,) = _U64.unpack_from(buf, base + shape.overflow)
        if nxt:
            _check_ptr(nxt)
            # Without deletes every overflow bucket holds an entry: no more of them than entries.
            j.overflows += 1
            if nxt in j.seen or j.overflows > j.count:
                raise _Reject(LabelError.BAD_CHAIN)
            j.seen.add(nxt)
            j.pending.append(nxt)
        if len(j.strings) > 2 * j.count:
            raise _Reject(LabelError.BAD_MAP)

    def _follow_overflow(self, jobs: list[_Job]) -> None:
        shape = self._map
        assert shape is not None
        while jobs:  # each round reads a new bucket of some chain; _bucket bounds them
            wanted = [(j, p) for j in jobs for p in j.pending]
            for j in jobs:
                j.pending = []
            got = self._read([(p, shape.bucket_size) for _, p in wanted])
            for (j, addr), raw in zip(wanted, got, strict=True):
                if j.error is not None:
                    continue
                if raw is None:
                    j.error = LabelError.UNREADABLE
                    continue
                _guard([j], lambda j, raw=raw, addr=addr: self._bucket(j, raw, 0, addr))
            jobs = [j for j in jobs if j.error is None and j.pending]

    def _strings(self, jobs: list[_Job]) -> dict[tuple[int, int], str]:
        """Every key and value of `jobs`, read in one batch (each distinct string once),
        keyed by its (address, length) header; empty strings map to "" without a read. A
        job with a string that is too long, or whose pointer is not in user space, fails."""
        caps = self.caps
        wanted: dict[tuple[int, int], None] = {}
        for j in jobs:
            lengths = [n for _, n in j.strings]
            total = sum(lengths)
            if total > caps.max_total or (total > caps.max_string and max(lengths) > caps.max_string):
                j.error = LabelError.TOO_LONG
            else:
                j.size = total
                wanted.update(dict.fromkeys(j.strings))
        texts: dict[tuple[int, int], str] = {}
        bad: set[tuple[int, int]] = set()
        keys: list[tuple[int, int]] = []
        for k in wanted:
            addr, n = k
            if not n:
                texts[k] = ""
            elif _MIN_ADDR <= addr and addr + n <= _MAX_ADDR:
                keys.append(k)
            else:
                bad.add(k)
        for k, raw in zip(keys, self._read(keys), strict=True):
            if raw is not None:
                texts[k] = raw.decode(_ENCODING, _ERRORS)
        if bad:
            for j in jobs:
                if j.error is None and not bad.isdisjoint(j.strings):
                    j.error = LabelError.BAD_POINTER
        return texts

    def _labels(self, j: _Job, texts: dict[tuple[int, int], str]) -> Labels:
        try:
            words = list(map(texts.__getitem__, j.strings))
        except KeyError:
            raise _Reject(LabelError.UNREADABLE) from None
        keys = words[0::2]
        pairs = zip(keys, words[1::2], strict=False)  # even by construction: key, value, ...
        if self.store is LabelStore.LIST:
            if not _ascending(keys):
                raise _Reject(LabelError.BAD_LIST)  # pprof keeps them sorted, without duplicates
            return Labels._in_order(pairs)
        if "".join(keys).isascii():  # str order is byte order for ASCII
            labels = Labels._in_order(sorted(pairs))
        else:
            labels = Labels._in_order(sorted(pairs, key=lambda kv: kv[0].encode(_ENCODING, _ERRORS)))
        if len(labels) != len(keys):
            raise _Reject(LabelError.BAD_MAP)  # a map cannot hold a key twice
        return labels

    # -- the cache -----------------------------------------------------------------------------

    def _remember(self, j: _Job, labels: Labels, epoch: int | None) -> None:
        size = j.size
        self._forget(j.ptr)
        if self.store is LabelStore.LIST and epoch is None:
            return  # nothing would ever tell us the memory was reused
        self._cache[j.ptr] = _Entry(labels, epoch, j.fingerprint, size)
        self._cached_bytes += size
        while self._cache and (len(self._cache) > self._cache_entries or self._cached_bytes > self._cache_bytes):
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= old.size

    def _forget(self, ptr: int) -> None:
        old = self._cache.pop(ptr, None)
        if old is not None:
            self._cached_bytes -= old.size


def _ascending(keys: list[str]) -> bool:
    """Whether keys are strictly ascending as bytes (Go's string order)."""
    if len(keys) < 2:
        return True
    if "".join(keys).isascii():  # str order is byte order only for ASCII
        return all(map(operator.lt, keys, keys[1:]))
    raw = [k.encode(_ENCODING, _ERRORS) for k in keys]
    return all(map(operator.lt, raw, raw[1:]))


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while label sets are decoded. Decoding makes
    ~10 small containers per set and no reference cycle, so the collector has nothing to
    find in them; but their count triggers its passes, and beside a dump's stacks a full
    pass costs as much as decoding 10,000 sets (measured: 183 ms of CPU with it, 102 ms
    without, Go 1.27 `-bulk 10000`). Counted garbage is still freed at once."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _valid_pointers(jobs: list[_Job]) -> list[_Job]:
    """The jobs whose g.labels pointer is in user space and aligned; the rest fail."""
    live = []
    for j in jobs:
        if _MIN_ADDR <= j.ptr < _MAX_ADDR and not j.ptr % 8:
            live.append(j)
        else:
            j.error = LabelError.BAD_POINTER
    return live


def _guard(jobs: list[_Job], check) -> None:  # noqa: ANN001 - a one-job callable
    """Run `check(job)` on each job not yet failed, recording a _Reject as its error."""
    for j in jobs:
        if j.error is None:
            try:
                check(j)
            except _Reject as r:
                j.error = r.why


__all__ = ["EMPTY", "BatchMemory", "LabelCaps", "LabelError", "LabelReader", "LabelStats", "LabelStore",
           "Labels"]
