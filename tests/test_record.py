"""`goflame record` and `report` on real Go programs: accuracy against the workload's own
clock and against perf, wall-clock states against the runtime's dump, every stop path."""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import gotoolchain as gt
from conftest import (
    FIXTURES,
    binomial_upper_ok,
    cpu_ns,
    effective_samples,
    hog_shares,
    read_ready_line,
    record_until,
    share_tolerance,
    signal_status,
    start_cpuhog,
    stopped_for_good,
    streamed_samples,
    wait_until,
)
from test_dump import Fixture, parse_dump

if TYPE_CHECKING:
    from goflame.profile import Sample

ROOT = Path(__file__).resolve().parent.parent
GOFLAME = [sys.executable, "-m", "goflame.cli"]
HOT = ("main.hot1", "main.hot2", "main.hot3")


DEFAULT = gt.BuildSpec()


def cpuhog(spec: gt.BuildSpec = DEFAULT) -> Path:
    return gt.build(ROOT / "examples" / "cpuhog", spec)


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*GOFLAME, *args], capture_output=True, text=True, timeout=timeout)


def folded_counts(path: Path) -> Counter[str]:
    c: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        c[stack] += int(n)
    return c


def shares(stacks: Counter[str] | dict[str, int], sep: str = ";") -> dict[str, float]:
    """Share of each hot function among samples in any of them (what the workload measures)."""
    per = Counter()
    for stack, n in stacks.items():
        names = stack.split(sep)
        for h in HOT:
            if h in names:
                per[h] += n
                break
    total = sum(per.values())
    assert total > 0, "no sample in the hot functions"
    return {h: 100 * per[h] / total for h in HOT}


def no_thread_stopped(pid: int) -> bool:
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            state = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state in ("t", "T"):
            return False
    return True


def perf_stacks(data: Path) -> Counter[str]:
    out = subprocess.run(["perf", "script", "-i", str(data), "-F", "ip,sym"], capture_output=True, text=True,
                         timeout=120).stdout
    c: Counter[str] = Counter()
    for block in out.split("\n\n"):
        syms = [ln.split(None, 1)[1].split("+")[0].strip() for ln in block.strip().splitlines() if len(ln.split()) > 1]
        if syms:
            c[";".join(reversed(syms))] += 1
    return c


def hot_samples(stacks: Counter[str] | dict[str, int]) -> int:
    return sum(n for st, n in stacks.items() if any(h in st.split(";") for h in HOT))


def is_hot(sample: Sample) -> bool:
    return any(f.function in HOT for f in sample.frames)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["perf", pytest.param("ptrace", marks=pytest.mark.matrix)])
def test_cpu_shares_match_the_workloads_own_clock_and_perf(engine, tmp_path):
    # goflame records (in rounds) until its samples in the hot functions are worth 3,000
    # moments (`effective_samples`; ptrace freezes one CPU per tick, so with both CPUs busy a
    # sample stands for ~2 intervals): a 50 % share then has a binomial sigma of 0.9 points;
    # perf at 499 Hz has ~2x as many. One goroutine
    # per P: with more goroutines than Ps the workload's own clock also counts the time a
    # goroutine waits for a P, in 10 ms lumps (Go's preemption slice) — noise in the oracle itself.
    workers = os.cpu_count() or 2
    hog = start_cpuhog(workers=workers, gomaxprocs=workers)  # until SIGINT
    try:
        perf_data = tmp_path / "perf.data"
        perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "499", "-g", "-p", str(hog.pid),
                                 "-o", str(perf_data)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: perf_data.exists() and perf_data.stat().st_size > 0, "perf record to start")
            ours_stacks = Counter(record_until(hog.pid, tmp_path, ["-r", "300", "--engine", engine, "--keep-raw"],
                                               lambda st: effective_samples(tmp_path, is_hot) >= 3000,
                                               "hot samples worth 3,000 moments"))
        finally:
            perf.send_signal(signal.SIGINT)
            perf.wait(timeout=120)
        hog.send_signal(signal.SIGINT)  # cpuhog prints its own clock's shares as it exits
        own_text, _ = hog.communicate(timeout=30)
    finally:
        hog.kill()
        hog.wait()
    own = hog_shares(own_text)
    perf = perf_stacks(perf_data)
    ours, theirs = shares(ours_stacks), shares(perf)
    n_ours, n_perf = int(effective_samples(tmp_path, is_hot)), hot_samples(perf)
    assert n_perf >= 1000, f"perf took only {n_perf} samples in the hot functions"
    for h in HOT:
        # 2 points, or Z binomial standard errors of the moments sampled when that is more.
        assert abs(ours[h] - own[h]) <= share_tolerance(own[h], n_ours, floor=2.0), (h, ours, own, n_ours)
        assert abs(ours[h] - theirs[h]) <= share_tolerance(own[h], n_ours, n_perf, floor=2.0), (
            h, ours, theirs, n_ours, n_perf)


def test_idle_mode_leaf_states_match_the_runtimes_dump(tmp_path):
    """--idle: every tick is a snapshot of every goroutine. Each snapshot (the samples of one
    tick share its time) holds every goroutine the runtime's own dump shows parked, in the
    state the dump gives it; the report's state leaves count exactly those, tick by tick."""
    from goflame.profile import read_recording

    fx = Fixture(gt.build(FIXTURES / "parked", gt.BuildSpec()), tmp_path, spin=0)
    try:
        out = tmp_path / "idle.goflame"
        r = run("record", "--pid", str(fx.pid), "-d", "2", "-r", "20", "--idle", "-o", str(out))
        assert r.returncode == 0, r.stderr
        theirs = parse_dump(fx.runtime_dump())
        folded = tmp_path / "idle.folded"
        assert run("report", "folded", str(out), "-o", str(folded)).returncode == 0
    finally:
        fx.close()
    parked = {g: b.state for g, b in theirs.items() if b.state.split(",")[0] not in ("running", "runnable")}
    assert len(parked) >= 200, theirs.keys()
    ticks: dict[int, dict[int, str]] = {}
    for smp in read_recording(out).samples:
        ticks.setdefault(smp.timestamp_ns, {})[smp.goroutine] = smp.state
    assert ticks, "no snapshot recorded"
    for when, seen in ticks.items():
        wrong = {g: (seen.get(g), state) for g, state in parked.items() if seen.get(g) != state}
        assert not wrong, f"snapshot at {when / 1e9:.3f} s: goroutine: (goflame, runtime) {wrong}"
    want = Counter(parked.values())
    # Goroutines the dump caught running or runnable, parked in goflame's snapshots: the
    # os/signal loop carries the signal that asks for the dump, so at that moment it may not
    # be back in its syscall yet. Their samples add to the same leaves.
    others = Counter(st for seen in ticks.values() for g, st in seen.items() if g not in parked)
    leaves = Counter()
    for stack, n in folded_counts(folded).items():
        leaf = stack.rsplit(";", 1)[-1]
        if leaf.startswith("[") and leaf.endswith("]"):
            leaves[leaf[1:-1]] += n
    for state, n in want.items():
        if state in ("chan receive", "select"):
            continue  # also where the runtime's own (system/signal) goroutines park
        assert leaves[state] == n * len(ticks) + others[state], (state, leaves[state], n, len(ticks), others)


def test_record_writes_every_format_and_report_round_trips(tmp_path):
    hog = start_cpuhog("-d", "120s")
    raw = tmp_path / "rec.goflame"
    try:
        g = subprocess.Popen([*GOFLAME, "record", "--pid", str(hog.pid), "-f", "raw", "-o", str(raw)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: streamed_samples(raw) >= 100 or g.poll() is not None, "100 samples streamed")
        g.send_signal(signal.SIGINT)
        _, err = g.communicate(timeout=60)
        assert g.returncode == 0, err
        assert re.search(r"Wrote .*rec.goflame: [\d,]+ samples, \d+ errors", err)
        assert no_thread_stopped(hog.pid)
    finally:
        hog.kill()
        hog.wait()
    f1 = tmp_path / "a.folded"
    assert run("report", "folded", str(raw), "-o", str(f1)).returncode == 0
    f2 = tmp_path / "b.folded"
    assert run("report", "folded", str(f1), "-o", str(f2)).returncode == 0
    assert folded_counts(f1) == folded_counts(f2) and sum(folded_counts(f1).values()) >= 100
    svg = tmp_path / "a.svg"
    assert run("report", "svg", str(raw), "-o", str(svg)).returncode == 0
    ET.parse(svg)
    assert run("report", "speedscope", str(raw), "-o", str(tmp_path / "a.speedscope.json")).returncode == 0
    stdout = run("report", "folded", str(raw)).stdout
    assert "main.hot1" in stdout


@pytest.mark.parametrize("engine", ["perf", "ptrace"])
def test_sample_times_count_on_the_monotonic_clock_from_the_zero_the_recording_names(engine, tmp_path):
    """`monotonic_zero_ns` in the end record + a sample's timestamp_ns is a CLOCK_MONOTONIC
    moment (what `perf record -k CLOCK_MONOTONIC` stamps): between this process's readings of
    that clock before goflame started and after it ended."""
    from goflame.profile import read_recording

    hog = start_cpuhog("-d", "120s")
    raw = tmp_path / "rec.goflame"
    try:
        before = time.monotonic_ns()
        r = subprocess.run([*GOFLAME, "record", "--pid", str(hog.pid), "--engine", engine, "--samples", "50",
                            "-d", "60", "-f", "raw", "-o", str(raw)], capture_output=True, text=True, timeout=120)
        after = time.monotonic_ns()
        assert r.returncode == 0, r.stderr
    finally:
        hog.kill()
        hog.wait()
    rec = read_recording(raw)
    zero = int(rec.meta.extra["monotonic_zero_ns"])
    assert sum(s.weight for s in rec.samples) >= 50 and before < zero
    assert all(zero + s.timestamp_ns < after for s in rec.samples)


@pytest.mark.parametrize("how", ["sigint", "sigterm", "target-exit", "duration"])
def test_every_stop_path_writes_the_output_and_leaves_the_target_running(tmp_path, how):
    hog = start_cpuhog("-d", "120s")
    out = tmp_path / "out.folded"
    try:
        args = [*GOFLAME, "record", "--pid", str(hog.pid), "-o", str(out)]
        if how == "duration":
            args += ["-d", "1.5"]
        g = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if how != "duration":  # stopped once 20 samples are in the streamed recording
            raw = Path(str(out) + ".goflame")
            wait_until(lambda: streamed_samples(raw) >= 20 or g.poll() is not None, "20 samples streamed")
        if how in ("sigint", "sigterm"):
            g.send_signal(signal.SIGINT if how == "sigint" else signal.SIGTERM)
        elif how == "target-exit":
            hog.send_signal(signal.SIGINT)  # the workload exits cleanly on SIGINT
        _, err = g.communicate(timeout=60)
        assert g.returncode == 0, err
        assert sum(folded_counts(out).values()) >= (1 if how == "duration" else 20), err
        if how == "target-exit":
            assert "exited" in err
        else:
            assert hog.poll() is None and no_thread_stopped(hog.pid)
    finally:
        hog.kill()
        hog.wait()


def job_control_defaults() -> None:
    """preexec_fn: SIGTSTP, SIGCONT and SIGCHLD at their default actions, nothing blocked."""
    for sig in (signal.SIGTSTP, signal.SIGCONT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def test_ctrl_z_of_goflame_leaves_no_thread_of_the_target_stopped(tmp_path):
    """goflame stopped by Ctrl-Z (SIGTSTP) stops between ticks, holding nothing, after it
    flushed its recording. While goflame is stopped the target runs free; after `fg`
    (SIGCONT) goflame records on and writes its output. (Its stop guard traces goflame's
    sampling thread, so a stopped goflame shows as "t", tracing stop, rather than "T"; "t" is
    also the microseconds in which the guard passes the signal on, so "stopped" is "t" or "T"
    with no CPU time added for a while.)"""
    workers = 2 * (os.cpu_count() or 1)
    hog = start_cpuhog("-d", "120s", workers=workers, gomaxprocs=workers)
    out = tmp_path / "out.folded"
    raw = Path(str(out) + ".goflame")
    # As a shell starts a job: a process group of its own (the kernel discards SIGTSTP sent to
    # an orphaned one, as a detached CI runner's may be) and job-control signals at their
    # defaults (ignored or blocked ones are inherited from whatever ran the tests).
    g = subprocess.Popen([*GOFLAME, "record", "--pid", str(hog.pid), "--engine", "ptrace", "-r", "500",
                          "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         process_group=0, preexec_fn=job_control_defaults)
    try:
        wait_until(lambda: streamed_samples(raw) >= 20, "goflame to stream samples")
        g.send_signal(signal.SIGTSTP)
        wait_until(lambda: stopped_for_good(g.pid),
                   lambda: f"goflame to stop on SIGTSTP; its threads: {signal_status(g.pid)}")
        # While goflame is stopped the target gets half a CPU-second of work done, and no
        # thread of it is ever traced or stopped meanwhile.
        cpu_before = cpu_ns(hog.pid)

        def untraced_while_it_runs() -> bool:
            for task in Path(f"/proc/{hog.pid}/task").iterdir():
                try:
                    status = (task / "status").read_text()
                except OSError:
                    continue
                assert re.search(r"^TracerPid:\s+0$", status, re.M), status
                assert not re.search(r"^State:\s+t", status, re.M), status
            return cpu_ns(hog.pid) - cpu_before > 0.5e9

        wait_until(untraced_while_it_runs, "the target to run half a CPU-second while goflame is stopped", every=0)
        assert stopped_for_good(g.pid)  # still stopped all along
        after_stop = streamed_samples(raw)
        g.send_signal(signal.SIGCONT)
        wait_until(lambda: streamed_samples(raw) >= after_stop + 100, "100 more samples after SIGCONT")
        g.send_signal(signal.SIGINT)
        _, err = g.communicate(timeout=60)
        assert g.returncode == 0, err
        assert sum(folded_counts(out).values()) >= after_stop + 100, err
        assert hog.poll() is None and no_thread_stopped(hog.pid)
    finally:
        g.kill()
        hog.kill()
        hog.wait()


def test_kill_9_of_goflame_keeps_every_sample_it_had_flushed(tmp_path):
    """goflame streams its recording in chunks while it samples (every 0.5 s); SIGKILL loses
    only what was not flushed yet. Watched from outside: once the file has grown three times
    (three flushes seen, so flushing goes on while it records), goflame is killed; the
    recording then reads as a whole, holding every sample the last look saw and more.
    (How much the last flush lags the kill, at most a second, is timed in
    bench/bench_flush.py: a budget, not a verdict.)"""
    from goflame.profile import read_recording

    hog = start_cpuhog("-d", "120s")
    out = tmp_path / "out.svg"
    raw = Path(str(out) + ".goflame")
    seen: list[tuple[int, int]] = []  # (size, samples) each time the file was seen to grow

    def grew_three_times() -> bool:
        size = raw.stat().st_size if raw.exists() else 0
        if size and (not seen or size > seen[-1][0]):
            # what a reader gets from the file as it is now (0 until the first chunk is whole)
            seen.append((size, streamed_samples(raw)))
        return len(seen) >= 4 and seen[-1][1] > seen[0][1]

    try:
        g = subprocess.Popen([*GOFLAME, "record", "--pid", str(hog.pid), "-o", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(grew_three_times, "goflame's recording to grow three times", every=0.01)
        g.kill()
        g.wait()
        assert hog.poll() is None and no_thread_stopped(hog.pid)
    finally:
        hog.kill()
        hog.wait()
    rec = read_recording(raw)
    assert not rec.complete  # no end record: it was killed
    assert len(rec.samples) >= seen[-1][1] > 0, (len(rec.samples), seen)
    folded = tmp_path / "after.folded"
    r = run("report", "folded", str(raw), "-o", str(folded))
    assert r.returncode == 0, r.stderr
    assert sum(folded_counts(folded).values()) == sum(smp.weight for smp in rec.samples)


def test_launched_command_is_profiled_and_its_exit_status_reported(tmp_path):
    out = tmp_path / "launch.folded"
    # 3 s of CPU, not of the wall clock: ~300 samples at 100 Hz however busy the machine is.
    r = run("record", "-o", str(out), "--", str(cpuhog()), "-cpu", "3s")
    assert r.returncode == 0, r.stderr
    assert "exited with status 0" in r.stderr
    # The launched program's own clock says how its CPU split (hot1 ~50 %); goflame's share
    # must agree within what its sample count allows (Z sigma of a binomial, at least 10 points).
    truth = hog_shares(r.stdout)["main.hot1"]
    counts = folded_counts(out)
    n = hot_samples(counts)
    assert n >= 100, f"only {n} samples in the hot functions"
    tolerance = share_tolerance(truth, n, floor=10.0)
    assert abs(shares(counts)["main.hot1"] - truth) <= tolerance, (shares(counts), truth, n)


@pytest.mark.parametrize("args,code,words", [
    (["record", "--pid", "999999999", "-d", "1", "-o", "x.svg"], 3, "no process"),
    (["record", "--pid", "1", "-d", "1", "-o", "/nonexistent-dir/x.svg"], 5, "does not exist"),
    (["record", "-d", "1", "-o", "x.svg"], 2, "--pid"),
    (["record", "--pid", "1", "-o", "x.unknownext"], 2, "format"),
    (["record", "--idle", "--engine", "perf", "-o", "x.svg", "--", "true"], 2, "--engine ptrace"),
])
def test_record_bad_input_gets_one_line_and_an_exit_code(args, code, words):
    r = run(*args)
    assert r.returncode == code, r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr


def test_report_rejects_truncated_and_foreign_files(tmp_path):
    foreign = tmp_path / "foreign.bin"
    foreign.write_bytes(os.urandom(2000))
    trunc = tmp_path / "trunc.goflame"
    trunc.write_bytes(b"GOFLAME")
    for p in (foreign, trunc, tmp_path / "missing.goflame"):
        r = run("report", "folded", str(p))
        assert r.returncode == 2, (p, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = run("report", "nosuchformat", str(foreign))
    assert r.returncode == 2


def test_sampler_runs_at_its_normal_priority_between_pauses():
    """Only the microseconds a thread of the target is stopped run real-time (Pauser's boost,
    tests/test_process.py): the sampling loop's own work (walking, writing) runs at goflame's
    normal priority, so it can never starve the target (a real-time loop over 100k goroutines
    stalled the target for 100+ ms)."""
    import goflame
    from goflame.sampler import Sampler, SamplerConfig

    hog = start_cpuhog("-d", "60s")
    try:
        before = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))
        cpus = os.sched_getaffinity(0)
        seen: list[tuple[int, int]] = []
        with goflame.attach(hog.pid) as t:
            for engine in ("ptrace", "perf"):
                Sampler(t, SamplerConfig(rate=200, engine=engine)).run(
                    lambda s: None, duration=0.5,
                    on_tick=lambda st: seen.append((os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))))
                # The ptrace sampler holds itself to one CPU between ticks (process/cpu.py): not after.
                assert os.sched_getaffinity(0) == cpus, engine
        assert seen and set(seen) == {before}, seen
        assert (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)) == before
    finally:
        hog.kill()
        hog.wait()


def sample_busy_hog(engine: str, rate: float, samples: int, *, before: Callable[[int], None] | None = None,
                    after: Callable[[int], None] | None = None, also_until: Callable[[], bool] = lambda: True):
    """Sample twice as many busy goroutines as CPUs (a thread each) until `samples` samples are
    in (and `also_until()`); check that the count of samples is the CPU time the kernel gave
    the target (a sample stands for 1/rate s of CPU) and the hot functions' shares are the
    workload's own clock's. `before(pid)` runs before sampling starts, `after(pid)` when it
    ended, goflame still attached. Returns the sampler's stats."""
    import goflame
    from goflame.sampler import Sampler, SamplerConfig

    workers = 2 * (os.cpu_count() or 1)
    hog = start_cpuhog("-d", "300s", workers=workers, gomaxprocs=workers)  # a thread per goroutine
    try:
        got: Counter[str] = Counter()

        def add(samples) -> None:
            # A ptrace sample stands for `weight` intervals (CreditScheduler.frozen_first).
            got["(all)"] += sum(s.weight for s in samples)
            for s in samples:
                names = [f.function for f in s.frames]
                got["(records)"] += 1
                got.update({h: s.weight for h in HOT if h in names})

        if before is not None:
            before(hog.pid)
        with goflame.attach(hog.pid) as t:
            cpu_before = cpu_ns(hog.pid)
            st = Sampler(t, SamplerConfig(rate=rate, engine=engine)).run(
                add, duration=240, should_stop=lambda: got["(all)"] >= samples and also_until())
            cpu_s = (cpu_ns(hog.pid) - cpu_before) / 1e9
            if after is not None:
                after(hog.pid)
        hog.send_signal(signal.SIGINT)
        own_text, _ = hog.communicate(timeout=30)
    finally:
        hog.kill()
        hog.wait()
    assert st.engine == engine
    assert got["(all)"] >= samples, (got, st)
    assert abs(got["(all)"] / (rate * cpu_s) - 1) <= 0.05, (got["(all)"], cpu_s, st.errors, st.missed)
    own = hog_shares(own_text)
    n = sum(v for k, v in got.items() if k in HOT)
    independent = min(n, got["(records)"])  # weighted samples are fewer positions than their sum
    for h in HOT:
        # Samples of a queued thread are taken where it was preempted, and a thread owed
        # samples is taken on consecutive ticks: neighbours correlate, so the floor is wider
        # than the binomial bound of independent samples.
        assert abs(100 * got[h] / n - own[h]) <= share_tolerance(own[h], independent, floor=5.0), (h, got, own)
    return st


@pytest.mark.matrix  # ~15 s: the slow tier
def test_more_busy_threads_than_cpus_are_sampled_for_their_cpu_time_and_left_untraced():
    """Twice as many busy goroutines as CPUs: at any instant some threads in state R wait for a
    CPU, and an interrupted waiting thread stops only when the scheduler runs it again (where
    it was preempted: a sample as good as any). The count of samples is the CPU time the
    kernel gave the target, the shares are the workload's own, and no thread is left traced
    or stopped.

    At 100 Hz: a pause waits for a queued thread to be run (a scheduler slice or two) and no
    interrupt outlives its tick (a stopped goflame must not hold a stopped thread), so with
    twice as many busy threads as CPUs the ptrace engine keeps ~150-220 ticks a second, and
    at higher rates gives up (and counts) the rest. bench/bench_sampler.py measures that."""

    def untraced(pid: int) -> None:
        for task in Path(f"/proc/{pid}/task").iterdir():
            status = (task / "status").read_text()
            assert re.search(r"^TracerPid:\s+0$", status, re.M), status
            assert not re.search(r"^State:\s+t", status, re.M), status

    sample_busy_hog("ptrace", 100, 2000, after=untraced)


def test_ptrace_splits_threads_that_wait_on_each_other_as_their_own_cpu_clocks_do(tmp_path):
    """Two threads take turns every few tens of microseconds: one works while the other spins
    waiting for its turn (tests/fixtures/handoff), and each reads its own CPU clock at every
    change. goflame takes a CPU when it wakes, and the thread it preempts there stops the
    other one's work within microseconds: stopping every running thread one after the other
    put 77 % of the samples in the wait where the threads' clocks said 53 %. Only the thread
    frozen on goflame's own CPU is a sample of that moment (CreditScheduler.frozen_first)."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("the two threads must run at once")
    import goflame
    from goflame.sampler import Sampler, SamplerConfig

    got: Counter[str] = Counter()

    def add(samples) -> None:
        for smp in samples:
            names = {f.function for f in smp.frames}
            for f in ("main.waitTurn", "main.work"):
                if f in names:
                    got[f] += smp.weight  # a sample stands for `weight` intervals
                    got["stops"] += 1  # ... but is one moment: the count the verdict is judged on

    fx = subprocess.Popen([str(gt.build(FIXTURES / "handoff"))], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True)
    try:
        assert fx.stdin is not None and fx.stdout is not None and fx.stdout.readline().startswith("ready")
        with goflame.attach(fx.pid) as t:
            st = Sampler(t, SamplerConfig(rate=400, engine="ptrace")).run(
                add, duration=120, should_stop=lambda: got["stops"] >= 2000)
        fx.stdin.write("stop\n")
        fx.stdin.flush()
        lines = [fx.stdout.readline().strip() for _ in range(3)]
    finally:
        fx.kill()
        fx.wait()
    assert got["stops"] >= 2000, (got, st)
    assert lines[2] == "done", lines
    clock = dict((k, int(v)) for k, v in (x.split() for x in lines[:2]))
    own = 100 * clock["wait"] / (clock["wait"] + clock["work"])
    share = 100 * got["main.waitTurn"] / (got["main.waitTurn"] + got["main.work"])
    # The old rule erred by +23 points (waits sampled as goflame's own effect); the frozen rule
    # is within 2 on a quiet machine. With other programs keeping the CPUs busy, a stopped
    # thread waits for a CPU to enter its stop, and its partner spins meanwhile: waiting the
    # clocks count and no sample can see (the moment is taken before the stop). There goflame
    # came out 5-9 points low (3 runs beside three busy loops; the engine of 659dd2b likewise,
    # -6.0 to -6.4). So over-counting the wait is judged at 6 points, under-counting at 10.
    tol = share_tolerance(own, got["stops"], floor=6.0)
    assert -max(tol, 10.0) <= share - own <= tol, (share, own, got)


def deny_perf_event_open() -> None:
    """preexec_fn: refuse perf_event_open with EACCES in this process and its children, as a
    container's seccomp profile does (Docker's default one among them). A classic-BPF filter:
    arch must be x86-64, then syscall 298 -> ERRNO(EACCES), anything else -> ALLOW."""
    import ctypes
    import errno

    ld_abs, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
    kill, allow, deny = 0x80000000, 0x7FFF0000, 0x00050000 | errno.EACCES  # SECCOMP_RET_*
    prog = [(ld_abs, 0, 0, 4), (jeq, 1, 0, 0xC000003E), (ret, 0, 0, kill),  # seccomp_data.arch
            (ld_abs, 0, 0, 0), (jeq, 0, 1, 298), (ret, 0, 0, deny), (ret, 0, 0, allow)]  # .nr

    class Insn(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(Insn))]

    insns = (Insn * len(prog))(*[Insn(*i) for i in prog])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong)
    if libc.prctl(38, 1, None, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.prctl(22, 2, ctypes.byref(Prog(len(prog), insns)), 0, 0) != 0:  # PR_SET_SECCOMP, FILTER
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")


def test_where_perf_is_refused_record_falls_back_to_ptrace_and_says_why(tmp_path):
    """In a container whose seccomp profile refuses perf_event_open, `record` (engine auto)
    samples with ptrace instead, says why in one warning, and its shares are still the
    workload's own; `--engine perf` there is one line and exit code 4, before any output."""
    hog = start_cpuhog("-d", "120s")
    try:
        out = tmp_path / "jail.folded"
        r = subprocess.run([*GOFLAME, "record", "--pid", str(hog.pid), "-d", "3", "-o", str(out)],
                           capture_output=True, text=True, timeout=120, preexec_fn=deny_perf_event_open)
        forced = subprocess.run([*GOFLAME, "record", "--pid", str(hog.pid), "--engine", "perf", "-d", "1", "-o",
                                 str(tmp_path / "forced.svg")], capture_output=True, text=True, timeout=120,
                                preexec_fn=deny_perf_event_open)
        assert no_thread_stopped(hog.pid)
        hog.send_signal(signal.SIGINT)
        own_text, _ = hog.communicate(timeout=30)
    finally:
        hog.kill()
        hog.wait()
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("goflame: warning:")]
    assert len(warnings) == 1 and "perf_event_open was refused" in warnings[0] and "ptrace" in warnings[0], r.stderr
    assert "(ptrace)" in r.stderr.splitlines()[-1], r.stderr
    counts = folded_counts(out)
    ours, n = shares(counts), hot_samples(counts)
    own = hog_shares(own_text)
    for h in HOT:  # 3 s at 100 Hz: ~300 samples with a CPU to spare; the bound is the count's
        assert abs(ours[h] - own[h]) <= share_tolerance(own[h], n, floor=5.0), (h, ours, own, n)
    assert forced.returncode == 4, forced.stderr
    assert forced.stderr.count("\n") == 1 and "perf_event_open was refused" in forced.stderr, forced.stderr
    assert "Traceback" not in forced.stderr and not (tmp_path / "forced.svg").exists()


SIGNAL_FRAMES = {"runtime.sigtramp", "runtime.cgoSigtramp", "runtime.sigreturn__sigaction", "runtime.sigreturn"}


# Sends SIGURG to a process as fast as it can, until killed: Go's preemption signal, so Go's
# handler runs all the time on every thread of it. For binaries that cannot flood themselves
# (cpuhog's -sigurg does, in a goroutine: under outside load this Python process got too
# little CPU to flood, and a test waited minutes for its handler samples).
_FLOOD = """
import os, sys
pid = int(sys.argv[1])
while True:
    os.kill(pid, 23)
"""


@contextlib.contextmanager
def flooded(binary: Path, args: list[str], flood: str | None) -> Iterator[subprocess.Popen]:
    """The fixture `binary` run with `args` until its ready line, then `flood` (a Python script
    given the fixture's pid) sending it signals; both killed on the way out."""
    target = subprocess.Popen([str(binary), *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    flooder = None
    try:
        read_ready_line(target, binary.name)
        if flood is not None:
            flooder = subprocess.Popen([sys.executable, "-c", flood, str(target.pid)])
        yield target
    finally:
        if flooder is not None:
            flooder.kill()
            flooder.wait()
        target.kill()
        target.wait()


def check_signal_handler_samples_lead_back(binary: Path, args: list[str], opts: list[str], tmp_path: Path,
                                           deeper: float = 0.05) -> None:
    """Under a flood of SIGURG (from the target itself when `args` ask it to, else from a
    Python process), goflame records (in rounds) until 200 of its samples are in the signal
    handler. None of them may be a stack rooted in the handler; a walk that cannot get from
    the handler to what the signal interrupted is marked cut. With ptrace none may be cut
    there: the interrupted code's stack is read inside the stop. perf's kernel sample copies
    only the handler's stack, so there at most 25 % are (binomially: the rate, not the
    count, is the bar). A walk cut further down, in the interrupted code's own stack (at a
    stack switch, as any walk may be), counts against `deeper` (perf: 25 %)."""
    with flooded(binary, args, None if "-sigurg" in args else _FLOOD) as target:

        def handler_samples(stacks: dict[str, int]) -> int:
            return sum(n for st, n in stacks.items() if SIGNAL_FRAMES & set(st.split(";")))

        folded = record_until(target.pid, tmp_path, [*opts, "-r", "1000"], lambda st: handler_samples(st) >= 200,
                              "200 samples in the signal handler")
        assert no_thread_stopped(target.pid)
    assert_handler_samples_lead_back(folded, opts, deeper)


def assert_handler_samples_lead_back(folded: dict[str, int], opts: list[str], deeper: float) -> None:
    """The verdict of `check_signal_handler_samples_lead_back` on folded stacks."""
    stacks = {tuple(st.split(";")): n for st, n in folded.items()}
    in_handler = {s: n for s, n in stacks.items() if SIGNAL_FRAMES & set(s)}
    rooted_in_handler = {s: n for s, n in in_handler.items() if s[0] in SIGNAL_FRAMES}
    assert not rooted_in_handler, rooted_in_handler
    # Below the handler: the interrupted thread's own stack, from its first frame (or marked cut).
    n = sum(in_handler.values())
    cut = {s: k for s, k in in_handler.items() if s[0].startswith("[truncated")}
    at_handler = sum(k for s, k in cut.items() if s[1] in SIGNAL_FRAMES)  # nothing of the interrupted code
    bar = 0.25 if "perf" in opts else 0
    if bar == 0:
        assert at_handler == 0, (at_handler, n, cut)
    assert binomial_upper_ok(at_handler, n, bar), (at_handler, n, bar, cut)
    assert binomial_upper_ok(sum(cut.values()) - at_handler, n, max(bar, deeper)), (n, cut)


@pytest.mark.parametrize("how", ["perf", "ptrace", pytest.param("native", marks=pytest.mark.matrix)])
def test_samples_in_the_signal_handler_lead_back_to_what_the_signal_interrupted(how, tmp_path):
    """A thread running Go's signal handler (here under a flood of SIGURG, Go's preemption
    signal) is sampled on its signal stack; the walk goes on from the registers the kernel saved
    in the signal frame, as the runtime's own tracebacks do. Before, such samples were a stack
    rooted at runtime.sigtramp, the interrupted code lost (~2.5 % of samples here, 15 % with
    --native)."""
    opts = ["--native"] if how == "native" else ["--engine", how]
    check_signal_handler_samples_lead_back(cpuhog(), ["-d", "300s", "-workers", "2", "-sigurg"], opts, tmp_path)


@pytest.mark.matrix  # ~15 s: the slow tier
def test_in_a_cgo_binary_samples_in_the_signal_handler_lead_back_too(tmp_path):
    """With cgo the handler is entered through runtime.cgoSigtramp (and the restorer is libc's).
    Signals that interrupt C code, a vDSO call or the scheduler on g0 lead on through what the
    stop reads of the M (m.curg, vdsoSP, g0.sched.sp, the goroutine's syscallsp): none cut at
    the handler, and at most 1 % cut deeper (4 of 2,023 here; ~20 % were cut when the
    interrupted stack was read after the thread was released, and 1 % while the stop read
    only its first page where it crosses the end of an OS thread's stack)."""
    binary = gt.build(FIXTURES / "cgochain", gt.BuildSpec(cgo=True, stripped=True, pie=True))
    check_signal_handler_samples_lead_back(binary, ["-mode", "vdso,chain"], ["--engine", "ptrace"], tmp_path,
                                           deeper=0.01)


# The scheduler entered from newstack (a preemption request seen at a stack check) has dropped
# the goroutine: m.curg is nil, and Go's own traceback ends at morestack too.
_DROPPED_AT_MORESTACK = {"runtime.gopreempt_m", "runtime.goschedImpl", "runtime.preemptPark"}


@pytest.mark.parametrize("engine", ["ptrace", "perf"])
def test_samples_while_a_goroutine_stack_grows_lead_back_to_it_or_say_they_are_cut(engine, tmp_path):
    """spinner -grow: goroutines that start goroutines whose stacks grow from their first size
    to ~1 MiB, 1 KiB frames 1,000 deep, and end: most CPU time is newstack copying stacks on
    g0. A walk there jumps at runtime.morestack to the goroutine's saved context (g.sched),
    as Go's own traceback does, and goes on to the fixture's own chain: main.growFrames ...
    main.growOnce, runtime.goexit. Every sample in newstack has that whole chain below it,
    ends where Go's traceback ends (the goroutine dropped), or says it is cut: never a stack
    that merely stops. The stack beyond the 16 KiB read at the sample is read later, and by
    then the goroutine may have returned or ended: a zero return address found there was taken
    for the stack's end (39 % of perf's samples here rooted at main.growFrames, unmarked).
    ptrace walks within microseconds of the stop: most of its samples must be whole (2-11 %
    cut measured; 25 % the bar, where a broken jump at morestack cuts them all). perf reads
    10-50 ms later and cannot follow g.sched (design.md); it is held to marking its cuts."""
    binary = gt.build(FIXTURES / "spinner", DEFAULT)
    with flooded(binary, ["-spinners", "0", "-gc", "0", "-grow", "2"], None) as target:
        stacks = record_until(target.pid, tmp_path, ["--engine", engine, "-r", "500"],
                              lambda st: sum(n for s, n in st.items() if "runtime.newstack" in s.split(";")) >= 500,
                              "500 samples in runtime.newstack")
    growing = {tuple(s.split(";")): n for s, n in stacks.items() if "runtime.newstack" in s.split(";")}
    chain = ("runtime.goexit", "main.growOnce", "main.growFrames")

    def whole(s: tuple[str, ...]) -> bool:  # any goroutine's: the runtime's own may grow a stack too
        return s[0] == "runtime.goexit"

    def cut(s: tuple[str, ...]) -> bool:
        return s[0].startswith("[truncated: ")

    def dropped(s: tuple[str, ...]) -> bool:
        return s[0] == "runtime.morestack" and not _DROPPED_AT_MORESTACK.isdisjoint(s)

    odd = [";".join(s) for s in growing if not (whole(s) or cut(s) or dropped(s))]
    assert not odd, odd[:5]
    total = sum(growing.values())
    if engine == "ptrace":
        why: Counter[str] = Counter()
        for s, n in growing.items():
            if cut(s):
                why[s[0]] += n
        assert binomial_upper_ok(why.total(), total, 0.25), (total, why)
        mine = sum(n for s, n in growing.items() if s[:3] == chain)
        assert not binomial_upper_ok(mine, total, 0.5), (mine, total)  # most are the fixture's own


# Sends SIGURG to each thread of a process in turn (tgkill), listing them again each round:
# threads that live a few ms get their share of the flood.
_THREAD_FLOOD = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
pid = int(sys.argv[1])
while True:
    for tid in os.listdir(f"/proc/{pid}/task"):
        for _ in range(20):
            libc.syscall(234, pid, int(tid), 23)  # tgkill(pid, tid, SIGURG)
"""


@pytest.mark.matrix  # ~10 s
def test_threads_just_started_are_sampled_like_any_other(tmp_path):
    """cgochain -mode churn ends its thread and starts another M every 20 ms, each in the Go
    chain into C, under SIGURG aimed at every thread in turn. Every thread is an M (the fixture
    starts none in C), so at most 1 % of the stops may be errors (binomially), and samples in
    the handler lead back to what it interrupted, as on any other thread: a new thread is
    looked for among the Ms as soon as it is listed. Before, a new M's stops were read as a
    stranger's: errors (4 % of the stops here), or walked out of the handler with what it
    interrupted as read after the release."""
    binary = gt.build(FIXTURES / "cgochain", gt.BuildSpec(cgo=True))
    with flooded(binary, ["-mode", "churn"], _THREAD_FLOOD) as target:
        out = tmp_path / "churn.folded"
        r = subprocess.run([*GOFLAME, "record", "--pid", str(target.pid), "--engine", "ptrace", "-r", "1000",
                            "--samples", "3000", "-d", "120", "-f", "folded", "-o", str(out)],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert no_thread_stopped(target.pid)
    m = re.search(r"([\d,]+) samples, ([\d,]+) errors", r.stderr)
    assert m, r.stderr
    samples, errors = (int(x.replace(",", "")) for x in m.groups())
    assert samples >= 3000, r.stderr
    assert binomial_upper_ok(errors, samples + errors, 0.01), r.stderr
    folded = dict(folded_counts(out))
    # The new threads were sampled (~40 % of the samples here; the flood and the handler take most
    # of the rest).
    assert sum(n for st, n in folded.items() if "main.churnWorker.func1" in st.split(";")) >= 300, folded
    assert_handler_samples_lead_back(folded, ["--engine", "ptrace"], deeper=0.01)


MATRIX_STATIC_STRIPPED = [s for v in gt.MATRIX for s in gt.matrix_specs(v) if s.stripped and not s.cgo and not s.pie]


@pytest.mark.matrix
@pytest.mark.parametrize("spec", MATRIX_STATIC_STRIPPED, ids=[s.tag for s in MATRIX_STATIC_STRIPPED])
def test_matrix_samples_in_the_signal_handler_lead_back(spec, tmp_path):
    """The handler's trampoline and restorer by each release's names (runtime.sigreturn before
    1.20), its frame sizes by each release's pcsp."""
    check_signal_handler_samples_lead_back(cpuhog(spec), ["-d", "300s", "-workers", "2", "-sigurg"],
                                           ["--engine", "ptrace"], tmp_path)


def test_perf_engine_counts_the_kernels_cpu_time_and_never_stops_the_target():
    """The kernel samples each thread every 1/rate s of its CPU time: the count of samples is
    the CPU time the kernel gave the target (jittered periods keep their mean), the shares
    are the workload's own, and no thread is ever traced or stopped, not even for a moment."""
    import threading

    seen_states: Counter[str] = Counter()
    done = threading.Event()

    def watch(pid: int) -> None:  # what the target's threads are, as often as we can look
        while not done.is_set():
            try:
                tasks = list(Path(f"/proc/{pid}/task").iterdir())
            except OSError:
                return  # the workload has ended
            for task in tasks:
                try:
                    status = (task / "status").read_text()
                except OSError:
                    continue
                seen_states[re.search(r"^State:\s+(\S)", status, re.M)[1]] += 1
                seen_states["traced" if not re.search(r"^TracerPid:\s+0$", status, re.M) else "untraced"] += 1

    watcher: list[threading.Thread] = []

    def start_watching(pid: int) -> None:
        watcher.append(threading.Thread(target=watch, args=(pid,), daemon=True))
        watcher[0].start()

    try:
        st = sample_busy_hog("perf", 500, 4000, before=start_watching,
                             also_until=lambda: seen_states["untraced"] > 100)
    finally:
        done.set()
        for w in watcher:
            w.join()
    # Samples the kernel lost (its ring full while goflame was slow to read it: `missed`) are
    # a budget of bench/bench_sampler.py; here they only make the count fall short above.
    assert binomial_upper_ok(st.errors, st.samples + st.errors, 0.005), st
    assert seen_states["untraced"] > 100 and not seen_states["traced"] and not seen_states["t"], seen_states


def test_a_tick_due_while_the_sampler_is_busy_is_skipped_and_drawn_afresh_and_only_a_stall_counts_missed():
    """The sampler's clock when a tick takes long: a tick due meanwhile is not taken the moment
    the sampler is free (that moment is when whatever held it let go) but drawn afresh, half to
    one and a half intervals after; the count of ticks stays rate x time while the sampler
    keeps up; a stall longer than CATCH_UP_S counts the ticks beyond it as missed."""
    import random

    from goflame.sampler import CATCH_UP_S, SamplerStats, TickClock

    rate = 1000.0
    interval = 1 / rate
    st = SamplerStats()
    clock = TickClock(rate, st, random.Random(7), 0.0)
    now = 0.0
    taken: list[tuple[float, float]] = []  # (when the sampler got free before it, when taken)

    def run_until(t_end: float, step: float, stall_at: float | None = None, stall: float = 0.0) -> None:
        nonlocal now
        while True:
            free = now
            now = max(now, clock.next)
            if now >= t_end:
                return
            clock.take(now)
            taken.append((free, now))
            clock.advance()
            now += step  # the tick's own time
            if stall_at is not None and now >= stall_at:
                now += stall  # the sampler got no CPU for `stall` seconds
                stall_at = None
            clock.not_before(now)

    run_until(1.0, step=1e-5)  # a sampler that keeps up: every tick on time
    assert st.skipped == st.missed == st.late == 0
    assert abs(len(taken) - rate * 1.0) <= 60, len(taken)  # jitter: +-50 % per tick, sqrt(n)-ish spread
    n = len(taken)
    run_until(2.0, step=3 * interval)  # every tick takes three intervals
    slow = taken[n + 1:]
    assert st.skipped >= len(slow) and st.missed == 0 and st.late == 0
    # Each tick comes a jittered interval after the sampler got free, never at that moment.
    assert all(0.5 * interval <= t - free <= 1.5 * interval + 1e-12 for free, t in slow), slow[:5]
    assert abs(len(slow) - 1.0 / (4 * interval)) <= 30, len(slow)  # 3 intervals busy + 1 on average
    run_until(3.0, step=1e-5, stall_at=2.5, stall=0.3)  # a 300 ms stall
    assert 0.3 - 1.5 * interval <= st.max_lag_s <= 0.3
    assert st.missed == math.ceil((st.max_lag_s - CATCH_UP_S) / interval), (st.missed, st.max_lag_s)
    assert abs(st.missed_s - st.missed * interval) < 1e-9


def check_running_samples_name_the_goroutines_the_runtime_shows_running(spec: gt.BuildSpec, tmp_path: Path,
                                                                       spin: int = 2, engine: str = "perf") -> None:
    import goflame
    from goflame.sampler import Sampler, SamplerConfig

    fx = Fixture(gt.build(FIXTURES / "parked", spec), tmp_path, spin=spin)
    try:
        seen: Counter[int] = Counter()
        other: Counter[tuple[int, str]] = Counter()

        def add(samples) -> None:
            for s in samples:
                names = {f.function for f in s.frames}
                if names & {"main.spinner", "main.spinHot"}:
                    seen[s.goroutine] += 1
                else:
                    other[(s.goroutine, s.frames[-1].function if s.frames else "")] += 1

        # Until each spinner has been seen 20 times and 1,500 samples are in (a cap of 120 s:
        # a spinner never seen is a failure below, not a wait forever).
        with goflame.attach(fx.pid) as t:
            sampler = Sampler(t, SamplerConfig(rate=300, engine=engine))
            st = sampler.run(add, duration=120, should_stop=lambda: (
                len(seen) >= spin and min(seen.values()) >= 20 and sampler.stats.samples >= 1500))
        assert st.engine == engine
        dump = parse_dump(fx.runtime_dump())
    finally:
        fx.close()
    spinning = {goid for goid, b in dump.items() if any(f in ("main.spinner", "main.spinHot") for f, _ in b.frames)}
    assert len(spinning) == spin, dump.keys()
    assert set(seen) == spinning, (seen, spinning, other)
    # A sample is dropped (an error) when the goroutine found for its thread is not the one
    # whose stack the thread was on: ~1.5 % when it came from m.curg after the release; the
    # bar is 0.5 %.
    assert binomial_upper_ok(st.errors, st.samples + st.errors, 0.005), (st.errors, st.samples)


@pytest.mark.parametrize("engine", ["perf", "ptrace"])
@pytest.mark.parametrize(("spec", "spin", "procs"), [(DEFAULT, 4, 2), (gt.BuildSpec(cgo=True, stripped=True, pie=True), 2, 0)],
                         ids=["static-4-spinners-on-2-Ps", "cgo-stripped-pie"])
def test_running_samples_name_the_goroutines_the_runtime_shows_running(spec, spin, procs, engine, tmp_path,
                                                                       monkeypatch):
    """A running sample's goroutine is the g in its thread's TLS slot read in the stop
    (ptrace), or in Go's g register (R14) as the kernel saw it (perf); m.curg when the thread
    is on g0: the ids are those the runtime's own dump shows running the spinning code, each
    spinner is seen, and with more spinners than Ps (they are preempted and move between
    threads all the time) no sample is lost to a stale g."""
    if procs:
        monkeypatch.setenv("GOMAXPROCS", str(procs))
    check_running_samples_name_the_goroutines_the_runtime_shows_running(spec, tmp_path, spin, engine)


MATRIX_STRIPPED = [s for v in gt.MATRIX for s in gt.matrix_specs(v) if s.stripped]


@pytest.mark.matrix
@pytest.mark.parametrize("engine", ["perf", "ptrace"])
@pytest.mark.parametrize("spec", MATRIX_STRIPPED, ids=[s.tag for s in MATRIX_STRIPPED])
def test_matrix_running_samples_name_the_goroutines_the_runtime_shows_running(spec, engine, tmp_path):
    check_running_samples_name_the_goroutines_the_runtime_shows_running(spec, tmp_path, engine=engine)
