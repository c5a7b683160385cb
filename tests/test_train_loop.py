"""The training loop: exact resume, non-finite loss stops with the last good checkpoint, accumulation."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch

from eva02at.extract import encode_jpeg
from eva02at.losses import get_loss
from eva02at.models import from_open_clip, load_checkpoint_file
from eva02at.shards import FrameShards, write_manifest, write_shard
from eva02at.train.data import ClipPairs, OwnCaptions
from eva02at.train.distributed import DistInfo
from eva02at.train.loop import NonFiniteLoss, TrainConfig, train
from eva02at.train.optim import OptimConfig
from eva02at.train.sampling import RelevantPairSampler
from eva02at.train.tasks import VideoTextTask

WORDS = ["take plate", "open drawer", "wash cup", "cut onion", "put knife", "close fridge"]
CPU = DistInfo(0, 1, 0, torch.device("cpu"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """24 random 2-frame 32 px clips with captions, written in the frames stage's format."""
    root = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    frames, manifest = [], []
    for i in range(24):
        jpegs = [encode_jpeg(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), 90) for _ in range(2)]
        frames.append({"clip_id": f"c{i}", "view": 0, "frame_indices": [0, 1], "jpeg": jpegs})
        manifest.append(
            {
                "clip_id": f"c{i}",
                "source": "x.mp4",
                "line": i + 2,
                "start": 0.0,
                "end": 1.0,
                "text": WORDS[i % len(WORDS)],
                "frame_indices": [[0, 1]],
                "height": 32,
                "width": 32,
                "status": "ok",
                "error": "",
                "shard": "shard-00000.arrow",
            }
        )
    write_shard(root / "shards" / "shard-00000.arrow", frames)
    write_manifest(root / "manifest.parquet", manifest)
    return FrameShards(root)


def make_task(loss_fn=None):
    torch.manual_seed(0)
    clip = open_clip.create_model("EVA02-Tiny-test", pretrained=None)
    model = from_open_clip(clip, num_frames=2, embed_dim=16)
    return VideoTextTask(model, loss_fn or get_loss("infonce", temperature=0.1))


def run(task, shards, checkpoint, config, fingerprint="run"):
    clips = shards.clip_ids
    sampler = RelevantPairSampler(OwnCaptions(len(clips)), config.batch_size, seed=config.seed)
    dataset = ClipPairs(shards, clips, shards.texts(clips))
    optim = OptimConfig(lr=1e-3, schedule="cosine", warmup_epochs=0.5, warmup_lr=1e-5, final_lr=1e-5)
    return train(task, sampler, dataset, config, optim, checkpoint, CPU, fingerprint)


def test_resumed_run_ends_with_the_same_weights(shards, tmp_path):
    config = TrainConfig(epochs=3, batch_size=4, workers=0, checkpoint_every=2, log_every=1)
    straight = make_task()
    result = run(straight, shards, tmp_path / "a" / "checkpoint.pt", config)
    assert result.steps == 18 and len(result.history) == 18
    assert result.history[-1]["loss"] < result.history[0]["loss"]

    interrupted = make_task()
    stopped = TrainConfig(**{**config.__dict__, "stop_after_steps": 7})
    assert run(interrupted, shards, tmp_path / "b" / "checkpoint.pt", stopped).steps == 7
    resumed = make_task()  # a fresh process: new model, weights come from the checkpoint
    result_b = run(resumed, shards, tmp_path / "b" / "checkpoint.pt", config)
    assert result_b.steps == 18
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert [r["loss"] for r in result_b.history] == [r["loss"] for r in result.history]


def test_checkpoint_of_another_configuration_is_not_resumed(shards, tmp_path):
    config = TrainConfig(epochs=1, batch_size=4, workers=0, checkpoint_every=1, log_every=1)
    run(make_task(), shards, tmp_path / "checkpoint.pt", config, fingerprint="first")
    again = run(make_task(), shards, tmp_path / "checkpoint.pt", config, fingerprint="second")
    assert again.steps == 6 and len(again.history) == 6  # trained from scratch, not resumed at the end
    assert load_checkpoint_file(tmp_path / "checkpoint.pt")["extra"]["fingerprint"] == "second"


def test_non_finite_loss_names_the_step_and_keeps_the_last_good_checkpoint(shards, tmp_path):
    calls = {"n": 0}
    infonce = get_loss("infonce", temperature=0.1)

    def poisoned(video, text, relevance=None):
        calls["n"] += 1
        loss = infonce(video, text)
        return loss * float("nan") if calls["n"] == 5 else loss

    checkpoint = tmp_path / "checkpoint.pt"
    config = TrainConfig(epochs=2, batch_size=4, workers=0, checkpoint_every=2)
    with pytest.raises(NonFiniteLoss, match=r"loss is nan at optimizer step 5 \(epoch 0, batch 4 of the epoch"):
        run(make_task(poisoned), shards, checkpoint, config)
    saved = load_checkpoint_file(checkpoint)["extra"]
    assert saved["step"] == 4  # the checkpoint of step 4 is intact and resumable
    assert all(torch.isfinite(t).all() for t in load_checkpoint_file(checkpoint)["state_dict"].values())


def test_gradient_accumulation_counts_optimizer_steps(shards, tmp_path):
    config = TrainConfig(epochs=1, batch_size=2, accum_steps=3, workers=0, log_every=1)
    result = run(make_task(), shards, tmp_path / "checkpoint.pt", config)
    assert result.steps == 4  # 12 batches of 2 per epoch, 3 per optimizer step
    with pytest.raises(ValueError, match="fewer than accum_steps"):
        run(make_task(), shards, tmp_path / "other.pt", TrainConfig(batch_size=8, accum_steps=4, workers=0))
