"""goflame's CPU shares on realistic Go programs against perf's, on the same process at once.

Issue 14: on allocation/GC, HTTP and lock-contention workloads goflame must agree with
`perf record` the way it does on simple CPU loops. tests/perf_oracle.py holds the
definitions and the verdicts (leaf shares within 2.5 pp, syscall-wrapper share within 2.5 pp
of perf's, errors + truncated <= 1 %); each test measures until both sides have its engine's
`min_samples` in one window of time and judges. The instrument's own checks (perf names every
Go leaf, sees no other process, every syscall comes from a known wrapper) are plain
assertions; so are the verdicts, for both engines."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import gotoolchain as gt
import perf_oracle as po
import workloads as wl

# Samples on each side, and goflame's rate. perf's engine: 3 sigma of a 25 % share's
# difference is 2.5 pp at 4,000; it reads every sample the kernel took, so its rate only sets
# the count, and 400 Hz keeps its tests short. ptrace's engine runs at goflame's default
# rate, 100 Hz, as a user's `record` does: at 400 Hz its own stops, every 2.5 ms, perturb
# httpload (its syscall-wrapper share came out 1-3 points over perf's in 5 of 36 runs;
# docs/accuracy.md, "The rate matters"). A ptrace sample may stand for several intervals, so
# it takes 10,000 to judge as surely: ~85 s at the ~1.2 CPUs the workloads use. The time
# limit is only a bound for a starved machine, far above that: a target given a quarter of
# the CPU it uses here still reaches the count (perf's: 4,000 at 400 Hz in 60 s down to 0.17
# CPUs). docs/accuracy.md has the runs behind these settings.
SETTINGS = {
    po.Engine.PERF: po.Settings(engine=po.Engine.PERF, rate=400.0, min_samples=4000, max_seconds=60.0),
    po.Engine.PTRACE: po.Settings(engine=po.Engine.PTRACE, rate=100.0, min_samples=10000, max_seconds=400.0),
}

CASES = [pytest.param(w, e, id=f"{w.value}-{e.value}") for w in wl.Workload for e in po.Engine]
# The default build (Go 1.27, static) is in the matrix too: ~2 minutes of measurement that
# would double the fast tier's time; the fast tier keeps the instrument's own checks.
MATRIX_SPECS = [gt.BuildSpec(), gt.BuildSpec(go="1.19"), gt.BuildSpec(go="1.27", cgo=True),
                gt.BuildSpec(go="1.19", cgo=True)]


def measure_and_judge(workload: wl.Workload, engine: po.Engine, spec: gt.BuildSpec, tmp_path: Path) -> None:
    running = wl.start(workload, spec)
    try:
        m = po.measure(running.pid, running.binary, SETTINGS[engine], tmp_path)
        assert running.alive(), f"{workload.value} died while it was being profiled"
    finally:
        running.close()
    po.check_instrument(m)
    po.judge(m, SETTINGS[engine].min_samples)


@pytest.mark.matrix
@pytest.mark.parametrize("spec", MATRIX_SPECS, ids=[s.tag for s in MATRIX_SPECS])
@pytest.mark.parametrize(("workload", "engine"), CASES)
def test_matrix_goflame_agrees_with_perf_on_a_realistic_workload(workload, engine, spec, tmp_path):
    measure_and_judge(workload, engine, spec, tmp_path)


@pytest.mark.parametrize("go", ["1.27", "1.19"])
def test_the_syscall_wrapper_set_covers_every_function_of_go_that_executes_syscall(go):
    """SYSCALL_WRAPPERS is read off the Go releases' linux/amd64 assembly: every function
    with a SYSCALL instruction in it (that the set has no extra names is not checked: it is
    one set for every release)."""
    found = po.syscall_functions(gt.goroot(go))
    assert {"runtime.futex", "runtime.usleep", "runtime.osyield"} <= found, found  # the reader works
    assert found <= po.SYSCALL_WRAPPERS, found - po.SYSCALL_WRAPPERS


@pytest.mark.matrix
@pytest.mark.parametrize("go", [v for v in gt.MATRIX if v not in ("1.27", "1.19")])
def test_matrix_the_syscall_wrapper_set_covers_every_release(go):
    found = po.syscall_functions(gt.goroot(go))
    assert found and found <= po.SYSCALL_WRAPPERS, found - po.SYSCALL_WRAPPERS


PERF_SCRIPT = """\
allocgc  100/101
\t          4a2b3c runtime.mallocgc (/bin/allocgc)
\t          4a0000 main.buildList (/bin/allocgc)

allocgc  100/102
\tffffffff815baa66 __folio_batch_add_and_move ([kernel.kallsyms])
\tffffffff81000c82 asm_exc_page_fault ([kernel.kallsyms])
\t          482f8b runtime.memclrNoHeapPointers (/bin/allocgc)
\t          425a65 runtime.(*mcentral).grow (/bin/allocgc)

allocgc  100/101
\tffffffff8224d320 do_syscall_64 ([kernel.kallsyms])
\tffffffff81000130 entry_SYSCALL_64_after_hwframe ([kernel.kallsyms])
\t          484527 runtime.futex.abi0 (/bin/allocgc)

allocgc  100/103
\t    7ffd1c5f0a3d __vdso_clock_gettime ([vdso])
\t          484000 runtime.nanotime1.abi0 (/bin/allocgc)

allocgc  100/103
\t          4a1111 main.F[go.shape.int,go.shape.string] (/bin/allocgc)

other  200/200
\t          401000 main.main (/bin/other)
"""


def test_perf_script_parsing_names_go_leaves_and_kernel_entries():
    """Hand-made `perf script` text: user and kernel samples, page fault vs syscall entry, the
    vDSO, an ABI suffix, generic type arguments, another process's sample."""
    p = po.parse_perf_script(PERF_SCRIPT, 100, Path("/bin/allocgc"))
    assert (p.samples, p.foreign, p.unknown, p.kernel) == (5, 1, 0, 2)
    assert p.leaves == {"runtime.mallocgc": 1, "runtime.memclrNoHeapPointers": 1, "runtime.futex": 1,
                        po.NATIVE: 1, "main.F[...]": 1}
    assert p.kernel_entry == {po.KernelEntry.FAULT: 1, po.KernelEntry.SYSCALL: 1}
    assert p.syscall_leaves == {"runtime.futex": 1} and not p.unlisted
    assert p.syscall_share == 20.0 and p.kernel_share == 40.0


def test_a_goflame_pprof_gives_physical_leaves_by_gos_own_reader(tmp_path):
    """The physical leaf of a sample is its pprof Location's last Line, as `go tool pprof`
    reads it: a frame inlined into its caller is not the leaf, the caller is; a stack with a
    `[truncated: ...]` frame counts as truncated."""
    from goflame.export.pprof import write_pprof
    from goflame.frame import Frame, FrameKind
    from goflame.profile import Profile, RecordingMeta, Sample

    inlined, physical = Frame("main.small", inlined=True, pc=0x401010), Frame("main.big", pc=0x401010)
    futex, cut = Frame("runtime.futex", pc=0x402000), Frame("[truncated: bounds]", kind=FrameKind.UNKNOWN)
    samples = (Sample(0, 1, 1, "running", (inlined, physical)), Sample(1, 1, 1, "running", (futex, cut)))
    path = tmp_path / "p.pprof"
    write_pprof(Profile(RecordingMeta(rate_hz=100), samples), path)
    g = po.goflame_profile(path, "Wrote p.pprof: 2 samples, 1 errors, 1.0 s at 100 Hz (perf)")
    assert g.leaves == {"main.big": 1, "runtime.futex": 1}
    assert (g.samples, g.errors, g.truncated) == (2, 1, 1) and g.truncated_by == {"[truncated: bounds]": 1}
    assert g.syscall_share == 50.0 and g.bad_share == pytest.approx(200 / 3)


@pytest.mark.parametrize(("truncated", "passes"), [(40, True), (58, True), (61, False), (120, False)])
def test_errors_verdict_allows_the_binomial_noise_of_a_rate_at_the_bar_and_no_more(truncated, passes):
    """(c) on 4,000 samples: 1 % is 40, and 3 binomial standard errors of it are 18.9."""
    perf = po.PerfProfile(samples=10000, leaves=Counter({"main.f": 10000}))
    ours = po.GoflameProfile(samples=4000, truncated=truncated, leaves=Counter({"main.f": 4000}))
    verdict = {v.criterion: v.passed for v in po.verdicts(po.Measurement(perf, ours, 1, 1.0, 1.0), 4000)}
    assert verdict[po.Criterion.ERRORS] is passes
    assert verdict[po.Criterion.SHARES] and verdict[po.Criterion.SYSCALLS] and verdict[po.Criterion.COUNTS]
