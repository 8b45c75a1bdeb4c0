"""CPU-time sampling done by the kernel: one perf event per thread of the target.

Why: pausing a running thread with ptrace costs both sides a stop, six syscalls and two
context switches per sample, and the sampler must poll every thread's CPU time to know whom
to pause. A `task-clock` perf event (PERF_TYPE_SOFTWARE, PERF_COUNT_SW_TASK_CLOCK) opened on a
thread fires every `period` ns of *that thread's* CPU time, and at that instant the kernel
copies the thread's user registers and the top of its user stack into a ring buffer we map.
The target is never stopped (its cost is that copy, in the kernel), samples are spaced in
CPU time by construction, and the sampler only reads the buffers now and then. This is
how `perf record -e task-clock --user-regs --stack-user` works; the facts below (struct
layouts, constants) are the kernel's uapi (include/uapi/linux/perf_event.h,
arch/x86/include/uapi/asm/perf_regs.h).

x86_64 only (the register set). Not every machine allows it: containers often block
perf_event_open (seccomp), and `kernel.perf_event_paranoid` limits unprivileged users;
`PerfUnavailable` says why, and the sampler falls back to ptrace.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
import time
from dataclasses import dataclass

from goflame.errors import GoflameError

_NR_PERF_EVENT_OPEN = 298  # x86_64
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_TASK_CLOCK = 1
PERF_SAMPLE_TID = 1 << 1
PERF_SAMPLE_TIME = 1 << 2
PERF_SAMPLE_CALLCHAIN = 1 << 5
PERF_CONTEXT_MAX = (1 << 64) - 4095  # callchain entries from here up are context markers
PERF_SAMPLE_REGS_USER = 1 << 12
PERF_SAMPLE_STACK_USER = 1 << 13
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_PERIOD = 0x40082404  # _IOW('$', 4, __u64)
PERF_RECORD_LOST = 2
PERF_RECORD_COMM = 3
PERF_RECORD_SAMPLE = 9
PERF_RECORD_MISC_COMM_EXEC = 1 << 13
PERF_SAMPLE_REGS_ABI_NONE = 0
# attr.flags bits
_EXCLUDE_KERNEL = 1 << 5
_EXCLUDE_HV = 1 << 6
_COMM = 1 << 9
_EXCLUDE_CALLCHAIN_KERNEL = 1 << 21
_COMM_EXEC = 1 << 24  # a COMM record says when the thread exec'd (Linux 3.16+)
_USE_CLOCKID = 1 << 25
_CLOCK_MONOTONIC = 1
# x86_64 perf register indices (perf_regs.h): what a Go stack walk needs, in index order
# (R12: the goroutine's SP inside the runtime's vDSO calls, see unwind/vdsocall.py)
REG_BP, REG_SP, REG_IP, REG_R12, REG_R14 = 6, 7, 8, 20, 22
_REG_MASK = (1 << REG_BP) | (1 << REG_SP) | (1 << REG_IP) | (1 << REG_R12) | (1 << REG_R14)
_ATTR_SIZE = 112  # PERF_ATTR_SIZE_VER5: every field used here; accepted since Linux 4.1
# perf_event_mmap_page: data_head, data_tail, data_offset, data_size
_HEAD_OFF, _TAIL_OFF = 1024, 1032
_Q = struct.Struct("<Q")
_HDR = struct.Struct("<IHH")  # type, misc, size
# a sample: pid, tid, time, callchain length (then the callchain), then abi, bp, sp, ip, r12,
# r14, stack size (then the stack, then dyn_size)
_SAMPLE_HEAD = struct.Struct("<IIQQ")
_SAMPLE = struct.Struct("<QQQQQQQ")
_LOST = struct.Struct("<QQ")  # id, lost
PAGE = mmap.PAGESIZE
FULL_RINGS = 128
MAX_CHAIN = 127  # the kernel's default kernel.perf_event_max_stack
SMALL_RING = 64 * 1024

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_ioctl = _libc.ioctl
_ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)


class PerfUnavailable(GoflameError):
    """perf_event_open is not allowed or not supported here (the reason is the message)."""

    exit_code = 4  # like a refused ptrace: the machine's policy, not the user's input


@dataclass(frozen=True, slots=True)
class KernelSample:
    """One sample as the kernel took it: the thread's user registers and stack top."""

    tid: int
    time_ns: int  # CLOCK_MONOTONIC, like time.monotonic_ns()
    pc: int
    sp: int
    bp: int
    r12: int  # the goroutine's SP in the runtime's vDSO calls
    r14: int  # Go's g register in Go code (ABIInternal, amd64, Go >= 1.17)
    stack: bytes  # the stack from sp up, as it was at the sample
    # Return addresses the kernel found following the frame-pointer chain at the sample (the
    # ip first): past a stack switch too (runtime.systemstack keeps the goroutine's BP).
    callchain: tuple[int, ...] = ()

    @property
    def fp(self) -> int:
        return self.bp


def _attr(period_ns: int, stack_bytes: int, kernel: bool) -> ctypes.Array:
    a = ctypes.create_string_buffer(_ATTR_SIZE)
    flags = (_EXCLUDE_HV | _USE_CLOCKID | _COMM | _COMM_EXEC | _EXCLUDE_CALLCHAIN_KERNEL
             | (0 if kernel else _EXCLUDE_KERNEL))
    struct.pack_into("<IIQQQQQ", a, 0, PERF_TYPE_SOFTWARE, _ATTR_SIZE, PERF_COUNT_SW_TASK_CLOCK, period_ns,
                     PERF_SAMPLE_TID | PERF_SAMPLE_TIME | PERF_SAMPLE_CALLCHAIN | PERF_SAMPLE_REGS_USER
                     | PERF_SAMPLE_STACK_USER, 0, flags)
    struct.pack_into("<QIi", a, 80, _REG_MASK, stack_bytes, _CLOCK_MONOTONIC)
    return a


class _Ring:
    """One thread's event: its fd and mapped ring buffer."""

    __slots__ = ("tid", "fd", "mm", "size", "tail")

    def __init__(self, tid: int, fd: int, mm: mmap.mmap, size: int) -> None:
        self.tid, self.fd, self.mm, self.size, self.tail = tid, fd, mm, size, 0

    def close(self) -> None:
        try:
            self.mm.close()
        finally:
            os.close(self.fd)


class PerfSampling:
    """Task-clock sampling of a set of threads; `drain()` collects what the kernel recorded.

    A thread's samples stay in its ring until drained; a ring that fills up loses samples,
    which the kernel counts (`drain` returns the count). Closing the fds (or this process
    dying) removes the events: nothing is left behind in the target.
    """

    def __init__(self, rate: float, stack_bytes: int = 16 * 1024, drain_interval: float = 0.05) -> None:
        self.period_ns = max(10_000, int(1e9 / rate))
        self.stack_bytes = stack_bytes & ~7
        # Room for 3 drain intervals of a thread that is always on a CPU, as a power of 2
        # (256 KiB at the default drain interval and stack size).
        record = self.stack_bytes + _SAMPLE_HEAD.size + _SAMPLE.size + 8 * MAX_CHAIN + 16
        want = max(3 * record * rate * drain_interval, 4 * record)
        pages = 1
        while pages * PAGE < want:
            pages *= 2
        self.data_size = pages * PAGE
        # Ring memory is locked kernel memory: past FULL_RINGS threads (a server with hundreds
        # of Ms, most of them parked), new threads get SMALL_RING bytes (a busy one among them
        # may then lose samples, which are counted).
        self.small_size = min(self.data_size, SMALL_RING)
        self._kernel = True  # samples in kernel mode too (time in syscalls is CPU time); dropped if not allowed
        self._rings: dict[int, _Ring] = {}
        # A thread exec'd: the program goflame knows is gone (its samples after the exec
        # belong to another program and are dropped; the caller ends the recording).
        self.execed = False

    # -- threads ---------------------------------------------------------------------------------
    def add(self, tid: int) -> bool:
        """Start sampling a thread; False when it is gone. PerfUnavailable if not permitted."""
        if tid in self._rings:
            return True
        while True:
            attr = _attr(self.period_ns, self.stack_bytes, self._kernel)
            fd = _syscall(_NR_PERF_EVENT_OPEN, attr, tid, -1, -1, PERF_FLAG_FD_CLOEXEC)
            if fd >= 0:
                break
            err = ctypes.get_errno()
            if err == errno.ESRCH:
                return False
            if err in (errno.EACCES, errno.EPERM) and self._kernel:
                self._kernel = False  # perf_event_paranoid >= 2 without privilege: user mode only
                continue
            raise PerfUnavailable(_why(err))
        size = self.data_size if len(self._rings) < FULL_RINGS else self.small_size
        try:
            mm = mmap.mmap(fd, PAGE + size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            os.close(fd)
            raise PerfUnavailable(f"cannot map a perf ring buffer ({e.strerror}); "
                                  "raise kernel.perf_event_mlock_kb or run as root") from None
        self._rings[tid] = _Ring(tid, fd, mm, size)
        return True

    def remove(self, tid: int) -> None:
        r = self._rings.pop(tid, None)
        if r is not None:
            r.close()

    @property
    def tids(self) -> set[int]:
        return set(self._rings)

    def close(self) -> None:
        rings, self._rings = self._rings, {}
        for r in rings.values():
            r.close()

    def __enter__(self) -> PerfSampling:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def jitter(self, tid: int, period_ns: int) -> None:
        """Set the thread's next sampling periods (the sampler jitters them between drains so
        that periodic work is not aliased)."""
        r = self._rings.get(tid)
        if r is not None:
            v = ctypes.c_uint64(period_ns)
            _ioctl(r.fd, PERF_EVENT_IOC_PERIOD, ctypes.byref(v))

    def cpu_ns(self, tid: int) -> int | None:
        """The thread's task-clock count: CPU ns it ran while sampled."""
        r = self._rings.get(tid)
        if r is None:
            return None
        try:
            return _Q.unpack(os.read(r.fd, 8))[0]
        except OSError:
            return None

    # -- reading ---------------------------------------------------------------------------------
    def drain(self) -> tuple[list[KernelSample], int]:
        """Every sample recorded since the last drain, per thread in time order, and the number
        of samples the kernel lost (a ring was full)."""
        out: list[KernelSample] = []
        lost = 0
        for r in self._rings.values():
            lost += self._drain_ring(r, out)
        return out, lost

    def _drain_ring(self, r: _Ring, out: list[KernelSample]) -> int:
        mm = r.mm
        head = _Q.unpack_from(mm, _HEAD_OFF)[0]  # x86: loads are not reordered with later loads
        tail = r.tail
        if head == tail:
            return 0
        size = r.size
        lost = 0
        if head - tail > size:  # cannot happen unless the kernel overran us: resynchronise
            tail = head
        else:
            start = tail % size
            end = start + (head - tail)
            if end <= size:
                data = mm[PAGE + start:PAGE + end]
            else:  # the records wrap around the end of the ring
                data = mm[PAGE + start:PAGE + size] + mm[PAGE:PAGE + end - size]
            lost, execed = _parse(r.tid, data, out)
            self.execed = self.execed or execed
            tail = head
        r.tail = tail
        _Q.pack_into(mm, _TAIL_OFF, tail)  # the kernel may reuse the space
        return lost


def _parse(tid: int, data: bytes, out: list[KernelSample]) -> tuple[int, bool]:
    """Decode the records of one ring: the count of lost samples reported, and whether the
    thread exec'd (records after that are of another program: not taken)."""
    lost = 0
    off = 0
    n = len(data)
    unpack_hdr = _HDR.unpack_from
    hs = _HDR.size
    while off + hs <= n:
        kind, _misc, size = unpack_hdr(data, off)
        if size < hs or off + size > n:
            break  # torn: nothing sane follows
        if kind == PERF_RECORD_SAMPLE:
            sample = _sample(data, off + hs, off + size, tid)
            if sample is not None:
                out.append(sample)
        elif kind == PERF_RECORD_LOST and size >= hs + _LOST.size:
            lost += _LOST.unpack_from(data, off + hs)[1]
        elif kind == PERF_RECORD_COMM and _misc & PERF_RECORD_MISC_COMM_EXEC:
            return lost, True
        off += size
    return lost, False


def _sample(data: bytes, at: int, end: int, tid: int) -> KernelSample | None:
    """One PERF_RECORD_SAMPLE's body at [at, end); None for one with no user context (a
    kernel thread, an exiting one) or torn."""
    if at + _SAMPLE_HEAD.size > end:
        return None
    _pid, stid, t, nr = _SAMPLE_HEAD.unpack_from(data, at)
    at += _SAMPLE_HEAD.size
    if nr > MAX_CHAIN + 8 or at + 8 * nr + _SAMPLE.size > end:
        return None
    chain = tuple(ip for ip in struct.unpack_from(f"<{nr}Q", data, at) if ip < PERF_CONTEXT_MAX)
    at += 8 * nr
    abi, bp, sp, ip, r12, r14, dump = _SAMPLE.unpack_from(data, at)
    if abi == PERF_SAMPLE_REGS_ABI_NONE:
        return None
    s = at + _SAMPLE.size
    dyn = _Q.unpack_from(data, s + dump)[0] if dump and s + dump + 8 <= end else 0
    return KernelSample(stid or tid, t, ip, sp, bp, r12, r14, data[s:s + min(dyn, dump)], chain)


def _why(err: int) -> str:
    if err in (errno.EACCES, errno.EPERM):
        return ("perf_event_open was refused (kernel.perf_event_paranoid, or a container's seccomp "
                "profile): run as root, or with CAP_PERFMON")
    if err == errno.ENOSYS:
        return "this kernel has no perf_event_open"
    if err == errno.ENOENT or err == errno.EOPNOTSUPP or err == errno.EINVAL:
        return f"this kernel cannot sample user stacks with a task-clock event ({os.strerror(err)})"
    return f"perf_event_open failed: {os.strerror(err)}"


def now_ns() -> int:
    """The clock perf timestamps use here (CLOCK_MONOTONIC)."""
    return time.monotonic_ns()
