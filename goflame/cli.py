"""goflame's command line: parse options, call the library, print. Nothing else lives here.

Every failure is one line on stderr and its documented exit code (goflame/errors.py, README):
a GoflameError its own code, a usage error 2, SIGINT 130, SIGTERM 143, and anything else —
an unexpected exception, MemoryError, a write to a full disk — 5, never a traceback and never
1, which only `diff` finding a regression may return. `run()` is the whole program;
goflame/_entry.py installs the signal handlers before importing this module.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from goflame import __version__
from goflame.errors import BadInput, GoflameError, Interrupted, OutputError


def _err(line: str) -> None:
    """One line on stderr, whatever the locale (stderr's own encoding, bad bytes escaped)."""
    try:
        click.echo(line.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"), err=True)
    except (OSError, UnicodeError):
        pass  # nowhere left to say it


def _warn(msg: str) -> None:
    _err(f"goflame: warning: {msg}")


def _silence_stdout() -> None:
    """After a failed write to stdout, what is still buffered goes nowhere: else Python's flush
    at exit fails again and prints a traceback-like "Exception ignored" and exits 120."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _out(text: str) -> None:
    """Text to stdout as UTF-8 bytes in every locale (LC_ALL=C, PYTHONIOENCODING=ascii): names
    read from non-UTF-8 bytes keep their bytes, as in goflame's output files."""
    buffer = getattr(sys.stdout, "buffer", None)
    try:
        if buffer is None:  # a replaced stdout (a test runner's): text is all it takes
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        sys.stdout.flush()
        buffer.write(text.encode("utf-8", "surrogateescape"))
        buffer.flush()
    except BrokenPipeError:
        raise
    except OSError as e:
        raise OutputError(f"cannot write to standard output: {e.strerror or e}") from None


def _exit_code_for(e: BaseException) -> int:
    """Say what went wrong in one line (if anything is to be said) and give the exit code."""
    if isinstance(e, GoflameError):
        _err(f"goflame: {e}")
        code = e.exit_code
    elif isinstance(e, Interrupted):
        from goflame._entry import ignore_signals

        ignore_signals()
        _err(f"goflame: {e.message}")
        return e.exit_code
    elif isinstance(e, KeyboardInterrupt):  # run without goflame's handlers (a library caller)
        _err("goflame: interrupted")
        return 130
    elif isinstance(e, BrokenPipeError):  # the reader went away (e.g. `| head`): not an error
        _silence_stdout()
        return 0
    elif isinstance(e, MemoryError):
        _err("goflame: out of memory (if an input is that large, try a machine with more memory)")
        code = 5
    else:
        detail = str(e).splitlines()[0][:300] if str(e) else ""
        _err(f"goflame: internal error: {type(e).__name__}: {detail} (please report)")
        code = 5
    if isinstance(e, OutputError):
        _silence_stdout()
    return code


def _parse_tags(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """--tag KEY=VALUE, repeatable: a sample must carry every one."""
    out = []
    for v in values:
        key, eq, value = v.partition("=")
        if not eq or not key:
            raise BadInput(f"--tag wants KEY=VALUE (a pprof label of the goroutines to keep), not {v!r}")
        out.append((key, value))
    return tuple(out)


def _tag_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE",
                        help="Keep only samples of goroutines with this pprof label (repeatable: all must match).")(fn)


def _label_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--label", "label_root", metavar="KEY",
                        help="Add a root frame KEY=value per value of this pprof label: one tower per "
                             "tenant, route or job (folded, SVG, speedscope).")(fn)


def reports_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn any failure of a command into one clear line and an exit code; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (SystemExit, click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BaseException as e:  # noqa: BLE001 - the point: nothing escapes as a traceback
            sys.exit(_exit_code_for(e))

    return wrapper


def run(argv: list[str] | None = None) -> int:
    """The command line with `argv` (default sys.argv[1:]): its exit code. Usage errors are one
    line too; standard output is flushed here, so that a full disk is reported (exit 5)
    instead of failing at interpreter exit."""
    try:
        rv = main.main(args=argv, prog_name="goflame", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    except click.exceptions.Abort:  # click's word for an interrupted prompt
        code = _exit_code_for(KeyboardInterrupt())
    except click.ClickException as e:
        hint = f" (see 'goflame {e.ctx.info_name} --help')" if getattr(e, "ctx", None) and e.ctx.parent else ""
        _err(f"goflame: {' '.join(e.format_message().split())}{hint}")
        code = e.exit_code
    except BaseException as e:  # noqa: BLE001 - while parsing: still one line
        code = _exit_code_for(e)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    except OSError as e:
        _silence_stdout()
        if code == 0:
            code = _exit_code_for(OutputError(f"cannot write to standard output: {e.strerror or e}"))
    return code


class _Finite(click.ParamType):
    """A finite number in [lo, hi] (lo itself excluded when `above`). click's FloatRange lets NaN
    through (every comparison with it is false): `-d nan` recorded forever, `-r nan` ended in a
    traceback."""

    name = "number"

    def __init__(self, lo: float, hi: float, *, above: bool = False) -> None:
        self.lo, self.hi, self.above = lo, hi, above

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not (math.isfinite(x) and (x > self.lo if self.above else x >= self.lo) and x <= self.hi):
            want = (f"above {self.lo:g}" if self.above else f"from {self.lo:g}") + (
                f" to {self.hi:g}" if math.isfinite(self.hi) else "")
            self.fail(f"must be a finite number {want}, not {value}", param, ctx)
        return x


_RATE = _Finite(1, 10_000)  # what the samplers accept
_SECONDS = _Finite(0, math.inf, above=True)


def _max_inflate_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    from goflame.inputs import INFLATE_FLOOR, INFLATE_RATIO, format_size

    return click.option(
        "--max-inflate", metavar="SIZE", envvar="GOFLAME_MAX_INFLATE",
        help=f"Most bytes a gzip'd input may inflate to, or a piped input may hold (e.g. 2G; none: no limit). "
             f"Default: {INFLATE_RATIO}x the compressed size, at least {format_size(INFLATE_FLOOR)}. "
             f"Env: GOFLAME_MAX_INFLATE.")(fn)


def _limits(max_inflate: str | None) -> Any:
    from goflame.inputs import Limits, parse_size

    return Limits(max_inflate=parse_size(max_inflate) if max_inflate else None)


def parse_address(value: str) -> int:
    try:
        return int(value, 0)
    except ValueError:
        try:
            return int(value, 16)
        except ValueError:
            raise BadInput(f"not an address: {value!r} (use hex like 0x4a1b20)") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="goflame")
def main() -> None:
    """Sampling profiler for running Go programs: exact goroutine stacks, flame graphs.

    \b
    Exit codes: 0 ok, 1 diff found a regression, 2 bad input or usage,
    3 target process gone, 4 not permitted to trace, 5 output or internal failure,
    130 interrupted (SIGINT), 143 terminated (SIGTERM).
    """


@main.command()
@click.argument("binary", type=click.Path(dir_okay=True, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--pc", "pcs", multiple=True, metavar="ADDR", help="Symbolize this address (repeatable).")
@reports_errors
def inspect(binary: str, as_json: bool, pcs: tuple[str, ...]) -> None:
    """Show what goflame knows about a Go BINARY (works on stripped binaries)."""
    from goflame.binary.describe import describe, render_text
    from goflame.binary.gobinary import GoBinary

    addresses = [parse_address(p) for p in pcs]
    with GoBinary(binary) as b:
        info = describe(b, addresses)
    if as_json:
        _out(json.dumps(info, indent=2) + "\n")
    else:
        _out(render_text(info) + "\n")


def _pid_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--pid", "-p", type=int, required=True, help="Process id of the Go program.")(fn)


@main.command()
@_pid_option
@click.option("--all-frames", is_flag=True,
              help="Keep runtime-internal frames and system goroutines (like GOTRACEBACK=system).")
@click.option("--json", "as_json", is_flag=True, help="Structured output: one JSON object.")
@click.option("--nonblocking", is_flag=True,
              help="Never pause the target: running goroutines show their last parked stack, marked stale.")
@click.option("--native", is_flag=True,
              help="Also unwind C frames (cgo, libc, vDSO) and stitch them into goroutine stacks.")
@click.option("--labels", is_flag=True,
              help="Print each goroutine's pprof labels after its state, as Go 1.26+ does with "
                   "GODEBUG=tracebacklabels=1 (--json always has them).")
@reports_errors
def dump(pid: int, all_frames: bool, as_json: bool, nonblocking: bool, native: bool, labels: bool) -> None:
    """Print every goroutine's stack in Go's own traceback format."""
    from goflame.dump import dump_goroutines

    _out(dump_goroutines(pid, all_frames=all_frames, as_json=as_json, nonblocking=nonblocking, native=native,
                         labels=labels))


@main.command()
@_pid_option
@click.option("--json", "as_json", is_flag=True, help="Structured output: one JSON object.")
@click.option("--top", "top_n", type=int, default=10, show_default=True,
              help="How many goroutine groups (by start function) to list.")
@click.option("--by-label", "label", metavar="KEY", help="Group goroutines by the value of this pprof label.")
@click.option("--growth", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Look again after SECONDS and list the groups that grew most (a leak grows).")
@reports_errors
def summary(pid: int, as_json: bool, top_n: int, label: str | None, growth: float | None) -> None:
    """Go version, Ps, Ms/threads and goroutines by state, wait reason and start function."""
    from goflame.dump import summarize

    _out(summarize(pid, as_json=as_json, top_n=top_n, label=label, growth_s=growth or 0.0))


def _format_choice() -> click.Choice:
    from goflame.export import FORMATS

    return click.Choice(sorted({"raw", *FORMATS}))


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--pid", "-p", type=int, help="Process id of a running Go program.")
@click.option("--rate", "-r", type=_RATE, default=100.0, show_default=True, help="Samples per second (1 to 10000).")
@click.option("--duration", "-d", type=_SECONDS,
              help="Seconds to record (default: until Ctrl-C or the target exits).")
@click.option("--output", "-o", type=str, help="Output file (default goflame-<pid>-<time>.svg).")
@click.option("--format", "-f", "fmt", type=_format_choice(), help="Output format (default: from -o's extension).")
@click.option("--idle", is_flag=True, help="Also sample goroutines off the CPU (wall-clock view; leaf = state).")
@click.option("--threads", is_flag=True, help="Add a root frame per thread.")
@click.option("--goroutines", is_flag=True, help="Add a root frame per goroutine id.")
@click.option("--nonblocking", is_flag=True,
              help="Never pause the target: running goroutines show their last saved stack (less accurate).")
@click.option("--lines", is_flag=True, help="Put file:line in each frame.")
@click.option("--inverted", is_flag=True, help="SVG: icicle graph (roots at the top).")
@click.option("--keep-raw", is_flag=True, help="Keep the streamed .goflame recording next to the output.")
@click.option("--native", is_flag=True,
              help="Also unwind C frames (cgo, libc, vDSO) and stitch them into goroutine stacks.")
@click.option("--engine", type=click.Choice(["auto", "perf", "ptrace"]), default="auto", show_default=True,
              help="How running threads are sampled: perf (the kernel samples them, nothing is stopped), "
                   "ptrace (paused for each sample), auto (perf where allowed, for CPU mode).")
@_label_option
@click.option("--samples", "-n", "samples", type=click.IntRange(min=1), metavar="N",
              help="Stop once N samples were taken (with -d: whichever comes first).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@reports_errors
def record(pid: int | None, rate: float, duration: float | None, output: str | None, fmt: str | None, idle: bool,
           threads: bool, goroutines: bool, nonblocking: bool, lines: bool, inverted: bool, keep_raw: bool,
           native: bool, engine: str, label_root: str | None, samples: int | None,
           command: tuple[str, ...]) -> None:
    """Record a flame graph of a running Go process (--pid) or of COMMAND (after --)."""
    from goflame.record import RecordOptions
    from goflame.record import record as run_record

    opts = RecordOptions(pid=pid, command=tuple(command), rate=rate, duration=duration, output=output, fmt=fmt,
                         idle=idle, threads=threads, goroutines=goroutines, nonblocking=nonblocking, lines=lines,
                         inverted=inverted, keep_raw=keep_raw, native=native, engine=engine, label_root=label_root,
                         samples=samples)
    tty = sys.stderr.isatty()
    last = [0.0]

    def status(st: Any) -> None:
        if tty and st.elapsed - last[0] >= 0.25:
            last[0] = st.elapsed
            click.echo(f"\rgoflame: {st.elapsed:6.1f} s  {st.samples:,} samples  {st.rate:5.0f} Hz  "
                       f"{st.errors:,} errors ", err=True, nl=False)

    def warn(msg: str) -> None:
        click.echo(("\n" if tty else "") + f"goflame: warning: {msg}", err=True)

    if nonblocking:
        warn("--nonblocking: running goroutines are sampled at their last saved context, "
             "so CPU time is attributed to where they last parked, not where they run")
    res = run_record(opts, on_status=status, on_warning=warn)
    if tty:
        click.echo("", err=True)
    st = res.stats
    pauses = sorted(st.pause_ns)
    median = f", median pause {pauses[len(pauses) // 2] / 1000:.0f} µs" if pauses else ""
    if st.busy:
        median += f", {st.busy:,} samples not taken: another tracer (a debugger?) held the thread"
    if st.missed and st.engine == "perf":
        median += f", {st.missed:,} samples lost by the kernel ({100 * st.missed / (st.samples + st.missed):.1f} %)"
    elif st.missed:
        median += f", {st.missed:,} ticks missed ({100 * st.missed / (st.ticks + st.missed):.1f} %)"
    cut = f", {res.truncated:,} truncated" if res.truncated else ""
    click.echo(f"Wrote {res.output}: {st.samples:,} samples, {st.errors:,} errors{cut}, {st.elapsed:.1f} s at "
               f"{st.rate:.0f} Hz ({st.engine}){median}" + (f"; raw recording kept in {res.raw_path}" if res.raw_path and
                                              res.raw_path != res.output else ""), err=True)
    if res.exit_status is not None:
        click.echo(f"goflame: {' '.join(command)} exited with status {res.exit_status}", err=True)
    elif res.target_end:
        click.echo(f"goflame: process {res.pid} {res.target_end}", err=True)


@main.command()
@click.argument("fmt", metavar="FORMAT", type=_format_choice())
@click.argument("input_path", metavar="INPUT", type=str)
@click.option("--output", "-o", type=str, help="Output file (default: standard output).")
@click.option("--lines", is_flag=True, help="Put file:line in each frame.")
@click.option("--threads", is_flag=True, help="Add a root frame per thread (raw recordings only).")
@click.option("--goroutines", is_flag=True, help="Add a root frame per goroutine (raw recordings only).")
@click.option("--inverted", is_flag=True, help="SVG: icicle graph.")
@click.option("--title", type=str, help="SVG title.")
@_tag_option
@_label_option
@_max_inflate_option
@reports_errors
def report(fmt: str, input_path: str, output: str | None, lines: bool, threads: bool, goroutines: bool,
           inverted: bool, title: str | None, tags: tuple[str, ...], label_root: str | None,
           max_inflate: str | None) -> None:
    """Convert a recording (raw, folded or pprof; detected by content) to FORMAT.

    INPUT may be a pipe or FIFO, e.g. <(zcat x.folded.gz).
    """
    from goflame.export import read_profile, write_profile

    profile = read_profile(input_path, limits=_limits(max_inflate))
    for note in profile.reading_notes(input_path):
        _warn(note)
    fmt = "goflame" if fmt == "raw" else fmt
    profile = profile.tagged(_parse_tags(tags))
    if label_root and fmt not in ("goflame", "pprof"):  # those keep the labels themselves
        profile = profile.rooted_by_label(label_root)
    write_profile(profile, fmt, output if output else sys.stdout, lines=lines, threads=threads,
                  goroutines=goroutines, inverted=inverted, title=title)
    if not profile.total_weight:
        _warn(f"{input_path} holds no samples: the {fmt} output is an empty profile")


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--pid", "-p", type=int, help="Process id of a running Go program.")
@click.option("--rate", "-r", type=_RATE, default=100.0, show_default=True, help="Samples per second (1 to 10000).")
@click.option("--idle", is_flag=True, help="Also sample goroutines off the CPU (their state is the leaf).")
@click.option("--nonblocking", is_flag=True,
              help="Never pause the target: running goroutines show their last saved stack (less accurate).")
@click.option("--delay", type=_SECONDS, default=1.0, show_default=True, help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Sample for --delay seconds, print one snapshot, exit.")
@click.option("--view", type=click.Choice(["functions", "goroutines"]), default="functions", show_default=True,
              help="View to start in (and to print when not on a terminal).")
@click.option("--lines", is_flag=True, help="Start with one row per source line instead of per function.")
@click.option("--filter", "filter_", default="", help="Show only rows containing this text (like the / key).")
@click.option("--native", is_flag=True, help="Also unwind C frames (cgo, libc, vDSO) into goroutine stacks.")
@click.option("--engine", type=click.Choice(["auto", "perf", "ptrace"]), default="auto", show_default=True,
              help="How running threads are sampled: perf (the kernel samples them, nothing is stopped), "
                   "ptrace (paused for each sample), auto (perf where allowed, for CPU mode).")
@click.option("--by-label", "group_label", metavar="KEY",
              help="Goroutines view: group goroutines by the value of this pprof label.")
@_tag_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@reports_errors
def top(pid: int | None, rate: float, idle: bool, nonblocking: bool, delay: float, once: bool, view: str,
        lines: bool, filter_: str, native: bool, engine: str, group_label: str | None, tags: tuple[str, ...],
        command: tuple[str, ...]) -> None:
    """Live view of the hottest functions and goroutine groups of --pid or COMMAND (after --).

    \b
    Keys: 1-4 sort, l lines, g goroutines, / filter, r reset, ? help, q quit.
    Not on a terminal (or --once): prints a plain-text snapshot every --delay seconds.
    """
    from goflame.top import TopOptions, run_top

    opts = TopOptions(pid=pid, command=tuple(command), rate=rate, idle=idle, nonblocking=nonblocking,
                      delay=delay, once=once, view=view, lines=lines, filter=filter_, native=native, engine=engine,
                      group_label=group_label, tags=_parse_tags(tags))
    res = run_top(opts, on_snapshot=lambda text: _out(text + "\n"),
                  on_warning=lambda msg: click.echo(f"goflame: warning: {msg}", err=True))
    if res.command_log:
        click.echo(f"goflame: output of {command[0]} is in {res.command_log}", err=True)
    if res.exit_status is not None and res.target_exited:
        click.echo(f"goflame: {' '.join(command)} exited with status {res.exit_status}", err=True)
    elif res.target_exited:
        click.echo(f"goflame: process {res.pid} exited", err=True)


@main.command()
@click.argument("base", metavar="BASE", type=str)
@click.argument("new", metavar="NEW", type=str)
@click.option("--output", "-o", type=str, help="Write a differential flame graph SVG (NEW's shape, red grew).")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text",
              show_default=True, help="Report on standard output (markdown: ready for a PR comment).")
@click.option("--fail-on", metavar="PCT", default="1", show_default=True,
              help="Fail when a function's total share grows by PCT percentage points or more (off: never).")
@click.option("--fail-on-self", metavar="PCT", default="1", show_default=True,
              help="Fail when a function's self share grows by PCT percentage points or more (off: never).")
@click.option("--confidence", type=float, default=0.99, show_default=True,
              help="Confidence that a flagged change is not sampling noise (for the whole report).")
@click.option("--min-samples", type=int, default=10, show_default=True,
              help="Judge only functions with at least N samples in BASE and NEW together.")
@click.option("--dispersion", type=float,
              help="Over-dispersion factor (default: measured, or 2.5 for pprof/folded).")
@click.option("--run-noise", type=float, default=None,
              help="Run-to-run spread of a function's relative cost, e.g. 0.05 for 5 % (default 0.05; 0: none).")
@click.option("--top", type=int, default=20, show_default=True, help="Rows in the text and markdown tables.")
@_tag_option
@_max_inflate_option
@reports_errors
def diff(base: str, new: str, output: str | None, fmt: str, fail_on: str, fail_on_self: str, confidence: float,
         min_samples: int, dispersion: float | None, run_noise: float | None, top: int, tags: tuple[str, ...],
         max_inflate: str | None) -> None:
    """Compare two profiles (raw, folded or pprof) and fail on a significant regression.

    \b
    Exit codes: 0 no significant regression over the thresholds, 1 regression(s) found,
    2 bad usage, unreadable or empty input, 5 output not written or an internal failure
    (130/143: interrupted). Only a regression is 1.
    """
    from goflame.diff import RENDERERS, DiffOptions, diff_files, parse_threshold, write_diff_svg

    opts = DiffOptions(fail_on=parse_threshold(fail_on, "--fail-on"),
                       fail_on_self=parse_threshold(fail_on_self, "--fail-on-self"),
                       confidence=confidence, min_samples=min_samples, dispersion=dispersion,
                       **({} if run_noise is None else {"run_noise": run_noise}))
    result, _, new_profile = diff_files(base, new, opts, limits=_limits(max_inflate), tags=_parse_tags(tags))
    for w in result.warnings:
        _warn(w)
    if output:
        write_diff_svg(result, new_profile, output)
    _out(RENDERERS[fmt](result, top))
    sys.exit(result.exit_code)


if __name__ == "__main__":  # pragma: no cover - `python -m goflame.cli`, as the tests run it
    from goflame._entry import main as _entry_main

    sys.exit(_entry_main())
