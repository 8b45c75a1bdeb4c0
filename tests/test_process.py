"""goflame.process against real processes: a Go spinner built by a real toolchain, oracles
from the kernel (/proc, `ps`), the ELF file itself and Go's own tools (`go tool nm`,
`go version`)."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

import gotoolchain
from conftest import stopped_for_good, wait_until
from goflame.errors import BadInput, InvalidMemory, ProcessGone
from goflame.process import Process, procfs
from goflame.process.memory import ProcessMemory
from goflame.process.ptrace import Pauser

TESTS = Path(__file__).parent
REPO = TESTS.parent
SPINNER = TESTS / "fixtures" / "spinner"
SYS_TGKILL = 234  # x86_64


# -- the target ---------------------------------------------------------------------------


class Target:
    """A running spinner whose stdout lines are collected, with their arrival times."""

    def __init__(self, binary: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.popen = subprocess.Popen([str(binary), *args], stdout=subprocess.PIPE, text=True,
                                      env=env)
        self.pid = self.popen.pid
        self.binary = binary
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()
        self.expect(r"^ready ")

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._cond:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._cond.notify_all()

    def expect(self, pattern: str, timeout: float = 10.0, start: int = 0) -> tuple[float, re.Match]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for when, line in self.lines[start:]:
                    if m := rx.search(line):
                        return when, m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line matching {pattern!r}; got {self.lines[-5:]}")
                self._cond.wait(left)

    def signal_lines(self, name: str) -> list[tuple[float, int, int]]:
        """(arrival, ops, gcs) of each 'signal NAME' line so far."""
        with self._cond:
            out = []
            for when, line in self.lines:
                if m := re.match(rf"signal {name} ops=(\d+) gcs=(\d+)$", line):
                    out.append((when, int(m[1]), int(m[2])))
            return out

    def poke(self, timeout: float = 10.0) -> tuple[int, int]:
        """Send SIGUSR1 and return the (ops, gcs) the target reports: proof it still runs."""
        n = len(self.signal_lines("SIGUSR1"))
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.signal_lines("SIGUSR1")
            if len(got) > n:
                return got[-1][1], got[-1][2]
            time.sleep(0.01)
        raise AssertionError("the target did not answer SIGUSR1")

    def states(self) -> dict[int, str]:
        return {t.tid: t.state for t in procfs.threads(self.pid)}

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()


def spinner_binary(pie: bool = False) -> Path:
    return gotoolchain.build(SPINNER, gotoolchain.BuildSpec(go=gotoolchain.FAST, pie=pie))


@pytest.fixture
def spinner() -> Iterator[Target]:
    t = Target(spinner_binary(), "-spinners", "2")
    yield t
    t.stop()


def nm_sizes(binary: Path) -> dict[str, tuple[int, int]]:
    """name -> (address, size) from `go tool nm -size`."""
    out = {}
    for line in gotoolchain.go_tool(gotoolchain.FAST, "tool", "nm", "-size", str(binary)).splitlines():
        parts = line.split()
        if len(parts) >= 4:
            out[parts[3]] = (int(parts[0], 16), int(parts[1]))
    return out


def elf_load_segments(binary: Path) -> list[tuple[int, int]]:
    with open(binary, "rb") as f:
        elf = ELFFile(f)
        return [(s["p_vaddr"], s["p_offset"]) for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]


def elf_bytes_at(binary: Path, vaddr: int, size: int) -> bytes:
    """The file's bytes at link-time address `vaddr`, through the section that holds it."""
    with open(binary, "rb") as f:
        elf = ELFFile(f)
        for sec in elf.iter_sections():
            if sec["sh_type"] != "SHT_NOBITS" and sec["sh_addr"] <= vaddr < sec["sh_addr"] + sec["sh_size"]:
                assert vaddr + size <= sec["sh_addr"] + sec["sh_size"]
                f.seek(sec["sh_offset"] + vaddr - sec["sh_addr"])
                return f.read(size)
    raise AssertionError(f"{vaddr:#x} is in no section")


def no_stopped_threads(pid: int, within: float = 1.0) -> bool:
    deadline = time.monotonic() + within
    while True:
        if not any(t.state in "tT" for t in procfs.threads(pid)):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def untraced(pid: int) -> bool:
    """No thread of `pid` has a tracer, as the kernel reports it (TracerPid)."""
    return all(procfs.tracer_pid(pid, t.tid) == 0 for t in procfs.threads(pid))


def tgkill(pid: int, tid: int, sig: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall(SYS_TGKILL, pid, tid, sig)


# -- memory -------------------------------------------------------------------------------


@pytest.mark.parametrize("pie", [False, True], ids=["exec", "pie"])
@pytest.mark.parametrize("backend", ["vm_readv", "procmem"])
def test_memory_at_a_symbol_equals_the_elf_file_bytes_after_load_bias(pie: bool, backend: str) -> None:
    binary = spinner_binary(pie)
    t = Target(binary, "-spinners", "1", "-gc", "0")
    try:
        with Process.open(t.pid, backend=backend) as proc:
            assert proc.memory.backend == backend
            bias = proc.load_bias(elf_load_segments(binary))
            with open(binary, "rb") as f:
                is_pie = ELFFile(f)["e_type"] == "ET_DYN"
            assert is_pie == pie
            assert (bias != 0) == pie
            syms = nm_sizes(binary)
            spin_addr, spin_size = syms["main.spin"]
            assert proc.memory.read(spin_addr + bias, spin_size) == elf_bytes_at(binary, spin_addr, spin_size)
            pcln = syms["runtime.pclntab"][0]
            assert proc.memory.read(pcln + bias, 4096) == elf_bytes_at(binary, pcln, 4096)
            # runtime.buildVersion is a string header whose pointer the loader relocated:
            # following it must give the version `go version` reports.
            ptr, length = proc.memory.read_struct(syms["runtime.buildVersion"][0] + bias,
                                                  struct.Struct("<QQ"))
            version = gotoolchain.go_tool(gotoolchain.FAST, "version", str(binary)).split()[-1]
            assert proc.memory.read(ptr, length).decode() == version
            word = elf_bytes_at(binary, pcln, 8)
            assert proc.memory.u64(pcln + bias) == int.from_bytes(word, "little")
            assert proc.memory.u32(pcln + bias) == int.from_bytes(word[:4], "little")
    finally:
        t.stop()


@pytest.mark.parametrize("backend", ["vm_readv", "procmem"])
def test_read_many_returns_none_only_for_unreadable_entries(spinner: Target, backend: str) -> None:
    binary = spinner.binary
    syms = nm_sizes(binary)
    base = syms["runtime.pclntab"][0]
    maps = procfs.maps(spinner.pid)
    guard = next(m for m in maps if m.perms.startswith("---"))  # Go reserves PROT_NONE arenas
    last = max(maps, key=lambda m: m.end)
    readable_end = next(m for m in maps if m.readable and not any(n.start == m.end for n in maps))
    bad = [(0, 8), (8, 16), (last.end + 4096, 8),
           (readable_end.end - 4, 8)]  # the last one straddles the end of a mapping
    if backend == "vm_readv":
        bad.append((guard.start, 8))  # /proc/PID/mem reads PROT_NONE pages (FOLL_FORCE): not bad there
    requests: list[tuple[int, int]] = []
    expect_bad: set[int] = set()
    for i in range(3000):  # three process_vm_readv batches' worth
        if i % 7 == 3:
            expect_bad.add(len(requests))
            requests.append(bad[i % len(bad)])
        else:
            requests.append((base + 16 * i, 16 if i % 5 else 0))
    got = ProcessMemory(spinner.pid, backend).read_many(requests)
    assert len(got) == len(requests)
    file_bytes = elf_bytes_at(binary, base, 16 * 3000)
    for i, ((addr, size), data) in enumerate(zip(requests, got, strict=True)):
        if i in expect_bad:
            assert data is None, (i, hex(addr))
        else:
            assert data == file_bytes[addr - base:addr - base + size], i


@pytest.mark.parametrize("backend", ["vm_readv", "procmem"])
def test_read_pair_gives_the_binarys_bytes_and_none_for_an_unreadable_half(spinner: Target, backend: str) -> None:
    binary = spinner.binary
    base = nm_sizes(binary)["runtime.pclntab"][0]
    want = elf_bytes_at(binary, base, 0x3000)
    mem = ProcessMemory(spinner.pid, backend)
    assert mem.read_pair(base, 0x2000, base + 0x2ff8, 8) == (want[:0x2000], want[0x2ff8:0x3000])
    assert mem.read_pair(base + 8, 0, base, 16) == (b"", want[:16])
    assert mem.read_pair(8, 16, base, 8) == (None, want[:8])  # the kernel stops at the bad one
    assert mem.read_pair(base, 8, 8, 16) == (want[:8], None)


@pytest.mark.parametrize("backend", ["vm_readv", "procmem"])
def test_read_prefix_of_a_window_past_the_stacks_end_is_the_stack_up_to_its_end(spinner: Target, backend: str
                                                                               ) -> None:
    """A stop reads 16 KiB from sp; on an OS thread's stack that crosses the mapping's end.
    The oracle: /proc/PID/maps for where it ends, a plain pread of /proc/PID/mem for the
    bytes, and the kernel's layout, which puts the program's path (AT_EXECFN) last."""
    maps = procfs.maps(spinner.pid)
    stack = next(m for m in maps if m.path == "[stack]")
    after = next((m for m in maps if m.start == stack.end), None)  # kernels < 6.x may put the vDSO there
    assert after is None or after.path == "[vvar]", after  # [vvar] pages are not readable this way
    fd = os.open(f"/proc/{spinner.pid}/mem", os.O_RDONLY)
    try:
        truth = os.pread(fd, 0x1800, stack.end - 0x1800)
    finally:
        os.close(fd)
    mem = ProcessMemory(spinner.pid, backend)
    got = mem.read_prefix(stack.end - 0x1800, 0x4000)
    assert got == truth
    assert got.endswith(str(spinner.binary).encode() + b"\0" + bytes(8))
    assert mem.read_prefix(stack.end - 0x1800, 0x100) == truth[:0x100]
    assert mem.read_prefix(stack.end, 0x1000) == b""
    assert mem.read_prefix(8, 16) == b""


def test_single_reads_raise_invalid_memory_for_unmapped_addresses(spinner: Target) -> None:
    mem = ProcessMemory(spinner.pid)
    with pytest.raises(InvalidMemory):
        mem.read(0, 8)
    with pytest.raises(InvalidMemory):
        mem.u64(16)
    with pytest.raises(InvalidMemory):
        mem.read(-1, 8)


def test_reads_from_an_exited_process_raise_process_gone() -> None:
    t = Target(spinner_binary(), "-spinners", "1", "-gc", "0")
    mem = ProcessMemory(t.pid)
    addr = nm_sizes(t.binary)["runtime.pclntab"][0]
    mem.read(addr, 8)
    t.stop()
    with pytest.raises(ProcessGone):
        mem.read(addr, 8)
    with pytest.raises(ProcessGone):
        mem.read_many([(addr, 8)])


# -- /proc ----------------------------------------------------------------------------------


def test_threads_are_the_tasks_ps_lists(spinner: Target) -> None:
    looks: list[tuple[set[int], set[int], set[int]]] = []

    def agree() -> bool:  # the runtime may start a thread between the looks: look again
        ours = {t.tid for t in procfs.threads(spinner.pid)}
        ps = subprocess.run(["ps", "-L", "-o", "lwp=", "-p", str(spinner.pid)], capture_output=True,
                            text=True, check=True).stdout
        theirs = {int(x) for x in ps.split()}
        listing = {int(x) for x in subprocess.run(["ls", f"/proc/{spinner.pid}/task"],
                                                   capture_output=True, text=True).stdout.split()}
        looks.append((ours, theirs, listing))
        return ours == theirs == listing

    wait_until(agree, "our thread list, ps's and ls's to agree (a thread list that changed between looks)",
               timeout=30)
    assert spinner.pid in looks[-1][0]


def test_spinning_target_shows_running_threads_and_their_cpu_time(spinner: Target) -> None:
    wait_until(lambda: any(t.state == "R" for t in procfs.threads(spinner.pid)), "a thread in state R")
    before = sum(t.utime for t in procfs.threads(spinner.pid))
    wait_until(lambda: sum(t.utime for t in procfs.threads(spinner.pid)) > before, "the user time to grow")


def test_thread_stat_parses_comm_with_spaces_and_parentheses() -> None:
    name = "a) (b c)"
    code = ("import ctypes, sys, time\n"
            f"ctypes.CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0)\n"
            "print('ok', flush=True)\ntime.sleep(30)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ok"
        comm = Path(f"/proc/{p.pid}/comm").read_text().rstrip("\n")
        assert comm == name
        deadline = time.monotonic() + 5
        while True:  # "ok" is printed just before the sleep starts
            main = next(t for t in procfs.threads(p.pid) if t.tid == p.pid)
            if main.state == "S" or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert main.comm == comm
        assert main.state == "S"
        st = procfs.stat(p.pid)
        assert (st.comm, st.ppid) == (comm, os.getpid())
    finally:
        p.kill()
        p.wait()


def test_exe_path_opens_a_deleted_binary_and_maps_give_its_bias(tmp_path: Path) -> None:
    copy = tmp_path / "spinner-copy"
    original = spinner_binary(pie=True)
    copy.write_bytes(original.read_bytes())
    copy.chmod(0o755)
    t = Target(copy, "-spinners", "1", "-gc", "0")
    try:
        copy.unlink()  # like a container's binary: the link target does not exist here
        exe = procfs.exe_path(t.pid)
        assert exe.deleted and exe.target.startswith(str(copy))
        with open(exe.path, "rb") as f:
            assert f.read(4096) == original.read_bytes()[:4096]
        with Process.open(t.pid) as proc:
            bias = proc.load_bias(elf_load_segments(original))
            spin, size = nm_sizes(original)["main.spin"]
            assert proc.memory.read(spin + bias, size) == elf_bytes_at(original, spin, size)
    finally:
        t.stop()


# -- pausing --------------------------------------------------------------------------------


@pytest.mark.parametrize(("pie", "overlap"), [(False, True), (True, False)], ids=["exec", "pie-serial"])
def test_paused_pc_of_running_threads_is_mostly_in_the_spin_function(pie: bool, overlap: bool) -> None:
    binary = spinner_binary(pie)
    t = Target(binary, "-spinners", "2", "-gc", "0")
    try:
        with Process.open(t.pid) as proc:
            bias = proc.load_bias(elf_load_segments(binary))
            start, size = nm_sizes(binary)["main.spin"]
            lo, hi = start + bias, start + bias + size
            inside = total = 0
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline or total < 20:
                running = [th.tid for th in proc.threads() if th.running]
                for p in proc.pause(running, overlap=overlap).values():
                    total += 1
                    inside += lo <= p.regs.rip < hi
                    assert p.pause_ns > 0
            assert inside > total / 2, (inside, total)
            assert no_stopped_threads(t.pid) and untraced(t.pid)
    finally:
        t.stop()


def test_paused_block_holds_every_thread_in_tracing_stop_then_releases_them(spinner: Target) -> None:
    with Process.open(spinner.pid) as proc:
        tids = proc.tids()
        stacks = {}
        with proc.paused(tids) as regs:
            assert set(regs) == set(tids)
            states = spinner.states()
            assert all(states[tid] == "t" for tid in tids), states
            for tid, r in regs.items():
                stacks[tid] = proc.memory.read(r.rsp, 64)
                assert any(r.rsp in m for m in proc.maps() if m.perms.startswith("rw"))
        assert set(proc.pauser.last_pause_ns) == set(tids)
        assert no_stopped_threads(spinner.pid) and untraced(spinner.pid)
        assert all(len(s) == 64 for s in stacks.values())
    ops1, _ = spinner.poke()
    ops2, _ = spinner.poke()
    assert ops2 > ops1


def test_errors_inside_a_pause_still_detach_every_thread(spinner: Target) -> None:
    with Process.open(spinner.pid) as proc:
        tids = proc.tids()
        with pytest.raises(KeyboardInterrupt), proc.paused(tids):
            raise KeyboardInterrupt
        assert no_stopped_threads(spinner.pid)

        def boom(tid: int, regs: object) -> None:
            raise RuntimeError("callback failed")

        with pytest.raises(RuntimeError):
            proc.pause(tids, while_stopped=boom)
        assert no_stopped_threads(spinner.pid) and untraced(spinner.pid)
        # The callback's reads happen while the thread is stopped.
        seen = proc.pause(tids[:1], while_stopped=lambda tid, regs: spinner.states()[tid])
        assert seen[tids[0]].extra == "t"
    spinner.poke()


def test_threads_that_do_not_exist_are_skipped(spinner: Target) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    with Process.open(spinner.pid) as proc:
        tids = proc.tids()
        got = proc.pause([dead.pid, *tids])
        assert dead.pid not in got
        assert set(got) == set(tids) - {tid for tid in tids if procfs.thread_state(spinner.pid, tid) is None}


@pytest.mark.parametrize("overlap", [True, False], ids=["overlapped", "serial"])
def test_signals_sent_while_pausing_are_delivered_and_preemption_keeps_working(overlap: bool) -> None:
    t = Target(spinner_binary(), "-spinners", "2", "-gc", "5ms")
    try:
        with Process.open(t.pid) as proc:
            # A spinner thread: the runtime preempts it with SIGURG and we aim signals at it.
            victim = 0
            while not victim:
                running = [th.tid for th in proc.threads() if th.running]
                victim = next((tid for tid, p in proc.pause(running).items()
                               if p.regs.rip in range(*_spin_range(proc, t.binary))), 0)
            # A separate process floods the victim with SIGURG at random moments while we pause
            # it. We aim SIGUSR1s at it, each once the previous one was answered (so none can
            # coalesce with a pending one: each one sent must be answered): every other one
            # between pauses, and every other one inside a pause, between seize and interrupt,
            # holding the interrupt until the victim has taken it (it then sits in its
            # signal-delivery-stop, and the signal exists only in that stop: goflame must hand
            # it back). Pausing goes on until 6 were sent, 3 of them taken inside a pause, and
            # 100 pauses made: a deadline, not a count of tries, since a loaded machine gets
            # through fewer of each per second.
            flood = subprocess.Popen([sys.executable, "-c", _FLOOD, str(t.pid), str(victim)])
            forwarded: dict[int, int] = {}
            pauses = sent = 0
            last_sent = 0.0

            def due() -> bool:
                return time.monotonic() - last_sent > 0.1 and len(t.signal_lines("SIGUSR1")) == sent

            def send() -> None:
                nonlocal sent, last_sent
                tgkill(t.pid, victim, signal.SIGUSR1)
                sent += 1
                last_sent = time.monotonic()

            def send_in_the_window(tid: int) -> None:
                if tid == victim and sent % 2 == 0 and due():
                    send()
                    _wait_for_ptrace_stop(t.pid, victim, within=10)

            deadline = time.monotonic() + 120
            try:
                while not (sent >= 6 and pauses > 100 and forwarded.get(signal.SIGUSR1, 0) >= 3):
                    assert time.monotonic() < deadline, (
                        f"after {pauses} pauses: {sent} SIGUSR1s sent, {len(t.signal_lines('SIGUSR1'))} "
                        f"answered; signals handed back {forwarded}; flood exit code {flood.poll()}")
                    tids = {victim, *(th.tid for th in proc.threads() if th.running)}
                    for p in proc.pause(tids, overlap=overlap, just_before=send_in_the_window).values():
                        pauses += 1
                        if p.signal:
                            forwarded[p.signal] = forwarded.get(p.signal, 0) + 1
                    if sent % 2 == 1 and due():
                        send()
                assert flood.poll() is None, "the SIGURG flood died"
            finally:
                flood.kill()
                flood.wait()
            loop_end = time.monotonic()
        # Every SIGUSR1 reached the program's own handler, those handed back by goflame too.
        wait_until(lambda: len(t.signal_lines("SIGUSR1")) >= sent, f"the answers to {sent} SIGUSR1s")
        lines = t.signal_lines("SIGUSR1")
        assert len(lines) == sent
        assert sum(when < loop_end for when, _, _ in lines) >= sent - 1
        # Forced GCs need every spinner preempted by SIGURG: they kept completing.
        assert lines[-1][2] > lines[0][2]
        assert lines[-1][1] > lines[0][1]
        assert no_stopped_threads(t.pid) and untraced(t.pid)
    finally:
        t.stop()


def _wait_for_ptrace_stop(pid: int, tid: int, within: float) -> None:
    """Wait until a seized thread sits in a ptrace stop (/proc state 't'), or `within` seconds
    pass (then the caller's interrupt comes first; nothing is held meanwhile: the thread is
    seized, not stopped)."""
    stat = Path(f"/proc/{pid}/task/{tid}/stat")
    give_up = time.monotonic() + within
    while time.monotonic() < give_up:
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "t":
                return
        except OSError:
            return
        time.sleep(0.0005)


def _spin_range(proc: Process, binary: Path) -> tuple[int, int]:
    bias = proc.load_bias(elf_load_segments(binary))
    start, size = nm_sizes(binary)["main.spin"]
    return start + bias, start + bias + size


_FLOOD = """
import ctypes, sys, time
libc = ctypes.CDLL(None)
pid, tid = int(sys.argv[1]), int(sys.argv[2])
while True:  # until killed
    libc.syscall(234, pid, tid, 23)  # tgkill(pid, tid, SIGURG)
    time.sleep(0.00005)
"""


def test_job_control_stop_and_continue_during_pausing_are_honoured(spinner: Target) -> None:
    with Process.open(spinner.pid) as proc:
        def pause_while(signals: threading.Thread) -> None:
            """Pause every thread again and again until `signals` has sent its signals, and a
            few times more: the signals land while threads are being paused."""
            signals.start()
            while signals.is_alive():
                proc.pause(proc.tids())
            for _ in range(20):
                proc.pause(proc.tids())
            signals.join()

        # SIGSTOP + SIGCONT while we pause: the target must end up running.
        pause_while(threading.Thread(target=lambda: (os.kill(spinner.pid, signal.SIGSTOP), time.sleep(0.05),
                                                     os.kill(spinner.pid, signal.SIGCONT))))
        assert no_stopped_threads(spinner.pid, within=10)
        ops1, _ = spinner.poke()
        # SIGSTOP alone while we pause: it is not swallowed, the target is stopped (and stays
        # so: no CPU time added over a while)...
        pause_while(threading.Thread(target=os.kill, args=(spinner.pid, signal.SIGSTOP)))
        wait_until(lambda: stopped_for_good(spinner.pid), "the target to stop on SIGSTOP")
        # ...and a stopped target can still be "paused" and stays stopped until SIGCONT (each
        # thread detached from a group stop goes back into it: "R" for a moment).
        proc.pause(proc.tids())
        wait_until(lambda: stopped_for_good(spinner.pid), "the paused target to be stopped again")
        os.kill(spinner.pid, signal.SIGCONT)
        assert no_stopped_threads(spinner.pid, within=10)
        ops2, _ = spinner.poke()
        assert ops2 > ops1


_HOLD = """
import sys, time
from goflame.process import procfs
from goflame.process.ptrace import Pauser
pid = int(sys.argv[1])
with Pauser(pid).paused([t.tid for t in procfs.threads(pid)]) as regs:
    print("stopped", len(regs), flush=True)
    time.sleep(60)
"""


def test_killing_the_profiler_while_it_holds_threads_leaves_the_target_running(spinner: Target) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(spinner.pid)], stdout=subprocess.PIPE,
                              text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().startswith("stopped")
        states = spinner.states()
        assert states and all(s == "t" for s in states.values()), states
        assert all(procfs.tracer_pid(spinner.pid, tid) == holder.pid for tid in states)
        holder.kill()
        holder.wait()
        assert no_stopped_threads(spinner.pid, within=1.0) and untraced(spinner.pid)
        ops1, _ = spinner.poke()
        ops2, _ = spinner.poke()
        assert ops2 > ops1
    finally:
        holder.kill()
        holder.wait()


# -- bad targets ----------------------------------------------------------------------------


def test_open_a_pid_that_does_not_exist_raises_process_gone() -> None:
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    with pytest.raises(ProcessGone, match=str(pid)):
        Process.open(pid)
    with pytest.raises(ProcessGone):
        Pauser(pid).pause([pid])


def test_open_a_zombie_raises_process_gone() -> None:
    child = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 5
        while procfs.stat(child.pid).state != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert procfs.is_zombie(child.pid)
        with pytest.raises(ProcessGone, match="zombie"):
            Process.open(child.pid)
        with pytest.raises(ProcessGone):
            Pauser(child.pid).pause([child.pid])
    finally:
        child.wait()
    assert not procfs.exists(child.pid)


def test_open_a_thread_id_instead_of_a_pid_raises_bad_input(spinner: Target) -> None:
    tid = next(t for t in procfs.threads(spinner.pid) if t.tid != spinner.pid).tid
    with pytest.raises(BadInput, match=str(spinner.pid)):
        Process.open(tid)


_AS_NOBODY = """
import sys
from goflame.errors import GoflameError
from goflame.process import Process
from goflame.process.memory import ProcessMemory
from goflame.process.ptrace import Pauser
pid = int(sys.argv[1])
for what in (lambda: Process.open(pid), lambda: ProcessMemory(pid).read(0x400000, 8),
             lambda: Pauser(pid).pause([pid])):
    try:
        what()
        print("no error")
    except GoflameError as e:
        print(type(e).__name__, e.exit_code, str(e), sep="|")
"""


def test_an_unprivileged_user_gets_not_permitted_with_advice(spinner: Target) -> None:
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", python,
                        "-c", _AS_NOBODY, str(spinner.pid)], capture_output=True, text=True,
                       cwd="/", env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3, r.stdout
    for line in lines:
        name, code, message = line.split("|")
        assert (name, code) == ("NotPermitted", "4"), line
        assert "root" in message and "CAP_SYS_PTRACE" in message and str(spinner.pid) in message
    spinner.poke()


def test_boosted_pause_runs_as_sched_fifo_only_while_pausing(spinner: Target, monkeypatch) -> None:
    import goflame.process.ptrace as ptrace

    # The boost lasts BOOST_NS from the first seize; on a loaded machine a later thread's stop
    # comes after that (2 runs of 6 with a CI run beside): give this pause all the time it takes.
    monkeypatch.setattr(ptrace, "BOOST_NS", 10**10)
    with Process.open(spinner.pid) as proc:
        proc.pauser.boost = True
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
        running = [t.tid for t in proc.threads()]
        got = proc.pause(running, while_stopped=lambda tid, regs: os.sched_getscheduler(0))
        assert got and all(p.extra & ~os.SCHED_RESET_ON_FORK == os.SCHED_FIFO for p in got.values())
        assert all(0 < p.held_ns <= p.pause_ns for p in got.values())
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
        assert no_stopped_threads(spinner.pid)


_SECCOMP_READ = """
import ctypes, sys
seccomp = ctypes.CDLL("libseccomp.so.2")
seccomp.seccomp_init.restype = ctypes.c_void_p
ctx = seccomp.seccomp_init(ctypes.c_uint32(0x7FFF0000))  # SCMP_ACT_ALLOW
nr = seccomp.seccomp_syscall_resolve_name(b"process_vm_readv")
assert seccomp.seccomp_rule_add(ctypes.c_void_p(ctx), ctypes.c_uint32(0x00050000 | 1), nr, 0) == 0  # EPERM
assert seccomp.seccomp_load(ctypes.c_void_p(ctx)) == 0
from goflame.process.memory import ProcessMemory
pid, addr = int(sys.argv[1]), int(sys.argv[2])
for backend in ("auto", "vm_readv"):
    mem = ProcessMemory(pid, backend)
    try:
        one = mem.read(addr, 16).hex()
        many = [b.hex() if b else "-" for b in mem.read_many([(addr, 8), (0, 8), (addr + 8, 8)])]
        print(backend, mem.backend, mem.batch_backend, one, *many)
    except Exception as e:
        print(backend, type(e).__name__, str(e).replace(" ", "_"))
"""


def test_reads_fall_back_to_proc_mem_where_seccomp_refuses_process_vm_readv(spinner: Target) -> None:
    """Docker's default seccomp profile answers process_vm_readv with EPERM."""
    addr = nm_sizes(spinner.binary)["runtime.pclntab"][0]
    expected = elf_bytes_at(spinner.binary, addr, 16).hex()
    r = subprocess.run([sys.executable, "-c", _SECCOMP_READ, str(spinner.pid), str(addr)],
                       capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stderr
    auto, forced = (line.split() for line in r.stdout.splitlines())
    assert auto == ["auto", "procmem", "procmem", expected, expected[:16], "-", expected[16:]]
    assert forced[:2] == ["vm_readv", "NotPermitted"] and "root" in forced[2]


def test_pausing_threads_that_come_and_go_skips_the_ones_that_ended() -> None:
    t = Target(spinner_binary(), "-spinners", "1", "-gc", "0", "-churn", "2")
    try:
        with Process.open(t.pid) as proc:
            first = set(proc.tids())
            seen: set[int] = set()
            asked = paused = rounds = 0
            deadline = time.monotonic() + 120
            overlap = False
            # 300 rounds, and on until the runtime has started 10 new threads and some ended
            # between our listing and our pausing them (a deadline, not a fixed time: how fast
            # threads come and go depends on the CPU the machine leaves the target).
            while not (rounds >= 300 and len(seen - first) > 10 and paused < asked):
                assert time.monotonic() < deadline, (rounds, len(seen - first), paused, asked)
                rounds += 1
                tids = proc.tids()
                seen.update(tids)
                time.sleep(0.0005)  # let some of them end before we get to them
                overlap = not overlap
                got = proc.pause(tids, overlap=overlap)
                assert set(got) <= set(tids)
                asked += len(tids)
                paused += len(got)
            assert len(seen - first) > 10  # the runtime really did start new threads
            assert paused < asked  # and some ended between listing and pausing
            assert no_stopped_threads(t.pid)
            # Threads that ended while we traced them were reaped, not left as zombies.
            wait_until(lambda: not any(th.state == "Z" for th in proc.threads()), "no zombie thread", timeout=10)
            t.poke()
    finally:
        t.stop()


def test_ctrl_c_landing_anywhere_in_a_pause_leaves_no_thread_stopped_nor_the_pauser_real_time(spinner: Target) -> None:
    armed = [False]

    def interrupt(signum: int, frame: object) -> None:
        if armed[0]:  # at most one Ctrl-C per pause, and never outside the try below
            armed[0] = False
            raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    interrupted = 0
    try:
        with Process.open(spinner.pid) as proc:
            tids = proc.tids()
            i = 0
            deadline = time.monotonic() + 120
            # Until 50 pauses were interrupted (the timer lands at 1-400 us: inside a pause
            # or after it, depending on the machine's speed) and at least 300 were tried.
            while interrupted < 50 or i < 300:
                assert time.monotonic() < deadline, (interrupted, i)
                i += 1
                try:
                    armed[0] = True
                    signal.setitimer(signal.ITIMER_REAL, 1e-6 * (1 + (i * 37) % 400))
                    proc.pause(tids, overlap=bool(i % 2))
                    armed[0] = False
                except KeyboardInterrupt:
                    interrupted += 1
                signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert no_stopped_threads(spinner.pid)
    assert untraced(spinner.pid)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER, "a Ctrl-C left the pausing thread real-time"
    spinner.poke()


def test_a_realtime_wakeup_stamps_the_thread_it_took_the_cpu_from() -> None:
    """The sampler tells the thread it froze by the run-queue clock the kernel stamps on both
    sides of the switch (`CpuPin.switched_in_ns` against /proc/TID/sched): on a CPU where
    only our spinner's busy thread runs, its wakeups name that thread, and never two threads
    at once. Sampled until 10 wakeups name it (another program may hold the CPU at times)."""
    from goflame.process.cpu import CpuPin

    assert os.sched_getscheduler(0) == os.SCHED_OTHER, "an earlier test left this thread real-time"
    cpu = max(os.sched_getaffinity(0))
    t = Target(Path("/usr/bin/taskset"), "-c", str(cpu), str(spinner_binary()), "-spinners", "1")
    pin = CpuPin()
    try:
        proc = Process.open(t.pid)
        named_busy = wakeups = 0
        while named_busy < 10 and wakeups < 400:
            busy = max(proc.threads(), key=lambda th: th.utime + th.stime).tid
            pin.wake_on(cpu)
            with pin.waking():
                time.sleep(0.002)
            stamp = pin.switched_in_ns
            pin.ordinary()
            wakeups += 1
            named = [tid for tid in proc.tids() if stamp is not None and proc.exec_start(tid) == stamp]
            assert len(named) <= 1, named
            named_busy += named == [busy]
        assert named_busy >= 10, f"{named_busy} of {wakeups} wakeups named the busy thread"
    finally:
        pin.close()
        t.stop()
