"""The pairwise quantities the losses are written in: the cosine similarity matrix, the gaps of each pair to
every other pair, and the mean over the off-diagonal terms.

All arithmetic runs in at least float32 with autocast off, so bf16 embeddings from a mixed-precision model give
the same loss as their float32 copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def similarity(video: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """S[a, b] = cos(text_a, video_b), computed in at least float32 whatever the input dtype or autocast."""
    if video.ndim != 2 or video.shape != text.shape or video.shape[0] < 2:
        raise ValueError(
            f"video and text must both be [B, D] with B >= 2, got {tuple(video.shape)} and {tuple(text.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(video.dtype, text.dtype), torch.float32)
    with torch.autocast(video.device.type, enabled=False):
        video = F.normalize(video.to(dtype), dim=-1, eps=1e-8)
        text = F.normalize(text.to(dtype), dim=-1, eps=1e-8)
        return text @ video.T


def relevance_like(relevance: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
    """The soft labels C as a tensor of ``sim``'s dtype and device, checked to be [B, B]."""
    relevance = torch.as_tensor(relevance, dtype=sim.dtype, device=sim.device)
    if relevance.shape != sim.shape:
        raise ValueError(f"relevance must be [B, B] = {tuple(sim.shape)}, got {tuple(relevance.shape)}")
    return relevance


def gaps(matrix: torch.Tensor) -> torch.Tensor:
    """M[i, i] - M[i, k] and M[i, i] - M[k, i] for every ordered (i, k): (2, B, B).

    With M = S (texts on rows) these are the similarity gaps d of text->video (text i against videos i and k)
    and video->text (video i against texts i and k). C has videos on rows, so M = C.T gives the matching
    relevance gaps dR = C[i,i] - C[k,i] and C[i,i] - C[i,k].
    """
    own = matrix.diagonal()[:, None]  # (B, 1)
    return torch.stack([own - matrix, own - matrix.T])  # (2, B, B)


def off_diagonal_mean(terms: torch.Tensor) -> torch.Tensor:
    """Mean over the 2B(B-1) terms with k != i (the i == k terms compare a pair with itself)."""
    keep = ~torch.eye(terms.shape[-1], dtype=torch.bool, device=terms.device)
    return terms[:, keep].mean()  # (2, B*(B-1)) -> scalar
