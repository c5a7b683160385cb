"""MI-MM (multi-instance max-margin), a baseline of the EK100 retrieval losses."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from eva02at.core.config import NonNegativeFloat
from eva02at.train.losses import register_loss
from eva02at.train.losses.pairwise import gaps, off_diagonal_mean, similarity

NAME = "mi_mm"  # its key in the registry: a ``loss`` value, a ``losses`` entry


@dataclass
class MiMmParams:
    margin: NonNegativeFloat = 0.2


@register_loss(NAME, MiMmParams)
def mi_mm_loss(video: torch.Tensor, text: torch.Tensor, margin: float = MiMmParams.margin) -> torch.Tensor:
    """Hinge relu(margin - d) with every off-diagonal pair a negative, both directions."""
    sim = similarity(video, text)
    return off_diagonal_mean(F.relu(margin - gaps(sim)))
