"""The training input path: frame shards to uint8 batches in loader workers, model inputs on the device.

Workers read a clip's JPEGs, decode them (torchvision's libjpeg-turbo) straight into the batch's shared
memory and tokenize the captions, so the training process only moves uint8 (4x fewer bytes than float) to
the device; crop, resize and normalisation run there (``clip_frames``). With ``decode_device: cuda`` the
workers ship the JPEG bytes instead and the GPU decodes whole batches. Which view of a clip is used is a
function of the epoch alone (view = epoch mod views), and the crop box one of (seed, epoch, clip), so a
resumed run and an uninterrupted one see the same pixels whatever the number of loader workers.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from itertools import islice, pairwise

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info
from torchvision.io import ImageReadMode, decode_jpeg

from eva02at.shards import FrameShards, decode_jpegs
from eva02at.train.augment import AugmentConfig, crop_boxes, crop_resize

DECODE_DEVICES = ("cpu", "cuda")
Item = tuple[list[bytes], str, int, int, int]  # JPEG bytes in time order, caption text, video, caption, epoch


class ClipPairs(Dataset):
    """Items ``(epoch, video, caption)`` to ``(JPEG bytes, caption text, video, caption, epoch)``.

    ``clip_ids[video]`` names the clip in the shards and ``captions[caption]`` the sentence. With
    ``single_frame`` the middle frame alone is returned (image-CLIP training on video data). Decoding is
    left to :class:`Collate`, which writes the pixels straight into the batch.
    """

    def __init__(
        self,
        shards: FrameShards,
        clip_ids: Sequence[str],
        captions: Sequence[str],
        single_frame: bool = False,
    ):
        self.shards, self.clip_ids, self.captions = shards, list(clip_ids), list(captions)
        self.single_frame = single_frame
        missing = [c for c in self.clip_ids if c not in shards]
        if missing:
            raise ValueError(
                f"{len(missing)} clip(s) are not in the frame shards of {shards.directory} "
                f"(e.g. {missing[:3]}); see its manifest.parquet for their decode errors"
            )

    def __len__(self) -> int:
        return len(self.clip_ids)

    def __getitem__(self, item: tuple[int, int, int]) -> Item:
        epoch, video, caption = item
        clip = self.clip_ids[video]
        jpegs = self.shards.jpegs(clip, view=epoch % self.shards.num_views(clip))
        if self.single_frame:
            jpegs = [jpegs[len(jpegs) // 2]]
        return jpegs, self.captions[caption], video, caption, epoch


class EpochBatches(Sampler[list[tuple[int, int, int]]]):
    """Tags every pair of a (video, caption) batch sampler with the epoch, for :class:`ClipPairs`;
    ``count`` keeps only the first batches (the whole optimizer steps of an epoch)."""

    def __init__(self, pairs, epoch: int, count: int | None = None):
        self.pairs, self.epoch = pairs, epoch
        self.count = len(pairs) if count is None else min(count, len(pairs))

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for batch in islice(self.pairs, self.count):
            yield [(self.epoch, v, c) for v, c in batch]


class Collate:
    """Builds a batch in a loader worker: frames decoded into shared memory (``decode_device`` cpu) or JPEG
    bytes packed for a batched decode on the GPU (cuda), captions tokenized with ``tokenizer``.

    Batch keys: ``frames`` uint8 (B, T, 3, H, W) or ``jpegs`` + ``jpeg_offsets`` + ``frames_per_clip``;
    ``tokens`` (when a tokenizer is given), ``texts``, ``videos``, ``captions``, ``epoch``.
    """

    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor] | None = None, decode_device: str = "cpu"):
        if decode_device not in DECODE_DEVICES:
            raise ValueError(f"decode_device must be one of {DECODE_DEVICES}, got {decode_device!r}")
        self.tokenizer, self.decode_device = tokenizer, decode_device

    def __call__(self, items: list[Item]) -> dict:
        clips, texts, videos, captions, epochs = zip(*items, strict=True)
        if len(set(epochs)) != 1:
            raise ValueError(f"a batch mixes epochs {sorted(set(epochs))}")
        batch = {
            "texts": list(texts),
            "videos": torch.tensor(videos, dtype=torch.long),
            "captions": torch.tensor(captions, dtype=torch.long),
            "epoch": epochs[0],
        }
        if self.tokenizer is not None:
            batch["tokens"] = self.tokenizer(list(texts))  # (B, context_length)
        if self.decode_device == "cpu":
            batch["frames"] = decode_batch(clips)
        else:
            batch.update(pack_jpegs(clips))
        return batch


def decode_batch(clips: Sequence[list[bytes]]) -> torch.Tensor:
    """uint8 (B, T, 3, H, W) of the clips' JPEGs, each pixel copied once from the decoder into the batch.

    The memory stays as decoded, (B, T, H, W, 3), and the result is a channels-first view of it: the
    transpose happens on the device, where it is nearly free. In a loader worker the batch is allocated in
    shared memory, as torch's default collate does, so handing it to the training process copies nothing.
    """
    first = decode_jpegs(clips[0])  # (T, H, W, 3)
    shape = (len(clips), *first.shape)
    if get_worker_info() is not None:
        storage = torch.UntypedStorage._new_shared(int(np.prod(shape)))
        frames = torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
    else:
        frames = torch.empty(shape, dtype=torch.uint8)
    frames[0] = torch.from_numpy(first)
    for index, jpegs in enumerate(clips[1:], start=1):
        if len(jpegs) != shape[1]:
            raise ValueError(f"clip {index} of the batch has {len(jpegs)} frames, the first has {shape[1]}")
        decode_jpegs(jpegs, out=frames[index].numpy())
    return frames.permute(0, 1, 4, 2, 3)  # (B, T, 3, H, W)


def pack_jpegs(clips: Sequence[list[bytes]]) -> dict:
    """The JPEG bytes of a batch as one uint8 tensor and B*T+1 offsets: two tensors to ship, not B*T."""
    counts = {len(jpegs) for jpegs in clips}
    if len(counts) != 1:
        raise ValueError(f"clips of one batch have different frame counts {sorted(counts)}")
    flat = [data for jpegs in clips for data in jpegs]
    offsets = np.concatenate([[0], np.cumsum([len(data) for data in flat])])
    return {
        "jpegs": torch.frombuffer(bytearray(b"".join(flat)), dtype=torch.uint8),
        "jpeg_offsets": torch.from_numpy(offsets.astype(np.int64)),
        "frames_per_clip": counts.pop(),
    }


def device_frames(batch: dict, device: torch.device) -> torch.Tensor:
    """uint8 (B, T, 3, H, W) of a batch on ``device``: moved there, or decoded there from packed JPEGs
    (nvJPEG batches on a GPU; the same call with the CPU decodes on the CPU)."""
    if "frames" in batch:
        return batch["frames"].to(device, non_blocking=True)
    data, offsets = batch["jpegs"], batch["jpeg_offsets"].tolist()
    pieces = [data[start:end] for start, end in pairwise(offsets)]
    frames = decode_jpeg(pieces, mode=ImageReadMode.RGB, device=device)  # B*T tensors (3, H, W)
    return torch.stack(frames).unflatten(0, (-1, batch["frames_per_clip"]))  # (B, T, 3, H, W)


def clip_frames(
    batch: dict,
    device: torch.device,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    augment: AugmentConfig | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """The model's input of a batch: float32 (B, T, 3, size, size) on ``device``, each clip cropped to its
    box (random with ``augment``, else the centred square), resized to ``size`` and normalised."""
    frames = device_frames(batch, device)
    height, width = frames.shape[-2:]
    if min(height, width) < size:
        raise ValueError(f"frames of {height}x{width} pixels are smaller than the model's {size} px input")
    boxes = crop_boxes(batch["videos"].tolist(), batch["epoch"], height, width, augment, seed)
    return normalize(crop_resize(frames, boxes, size), mean, std)


def normalize(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Pixels [..., 3, H, W] on 0-255 (uint8 or float) to a new float tensor normalised with per-channel mean
    and std given on 0-1 pixels."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=frames.device).view(3, 1, 1) * 255.0
    std_t = torch.as_tensor(std, dtype=torch.float32, device=frames.device).view(3, 1, 1) * 255.0
    return frames.sub(mean_t).div_(std_t)  # uint8 - float32 promotes: one new float32 tensor, input untouched


def die_with_parent(parent: int, worker_id: int = 0) -> None:
    """Loader worker start-up (``functools.partial(die_with_parent, os.getpid())``): ask Linux to kill this
    process when the training process ``parent`` dies, even by SIGKILL, so that no worker outlives a killed
    stage (torch's own check notices only seconds later)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, signal.SIGKILL) != 0:  # 1 = PR_SET_PDEATHSIG
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


class OwnCaptions:
    """A relevancy source where clip i matches only caption i: pretraining pairs each clip with its text."""

    def __init__(self, count: int):
        self._shape = (count, count)

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    def candidates(self, video_idx: int, threshold: float = 0.1) -> np.ndarray:
        return np.array([video_idx], dtype=np.int64)
