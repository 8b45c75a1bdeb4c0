"""Reading another process's memory: `process_vm_readv` with many iovecs per call.

A sample costs syscalls, not Python: `read_many` turns a whole batch of (address, size)
requests into one syscall per 1024 requests, and the single-read helpers reuse
preallocated buffers so a call is one ctypes call plus one copy. When the kernel or a
container's seccomp profile refuses `process_vm_readv` (ENOSYS, EPERM) we fall back to
`pread` on /proc/PID/mem, which the same ptrace access check guards. (One difference:
the kernel reads /proc/PID/mem with FOLL_FORCE, so PROT_NONE mappings read as zeros there
while process_vm_readv refuses them.)
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import time
from collections.abc import Sequence
from itertools import accumulate, chain
from typing import Literal

from goflame.errors import InvalidMemory, NotPermitted, ProcessGone, TargetExeced

IOV_MAX = 1024  # Linux UIO_MAXIOV: the most iovecs one process_vm_readv call accepts
MAX_READ = 64 << 20  # larger requests are torn sizes, not reads anyone meant to make
_ADDR_LIMIT = 1 << 63  # user addresses are far below; pread offsets are signed

Backend = Literal["auto", "vm_readv", "procmem"]

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_IOVEC = struct.Struct("<QQ")
_IOVEC2 = struct.Struct("<QQQQ")
_BAD_ADDRESS = frozenset({errno.EFAULT, errno.EIO, errno.ENOMEM, errno.EINVAL})

_libc = ctypes.CDLL(None, use_errno=True)
# No argtypes: converting arguments costs more than the syscall. Every pointer is passed
# as a prebuilt c_void_p and every other argument fits a C int.
_vm_readv = getattr(_libc, "process_vm_readv", None)  # None: a libc too old to wrap it
if _vm_readv is not None:
    _vm_readv.restype = ctypes.c_ssize_t


def permission_advice(pid: int) -> str:
    """The one line that tells a user how to get the access the kernel refused."""
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            scope = int(f.read())
    except (OSError, ValueError):
        scope = -1
    if os.geteuid() == 0:
        yama = " (kernel.yama.ptrace_scope=3 forbids it for everyone)" if scope == 3 else ""
        return (f"not permitted to read or trace pid {pid} even as root{yama}: in a container, "
                f"add CAP_SYS_PTRACE (docker run --cap-add SYS_PTRACE) and a seccomp profile "
                f"that allows ptrace and process_vm_readv")
    yama = f" (kernel.yama.ptrace_scope is {scope}: set it to 0)" if scope > 0 else ""
    return (f"not permitted to read or trace pid {pid}: run goflame as root (sudo), or as the "
            f"target's user{yama}; in a container add CAP_SYS_PTRACE (docker run --cap-add SYS_PTRACE)")


def gone_message(pid: int) -> str:
    return f"process {pid} does not exist or has exited"


def exec_message(pid: int) -> str:
    return f"process {pid} exec'd a new program"


class _Buffer:
    """A fixed-size byte buffer whose address ctypes can hand to the kernel."""

    __slots__ = ("data", "view", "addr", "ptr", "_c")

    def __init__(self, size: int) -> None:
        self.data = bytearray(max(size, 64))
        self.view = memoryview(self.data)
        self._c = (ctypes.c_char * len(self.data)).from_buffer(self.data)
        self.addr = ctypes.addressof(self._c)
        self.ptr = ctypes.c_void_p(self.addr)


class ProcessMemory:
    """Reads from a live process; every failure is InvalidMemory, ProcessGone or NotPermitted.

    Measured here (bench/bench_memory.py, CPU time): one small read costs ~1.5 us through
    pread on /proc/PID/mem and ~3.5 us through process_vm_readv, which re-checks ptrace
    access on every call; in a batch, process_vm_readv costs ~0.5-0.9 us per entry. So
    "auto" sends single reads to pread and batches to process_vm_readv.
    """

    def __init__(self, pid: int, backend: Backend = "auto") -> None:
        self.pid = pid
        self._fd = -1
        self._closed = False
        self._probe: int | None = None  # see watch_image
        self._auto = backend == "auto"
        self._riov = _Buffer(_IOVEC.size * IOV_MAX)
        self._liov = _Buffer(_IOVEC.size)
        self._buf = _Buffer(1 << 16)
        if backend == "vm_readv" and _vm_readv is None:
            raise NotPermitted("this C library has no process_vm_readv")
        self._single = "procmem" if backend == "procmem" else "vm_readv"
        self._batch = "procmem" if backend == "procmem" or _vm_readv is None else "vm_readv"
        if backend != "vm_readv":
            try:
                self._open_procmem()
            except NotPermitted:
                if backend == "procmem" or _vm_readv is None:
                    raise
                # /proc/PID/mem refused: let process_vm_readv decide (and explain).
            else:
                self._single = "procmem"

    # -- public API -------------------------------------------------------------------------

    @property
    def backend(self) -> str:
        """"vm_readv" or "procmem": what single reads use (after any fallback)."""
        return self._single

    @property
    def batch_backend(self) -> str:
        """What read_many uses."""
        return self._batch

    def read(self, addr: int, size: int) -> bytes:
        """Exactly `size` bytes at `addr`, or InvalidMemory."""
        if not 0 <= size <= MAX_READ or not 0 <= addr < _ADDR_LIMIT:
            raise InvalidMemory(f"bad read request {addr:#x}+{size}")
        if self._single == "procmem":
            try:
                data = os.pread(self._fd, size, addr)
            except OSError as e:
                raise self._pread_error(e, addr, size) from None
            if len(data) != size:
                raise self._short(addr, size, len(data))
            return data
        buf = self._buf
        if size > len(buf.data):
            buf = self._grow(size)
        _IOVEC.pack_into(self._riov.data, 0, addr, size)
        _IOVEC.pack_into(self._liov.data, 0, buf.addr, size)
        n = _vm_readv(self.pid, self._liov.ptr, 1, self._riov.ptr, 1, 0)
        if n == size:
            return bytes(buf.view[:size])
        if self._vm_readv_failed(n, addr, size):
            self._single = "procmem"
        return self.read(addr, size)

    def read_prefix(self, addr: int, size: int) -> bytes:
        """The bytes at `addr`, `size` of them or fewer: up to the first one that cannot be
        read (b"" when that is the first).

        A stack window read from sp often crosses the end of its mapping (an OS thread's
        stack ends a few KiB above where the thread runs), and `read` refuses it whole. The
        kernel copies page by page and reports how far it got, so one syscall gives the
        readable prefix: what a stop must read before the thread runs on."""
        if not 0 <= size <= MAX_READ or not 0 <= addr < _ADDR_LIMIT:
            return b""
        if self._single == "procmem":
            try:
                return os.pread(self._fd, size, addr)
            except OSError as e:
                if e.errno in _BAD_ADDRESS:
                    return b""
                raise self._pread_error(e, addr, size) from None
        buf = self._buf if size <= len(self._buf.data) else self._grow(size)
        _IOVEC.pack_into(self._riov.data, 0, addr, size)
        _IOVEC.pack_into(self._liov.data, 0, buf.addr, size)
        n = _vm_readv(self.pid, self._liov.ptr, 1, self._riov.ptr, 1, 0)
        if n >= 0:
            return bytes(buf.view[:n])
        if ctypes.get_errno() in _BAD_ADDRESS:
            return b""
        if self._vm_readv_failed(n, addr, size):
            self._single = "procmem"
        return self.read_prefix(addr, size)

    def u64(self, addr: int) -> int:
        return _U64.unpack(self.read(addr, 8))[0]

    def u32(self, addr: int) -> int:
        return _U32.unpack(self.read(addr, 4))[0]

    def read_struct(self, addr: int, layout: struct.Struct) -> tuple:
        """`layout.unpack` of the bytes at `addr`."""
        return layout.unpack(self.read(addr, layout.size))

    def read_many(self, requests: Sequence[tuple[int, int]]) -> list[bytes | None]:
        """Every (address, size) request, None for the ones that cannot be read.

        process_vm_readv stops at the first remote iovec it cannot read; the rest of the
        batch is retried from the entry after it, so a bad address costs only its own entry.
        """
        if not all(0 <= s <= MAX_READ and 0 <= a < _ADDR_LIMIT for a, s in requests):
            # Torn pointers and sizes: answer None for those, read the rest as one batch.
            good = [i for i, (a, s) in enumerate(requests)
                    if 0 <= s <= MAX_READ and 0 <= a < _ADDR_LIMIT]
            got = self.read_many([requests[i] for i in good])
            merged: list[bytes | None] = [None] * len(requests)
            for i, data in zip(good, got, strict=True):
                merged[i] = data
            return merged
        out: list[bytes | None] = []
        start = 0
        total = len(requests)
        while start < total:
            if self._batch != "vm_readv":
                out.extend(self._read_many_pread(requests[start:]))
                break
            chunk = requests[start:start + IOV_MAX]
            got = self._readv_chunk(chunk)
            if got is None:
                continue  # switched to pread: redo this chunk
            out.extend(got)
            start += len(chunk)
        return out

    def read_pair(self, a: int, n: int, b: int, m: int) -> tuple[bytes | None, bytes | None]:
        """`read_many([(a, n), (b, m)])` in one syscall, lean: a sampler makes this read while
        the thread it reads is stopped, so its cost is the target's too."""
        if (self._batch == "vm_readv" and 0 <= n <= MAX_READ and 0 <= m <= MAX_READ
                and 0 <= a < _ADDR_LIMIT and 0 <= b < _ADDR_LIMIT):
            need = n + m
            buf = self._buf if need <= len(self._buf.data) else self._grow(need)
            _IOVEC2.pack_into(self._riov.data, 0, a, n, b, m)
            _IOVEC.pack_into(self._liov.data, 0, buf.addr, need)
            if _vm_readv(self.pid, self._liov.ptr, 1, self._riov.ptr, 2, 0) == need:
                view = buf.view
                return bytes(view[:n]), bytes(view[n:need])
        first, second = self.read_many([(a, n), (b, m)])
        return first, second

    def probe(self) -> None:
        """Check we may read the target at all: NotPermitted / ProcessGone, else nothing.

        Reading address 0 fails with EFAULT/EIO when access is allowed and EPERM when it is
        not, because the kernel checks ptrace access before touching any page.
        """
        try:
            self.read(0, 1)
        except InvalidMemory:
            pass
        try:
            self.read_many([(0, 1)])
        except InvalidMemory:
            pass

    def watch_image(self, addr: int) -> None:
        """Remember a readable address of the program now running (its first mapping): see
        `image_replaced`."""
        self._probe = addr

    def image_replaced(self) -> bool:
        """Whether the target exec'd another program since `watch_image`.

        /proc/PID/mem, once open, reads the address space it was opened on: after an execve
        that one is gone and every read of it returns nothing, while the pid, its start time
        and (for a program that execs itself) even the executable stay the same.
        """
        if self._fd < 0 or self._probe is None:
            return False
        try:
            if os.pread(self._fd, 1, self._probe) != b"":
                return False
        except OSError:
            return False
        return not self._process_gone()  # an exited process reads empty too

    def ended_by_exec(self, timeout: float = 1.0) -> bool:
        """After the target's threads went away: whether it exec'd (True) or exited.

        An execve first ends every other thread (the kernel's de_thread) and only then
        replaces the address space, so a sampler can find its threads gone while the old image
        still reads: wait, as long as the process lives, for one or the other."""
        deadline = time.monotonic() + timeout
        gone_looks = 0
        while True:
            if self.image_replaced():
                return True
            # While the exec'ing thread takes over the leader's pid, the process can look like
            # a zombie for a moment: an exit is a process that stays gone for 100 ms.
            gone_looks = gone_looks + 1 if self._process_gone() else 0
            if gone_looks >= 20 or time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._closed = True

    def __enter__(self) -> ProcessMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------

    def _readv_chunk(self, chunk: Sequence[tuple[int, int]]) -> list[bytes | None] | None:
        """Up to IOV_MAX requests, one entry each; None when the batch backend changed."""
        n_req = len(chunk)
        sizes = [s for _, s in chunk]
        ends = list(accumulate(sizes))
        starts = [e - s for e, s in zip(ends, sizes, strict=True)]
        need = ends[-1]
        buf = self._buf
        if need > len(buf.data):
            buf = self._grow(need)
        riov = self._riov.data
        out: list[bytes | None] = []
        i = 0
        while i < n_req:
            base = starts[i]  # where request i lands in the buffer
            count = n_req - i
            struct.pack_into(f"<{2 * count}Q", riov, 0, *chain.from_iterable(chunk[i:] if i else chunk))
            _IOVEC.pack_into(self._liov.data, 0, buf.addr + base, need - base)
            n = _vm_readv(self.pid, self._liov.ptr, 1, self._riov.ptr, count, 0)
            if n < 0:
                err = ctypes.get_errno()
                if err not in _BAD_ADDRESS:
                    if self._vm_readv_failed(n, chunk[i][0], sizes[i]):
                        self._batch = "procmem"
                        return None
                n = 0  # request i is unreadable
            got_to = base + n
            data = bytes(buf.view[:got_to])
            if got_to == need:  # everything from i on arrived
                out.extend([data[a:b] for a, b in zip(starts[i:], ends[i:], strict=True)])
                return out
            # Keep the requests that arrived whole; the one the kernel stopped in is bad.
            while ends[i] <= got_to:
                out.append(data[starts[i]:ends[i]])
                i += 1
            out.append(None)
            i += 1
        return out

    def _grow(self, size: int) -> _Buffer:
        self._buf = _Buffer(max(size, 2 * len(self._buf.data)))
        return self._buf

    def _read_many_pread(self, requests: Sequence[tuple[int, int]]) -> list[bytes | None]:
        out: list[bytes | None] = []
        fd = self._fd
        pread = os.pread
        for addr, size in requests:
            try:
                data = pread(fd, size, addr)
            except OSError as e:
                if e.errno in _BAD_ADDRESS:
                    out.append(None)
                    continue
                raise self._pread_error(e, addr, size) from None
            if len(data) == size:
                out.append(data)
            elif not data and size and self._process_gone():
                raise ProcessGone(gone_message(self.pid))
            else:
                out.append(None)
        return out

    def _vm_readv_failed(self, n: int, addr: int, size: int) -> bool:
        """Raise the error a failed process_vm_readv means; True if pread should take over."""
        if n >= 0:
            raise self._short(addr, size, n)
        err = ctypes.get_errno()
        if err in _BAD_ADDRESS:
            raise InvalidMemory(f"cannot read {size} bytes at {addr:#x} in pid {self.pid}")
        if err == errno.ESRCH:
            raise ProcessGone(gone_message(self.pid))
        if err in (errno.EPERM, errno.ENOSYS) and self._auto:
            # seccomp in many containers refuses process_vm_readv; /proc/PID/mem may still work.
            if self._fd < 0:
                self._open_procmem()
            return True
        if err in (errno.EPERM, errno.EACCES):
            raise NotPermitted(permission_advice(self.pid))
        raise InvalidMemory(f"reading pid {self.pid} at {addr:#x} failed: {os.strerror(err)}")

    def _open_procmem(self) -> None:
        try:
            self._fd = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):
            raise ProcessGone(gone_message(self.pid)) from None
        except PermissionError:
            raise NotPermitted(permission_advice(self.pid)) from None
        except OSError as e:
            raise NotPermitted(f"cannot open /proc/{self.pid}/mem: {e.strerror}") from None

    def _pread_error(self, e: OSError, addr: int, size: int) -> Exception:
        if e.errno == errno.ESRCH:
            return ProcessGone(gone_message(self.pid))
        if e.errno in (errno.EPERM, errno.EACCES):
            return NotPermitted(permission_advice(self.pid))
        if e.errno == errno.EBADF and self._closed:
            return InvalidMemory("memory reader is closed")
        return InvalidMemory(f"cannot read {size} bytes at {addr:#x} in pid {self.pid}")

    def _short(self, addr: int, size: int, got: int) -> Exception:
        if got == 0 and self._process_gone():
            return ProcessGone(gone_message(self.pid))
        if got == 0 and self.image_replaced():
            return TargetExeced(exec_message(self.pid))
        return InvalidMemory(f"short read at {addr:#x} in pid {self.pid}: {got} of {size} bytes")

    def _process_gone(self) -> bool:
        from goflame.process.procfs import alive

        return not alive(self.pid)
