"""Symmetric multi-similarity (SMS): what EVA02-AT adds over the usual CLIP loss for EK100 retrieval; the MI-MM
losses are the baselines it is compared with."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from eva02at.core.config import NonNegativeFloat
from eva02at.train.losses import register_loss
from eva02at.train.losses.pairwise import gaps, off_diagonal_mean, relevance_like, similarity

NAME = "sms"  # its key in the registry: a ``loss`` value, a ``losses`` entry


@dataclass
class SmsParams:
    margin: NonNegativeFloat = 0.6
    threshold: NonNegativeFloat = 0.1
    lam: NonNegativeFloat = 1.1 / 240


@register_loss(NAME, SmsParams)
def sms_loss(
    video: torch.Tensor,
    text: torch.Tensor,
    relevance: torch.Tensor,
    margin: float = SmsParams.margin,
    threshold: float = SmsParams.threshold,
    lam: float = SmsParams.lam,
) -> torch.Tensor:
    """Symmetric multi-similarity loss over all 2B(B-1) ordered off-diagonal terms.

    For a term with similarity gap d and relevance gap dR (both "own pair minus other pair"):
    dR > lam pushes d up to at least dR*margin; |dR| < lam (equally relevant) pulls |d| under ``threshold``;
    any other dR (more relevant negative) pushes d down to at most dR*margin. As in the reference, dR exactly
    equal to lam falls in the last branch; EK100 labels never get there: with at most five nouns a row, their
    distinct values differ by at least 1/180 > lam, and equal values are bit-identical (dR = 0).
    ``relevance`` may be the float64 array that :meth:`eva02at.data.labels.RelevancyTable.lookup` returns.
    """
    sim = similarity(video, text)
    d = gaps(sim)
    gap = gaps(relevance_like(relevance, sim).T)  # C.T has texts on rows, like S
    terms = torch.where(
        gap > lam,
        F.relu(gap * margin - d),
        torch.where(gap.abs() < lam, F.relu(d.abs() - threshold), F.relu(d - gap * margin)),
    )
    return off_diagonal_mean(terms)
