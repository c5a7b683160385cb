"""Shared fixtures: paths to the embedded sample, and the tiny pipeline reproduced once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flows.common import QUIET
from tests.project_fixtures import reproduced_tiny_project

os.environ.update(QUIET)  # every test and everything it starts: no usage reports (see flows/common.py)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"


@pytest.fixture(autouse=True)
def no_tracking_uri_from_elsewhere():
    """Each test starts without ``MLFLOW_TRACKING_URI``: MLflow exports the URI a test tracked to, and a later
    test would otherwise log to, or read from, that test's store (or to a user's server)."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def ego4d_dir() -> Path:
    return SAMPLE / "ego4d"


@pytest.fixture(scope="session")
def ek100_dir() -> Path:
    return SAMPLE / "ek100"


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> tuple[Path, dict[str, str], str]:
    """(project, env, output) of the tiny project after one ``dvc repro`` of the whole pipeline, run once
    for every test that needs it (tests/test_pipeline.py, tests/test_prefect_server.py). Tests read it or
    copy it, and write their own outputs elsewhere."""
    return reproduced_tiny_project(tmp_path_factory.mktemp("pipeline"))
