"""goflame against `perf record`, on the same running Go process at the same time.

The instrument behind tests/test_accuracy.py, scripts/accuracy.py and docs/accuracy.md.
`measure(pid, binary, Settings(engine=...))` runs `perf record -e cpu-clock -g -F <perf_rate>
-p PID` and `goflame record --pid PID --engine E -r <rate> -f pprof` side by side, in rounds,
until both have at least `min_samples` samples (or `max_seconds` of recording); `compare`
turns the two into per-function shares and the issue's three verdicts.

Definitions
-----------
perf side (`perf script -F comm,pid,tid,ip,sym,dso --no-inline`: each sample's callchain,
innermost first, kernel frames before user frames):

- A frame is *kernel* when its ip is in the kernel half of the address space (or its dso is
  `[kernel.kallsyms]`); a sample is a *kernel sample* when its first frame is.
- A sample's *Go leaf* is its innermost user-space frame: the sample's own ip for a user-mode
  sample; for a kernel sample the first user frame of its callchain, i.e. the user ip the
  kernel was entered from (goflame shows the same: it charges kernel time to the function
  that entered the kernel). Named by the symbol perf reads from the Go binary's .symtab:
  perf names the *physical* function at an ip. A user frame outside the Go binary (the vDSO;
  libc with cgo) is the bucket `[native code]`, as goflame names such pcs; a frame perf could
  not name is `[unknown]` (counted; none expected for unstripped binaries).
- *Kernel share*: kernel samples / all of the target's samples. Kernel samples are split by
  how the kernel was entered, from the outermost kernel frame: a syscall (`entry_SYSCALL_64`),
  a page fault, an interrupt, other. Page faults (e.g. in runtime.memclrNoHeapPointers) and
  interrupts are kernel time charged to ordinary Go functions, not to a syscall wrapper.
- *Syscall share*: samples (kernel or user) whose Go leaf is in SYSCALL_WRAPPERS — the
  kernel time entered through a wrapper plus the wrapper's own few user instructions.
  Every syscall-entered kernel sample must have such a leaf: `PerfProfile.unlisted` counts
  the ones that do not (a gap in SYSCALL_WRAPPERS or in perf's callchain), leaving out
  rt_sigreturn and signal delivery, which rewrite the user registers (SIGNAL_WORK).
- Samples of another process than the target (none expected with `-p`) are counted in
  `foreign` and left out of every share.

goflame side (its pprof file, read by Go's own `go tool pprof -traces`, never by goflame):

- goflame's pprof writes one Location per pc whose Lines are the frames inlined there,
  innermost first, the physical function last: `-traces` marks all but that last one
  `(inline)`. A sample's *physical leaf* is its first frame not marked `(inline)` — the
  function perf would name at that pc. No pc is symbolized again by goflame or by us.
- Shares are of goflame's recorded samples (what its flame graph shows); its *errors*
  (samples it dropped: "N samples, E errors" on stderr) and *truncated* samples (a stack
  with a `[truncated: ...]` frame, still recorded) are counted against errors + samples.
- *Syscall-wrapper share*: recorded samples whose physical leaf is in SYSCALL_WRAPPERS.

Names on both sides are compared after `canonical` (an ABI suffix such as `.abi0` removed,
generic type arguments written `[...]`).

Verdicts (issue 14's bar)
-------------------------
(a) every user-space Go leaf to which perf gives >= 3 % has goflame's share within 2.5 pp;
(b) goflame's syscall-wrapper share is within 2.5 pp of perf's syscall share (the like for
    like of "perf's kernel share": page-fault and interrupt time is kernel time that goflame
    rightly charges to the faulting function, and (a) judges it there);
(c) goflame's errors + truncated samples are <= 1 % of its errors + samples.
A difference passes when it is within the bar or within 3 binomial standard errors of the
two counts (sqrt(p1(1-p1)/n1 + p2(1-p2)/n2)), and (c)'s count when it is within 3 binomial
standard errors above 1 % of the samples, so that a correct goflame is not failed by
sampling noise. With 4,000 goflame samples (goflame at 400 Hz, perf at 997 Hz: ~2.5x as many)
3 sigma is 2.4 pp for a 25 % share — the largest any leaf has in these workloads — and less
for smaller ones: the bar is what decides.

Sample counts: each round's length is sized from the target's CPU use measured just before
(and from the samples per second the rounds so far achieved, errors included), and rounds are
added until both sides have `min_samples`, within `max_seconds`. Each round starts perf once
goflame has flushed its first samples (the streamed `.goflame` holds a chunk) and stops
goflame when perf is done. Both sides are then cut to one window (`in_one_window`): perf's
first to last sample, on CLOCK_MONOTONIC (`perf record -k CLOCK_MONOTONIC`; goflame's
recording says where its timestamps start, `monotonic_zero_ns`). Uncut, a 2 s round had 44 %
of goflame's samples in the second before perf started and the one after it stopped, and GC
cycles made those moments unlike the rest.
"""

from __future__ import annotations

import math
import os
import re
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from pprof_oracle import traces
from workloads import process_cpu_ns

GOFLAME = (sys.executable, "-m", "goflame.cli")
KERNEL_START = 0xFFFF_8000_0000_0000
NATIVE = "[native code]"
UNKNOWN = "[unknown]"
NO_USER_FRAME = "[no user frame]"
SIGNAL_HANDLERS = frozenset({"runtime.sigtramp", "runtime.cgoSigtramp"})

# Go functions that execute the SYSCALL instruction on linux/amd64: every TEXT symbol that
# contains one in runtime/sys_linux_amd64.s, runtime/time_linux_amd64.s,
# syscall/asm_linux_amd64.s and the runtime's Syscall6 (runtime/internal/syscall in 1.19-1.20,
# internal/runtime/syscall from 1.23, internal/runtime/syscall/linux in 1.27), from Go 1.19 to
# 1.27 (`syscall_functions` reads them from a GOROOT; test_accuracy checks this set covers
# them). syscall.Syscall/Syscall6/RawSyscall6 are Go code that calls that Syscall6, so the
# kernel is entered from Syscall6. time.now and runtime.nanotime1 read the clock in the vDSO
# (user space: `[native code]` on both sides) and only fall back to SYSCALL without one;
# runtime.vgetrandom1 (1.24+) calls the vDSO and has no SYSCALL of its own. Kept as one set
# for every release: a name that a release does not have matches nothing.
SYSCALL_WRAPPERS: frozenset[str] = frozenset({
    *(f"runtime.{n}" for n in (
        "exit", "exitThread", "open", "closefd", "write1", "read", "pipe2", "usleep", "gettid", "raise",
        "raiseproc", "getpid", "tgkill", "setitimer", "timer_create", "timer_settime", "timer_delete",
        "mincore", "nanotime1", "rtsigprocmask", "rt_sigaction", "sigreturn", "sigreturn__sigaction",
        "sysMmap", "sysMunmap", "madvise", "futex", "clone", "sigaltstack", "settls", "osyield",
        "sched_getaffinity", "access", "connect", "socket", "sbrk0",
        "epollcreate", "epollcreate1", "epollctl", "epollwait", "closeonexec")),  # the last five: <= 1.20
    "time.now", "syscall.rawVforkSyscall", "syscall.rawSyscallNoError", "syscall.gettimeofday",
    "runtime/internal/syscall.Syscall6", "internal/runtime/syscall.Syscall6",
    "internal/runtime/syscall/linux.Syscall6",
})


class Engine(Enum):
    PERF = "perf"
    PTRACE = "ptrace"


class KernelEntry(Enum):
    """How a kernel sample's thread entered the kernel (its outermost kernel frame)."""

    SYSCALL = "syscall"
    FAULT = "fault"
    INTERRUPT = "interrupt"
    OTHER = "other"


def canonical(name: str) -> str:
    """A function name as both sides can agree on it: `runtime.futex.abi0` -> `runtime.futex`
    (.symtab names assembly by ABI), `main.F[go.shape.int]` -> `main.F[...]` (the runtime
    prints generic type arguments as [...])."""
    if name.startswith("["):
        return name
    name = re.sub(r"\.abi(?:0|Internal)$", "", name)
    out, depth = [], 0
    for ch in name:
        if ch == "[":
            if depth == 0:
                out.append("[...]")
            depth += 1
        elif ch == "]" and depth:
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def syscall_functions(goroot: Path) -> set[str]:
    """The functions of a Go release's linux/amd64 assembly that execute SYSCALL, named as
    symbols are (`runtime·futex` in runtime/ is runtime.futex, `·Syscall6` in
    internal/runtime/syscall/linux/ is internal/runtime/syscall/linux.Syscall6)."""
    src = goroot / "src"
    found: set[str] = set()
    for path in sorted(src.glob("**/*linux_amd64.s")):
        rel = path.relative_to(src)
        if rel.parts[0] in ("cmd", "vendor") or "testdata" in rel.parts:
            continue
        pkg = str(rel.parent)
        fn = None
        for line in path.read_text().splitlines():
            if line.startswith("TEXT"):
                sym = line.split()[1].split("(SB)")[0].split("<")[0]
                fn = (sym if not sym.startswith("·") else pkg + sym).replace("·", ".")
            elif fn and line.strip().split("//")[0].strip() == "SYSCALL":
                found.add(fn)
    return found


# ---------------------------------------------------------------------------------------
# perf


@dataclass(frozen=True, slots=True)
class PerfProfile:
    """The target's perf samples by Go leaf, with the kernel's part and how it was entered."""

    samples: int = 0
    foreign: int = 0
    unknown: int = 0
    kernel: int = 0
    leaves: Counter[str] = field(default_factory=Counter)
    kernel_entry: Counter[KernelEntry] = field(default_factory=Counter)
    syscall_leaves: Counter[str] = field(default_factory=Counter)  # Go leaves of syscall-entered samples

    def __add__(self, o: PerfProfile) -> PerfProfile:
        return PerfProfile(self.samples + o.samples, self.foreign + o.foreign, self.unknown + o.unknown,
                           self.kernel + o.kernel, self.leaves + o.leaves, self.kernel_entry + o.kernel_entry,
                           self.syscall_leaves + o.syscall_leaves)

    @property
    def syscall_share(self) -> float:
        return share(sum(n for f, n in self.leaves.items() if f in SYSCALL_WRAPPERS), self.samples)

    @property
    def kernel_share(self) -> float:
        return share(self.kernel, self.samples)

    @property
    def unlisted(self) -> Counter[str]:
        """Go leaves that entered the kernel by a syscall but are not in SYSCALL_WRAPPERS.
        (Syscalls that change the user registers are left out of syscall_leaves: see
        SIGNAL_WORK; the handler itself may still show when sampled after the frame was set.)"""
        return Counter({f: n for f, n in self.syscall_leaves.items()
                        if f not in SYSCALL_WRAPPERS and f not in SIGNAL_HANDLERS})


_PERF_HEAD = re.compile(r"^(?P<comm>\S.*?)\s+(?P<pid>-?\d+)/(?P<tid>-?\d+)(?:\s+(?P<time>\d+\.\d+):)?\s*$")
_PERF_FRAME = re.compile(r"^\s+(?P<ip>[0-9a-f]+)\s+(?P<sym>.*?)\s+\((?P<dso>[^()]*)\)\s*$")


def _entry(kernel_syms: list[str]) -> KernelEntry:
    outer = kernel_syms[-1] if kernel_syms else ""
    if outer.startswith("entry_SYSCALL") or outer in ("do_syscall_64", "entry_SYSRETQ_unsafe_stack"):
        return KernelEntry.SYSCALL
    if "page_fault" in outer:
        return KernelEntry.FAULT
    if outer.startswith(("asm_sysvec_", "asm_common_interrupt", "sysvec_", "common_interrupt")):
        return KernelEntry.INTERRUPT
    return KernelEntry.OTHER


def _is_kernel(ip: str, dso: str) -> bool:
    return int(ip, 16) >= KERNEL_START or dso.startswith("[kernel")


def _go_leaf(frames: list[re.Match[str]], exe: set[str]) -> tuple[str, list[str]]:
    """A sample's Go leaf (its first user frame, named) and the kernel frames above it."""
    kernel_syms: list[str] = []
    for fr in frames:
        if _is_kernel(fr["ip"], fr["dso"]):
            kernel_syms.append(fr["sym"])
        elif fr["dso"] == UNKNOWN or (fr["dso"] in exe and fr["sym"] == UNKNOWN):
            return UNKNOWN, kernel_syms
        elif fr["dso"] not in exe:
            return NATIVE, kernel_syms
        else:
            return canonical(fr["sym"]), kernel_syms
    return NO_USER_FRAME, kernel_syms


# Kernel functions that rewrite the user registers before the syscall returns: rt_sigreturn
# restores the interrupted code's (the user ip is then wherever the signal hit, e.g. Go's
# asyncPreempt), signal delivery points them at the handler. Such samples are kernel time of
# the syscall all the same, but their first user frame is not the function that entered.
SIGNAL_WORK = ("rt_sigreturn", "get_signal", "do_signal", "handle_signal", "setup_rt_frame")


Window = tuple[int, int]  # CLOCK_MONOTONIC ns, both ends included


def _ns(seconds: str) -> int:
    whole, _, frac = seconds.partition(".")
    return int(whole) * 1_000_000_000 + int(frac.ljust(9, "0")[:9])


def perf_window(text: str, pid: int) -> Window | None:
    """The first and last moment perf sampled the target (`perf script -F ...,time --ns`)."""
    times = [_ns(m["time"]) for m in (_PERF_HEAD.match(b.lstrip("\n").split("\n", 1)[0]) for b in text.split("\n\n"))
             if m and m["time"] and int(m["pid"]) == pid]
    return (min(times), max(times)) if times else None


def parse_perf_script(text: str, pid: int, binary: Path, window: Window | None = None) -> PerfProfile:
    """`perf script -F comm,pid,tid[,time],ip,sym,dso --no-inline` output -> PerfProfile, of
    the samples within `window` (all, when None or the text has no times)."""
    exe = {str(binary), os.path.realpath(binary)}
    samples = foreign = kernel = 0
    leaves: Counter[str] = Counter()
    entries: Counter[KernelEntry] = Counter()
    syscall_leaves: Counter[str] = Counter()
    for block in text.split("\n\n"):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if not lines:
            continue
        head = _PERF_HEAD.match(lines[0])
        assert head, f"unexpected perf script line: {lines[0]!r}"
        if int(head["pid"]) != pid:
            foreign += 1
            continue
        if window and head["time"] and not window[0] <= _ns(head["time"]) <= window[1]:
            continue
        frames = []
        for ln in lines[1:]:
            fr = _PERF_FRAME.match(ln)
            assert fr, f"unexpected perf script frame: {ln!r}"
            frames.append(fr)
        samples += 1
        leaf, kernel_syms = _go_leaf(frames, exe)
        leaves[leaf] += 1
        if frames and _is_kernel(frames[0]["ip"], frames[0]["dso"]):
            kernel += 1
            how = _entry(kernel_syms)
            entries[how] += 1
            if how is KernelEntry.SYSCALL and not any(w in k for k in kernel_syms for w in SIGNAL_WORK):
                syscall_leaves[leaf] += 1
    return PerfProfile(samples, foreign, leaves[UNKNOWN], kernel, leaves, entries, syscall_leaves)


def perf_script(data: Path) -> str:
    out = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,pid,tid,time,ip,sym,dso", "--ns",
                          "--no-inline"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"perf script failed: {out.stderr.strip()}"
    return out.stdout


# ---------------------------------------------------------------------------------------
# goflame

_SUMMARY = re.compile(r"Wrote .*: ([\d,]+) samples, ([\d,]+) errors")
_LOST = re.compile(r"([\d,]+) (?:samples lost by the kernel|ticks missed)")


@dataclass(frozen=True, slots=True)
class GoflameProfile:
    """goflame's recorded samples by physical leaf, and what it dropped or cut."""

    samples: int = 0
    errors: int = 0
    truncated: int = 0
    lost: int = 0  # never taken: perf ring overruns (perf engine) or missed ticks (ptrace); not judged
    leaves: Counter[str] = field(default_factory=Counter)
    truncated_by: Counter[str] = field(default_factory=Counter)  # "[truncated: why]" -> samples

    def __add__(self, o: GoflameProfile) -> GoflameProfile:
        return GoflameProfile(self.samples + o.samples, self.errors + o.errors, self.truncated + o.truncated,
                              self.lost + o.lost, self.leaves + o.leaves, self.truncated_by + o.truncated_by)

    @property
    def syscall_share(self) -> float:
        return share(sum(n for f, n in self.leaves.items() if f in SYSCALL_WRAPPERS), self.samples)

    @property
    def bad_share(self) -> float:
        """Errors + truncated, of errors + samples: every sample goflame took."""
        return share(self.errors + self.truncated, self.errors + self.samples)


def goflame_profile(pprof: Path, summary: str, samples: int | None = None) -> GoflameProfile:
    """goflame's pprof file as `go tool pprof -traces` reads it, and its summary line (whose
    sample count `samples` replaces, for a pprof of part of the recording)."""
    m = _SUMMARY.search(summary)
    assert m, f"no summary line in goflame's output: {summary!r}"
    recorded, errors = (int(g.replace(",", "")) for g in m.groups())
    samples = recorded if samples is None else samples
    leaves: Counter[str] = Counter()
    cut: Counter[str] = Counter()
    for value, frames in traces(pprof, "samples"):
        physical = next((name for name, inlined in frames if not inlined), UNKNOWN)
        leaves[canonical(physical)] += value
        marks = [name for name, _ in frames if name.startswith("[truncated")]
        if marks:
            cut[marks[0]] += value
    assert sum(leaves.values()) == samples, (sum(leaves.values()), samples)
    lost = _LOST.search(summary)
    return GoflameProfile(samples, errors, sum(cut.values()), int(lost.group(1).replace(",", "")) if lost else 0,
                          leaves, cut)


# ---------------------------------------------------------------------------------------
# recording both at once


@dataclass(frozen=True, slots=True)
class Settings:
    engine: Engine = Engine.PERF
    rate: float = 400.0  # goflame's -r: samples per CPU-second (its default is 100)
    perf_rate: int = 997  # perf's -F: ~2.5x goflame's, so perf adds little sampling error
    min_samples: int = 4000  # on each side
    max_seconds: float = 60.0  # recording time, all rounds together
    min_round_s: float = 2.0


@dataclass(frozen=True, slots=True)
class Measurement:
    perf: PerfProfile
    goflame: GoflameProfile
    rounds: int
    seconds: float  # perf's recording time, all rounds
    cpus: float  # the target's CPU use (CPUs) measured before the first round

    def __add__(self, o: Measurement) -> Measurement:
        """Runs pooled: their counts summed (the CPU use is the mean, by recording time)."""
        seconds = self.seconds + o.seconds
        cpus = (self.cpus * self.seconds + o.cpus * o.seconds) / seconds if seconds else 0.0
        return Measurement(self.perf + o.perf, self.goflame + o.goflame, self.rounds + o.rounds, seconds, cpus)


def to_json(m: Measurement) -> dict[str, Any]:
    """A measurement as plain JSON (scripts/accuracy.py --json keeps runs to render again)."""
    d = {f.name: getattr(m, f.name) for f in fields(m)}
    for side in ("perf", "goflame"):
        prof = d[side]
        d[side] = {f.name: getattr(prof, f.name) for f in fields(prof)}
    d["perf"]["kernel_entry"] = {k.value: n for k, n in m.perf.kernel_entry.items()}
    return d


def from_json(d: dict[str, Any]) -> Measurement:
    perf = dict(d["perf"], kernel_entry=Counter({KernelEntry(k): n for k, n in d["perf"]["kernel_entry"].items()}))
    perf = {k: Counter(v) if isinstance(v, dict) else v for k, v in perf.items()}
    ours = {k: Counter(v) if isinstance(v, dict) else v for k, v in d["goflame"].items()}
    return Measurement(PerfProfile(**perf), GoflameProfile(**ours), d["rounds"], d["seconds"], d["cpus"])


def cpu_use(pid: int, window_s: float = 0.5) -> float:
    """CPUs the target uses, over `window_s` (its threads' schedstat run time)."""
    t0, c0 = time.monotonic(), process_cpu_ns(pid)
    time.sleep(window_s)  # a measuring window, not a wait for an event
    return (process_cpu_ns(pid) - c0) / 1e9 / (time.monotonic() - t0)


def wait_until_streaming(raw: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Until goflame's streamed recording holds a sample chunk (docs/recording-format.md: a
    header of 18 + meta_len + 4 bytes, chunks after it): it is then sampling."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"goflame exited early: {proc.communicate()[1]}")
        try:
            data = raw.read_bytes()
        except FileNotFoundError:
            data = b""
        if len(data) >= 18 and len(data) > 18 + struct.unpack_from("<I", data, 14)[0] + 4:
            return
        time.sleep(0.05)
    raise AssertionError(f"goflame wrote no samples to {raw} in {timeout:.0f} s")


def record_round(pid: int, binary: Path, s: Settings, seconds: float, out: Path) -> tuple[PerfProfile, GoflameProfile]:
    """One round: goflame records; once it streams samples perf records `seconds`; then goflame
    is stopped (SIGINT writes its output)."""
    pprof, data = out.with_suffix(".pprof"), out.with_suffix(".perf.data")
    g = subprocess.Popen([*GOFLAME, "record", "--pid", str(pid), "--engine", s.engine.value, "-r", f"{s.rate:g}",
                          "--keep-raw", "-f", "pprof", "-o", str(pprof)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        wait_until_streaming(Path(str(pprof) + ".goflame"), g)
        perf = subprocess.run(["perf", "record", "-q", "-k", "CLOCK_MONOTONIC", "-e", "cpu-clock", "-g", "-F", str(s.perf_rate),
                               "-p", str(pid), "-o", str(data), "--", "sleep", f"{seconds:.2f}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=seconds + 120)
        assert perf.returncode == 0, f"perf record failed: {perf.stderr.strip()}"
        g.send_signal(signal.SIGINT)
        _, err = g.communicate(timeout=300)
    finally:
        if g.poll() is None:
            g.kill()
            g.wait()
    assert g.returncode == 0, f"goflame record failed: {err.strip()}"
    return in_one_window(perf_script(data), pid, binary, Path(str(pprof) + ".goflame"), err)


def in_one_window(script: str, pid: int, binary: Path, raw: Path, summary: str) -> tuple[PerfProfile, GoflameProfile]:
    """Both sides' samples of the moments both were sampling: perf's from its first sample to
    its last, and goflame's recorded samples in between, by their CLOCK_MONOTONIC times. goflame
    runs a little before and after perf, and a program's phases (GC cycles) differ between
    the two margins and the rest. goflame's recording is read only for its samples' times: the
    samples within the window go to a pprof that `go tool pprof` reads, as before."""
    from goflame.export.pprof import write_pprof
    from goflame.profile import Profile, read_recording

    rec = read_recording(raw)
    zero = int(rec.meta.extra["monotonic_zero_ns"])
    window = perf_window(script, pid)
    assert window, "perf sampled nothing of the target"
    inside = tuple(x for x in rec.samples if window[0] <= zero + x.timestamp_ns <= window[1])
    pprof = raw.with_suffix(".window.pprof")
    write_pprof(Profile(rec.meta, inside), pprof)
    return (parse_perf_script(script, pid, binary, window),
            goflame_profile(pprof, summary, sum(x.weight for x in inside)))


def measure(pid: int, binary: Path, s: Settings, workdir: Path) -> Measurement:
    """Rounds of `record_round` until both sides have `s.min_samples`, or `s.max_seconds`."""
    cpus = max(cpu_use(pid), 0.05)
    perf, ours = PerfProfile(), GoflameProfile()
    spent, rounds = 0.0, 0
    while spent < s.max_seconds - 0.5:
        # goflame's recorded samples per second: expected from the CPU use, then as achieved.
        per_s = ours.samples / spent if spent and ours.samples else s.rate * cpus
        perf_per_s = perf.samples / spent if spent and perf.samples else s.perf_rate * cpus
        need = max((s.min_samples - ours.samples) / per_s, (s.min_samples - perf.samples) / perf_per_s)
        # The first round is sized from half a second of CPU use, which a loaded machine can
        # make far too low: it takes at most 2/3 of the time, later ones what is achieved.
        cap = s.max_seconds - spent if rounds else 2 * s.max_seconds / 3
        seconds = min(max(1.1 * need + 0.3, s.min_round_s), cap)
        p, g = record_round(pid, binary, s, seconds, workdir / f"{s.engine.value}-round{rounds}")
        perf, ours, spent, rounds = perf + p, ours + g, spent + seconds, rounds + 1
        if min(perf.samples, ours.samples) >= s.min_samples:
            break
    return Measurement(perf, ours, rounds, spent, cpus)


# ---------------------------------------------------------------------------------------
# comparison and verdicts

BAR_PP = 2.5  # issue 14: goflame within 2.5 points of perf
JUDGED_PCT = 3.0  # ... for every Go leaf perf gives at least 3 %
BAD_PCT = 1.0  # errors + truncated at most 1 % of goflame's samples


def share(n: int, total: int) -> float:
    """n of total, in percent (0 when there is nothing)."""
    return 100.0 * n / total if total else 0.0


def sigma_pp(p1: float, n1: int, p2: float, n2: int) -> float:
    """Binomial standard error, in points, of the difference of two shares (in percent)."""
    v = sum((p / 100) * (1 - p / 100) / n for p, n in ((p1, n1), (p2, n2)) if n)
    return 100.0 * math.sqrt(v)


@dataclass(frozen=True, slots=True)
class Row:
    function: str
    perf: float  # percent of perf's samples with this Go leaf
    goflame: float  # percent of goflame's recorded samples with this physical leaf
    sigma: float  # binomial standard error of goflame - perf, points

    @property
    def diff(self) -> float:
        return self.goflame - self.perf

    @property
    def judged(self) -> bool:
        return self.perf >= JUDGED_PCT

    @property
    def within(self) -> bool:
        return abs(self.diff) <= max(BAR_PP, 3 * self.sigma)


def rows(m: Measurement, floor: float = 1.0) -> list[Row]:
    """Every Go leaf that either side gives at least `floor` %, perf's largest first."""
    names = {f for f, n in m.perf.leaves.items() if share(n, m.perf.samples) >= floor}
    names |= {f for f, n in m.goflame.leaves.items() if share(n, m.goflame.samples) >= floor}
    out = []
    for f in names:
        p, g = share(m.perf.leaves[f], m.perf.samples), share(m.goflame.leaves[f], m.goflame.samples)
        out.append(Row(f, p, g, sigma_pp(p, m.perf.samples, g, m.goflame.samples)))
    return sorted(out, key=lambda r: (-r.perf, -r.goflame, r.function))


class Criterion(Enum):
    COUNTS = "samples"
    SHARES = "(a) shares"
    SYSCALLS = "(b) syscalls"
    ERRORS = "(c) errors"


@dataclass(frozen=True, slots=True)
class Verdict:
    criterion: Criterion
    passed: bool
    detail: str

    def __str__(self) -> str:
        return f"{self.criterion.value}: {'ok' if self.passed else 'FAIL'} ({self.detail})"


def verdicts(m: Measurement, min_samples: int) -> tuple[Verdict, ...]:
    """The issue's three verdicts, and whether the counts they are judged on were reached."""
    counts = Verdict(Criterion.COUNTS, min(m.perf.samples, m.goflame.samples) >= min_samples,
                     f"perf {m.perf.samples:,}, goflame {m.goflame.samples:,}, wanted {min_samples:,} each")
    off = [r for r in rows(m, JUDGED_PCT) if r.judged and not r.within]
    shares_v = Verdict(Criterion.SHARES, not off, "; ".join(
        f"{r.function} {r.goflame:.1f} vs {r.perf:.1f} ({r.diff:+.1f} pp, sigma {r.sigma:.1f})" for r in off)
        or f"every leaf perf gives >= {JUDGED_PCT:g} % within {BAR_PP:g} pp")
    g, p = m.goflame.syscall_share, m.perf.syscall_share
    sig = sigma_pp(p, m.perf.samples, g, m.goflame.samples)
    sys_v = Verdict(Criterion.SYSCALLS, abs(g - p) <= max(BAR_PP, 3 * sig),
                    f"goflame {g:.1f} % in syscall wrappers, perf {p:.1f} % ({g - p:+.1f} pp, sigma {sig:.1f}); "
                    f"perf kernel {m.perf.kernel_share:.1f} %")
    bad, taken = m.goflame.bad_share, m.goflame.errors + m.goflame.samples
    # A rate at the bar is measured above it half the time: the count passes within 3 binomial
    # standard errors of what a rate of exactly BAD_PCT gives, as (a) and (b) do.
    allowed = taken * BAD_PCT / 100 + 3 * math.sqrt(taken * BAD_PCT / 100 * (1 - BAD_PCT / 100))
    err_v = Verdict(Criterion.ERRORS, m.goflame.errors + m.goflame.truncated <= allowed,
                    f"{m.goflame.errors:,} errors + {m.goflame.truncated:,} truncated = {bad:.2f} % "
                    f"of {taken:,} (at most {allowed:,.0f}: {BAD_PCT:g} % + 3 sigma)")
    return counts, shares_v, sys_v, err_v


class VerdictFailed(AssertionError):
    """goflame missed the bar on a measurement the instrument itself trusts."""


def check_instrument(m: Measurement) -> None:
    """What must hold for the measurement itself to be trusted, whatever goflame did: perf
    named every Go leaf, saw no other process, and every syscall-entered kernel sample came
    from a known wrapper (at most a stray sample or two of perf's own callchain noise)."""
    assert m.perf.samples and m.goflame.samples + m.goflame.errors, m
    assert m.perf.unknown <= 0.001 * m.perf.samples, f"perf could not name {m.perf.unknown} Go leaves"
    assert m.perf.foreign == 0, f"{m.perf.foreign} perf samples of other processes"
    unlisted = sum(m.perf.unlisted.values())
    assert unlisted <= max(3, 0.002 * m.perf.samples), f"syscalls from unlisted functions: {m.perf.unlisted}"


def report(m: Measurement, min_samples: int, floor: float = 1.0) -> str:
    """A measurement in a few lines: the verdicts, then the leaves either side gives >= floor %."""
    head = [str(v) for v in verdicts(m, min_samples)]
    table = [f"  {r.function:<48} perf {r.perf:5.1f}  goflame {r.goflame:5.1f}  {r.diff:+5.1f} pp (sigma {r.sigma:.1f})"
             for r in rows(m, floor)]
    return "\n".join([*head, *table])


def judge(m: Measurement, min_samples: int) -> None:
    """Raise VerdictFailed, with the whole report, unless every verdict passed."""
    if not all(v.passed for v in verdicts(m, min_samples)):
        raise VerdictFailed("\n" + report(m, min_samples))
