"""A toy loss, written as a module of ``eva02at.train.losses`` would be: a hinge whose margin is the relevance
gap of each pair, scaled. Copied into a project as ``src/eva02at/train/losses/toy_hinge.py`` by the test."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from eva02at.core.config import NonNegativeFloat
from eva02at.train.losses import register_loss
from eva02at.train.losses.pairwise import gaps, off_diagonal_mean, relevance_like, similarity

NAME = "toy_hinge"  # its key in the registry: a ``loss`` value, a ``losses`` entry


@dataclass
class ToyHingeParams:
    scale: NonNegativeFloat = 1.0  # of the relevance gap that each similarity gap must reach


@register_loss(NAME, ToyHingeParams)
def toy_hinge_loss(
    video: torch.Tensor, text: torch.Tensor, relevance: torch.Tensor, scale: float = ToyHingeParams.scale
) -> torch.Tensor:
    """relu(scale * dR - d) over the 2B(B-1) ordered off-diagonal terms."""
    sim = similarity(video, text)
    return off_diagonal_mean(F.relu(scale * gaps(relevance_like(relevance, sim).T) - gaps(sim)))
