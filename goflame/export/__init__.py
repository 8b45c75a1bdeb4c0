"""Writers and readers of profile files, chosen by format name, file extension or content.

Writers are looked up lazily ("module:function") so that a format whose module is not there
(pprof, added separately) fails with one clear line instead of an ImportError at start-up.
To add a format: write `write_X(profile, out, **opts)` (and `read_X(stream, name, *, limits)
-> Profile`), then list it in FORMATS (and READERS with a content sniffer). Readers are chosen
by content, never by name: a `.svg` renamed to `.folded` is still refused for what it is.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import inspect
import io
import os
import secrets
import stat
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

from goflame.errors import BadInput, GoflameError, OutputError
from goflame.inputs import DEFAULT_LIMITS, Limits, open_input
from goflame.profile import Profile, is_recording


@dataclass(frozen=True, slots=True)
class Format:
    name: str
    extensions: tuple[str, ...]  # lower case, longest first where one ends another
    writer: str  # "module:function", imported on use
    binary: bool  # the writer takes a binary stream (or a path), not text
    description: str


FORMATS: Mapping[str, Format] = MappingProxyType({
    "svg": Format("svg", (".svg",), "goflame.export.svg:write_svg", False,
                  "interactive flame graph (open in a browser)"),
    "folded": Format("folded", (".folded", ".collapsed", ".folded.txt"), "goflame.export.folded:write_folded",
                     False, "collapsed stacks, one 'a;b;c count' line per stack (FlameGraph, inferno)"),
    "speedscope": Format("speedscope", (".speedscope.json", ".speedscope", ".json"),
                         "goflame.export.speedscope:write_speedscope", False, "speedscope JSON"),
    "goflame": Format("goflame", (".goflame",), "goflame.profile:write_recording", True,
                      "raw recording: every sample with time, thread, goroutine and state"),
    # Hook: goflame/export/pprof.py provides write_pprof(profile, binary_out, **opts).
    "pprof": Format("pprof", (".pb.gz", ".pprof", ".pb"), "goflame.export.pprof:write_pprof", True,
                    "pprof protobuf (go tool pprof)"),
})


@dataclass(frozen=True, slots=True)
class Reader:
    name: str
    sniff: Callable[[bytes], bool]  # given the first 4 KiB of the file
    reader: str  # "module:function" taking (binary stream, name, *, limits) and returning a Profile


def _is_gzip_or_protobuf(head: bytes) -> bool:
    # pprof files are gzip'd protobuf; an uncompressed one is a run of valid profile.proto
    # fields (Go writes time_nanos first, others sample_type): goflame.export.pprof checks.
    from goflame.export.pprof import looks_like_pprof

    return looks_like_pprof(head) and not _is_text(head)


_CONTROL = bytes(c for c in range(32) if c not in b"\t\n\r\f") + b"\x7f"


def _is_text(head: bytes) -> bool:
    """Line-oriented text: no NUL and hardly any control bytes (names need not be UTF-8)."""
    if b"\x00" in head:
        return False
    controls = len(head) - len(head.translate(None, _CONTROL))
    return controls * 100 <= len(head)


READERS: tuple[Reader, ...] = (
    Reader("goflame", is_recording, "goflame.profile:read_recording"),
    # Hook: goflame/export/pprof.py provides read_pprof(path) -> Profile.
    Reader("pprof", _is_gzip_or_protobuf, "goflame.export.pprof:read_pprof"),
    Reader("folded", _is_text, "goflame.export.folded:read_folded"),
)


def _resolve(spec: str, what: str) -> Callable[..., Any]:
    mod, _, fn = spec.partition(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError):
        raise BadInput(f"{what} is not supported by this goflame yet") from None


def format_from_extension(path: str | os.PathLike[str]) -> str:
    """The format a file name asks for (`out.speedscope.json` -> speedscope)."""
    name = Path(path).name.lower()
    best: tuple[int, str] | None = None
    for f in FORMATS.values():
        for ext in f.extensions:
            if name.endswith(ext) and (best is None or len(ext) > best[0]):
                best = (len(ext), f.name)
    if best is None:
        exts = ", ".join(e for f in FORMATS.values() for e in f.extensions)
        raise BadInput(f"cannot tell the output format from {Path(path).name!r}: use one of {exts} or --format")
    return best[1]


def write_profile(
    profile: Profile,
    fmt: str | None,
    out: str | os.PathLike[str] | IO[str] | IO[bytes],
    **opts: Any,
) -> None:
    """Write `profile` as `fmt` (None: from `out`'s extension) to a path or an open stream.

    A path is written atomically (`atomic_output`): a failure or a kill midway leaves any
    previous file as it was. Options a format does not take (e.g. `inverted` for folded) are
    ignored, so a caller can pass one set of options to every writer.
    """
    if fmt is None:
        if not isinstance(out, (str, os.PathLike)):
            raise BadInput("no output format given and no file name to guess it from")
        fmt = format_from_extension(out)
    f = FORMATS.get(fmt)
    if f is None:
        raise BadInput(f"unknown output format {fmt!r}: choose one of {', '.join(FORMATS)}")
    writer = _resolve(f.writer, f"{fmt} output")
    params = inspect.signature(writer).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        opts = {k: v for k, v in opts.items() if k in params}
    try:
        if isinstance(out, (str, os.PathLike)):
            with atomic_output(out, binary=f.binary) as fh:
                writer(profile, fh, **opts)
        elif f.binary:
            stream: Any = out.buffer if isinstance(out, io.TextIOBase) and hasattr(out, "buffer") else out
            if stream is not out:
                out.flush()
            writer(profile, stream, **opts)
            stream.flush()
        else:
            _write_text(writer, profile, out, opts)
    except GoflameError:
        raise
    except OSError as e:
        raise OutputError(f"cannot write {_stream_name(out)}: {e.strerror or e}") from None


def _stream_name(out: Any) -> str:
    if out is sys.stdout or getattr(out, "name", None) == "<stdout>":
        return "to standard output"
    return str(getattr(out, "name", out))


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, binary: bool) -> Iterator[IO[Any]]:
    """An output file that appears whole or not at all: written to a temporary file beside it
    and renamed over it on success; on any failure (a full disk, an exception, Ctrl-C) the
    temporary file is removed and a previous file is left as it was. Text is UTF-8 with
    surrogateescape (names from non-UTF-8 bytes keep their bytes), "\n" line ends.

    What is not a regular file (`/dev/stdout`, `/dev/full`, a FIFO) is written in place: there
    is nothing to replace, and a device node must never be renamed over.
    """
    try:
        st: os.stat_result | None = os.stat(path)  # through links: /dev/stdout -> a pipe
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    # A link to a regular file is replaced at the file; a link to a pipe or a device (whose
    # "real path" under /proc names no file) is written through as given.
    target = os.path.realpath(path) if st is None or stat.S_ISREG(st.st_mode) else os.fspath(path)
    text = {} if binary else {"encoding": "utf-8", "errors": "surrogateescape", "newline": "\n"}
    mode = "wb" if binary else "w"
    tmp = _temp_beside(target, path) if st is None or stat.S_ISREG(st.st_mode) else None
    if tmp is None:  # written in place
        try:
            with open(target if st is not None else path, mode, **text) as fh:
                yield fh
        except OSError as e:
            raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
        return
    fd, tmp_path = tmp
    try:
        with os.fdopen(fd, mode, **text) as fh:
            yield fh
        if st is not None:
            _keep_owner_and_mode(tmp_path, st)
        os.replace(tmp_path, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp_path)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
        raise


def _temp_beside(target: str, path: str | os.PathLike[str]) -> tuple[int, str] | None:
    """A new file in the target's directory (a rename within one file system is atomic), with
    the permissions a plain open would give; None where the directory refuses one but the
    file itself is there to be written in place."""
    folder, base = os.path.split(target)
    for _ in range(100):
        tmp = os.path.join(folder, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and os.access(target, os.W_OK):
                return None
            raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    raise OutputError(f"cannot write {path}: no free temporary name beside it")


def _keep_owner_and_mode(tmp: str, st: os.stat_result) -> None:
    """The replaced file's permissions (and, as root, its owner) carry over to the new one."""
    os.chmod(tmp, stat.S_IMODE(st.st_mode))
    if os.geteuid() == 0:
        with contextlib.suppress(OSError):
            os.chown(tmp, st.st_uid, st.st_gid)


def _write_text(writer: Callable[..., Any], profile: Profile, out: Any, opts: dict[str, Any]) -> None:
    """Text writers always emit UTF-8 (names from non-UTF-8 bytes keep their bytes)."""
    binary = out.buffer if isinstance(out, io.TextIOBase) and hasattr(out, "buffer") else out
    if isinstance(binary, io.TextIOBase):  # a StringIO or similar: no bytes underneath
        writer(profile, binary, **opts)
        return
    if binary is not out:
        out.flush()
    w = io.TextIOWrapper(binary, encoding="utf-8", errors="surrogateescape", newline="\n")
    try:
        writer(profile, w, **opts)
        w.flush()
    finally:
        w.detach()


def sniff_format(path: str | os.PathLike[str], *, limits: Limits = DEFAULT_LIMITS) -> str:
    """Which reader a file's content calls for; BadInput for what goflame cannot read."""
    name = str(path)
    with open_input(path, name, limits) as f:
        return _sniff(_head(f, name), name)


def _head(f: IO[bytes], name: str) -> bytes:
    try:
        return f.read(4096)
    except OSError as e:
        raise BadInput(f"cannot read {name}: {e.strerror or e}") from None


def _sniff(head: bytes, path: str) -> str:
    if not head:
        return "folded"  # an empty file is an empty folded profile: what one with no samples is written as
    if head.startswith(b"\x7fELF"):
        raise BadInput(f"{path}: an ELF program, not a profile (to profile it, use 'goflame record')")
    stripped = head.lstrip()
    if stripped[:9].lower().startswith((b"<?xml", b"<svg", b"<!doctype", b"<html")):
        raise BadInput(f"{path}: looks like XML/SVG, not a profile goflame can read")
    if stripped.startswith((b"{", b"[")) and b'"' in stripped[:256]:
        raise BadInput(f"{path}: looks like JSON (speedscope?), not a profile goflame can read")
    for r in READERS:
        if r.sniff(head):
            return r.name
    raise BadInput(f"{path}: not a goflame recording, folded stacks or pprof profile")


def read_profile(path: str | os.PathLike[str], *, limits: Limits = DEFAULT_LIMITS) -> Profile:
    """Read a recording, folded stacks or pprof, by content, within `limits` (goflame.inputs).

    A pipe or FIFO works like a file (it is read once, into memory). What the reader had to
    cut (a recording cut short, stacks too deep) is in `Profile.reading_notes(name)`.
    """
    name = str(path)
    with open_input(path, name, limits) as f:
        fmt = _sniff(_head(f, name), name)
        f.seek(0)
        r = next(r for r in READERS if r.name == fmt)
        return _resolve(r.reader, f"reading {fmt} input")(f, name, limits=limits)


__all__ = ["FORMATS", "READERS", "Format", "Reader", "atomic_output", "format_from_extension", "read_profile",
           "sniff_format", "write_profile"]
