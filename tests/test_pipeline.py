"""The whole DVC pipeline on a tiny copy of the project (run once per session, tests/conftest.py): every
stage runs, a second ``dvc repro`` runs nothing, MLflow runs carry the lineage that ``dvc.lock`` records,
and bad params fail before any work."""

from __future__ import annotations

import json
import subprocess

import open_clip
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from eva02at.core.tracking import find_runs
from eva02at.models import load_checkpoint_file
from stages.common import EXIT_PARAMS
from tests.project_fixtures import git

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tiny_pipeline")]  # the fixture is built once per worker


def run(project, env, *command, check=True):
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, f"{command} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def test_every_stage_runs_and_reports(tiny_pipeline):
    project, _, log = tiny_pipeline
    stages = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert {
        "sample",
        "frames@egoclip",
        "frames@ego4d_clips",
        "soft_labels",
        "image_clip",
        "pretrain",
        "finetune",
        "export",
        "evaluate",
    } <= set(stages)
    metrics = json.loads((project / "metrics" / "eval.json").read_text())
    for row in ("zero_shot", "finetuned", "random"):
        assert 0 < metrics[row]["ek100_mir"]["mAP_avg"] <= 1
        assert set(metrics[row]["egomcq"]) >= {"inter_video", "intra_video"}
    for plot in ("training_curves.png", "metric_bars.png", "retrieval_grid.png"):
        assert (project / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the damaged real video is reported in the manifest and in the log, not fatal
    manifest = pq.read_table(project / "data" / "frames" / "ego4d_clips" / "manifest.parquet").to_pylist()
    failed = [row for row in manifest if row["status"] == "error"]
    assert [row["source"] for row in failed] == ["corrupted.mp4"] and failed[0]["error"]
    assert "failed clip corrupted_0001 (corrupted.mp4)" in log


def test_second_repro_runs_nothing(tiny_pipeline):
    project, env, _ = tiny_pipeline
    again = run(project, env, "dvc", "repro")
    assert "Running stage" not in again.stdout, again.stdout
    assert "Data and pipelines are up to date" in run(project, env, "dvc", "status").stdout


def test_runs_carry_the_lineage_of_dvc_lock(tiny_pipeline):
    project, _, _ = tiny_pipeline
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    head = git(project, "rev-parse", "HEAD").strip()
    runs = {run.tags.get("dvc.stage"): run for run in find_runs("eva02at", f"sqlite:///{project / 'mlflow.db'}")}
    for stage in ("sample", "soft_labels", "image_clip", "pretrain", "finetune", "evaluate"):
        tags = runs[stage].tags
        assert tags["git.commit"] == head
        recorded = {dep["path"]: dep["md5"] for dep in lock[stage]["deps"]}
        tagged = {key.removeprefix("dvc.dep."): value for key, value in tags.items() if key.startswith("dvc.dep.")}
        assert tagged == recorded, stage
    assert runs["finetune"].metrics["loss"] > 0
    assert "finetuned.ek100_mir.mAP_avg" in runs["evaluate"].metrics
    assert "charades_finetuned.charades_ego.mAP" in runs["evaluate"].metrics  # the Charades-Ego fine-tuned row
    assert runs["finetune_charades"].metrics["loss"] > 0


def test_params_that_do_not_fit_fail_before_any_work(tiny_pipeline, tmp_path):
    project, env, _ = tiny_pipeline
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["pretrain"] = {
        **params["pretrain"],
        "num_frames": 3,
        "out": str(tmp_path / "p"),
        "checkpoints": str(tmp_path / "c"),
    }
    params["finetune"] = {**params["finetune"], "init": str(tmp_path / "missing.pt")}
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    frames = run(project, env, "python", "-m", "stages.pretrain", "--params", str(bad), check=False)
    assert frames.returncode == EXIT_PARAMS
    assert "holds 4 frames per clip but the model takes 3" in frames.stderr
    missing = run(project, env, "python", "-m", "stages.finetune", "--params", str(bad), check=False)
    assert missing.returncode == 1 and f"{tmp_path / 'missing.pt'}: no such file" in missing.stderr
    assert not (tmp_path / "p").exists() and not (tmp_path / "c").exists()


def test_finetune_runs_on_two_processes_with_torchrun(tiny_pipeline, tmp_path):
    project, env, _ = tiny_pipeline
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["finetune"] = {**params["finetune"], "out": str(tmp_path / "out"), "checkpoints": str(tmp_path / "ckpt")}
    params["finetune"]["train"] = {**params["finetune"]["train"], "batch_size": 2}
    params["tracking"] = {**params["tracking"], "enabled": False}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run(
        project,
        env,
        "torchrun",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "stages.finetune",
        "--params",
        str(tmp_path / "params.yaml"),
    )
    history = (tmp_path / "out" / "history.csv").read_text().splitlines()
    assert history[0].startswith("step,") and len(history) > 1
    assert (tmp_path / "out" / "model.pt").is_file()


def test_a_stage_stopped_midway_resumes_to_the_same_weights(tiny_pipeline, tmp_path):
    project, env, _ = tiny_pipeline
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["pretrain"] = {**params["pretrain"], "out": str(tmp_path / "out"), "checkpoints": str(tmp_path / "ckpt")}
    params["tracking"] = {**params["tracking"], "enabled": False}
    stopped = {**params, "pretrain": {**params["pretrain"], "train": {**params["pretrain"]["train"]}}}
    stopped["pretrain"]["train"]["stop_after_steps"] = 1
    (tmp_path / "stopped.yaml").write_text(yaml.safe_dump(stopped))
    (tmp_path / "full.yaml").write_text(yaml.safe_dump(params))
    run(project, env, "python", "-m", "stages.pretrain", "--params", str(tmp_path / "stopped.yaml"))
    (checkpoint,) = (tmp_path / "ckpt").glob("*/checkpoint.pt")  # the resume point of this configuration
    assert load_checkpoint_file(checkpoint)["extra"]["step"] == 1
    resumed = run(project, env, "python", "-m", "stages.pretrain", "--params", str(tmp_path / "full.yaml"))
    assert "resuming from" in resumed.stderr and "at optimizer step 1" in resumed.stderr
    uninterrupted = load_checkpoint_file(project / "models" / "pretrain" / "model.pt")["state_dict"]
    after_resume = load_checkpoint_file(tmp_path / "out" / "model.pt")["state_dict"]
    assert uninterrupted.keys() == after_resume.keys()
    assert all(torch.equal(uninterrupted[k], after_resume[k]) for k in uninterrupted)


def test_image_clip_imports_real_weights_strictly(tiny_pipeline, tmp_path):
    project, env, _ = tiny_pipeline
    torch.manual_seed(1)
    weights = open_clip.create_model("EVA02-Tiny-test", pretrained=None).state_dict()
    torch.save(weights, tmp_path / "open_clip_pytorch_model.bin")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["image_clip"] = {
        **params["image_clip"],
        "weights": str(tmp_path / "open_clip_pytorch_model.bin"),
        "out": str(tmp_path / "out"),
        "checkpoints": str(tmp_path / "ckpt"),
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    imported = run(project, env, "python", "-m", "stages.image_clip", "--params", str(tmp_path / "params.yaml"))
    assert "imported EVA02-Tiny-test: InfoNCE on" in imported.stderr
    saved = load_checkpoint_file(tmp_path / "out" / "model.pt")["state_dict"]
    assert saved.keys() == weights.keys() and all(torch.equal(saved[k], weights[k]) for k in weights)
    assert (tmp_path / "out" / "history.csv").read_text().splitlines() == ["step,epoch,loss,lr"]

    torch.save({k: v for k, v in weights.items() if not k.startswith("text.")}, tmp_path / "partial.bin")
    params["image_clip"]["weights"] = str(tmp_path / "partial.bin")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    partial = run(
        project, env, "python", "-m", "stages.image_clip", "--params", str(tmp_path / "params.yaml"), check=False
    )
    assert partial.returncode == 1 and "partial.bin" in partial.stderr and "missing" in partial.stderr
