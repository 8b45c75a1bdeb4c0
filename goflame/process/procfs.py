"""/proc parsing: threads, their scheduler state, memory maps, the executable, load bias.

The sampler lists threads on every sample to pause only those on a CPU, so `TaskDir` keeps
an open directory fd and reads each stat file with plain `os` calls. The parsers take the
kernel's text formats at their word: `comm` may hold spaces and parentheses, so a stat line
is split at the *last* ')'.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from goflame.errors import BadInput, NotPermitted, ProcessGone

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # utime/stime unit

# States that mean "no longer running code" (zombie, dead).
_DEAD_STATES = frozenset("ZXx")


def _sched_field(data: bytes, name: bytes) -> bytes | None:
    """The value after "name  :" on its line of a /proc/TID/sched file."""
    i = data.find(name + b" ")
    if i < 0:
        return None
    j = data.find(b":", i)
    k = data.find(b"\n", j)
    return data[j + 1:k if k >= 0 else None].strip()


def parse_exec_start(data: bytes) -> int | None:
    """`se.exec_start` of a /proc/TID/sched file, in ns; None if absent. The kernel prints it
    as milliseconds with six decimals ("%Ld.%06ld"): exact to the ns."""
    v = _sched_field(data, b"se.exec_start")
    ms, _, ns = (v or b"").partition(b".")
    try:
        return int(ms) * 1_000_000 + int(ns)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class ThreadInfo:
    """One line of /proc/PID/task/TID/stat, the fields a sampler needs."""

    tid: int
    comm: str
    state: str  # R running, S sleeping, D disk wait, T stopped, t traced, Z zombie, X dead, I idle
    utime: int  # clock ticks (CLOCK_TICKS per second) in user mode
    stime: int  # clock ticks in kernel mode
    cpu: int  # CPU the thread last ran on
    starttime: int  # clock ticks after boot: tells a reused tid from the old thread

    @property
    def running(self) -> bool:
        return self.state == "R"


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The process-wide fields of /proc/PID/stat."""

    pid: int
    comm: str
    state: str
    ppid: int
    num_threads: int
    starttime: int
    startstack: int = 0  # where the main stack starts: drawn anew by every execve (ASLR)

    @property
    def zombie(self) -> bool:
        return self.state in _DEAD_STATES


@dataclass(frozen=True, slots=True)
class MemoryMap:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str  # e.g. "r-xp"
    offset: int
    dev: str  # "major:minor" in hex, as the kernel prints it
    inode: int
    path: str  # "" for anonymous mappings; "[stack]", "[vdso]", or a file path

    @property
    def readable(self) -> bool:
        return self.perms[0] == "r"

    @property
    def executable(self) -> bool:
        return self.perms[2] == "x"

    @property
    def dev_numbers(self) -> tuple[int, int]:
        major, minor = self.dev.split(":")
        return int(major, 16), int(minor, 16)

    def __contains__(self, addr: object) -> bool:
        return isinstance(addr, int) and self.start <= addr < self.end


@dataclass(frozen=True, slots=True)
class ExePath:
    """Where to open a process's executable, and what to call it.

    `path` is /proc/PID/exe, which opens the very file the process runs even when it lives
    in another mount namespace (a container) or was deleted; `target` is the link text.
    """

    path: str
    target: str
    dev: int
    inode: int

    @property
    def deleted(self) -> bool:
        return self.target.endswith(" (deleted)")


# -- parsing ----------------------------------------------------------------------------------


def parse_stat(line: bytes | str) -> tuple[int, str, list[str]]:
    """(pid, comm, fields from the state onward) of a /proc stat line.

    comm is whatever the program set (up to 15 bytes, any characters but NUL), so it is
    the text between the first '(' and the *last* ')'.
    """
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    open_ = text.index("(")
    close = text.rindex(")")
    return int(text[:open_]), text[open_ + 1:close], text[close + 2:].split()


def _thread_from_stat(data: bytes) -> ThreadInfo:
    tid, comm, f = parse_stat(data)
    # f[0] is field 3 (state); field k of proc(5) is f[k - 3].
    return ThreadInfo(tid=tid, comm=comm, state=f[0], utime=int(f[11]), stime=int(f[12]),
                      cpu=int(f[36]), starttime=int(f[19]))


def parse_maps_line(line: str) -> MemoryMap:
    parts = line.rstrip("\n").split(maxsplit=5)
    lo, hi = parts[0].split("-")
    return MemoryMap(start=int(lo, 16), end=int(hi, 16), perms=parts[1], offset=int(parts[2], 16),
                     dev=parts[3], inode=int(parts[4]), path=parts[5] if len(parts) > 5 else "")


# -- reading ----------------------------------------------------------------------------------


def _read(path: str, dir_fd: int | None = None) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def _gone(pid: int) -> ProcessGone:
    return ProcessGone(f"process {pid} does not exist or has exited")


def stat(pid: int) -> ProcStat:
    try:
        data = _read(f"/proc/{pid}/stat")
    except (FileNotFoundError, ProcessLookupError):
        raise _gone(pid) from None
    _, comm, f = parse_stat(data)
    return ProcStat(pid=pid, comm=comm, state=f[0], ppid=int(f[1]), num_threads=int(f[17]),
                    starttime=int(f[19]), startstack=int(f[25]) if len(f) > 25 else 0)


def exists(pid: int) -> bool:
    """Whether `pid` names a process at all (zombies included)."""
    return pid > 0 and os.path.exists(f"/proc/{pid}/stat")


def is_zombie(pid: int) -> bool:
    """Whether `pid` exited but was not reaped yet; ProcessGone if it does not exist."""
    return stat(pid).zombie


def alive(pid: int) -> bool:
    """Exists and still runs code (not a zombie)."""
    try:
        return not stat(pid).zombie
    except ProcessGone:
        return False


def thread_state(pid: int, tid: int) -> str | None:
    """State letter of one thread, None when it no longer exists."""
    try:
        data = _read(f"/proc/{pid}/task/{tid}/stat")
    except OSError:
        return None
    return parse_stat(data)[2][0] if data else None


def tgid(pid: int) -> int:
    """The process (thread group) a thread id belongs to."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        raise _gone(pid) from None
    raise _gone(pid)


def tracer_pid(pid: int, tid: int | None = None) -> int:
    """Pid of the process ptrace-attached to `pid` (or its thread `tid`), 0 when none."""
    path = f"/proc/{pid}/status" if tid is None else f"/proc/{pid}/task/{tid}/status"
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(b"TracerPid:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        raise _gone(pid) from None
    return 0


class TaskDir:
    """/proc/PID/task kept open, so listing threads each sample is listdir + one read per tid.

    The directory fd stays bound to this process even if its pid is reused after it exits.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self._fd = os.open(f"/proc/{pid}/task", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):
            raise _gone(pid) from None
        self._nspid: dict[int, int] = {}  # tid here -> its id in the target's namespace (see ns_tids)
        self._schedstat: dict[int, int] = {}  # tid -> open fd of its schedstat, read with pread
        self._stat: dict[int, int] = {}  # tid -> open fd of its stat, likewise
        self._status: dict[int, int] = {}  # tid -> open fd of its status, likewise
        self._sched: dict[int, int] = {}  # tid -> open fd of its sched, likewise
        # Both kept under a quarter of the fd limit (a process with thousands of threads)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self._max_open = max(16, min(4096, soft // 8)) if soft != resource.RLIM_INFINITY else 4096

    def tids(self) -> list[int]:
        try:
            return [int(name) for name in os.listdir(self._fd)]
        except (FileNotFoundError, ProcessLookupError):
            raise _gone(self.pid) from None

    def owns(self, tid: int) -> bool:
        """Whether `tid` (in goflame's pid namespace) is a task of this process right now.

        The process layer asks this before every ptrace or perf call on a thread: a thread id
        the target's runtime recorded is an id in *its* pid namespace and may name a thread of
        an unrelated process here (see `ns_tids`).
        """
        if tid <= 0:
            return False
        try:
            os.stat(str(tid), dir_fd=self._fd)
        except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
            return False
        return True

    def ns_tids(self) -> dict[int, int]:
        """{thread id in the target's own pid namespace: thread id here} for every task.

        The Go runtime records `gettid()` as the target sees it (m.procid). In a container
        (a pid namespace of its own) that is not the id goflame must use: the `NSpid:` line
        of each task's status lists its id in every namespace from ours down to its own.
        Kept per task and read only for tasks not seen before.
        """
        names = self._names()
        known = self._nspid
        live = set()
        for name in names:
            tid = int(name)
            live.add(tid)
            if tid not in known:
                ns = _ns_tid(self._fd, name)
                if ns is not None:
                    known[tid] = ns
        for tid in [t for t in known if t not in live]:
            del known[tid]
        return {ns: tid for tid, ns in known.items()}

    def threads(self) -> list[ThreadInfo]:
        """Every thread still alive; threads that exit while we look are left out."""
        out = []
        fd = self._fd
        for name in self._names():
            try:
                data = _read(f"{name}/stat", dir_fd=fd)
            except (FileNotFoundError, ProcessLookupError):
                continue  # exited between listdir and open
            if data:
                out.append(_thread_from_stat(data))
        if not out and not alive(self.pid):
            raise _gone(self.pid)
        return out

    def state(self, tid: int) -> str | None:
        """One thread's state letter (R, S, D, t...), None if it is gone."""
        data = self._pread(self._stat, tid, "stat")
        i = data.rfind(b")")  # the name, in parentheses, may hold anything
        return chr(data[i + 2]) if 0 <= i < len(data) - 2 else None

    def _stat_after_name(self, tid: int) -> list[bytes]:
        """One thread's stat fields from the third (state) on; [] if it is gone. The name before
        them, in parentheses, may hold anything."""
        data = self._pread(self._stat, tid, "stat")
        i = data.rfind(b")")
        return data[i + 2:].split() if i >= 0 else []

    def run_state(self, tid: int) -> tuple[str, int] | None:
        """(state letter, the CPU it runs or last ran on) of one thread; None if it is gone."""
        f = self._stat_after_name(tid)
        try:
            return chr(f[0][0]), int(f[36])  # fields 3 and 39 of proc(5)
        except (ValueError, IndexError):
            return None

    def run_state_and_split(self, tid: int) -> tuple[str, int, int, int] | None:
        """`run_state` and the kernel's own account of where the thread's CPU time went, tick
        by tick, from one read: (state letter, its CPU, clock ticks in user mode, in kernel
        mode); None if it is gone."""
        f = self._stat_after_name(tid)
        try:
            return chr(f[0][0]), int(f[36]), int(f[11]), int(f[12])  # fields 3, 39, 14 and 15
        except (ValueError, IndexError):
            return None

    def exec_start(self, tid: int) -> int | None:
        """The run-queue clock (ns) when the thread last started or stopped running, or its CPU
        time was last added up while it ran (`se.exec_start`); None if it is gone or the
        kernel has no sched file (built without CONFIG_SCHED_DEBUG)."""
        try:
            return parse_exec_start(self._pread(self._sched, tid, "sched", 320))
        except PermissionError:
            return None

    def schedstat(self, tid: int) -> tuple[int, int, int] | None:
        """(ns on a CPU, ns waiting on a run queue, times put on a CPU) of one thread so far;
        None if it is gone. The three fields of schedstat.

        A thread in state R may be running or only waiting for a CPU; how much its run time
        grew since the last look tells the two apart. The wait grows (and the count by one)
        each time the thread is switched in, by how long it was queued: the sampler reads
        them in a stop to tell where the thread was when the tick looked at it.
        """
        data = self._pread(self._schedstat, tid, "schedstat")
        fields = data.split()
        try:
            return int(fields[0]), int(fields[1]), int(fields[2])
        except (ValueError, IndexError):
            self._drop(tid)  # an exited thread's file reads empty
            return None

    def switches(self, tid: int) -> tuple[str, int, int] | None:
        """(state letter, times the thread gave up its CPU of its own accord (slept), times it
        was preempted) of one thread, from its status; None if it is gone. A sampler reads it
        before and inside a stop to know what the thread did in between."""
        data = self._pread(self._status, tid, "status", 4096)
        i = data.find(b"\nState:\t")
        j = data.find(b"\nvoluntary_ctxt_switches:\t")
        k = data.find(b"\nnonvoluntary_ctxt_switches:\t")
        if i < 0 or j < 0 or k < 0:
            return None
        try:
            return (chr(data[i + 8]), int(data[j + 26:data.find(b"\n", j + 26)]),
                    int(data[k + 29:data.find(b"\n", k + 29)]))
        except ValueError:
            return None

    def _pread(self, fds: dict[int, int], tid: int, name: str, size: int = 512) -> bytes:
        """A per-thread file read again from offset 0 through an fd kept open; b"" if gone.

        The sampler reads these every tick: one syscall instead of open, read, close (the
        kernel regenerates such a file on each read from 0).
        """
        fd = fds.get(tid)
        try:
            if fd is None:
                if len(fds) >= self._max_open:
                    self._close_files()
                fd = fds[tid] = os.open(f"{tid}/{name}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._fd)
            return os.pread(fd, size, 0)
        except (FileNotFoundError, ProcessLookupError):
            self._drop(tid)
            return b""

    def _drop(self, tid: int) -> None:
        for fds in (self._schedstat, self._stat, self._status, self._sched):
            fd = fds.pop(tid, None)
            if fd is not None:
                os.close(fd)

    def _close_files(self) -> None:
        for fds in (self._schedstat, self._stat, self._status, self._sched):
            while fds:
                os.close(fds.popitem()[1])

    def _names(self) -> list[str]:
        try:
            return os.listdir(self._fd)
        except (FileNotFoundError, ProcessLookupError):
            raise _gone(self.pid) from None

    def close(self) -> None:
        self._close_files()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> TaskDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ns_tid(task_fd: int, name: str) -> int | None:
    """The innermost id of `NSpid:` in a task's status (its id in its own namespace)."""
    try:
        data = _read(f"{name}/status", dir_fd=task_fd)
    except (FileNotFoundError, ProcessLookupError):
        return None
    i = data.find(b"\nNSpid:")
    if i < 0:  # a kernel without pid namespaces: ids are the same everywhere
        return int(name)
    fields = data[i + 7:data.find(b"\n", i + 7)].split()
    try:
        return int(fields[-1])
    except (ValueError, IndexError):
        return None


def check_pid_namespace() -> None:
    """Refuse to work where /proc is another pid namespace's view than goflame's own.

    Thread ids read from /proc are then not the ids ptrace and perf_event_open take (a
    container with the host's /proc mounted, or the reverse): acting on them would touch
    whatever process has that id here.
    """
    try:
        seen = int(os.readlink("/proc/self"))
    except (OSError, ValueError):
        raise BadInput("cannot read /proc/self: is /proc mounted?") from None
    if seen != os.getpid():
        raise BadInput(f"/proc belongs to another pid namespace (it calls goflame {seen}, goflame is "
                       f"{os.getpid()}): mount this namespace's own /proc (e.g. unshare --mount-proc) "
                       f"so that thread ids mean the same to /proc and to the kernel")


def threads(pid: int) -> list[ThreadInfo]:
    with TaskDir(pid) as task:
        return task.threads()


def exe_path(pid: int) -> ExePath:
    link = f"/proc/{pid}/exe"
    try:
        target = os.readlink(link)
        st = os.stat(link)
    except (FileNotFoundError, ProcessLookupError):
        if exists(pid):
            raise ProcessGone(f"process {pid} has exited (it is a zombie)") from None
        raise _gone(pid) from None
    except PermissionError:
        raise NotPermitted(f"cannot open the executable of pid {pid}: run goflame as root (sudo) "
                           f"or as the target's user") from None
    return ExePath(path=link, target=target, dev=st.st_dev, inode=st.st_ino)


def maps(pid: int) -> list[MemoryMap]:
    try:
        with open(f"/proc/{pid}/maps") as f:
            lines = f.readlines()
    except (FileNotFoundError, ProcessLookupError):
        raise _gone(pid) from None
    except PermissionError:
        raise NotPermitted(f"cannot read /proc/{pid}/maps: run goflame as root (sudo) "
                           f"or as the target's user") from None
    return [parse_maps_line(line) for line in lines if line.strip()]


# -- load bias --------------------------------------------------------------------------------


def exe_mappings(memory_maps: Iterable[MemoryMap], *, inode: int, dev: int | None = None,
                 path: str | None = None) -> list[MemoryMap]:
    """The file-backed mappings of one file: by inode and device, else inode, else path.

    Matching by inode works for a containerized target whose path does not exist here.
    Overlay filesystems report the upper device in stat() but the lower one in maps,
    hence the inode-only fallback; the path is the last resort.
    """
    memory_maps = list(memory_maps)
    by_inode = [m for m in memory_maps if inode and m.inode == inode]
    if dev is not None:
        exact = [m for m in by_inode if m.dev_numbers == (os.major(dev), os.minor(dev))]
        if exact:
            return exact
    if by_inode:
        return by_inode
    return [m for m in memory_maps if path and m.path == path]


def load_bias(memory_maps: Iterable[MemoryMap], segments: Sequence[tuple[int, int]], *,
              inode: int, dev: int | None = None, path: str | None = None,
              page_size: int = PAGE_SIZE) -> int:
    """How far the executable was loaded from its link-time addresses (0 unless PIE).

    `segments` are the ELF's PT_LOAD (p_vaddr, p_offset) pairs. The kernel maps each one
    at bias + page_down(p_vaddr) from file offset page_down(p_offset), so the mapping of
    the file at that offset gives the bias. The bias most segments agree on wins (a
    segment whose first page is shared with its neighbour can find the wrong mapping).
    """
    mine = exe_mappings(memory_maps, inode=inode, dev=dev, path=path)
    if not mine:
        raise BadInput("the executable is not mapped in the process (was it replaced on disk?)")
    mask = ~(page_size - 1)
    by_offset: dict[int, int] = {}
    for m in sorted(mine, key=lambda m: m.start):
        by_offset.setdefault(m.offset, m.start)
    votes: dict[int, int] = {}
    for vaddr, offset in segments:
        start = by_offset.get(offset & mask)
        if start is not None:
            bias = start - (vaddr & mask)
            votes[bias] = votes.get(bias, 0) + 1
    if not votes:
        raise BadInput("no loadable segment of the executable matches its mappings in the process "
                       "(is this the binary the process runs?)")
    return max(votes, key=lambda b: votes[b])  # dicts keep order: ties go to the first segment
