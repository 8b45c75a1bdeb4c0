#!/usr/bin/env python3
"""Chaos: hurt goflame every way a user or a machine can, for a stated time, and count harm.

Each round picks one of:
- kill:   a goflame command (record with each engine/mode, top, dump) killed at a random
          moment with SIGKILL, SIGINT or SIGTERM;
- stop:   a goflame command stopped with SIGSTOP (or SIGTSTP) at a random moment, looked at
          0.5 s later, continued, then ended with SIGINT;
- mutate: `report` and `diff` of a real recording (raw, pprof, folded) with random bytes
          flipped, cut, repeated or inserted;
- ns:     `dump`/`record` of a target in a pid namespace of its own whose thread ids collide
          with an unrelated process, under strace.

It counts, and prints at the end (exit status 1 if any is not zero):
- stuck targets: a thread of the target stopped ("t"/"T") or traced 0.5 s after goflame was
  stopped or ended;
- tracebacks: "Traceback" on goflame's stderr;
- wrong exit codes: anything but the documented ones (0, 2, 3, 4, 5, 130; 1 only from diff;
  -9/137 after SIGKILL, -15/143 after an early SIGTERM);
- foreign tids: a ptrace/perf_event_open call on a thread that is not the target's.

    .venv/bin/python scripts/chaos.py --minutes 10 [--seed N] [--only kill,stop]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import gotoolchain  # noqa: E402

GOFLAME = [sys.executable, "-m", "goflame.cli"]
OK_CODES = {0, 2, 3, 4, 5, 130}
MODES = {
    "record-perf": ["record", "--engine", "perf", "-r", "500"],
    "record-ptrace": ["record", "--engine", "ptrace", "-r", "1000"],
    "record-idle": ["record", "--idle", "-r", "200"],
    "record-native": ["record", "--native", "-r", "500"],
    "top": ["top", "-r", "500", "--delay", "0.5"],
    "dump": ["dump"],
}


@dataclass
class Tally:
    rounds: Counter = field(default_factory=Counter)
    stuck: list[str] = field(default_factory=list)
    tracebacks: list[str] = field(default_factory=list)
    wrong_codes: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    startup: list[str] = field(default_factory=list)  # see startup_traceback

    def bad(self) -> int:
        return len(self.stuck) + len(self.tracebacks) + len(self.wrong_codes) + len(self.foreign)


def spinner() -> Path:
    return gotoolchain.build(REPO / "tests" / "fixtures" / "spinner")


class Target:
    def __init__(self) -> None:
        self.p = subprocess.Popen([str(spinner()), "-spinners", "2", "-gc", "5ms"], stdout=subprocess.PIPE,
                                  text=True)
        assert self.p.stdout is not None and self.p.stdout.readline().startswith("ready")
        self.pid = self.p.pid

    def held(self) -> list[str]:
        """Threads stopped or traced, as the kernel says."""
        out = []
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                status = Path(f"/proc/{self.pid}/task/{tid}/status").read_text()
            except OSError:
                continue
            state = re.search(r"^State:\s+(\S)", status, re.M)
            tracer = re.search(r"^TracerPid:\s+(\d+)", status, re.M)
            if (state and state.group(1) in "tT") or (tracer and tracer.group(1) != "0"):
                out.append(f"{tid}:{state.group(1) if state else '?'}:tracer={tracer.group(1) if tracer else '?'}")
        return out

    def alive(self) -> bool:
        return self.p.poll() is None

    def close(self) -> None:
        self.p.kill()
        self.p.wait()


def check_end(t: Tally, what: str, p: subprocess.Popen, err: str, sent: int | None) -> None:
    rc = p.returncode
    allowed = set(OK_CODES)
    if sent == signal.SIGKILL:
        allowed |= {-9, 137}
    if sent == signal.SIGTERM:
        allowed |= {-15, 143}
    if startup_traceback(err):
        allowed |= {1, -2}  # Python's own startup, before any code of goflame's ran: see below
    if rc not in allowed:
        t.wrong_codes.append(f"{what}: rc {rc}: {err.strip()[-300:]}")
    check_traceback(t, what, err)


def startup_traceback(err: str) -> bool:
    """A KeyboardInterrupt raised inside the interpreter's own startup (site, importlib), before
    any goflame module ran: no program can catch it. Counted apart."""
    return "Traceback" in err and "KeyboardInterrupt" in err and "goflame" not in err.split("Traceback", 1)[1]


def check_traceback(t: Tally, what: str, err: str) -> None:
    if startup_traceback(err):
        t.startup.append(what)
    elif "Traceback" in err:
        t.tracebacks.append(f"{what}: {err.strip()[-600:]}")


def start(mode: str, target: Target, tmp: Path) -> subprocess.Popen:
    args = list(MODES[mode])
    if mode.startswith("record"):
        args += ["-o", str(tmp / "out.folded")]
    return subprocess.Popen([*GOFLAME, *args, "--pid", str(target.pid)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, errors="replace", cwd=REPO)


def round_kill(t: Tally, rng: random.Random, target: Target, tmp: Path) -> None:
    mode = rng.choice(list(MODES))
    sig = rng.choice([signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
    p = start(mode, target, tmp)
    time.sleep(rng.uniform(0.05, 2.5))
    if p.poll() is None:
        p.send_signal(sig)
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        t.wrong_codes.append(f"kill {mode} {sig.name}: did not end within 60 s")
    time.sleep(0.5)
    if held := target.held():
        t.stuck.append(f"kill {mode} {sig.name}: {held}")
    check_end(t, f"kill {mode} {sig.name}", p, err, sig)
    t.rounds[f"kill {mode}"] += 1


def round_stop(t: Tally, rng: random.Random, target: Target, tmp: Path) -> None:
    mode = rng.choice([m for m in MODES if m != "dump"])
    sig = rng.choice([signal.SIGSTOP, signal.SIGTSTP])
    p = start(mode, target, tmp)
    time.sleep(rng.uniform(1.0, 3.0))
    if p.poll() is None:
        p.send_signal(sig)
        time.sleep(0.5)
        if held := [h for h in target.held() if ":t:" in h or ":T:" in h]:
            t.stuck.append(f"stop {mode} {sig.name}: {held}")
        p.send_signal(signal.SIGCONT)
        time.sleep(rng.uniform(0.05, 0.5))
        p.send_signal(signal.SIGINT)
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        t.wrong_codes.append(f"stop {mode} {sig.name}: did not end within 60 s")
    if p.returncode not in (0, 130):  # 130: the SIGINT came before anything could be written
        t.wrong_codes.append(f"stop {mode} {sig.name}: rc {p.returncode}: {err.strip()[-300:]}")
    check_traceback(t, f"stop {mode}", err)
    t.rounds[f"stop {mode}"] += 1


def make_inputs(target: Target, tmp: Path) -> list[Path]:
    """A real recording in every input format, once."""
    raw = tmp / "base.goflame"
    subprocess.run([*GOFLAME, "record", "--pid", str(target.pid), "-d", "2", "-o", str(raw)], check=True,
                   capture_output=True, cwd=REPO)
    out = [raw]
    for fmt, name in (("pprof", "base.pb.gz"), ("folded", "base.folded")):
        path = tmp / name
        subprocess.run([*GOFLAME, "report", fmt, str(raw), "-o", str(path)], check=True, capture_output=True,
                       cwd=REPO)
        out.append(path)
    return out


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(5)
        i = rng.randrange(max(1, len(b)))
        if op == 0 and b:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            del b[i:]
        elif op == 2:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        elif op == 3 and b:
            j = min(len(b), i + rng.randint(1, 256))
            b[i:i] = b[i:j] * rng.randint(2, 50)
        elif b:
            b[i] = rng.choice([0x00, 0xFF, 0x7F, 0x80])
    return bytes(b)


def round_mutate(t: Tally, rng: random.Random, inputs: list[Path], tmp: Path) -> None:
    src = rng.choice(inputs)
    bad = tmp / ("mutated" + "".join(src.suffixes))
    bad.write_bytes(mutate(src.read_bytes(), rng))
    fmt = rng.choice(["folded", "svg", "speedscope", "pprof", "raw"])
    for what, argv, codes in (
        (f"report {fmt} of mutated {src.name}", ["report", fmt, str(bad), "-o", str(tmp / "r.out")], {0, 2}),
        (f"diff of mutated {src.name}", ["diff", str(src), str(bad)], {0, 1, 2}),
    ):
        r = subprocess.run([*GOFLAME, *argv], capture_output=True, text=True, errors="replace", timeout=120,
                           cwd=REPO)
        if r.returncode not in codes:
            t.wrong_codes.append(f"{what}: rc {r.returncode}: {r.stderr.strip()[-300:]}")
        check_traceback(t, what, r.stderr)
    t.rounds[f"mutate {src.name}"] += 1


def round_ns(t: Tally, rng: random.Random, tmp: Path) -> None:
    strace = shutil.which("strace")
    if strace is None:
        return
    bystander = subprocess.Popen([str(spinner()), "-spinners", "0", "-gc", "0"], stdout=subprocess.PIPE, text=True)
    assert bystander.stdout is not None and bystander.stdout.readline().startswith("ready")
    script = f"echo {bystander.pid - 1} > /proc/sys/kernel/ns_last_pid; exec {spinner()} -spinners 2 -gc 5ms"
    ns = subprocess.Popen(["unshare", "-fp", "--mount-proc", "sh", "-c", script], stdout=subprocess.PIPE, text=True)
    pid = 0
    try:
        assert ns.stdout is not None and ns.stdout.readline().startswith("ready")
        pid = int(Path(f"/proc/{ns.pid}/task/{ns.pid}/children").read_text().split()[0])
        mode = rng.choice(["dump", "record-ptrace", "record-perf", "record-idle"])
        args = list(MODES[mode]) + (["-d", "1", "-o", str(tmp / "ns.folded")] if mode != "dump" else [])
        log = tmp / "strace.log"
        r = subprocess.run([strace, "-f", "-qq", "-e", "trace=ptrace,perf_event_open", "-o", str(log), *GOFLAME,
                            *args, "--pid", str(pid)], capture_output=True, text=True, errors="replace", timeout=120,
                           cwd=REPO)
        mine = {int(x) for x in os.listdir(f"/proc/{pid}/task")}
        callers, calls = set(), set()
        for line in log.read_text().splitlines():
            caller, _, rest = line.partition(" ")
            if caller.isdigit():
                callers.add(int(caller))
            if m := re.search(r"ptrace\(PTRACE_\w+, (\d+)|perf_event_open\(\{.*\}, (\d+), ", rest):
                calls.add(int(m.group(1) or m.group(2)))
        foreign = calls - callers - mine
        if foreign:
            t.foreign.append(f"ns {mode}: {sorted(foreign)} (target's: {sorted(mine)})")
        check_end(t, f"ns {mode}", r, r.stderr, None)  # type: ignore[arg-type]
        t.rounds[f"ns {mode}"] += 1
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)  # pid 1 of its namespace: the namespace goes with it
        ns.kill()
        ns.wait()
        bystander.kill()
        bystander.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--only", default="", help="comma-separated: kill, stop, mutate, ns")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    kinds = [k for k in a.only.split(",") if k] or ["kill", "stop", "mutate", "ns"]
    weights = {"kill": 4, "stop": 4, "mutate": 6, "ns": 1}
    t = Tally()
    end = time.monotonic() + 60 * a.minutes
    print(f"chaos: seed {a.seed}, {a.minutes:g} minutes, rounds of {', '.join(kinds)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="goflame-chaos-") as d:
        tmp = Path(d)
        target = Target()
        inputs = make_inputs(target, tmp) if "mutate" in kinds else []
        try:
            while time.monotonic() < end:
                if not target.alive():
                    target = Target()
                kind = rng.choices(kinds, [weights[k] for k in kinds])[0]
                if kind == "kill":
                    round_kill(t, rng, target, tmp)
                elif kind == "stop":
                    round_stop(t, rng, target, tmp)
                elif kind == "mutate":
                    round_mutate(t, rng, inputs, tmp)
                else:
                    round_ns(t, rng, tmp)
        finally:
            target.close()
    total = sum(t.rounds.values())
    print(f"\n{total} rounds:")
    for k, n in sorted(t.rounds.items()):
        print(f"  {n:5d}  {k}")
    print(f"stuck targets: {len(t.stuck)}   tracebacks: {len(t.tracebacks)}   wrong exit codes: "
          f"{len(t.wrong_codes)}   foreign tids: {len(t.foreign)}   (signals inside Python's own startup, "
          f"before goflame's code: {len(t.startup)})")
    for name, items in (("stuck", t.stuck), ("traceback", t.tracebacks), ("exit code", t.wrong_codes),
                        ("foreign", t.foreign)):
        for item in items[:20]:
            print(f"  {name}: {item}")
    return 1 if t.bad() else 0


if __name__ == "__main__":
    sys.exit(main())
