"""Profile.aggregate: the one place stacks are merged for every writer."""

from __future__ import annotations

from collections import Counter

import pytest

import export_data
from goflame.errors import BadInput
from goflame.export.folded import read_folded
from goflame.frame import Frame, FrameKind
from goflame.profile import Profile, RecordingMeta, Sample


def test_without_lines_frames_of_one_function_merge_and_with_lines_they_do_not():
    samples = export_data.random_samples(300)
    prof = Profile(export_data.meta(), tuple(samples))
    plain = prof.stacks()
    want: Counter[tuple[str, ...]] = Counter()
    for s in samples:
        want[tuple(f.function for f in reversed(s.frames))] += s.weight
    assert Counter({tuple(f.function for f in k): v for k, v in plain.items()}) == want
    assert all(f.line == 0 and f.pc == 0 for k in plain for f in k)

    lined = prof.stacks(lines=True)
    want_l: Counter[tuple[tuple[str, int], ...]] = Counter()
    for s in samples:
        want_l[tuple((f.function, f.line) for f in reversed(s.frames))] += s.weight
    assert Counter({tuple((f.function, f.line) for f in k): v for k, v in lined.items()}) == want_l


def test_thread_root_is_outside_the_goroutine_root():
    s = Sample(5, 17, 4101, "running", (Frame("main.f"), Frame("main.main")), 3)
    (stack,) = Profile(RecordingMeta(), (s,)).stacks(threads=True, goroutines=True)
    assert [(f.function, f.kind) for f in stack] == [
        ("thread 4101", FrameKind.THREAD), ("goroutine 17", FrameKind.GOROUTINE),
        ("main.main", FrameKind.GO), ("main.f", FrameKind.GO)]


def test_state_leaf_follows_the_mode_unless_asked_and_is_never_doubled():
    parked = Sample(1, 9, 0, "chan receive", (Frame("runtime.gopark"), Frame("main.w")), 1)
    already = Sample(2, 9, 0, "select", (Frame("[select]", kind=FrameKind.STATE), Frame("runtime.gopark")), 1)
    running = Sample(3, 9, 7, "running", (Frame("main.w"),), 1)
    samples = (parked, already, running)

    def leaves(mode: str, **kw) -> list[str]:
        st = Profile(RecordingMeta(mode=mode), samples).stacks(**kw)
        return sorted(">".join(f.function for f in k) for k in st)

    assert leaves("wall") == ["main.w", "main.w>runtime.gopark>[chan receive]", "runtime.gopark>[select]"]
    assert leaves("cpu") == ["main.w", "main.w>runtime.gopark", "runtime.gopark>[select]"]
    assert leaves("cpu", states=True) == leaves("wall")
    assert leaves("wall", states=False) == leaves("cpu")


def test_folded_input_has_no_threads_to_split_by(tmp_path):
    src = tmp_path / "x.folded"
    src.write_text("a;b 1\n")
    prof = read_folded(src)
    for opt in ("threads", "goroutines"):
        with pytest.raises(BadInput, match=f"--{opt} needs a .goflame recording"):
            prof.aggregate(**{opt: True})


def test_equal_frames_from_different_objects_aggregate_together():
    a = Sample(0, 1, 1, "running", (Frame("main.f", "/m.go", 3), Frame("main.main")), 2)
    b = Sample(0, 1, 1, "running", (Frame("main.f", "/m.go", 4), Frame("main.main")), 5)
    (only,) = Profile(RecordingMeta(), (a, b)).aggregate().counts.values()
    assert only == 7
