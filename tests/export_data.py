"""Samples for the exporter tests, shaped like what the sampler produces from a Go service.

The tests compute what a writer must output straight from these samples with a few lines of
plain Python (counters over name tuples), never from goflame's own aggregation.
"""

from __future__ import annotations

import random

from goflame.frame import Frame, FrameKind
from goflame.profile import Profile, RecordingMeta, Sample

# Function -> (file, kind). Lines vary per call site in `random_samples`.
VOCAB: dict[str, tuple[str, FrameKind]] = {
    "runtime.goexit": ("/usr/local/go/src/runtime/asm_amd64.s", FrameKind.GO),
    "runtime.main": ("/usr/local/go/src/runtime/proc.go", FrameKind.GO),
    "main.main": ("/src/app/main.go", FrameKind.GO),
    "main.worker": ("/src/app/main.go", FrameKind.GO),
    "main.(*Server).handle": ("/src/app/server.go", FrameKind.GO),
    "main.Map[...]": ("/src/app/generic.go", FrameKind.GO),
    "main.main.func1": ("/src/app/main.go", FrameKind.GO),
    "crypto/sha256.block": ("/usr/local/go/src/crypto/sha256/sha256block_amd64.s", FrameKind.GO),
    "encoding/json.Marshal": ("/usr/local/go/src/encoding/json/encode.go", FrameKind.GO),
    "net/http.(*conn).serve": ("/usr/local/go/src/net/http/server.go", FrameKind.GO),
    "internal/poll.(*FD).Read": ("/usr/local/go/src/internal/poll/fd_unix.go", FrameKind.GO),
    "syscall.Syscall": ("/usr/local/go/src/syscall/syscall_linux.go", FrameKind.GO),
    "runtime.mallocgc": ("/usr/local/go/src/runtime/malloc.go", FrameKind.GO),
    "runtime.gopark": ("/usr/local/go/src/runtime/proc.go", FrameKind.GO),
    "runtime.chanrecv": ("/usr/local/go/src/runtime/chan.go", FrameKind.GO),
    "github.com/acme/store.(*DB).Get": ("/root/go/pkg/mod/github.com/acme/store/db.go", FrameKind.GO),
    "runtime.cgocall": ("/usr/local/go/src/runtime/cgocall.go", FrameKind.GO),
    "deflate_slow": ("", FrameKind.NATIVE),
    "__memmove_avx_unaligned_erms": ("", FrameKind.NATIVE),
}

# Root-first call paths a goroutine can be in, with the state it is sampled in.
PATHS: list[tuple[tuple[str, ...], str]] = [
    (("runtime.goexit", "runtime.main", "main.main", "main.worker", "crypto/sha256.block"), "running"),
    (("runtime.goexit", "runtime.main", "main.main", "main.worker", "encoding/json.Marshal",
      "runtime.mallocgc"), "running"),
    (("runtime.goexit", "runtime.main", "main.main", "main.Map[...]"), "running"),
    (("runtime.goexit", "net/http.(*conn).serve", "main.(*Server).handle",
      "github.com/acme/store.(*DB).Get"), "running"),
    (("runtime.goexit", "net/http.(*conn).serve", "internal/poll.(*FD).Read", "syscall.Syscall"), "syscall"),
    (("runtime.goexit", "main.main.func1", "runtime.chanrecv", "runtime.gopark"), "chan receive"),
    (("runtime.goexit", "main.main.func1", "runtime.cgocall", "deflate_slow",
      "__memmove_avx_unaligned_erms"), "running"),
]


def frame(name: str, line: int = 0) -> Frame:
    file, kind = VOCAB.get(name, ("", FrameKind.GO))
    return Frame(name, file, line, False, kind, 0x401000 + line)


def random_samples(n: int = 400, seed: int = 1) -> list[Sample]:
    """`n` samples over a few threads and goroutines; frames innermost first, lines varying."""
    rng = random.Random(seed)
    out = []
    t = 0
    for _ in range(n):
        path, state = PATHS[rng.randrange(len(PATHS))]
        t += rng.randrange(1, 3_000_000)
        frames = tuple(frame(name, 10 + 7 * depth + rng.randrange(3)) for depth, name in enumerate(path))
        out.append(Sample(
            timestamp_ns=t,
            goroutine=rng.choice([1, 17, 18, 33]) if state != "running" or rng.random() < 0.9 else 0,
            thread=0 if state == "chan receive" else rng.choice([4101, 4102, 4107]),
            state=state,
            frames=frames[::-1],
            weight=rng.choice([1, 1, 1, 2]),
        ))
    return out


def meta(**kw: object) -> RecordingMeta:
    base: dict[str, object] = dict(
        pid=4242, binary="/usr/local/bin/server", go_version="go1.27.3", mode="cpu", rate_hz=100.0,
        start_time=1_700_000_000.0, duration=12.5, command=("/usr/local/bin/server", "-port", "8080"),
        samples=400, errors=3, extra={"lagged": 2},
    )
    base.update(kw)
    return RecordingMeta(**base)  # type: ignore[arg-type]


def profile(n: int = 400, seed: int = 1, **kw: object) -> Profile:
    return Profile(meta(**kw), tuple(random_samples(n, seed)))
