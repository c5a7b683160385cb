"""Shared fixtures: paths to the embedded sample."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"


@pytest.fixture(scope="session")
def ego4d_dir() -> Path:
    return SAMPLE / "ego4d"


@pytest.fixture(scope="session")
def ek100_dir() -> Path:
    return SAMPLE / "ek100"
