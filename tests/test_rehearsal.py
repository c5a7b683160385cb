"""The rehearsal (``make rehearsal``): overrides merge into params.yaml key by key and keep its comments, a stage's
peak memory covers its whole process tree, the smallest form runs every stage at the real shapes with EgoClip+,
accumulation and selection on (slow), the paper rows' temporal variants train a step at those shapes (slow) and
their loss variants give a gradient."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from eva02at.cli import paper
from eva02at.core.config import from_dict, read_params
from eva02at.models import create_image_clip, from_open_clip
from eva02at.train.losses import configured_loss, finetuning, get_loss, infonce  # noqa: F401  (registers their losses)
from rehearsal.project import ROOT, merge, override_params
from rehearsal.run import OVERRIDES, SMALLEST, StageResult, measure, table
from stages.finetune import FinetuneParams
from stages.pretrain import PretrainParams

TRAINING_STAGES = ("image_clip", "pretrain", "finetune", "finetune_charades")
ROWS = paper.read_rows(ROOT / "paper" / "rows")
TEMPORAL_SWITCHES = {"temporal_embedding", "temporal_rope"}


def rehearsed(row: paper.Row) -> dict:
    """params.yaml with the recipe, the rehearsal's scale and smallest forms, then the row: the row in the
    smallest rehearsal."""
    params = read_params(ROOT / "params.yaml")
    for override in (*OVERRIDES, SMALLEST):
        merge(params, read_params(override))
    return merge(params, row.override)


def rows_changing(section: str, keys: set[str]) -> list[str]:
    return sorted(name for name, row in ROWS.items() if keys & set(row.override.get(section, {})))


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
    # the code paths a real run may take and the demo does not: EgoClip+, the whole batch under accumulation, selection
    assert params["pretrain"]["captions"] == params["egoclip_plus"]["out"]
    for name in ("pretrain", "finetune"):
        assert params[name]["train"]["accum_steps"] > 1 and params[name]["train"]["accum_whole_batch"], name
    stages = {stage["stage"]: stage for stage in report["stages"]}
    expected = {"sample", "egoclip_plus", "frames@ek100_train", "frames@ek100_train_eval", "soft_labels"}
    assert expected | {*TRAINING_STAGES, "export", "evaluate"} <= set(stages)
    selected = report["selections"]["finetune"]["select"]  # evaluated at the end of its one-step epoch, not on test
    assert (selected["selected"], selected["epoch"], selected["on_test_set"]) == ("best", 1, False)
    assert selected["collection"].endswith("ek100_train_eval") and 0 < selected["score"] <= 1
    assert report["selections"]["pretrain"]["select"]["selected"] == "final"
    assert report["failed"] is None and not (tmp_path / "project").exists()  # a passing copy is removed
    for name, stage in stages.items():
        assert stage["peak_rss_gib"] > 0 and stage["seconds"] > 0, name
        assert len(stage["step_seconds"]) == (1 if name in TRAINING_STAGES else 0), name
    assert all(stages[name]["seconds_per_step"] > 0 for name in TRAINING_STAGES)
    table = done.stdout[done.stdout.index("peak RSS GiB") :]
    assert all(name in table for name in stages) and "s/step" in table


@pytest.mark.rehearsal
@pytest.mark.parametrize("name", rows_changing("pretrain", TEMPORAL_SWITCHES))
def test_each_temporal_variant_row_trains_a_step_at_the_paper_shapes(name):
    """The Table IV rows' models (EVA02-B-16, 224 px, 4 frames): built with their switches, one InfoNCE step."""
    params = rehearsed(ROWS[name])
    settings = from_dict(PretrainParams, params["pretrain"], f"{name}: pretrain")
    assert not (settings.temporal_embedding and settings.temporal_rope), name  # the row switches one off
    torch.manual_seed(0)
    model = from_open_clip(
        create_image_clip(params["image_clip"]["model"]),
        settings.num_frames,
        settings.embed_dim,
        temporal_positions=settings.temporal_positions,
        temporal_embedding=settings.temporal_embedding,
        temporal_rope=settings.temporal_rope,
    )
    assert model.image_size == params["frames"]["size"] == 224
    assert ("video.temporal_embed" in model.state_dict()) == settings.temporal_embedding
    frames = torch.randn(2, settings.num_frames, 3, 224, 224)
    with torch.no_grad():  # at initialisation the temporal embedding is zero: only temporal RoPE sees frame order
        reversed_order = model.video_features(frames.flip(1))
    video, text = model(frames, model.tokenize(["open the fridge", "cut the onion"]))
    differs = not torch.allclose(model.video_features(frames).detach(), reversed_order, rtol=1e-4, atol=1e-4)
    assert differs == settings.temporal_rope, name
    loss = get_loss("infonce", temperature=settings.temperature)(video, text)
    loss.backward()
    grads = {key: p.grad for key, p in model.named_parameters() if p.requires_grad}
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["video_proj.weight"].abs().sum() > 0


@pytest.mark.parametrize("name", rows_changing("finetune", {"loss", "losses"}))
def test_each_loss_row_builds_its_loss_and_gives_a_gradient(name):
    """The loss ablation's rows as the finetune stage builds them, on the paper's embedding width with a soft
    relevancy: finite, and a gradient on both embeddings (the model around it is the smallest rehearsal's)."""
    settings = from_dict(FinetuneParams, rehearsed(ROWS[name])["finetune"], f"{name}: finetune")
    loss_fn = configured_loss(settings.loss, settings.losses)
    generator = torch.Generator().manual_seed(0)
    video = torch.randn(4, 256, generator=generator, dtype=torch.float64, requires_grad=True)
    text = torch.randn(4, 256, generator=generator, dtype=torch.float64, requires_grad=True)
    relevance = torch.tensor([[1.0, 0.5, 0.0, 0.2], [0.5, 1.0, 0.05, 0.0], [0.0, 0.05, 1.0, 0.7], [0.2, 0.0, 0.7, 1.0]])
    loss = loss_fn(video, text, relevance.double())
    loss.backward()
    assert torch.isfinite(loss) and loss > 0, name
    assert video.grad.abs().sum() > 0 and text.grad.abs().sum() > 0, name
