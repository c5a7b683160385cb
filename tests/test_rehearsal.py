"""The rehearsal (``make rehearsal``): overrides merge into params.yaml key by key and keep its comments, a stage's
peak memory covers its whole process tree, and the smallest form runs every stage at the real shapes (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from eva02at.config import read_params
from rehearsal.project import ROOT, override_params
from rehearsal.run import StageResult, measure, table

TRAINING_STAGES = ("image_clip", "pretrain", "finetune")


def test_overrides_merge_key_by_key_keeping_comments(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("a:\n  b: 1        # kept\n  c: [1, 2]\n  d: {e: 1, f: 2}\nz: null\n")
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text("a:\n  c: [3]\n  d: {f: 5}\n  new: x\nz: {y: 1}\n")
    second.write_text("a: {new: null}\n")  # merged last: replaces what the first set
    override_params(params, first, second)
    assert read_params(params) == {"a": {"b": 1, "c": [3], "d": {"e": 1, "f": 5}, "new": None}, "z": {"y": 1}}
    assert "b: 1        # kept" in params.read_text()


def test_peak_memory_is_the_stage_trees_not_the_callers(tmp_path):
    # the caller holds 768 MiB; the command's child fills 256 MiB: the peak is the child's alone
    ballast = b"b" * (768 << 20)
    fill = "x = b'x' * (256 << 20)"
    command = [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {fill!r}])"]
    measured = measure(command, tmp_path, dict(os.environ), tmp_path / "logs" / "fill.log")
    assert measured.returncode == 0 and len(ballast) == 768 << 20
    assert 256 << 20 <= measured.peak_rss_bytes < 512 << 20
    failing = measure([sys.executable, "-c", "raise SystemExit(3)"], tmp_path, dict(os.environ), tmp_path / "f.log")
    assert failing.returncode == 3


def test_table_has_step_columns_for_training_stages_only():
    rows = [StageResult("frames@egoclip", 12.0, 1.0, 0.5), StageResult("pretrain", 40.0, 3.5, 1.0, [11.0, 9.0, 7.0])]
    lines = table(rows).splitlines()
    frames, pretrain = next(x for x in lines if "frames@egoclip" in x), next(x for x in lines if "pretrain" in x)
    assert frames.split()[1:] == ["12.0", "1.00", "0.5"]  # no steps: the step columns stay empty
    assert pretrain.split()[1:] == ["40.0", "3.50", "3", "8.0", "11.0", "13.0", "1.0"]  # median of steps 2-3


@pytest.mark.rehearsal
def test_smallest_rehearsal_runs_every_stage_at_the_real_shapes(tmp_path):
    command = [sys.executable, "-m", "rehearsal", "--smallest", "--workdir", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    report = json.loads((tmp_path / "report.json").read_text())
    params = report["params"]  # the copy's params.yaml: the paper's model and frames
    assert params["image_clip"]["model"] == "EVA02-B-16" and params["frames"]["size"] == 224
    assert (params["pretrain"]["num_frames"], params["finetune"]["num_frames"]) == (4, 16)
    assert params["frames"]["collections"]["ek100_train"]["num_frames"] == 16
    stages = {stage["stage"]: stage for stage in report["stages"]}
    assert {"sample", "frames@ek100_train", "soft_labels", *TRAINING_STAGES, "export", "evaluate"} <= set(stages)
    assert report["failed"] is None and not (tmp_path / "project").exists()  # a passing copy is removed
    for name, stage in stages.items():
        assert stage["peak_rss_gib"] > 0 and stage["seconds"] > 0, name
        assert len(stage["step_seconds"]) == (1 if name in TRAINING_STAGES else 0), name
    assert all(stages[name]["seconds_per_step"] > 0 for name in TRAINING_STAGES)
    table = done.stdout[done.stdout.index("peak RSS GiB") :]
    assert all(name in table for name in stages) and "s/step" in table
