"""The training input path: frame shards to uint8 clip tensors on the CPU, normalised floats on the device.

Workers decode JPEGs and ship uint8 (4x fewer bytes than float); normalisation runs on the device. Which
view of a clip is used is a function of the epoch alone (view = epoch mod views), so a resumed run and an
uninterrupted one see the same pixels whatever the number of loader workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from eva02at.errors import BadInput
from eva02at.shards import FrameShards, decode_jpegs


class ClipPairs(Dataset):
    """Items ``(epoch, video, caption)`` to ``(frames, caption text, video, caption)``.

    ``clip_ids[video]`` names the clip in the shards and ``captions[caption]`` the sentence. With
    ``single_frame`` the middle frame alone is returned (image-CLIP training on video data).
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
            raise BadInput(
                f"{len(missing)} clip(s) are not in the frame shards of {shards.directory} "
                f"(e.g. {missing[:3]}); see its manifest.parquet for their decode errors"
            )

    def __len__(self) -> int:
        return len(self.clip_ids)

    def __getitem__(self, item: tuple[int, int, int]) -> tuple[torch.Tensor, str, int, int]:
        epoch, video, caption = item
        clip = self.clip_ids[video]
        jpegs = self.shards.jpegs(clip, view=epoch % self.shards.num_views(clip))
        if self.single_frame:
            jpegs = [jpegs[len(jpegs) // 2]]
        frames = torch.from_numpy(decode_jpegs(jpegs)).permute(0, 3, 1, 2)  # (T, 3, H, W)
        return frames, self.captions[caption], video, caption


class EpochBatches(Sampler[list[tuple[int, int, int]]]):
    """Tags every pair of a (video, caption) batch sampler with the epoch, for :class:`ClipPairs`."""

    def __init__(self, pairs, epoch: int):
        self.pairs, self.epoch = pairs, epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for batch in self.pairs:
            yield [(self.epoch, v, c) for v, c in batch]


def collate(items: list[tuple[torch.Tensor, str, int, int]]) -> dict:
    frames, texts, videos, captions = zip(*items, strict=True)
    return {
        "frames": torch.stack(frames),  # (B, T, 3, H, W) uint8
        "texts": list(texts),
        "videos": torch.tensor(videos, dtype=torch.long),
        "captions": torch.tensor(captions, dtype=torch.long),
    }


def normalize(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [..., 3, H, W] (0-255) to float normalised with per-channel mean and std given on 0-1 pixels."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=frames.device).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=frames.device).view(3, 1, 1)
    return (frames.float().div_(255.0) - mean_t) / std_t


class OwnCaptions:
    """A relevancy source where clip i matches only caption i: pretraining pairs each clip with its text."""

    def __init__(self, count: int):
        self._shape = (count, count)

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    def candidates(self, video_idx: int, threshold: float = 0.1) -> np.ndarray:
        return np.array([video_idx], dtype=np.int64)
