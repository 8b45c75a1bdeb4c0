"""A Go process opened for profiling: process + binary + runtime reader + stack collector.

`goflame.attach(pid)` returns one. The binary is read through /proc/PID/exe, so a target in
another mount namespace (a container) works even when its path does not exist here.
"""

from __future__ import annotations

from functools import cached_property

from goflame.binary.gobinary import GoBinary
from goflame.errors import BadInput, NotGoBinary
from goflame.labels import LabelReader
from goflame.process import Process
from goflame.runtime import RuntimeReader, Snapshot
from goflame.stacks import GoroutineStack, StackCollector


class Target:
    def __init__(self, pid: int):
        self.pid = pid
        self.proc = Process.open(pid)
        try:
            try:
                self.binary = GoBinary(self.proc.exe_path)
            except NotGoBinary:
                raise NotGoBinary(f"process {pid} ({self.proc.exe.target}) is not a Go program") from None
            except BadInput as e:
                raise type(e)(f"process {pid}: {e}") from None
            self.reader = RuntimeReader(self.proc, self.binary)
            self.stacks = StackCollector(self.proc, self.binary, self.reader)
        except BaseException:
            self.proc.close()
            raise

    @cached_property
    def labels(self) -> LabelReader:
        """Every goroutine's pprof labels (goflame/labels.py), read on first use."""
        return LabelReader.for_runtime(self.reader)

    @property
    def exe_display(self) -> str:
        return self.proc.exe.target

    def snapshot(self) -> Snapshot:
        return self.reader.snapshot()

    def goroutine_stacks(self, *, pause: bool = True) -> tuple[Snapshot, list[GoroutineStack]]:
        snap = self.reader.snapshot()
        return snap, self.stacks.collect(snap, pause=pause)

    def close(self) -> None:
        self.proc.close()
        self.binary.close()

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def attach(pid: int) -> Target:
    """Open a running Go process for reading its goroutines (nothing is paused yet)."""
    return Target(pid)
