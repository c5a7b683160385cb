"""Spatial augmentation of training clips: one RandomResizedCrop box per clip, applied on the training device.

What this adds to torchvision: the box is a pure function of (seed, epoch, clip) and of the stored frame
size, so a resumed run crops exactly as an uninterrupted one whatever the number of loader workers, and one
box serves all T frames of a clip (the peers EVA02-AT builds on crop clips, not frames). The box follows
torchvision's ``RandomResizedCrop.get_params`` (area fraction uniform in ``scale`` of the stored frame, log
aspect ratio uniform in ``log(ratio)``, ten tries, then a centred fallback); the crop is resized to the
model's square with antialiased bilinear interpolation, as ``RandomResizedCrop(antialias=True)`` does, one
call per clip (exact where ``torchvision.ops.roi_align``'s area sampling is not, and faster on the CPU;
see BENCHMARKS.md).
Without augmentation the box is the frame's centred square, resized to the model's size only when the
frames are stored larger than the model takes them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Box = tuple[int, int, int, int]  # top, left, height, width in pixels of the stored frame
ATTEMPTS = 10  # tries before the centred fallback, as torchvision


@dataclass(frozen=True)
class AugmentParams:
    """``train.augment``: RandomResizedCrop parameters (peers: scale (0.5, 1.0), ratio (3/4, 4/3))."""

    scale: tuple[float, float] = (0.5, 1.0)  # crop area as a fraction of the stored frame's area
    ratio: tuple[float, float] = (0.75, 4 / 3)  # crop width / height

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(float(x) for x in self.scale))
        object.__setattr__(self, "ratio", tuple(float(x) for x in self.ratio))
        (low, high), (narrow, wide) = self.scale, self.ratio
        if not (0 < low <= high <= 1 and 0 < narrow <= wide):
            raise ValueError(f"augment needs 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], got {self}")


def centre_box(height: int, width: int) -> Box:
    """The largest centred square: what evaluation sees, and training without augmentation."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def crop_box(height: int, width: int, config: AugmentParams | None, seed: int, epoch: int, clip: int) -> Box:
    """The crop box of clip ``clip`` in epoch ``epoch`` (``config`` None: the centred square)."""
    if config is None:
        return centre_box(height, width)
    rng = random.Random(_stream_key(seed, epoch, clip))
    area = height * width
    (low, high), (narrow, wide) = config.scale, config.ratio
    log_narrow, log_wide = math.log(narrow), math.log(wide)
    for _ in range(ATTEMPTS):
        target = area * (low + (high - low) * rng.random())
        aspect = math.exp(log_narrow + (log_wide - log_narrow) * rng.random())
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(rng.random() * (height - h + 1)), height - h)
            left = min(int(rng.random() * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = width / height  # no try fitted: the frame's centre at the nearest allowed aspect ratio
    if in_ratio < narrow:
        w, h = width, round(width / narrow)
    elif in_ratio > wide:
        w, h = round(height * wide), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _stream_key(seed: int, epoch: int, clip: int) -> int:
    """(seed, epoch, clip) packed into one integer without collisions. Python guarantees ``random()``'s
    sequence for an integer seed across versions and platforms; seeding with an integer is also 3x faster
    than with a string, which matters at one box per clip on the training process."""
    if seed < 0 or not 0 <= epoch < 2**32 or not 0 <= clip < 2**40:
        raise ValueError(
            f"crop boxes need seed >= 0, 0 <= epoch < 2**32 and 0 <= clip < 2**40, got {seed}, {epoch}, {clip}"
        )
    return (seed << 72) | (epoch << 40) | clip


def crop_boxes(
    videos: Sequence[int], epoch: int, height: int, width: int, config: AugmentParams | None, seed: int
) -> list[Box]:
    """One box per clip of a batch (``videos``: the clips' dataset indices)."""
    return [crop_box(height, width, config, seed, epoch, int(video)) for video in videos]


def crop_resize(frames: torch.Tensor, boxes: Sequence[Box], size: int) -> torch.Tensor:
    """Frames (B, T, 3, H, W), uint8 or float on 0-255, to float32 (B, T, 3, size, size): clip b cropped to
    ``boxes[b]`` (host integers: no device synchronisation) and resized with antialiased bilinear.

    uint8 frames on the CPU are resized in uint8 (torch's vectorised kernel, 5x faster than in float; it
    rounds to integers as Pillow and torchvision's uint8 transforms do); anything else in float32.
    """
    batch, frames_per_clip = frames.shape[:2]
    out = torch.empty((batch, frames_per_clip, 3, size, size), dtype=torch.float32, device=frames.device)
    in_uint8 = frames.dtype == torch.uint8 and frames.device.type == "cpu"
    for b, (top, left, h, w) in enumerate(boxes):
        clip = frames[b, :, :, top : top + h, left : left + w]  # (T, 3, h, w)
        clip = clip if in_uint8 else clip.float()
        if (h, w) != (size, size):
            clip = F.interpolate(clip, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[b] = clip
    return out
