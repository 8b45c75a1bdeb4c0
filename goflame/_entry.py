"""The `goflame` console entry point: signal handlers first, everything else after.

Importing click and goflame's commands takes tens of milliseconds; a SIGINT in that time used
to end in a KeyboardInterrupt traceback, and a SIGTERM killed goflame without a word. So this
module imports nothing of goflame but its exceptions, installs SIGINT and SIGTERM handlers that
raise `Interrupted` / `Terminated` (one line, exit 130 / 143), and only then imports the
command line. `goflame record` and `goflame top` put their own handlers in place while they
sample (to stop and write what they have) and put these back after. Library modules install
no handlers: only running goflame as a program does.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

from goflame.errors import Interrupted, Terminated


def _raise(signum: int, _frame: FrameType | None) -> None:
    raise Terminated() if signum == signal.SIGTERM else Interrupted()


def install_handlers() -> None:
    """SIGINT -> Interrupted, SIGTERM -> Terminated, raised wherever the main thread is."""
    signal.signal(signal.SIGINT, _raise)
    signal.signal(signal.SIGTERM, _raise)


def ignore_signals() -> None:
    """Once goflame is on its way out: a second Ctrl-C must not interrupt the last line."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _line(text: str) -> None:
    try:
        os.write(2, f"goflame: {text}\n".encode("utf-8", "backslashreplace"))
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    """Run the command line (goflame.cli.run) with the handlers in place; its exit code."""
    install_handlers()
    try:
        from goflame.cli import run

        code = run(argv)
    except Interrupted as e:  # before run() could catch it: during the imports
        ignore_signals()
        _line(e.message)
        return e.exit_code
    except MemoryError:
        ignore_signals()
        _line("out of memory while starting")
        return 5
    except Exception as e:  # noqa: BLE001 - a broken installation: still one line, never a traceback
        ignore_signals()
        _line(f"internal error: {type(e).__name__}: {e} (please report)")
        return 5
    ignore_signals()
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
