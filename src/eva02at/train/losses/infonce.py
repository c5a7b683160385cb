"""Symmetric InfoNCE, the pretraining objective (and the image CLIP's)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from eva02at.core.config import PositiveFloat
from eva02at.train.losses import register_loss
from eva02at.train.losses.pairwise import similarity

NAME = "infonce"  # its key in the registry


@dataclass
class InfonceParams:
    temperature: PositiveFloat = 0.05


@register_loss(NAME, InfonceParams)
def infonce_loss(
    video: torch.Tensor, text: torch.Tensor, temperature: float = InfonceParams.temperature
) -> torch.Tensor:
    """Mean of the text->video and video->text cross-entropies at a fixed temperature."""
    sim = similarity(video, text) / temperature  # (B, B): rows texts, columns videos
    target = torch.arange(sim.shape[0], device=sim.device)
    return 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target))
