"""The training input path: frame shards to uint8 batches in loader workers, model inputs on the device.

Workers read a clip's JPEGs, decode them (libjpeg-turbo, ``eva02at.data.jpeg``) straight into the batch's shared
memory (written again once the step has released it) and tokenize the captions, so the training process
only moves uint8 (4x fewer bytes than float) to the device; crop, resize and normalisation run there
(``clip_frames``). With ``decode_device: cuda`` the workers ship the JPEG bytes instead and the GPU decodes
whole batches. Which view of a clip is used is a
function of the epoch alone (view = epoch mod views), and the crop box one of (seed, epoch, clip), so a
resumed run and an uninterrupted one see the same pixels whatever the number of loader workers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from itertools import islice, pairwise

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info
from torchvision.io import ImageReadMode, decode_jpeg

from eva02at.core.errors import BadInput
from eva02at.data.jpeg import decode_jpegs, jpeg_size
from eva02at.data.pixels import normalize_
from eva02at.data.shards import FrameShards
from eva02at.train.augment import AugmentParams, crop_boxes, crop_resize

DECODE_DEVICES = ("cpu", "cuda")
Item = tuple[list[bytes], str, int, int, int]  # JPEG bytes in time order, caption text, video, caption, epoch


class ClipPairs(Dataset):
    """Items ``(epoch, video, caption)`` to ``(JPEG bytes, caption text, video, caption, epoch)``.

    ``clip_ids[video]`` names the clip in the shards and ``captions[caption]`` the sentence. With
    ``single_frame`` the middle frame alone is returned (image-CLIP training on video data). Decoding is
    left to :class:`Collate`, which writes the pixels straight into the batch. Clips are held as index
    positions (NumPy) and captions as one Arrow array, which forked loader workers share rather than copy.
    """

    def __init__(
        self,
        shards: FrameShards,
        clip_ids: Sequence[str] | pa.Array,
        captions: Sequence[str] | pa.Array,
        single_frame: bool = False,
    ):
        self.shards, self.single_frame = shards, single_frame
        self.positions = shards.positions(clip_ids)
        self.captions = captions if isinstance(captions, pa.Array) else pa.array(captions, pa.string())
        missing = np.flatnonzero(self.positions < 0)
        if len(missing):
            examples = [clip_ids[int(k)] for k in missing[:3]]
            raise BadInput(
                f"{len(missing)} clip(s) are not in the frame shards of {shards.directory} "
                f"(e.g. {[str(c) for c in examples]}); see its manifest.parquet for their decode errors"
            )

    def __len__(self) -> int:
        return len(self.positions)

    def clip_id(self, video: int) -> str:
        """The shards' id of dataset video ``video`` (names a bad batch's videos)."""
        return self.shards.ids[int(self.positions[video])].as_py()

    def __getitem__(self, item: tuple[int, int, int]) -> Item:
        epoch, video, caption = item
        position = int(self.positions[video])
        jpegs = self.shards.jpegs_at(position, view=epoch % self.shards.num_views_at(position))
        if self.single_frame:
            jpegs = [jpegs[len(jpegs) // 2]]
        return jpegs, self.captions[caption].as_py(), video, caption, epoch


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
    ``tokens`` (when a tokenizer is given), ``texts``, ``videos``, ``captions``, ``epoch``; from a worker,
    ``release``, which :func:`recycle_frames` calls once the frames have been read.
    """

    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor] | None = None, decode_device: str = "cpu"):
        if decode_device not in DECODE_DEVICES:
            raise ValueError(f"decode_device must be one of {DECODE_DEVICES}, got {decode_device!r}")
        self.tokenizer, self.decode_device = tokenizer, decode_device
        self._memory: SharedBatchMemory | None = None  # made in each worker process

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
        if self.decode_device == "cuda":
            batch.update(pack_jpegs(clips))
        elif get_worker_info() is None:
            batch["frames"] = decode_batch(clips)
        else:
            self._memory = self._memory or SharedBatchMemory()
            out, batch["release"] = self._memory.take(batch_frame_shape(clips))
            batch["frames"] = decode_batch(clips, out)
        return batch


class FramesRelease:
    """Called by the training process when it no longer reads a batch's frames: the worker may write the
    buffer again. (Not a tensor, so the loader's pinning passes it through untouched.)"""

    def __init__(self, in_use: torch.Tensor):
        self.in_use = in_use  # one byte in shared memory

    def __call__(self) -> None:
        self.in_use.fill_(0)


class SharedBatchMemory:
    """A loader worker's batch buffers in shared memory, written again once released (``recycle_frames``).

    What it adds to torch's collate: a batch must reach the training process through shared memory, and
    fresh shared memory is paid in page faults on the first write of every page, which cost about 0.7x the
    JPEG decoding of the frame on the machine of BENCHMARKS.md (``loader, fresh shared memory``).
    A buffer is reused only after its release; beyond ``slots`` buffers in use, fresh ones are handed out.
    """

    def __init__(self, slots: int = 4):
        self.slots = slots
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] = []  # (uint8 buffer, in-use flag), both shared

    def take(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, FramesRelease]:
        """A free uint8 buffer of ``shape`` and the release that frees it again."""
        for buffer, in_use in self._buffers:
            if buffer.shape == shape and not in_use.item():
                in_use.fill_(1)
                return buffer, FramesRelease(in_use)
        storage = torch.UntypedStorage._new_shared(math.prod(shape))  # as torch's own collate allocates
        buffer, in_use = torch.empty(0, dtype=torch.uint8).set_(storage).view(shape), torch.ones(1, dtype=torch.uint8)
        if len(self._buffers) < self.slots:
            self._buffers.append((buffer, in_use.share_memory_()))
        return buffer, FramesRelease(in_use)


def recycle_frames(batch: dict) -> None:
    """Hand a batch's frame buffer back to its loader worker; ``batch["frames"]`` must not be read after."""
    release = batch.pop("release", None)
    if release is not None:
        release()


def batch_frame_shape(clips: Sequence[list[bytes]]) -> tuple[int, int, int, int, int]:
    """(B, T, H, W, 3) of a batch, from its first JPEG's header (nothing is decoded)."""
    return len(clips), len(clips[0]), *jpeg_size(clips[0][0]), 3


def decode_batch(clips: Sequence[list[bytes]], out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (B, T, 3, H, W) of the clips' JPEGs, each frame decoded straight into the batch (``out``, uint8
    (B, T, H, W, 3), e.g. shared memory, when given).

    The memory stays as decoded, (B, T, H, W, 3), and the result is a channels-first view of it: the
    transpose happens on the device, where it is nearly free (on the CPU it costs as much as decoding).
    """
    if out is None:
        out = torch.empty(batch_frame_shape(clips), dtype=torch.uint8)
    for index, jpegs in enumerate(clips):
        if len(jpegs) != out.shape[1]:
            raise ValueError(f"clip {index} of the batch has {len(jpegs)} frames, the first has {out.shape[1]}")
    decode_jpegs([data for jpegs in clips for data in jpegs], out=out.view(-1, *out.shape[2:]).numpy())
    return out.permute(0, 1, 4, 2, 3)  # (B, T, 3, H, W)


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
    augment: AugmentParams | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """The model's input of a batch: float32 (B, T, 3, size, size) on ``device``, each clip cropped to its
    box (random with ``augment``, else the centred square), resized to ``size`` and normalised."""
    frames = device_frames(batch, device)
    height, width = frames.shape[-2:]
    if min(height, width) < size:
        raise ValueError(f"frames of {height}x{width} pixels are smaller than the model's {size} px input")
    boxes = crop_boxes(batch["videos"].tolist(), batch["epoch"], height, width, augment, seed)
    return normalize_(crop_resize(frames, boxes, size), mean, std)


class CaptionSets:
    """A relevancy source over a caption table (``eva02at.data.egoclip_plus``): item i is one clip in one caption set
    and its candidates are that clip's captions in that set, so the sampler visits every clip once per set in
    an epoch (AVION's concatenation of the sets) and draws one caption of its list from (seed, epoch) alone.

    ``clip_ids[i]`` names item i's clip in the frame shards and ``texts[c]`` caption c.
    """

    def __init__(self, table: pa.Table, path: str = "caption table"):
        index = table.column("caption_index").to_numpy()
        if len(index) == 0 or index[0] != 0 or np.any((index[1:] != 0) & (np.diff(index) != 1)):
            raise BadInput(f"{path}: every clip's captions must be consecutive rows numbered 0, 1, ... from 0")
        self.starts = np.flatnonzero(index == 0)
        self.ends = np.append(self.starts[1:], len(index))
        self.clip_ids = table.column("clip_id").take(pa.array(self.starts)).to_pylist()
        self.texts = table.column("text").to_pylist()

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.starts), len(self.texts)

    def candidates(self, video_idx: int, threshold: float = 0.1) -> np.ndarray:
        return np.arange(self.starts[video_idx], self.ends[video_idx], dtype=np.int64)


class OwnCaptions:
    """A relevancy source where clip i matches only caption i: pretraining pairs each clip with its text."""

    def __init__(self, count: int):
        self._shape = (count, count)

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    def candidates(self, video_idx: int, threshold: float = 0.1) -> np.ndarray:
        return np.array([video_idx], dtype=np.int64)
