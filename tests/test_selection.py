"""Best-epoch selection (``train.select``): evaluated every N epochs on a benchmark of the registry, the best
weights kept beside the last, recorded in the checkpoint, ``metrics/`` and MLflow, the same after a resume, and a
benchmark's test collection refused unless chosen explicitly."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient
from torch import nn

from eva02at.core.config import ConfigError
from eva02at.data.shards import FrameSpec
from eva02at.export.embeddings import TEXT, VIDEO, read_embeddings
from eva02at.export.inference import export_texts, export_videos
from eva02at.models import (
    VideoCLIP,
    create_image_clip,
    from_open_clip,
    load_checkpoint_file,
    load_image_clip,
    load_video_clip,
    save_image_clip,
)
from eva02at.train.selection import BestEpoch, SelectParams
from stages import pretrain
from stages.selection import selection_evaluator
from tests import toy_benchmark  # registers the toy benchmark
from tests.project_fixtures import empty_mlflow_store
from tests.train_fixtures import WORDS, write_clips

CLIPS = 6  # of the validation collection, one query each


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """Training frames, a validation collection with the toy benchmark's files, a test collection, an image
    CLIP and an MLflow store, in a folder outside git and DVC."""
    write_clips(tmp_path / "frames", FrameSpec(num_frames=2, size=32, aspect=1.25), 12)
    for name in ("validation", "test"):
        write_clips(tmp_path / name, FrameSpec(num_frames=2, size=32), CLIPS, seed=1)
    (tmp_path / "queries.csv").write_text("query_id,text\n" + "".join(f"q{i},{WORDS[i]}\n" for i in range(CLIPS)))
    (tmp_path / "truth.csv").write_text("query_id,clip_id\n" + "".join(f"q{i},c{i}\n" for i in range(CLIPS)))
    torch.manual_seed(0)
    save_image_clip(create_image_clip("EVA02-Tiny-test"), "EVA02-Tiny-test", tmp_path / "image_clip.pt")
    shutil.copy(empty_mlflow_store(), tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def select_params(project: Path, collection: str = "validation", **more) -> dict:
    return {
        "benchmark": toy_benchmark.NAME,
        "metric": "recall_at_1",
        "collection": str(project / collection),
        "queries": str(project / "queries.csv"),
        "truth": str(project / "truth.csv"),
        **more,
    }


def write_params(project: Path, name: str, select: dict | None, **train) -> Path:
    """Params of ``pretrain`` (3 epochs of 3 steps) writing to ``<project>/<name>``, with a benchmarks section
    whose toy benchmark reports on the ``test`` collection."""
    section = {
        "init": str(project / "image_clip.pt"),
        "frames": str(project / "frames"),
        "out": str(project / name / "out"),
        "checkpoints": str(project / name / "checkpoints"),
        "num_frames": 2,
        "embed_dim": 16,
        "captions": None,
        "train": {"epochs": 3, "batch_size": 4, "workers": 0, "checkpoint_every": 1, "select": select} | train,
        "optim": {"lr": 1.0e-2},
    }
    entry = {"collection": "test", "queries": str(project / "queries.csv"), "truth": str(project / "truth.csv")}
    params = {
        "pretrain": section,
        "benchmarks": {"out": "benchmarks", "entries": {toy_benchmark.NAME: entry}},
        "tracking": {"uri": f"sqlite:///{project / 'mlflow.db'}", "experiment": "select-test", "enabled": True},
    }
    path = project / f"{name}-{len(list(project.glob(f'{name}-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def select_metrics(project: Path) -> dict:
    """The selection record of ``metrics/pretrain_select.json``, under the stage's name as DVC shows it."""
    return json.loads((project / "metrics" / "pretrain_select.json").read_text())["pretrain"]["select"]


def run_pretrain(params: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["pretrain", "--params", str(params)])
    pretrain.main()


def recall_of(checkpoint: Path, project: Path, tmp: Path) -> float:
    """The toy recall of a saved model, computed apart from the training: its own export and scoring."""
    model = load_video_clip(checkpoint)
    ids, texts = zip(*[(f"q{i}", WORDS[i]) for i in range(CLIPS)], strict=True)
    export_videos(model, checkpoint, project / "validation", tmp / "v.parquet", "validation")
    export_texts(model, checkpoint, list(ids), list(texts), tmp / "t.parquet", "validation")
    params = toy_benchmark.ToyParams("validation", str(project / "queries.csv"), str(project / "truth.csv"))
    benchmark = toy_benchmark.ToyRecall(params)
    return benchmark.score(read_embeddings(tmp / "v.parquet", VIDEO), read_embeddings(tmp / "t.parquet", TEXT))[
        "recall_at_1"
    ]


def test_the_stage_keeps_the_best_evaluated_epoch_beside_the_last_and_records_it(project, monkeypatch, tmp_path):
    run_pretrain(write_params(project, "a", select_params(project)), monkeypatch)
    record = select_metrics(project)
    assert sorted(record["scores"]) == ["1", "2", "3"]
    best = max(record["scores"].items(), key=lambda item: (item[1], -int(item[0])))  # ties: the earlier epoch
    assert (record["selected"], str(record["epoch"]), record["score"]) == ("best", best[0], best[1])
    assert record["on_test_set"] is False and record["collection"] == str(project / "validation")
    run_id = load_checkpoint_file(next((project / "a" / "checkpoints").glob("*/checkpoint.pt")))["extra"]["run_id"]
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    history = client.get_metric_history(run_id, "select.recall_at_1")
    assert {str(m.step): m.value for m in history} == record["scores"]
    assert client.get_run(run_id).data.metrics["select.epoch"] == record["epoch"]
    out = project / "a" / "out"
    saved = load_checkpoint_file(out / "model.pt")["extra"]["select"]
    assert saved == {k: v for k, v in record.items() if k != "selected"}
    (tmp_path / "m").mkdir(), (tmp_path / "l").mkdir()
    assert recall_of(out / "model.pt", project, tmp_path / "m") == pytest.approx(record["score"], abs=1e-12)
    assert recall_of(out / "last.pt", project, tmp_path / "l") == pytest.approx(record["scores"]["3"], abs=1e-12)


def test_a_run_resumed_after_an_evaluated_epoch_selects_as_an_uninterrupted_one(project, monkeypatch):
    run_pretrain(write_params(project, "whole", select_params(project)), monkeypatch)
    run_pretrain(write_params(project, "parts", select_params(project), stop_after_steps=4), monkeypatch)
    first = select_metrics(project)
    assert sorted(first["scores"]) == ["1"]  # stopped in epoch 2
    run_pretrain(write_params(project, "parts", select_params(project)), monkeypatch)
    resumed = select_metrics(project)
    run_pretrain(write_params(project, "whole", select_params(project)), monkeypatch)  # rewrites the metrics file
    whole = select_metrics(project)
    assert resumed == whole
    model = {
        name: load_checkpoint_file(project / name / "out" / "model.pt")["state_dict"] for name in ("whole", "parts")
    }
    assert all(torch.equal(model["whole"][k], model["parts"][k]) for k in model["whole"])


def test_without_selection_the_model_is_the_final_weights_and_metrics_say_so(project, monkeypatch):
    run_pretrain(write_params(project, "a", None), monkeypatch)
    assert select_metrics(project) == {
        "selected": "final",
        "epoch": None,
        "score": None,
    }
    assert not (project / "a" / "out" / "last.pt").exists()


def test_a_benchmark_test_collection_is_refused_unless_chosen_explicitly(project):
    params = write_params(project, "a", None)
    model = load_video_clip_from_image(project)
    config = SelectParams(**select_params(project, "test"))
    with pytest.raises(ConfigError, match=r"is the test collection of benchmarks.entries.toy_recall.*on_test_set"):
        selection_evaluator(config, model, torch.device("cpu"), str(params))
    explicit = SelectParams(**select_params(project, "test", on_test_set=True))
    assert 0.0 <= selection_evaluator(explicit, model, torch.device("cpu"), str(params))(model) <= 1.0
    with pytest.raises(ConfigError, match=r"holds 2 frames of 32 px per clip; the selection evaluates 4 frames"):
        selection_evaluator(SelectParams(**select_params(project, frames=4)), model, torch.device("cpu"), str(params))
    with pytest.raises(ConfigError, match=r"metric 'mAP' is not a score of toy_recall"):
        selection_evaluator(
            SelectParams(**select_params(project, metric="mAP")), model, torch.device("cpu"), str(params)
        )


def load_video_clip_from_image(project: Path) -> VideoCLIP:
    return from_open_clip(load_image_clip(project / "image_clip.pt"), 2, 16)


class Linear:
    """A task around one weight: what BestEpoch needs (a model and a save)."""

    def __init__(self):
        self.model = nn.Linear(1, 1, bias=False)

    def save(self, path, extra: dict) -> None:
        torch.save({"state_dict": self.model.state_dict(), "extra": extra}, path)


def test_best_epoch_evaluates_every_n_epochs_and_the_last_and_keeps_the_earlier_of_ties(tmp_path):
    task, scores = Linear(), iter([0.3, 0.7, 0.7])
    config = SelectParams("toy_recall", "recall_at_1", "validation", "q.csv", "t.csv", every_epochs=2)
    best = BestEpoch(task, lambda model: next(scores), config, tmp_path / "best.pt", epochs=5, fingerprint="f")
    for epoch in range(5):
        with torch.no_grad():
            task.model.weight.fill_(epoch + 1)
        best(epoch)
    saved = torch.load(tmp_path / "best.pt", weights_only=True)
    assert saved["state_dict"]["weight"].item() == 4.0  # epoch 4 (0.7), not epoch 5 (0.7 again)
    assert saved["extra"]["select"]["scores"] == {"2": 0.3, "4": 0.7, "5": 0.7}
    again = BestEpoch(task, lambda model: 0.5, config, tmp_path / "best.pt", epochs=5, fingerprint="f")
    assert (again.selection.epoch, again.selection.score) == (4, 0.7)
    other = BestEpoch(task, lambda model: 0.5, config, tmp_path / "best.pt", epochs=5, fingerprint="g")
    assert other.selection.epoch is None
