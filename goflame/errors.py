"""The one exception family goflame lets escape, each with a documented exit code.

The CLI turns any of these into a single line on stderr and the exit code below;
anything else escaping is a bug. Exit codes (also in README.md):

  0  success
  1  a CI verdict failed (diff found a regression)
  2  bad input: usage, unreadable/foreign/corrupt file, not a Go program, unsupported Go version
  3  the target process does not exist, exited, or is a zombie
  4  not permitted to trace or read the target (not root, ptrace_scope, missing CAP_SYS_PTRACE)
  5  output could not be written (a full disk, a closed pipe is not one), or an internal failure:
     any exception that is not a GoflameError, MemoryError included, is one line and 5, never a
     traceback and never 1 (which `diff` keeps for a regression)
130  interrupted (SIGINT) before anything could be written
143  terminated (SIGTERM) before anything could be written (`record` and `top` instead stop and
     write what they have, exit 0)
"""

from __future__ import annotations


class GoflameError(Exception):
    """Base of every error goflame reports to a user; `str(e)` is the one line shown."""

    exit_code = 2


class BadInput(GoflameError):
    """A file or argument goflame cannot use: not ELF, not Go, truncated, corrupt."""

    exit_code = 2


class NotGoBinary(BadInput):
    pass


class UnsupportedGoVersion(BadInput):
    pass


class CorruptBinary(BadInput):
    """Structures inside a Go binary (pclntab, buildinfo) are inconsistent."""


class ProcessGone(GoflameError):
    """The target does not exist, exited mid-operation, or is a zombie."""

    exit_code = 3


class TargetExeced(ProcessGone):
    """The target replaced its program (execve): what goflame knew of it no longer holds."""


class NotPermitted(GoflameError):
    """The kernel refused ptrace or a memory read of the target."""

    exit_code = 4


class OutputError(GoflameError):
    exit_code = 5


class InvalidMemory(GoflameError):
    """A read from the target failed or returned data that cannot be right (torn, unmapped).

    Raised inside the sampler for one goroutine or one sample; it is counted and dropped,
    never shown to the user as a failure of the whole run.
    """

    exit_code = 5


class Interrupted(BaseException):
    """SIGINT arrived where goflame has nothing to save: raised by the handler the entry point
    installs first thing (goflame/_entry.py). A BaseException, so that `except Exception`
    cleanup code does not swallow it; not a KeyboardInterrupt, so that click does not turn it
    into "Aborted!" and exit 1 (a regression, to a CI job running `goflame diff`)."""

    exit_code = 130
    message = "interrupted"


class Terminated(Interrupted):
    """SIGTERM, likewise (the default action would kill goflame without a word)."""

    exit_code = 143
    message = "terminated (SIGTERM)"
