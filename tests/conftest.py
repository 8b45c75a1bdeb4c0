from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))

import gotoolchain  # noqa: E402

FIXTURES = TESTS / "fixtures"


@pytest.fixture(scope="session")
def go():
    return gotoolchain


def build_fixture(name: str, spec: gotoolchain.BuildSpec) -> Path:
    return gotoolchain.build(FIXTURES / name, spec)
