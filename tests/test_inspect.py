"""`goflame inspect` and the binary reader's facts against `go version -m` and the build itself;
bad input of every kind gets one line and exit code 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import gotoolchain as gt
from conftest import FIXTURES

GOFLAME = [sys.executable, "-m", "goflame.cli"]
PROBE = FIXTURES / "binprobe"


def inspect(path: Path | str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*GOFLAME, "inspect", str(path), *args], capture_output=True, text=True, timeout=60)


def go_version_m(minor: str, path: Path) -> dict[str, object]:
    """What `go version -m` says: version, path, mod and build settings."""
    out = gt.go_tool(minor, "version", "-m", str(path))
    lines = out.splitlines()
    info: dict[str, object] = {"go_version": lines[0].split(": ", 1)[1].strip(), "settings": {}}
    for line in lines[1:]:
        parts = line.strip().split("\t")
        if parts[0] == "path":
            info["path"] = parts[1]
        elif parts[0] == "mod":
            info["mod"] = parts[1]
        elif parts[0] == "build":
            k, _, v = parts[1].partition("=")
            # `go version -m` re-quotes values that need it; debug/buildinfo's Value is unquoted.
            info["settings"][k] = json.loads(v) if v.startswith('"') else v
    return info


SPECS = gt.matrix_specs(gt.FAST)


@pytest.mark.parametrize("spec", SPECS, ids=[s.tag for s in SPECS])
def test_inspect_reports_what_go_version_m_and_the_build_say(spec):
    binary = gt.build(PROBE, spec)
    r = inspect(binary, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    truth = go_version_m(gt.FAST, binary)
    assert info["go_version"] == truth["go_version"]
    assert info["main_path"] == truth["path"]
    assert info["module"]["path"] == truth["mod"]
    assert info["build_settings"] == truth["settings"]
    assert info["stripped"] is spec.stripped
    assert info["dwarf"] is (not spec.stripped)
    assert info["cgo"] is spec.cgo
    assert info["pie"] is spec.pie
    assert info["arch"] == "amd64" and info["pc_quantum"] == 1
    assert info["layout"]["source"] == ("dwarf" if not spec.stripped else f"table go{gt.FAST}")
    for name in ("runtime.allgs", "runtime.allglen", "runtime.allm", "runtime.allp", "runtime.sched",
                 "runtime.buildVersion", "runtime.firstmoduledata"):
        assert name in info["globals"], name
    # The text output says the same in one screen.
    text = inspect(binary)
    assert text.returncode == 0 and truth["go_version"] in text.stdout and "runtime.allgs" in text.stdout


def test_inspect_pc_symbolizes_with_inlined_frames_marked():
    binary = gt.build(PROBE, gt.BuildSpec(stripped=True))
    twin = gt.build(PROBE, gt.BuildSpec())
    # An address inside main.work where go tool objdump shows the inlined square() (main.go:31).
    dis = gt.go_tool(gt.FAST, "tool", "objdump", "-s", "^main.work$", str(twin))
    pc = next(int(line.split()[1], 16) for line in dis.splitlines() if "main.go:31" in line)
    info = json.loads(inspect(binary, "--json", "--pc", hex(pc)).stdout)
    frames = info["pcs"][0]["frames"]
    assert frames[0]["function"] == "main.square" and frames[0]["inlined"] is True
    assert frames[-1]["function"] == "main.work" and frames[-1]["inlined"] is False
    text = inspect(binary, "--pc", hex(pc)).stdout
    assert "main.square (inlined)" in text


def _patched(tmp_path: Path, name: str, old: bytes, new: bytes) -> Path:
    src = gt.build(PROBE, gt.BuildSpec(stripped=True))
    data = src.read_bytes()
    assert old in data
    out = tmp_path / name
    out.write_bytes(data.replace(old, new, 1))
    return out


def bad_inputs(tmp_path: Path) -> list[tuple[str, Path, str]]:
    real = gt.build(PROBE, gt.BuildSpec(stripped=True))
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    truncated = tmp_path / "truncated"
    truncated.write_bytes(real.read_bytes()[:5000])
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    go = gt.go_tool(gt.FAST, "version").split()[2]  # e.g. go1.27.3
    old = go.encode()
    too_old = _patched(tmp_path, "go117", b"\x08" + old if len(old) == 8 else bytes([len(old)]) + old,
                       (b"\x08" if len(old) == 8 else bytes([len(old)])) + b"go1.17" + old[6:])
    pcln = _corrupt_pclntab(real, tmp_path)
    return [
        ("text file", text, "not an ELF file"),
        ("empty file", empty, "not an ELF file"),
        ("not Go", Path(shutil.which("ls") or "/bin/ls"), "not a Go program"),
        ("truncated", truncated, "truncated"),
        ("directory", tmp_path, "directory"),
        ("missing", tmp_path / "nope", "no such file"),
        ("Go 1.17", too_old, "supports Go 1.18 to 1.27"),
        ("corrupt pclntab", pcln, "pclntab"),
    ]


def _corrupt_pclntab(real: Path, tmp_path: Path) -> Path:
    from goflame.binary.elf import ElfFile

    with ElfFile(real) as e:
        sec = e.section(".gopclntab")
        off = sec.offset
    data = bytearray(real.read_bytes())
    data[off : off + 4] = b"\x00\x11\x22\x33"  # not a pclntab magic
    out = tmp_path / "badpcln"
    out.write_bytes(bytes(data))
    return out


def test_bad_input_gets_one_clear_line_and_exit_code_2(tmp_path):
    for what, path, words in bad_inputs(tmp_path):
        r = inspect(path)
        assert r.returncode == 2, (what, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, (what, r.stderr)
        assert words in lines[0], (what, lines[0])
