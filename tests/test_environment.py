"""The newcomer's second command: after `make demo`, a new shell enters the project's environment as the
README says and `dvc repro` runs stages; a stage run by a Python without the project says so in one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flows.common import QUIET
from tests.project_fixtures import ROOT, empty_mlflow_store, make_tiny_project

VENV = Path(sys.prefix)


def test_a_stage_run_by_a_python_without_the_project_says_so_in_one_line():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # -S: no site-packages, so eva02at is not importable, as for a Python outside the project's environment
    done = subprocess.run(
        [sys.executable, "-S", "-m", "stages.sample"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"eva02at is not installed for {sys.executable}: enter the project's environment first "
        "(source .venv/bin/activate, made by `make install`), then run dvc or the stage again"
    ]


@pytest.mark.slow
@pytest.mark.skipif(not (VENV / "bin" / "activate").is_file(), reason="the tests do not run from a virtual env")
def test_dvc_repro_in_a_new_shell_runs_stages_after_entering_the_environment(tmp_path):
    project = make_tiny_project(tmp_path / "project", with_candidate=False)
    (project / ".venv").symlink_to(VENV)  # where `make install` puts it
    shutil.copy(empty_mlflow_store(), project / "mlflow.db")
    new_shell = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **QUIET}  # no venv on PATH
    done = subprocess.run(
        ["bash", "-c", "source .venv/bin/activate && dvc repro sample"],  # as the README's Set-up says
        cwd=project,
        env=new_shell,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (project / "data" / "synthetic").is_dir()
