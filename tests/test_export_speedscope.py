"""speedscope JSON: valid against the schema the speedscope npm package ships, and faithful."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import jsonschema
import pytest

import export_data
from goflame.export import write_profile
from goflame.export.folded import read_folded
from goflame.profile import Profile

NPM_PREFIX = Path(os.environ.get("GOFLAME_NPM_CACHE", Path.home() / ".cache" / "goflame" / "npm"))
SCHEMA = NPM_PREFIX / "node_modules" / "speedscope" / "dist" / "release" / "file-format-schema.json"


@pytest.fixture(scope="module")
def validator():
    if not SCHEMA.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm not found: it installs the speedscope package whose schema is the oracle")
        NPM_PREFIX.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(NPM_PREFIX), "speedscope"],
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0 or not SCHEMA.exists():
            pytest.fail(f"npm install speedscope failed: {r.stderr[-2000:]}")
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def document(profile: Profile, **opts) -> dict:
    out = io.StringIO()
    write_profile(profile, "speedscope", out, **opts)
    return json.loads(out.getvalue())


def names_of(doc: dict, stack: list[int]) -> tuple[str, ...]:
    return tuple(doc["shared"]["frames"][i]["name"] for i in stack)


def test_single_profile_validates_and_lists_samples_in_time_order(validator):
    samples = export_data.random_samples(300)
    doc = document(Profile(export_data.meta(), tuple(samples)))
    validator.validate(doc)
    (p,) = doc["profiles"]
    assert p["type"] == "sampled"
    ordered = sorted(samples, key=lambda s: s.timestamp_ns)
    assert [names_of(doc, st) for st in p["samples"]] == [tuple(f.function for f in reversed(s.frames))
                                                          for s in ordered]
    assert p["weights"] == [s.weight for s in ordered]
    assert p["endValue"] - p["startValue"] == sum(s.weight for s in samples)


def test_one_profile_per_thread(validator):
    samples = export_data.random_samples(300)
    doc = document(Profile(export_data.meta(mode="wall"), tuple(samples)), threads=True)
    validator.validate(doc)
    want: Counter[str] = Counter()
    for s in samples:
        want[f"thread {s.thread}" if s.thread else "no thread"] += s.weight
    got = Counter({p["name"]: sum(p["weights"]) for p in doc["profiles"]})
    assert got == want
    # wall mode: off-CPU samples end in their state
    parked = next(p for p in doc["profiles"] if p["name"] == "no thread")
    assert all(names_of(doc, st)[-1] == "[chan receive]" for st in parked["samples"])


def test_frames_carry_file_and_line_with_lines(validator):
    samples = export_data.random_samples(100)
    doc = document(Profile(export_data.meta(), tuple(samples)), lines=True)
    validator.validate(doc)
    frames = {(f["name"], f.get("file"), f.get("line")) for f in doc["shared"]["frames"]}
    want = {(f.function, f.file or None, f.line) for s in samples for f in s.frames}
    assert frames == want
    plain = document(Profile(export_data.meta(), tuple(samples)))
    assert all("line" not in f for f in plain["shared"]["frames"])
    assert len(plain["shared"]["frames"]) == len({f.function for s in samples for f in s.frames})


def test_folded_input_validates_with_counts_as_weights(validator, tmp_path):
    src = tmp_path / "x.folded"
    src.write_text("a;b;c 3\na;b 2\n<x>;\"y\" 1\n")
    doc = document(read_folded(src), goroutines=False)
    validator.validate(doc)
    (p,) = doc["profiles"]
    got = Counter({names_of(doc, st): w for st, w in zip(p["samples"], p["weights"], strict=True)})
    assert got == Counter({("a", "b", "c"): 3, ("a", "b"): 2, ("<x>", '"y"'): 1})


def test_names_that_are_not_utf8_still_give_valid_json(validator, tmp_path):
    src = tmp_path / "x.folded"
    src.write_bytes(b"main.main;caf\xe9 1\n")
    out = tmp_path / "x.speedscope.json"
    write_profile(read_folded(src), None, out)
    doc = json.loads(out.read_bytes().decode("utf-8"))
    validator.validate(doc)
    assert doc["shared"]["frames"][1]["name"] == "caf\udce9"


def test_empty_profile_validates(validator):
    validator.validate(document(Profile(export_data.meta(), ())))
