"""`goflame record`: run the sampler against a pid or a launched command, stream the raw
recording to disk as it goes, and write the requested format at the end.

Stop paths all end the same way — everything sampled is written, the target is left as it
was (or already gone): the duration expires, the target exits or exec's another program,
SIGINT, SIGTERM. If goflame itself is killed, the raw recording on disk is intact up to its
last flush (≤ 0.5 s); if sampling fails, the error names the raw recording and the command
that converts it.
"""

from __future__ import annotations

import math
import os
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from goflame import __version__
from goflame.errors import BadInput, GoflameError, OutputError
from goflame.export import FORMATS, format_from_extension, write_profile
from goflame.lifecycle import Watch, attach_launched, finish_child, launch
from goflame.profile import RecordingMeta, RecordingWriter, Sample, read_recording
from goflame.sampler import Sampler, SamplerConfig, SamplerStats, TargetEnd
from goflame.target import Target

LAG_WARNING_S = 1.0


@dataclass(frozen=True, slots=True)
class RecordOptions:
    pid: int | None = None
    command: tuple[str, ...] = ()
    rate: float = 100.0
    duration: float | None = None
    output: str | None = None
    fmt: str | None = None
    idle: bool = False
    threads: bool = False
    goroutines: bool = False
    nonblocking: bool = False
    lines: bool = False
    inverted: bool = False
    keep_raw: bool = False
    title: str | None = None
    native: bool = False  # C frames too (cgo, libc, vDSO), stitched into goroutine stacks
    engine: str = "auto"  # how running threads are sampled: see SamplerConfig.engine
    label_root: str | None = None  # a root frame KEY=value per value of this pprof label
    samples: int | None = None  # stop once this many samples were taken


@dataclass(slots=True)
class RecordResult:
    output: str
    fmt: str
    stats: SamplerStats
    pid: int
    raw_path: str | None
    exit_status: int | None = None  # the launched command's exit status
    target_exited: bool = False
    warnings: list[str] = field(default_factory=list)
    truncated: int = 0  # samples whose walk stopped short: in the profile, under a [truncated: ...] root

    @property
    def target_end(self) -> str:
        """How the target ended the recording, in words ("" if it did not)."""
        if self.stats.end is not TargetEnd.RUNNING:
            return self.stats.end.value
        return TargetEnd.EXITED.value if self.target_exited else ""


def resolve_output(opts: RecordOptions, pid: int) -> tuple[str, str]:
    fmt = opts.fmt
    if fmt == "raw":
        fmt = "goflame"
    out = opts.output
    if out is None:
        ext = {"svg": ".svg", "folded": ".folded", "speedscope": ".speedscope.json", "goflame": ".goflame",
               "pprof": ".pb.gz"}.get(fmt or "svg", ".svg")
        out = f"goflame-{pid}-{time.strftime('%Y%m%d-%H%M%S')}{ext}"
    if fmt is None:
        fmt = format_from_extension(out)
    if fmt not in FORMATS:
        raise BadInput(f"unknown format {opts.fmt!r}: choose svg, folded, speedscope, raw" +
                       (", pprof" if "pprof" in FORMATS else ""))
    parent = Path(out).resolve().parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {out}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (Path(out).exists() and not os.access(out, os.W_OK)):
        raise OutputError(f"cannot write {out}: permission denied")
    return out, fmt


def record(opts: RecordOptions, *, on_status: Callable[[SamplerStats], None] | None = None,
           on_warning: Callable[[str], None] | None = None) -> RecordResult:
    if (opts.pid is None) == (not opts.command):
        raise BadInput("give either --pid PID or a command after --")
    if opts.duration is not None and not (math.isfinite(opts.duration) and opts.duration > 0):
        raise BadInput("--duration must be a positive number of seconds")
    if opts.samples is not None and opts.samples <= 0:
        raise BadInput("--samples must be a positive number")
    config = SamplerConfig(rate=opts.rate, idle=opts.idle, nonblocking=opts.nonblocking, native=opts.native,
                           engine=opts.engine)  # bad options fail before anything is launched
    watch = Watch()
    result: RecordResult | None = None
    with watch.handlers():  # from before the launch: a SIGTERM then still finishes the child
        try:
            if opts.command:
                out, fmt = resolve_output(opts, 0) if opts.output else (None, None)
                watch.child = launch(opts.command)
                pid = watch.child.pid
                if out is None:
                    out, fmt = resolve_output(opts, pid)
            else:
                assert opts.pid is not None
                pid = opts.pid
                out, fmt = resolve_output(opts, pid)
            assert out is not None and fmt is not None
            result = RecordResult(out, fmt, SamplerStats(), pid, out if fmt == "goflame" else _raw_beside(out, pid))
            target = attach_launched(watch.child) if watch.child is not None else Target(pid)
            with target:
                _sample_to_raw(target, config, opts, watch, result, on_status, on_warning)
        finally:
            if watch.child is not None:
                status = finish_child(watch.child)
                if result is not None:
                    result.exit_status = status
    if fmt != "goflame":
        _convert(opts, result, on_warning)
    return result


def _raw_beside(out: str, pid: int) -> str:
    """Where the raw recording streams while the output is still to come: next to the output
    (OUTPUT.goflame), or in the temporary directory when the output is no regular file
    (/dev/stdout, a pipe)."""
    try:
        regular = stat.S_ISREG(os.stat(out).st_mode)
    except FileNotFoundError:
        regular = True
    except OSError:
        regular = False
    if regular:
        return out + ".goflame"
    return os.path.join(tempfile.gettempdir(), f"goflame-{pid}-{time.strftime('%Y%m%d-%H%M%S')}.goflame")


def _meta(opts: RecordOptions, pid: int, target: Target) -> RecordingMeta:
    return RecordingMeta(
        goflame_version=__version__, pid=pid, binary=target.exe_display, go_version=target.binary.go_version,
        mode="wall" if opts.idle else "cpu", rate_hz=opts.rate, start_time=time.time(),
        command=tuple(opts.command), extra={"nonblocking": opts.nonblocking, **({"native": True} if opts.native else {})},
    )


def _final_meta(meta: RecordingMeta, opts: RecordOptions, stats: SamplerStats) -> RecordingMeta:
    extra = {"nonblocking": opts.nonblocking, "missed_ticks": stats.missed, "skipped_ticks": stats.skipped,
             "late_ticks": stats.late,
             "engine": stats.engine, **({"perf_refused": stats.fallback} if stats.fallback else {}),
             "achieved_rate_hz": round(stats.rate, 2), "monotonic_zero_ns": stats.zero_ns,
             **({"native": True} if opts.native else {}),
             **({"busy": stats.busy} if stats.busy else {}),
             **({"target_end": stats.end.name.lower()} if stats.end is not TargetEnd.RUNNING else {})}
    return RecordingMeta(**{**meta.to_json(), "command": tuple(opts.command), "duration": stats.elapsed,
                            "samples": stats.samples, "errors": stats.errors, "extra": extra})


def _sample_to_raw(target: Target, config: SamplerConfig, opts: RecordOptions, watch: Watch, result: RecordResult,
                   on_status: Callable[[SamplerStats], None] | None, on_warning: Callable[[str], None] | None) -> None:
    """Sample until told to stop, streaming into the raw recording; on a failure the error
    names the recording (what was sampled is in it) and how to convert it."""
    sampler = Sampler(target, config)
    raw_path = result.raw_path
    assert raw_path is not None
    try:
        sampler.choose_engine()  # a refused --engine perf fails here, before any file is made
        writer = RecordingWriter(raw_path, _meta(opts, result.pid, target))
    except BaseException:
        sampler.close()
        raise
    meta = writer.meta
    warnings = _Warnings(opts, result, on_warning)

    def on_tick(st: SamplerStats) -> None:
        writer.tick()
        warnings.check(st)
        if on_status:
            on_status(st)

    try:
        enough = opts.samples

        def should_stop() -> bool:
            return watch.should_stop() or (enough is not None and sampler.stats.samples >= enough)

        def add(samples: list[Sample]) -> None:
            result.truncated += sum(1 for s in samples if s.frames and s.frames[-1].function.startswith("[truncated"))
            writer.add_all(samples)

        stats = sampler.run(add, duration=opts.duration, should_stop=should_stop, on_tick=on_tick)
    except BaseException as e:
        kept = _keep_what_was_sampled(writer)
        if kept and isinstance(e, GoflameError):
            raise type(e)(f"{e}; the {kept:,} samples taken are in {raw_path} "
                          f"(convert with: goflame report svg {raw_path} -o out.svg)") from None
        if not kept:
            _unlink(raw_path)
        raise
    if watch.child is None and not target.proc.alive():
        result.target_exited = True
    elif watch.child is not None and watch.child.poll() is not None:
        result.target_exited = True
    result.stats = stats
    writer.close(_final_meta(meta, opts, stats))


def _keep_what_was_sampled(writer: RecordingWriter) -> int:
    """Flush what the writer holds (no end record: the file says it was cut); its samples."""
    try:
        writer.abandon()
    except OutputError:
        pass
    return writer.samples_written


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _convert(opts: RecordOptions, result: RecordResult, on_warning: Callable[[str], None] | None) -> None:
    """The requested format from the raw recording, which then goes unless --keep-raw."""
    raw_path = result.raw_path
    assert raw_path is not None
    profile = read_recording(raw_path)
    if opts.label_root and result.fmt != "pprof":  # pprof keeps the labels themselves (-tagroot)
        profile = profile.rooted_by_label(opts.label_root)
    for note in profile.reading_notes(raw_path):
        result.warnings.append(note)
        if on_warning:
            on_warning(note)
    write_profile(profile, result.fmt, result.output, lines=opts.lines, threads=opts.threads,
                  goroutines=opts.goroutines, inverted=opts.inverted, title=opts.title)
    if not opts.keep_raw:
        os.unlink(raw_path)
        result.raw_path = None


class _Warnings:
    """The warnings a recording gives once: perf refused (fallback), sampling fell behind."""

    def __init__(self, opts: RecordOptions, result: RecordResult, on_warning: Callable[[str], None] | None) -> None:
        self.opts = opts
        self.result = result
        self.on_warning = on_warning
        self.told_fallback = False
        self.told_lag = False

    def _say(self, msg: str) -> None:
        self.result.warnings.append(msg)
        if self.on_warning:
            self.on_warning(msg)

    def check(self, st: SamplerStats) -> None:
        if st.fallback and not self.told_fallback:
            self.told_fallback = True
            self._say(f"{st.fallback}; sampling with ptrace instead, which stops each sampled thread for "
                      f"tens of µs")
        behind = max(st.missed_s, st.max_lag_s)
        if not self.told_lag and behind > LAG_WARNING_S:
            self.told_lag = True
            rate = self.opts.rate
            if st.engine == "perf":
                self._say(f"the kernel lost {st.missed:,} samples ({behind:.1f} s of CPU time at {rate:g} Hz): "
                          f"goflame read its buffers too late; lower --rate")
            else:
                self._say(f"sampling fell {behind:.1f} s behind at {rate:g} Hz ({st.missed:,} ticks missed of "
                          f"{st.ticks + st.missed:,}): lower --rate or use --nonblocking; missed ticks are "
                          f"counted, not invented")
