"""The training input path: decoded once into the batch, the same batches from any number of workers, the
GPU decoding path equal to the CPU one, model inputs cropped and normalised as an independent computation."""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import threading

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from eva02at.core.workers import die_with_parent
from eva02at.data.jpeg import decode_jpegs
from eva02at.data.shards import FrameShards, FrameSpec
from eva02at.train.augment import AugmentParams, crop_boxes
from eva02at.train.data import (
    ClipPairs,
    Collate,
    EpochBatches,
    SharedBatchMemory,
    clip_frames,
    decode_batch,
    device_frames,
    recycle_frames,
)
from tests.processes import alive, wait_until
from tests.train_fixtures import WORDS, write_clips

HEIGHT, WIDTH, FRAMES = 24, 32, 3  # stored with room to crop (aspect 4:3) for a 16 px model
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> FrameShards:
    """10 captioned clips of 3 frames, two views each, stored 24 x 32 px (room to crop for a 16 px model)."""
    spec = FrameSpec(num_frames=FRAMES, views=2, size=HEIGHT, aspect=WIDTH / HEIGHT)
    return write_clips(tmp_path_factory.mktemp("shards"), spec, 10)


def pillow_frames(jpegs: list[bytes]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in jpegs])  # (T, H, W, 3)


def test_decode_matches_pillow_and_keeps_the_decoders_memory_order(shards):
    clips = [shards.jpegs(c, view=1) for c in shards.clip_ids[:3]]
    np.testing.assert_array_equal(decode_jpegs(clips[0]), pillow_frames(clips[0]))
    frames = decode_batch(clips)
    reference = np.stack([pillow_frames(jpegs) for jpegs in clips])  # (B, T, H, W, 3)
    assert frames.shape == (3, FRAMES, 3, HEIGHT, WIDTH) and frames.dtype == torch.uint8
    assert torch.equal(frames, torch.from_numpy(reference).permute(0, 1, 4, 2, 3))
    assert frames.permute(0, 1, 3, 4, 2).is_contiguous()  # no transpose on the CPU
    with pytest.raises(ValueError, match="3 JPEGs for 2 frames"):
        decode_jpegs(clips[0], out=np.empty((2, HEIGHT, WIDTH, 3), dtype=np.uint8))


def loader_batches(shards: FrameShards, workers: int, decode_device: str = "cpu") -> list[dict]:
    pairs = [[(0, 1), (4, 4), (7, 2)], [(9, 9), (2, 3), (5, 5)]]  # (video, caption) batches
    tokenizer = open_clip.get_tokenizer("EVA02-Tiny-test")
    loader = DataLoader(
        ClipPairs(shards, shards.clip_ids, WORDS * 2),
        batch_sampler=EpochBatches(pairs, epoch=3),
        collate_fn=Collate(tokenizer, decode_device),
        num_workers=workers,
    )
    return list(loader)


def test_workers_build_the_batches_the_main_process_builds(shards):
    alone, workers = loader_batches(shards, 0), loader_batches(shards, 2)
    tokenizer = open_clip.get_tokenizer("EVA02-Tiny-test")
    for one, other in zip(alone, workers, strict=True):
        assert torch.equal(one["frames"], other["frames"]) and torch.equal(one["tokens"], other["tokens"])
        assert torch.equal(one["tokens"], tokenizer(one["texts"]))  # tokenized in the workers
        assert one["epoch"] == other["epoch"] == 3 and one["texts"] == other["texts"]
        inputs = [clip_frames(b, torch.device("cpu"), 16, MEAN, STD, AugmentParams(), seed=1) for b in (one, other)]
        assert torch.equal(*inputs)  # the same crops: boxes depend on (seed, epoch, clip) only
    first = alone[0]
    assert first["videos"].tolist() == [0, 4, 7] and first["captions"].tolist() == [1, 4, 2]
    view = 3 % 2  # epoch 3 reads view 1
    expected = np.stack([pillow_frames(shards.jpegs(f"c{v}", view)) for v in (0, 4, 7)])
    assert torch.equal(first["frames"], torch.from_numpy(expected).permute(0, 1, 4, 2, 3))


def test_gpu_decoding_path_gives_the_cpu_paths_frames(shards):
    cpu = torch.device("cpu")
    for shipped, decoded in zip(loader_batches(shards, 1, "cuda"), loader_batches(shards, 0), strict=True):
        assert "frames" not in shipped and shipped["jpegs"].dtype == torch.uint8
        assert torch.equal(device_frames(shipped, cpu), decoded["frames"])
        crops = [clip_frames(b, cpu, 16, MEAN, STD, AugmentParams(), seed=2) for b in (shipped, decoded)]
        assert torch.equal(*crops)


@pytest.mark.parametrize("exact", [True, False])
def test_model_inputs_are_the_cropped_frames_normalised(shards, exact):
    """Float frames (as on a GPU) are resized exactly; uint8 frames on the CPU within a grey level."""
    batch = loader_batches(shards, 0)[1]
    frames = batch["frames"].double() if exact else batch["frames"]
    inputs = clip_frames({**batch, "frames": frames}, torch.device("cpu"), 16, MEAN, STD, AugmentParams(), seed=4)
    assert inputs.shape == (3, FRAMES, 3, 16, 16) and inputs.dtype == torch.float32
    boxes = crop_boxes(batch["videos"].tolist(), 3, HEIGHT, WIDTH, AugmentParams(), seed=4)
    mean, std = (
        torch.tensor(MEAN, dtype=torch.float64).view(3, 1, 1),
        torch.tensor(STD, dtype=torch.float64).view(3, 1, 1),
    )
    for b, (top, left, h, w) in enumerate(boxes):
        crop = batch["frames"][b, :, :, top : top + h, left : left + w].double()  # (T, 3, h, w)
        resized = torch.nn.functional.interpolate(crop, size=(16, 16), mode="bilinear", antialias=True)
        expected = (resized / 255 - mean) / std
        error = (inputs[b].double() - expected) * std * 255  # in grey levels
        assert error.abs().max() < (1e-3 if exact else 1)
    with pytest.raises(ValueError, match="smaller than the model's 32 px input"):
        clip_frames(batch, torch.device("cpu"), 32, MEAN, STD)


def test_batches_of_different_frame_counts_are_refused(shards):
    items = [ClipPairs(shards, shards.clip_ids, WORDS * 2)[(0, v, 0)] for v in (0, 1)]
    short = (items[1][0][:2], *items[1][1:])
    with pytest.raises(ValueError, match="clip 1 of the batch has 2 frames"):
        Collate()([items[0], short])
    with pytest.raises(ValueError, match="different frame counts"):
        Collate(decode_device="cuda")([items[0], short])


def _orphan_to_be(parent: int, queue) -> None:
    die_with_parent(parent)
    queue.put(os.getpid())
    threading.Event().wait()  # sleeps until killed


def _parent_of_a_worker(queue) -> None:
    multiprocessing.get_context("fork").Process(target=_orphan_to_be, args=(os.getpid(), queue)).start()
    threading.Event().wait()


def test_a_loader_worker_dies_with_its_training_process():
    """Without the request, a worker whose parent is killed sleeps on as an orphan; torch's own check would
    end it only later, and a worker stuck outside torch's loop never."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    parent = context.Process(target=_parent_of_a_worker, args=(queue,))
    parent.start()
    worker = queue.get()
    try:
        assert alive(worker)
        os.kill(parent.pid, signal.SIGKILL)
        parent.join()
        wait_until(lambda: not alive(worker), "the worker to die with its parent", limit=60)
    finally:
        if alive(worker):
            os.kill(worker, signal.SIGKILL)


def test_a_worker_writes_a_buffer_again_only_after_its_release():
    memory = SharedBatchMemory(slots=2)
    first, release_first = memory.take((2, 3, 4, 5, 3))
    second, _ = memory.take((2, 3, 4, 5, 3))
    assert first.data_ptr() != second.data_ptr()  # the first is in use
    release_first()
    again, _ = memory.take((2, 3, 4, 5, 3))
    assert again.data_ptr() == first.data_ptr()  # released: written again
    third, _ = memory.take((2, 3, 4, 5, 3))  # both kept buffers in use: a fresh one, not kept
    assert third.data_ptr() not in (first.data_ptr(), second.data_ptr())
    other_shape, _ = memory.take((1, 3, 4, 5, 3))
    assert other_shape.shape == (1, 3, 4, 5, 3)


def test_recycled_batches_arrive_intact_and_a_held_batch_is_never_overwritten(shards):
    pairs = [[(v, v), ((v + 3) % 10, v)] for v in range(10)]
    loader = DataLoader(
        ClipPairs(shards, shards.clip_ids, WORDS * 2),
        batch_sampler=EpochBatches(pairs, epoch=0),
        collate_fn=Collate(),
        num_workers=1,
    )
    held, files = None, set()
    for index, batch in enumerate(loader):
        files.add(os.fstat(batch["frames"].untyped_storage()._share_fd_cpu_()[0]).st_ino)  # its shared memory
        expected = np.stack([pillow_frames(shards.jpegs(f"c{v}", 0)) for v in batch["videos"].tolist()])
        assert torch.equal(batch["frames"], torch.from_numpy(expected).permute(0, 1, 4, 2, 3)), index
        if index == 1:
            held, held_frames = batch, batch["frames"].clone()
        else:
            recycle_frames(batch)  # as the training step does once the frames are on the device
    assert torch.equal(held["frames"], held_frames)
    assert len(files) <= 4 < len(pairs)  # buffers were written again, not made afresh for every batch
