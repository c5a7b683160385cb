"""The training loop: exact resume (across epoch ends, whatever the worker count), non-finite loss stops with
the last good checkpoint, accumulation that never crosses an epoch, the step the benchmark times."""

from __future__ import annotations

import errno
import io
import re

import open_clip
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from eva02at.core.atomic import DiskFull
from eva02at.core.distributed import DistInfo
from eva02at.data.shards import FrameSpec
from eva02at.models import CheckpointError, from_open_clip, load_checkpoint_file
from eva02at.train import loop
from eva02at.train.augment import AugmentParams
from eva02at.train.data import ClipPairs, Collate, OwnCaptions, clip_frames
from eva02at.train.loop import NonFiniteLoss, TrainParams, train, train_step
from eva02at.train.losses import finetuning, get_loss, infonce  # noqa: F401  (registers their losses)
from eva02at.train.optim import OptimParams
from eva02at.train.resume import ForeignCheckpoint, fallback, resumable_state, resume_point
from eva02at.train.sampling import RelevantPairSampler
from eva02at.train.tasks import VideoTextTask
from tests.train_fixtures import write_clips

CPU = DistInfo(0, 1, 0, torch.device("cpu"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """24 captioned 2-frame clips of 32 x 40 px: room to crop for the 32 px model."""
    return write_clips(tmp_path_factory.mktemp("shards"), FrameSpec(num_frames=2, size=32, aspect=1.25), 24)


def make_task(loss_fn=None):
    torch.manual_seed(0)
    clip = open_clip.create_model("EVA02-Tiny-test", pretrained=None)
    model = from_open_clip(clip, num_frames=2, embed_dim=16)
    return VideoTextTask(model, loss_fn or get_loss("infonce", temperature=0.1))


OPTIM = OptimParams(lr=1e-3, schedule="cosine", warmup_epochs=0.5, warmup_lr=1e-5, final_lr=1e-5)


def run(task, shards, checkpoint, config, fingerprint="run", run_id=None):
    clips = shards.clip_ids
    sampler = RelevantPairSampler(OwnCaptions(len(clips)), config.batch_size, seed=config.seed)
    dataset = ClipPairs(shards, clips, shards.texts(clips))
    return train(task, sampler, dataset, config, OPTIM, checkpoint, CPU, fingerprint, run_id=run_id)


def assert_same_weights(a, b):
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def with_changes(config: TrainParams, **changes) -> TrainParams:
    return TrainParams(**{**config.__dict__, **changes})


def test_resumed_run_ends_with_the_same_weights_whatever_the_worker_count(shards, tmp_path):
    config = TrainParams(epochs=2, batch_size=4, workers=0, checkpoint_every=2, log_every=1, augment=AugmentParams())
    straight = make_task()
    result = run(straight, shards, tmp_path / "a" / "checkpoint.pt", config)
    assert result.steps == 12 and len(result.history) == 12
    assert set(result.history[0]) == {"step", "epoch", "loss", "lr"}  # no timing: the same for the same inputs

    interrupted = make_task()
    assert (
        run(interrupted, shards, tmp_path / "b" / "checkpoint.pt", with_changes(config, stop_after_steps=7)).steps == 7
    )
    resumed = make_task()  # a fresh process: new model, weights come from the checkpoint
    result_b = run(resumed, shards, tmp_path / "b" / "checkpoint.pt", with_changes(config, workers=2))
    assert result_b.steps == 12
    assert_same_weights(straight, resumed)  # same crops and views from two loader workers
    assert result_b.history == result.history


def test_resume_points_are_kept_per_configuration_and_never_overwritten(shards, tmp_path, caplog):
    config = TrainParams(epochs=1, batch_size=4, workers=0, checkpoint_every=1, log_every=1)
    first, second = resume_point(tmp_path, "a" * 64), resume_point(tmp_path, "b" * 64)
    assert first.parent != second.parent and first.parent.parent == tmp_path
    run(make_task(), shards, first, with_changes(config, stop_after_steps=3), fingerprint="a" * 64, run_id="run-1")
    first_bytes = first.read_bytes()
    assert resumable_state(first, "a" * 64)["run_id"] == "run-1"  # the tracking run a resume continues
    assert resumable_state(first, "b" * 64) == {}
    again = run(make_task(), shards, second, config, fingerprint="b" * 64, run_id="run-2")
    assert again.steps == 6 and len(again.history) == 6  # its own resume point: trained from scratch
    assert first.read_bytes() == first_bytes  # the interrupted run's state is untouched
    assert load_checkpoint_file(second)["extra"]["step"] == 6
    assert load_checkpoint_file(fallback(second))["extra"]["step"] == 5  # the save before the newest
    with pytest.raises(ForeignCheckpoint, match=r"checkpoint\.pt holds the resume point of another run"):
        run(make_task(), shards, first, config, fingerprint="b" * 64)  # refused, not overwritten
    assert first.read_bytes() == first_bytes

    caplog.set_level("INFO")
    run(make_task(), shards, first, config, fingerprint="a" * 64)  # resumes at step 3 and ends
    assert f"resuming from {first} at optimizer step 3" in caplog.text
    assert load_checkpoint_file(fallback(first))["extra"]["step"] == 5


def test_a_truncated_newest_save_falls_back_to_the_previous_one(shards, tmp_path, caplog):
    config = TrainParams(epochs=1, batch_size=4, workers=0, checkpoint_every=1, log_every=1)
    checkpoint = resume_point(tmp_path, "run")
    run(make_task(), shards, checkpoint, with_changes(config, stop_after_steps=3), fingerprint="run")
    leftover = checkpoint.parent / ".checkpoint.pt.tmp-0123456789abcdef"  # a save killed midway
    leftover.write_bytes(checkpoint.read_bytes()[:1000])
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # cut short (a full disk, a copy)
    assert resumable_state(checkpoint, "run")["step"] == 2  # the fallback's state
    caplog.set_level("INFO")
    resumed = make_task()
    assert run(resumed, shards, checkpoint, config, fingerprint="run").steps == 6
    assert not leftover.exists()
    assert f"resuming from the fallback {fallback(checkpoint)}" in caplog.text
    assert f"resuming from {fallback(checkpoint)} at optimizer step 2" in caplog.text
    straight = make_task()
    run(straight, shards, tmp_path / "straight" / "checkpoint.pt", config, fingerprint="run")
    assert_same_weights(straight, resumed)  # exact resume from the fallback
    assert load_checkpoint_file(fallback(checkpoint))["extra"]["step"] == 5

    for path in (checkpoint, fallback(checkpoint)):  # neither reads: the newest one's error, naming it
        path.write_bytes(path.read_bytes()[:1000])
    assert resumable_state(checkpoint, "run") == {}
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt: cannot read"):
        run(make_task(), shards, checkpoint, config, fingerprint="run")


def poisoned_infonce(bad_call: int):
    """InfoNCE whose ``bad_call``-th evaluation is NaN, and the count of evaluations."""
    calls = {"n": 0}
    clean = get_loss("infonce", temperature=0.1)

    def loss(video, text, relevance=None):
        calls["n"] += 1
        value = clean(video, text)
        return value * float("nan") if calls["n"] == bad_call else value

    return loss, calls


def test_non_finite_loss_names_the_step_and_keeps_the_last_good_checkpoint(shards, tmp_path):
    loss, _ = poisoned_infonce(5)
    checkpoint = tmp_path / "checkpoint.pt"
    config = TrainParams(epochs=2, batch_size=4, workers=0, checkpoint_every=2)
    with pytest.raises(NonFiniteLoss, match=r"loss is nan at optimizer step 5 \(epoch 0, batch 4 of the epoch"):
        run(make_task(loss), shards, checkpoint, config)
    saved = load_checkpoint_file(checkpoint)["extra"]
    assert saved["step"] == 4  # the checkpoint of step 4 is intact and resumable
    assert all(torch.isfinite(t).all() for t in load_checkpoint_file(checkpoint)["state_dict"].values())


def test_non_finite_loss_is_read_at_the_next_check_and_named_exactly(shards, tmp_path):
    # 6 micro-batches of 4 per epoch, 2 per step, each with its own loss; the 6th micro-batch (step 3, batch 5)
    # is NaN; the host looks at losses every 4 steps, so step 4 ran too, and no checkpoint after step 2 was written
    loss, calls = poisoned_infonce(6)
    checkpoint = tmp_path / "checkpoint.pt"
    config = TrainParams(
        epochs=4, batch_size=4, accum_steps=2, accum_whole_batch=False, workers=0, checkpoint_every=2, log_every=4
    )
    clips = shards.clip_ids
    bad_batch = RelevantPairSampler(OwnCaptions(len(clips)), 4, seed=0).batch(0, 5)
    videos = [clips[int(video)] for video, _ in bad_batch]  # video ids, not dataset indices
    expected = rf"optimizer step 3 \(epoch 0, batch 5 of the epoch, videos {re.escape(str(videos))}\)"
    with pytest.raises(NonFiniteLoss, match=expected):
        run(make_task(loss), shards, checkpoint, config)
    assert load_checkpoint_file(checkpoint)["extra"]["step"] == 2
    assert calls["n"] == 8  # steps 3 and 4 ran before the check at step 4


@pytest.mark.parametrize("whole", [True, False])
def test_accumulation_steps_take_whole_groups_of_one_epoch(shards, tmp_path, whole):
    """12 batches of 2 per epoch, 5 per step: 2 steps per epoch, 2 batches of each epoch unused. Each step's
    gradient equals, computed apart, the gradient of the loss of its 5 batches together (``whole``) or of the
    mean of their 5 losses."""
    config = TrainParams(
        epochs=3,
        batch_size=2,
        accum_steps=5,
        accum_whole_batch=whole,
        workers=0,
        log_every=1,
        augment=AugmentParams(),
    )
    task = make_task()
    recorded = []

    def record(optimizer, args, kwargs):
        named = list(task.model.named_parameters())
        recorded.append(({n: p.detach().clone() for n, p in named}, {n: p.grad.clone() for n, p in named}))

    handle = register_optimizer_step_pre_hook(record)
    try:
        assert run(task, shards, tmp_path / "checkpoint.pt", config).steps == 6
    finally:
        handle.remove()
    assert len(recorded) == 6
    clips = shards.clip_ids
    sampler = RelevantPairSampler(OwnCaptions(len(clips)), 2, seed=0)
    dataset = ClipPairs(shards, clips, shards.texts(clips))
    reference = make_task()
    for index, (weights, grads) in enumerate(recorded):
        epoch, first = divmod(index, 2)
        reference.model.load_state_dict(weights, strict=False)
        reference.model.zero_grad()
        embeddings, batches = [], []
        for batch_step in range(first * 5, first * 5 + 5):
            items = [dataset[(epoch, int(v), int(c))] for v, c in sampler.batch(epoch, batch_step)]
            batches.append(Collate(reference.tokenizer)(items))
            frames = clip_frames(batches[-1], CPU.device, 32, reference.mean, reference.std, AugmentParams(), seed=0)
            embeddings.append(reference.embed(reference.model, frames, batches[-1]["tokens"]))
        if whole:
            video, text = (torch.cat(parts) for parts in zip(*embeddings, strict=True))
            pairs = {key: torch.cat([batch[key] for batch in batches]) for key in ("videos", "captions")}
            reference.batch_loss(video, text, pairs, None).backward()
        else:
            losses = [reference.batch_loss(*pair, batch, None) for pair, batch in zip(embeddings, batches, strict=True)]
            torch.stack(losses).mean().backward()
        for name, param in reference.model.named_parameters():
            torch.testing.assert_close(grads[name], param.grad, rtol=1e-4, atol=1e-6, msg=f"step {index + 1} {name}")


def test_resume_at_and_after_an_epoch_end_with_unused_batches(shards, tmp_path):
    config = TrainParams(epochs=3, batch_size=2, accum_steps=5, workers=0, checkpoint_every=1, log_every=1)
    straight = make_task()
    run(straight, shards, tmp_path / "a" / "checkpoint.pt", config)
    resumed = make_task()
    for stop in (2, 3, 0):  # at the end of epoch 0, one step into epoch 1, then to the end
        resumed = make_task()
        run(resumed, shards, tmp_path / "b" / "checkpoint.pt", with_changes(config, stop_after_steps=stop))
    assert_same_weights(straight, resumed)


def test_gradient_accumulation_counts_optimizer_steps(shards, tmp_path):
    config = TrainParams(epochs=1, batch_size=2, accum_steps=3, workers=0, log_every=1)
    result = run(make_task(), shards, tmp_path / "checkpoint.pt", config)
    assert result.steps == 4  # 12 batches of 2 per epoch, 3 per optimizer step
    with pytest.raises(ValueError, match="fewer than accum_steps"):
        run(make_task(), shards, tmp_path / "other.pt", TrainParams(batch_size=8, accum_steps=4, workers=0))


def test_the_loop_runs_every_step_through_train_step(shards, tmp_path, monkeypatch):
    calls = []

    def spy(forward, task, micro_batches, optimizer, setup):
        calls.append(len(micro_batches))
        return train_step(forward, task, micro_batches, optimizer, setup)

    monkeypatch.setattr(loop, "train_step", spy)
    config = TrainParams(epochs=1, batch_size=4, accum_steps=2, workers=0)
    assert run(make_task(), shards, tmp_path / "checkpoint.pt", config).steps == 3
    assert calls == [2, 2, 2]


def test_gpu_decoding_needs_a_gpu(shards, tmp_path):
    with pytest.raises(ValueError, match="decode_device cuda needs a CUDA training device"):
        run(make_task(), shards, tmp_path / "checkpoint.pt", TrainParams(workers=0, decode_device="cuda"))


class FillsUp(io.RawIOBase):
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, handle, room: int):
        self.handle, self.room = handle, room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.handle.write(data)


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_keeps_the_last_good_one(shards, tmp_path, monkeypatch):
    config = TrainParams(epochs=1, batch_size=4, workers=0, checkpoint_every=1, log_every=1)
    checkpoint = resume_point(tmp_path, "run")
    run(make_task(), shards, checkpoint, with_changes(config, stop_after_steps=2), fingerprint="run")
    real_save = torch.save

    def save_on_a_full_disk(data, path):  # torch's own zip writer, on a disk with 4 KiB left
        with open(path, "wb") as handle:
            real_save(data, FillsUp(handle, 4096))

    monkeypatch.setattr(torch, "save", save_on_a_full_disk)
    with pytest.raises(DiskFull, match=rf"^{checkpoint}: no space left on its file system") as err:
        run(make_task(), shards, checkpoint, config, fingerprint="run")
    assert "\n" not in str(err.value) and "inline_container" not in str(err.value)
    monkeypatch.undo()
    assert not checkpoint.exists() and sorted(p.name for p in checkpoint.parent.iterdir()) == ["previous.pt"]
    assert load_checkpoint_file(fallback(checkpoint))["extra"]["step"] == 2  # the last good save, to resume from
    assert resumable_state(checkpoint, "run")["step"] == 2
