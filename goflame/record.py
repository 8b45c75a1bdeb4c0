"""`goflame record`: run the sampler against a pid or a launched command, stream the raw
recording to disk as it goes, and write the requested format at the end.

Stop paths all end the same way — everything sampled is written, the target is left as it
was (or already gone): the duration expires, the target exits, SIGINT, SIGTERM. If goflame
itself is killed, the raw recording on disk is intact up to its last flush (≤ 0.5 s).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from goflame import __version__
from goflame.errors import BadInput, GoflameError, OutputError, ProcessGone
from goflame.export import FORMATS, format_from_extension, write_profile
from goflame.profile import RecordingMeta, RecordingWriter, read_recording
from goflame.sampler import Sampler, SamplerConfig, SamplerStats
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


def _demote_to_sudo_user() -> Callable[[], None] | None:
    """Run a launched command as the user who invoked sudo, not as root."""
    uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    if os.geteuid() != 0 or not uid or not gid:
        return None
    u, g = int(uid), int(gid)

    def demote() -> None:
        os.setgroups([g])
        os.setgid(g)
        os.setuid(u)

    return demote


def launch(command: Sequence[str]) -> subprocess.Popen:
    try:
        return subprocess.Popen(list(command), preexec_fn=_demote_to_sudo_user(), process_group=0)
    except FileNotFoundError:
        raise BadInput(f"cannot run {command[0]!r}: no such file") from None
    except PermissionError:
        raise BadInput(f"cannot run {command[0]!r}: permission denied") from None
    except OSError as e:
        raise BadInput(f"cannot run {command[0]!r}: {e.strerror or e}") from None


def _attach_launched(child: subprocess.Popen) -> Target:
    """The child has exec'd; its Go runtime may still be starting: retry briefly."""
    deadline = time.monotonic() + 5.0
    while True:
        try:
            return Target(child.pid)
        except ProcessGone:
            raise
        except GoflameError:
            if child.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _finish_child(child: subprocess.Popen) -> int | None:
    """A launched command still running when recording ends is asked to stop (SIGINT, then SIGKILL)."""
    if child.poll() is None:
        try:
            os.kill(child.pid, signal.SIGINT)
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
        except ProcessLookupError:
            pass
    try:
        return child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return None


def record(opts: RecordOptions, *, on_status: Callable[[SamplerStats], None] | None = None,
           on_warning: Callable[[str], None] | None = None) -> RecordResult:
    if (opts.pid is None) == (not opts.command):
        raise BadInput("give either --pid PID or a command after --")
    if opts.duration is not None and opts.duration <= 0:
        raise BadInput("--duration must be positive")
    config = SamplerConfig(rate=opts.rate, idle=opts.idle, nonblocking=opts.nonblocking, native=opts.native,
                           engine=opts.engine)  # bad options fail before anything is launched
    child = None
    stop = {"flag": False, "signals": 0, "suspend": False}
    old_handlers = {}

    def on_suspend(_signum: int, _frame: object) -> None:
        stop["suspend"] = True  # acted on between ticks: see should_stop

    def on_signal(signum: int, _frame: object) -> None:
        stop["signals"] += 1
        if child is not None and child.poll() is None and stop["signals"] == 1:
            try:
                os.kill(child.pid, signum)  # forward; keep recording its shutdown until it exits
            except ProcessLookupError:
                pass
            if signum == signal.SIGINT:
                return
        stop["flag"] = True

    if opts.command:
        out, fmt = resolve_output(opts, 0) if opts.output else (None, None)
        child = launch(opts.command)
        pid = child.pid
        if out is None:
            out, fmt = resolve_output(opts, pid)
    else:
        pid = opts.pid
        out, fmt = resolve_output(opts, pid)
    for sig in (signal.SIGINT, signal.SIGTERM):
        old_handlers[sig] = signal.signal(sig, on_signal)
    old_handlers[signal.SIGTSTP] = signal.signal(signal.SIGTSTP, on_suspend)
    try:
        target = _attach_launched(child) if child is not None else Target(pid)
    except BaseException:
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        raise
    result = RecordResult(out, fmt, SamplerStats(), pid, None)
    raw_path = out if fmt == "goflame" else out + ".goflame"
    result.raw_path = raw_path
    meta = RecordingMeta(
        goflame_version=__version__, pid=pid, binary=target.exe_display, go_version=target.binary.go_version,
        mode="wall" if opts.idle else "cpu", rate_hz=opts.rate, start_time=time.time(),
        command=tuple(opts.command), extra={"nonblocking": opts.nonblocking, **({"native": True} if opts.native else {})},
    )
    warned = told_fallback = False
    try:
        with target:
            sampler = Sampler(target, config)
            sampler.choose_engine()  # a refused --engine perf fails here, before any file is made
            try:
                writer = RecordingWriter(raw_path, meta)
            except BaseException:
                sampler.close()
                raise
            try:
                def on_tick(st: SamplerStats) -> None:
                    nonlocal warned, told_fallback
                    writer.tick()
                    if st.fallback and not told_fallback:
                        told_fallback = True
                        msg = (f"{st.fallback}; sampling with ptrace instead, which stops each sampled "
                               f"thread for tens of µs")
                        result.warnings.append(msg)
                        if on_warning:
                            on_warning(msg)
                    behind = max(st.missed_s, st.max_lag_s)
                    if not warned and behind > LAG_WARNING_S:
                        warned = True
                        if st.engine == "perf":
                            msg = (f"the kernel lost {st.missed:,} samples ({behind:.1f} s of CPU time at "
                                   f"{opts.rate:g} Hz): goflame read its buffers too late; lower --rate")
                        else:
                            msg = (f"sampling fell {behind:.1f} s behind at {opts.rate:g} Hz ({st.missed:,} ticks "
                                   f"missed of {st.ticks + st.missed:,}): lower --rate or use --nonblocking; "
                                   f"missed ticks are counted, not invented")
                        result.warnings.append(msg)
                        if on_warning:
                            on_warning(msg)
                    if on_status:
                        on_status(st)

                def should_stop() -> bool:
                    if stop["flag"]:
                        return True
                    if stop["suspend"]:  # Ctrl-Z: no thread of the target may wait on a stopped goflame
                        stop["suspend"] = False
                        sampler.release()
                        writer.flush()
                        os.kill(os.getpid(), signal.SIGSTOP)  # until SIGCONT (fg); sampling goes on
                        if stop["flag"]:
                            return True
                    if child is not None and child.poll() is not None:
                        result.target_exited = True
                        return True
                    return False

                stats = sampler.run(writer.add_all, duration=opts.duration, should_stop=should_stop,
                                    on_tick=on_tick)
                if child is None and not target.proc.alive():
                    result.target_exited = True
                result.stats = stats
                writer.close(RecordingMeta(**{**meta.to_json(), "command": tuple(opts.command),
                                              "duration": stats.elapsed, "samples": stats.samples,
                                              "errors": stats.errors,
                                              "extra": {"nonblocking": opts.nonblocking, "missed_ticks": stats.missed,
                                                        "late_ticks": stats.late, "engine": stats.engine,
                                                        **({"perf_refused": stats.fallback} if stats.fallback else {}),
                                                        "achieved_rate_hz": round(stats.rate, 2),
                                                        **({"native": True} if opts.native else {})}}))
            except BaseException:
                writer.abandon() if hasattr(writer, "abandon") else None
                raise
        if fmt != "goflame":
            profile = read_recording(raw_path)
            write_profile(profile, fmt, out, lines=opts.lines, threads=opts.threads,
                          goroutines=opts.goroutines, inverted=opts.inverted, title=opts.title)
            if not opts.keep_raw:
                os.unlink(raw_path)
                result.raw_path = None
    finally:
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
        if child is not None:
            result.exit_status = _finish_child(child)
    return result
