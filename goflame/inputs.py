"""Bounded reading of profile inputs: regular files, pipes, FIFOs, and what gzip may inflate to.

Every reader of a profile file (raw recording, folded, pprof) comes through here, so that no
input can make goflame hang or grow without bound:

* A FIFO is opened without blocking (`open()` of a FIFO with no writer waits forever), given
  `FIFO_GRACE_S` for a writer to come, then read like any stream; with no writer at all it is
  one line and exit 2 ("is empty"). A pipe from process substitution (`<(zcat x.folded)`) has
  its writer from the start and is read as it comes.
* A stream (pipe, FIFO, character device) cannot be read twice, so it is read into memory once,
  up to the inflate cap; a regular file is read by its reader as before.
* Decompressed (and streamed) data is capped: by default `INFLATE_RATIO` times the compressed
  size, and never below `INFLATE_FLOOR`. Real pprof files inflate 2-5x (Go's own, goflame's);
  a gzip bomb inflates ~1000x (a 4 MB file to 4 GiB), which used to take all the memory there
  was. `Limits.max_inflate` (`--max-inflate` / `GOFLAME_MAX_INFLATE`) sets the cap instead.
* Stacks deeper than `MAX_DEPTH` frames are cut to that depth by every reader (see
  `cut_deep`): a 100 MB folded line of 25 million frames would take ~8 GB as frame objects,
  and Go's own tools keep far fewer (the runtime's pprof keeps 64-128 frames, tracebacks 100).
"""

from __future__ import annotations

import io
import os
import re
import select
import stat
import sys
import time
from dataclasses import dataclass
from typing import IO, BinaryIO

from goflame.errors import BadInput
from goflame.frame import Frame, FrameKind

INFLATE_RATIO = 32  # default cap: this many times the compressed size ...
INFLATE_FLOOR = 256 << 20  # ... and never less than this (a pipe counts as 0 compressed bytes)
UNLIMITED = sys.maxsize
MAX_DEPTH = 4096  # frames kept of a deeper stack: the innermost MAX_DEPTH - 1 and a marker
FIFO_GRACE_S = 1.0  # how long a FIFO with no writer is given for one to open it
_POLL_MS = 100  # the longest wait for input between looks at pending signals
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on what reading one input may cost; the defaults suit every real profile seen."""

    max_inflate: int | None = None  # bytes; None: INFLATE_RATIO x compressed size, >= INFLATE_FLOOR
    max_depth: int = MAX_DEPTH

    def inflate_cap(self, compressed: int) -> int:
        """The most bytes an input of `compressed` bytes may inflate (or stream) to."""
        if self.max_inflate is not None:
            return self.max_inflate
        return max(INFLATE_FLOOR, INFLATE_RATIO * compressed)


DEFAULT_LIMITS = Limits()

_SIZE_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?b?)", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'512M', '2G', '1.5GiB', '1000000' -> bytes (K/M/G/T are powers of 1024); 'none' -> no cap."""
    t = text.strip().lower()
    if t in ("none", "off", "unlimited"):
        return UNLIMITED
    m = _SIZE_RE.fullmatch(t)
    if not m:
        raise BadInput(f"not a size: {text!r} (use bytes, or a number with K, M, G or T, e.g. 2G; or 'none')")
    n = float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " ")
    if n < 1 or n > UNLIMITED:
        raise BadInput(f"size {text!r} is out of range (at least one byte)")
    return int(n)


def format_size(n: int) -> str:
    """Bytes as a short human figure: 256 MiB, 4.0 GiB, 512 bytes."""
    if n >= UNLIMITED:
        return "no limit"
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            v = n / (1 << shift)
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n:,} bytes"


def too_big(name: str, what: str, cap: int) -> BadInput:
    """The one line for an input over its cap (decompressed or streamed)."""
    return BadInput(f"{name}: {what} more than {format_size(cap)}, goflame's limit for this input "
                    "(raise it with --max-inflate SIZE or GOFLAME_MAX_INFLATE)")


def open_input(path: str | os.PathLike[str], name: str, limits: Limits = DEFAULT_LIMITS) -> BinaryIO:
    """A binary stream of the input: the file itself when regular, else all of it in memory
    (bounded by the cap). Never blocks on a FIFO that has no writer; BadInput for what
    cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise BadInput(f"cannot read {name}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise BadInput(f"cannot read {name}: it is a directory")
        if stat.S_ISREG(st.st_mode):
            os.set_blocking(fd, True)
            f = os.fdopen(fd, "rb")
            fd = -1
            return f
        return io.BytesIO(_read_stream(fd, name, limits, fifo=stat.S_ISFIFO(st.st_mode)))
    except OSError as e:
        raise BadInput(f"cannot read {name}: {e.strerror or e}") from None
    finally:
        if fd >= 0:
            os.close(fd)


def read_input(path: str | os.PathLike[str], name: str, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """All the bytes of an input (see `open_input`)."""
    with open_input(path, name, limits) as f:
        try:
            return f.read()
        except OSError as e:
            raise BadInput(f"cannot read {name}: {e.strerror or e}") from None


def source_bytes(source: str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes], name: str | None,
                 default_name: str, limits: Limits = DEFAULT_LIMITS) -> tuple[bytes, str]:
    """A reader's input as bytes, and the name to give it in messages: `source` is a path (read
    within the caps), the bytes themselves, or an open binary stream."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), name or default_name
    if isinstance(source, (str, os.PathLike)):
        name = name or str(source)
        return read_input(source, name, limits), name
    name = name or getattr(source, "name", default_name)
    try:
        return source.read(), name
    except OSError as e:
        raise BadInput(f"cannot read {name}: {e.strerror or e}") from None


def _read_stream(fd: int, name: str, limits: Limits, *, fifo: bool) -> bytes:
    """A pipe, FIFO or device, read to its end within the cap. The fd stays non-blocking and
    waits are polls of at most _POLL_MS: a signal that lands just before a blocking read would
    only be acted on once the read returned, and a silent writer would make that never (Ctrl-C
    must work while goflame waits for input).

    A FIFO read with no writer connected is at its end at once, so an empty first read waits up
    to FIFO_GRACE_S for a writer: one that comes, writes or not, and goes is a stream like any
    other; none at all is an error, not an empty profile."""
    cap = limits.inflate_cap(0)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    parts: list[bytes] = []
    total = 0
    waiting_for_writer = fifo
    deadline = time.monotonic() + FIFO_GRACE_S
    while total <= cap:
        try:
            b = os.read(fd, min(_CHUNK, cap + 1 - total))
        except BlockingIOError:  # a writer, no data yet
            waiting_for_writer = False
            poller.poll(_POLL_MS)
            continue
        if b:
            waiting_for_writer = False
            parts.append(b)
            total += len(b)
            continue
        if not waiting_for_writer:
            return b"".join(parts)
        # Linux reports no event on a FIFO until a writer has opened it (then POLLIN or POLLHUP)
        if poller.poll(_POLL_MS):
            waiting_for_writer = False
        elif time.monotonic() >= deadline:
            raise BadInput(f"{name}: is empty: a FIFO that no program writes to (none opened it within "
                           f"{FIFO_GRACE_S:g} s)")
    raise too_big(name, "is a stream of", cap)


def cut_deep(frames: tuple[Frame, ...], max_depth: int = MAX_DEPTH) -> tuple[Frame, ...]:
    """A stack (innermost first) deeper than `max_depth` frames, cut to that depth: the innermost
    frames (where the time is spent, as pprof keeps them) and a marker where the rest was."""
    if len(frames) <= max_depth:
        return frames
    return (*frames[: max_depth - 1], deep_marker(max_depth))


def deep_marker(max_depth: int = MAX_DEPTH) -> Frame:
    """Where a cut stack's outer frames were (an UNKNOWN frame, as folded text reads it back)."""
    return Frame(f"[truncated: deeper than {max_depth} frames]", kind=FrameKind.UNKNOWN)


__all__ = ["DEFAULT_LIMITS", "FIFO_GRACE_S", "INFLATE_FLOOR", "INFLATE_RATIO", "MAX_DEPTH",
           "UNLIMITED", "Limits", "cut_deep", "deep_marker", "format_size", "open_input", "parse_size",
           "read_input", "source_bytes", "too_big"]
