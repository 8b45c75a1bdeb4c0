"""The life of a command that watches a target: attach or launch, signals, job control, the end.

`record` and `top` both attach to `--pid` or launch a command, turn SIGINT/SIGTERM/SIGHUP into
a flag their loop checks, stop themselves cleanly on Ctrl-Z, and finish a command they
launched. The rules live here once:

- a signal only sets a flag: the loop ends at its next check and still writes what it has;
- the first SIGINT/SIGTERM goes on to a launched command, which is then recorded until it
  exits (its own shutdown is often what one wants to see); a second one stops goflame;
- Ctrl-Z (SIGTSTP) keeps its default action: the kernel's job control, which a SIGCONT sent
  right after cancels (a handler that stops goflame later cannot tell that order, and
  `kill -TSTP; kill -CONT` left goflame stopped for good). While goflame holds a stopped
  thread of the target, its stop guard (process/guard.py) defers the stop until it let go;
- a launched command gets a parent-death signal (SIGTERM), so an unclean end of goflame
  (SIGKILL) does not leave it running; a clean end asks it to stop (SIGINT, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from goflame.errors import BadInput, GoflameError, ProcessGone
from goflame.target import Target

PR_SET_PDEATHSIG = 1
ATTACH_RETRY_S = 5.0  # a launched Go program's runtime may take this long to be readable
FINISH_WAIT_S = 5.0


@dataclass(slots=True)
class Signals:
    """What the signal handlers saw; read by the loop between ticks."""

    stop: bool = False
    count: int = 0  # SIGINT/SIGTERM/SIGHUP so far


def _demote_to_sudo_user() -> tuple[int, int] | None:
    """The (uid, gid) of the user who invoked sudo: a launched command runs as them, not root."""
    uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    if os.geteuid() != 0 or not uid or not gid:
        return None
    return int(uid), int(gid)


def _child_setup(parent: int, demote: tuple[int, int] | None) -> Callable[[], None]:
    libc = ctypes.CDLL(None, use_errno=True)

    def setup() -> None:
        if demote is not None:
            os.setgroups([demote[1]])
            os.setgid(demote[1])
            os.setuid(demote[0])
        # After setuid (which clears it): SIGTERM when goflame dies, however it dies.
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # goflame died before the line above
            os._exit(1)

    return setup


def launch(command: Sequence[str]) -> subprocess.Popen:
    """Start `command` in its own process group, as the sudo user when run with sudo."""
    try:
        return subprocess.Popen(list(command), preexec_fn=_child_setup(os.getpid(), _demote_to_sudo_user()),
                                process_group=0)
    except FileNotFoundError:
        raise BadInput(f"cannot run {command[0]!r}: no such file") from None
    except PermissionError:
        raise BadInput(f"cannot run {command[0]!r}: permission denied") from None
    except OSError as e:
        raise BadInput(f"cannot run {command[0]!r}: {e.strerror or e}") from None


def attach_launched(child: subprocess.Popen) -> Target:
    """The child has exec'd; its Go runtime may still be starting: retry briefly."""
    deadline = time.monotonic() + ATTACH_RETRY_S
    while True:
        try:
            return Target(child.pid)
        except ProcessGone:
            raise
        except GoflameError:
            if child.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def finish_child(child: subprocess.Popen) -> int | None:
    """A launched command still running when recording ends is asked to stop (SIGINT, then SIGKILL)."""
    if child.poll() is None:
        try:
            os.kill(child.pid, signal.SIGINT)
            child.wait(timeout=FINISH_WAIT_S)
        except subprocess.TimeoutExpired:
            child.kill()
        except ProcessLookupError:
            pass
    try:
        return child.wait(timeout=FINISH_WAIT_S)
    except subprocess.TimeoutExpired:
        return None


class Watch:
    """Signal handling for one command's loop (install with `handlers()`).

    `child`: a launched command, to which the first SIGINT/SIGTERM is forwarded.
    """

    def __init__(self, child: subprocess.Popen | None = None) -> None:
        self.child = child
        self.signals = Signals()

    def _on_stop_signal(self, signum: int, _frame: object) -> None:
        s = self.signals
        s.count += 1
        child = self.child
        if child is not None and child.poll() is None and s.count == 1 and signum != signal.SIGHUP:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)  # forward; keep recording its shutdown until it exits
            if signum == signal.SIGINT:
                return
        s.stop = True

    @contextlib.contextmanager
    def handlers(self, *, hangup: bool = False) -> Iterator[Signals]:
        """Install the handlers for the body, then put the previous ones back."""
        wanted: dict[int, Callable[[int, object], None]] = {
            signal.SIGINT: self._on_stop_signal, signal.SIGTERM: self._on_stop_signal,
        }
        if hangup:
            wanted[signal.SIGHUP] = self._on_stop_signal
        old = {}
        try:
            for sig, handler in wanted.items():
                old[sig] = signal.signal(sig, handler)
            yield self.signals
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)

    def should_stop(self) -> bool:
        """The loop's check between ticks: stop asked for, or the launched command exited."""
        if self.signals.stop:
            return True
        return self.child is not None and self.child.poll() is not None
