"""A tiny, isolated copy of the project for flow and server tests.

The copy holds the repository's tracked and untracked-but-not-ignored files (so no virtual environment,
pipeline outputs or local MLflow store), params shrunk so that stages run in seconds (``TINY_PARAMS``, merged
key by key as the rehearsal merges its overrides: ``rehearsal.project``), and a git history of its own. A
stand-in stage ``candidate/dvc.yaml:model`` writes a model file and a metric from one param, so that the
registry logic of ``retrain`` runs for real without the training stages; given the project's compatibility
params (as ``retrain`` sets them), it also writes the evaluation's compatibility criterion against the
champion's file, compatible only when fine-tuned against that file.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from eva02at.core.tracking import aliased_version
from flows.common import QUIET
from rehearsal.project import ROOT, git, make_project

__all__ = ["ROOT", "git"]  # shared with the tests that build on the tiny project

CANDIDATE_STAGE = "candidate/dvc.yaml:model"
CANDIDATE_METRIC = "candidate.score"
CANDIDATE_MODEL = "candidate/model.pt"
CANDIDATE_PARAM = "candidate/params.yaml:score"

TINY_PARAMS: dict[str, Any] = {
    "sample": {
        "width": 32,
        "height": 16,
        "fps": 4,
        "segment_seconds": [0.5, 1.0],
        "clip_seconds": [0.5, 1.0],
        "gap_seconds": [0.1, 0.2],
        "segments_per_video": [5, 6],
        "ek100_train_participants": 1,
        "ek100_test_participants": 1,
        "ek100_train_segments": 12,
        "ek100_test_segments": 8,
        "egoclip_clips": 12,
        "egomcq_videos": 5,
        "egomcq_questions": 4,
        "charades_videos": 3,
        "charades_train_videos": 4,
        "charades_classes": 4,
        "charades_actions": [1, 2],
        "workers": 1,
    },
    "frames": {"workers": 1, "size": 32},
    "image_clip": {
        "model": "EVA02-Tiny-test",
        "train": {"epochs": 1, "batch_size": 4, "workers": 0, "log_every": 1},
    },
    "pretrain": {"embed_dim": 16, "train": {"epochs": 1, "batch_size": 4, "workers": 0, "log_every": 1}},
    "finetune": {"train": {"epochs": 1, "batch_size": 4, "workers": 0, "log_every": 1}},
    "finetune_charades": {"train": {"epochs": 1, "batch_size": 4, "workers": 0, "log_every": 1}},
    "export": {"workers": 0},
    "evaluate": {"random": {"seed": 0, "draws": 2}},
}

CANDIDATE_FILES = {
    "dvc.yaml": """\
stages:
  model:
    cmd: python make.py
    deps: [make.py]
    params:
      - score
      - ../params.yaml:
          - finetune.compatible_with
          - export.models
          - evaluate.compatibility
    outs: [model.pt]
    metrics:
      - metrics.json:
          cache: false
""",
    "make.py": """\
import json
from pathlib import Path

import yaml

score = yaml.safe_load(Path("params.yaml").read_text())["score"]
Path("model.pt").write_bytes(f"weights {score!r}".encode())
metrics = {"candidate": {"score": score}}
project = yaml.safe_load(Path("../params.yaml").read_text())
compatibility = project["evaluate"]["compatibility"]
if compatibility:  # the evaluation's criterion, played: compatible when fine-tuned against the old model
    old_file = project["export"]["models"][compatibility["old"]]
    old = float(Path("..", old_file).read_bytes().split()[1])
    cross = old + 0.01 if project["finetune"]["compatible_with"] == old_file else old / 2
    criterion = {"old_old": old, "new_new": score, "new_text_old_video": cross, "old_text_new_video": cross}
    metrics["compatibility"] = {"criterion": {**criterion, "compatible": float(cross >= old)}}
Path("metrics.json").write_text(json.dumps(metrics))
""",
    "params.yaml": "score: 0.5\n",
}


def candidate_model_bytes(score: float) -> bytes:
    """What the stand-in stage writes as its model for ``score``."""
    return f"weights {score!r}".encode()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def quiet_env(prefect_home: Path) -> dict[str, str]:
    """The environment for flows, servers and workers under test: Prefect state under ``prefect_home``, the
    local MLflow store of the project, no usage reports, this interpreter's tools first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_TRACKING_URI"))}
    env.update(
        PREFECT_HOME=str(prefect_home),
        **QUIET,
        PREFECT_SERVER_UI_ENABLED="false",
        NO_PROXY="127.0.0.1,localhost",  # servers under test listen on loopback only
        no_proxy="127.0.0.1,localhost",
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    return env


def make_tiny_project(dest: Path, with_candidate: bool = True) -> Path:
    """A committed tiny project at ``dest`` (see the module docstring)."""
    files = {f"candidate/{name}": text for name, text in CANDIDATE_FILES.items()} if with_candidate else {}
    return make_project(dest, TINY_PARAMS, files=files)


def reproduced_tiny_project(dest: Path) -> tuple[Path, dict[str, str], str]:
    """A tiny project (no stand-in stage) with an empty MLflow store after one ``dvc repro`` of the whole
    pipeline; returns the project, the environment the pipeline ran in and its output."""
    project = make_tiny_project(dest, with_candidate=False)
    shutil.copy(empty_mlflow_store(), project / "mlflow.db")
    env = quiet_env(project / ".prefect")
    done = subprocess.run(["dvc", "repro"], cwd=project, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"dvc repro failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return project, env, done.stdout + done.stderr


@functools.cache
def empty_mlflow_store() -> Path:
    """An MLflow SQLite store with its tables and nothing else, built once per test session (MLflow takes
    about ten seconds to create the tables); tests copy the file."""
    directory = Path(tempfile.mkdtemp(prefix="eva02at-mlflow-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    path = directory / "mlflow.db"
    assert aliased_version("absent", "champion", f"sqlite:///{path}") is None
    return path
