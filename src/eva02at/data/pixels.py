"""Pixel normalisation of decoded frames, shared by training's loader and the export's inference (torch)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def normalize(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Pixels [..., 3, H, W] on 0-255 (uint8 or float) to a new float32 tensor normalised with per-channel
    mean and std given on 0-1 pixels."""
    return normalize_(frames.to(torch.float32, copy=True), mean, std)


def normalize_(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """:func:`normalize` in place, for a float32 tensor the caller owns (no second frame-sized allocation)."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=frames.device).view(3, 1, 1) * 255.0
    std_t = torch.as_tensor(std, dtype=torch.float32, device=frames.device).view(3, 1, 1) * 255.0
    return frames.sub_(mean_t).div_(std_t)
