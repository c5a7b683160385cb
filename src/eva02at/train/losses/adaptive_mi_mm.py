"""Adaptive MI-MM: MI-MM whose margin follows the soft label of the positive pair."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from eva02at.core.config import NonNegativeFloat
from eva02at.train.losses import register_loss
from eva02at.train.losses.pairwise import gaps, off_diagonal_mean, relevance_like, similarity

NAME = "adaptive_mi_mm"  # its key in the registry: a ``loss`` value, a ``losses`` entry


@dataclass
class AdaptiveMiMmParams:
    margin: NonNegativeFloat = 0.4


@register_loss(NAME, AdaptiveMiMmParams)
def adaptive_mi_mm_loss(
    video: torch.Tensor, text: torch.Tensor, relevance: torch.Tensor, margin: float = AdaptiveMiMmParams.margin
) -> torch.Tensor:
    """The margin of pair i is scaled by its own relevance C[i, i]."""
    sim = similarity(video, text)
    own = relevance_like(relevance, sim).diagonal()[None, :, None]  # (1, B, 1): C[i, i] for every term of row i
    return off_diagonal_mean(F.relu(own * margin - gaps(sim)))
