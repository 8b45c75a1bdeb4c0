"""goflame's command line: parse options, call the library, print. Nothing else lives here.

Every GoflameError becomes one line on stderr and its documented exit code (goflame/errors.py).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import click

from goflame import __version__
from goflame.errors import BadInput, GoflameError


def _fail(msg: str, code: int) -> None:
    click.echo(f"goflame: {msg}", err=True)
    sys.exit(code)


def reports_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one clear line and an exit code; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GoflameError as e:
            _fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except BrokenPipeError:
            sys.stderr.close()  # the reader went away (e.g. `| head`): not an error
            sys.exit(0)

    return wrapper


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
    3 target process gone, 4 not permitted to trace, 5 output or internal failure.
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
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(render_text(info))


def _pid_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--pid", "-p", type=int, required=True, help="Process id of the Go program.")(fn)


@main.command()
@_pid_option
@click.option("--all-frames", is_flag=True,
              help="Keep runtime-internal frames and system goroutines (like GOTRACEBACK=system).")
@click.option("--json", "as_json", is_flag=True, help="Structured output: one JSON object.")
@click.option("--nonblocking", is_flag=True,
              help="Never pause the target: running goroutines show their last parked stack, marked stale.")
@reports_errors
def dump(pid: int, all_frames: bool, as_json: bool, nonblocking: bool) -> None:
    """Print every goroutine's stack in Go's own traceback format."""
    from goflame.dump import dump_goroutines

    click.echo(dump_goroutines(pid, all_frames=all_frames, as_json=as_json, nonblocking=nonblocking), nl=False)


@main.command()
@_pid_option
@click.option("--json", "as_json", is_flag=True, help="Structured output: one JSON object.")
@click.option("--top", "top_n", type=int, default=10, show_default=True,
              help="How many goroutine groups (by start function) to list.")
@reports_errors
def summary(pid: int, as_json: bool, top_n: int) -> None:
    """Go version, Ps, Ms/threads and goroutines by state, wait reason and start function."""
    from goflame.dump import summarize

    click.echo(summarize(pid, as_json=as_json, top_n=top_n), nl=False)


if __name__ == "__main__":  # pragma: no cover
    main()
