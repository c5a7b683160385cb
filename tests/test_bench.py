"""The benchmarks run small on the CPU and report numbers that agree with each other and with an analysis."""

from __future__ import annotations

import json
import math
import shlex

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench import input_path, train_step
from bench.common import median
from eva02at.models import VideoCLIP, create_image_clip, from_open_clip
from eva02at.train import loop
from eva02at.train.augment import crop_resize

TINY = "EVA02-Tiny-test"


def analytic_step_flops(model: VideoCLIP, batch: int) -> float:
    """Matmul FLOPs of one training step from layer sizes: backward costs twice the forward.

    Every weight matrix does 2 FLOPs per weight and token it is applied to; attention 4 * N^2 * width per
    layer (scores and weighted sum). The patch conv's input needs no gradient, so its backward is once its
    forward. Norms, activations and the optimizer are not matmuls and not counted.
    """
    trunk, text = model.video.trunk, model.text
    patches = model.num_frames * math.prod(trunk.patch_embed.grid_size)
    video_tokens, text_tokens = 1 + patches, text.context_length
    forward = sum(2 * m.weight.numel() * video_tokens for m in trunk.blocks.modules() if isinstance(m, nn.Linear))
    forward += 4 * video_tokens**2 * trunk.embed_dim * len(trunk.blocks)
    for block in text.transformer.resblocks:
        weights = block.attn.in_proj_weight.numel() + block.attn.out_proj.weight.numel()
        weights += sum(m.weight.numel() for m in block.mlp.modules() if isinstance(m, nn.Linear))
        forward += 2 * weights * text_tokens + 4 * text_tokens**2 * text.width
    heads = model.video_proj.weight.numel() + model.text_proj.weight.numel() + text.text_projection.numel()
    forward += 2 * heads + 2 * batch * model.config.embed_dim  # per clip: heads, and one row of the B x B sim
    patch_conv = 2 * trunk.patch_embed.proj.weight.numel() * patches
    return batch * (3 * forward + 2 * patch_conv)


def test_cpu_attention_flops_match_the_attention_formula():
    batch, heads, tokens, dim = 2, 3, 40, 16
    q, k, v = (torch.randn(batch, heads, tokens, dim, requires_grad=True) for _ in range(3))
    flops, by_op = train_step.count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    # forward: QK^T and AV; backward: recomputed QK^T and four gradient matmuls
    per_matmul = 2 * batch * heads * tokens * tokens * dim
    assert flops == 7 * per_matmul
    assert sum(by_op.values()) == flops


@pytest.mark.parametrize(("precision", "itemsize"), [("fp32", 4), ("bf16", 2)])
def test_saved_activations_count_inputs_not_weights(precision, itemsize):
    layer = nn.Linear(12, 5)
    x = torch.randn(7, 12)
    saved = train_step.SavedTensorBytes(layer)
    with saved, torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        layer(x).sum().backward()
    # backward of x @ W.T needs x (for W's gradient) and W; W and autocast's copy of it are not activations
    assert saved.bytes == x.numel() * itemsize


def test_train_step_tiny_cpu_numbers_are_consistent(tmp_path):
    batch, frames = 6, 4
    out = tmp_path / "step.json"
    argv = f"--model {TINY} --frames {frames} --batch {batch} --precision fp32 --steps 3 --warmup 1"
    argv += " --device cpu --peak-size 256"
    assert train_step.main([*shlex.split(argv), "--json", str(out)]) == 0
    result = json.loads(out.read_text())

    times = result["step_seconds"]
    assert len(times) == 3 and min(times) > 0
    assert result["clips_per_s"] == pytest.approx(batch / sorted(times)[1])
    assert result["tflops"] == pytest.approx(result["flops_per_step"] / sorted(times)[1] / 1e12)
    assert result["mfu"] == pytest.approx(result["tflops"] / result["matmul_peak_tflops"])
    assert 0 < result["mfu"] <= 1
    assert math.isfinite(result["final_loss"])
    assert result["peak_memory_bytes"] >= result["static_memory_bytes"] > 0
    assert result["saved_activation_bytes_per_clip"] > 0

    torch.manual_seed(0)
    model = from_open_clip(create_image_clip(TINY), frames, model_name=TINY)
    expected = analytic_step_flops(model, batch)
    assert 0.95 < result["flops_per_step"] / expected < 1.15
    assert result["flops_per_step"] == pytest.approx(result["flops_per_clip"] * batch)
    assert 0 < result["video_tower_flops_per_clip"] < result["flops_per_clip"]
    assert sum(result["flops_by_op_per_clip"].values()) == pytest.approx(result["flops_per_clip"])
    assert any("scaled_dot_product" in op for op in result["flops_by_op_per_clip"])


def test_the_benchmark_times_the_training_loops_step(monkeypatch):
    calls = []

    def spy(forward, task, micro_batches, optimizer, setup):
        calls.append((type(task).__name__, sorted(micro_batches[0]), micro_batches[0]["frames"].shape[-1]))
        assert setup.augment is not None  # --augment: crops as train.augment makes them
        return real_step(forward, task, micro_batches, optimizer, setup)

    real_step = loop.train_step
    monkeypatch.setattr(loop, "train_step", spy)
    argv = f"--model {TINY} --frames 2 --batch 2 --precision fp32 --steps 2 --warmup 1 --device cpu --peak-size 64"
    assert train_step.main([*shlex.split(argv), "--augment"]) == 0
    assert len(calls) == 1 + 1 + 2  # the FLOP-counting step, the warm-up step, the timed steps
    # a batch as the loader workers hand it over: uint8 frames and tokens made in the workers
    assert calls[-1] == ("VideoTextTask", ["captions", "epoch", "frames", "texts", "tokens", "videos"], 43)


@pytest.mark.parametrize("micro_batch_loss", [False, True])
def test_accumulated_steps_count_every_micro_batch(tmp_path, micro_batch_loss):
    out = tmp_path / "step.json"
    argv = f"--model {TINY} --frames 2 --batch 2 --accum 3 --precision fp32 --steps 2 --warmup 0 --device cpu"
    argv += " --peak-size 64" + (" --micro-batch-loss" if micro_batch_loss else "")
    assert train_step.main([*shlex.split(argv), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["clips_per_s"] == pytest.approx(6 / median(result["step_seconds"]))
    assert result["flops_per_step"] == pytest.approx(result["flops_per_clip"] * 6)
    loss = "per-micro-batch" if micro_batch_loss else "whole-batch"
    assert f"| {TINY} | 2 | 2 x 3 | infonce | fp32 eager accum {loss} loss |" in train_step.format_row(result)


def test_sweep_rows_are_valid_commands():
    parser = train_step.build_parser()
    known = set(open_clip.list_models())
    for entry in train_step.SWEEP:
        args = parser.parse_args(shlex.split(entry))
        assert args.model in known and args.batch >= 2


def test_sweep_runs_each_row_in_its_own_process():
    entry = f"--model {TINY} --frames 2 --batch 2 --precision fp32"
    results = train_step.run_sweep([entry], ["--steps", "1", "--warmup", "0", "--device", "cpu", "--peak-size", "256"])
    assert len(results) == 1 and "error" not in results[0], results
    assert results[0]["config"]["frames"] == 2 and results[0]["clips_per_s"] > 0
    assert train_step.format_row(results[0]).startswith(f"| {TINY} | 2 | 2 |")


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        train_step.main(["--batch", "1"])


def test_tf32_is_refused_on_the_cpu():
    with pytest.raises(ValueError, match="tf32 needs a CUDA device"):
        train_step.set_precision("tf32", torch.device("cpu"))


def test_input_path_small_cpu(tmp_path):
    out = tmp_path / "input.json"
    argv = "--size 64 --frames 2 --workers 0 1 --batch 4 --batches 3 --repeats 1 --decord-clips 3 --max-videos 2"
    assert input_path.main([*shlex.split(argv), "--device", "cpu", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    paths = [(r["path"], r["workers"]) for r in rows]
    expected = [
        ("decode_jpeg alone", 0),
        ("simplejpeg alone", 0),
        ("decode_jpegs into the batch", 0),
        ("loader", 0),
        ("loader", 1),
        ("loader, fresh shared memory", 1),
        ("loader + crop + normalise (cpu)", 1),
        ("decord", 0),
        ("crop + resize (augment)", 0),
        ("centre crop (augment off)", 0),
        ("roi_align (alternative)", 0),
    ]
    assert paths == expected
    yardstick = rows[0]["frames_per_s"]
    for row in rows:
        assert row["size"] == 64 and row["frames_per_clip"] == 2
        assert row["frames_per_s"] > 0 and row["jpeg_bytes_per_frame"] > 0
        assert row["frames_per_s_per_core"] == pytest.approx(row["frames_per_s"] / max(1, row["workers"]))
        assert row["vs_decode_jpeg"] == pytest.approx(row["frames_per_s_per_core"] / yardstick)
        assert row["ms_per_clip"] == pytest.approx(2000 / row["frames_per_s"])


def test_roi_align_alternative_crops_the_same_boxes():
    """The comparison row crops what ``crop_resize`` crops: equal where no resampling filter is involved."""
    frames = torch.randint(0, 256, (2, 3, 3, 20, 28), dtype=torch.uint8)
    boxes = [(2, 5, 12, 12), (0, 0, 12, 12)]  # already the output size: pure crops
    torch.testing.assert_close(input_path.roi_align_crop(frames, boxes, 12), crop_resize(frames, boxes, 12))
