"""goflame as a program under faults: every input bounded, every failure one line on stderr with
its documented exit code (README), never a traceback, never 1 (which `diff` keeps for a
regression), never a hang and never a half-written output file.

Everything here runs goflame in a child process on real bytes: hostile files built by hand, a
real FIFO, a real full device, real signals, real resource limits.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import export_data
import gotoolchain as gt
from conftest import FIXTURES
from goflame.export import read_profile, write_profile
from goflame.profile import Profile, RecordingMeta, iter_chunks_info
from test_dump import Fixture

ROOT = Path(__file__).resolve().parent.parent
GOFLAME = [sys.executable, "-m", "goflame.cli"]
ENTRY = [sys.executable, "-m", "goflame._entry"]  # what the `goflame` console script runs


def goflame(*args: str | Path, timeout: float = 120, cmd: list[str] = GOFLAME, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.run([*cmd, *map(str, args)], timeout=timeout, **kw)


def one_line(r: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == code, (r.returncode, err)
    assert err.startswith("goflame: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    return err


_MEASURE = """
import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True)
sys.stdout.write(f"{r.returncode} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\\n")
sys.stderr.buffer.write(r.stderr)
"""


def peak_rss(*args: str | Path) -> tuple[int, int, str]:
    """(exit code, peak resident size in bytes, stderr) of goflame ARGS, measured alone."""
    r = subprocess.run([sys.executable, "-c", _MEASURE, *GOFLAME, *map(str, args)], capture_output=True,
                       text=True, timeout=300)
    code, kib = map(int, r.stdout.split())
    return code, kib * 1024, r.stderr


def gzip_bomb(gib: int = 4) -> bytes:
    """A gzip stream of `gib` GiB of zeros in ~4 MiB: identical full-flushed deflate blocks of
    1 MiB of zeros repeated; the trailer is left zero (no reader stopping at its cap gets there)."""
    import zlib

    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    c.compress(bytes(1 << 20))
    c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + block * (gib << 10) + b"\x03\x00" + bytes(8)


@pytest.fixture
def folded_pair(tmp_path) -> tuple[Path, Path]:
    """Two folded profiles where main.b clearly grew (diff: exit 1)."""
    base, new = tmp_path / "base.folded", tmp_path / "new.folded"
    base.write_text("main.main;main.a 600\nmain.main;main.b 400\n")
    new.write_text("main.main;main.a 400\nmain.main;main.b 600\n")
    return base, new


# ---------------------------------------------------------------------------------------------
# 1. unbounded input


def test_a_gzip_bomb_is_refused_at_the_cap_in_bounded_memory(tmp_path):
    bomb = tmp_path / "bomb.pb.gz"
    bomb.write_bytes(gzip_bomb())  # 4 MiB that inflate to 4 GiB
    code, rss, err = peak_rss("report", "folded", bomb)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "gzip data of 4.1 MiB inflates to more than 256 MiB" in err and "--max-inflate" in err
    assert rss < 700 << 20, f"peak RSS {rss >> 20} MiB"  # the cap, not the 4 GiB the bomb claims
    one_line(goflame("diff", bomb, bomb), 2, "inflates to more than 256 MiB")


def test_max_inflate_and_its_environment_variable_set_the_cap(tmp_path):
    pprof = tmp_path / "p.pb.gz"
    write_profile(export_data.profile(400), "pprof", pprof)
    raw = len(gzip.decompress(pprof.read_bytes()))
    assert goflame("report", "folded", pprof).returncode == 0
    assert goflame("report", "folded", pprof, "--max-inflate", str(raw)).returncode == 0
    one_line(goflame("report", "folded", pprof, "--max-inflate", str(raw - 1)), 2, "inflates to more than")
    one_line(goflame("diff", pprof, pprof, env={**os.environ, "GOFLAME_MAX_INFLATE": "1K"}), 2,
             "inflates to more than 1 KiB")
    one_line(goflame("report", "folded", pprof, "--max-inflate", "lots"), 2, "not a size: 'lots'")


def test_a_100mb_folded_line_is_cut_to_the_depth_limit_and_said_once(tmp_path):
    src = tmp_path / "deep.folded"
    with open(src, "wb") as f:  # one line of 25 million frames, 100 MB, and an ordinary one
        f.write(b"main.main;" + b"main.a;" * 14_285_714 + b"main.leaf 7\nmain.main;main.ok 3\n")
    assert src.stat().st_size > 100_000_000
    out = tmp_path / "deep.svg"
    code, rss, err = peak_rss("report", "svg", src, "-o", out)
    assert code == 0, err
    assert err == f"goflame: warning: {src}: 1 stack deeper than 4,096 frames was cut to 4,096 (innermost frames kept)\n"
    assert rss < 1 << 30, f"peak RSS {rss >> 20} MiB"
    svg = ET.parse(out).getroot()
    titles = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}title")]
    assert any(t.startswith("[truncated: deeper than 4096 frames]") for t in titles)
    assert any(t.startswith("main.leaf\n7 samples") for t in titles)
    assert int(svg.get("height")) < 4200 * 16


def test_a_fifo_with_no_writer_is_one_line_exit_2_not_a_hang(tmp_path):
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    # Not a hang: goflame gives up after its grace (a subprocess timeout here would fail the test).
    one_line(goflame("report", "folded", fifo, timeout=120), 2, f"{fifo}: is empty", "no program writes to")


def test_a_fifo_or_a_pipe_with_a_writer_reads_like_a_file(tmp_path):
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    text = b"main.main;main.a 3\nmain.main;main.b 4\n"

    def write_when_opened() -> None:
        with open(fifo, "wb") as w:  # blocks until goflame opens the other end
            time.sleep(0.2)  # goflame is reading by now: it must wait for the data, not give up
            w.write(text)

    writer = threading.Thread(target=write_when_opened)
    writer.start()
    r = goflame("report", "folded", fifo, timeout=30)
    writer.join(10)
    assert r.returncode == 0 and r.stdout == text, r.stderr
    # a FIFO whose writer opens it later, within the grace, and one that writes nothing (empty profile)
    for payload in (text, b""):
        child = subprocess.Popen([*GOFLAME, "report", "folded", str(fifo)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
        with open(fifo, "wb") as w:
            w.write(payload)
        out, err = child.communicate(timeout=30)
        assert child.returncode == 0 and out == payload, err
    # process substitution: a pipe, read through /dev/fd
    script = f"{' '.join(GOFLAME)} report folded <(printf 'main.main;main.c 5\\n'; sleep 0.3; printf 'x 1\\n')"
    r = subprocess.run(["bash", "-c", script], capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stdout == b"main.main;main.c 5\nx 1\n", r.stderr


def test_a_pipe_larger_than_the_cap_is_refused(tmp_path):
    script = (f"{' '.join(GOFLAME)} report folded --max-inflate 64K "
              f"<(yes 'main.main;main.a 1' | head -c 1000000)")
    r = subprocess.run(["bash", "-c", script], capture_output=True, timeout=30)
    one_line(r, 2, "is a stream of more than 64 KiB")


# ---------------------------------------------------------------------------------------------
# 2. one line where a traceback was


@pytest.mark.parametrize("args", [
    ("report", "svg", "{a}"), ("report", "svg", "{a}", "-o", "/dev/full"), ("report", "pprof", "{a}"),
    ("report", "raw", "{a}", "-o", "/dev/full"), ("diff", "{a}", "{b}"), ("diff", "{a}", "{b}", "-o", "/dev/full"),
    ("diff", "{a}", "{b}", "--format", "json"),
])
def test_output_to_a_full_disk_is_one_line_exit_5(folded_pair, args):
    a, b = folded_pair
    with open("/dev/full", "wb") as full:
        r = goflame(*(x.format(a=a, b=b) for x in args), stdout=full)
    one_line(r, 5, "No space left on device")


def test_dump_to_a_full_disk_is_one_line_exit_5(tmp_path):
    fx = Fixture(gt.build(FIXTURES / "parked", gt.BuildSpec()), tmp_path, spin=0)
    try:
        with open("/dev/full", "wb") as full:
            r = goflame("dump", "--pid", str(fx.pid), stdout=full)
        one_line(r, 5, "cannot write to standard output: No space left on device")
    finally:
        fx.close()


@pytest.mark.parametrize("args, option", [
    (["record", "-r", "nan"], "--rate"), (["record", "-r", "inf"], "--rate"), (["record", "-r", "0.001"], "--rate"),
    (["record", "-r", "10001"], "--rate"), (["record", "-d", "nan"], "--duration"),
    (["record", "-d", "inf"], "--duration"), (["record", "-d", "0"], "--duration"),
    (["record", "-d", "-1"], "--duration"), (["top", "--rate", "nan"], "--rate"), (["top", "--rate", "0"], "--rate"),
    (["top", "--delay", "nan"], "--delay"), (["top", "--delay", "inf"], "--delay"), (["top", "--delay", "0"], "--delay"),
])
def test_rates_and_durations_must_be_finite_and_in_range(args, option):
    # checked while parsing: the command after -- is never run
    r = goflame(*args, "--", "/bin/false")
    one_line(r, 2, option, "must be a finite number")


def _recording_bytes(header: bytes, end: bytes) -> bytes:
    import zlib

    from goflame.profile import MAGIC

    body = b"\x01\x00" + len(header).to_bytes(4, "little") + header
    crc = zlib.crc32(end, zlib.crc32(b"E")).to_bytes(4, "little")
    return MAGIC + body + zlib.crc32(body).to_bytes(4, "little") + b"E" + len(end).to_bytes(4, "little") + crc + end


@pytest.mark.parametrize("header, end", [
    (b'{"extra": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", b"{}"),  # RecursionError before
    (b"{}", b'{"samples": 1e400}'),  # OverflowError before
    (b'{"samples": 1e400}', b"{}"),
])
def test_a_recording_with_deep_or_overflowing_json_is_corrupt_exit_2(tmp_path, header, end):
    rec = tmp_path / "bad.goflame"
    rec.write_bytes(_recording_bytes(header, end))
    one_line(goflame("report", "folded", rec), 2, f"{rec}: corrupt goflame recording")
    one_line(goflame("diff", rec, rec), 2, "corrupt goflame recording")


def test_report_pprof_of_a_count_past_64_bits_is_exit_2(tmp_path):
    src = tmp_path / "huge.folded"
    src.write_bytes(b"main.main;main.big 18446744073709551616\n")
    one_line(goflame("report", "pprof", src, "-o", tmp_path / "x.pb.gz"), 2, "cannot be written as pprof")
    assert not (tmp_path / "x.pb.gz").exists()
    r = goflame("report", "folded", src)  # the other formats hold any count
    assert r.returncode == 0 and r.stdout == b"main.main;main.big 18446744073709551616\n"


_HOOK = """
import os, signal, sys

class _SignalOnImport:
    # A real signal to this process when the module named by GOFLAME_TEST_MODULE is imported:
    # the exact moment of start-up that used to end in a traceback (or in silence).
    def find_spec(self, name, path=None, target=None):
        if name == os.environ.get("GOFLAME_TEST_MODULE"):
            sys.meta_path.remove(self)
            if os.environ.get("GOFLAME_TEST_SIGNAL"):
                os.kill(os.getpid(), int(os.environ["GOFLAME_TEST_SIGNAL"]))
            else:
                raise RuntimeError("injected fault")
        return None

sys.meta_path.insert(0, _SignalOnImport())
"""


def _with_hook(tmp_path: Path, module: str, sig: int | None = None) -> dict[str, str]:
    (tmp_path / "hook").mkdir(exist_ok=True)
    (tmp_path / "hook" / "sitecustomize.py").write_text(_HOOK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "hook"), str(ROOT)]),
           "GOFLAME_TEST_MODULE": module}
    if sig is not None:
        env["GOFLAME_TEST_SIGNAL"] = str(int(sig))
    return env


@pytest.mark.parametrize("sig, code, words", [(signal.SIGINT, 130, "goflame: interrupted\n"),
                                              (signal.SIGTERM, 143, "goflame: terminated (SIGTERM)\n")])
def test_a_signal_while_goflame_starts_is_one_line_and_its_exit_code(tmp_path, folded_pair, sig, code, words):
    a, _ = folded_pair
    for module in ("click", "goflame.export"):  # importing the command line; loading the readers
        r = goflame("report", "folded", a, cmd=ENTRY, env=_with_hook(tmp_path, module, sig))
        assert (r.returncode, r.stderr.decode()) == (code, words), module
        assert r.stdout == b""


@pytest.mark.parametrize("sig, code, words", [(signal.SIGINT, 130, "goflame: interrupted\n"),
                                              (signal.SIGTERM, 143, "goflame: terminated (SIGTERM)\n")])
def test_a_signal_while_reading_input_is_one_line_and_its_exit_code(tmp_path, sig, code, words):
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    out = tmp_path / "out.svg"
    child = subprocess.Popen([*ENTRY, "report", "svg", str(fifo), "-o", str(out)], stderr=subprocess.PIPE)
    with open(fifo, "wb"):  # returns once goflame has opened the FIFO; it then waits for data
        child.send_signal(sig)
        _, err = child.communicate(timeout=30)
    assert (child.returncode, err.decode()) == (code, words)
    assert os.listdir(tmp_path) == ["in.fifo"]  # nothing written, not even a temporary file


def default_signals() -> None:
    """preexec_fn: SIGINT and SIGTERM at their defaults, as a terminal's shell starts a program
    (a background job of a script inherits SIGINT ignored, and Python then keeps it so)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_library_modules_install_no_signal_handlers():
    code = ("import signal, importlib\n"
            "before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))\n"
            "for m in ('goflame', 'goflame.cli', 'goflame.export', 'goflame.export.pprof', 'goflame.export.svg',"
            " 'goflame.diff', 'goflame.inputs', 'goflame.profile', 'goflame.record', 'goflame.top', 'goflame._entry'):\n"
            "    importlib.import_module(m)\n"
            "after = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))\n"
            "print(after == before, after[0] is signal.default_int_handler, after[1] == signal.SIG_DFL)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       preexec_fn=default_signals)
    assert r.stdout == "True True True\n", r.stderr


@pytest.mark.parametrize("locale", [{"LC_ALL": "C"}, {"PYTHONIOENCODING": "ascii"}, {"LC_ALL": "C.UTF-8"}])
def test_names_that_are_not_utf8_never_crash_output_and_keep_their_bytes(tmp_path, locale):
    base, new = tmp_path / "base.folded", tmp_path / "new.folded"
    base.write_bytes(b"main.main;caf\xe9\xff 400\nmain.main;main.b 600\n")
    new.write_bytes(b"main.main;caf\xe9\xff 600\nmain.main;main.b 400\n")
    env = {**os.environ, **locale}
    r = goflame("report", "folded", base, env=env)
    assert r.returncode == 0 and r.stdout == base.read_bytes() and not r.stderr
    for fmt in ("text", "markdown", "json"):
        r = goflame("diff", base, new, "--format", fmt, env=env)
        assert r.returncode == 1 and b"Traceback" not in r.stderr, r.stderr  # caf\xe9\xff grew: a real regression
        if fmt == "json":
            assert any(c["function"] == "caf\udce9\udcff" for c in json.loads(r.stdout)["functions"])
        else:
            assert b"caf\xe9\xff" in r.stdout
    bad = tmp_path / "bad.folded"
    bad.write_bytes(b"main.main;caf\xe9\xff x\n")
    one_line(goflame("report", "folded", bad, env=env), 2, "is not a whole number")


def test_an_unexpected_exception_is_an_internal_error_exit_5_never_1(tmp_path, folded_pair):
    base, new = folded_pair
    assert goflame("diff", base, new).returncode == 1  # a real regression
    env = _with_hook(tmp_path, "goflame.export.svg")  # the SVG renderer fails to load: not goflame's error
    for cmd in (GOFLAME, ENTRY):
        r = goflame("diff", base, new, "-o", tmp_path / "d.svg", cmd=cmd, env=env)
        one_line(r, 5, "goflame: internal error: RuntimeError: injected fault (please report)")
    assert not (tmp_path / "d.svg").exists()


def test_running_out_of_memory_is_one_line_exit_5(tmp_path):
    bomb = tmp_path / "bomb.pb.gz"
    bomb.write_bytes(gzip_bomb())

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (700 << 20, 700 << 20))

    r = goflame("diff", bomb, bomb, "--max-inflate", "none", preexec_fn=limit_memory)
    one_line(r, 5, "goflame: out of memory")


# ---------------------------------------------------------------------------------------------
# 3. output files whole or not at all; empty profiles


def test_a_full_disk_leaves_the_previous_output_file_untouched(tmp_path):
    src = synth_folded(tmp_path / "in.folded", 2000)
    out = tmp_path / "out.svg"
    out.write_text("<svg>previous</svg>")

    def small_files() -> None:  # as if the disk filled after 16 KiB: writes beyond fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, 16 << 10))

    r = goflame("report", "svg", src, "-o", out, preexec_fn=small_files)
    one_line(r, 5, f"cannot write {out}: File too large")
    assert out.read_text() == "<svg>previous</svg>"
    assert sorted(os.listdir(tmp_path)) == ["in.folded", "out.svg"]  # no temporary file left behind
    assert goflame("report", "svg", src, "-o", out).returncode == 0
    assert out.stat().st_size > 16 << 10  # the limit did cut this file short


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (scripts/sysdeps.sh installs it)")
def test_sigkill_while_writing_leaves_the_previous_output_file_untouched(tmp_path):
    """goflame killed with its output made but not yet in place: strace injects SIGKILL as
    goflame makes its first rename(2), the one that would move the finished temporary file
    over the output (no bytecode is written, so no other rename comes first)."""
    src = synth_folded(tmp_path / "big.folded", 2000)
    out = tmp_path / "out.svg"
    out.write_text("<svg>previous</svg>")
    log = tmp_path / "strace.log"
    renames = "rename,renameat,renameat2"
    r = subprocess.run(["strace", "-qq", "-e", f"trace={renames}", "-e", f"inject={renames}:signal=SIGKILL:when=1",
                        "-o", str(log), *GOFLAME, "report", "svg", str(src), "-o", str(out)], capture_output=True,
                       timeout=120, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert r.returncode == -signal.SIGKILL or r.returncode == 128 + signal.SIGKILL, (r.returncode, r.stderr)
    killed_at = log.read_text().splitlines()
    assert killed_at[-1] == "+++ killed by SIGKILL +++" and f'"{out}"' in killed_at[-2], killed_at
    temp = [n for n in os.listdir(tmp_path) if n.startswith(".out.svg.")]
    assert temp, "goflame was killed before it made its temporary file"  # it was made, whole, but not moved
    assert out.read_text() == "<svg>previous</svg>"
    # and a run that is not killed replaces it whole
    assert goflame("report", "svg", src, "-o", out).returncode == 0
    assert ET.parse(out).getroot().get("data-total") == str(read_profile(src).total_weight)


def synth_folded(path: Path, stacks: int) -> Path:
    """The shared benchmark corpus (a large Go service's shape) with this many distinct stacks."""
    from test_export_folded import synth_script

    with open(path, "wb") as f:
        subprocess.run([sys.executable, str(synth_script()), str(stacks)], stdout=f, check=True)
    return path


def test_report_of_an_empty_profile_writes_an_empty_profile_and_says_so(tmp_path):
    empty = tmp_path / "empty.folded"
    write_profile(export_data.profile(0), "folded", empty)  # a profile with no samples: an empty file
    assert empty.stat().st_size == 0
    zero = tmp_path / "zero.goflame"
    write_profile(Profile(RecordingMeta(mode="cpu", rate_hz=100.0), ()), "goflame", zero)
    for src in (empty, zero):
        for fmt in ("svg", "folded", "speedscope", "pprof", "raw"):
            out = tmp_path / f"out.{fmt}"
            r = goflame("report", fmt, src, "-o", out)
            one_line(r, 0, f"goflame: warning: {src} holds no samples")
            if fmt == "svg":
                assert ET.parse(out).getroot().get("data-total") == "0"
            elif fmt == "speedscope":
                assert json.loads(out.read_text())["profiles"][0]["samples"] == []
            else:
                assert read_profile(out).total_weight == 0


# ---------------------------------------------------------------------------------------------
# 4. recordings cut short say so


def test_a_recording_cut_short_says_where_it_ends_and_what_it_kept(tmp_path):
    rec = tmp_path / "rec.goflame"
    samples = export_data.random_samples(300)
    from goflame.profile import RecordingWriter

    with RecordingWriter(rec, export_data.meta(), flush_interval=float("inf")) as w:
        for i, s in enumerate(samples, 1):
            w.add(s)
            if i % 100 == 0:
                w.flush()
    data = rec.read_bytes()
    offsets = [off for off, tag, _ in iter_chunks_info(data)]
    cut = tmp_path / "cut.goflame"
    at = offsets[2] + 30  # inside the third sample chunk: the first two are kept
    cut.write_bytes(data[:at])
    r = goflame("report", "folded", cut)
    kept = samples[:200]
    seconds = max(s.timestamp_ns for s in kept) / 1e9
    err = one_line(r, 0, f"goflame: warning: {cut}: recording cut short at byte {offsets[2]:,} of {at:,}",
                   f"kept 200 samples ({seconds:.1f} s)")
    assert "runs past the end of the file" in err
    assert sum(int(line.rpartition(" ")[2]) for line in r.stdout.decode().splitlines()) == sum(s.weight for s in kept)
    # cut at byte 300, inside the first chunk: no samples left, nothing to report
    cut.write_bytes(data[:300])
    one_line(goflame("report", "folded", cut), 2, f"{cut}: recording cut short at byte", "before its first sample")
    one_line(goflame("diff", rec, cut), 2, "before its first sample")
    assert stat.S_ISREG(cut.stat().st_mode)
