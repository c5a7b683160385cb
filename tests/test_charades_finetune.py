"""Charades-Ego fine-tuning: the video-class soft labels against a brute-force reading of the CSV, and the
generic fine-tuning stage run with its ``finetune_charades`` section on them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from eva02at.data.labels import RelevancyTable, video_class_relevancy
from eva02at.data.shards import FrameSpec
from eva02at.evaluation.benchmarks.charades_ego import read_charades_labels
from eva02at.models import create_image_clip, from_open_clip, load_checkpoint_file, save_video_clip
from stages import finetune, soft_labels
from tests.train_fixtures import write_clips

TINY = "EVA02-Tiny-test"
CLASSES = ["take plate", "open drawer", "wash cup", "cut onion", "put knife"]
CLIPS = 8  # write_clips names them c0..c7


def actions_column(rng: np.random.Generator, videos: int) -> list[str]:
    """Random ``actions`` cells (``c003 0.10 2.30;...``), a class possibly repeated, one video without action."""
    cells = []
    for v in range(videos):
        count = 0 if v == 3 else int(rng.integers(1, 4))
        picks = rng.integers(0, len(CLASSES), count)
        cells.append(";".join(f"c{c:03d} {0.5 * k:.2f} {0.5 * k + 1:.2f}" for k, c in enumerate(picks)))
    return cells


def write_charades(root: Path, videos: list[str], actions: list[str]) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    classes = root / "Charades_v1_classes.txt"
    classes.write_text("".join(f"c{k:03d} {name}\n" for k, name in enumerate(CLASSES)))
    csv = root / "CharadesEgo_v1_train_only1st.csv"
    pd.DataFrame({"id": videos, "actions": actions, "length": ["3.00"] * len(videos)}).to_csv(csv, index=False)
    return csv, classes


def test_video_class_relevancy_matches_a_brute_force_reading(tmp_path):
    rng = np.random.default_rng(0)
    videos = [f"v{k}" for k in range(30)]
    actions = actions_column(rng, len(videos))
    csv, _ = write_charades(tmp_path, videos, actions)
    class_ids = [f"c{k:03d}" for k in range(len(CLASSES))]
    ids, labels = read_charades_labels(csv, class_ids)
    table = video_class_relevancy(labels, ids, class_ids)
    expected = np.zeros((len(videos), len(CLASSES)))
    for v, cell in enumerate(actions):  # every (video, class) pair, from the raw strings
        for c, class_id in enumerate(class_ids):
            expected[v, c] = float(any(a.split(" ")[0] == class_id for a in cell.split(";") if a))
    np.testing.assert_array_equal(table.dense(), expected)
    assert list(table.video_ids) == videos and list(table.sentence_ids) == class_ids
    assert table.summary()["ones"] == int(expected.sum())
    assert list(table.candidates(0, threshold=0.5)) == list(np.flatnonzero(expected[0]))
    table.save(tmp_path / "t.npz")
    np.testing.assert_array_equal(RelevancyTable.load(tmp_path / "t.npz").dense(), expected)
    with pytest.raises(ValueError, match="do not match"):
        video_class_relevancy(labels[:, :2], ids, class_ids)


def test_the_finetune_stage_trains_on_charades_with_its_own_section(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_clips(tmp_path / "frames", FrameSpec(num_frames=2, size=32, aspect=1.25), CLIPS)
    videos = [f"c{k}" for k in range(CLIPS)]
    csv, classes = write_charades(tmp_path / "charades", videos, actions_column(np.random.default_rng(1), CLIPS))
    torch.manual_seed(0)
    init = from_open_clip(create_image_clip(TINY), 2, embed_dim=16, model_name=TINY)
    save_video_clip(init, tmp_path / "init.pt")
    section = {
        "init": str(tmp_path / "init.pt"),
        "frames": str(tmp_path / "frames"),
        "sentences": "labels/charades_train_queries.csv",
        "relevancy": "labels/charades_train.npz",
        "out": "out",
        "checkpoints": "checkpoints",
        "num_frames": 2,
        "losses": {"sms": {"margin": 0.3}},
        "relevance_threshold": 0.5,
        "train": {"epochs": 2, "batch_size": 3, "workers": 0, "log_every": 1},
        "optim": {"name": "lamb", "lr": 1.0e-3, "warmup_epochs": 1, "warmup_lr": 1.0e-6, "schedule": "cosine"},
    }
    params = {
        "soft_labels": {
            "out": "labels",
            "splits": {"charades_train": {"format": "charades", "videos": str(csv), "sentences": str(classes)}},
        },
        "finetune_charades": section,
        "tracking": {"uri": None, "experiment": "eva02at", "enabled": False},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setattr(sys, "argv", ["soft_labels", "--params", "params.yaml"])
    soft_labels.main()
    summary = json.loads(Path("labels/summary.json").read_text())["charades_train"]
    assert summary["without_action"] == ["c3"] and summary["videos"] == CLIPS - 1
    queries = pd.read_csv("labels/charades_train_queries.csv")
    assert queries["narration"].tolist() == CLASSES

    monkeypatch.setattr(sys, "argv", ["finetune", "finetune_charades", "--params", "params.yaml"])
    finetune.main()
    history = pd.read_csv("out/history.csv")
    assert len(history) == 2 * ((CLIPS - 1) // 3) and np.isfinite(history["loss"]).all()
    assert json.loads(Path("metrics/finetune_charades_select.json").read_text())["finetune_charades"]["select"] == {
        "selected": "final",
        "epoch": None,
        "score": None,
    }
    trained = load_checkpoint_file("out/model.pt")["state_dict"]
    before = init.state_dict()
    assert any(not torch.equal(trained[k], before[k]) for k in before)
