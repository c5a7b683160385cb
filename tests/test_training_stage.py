"""A training stage end to end on a tiny collection: the same history bytes on a rerun, one MLflow run per
training however often it is interrupted, and a kill -9 that leaves no process behind and resumes exactly."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from eva02at.core.config import from_dict
from eva02at.data.shards import FrameSpec
from eva02at.models import create_image_clip, load_checkpoint_file, save_image_clip
from eva02at.train.resume import resume_point
from stages import pretrain
from stages.training import run_fingerprint
from tests.processes import alive, children, wait_until
from tests.project_fixtures import empty_mlflow_store
from tests.train_fixtures import write_clips

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "stage-test"
STEPS = 6  # 12 clips, batches of 4, 2 epochs


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A folder outside git and DVC with 2-frame clips, an image-CLIP checkpoint and an MLflow store."""
    write_clips(tmp_path / "frames", FrameSpec(num_frames=2, size=32, aspect=1.25), 12)
    torch.manual_seed(0)
    save_image_clip(create_image_clip("EVA02-Tiny-test"), "EVA02-Tiny-test", tmp_path / "image_clip.pt")
    shutil.copy(empty_mlflow_store(), tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_params(project: Path, name: str, tracking: bool = True, **train) -> Path:
    """A params file for ``pretrain`` writing to ``<project>/<name>/{out,checkpoints}``."""
    section = {
        "init": str(project / "image_clip.pt"),
        "frames": str(project / "frames"),
        "out": str(project / name / "out"),
        "checkpoints": str(project / name / "checkpoints"),
        "num_frames": 2,
        "embed_dim": 16,
        "train": {"epochs": 2, "batch_size": 4, "workers": 0, "checkpoint_every": 1, "log_every": 1}
        | {"augment": {"scale": [0.5, 1.0], "ratio": [0.75, 1.3333]}}
        | train,
        "optim": {"lr": 1.0e-3},
    }
    uri = f"sqlite:///{project / 'mlflow.db'}"
    params = {"pretrain": section, "tracking": {"uri": uri, "experiment": EXPERIMENT, "enabled": tracking}}
    path = project / f"{name}-{len(list(project.glob(f'{name}-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def resume_file(params: Path) -> Path:
    """The resume point of the run ``params`` defines (outside DVC: no dependency hashes in its fingerprint)."""
    section = from_dict(pretrain.PretrainParams, yaml.safe_load(params.read_text())["pretrain"])
    config = {k: v for k, v in asdict(section).items() if k not in ("out", "checkpoints")}
    return resume_point(section.checkpoints, run_fingerprint(config, {})).resolve()


def run_in_process(params: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["pretrain", "--params", str(params)])
    pretrain.main()


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint_file(path)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def stage_runs(client: MlflowClient, checkpoint: Path) -> dict[str, str]:
    """Run id -> status of every run of ``pretrain`` on ``checkpoint``."""
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([experiment], max_results=100)
    return {r.info.run_id: r.info.status for r in runs if r.data.tags.get("train.checkpoint") == str(checkpoint)}


def test_history_is_the_same_bytes_on_a_rerun(project, monkeypatch):
    run_in_process(write_params(project, "a", tracking=False), monkeypatch)
    run_in_process(write_params(project, "b", tracking=False), monkeypatch)
    first, second = (project / name / "out" / "history.csv" for name in ("a", "b"))
    assert first.read_bytes() == second.read_bytes()
    lines = first.read_text().splitlines()
    assert lines[0] == "step,epoch,loss,lr" and len(lines) == 1 + STEPS


def test_a_resumed_training_continues_its_mlflow_run(project, monkeypatch):
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.create_experiment(EXPERIMENT)
    first = write_params(project, "a", stop_after_steps=2)
    checkpoint = resume_file(first)
    folder = str((project / "a" / "checkpoints").resolve())
    execution = {"dvc.stage": "pretrain", "train.checkpoints": folder, "train.host": socket.gethostname()}
    abandoned = client.create_run(experiment, tags=execution | {"train.checkpoint": str(checkpoint)})
    abandoned = abandoned.info.run_id  # what a killed execution leaves
    # a killed execution of another configuration in the same folder: DVC may serve that configuration's rerun
    # from its run cache, so no execution of that configuration ever ends its run
    other_configuration = client.create_run(
        experiment, tags=execution | {"train.checkpoint": str(Path(folder, "0123456789abcdef", checkpoint.name))}
    )
    elsewhere = client.create_run(experiment, tags={**execution, "train.checkpoints": "/other/checkpoints"})

    run_in_process(first, monkeypatch)
    run_id = load_checkpoint_file(checkpoint)["extra"]["run_id"]
    assert stage_runs(client, checkpoint) == {abandoned: "KILLED", run_id: "FINISHED"}
    assert client.get_run(other_configuration.info.run_id).info.status == "KILLED"
    assert client.get_run(elsewhere.info.run_id).info.status == "RUNNING"  # another project's training

    run_in_process(write_params(project, "a"), monkeypatch)
    assert stage_runs(client, checkpoint) == {abandoned: "KILLED", run_id: "FINISHED"}
    assert load_checkpoint_file(checkpoint)["extra"]["run_id"] == run_id
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(1, STEPS + 1))
    run = client.get_run(run_id)
    assert run.data.params["train.stop_after_steps"] == "2"  # params of the first execution stay
    assert run.data.tags["resumed.train.stop_after_steps"] == "0"
    assert "clips_per_s" in run.data.metrics  # timings live in MLflow, not in history.csv


# Runs the real stage module, blocking in its optimizer step number ``argv[2]`` after writing ``argv[1]``:
# a kill at a chosen step that does not depend on timing.
BLOCK_AT_STEP = """
import os, runpy, sys, threading
from pathlib import Path
from eva02at.train import loop

marker, block_at, params = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
real_step, calls = loop.train_step, []

def blocking_step(*args, **kwargs):
    calls.append(1)
    if len(calls) == block_at:
        marker.write_text(str(os.getpid()))
        threading.Event().wait()
    return real_step(*args, **kwargs)

loop.train_step = blocking_step
sys.argv = ["pretrain", "--params", params]
runpy.run_module("stages.pretrain", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_a_killed_stage_leaves_no_process_and_resumes_to_the_same_weights(project, monkeypatch, signum):
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    params = write_params(project, "killed", workers=2, checkpoint_every=3)
    marker, log = project / "blocked", (project / "killed.log").open("w")
    stage = subprocess.Popen(
        [sys.executable, "-c", BLOCK_AT_STEP, str(marker), "5", str(params)], env=env, stdout=log, stderr=log
    )
    wait_until(lambda: marker.exists() or stage.poll() is not None, "the stage to reach step 5")
    assert marker.exists(), (project / "killed.log").read_text()
    workers = children(stage.pid)
    assert len(workers) >= 2  # the loader workers of the epoch
    stage.send_signal(signum)
    try:
        stage.wait(timeout=300)
    except subprocess.TimeoutExpired:
        stage.kill()
        pytest.fail(f"the stage did not stop on {signal.Signals(signum).name}")
    wait_until(lambda: not any(alive(pid) for pid in workers), "the loader workers to die with the stage")

    checkpoint = resume_file(params)
    assert load_checkpoint_file(checkpoint)["extra"]["step"] == 3
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run_id = load_checkpoint_file(checkpoint)["extra"]["run_id"]
    if signum == signal.SIGKILL:
        assert stage_runs(client, checkpoint) == {run_id: "RUNNING"}  # what kill -9 leaves
    else:  # SIGTERM, SIGINT (Ctrl-C): one plain line, the run ended KILLED
        assert stage.returncode == 128 + signum
        assert (
            f"ERROR __main__: pretrain stopped by {signal.Signals(signum).name}: "
            in (project / "killed.log").read_text()
        )
        assert stage_runs(client, checkpoint) == {run_id: "KILLED"}

    resume = [sys.executable, "-m", "stages.pretrain", "--params", str(params)]
    resumed = subprocess.run(resume, env=env, capture_output=True, text=True, check=True)
    assert "resuming from" in resumed.stderr and "at optimizer step 3" in resumed.stderr
    run_in_process(write_params(project, "straight", tracking=False, workers=2), monkeypatch)
    assert_same_weights(project / "killed" / "out" / "model.pt", project / "straight" / "out" / "model.pt")
    assert stage_runs(client, checkpoint) == {run_id: "FINISHED"}  # one training, one run
    logged = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert sorted(set(logged)) == list(range(1, STEPS + 1))  # the whole curve (step 4 twice: after the kill)
