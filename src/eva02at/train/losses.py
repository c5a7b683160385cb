"""Video-text objectives: symmetric InfoNCE (pretraining) and the margin losses for EK100 retrieval.

Every loss takes the global batch of B (video_i, caption_i) embeddings, [B, D] each and not necessarily
normalised, and works on cosine similarities S[a, b] = cos(text_a, video_b). The margin losses read soft
labels C[a, b] = R(video_a, caption_b), the relevance of caption b to video a from the full relevancy
matrix, so a negative pair is scored by its true relevance. All arithmetic runs in at least float32 with
autocast off, so bf16 embeddings from a mixed-precision model give the same loss as their float32 copies.

What EVA02-AT adds over the usual CLIP loss is :func:`sms_loss` (symmetric multi-similarity); the MI-MM
losses are the baselines it is compared with. :func:`cross_model_loss` is the term of backward-compatible
fine-tuning (``eva02at.models.compatibility``): any of these losses, on the pairs that mix a new and a frozen model;
:data:`COMPATIBILITY_TERMS` names it and the other forms the term may take (``finetune.compatibility_form``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F

from eva02at.core.config import ConfigError


class LossFn(Protocol):
    """A loss over a (global) batch of video and text embeddings; soft labels for the losses that use them."""

    def __call__(
        self, video: torch.Tensor, text: torch.Tensor, relevance: torch.Tensor | None = None
    ) -> torch.Tensor: ...


def infonce_loss(video: torch.Tensor, text: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Symmetric InfoNCE: mean of the text->video and video->text cross-entropies at a fixed temperature."""
    sim = _similarity(video, text) / temperature  # (B, B): rows texts, columns videos
    target = torch.arange(sim.shape[0], device=sim.device)
    return 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target))


def mi_mm_loss(video: torch.Tensor, text: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """MI-MM: hinge relu(margin - d) with every off-diagonal pair a negative, both directions."""
    sim = _similarity(video, text)
    return _off_diagonal_mean(F.relu(margin - _gaps(sim)))


def adaptive_mi_mm_loss(
    video: torch.Tensor, text: torch.Tensor, relevance: torch.Tensor, margin: float = 0.4
) -> torch.Tensor:
    """Adaptive MI-MM: the margin of pair i is scaled by its own relevance C[i, i]."""
    sim = _similarity(video, text)
    own = _relevance(relevance, sim).diagonal()[None, :, None]  # (1, B, 1): C[i, i] for every term of row i
    return _off_diagonal_mean(F.relu(own * margin - _gaps(sim)))


def sms_loss(
    video: torch.Tensor,
    text: torch.Tensor,
    relevance: torch.Tensor,
    margin: float = 0.6,
    threshold: float = 0.1,
    lam: float = 1.1 / 240,
) -> torch.Tensor:
    """Symmetric multi-similarity loss over all 2B(B-1) ordered off-diagonal terms.

    For a term with similarity gap d and relevance gap dR (both "own pair minus other pair"):
    dR > lam pushes d up to at least dR*margin; |dR| < lam (equally relevant) pulls |d| under ``threshold``;
    any other dR (more relevant negative) pushes d down to at most dR*margin. As in the reference, dR exactly
    equal to lam falls in the last branch; EK100 labels never get there: with at most five nouns a row, their
    distinct values differ by at least 1/180 > lam, and equal values are bit-identical (dR = 0).
    ``relevance`` may be the float64 array that :meth:`eva02at.data.labels.RelevancyTable.lookup` returns.
    """
    sim = _similarity(video, text)
    d = _gaps(sim)
    gap = _gaps(_relevance(relevance, sim).T)  # C.T has texts on rows, like S
    terms = torch.where(
        gap > lam,
        F.relu(gap * margin - d),
        torch.where(gap.abs() < lam, F.relu(d.abs() - threshold), F.relu(d - gap * margin)),
    )
    return _off_diagonal_mean(terms)


def cross_model_loss(
    loss_fn: LossFn,
    video: torch.Tensor,
    text: torch.Tensor,
    old_video: torch.Tensor,
    old_text: torch.Tensor,
    relevance: torch.Tensor | None = None,
) -> torch.Tensor:
    """The task loss on the cross-model pairs of a batch: the new texts against a frozen earlier model's videos
    and the new videos against its texts, averaged.

    An influence loss in the sense of backward-compatible training (BCT): the frozen model's other tower plays
    the part of BCT's old classifier, so the new embeddings are pulled into the space the old gallery lives in.
    Pair i of the old model embeds the same clip and caption as pair i of the new one, so the soft labels
    ``relevance`` of the batch apply unchanged. No gradient reaches the old embeddings.
    """
    old_video, old_text = old_video.detach(), old_text.detach()
    return 0.5 * (loss_fn(old_video, text, relevance) + loss_fn(video, old_text, relevance))


def new_text_loss(
    loss_fn: LossFn,
    video: torch.Tensor,
    text: torch.Tensor,
    old_video: torch.Tensor,
    old_text: torch.Tensor,
    relevance: torch.Tensor | None = None,
) -> torch.Tensor:
    """The task loss on one cross pair: the new texts against the frozen model's videos.

    BCT's influence loss as published: the old gallery's embeddings are fixed prototypes and only the new
    queries learn to find them, so the whole term pulls the direction that searching an old gallery uses.
    """
    return loss_fn(old_video.detach(), text, relevance)


def alignment_loss(
    video: torch.Tensor, text: torch.Tensor, old_video: torch.Tensor, old_text: torch.Tensor
) -> torch.Tensor:
    """Mean cosine distance 1 - cos(new, old) of each new embedding to the frozen model's embedding of the same
    clip or caption, videos and texts averaged: zero only where the new model embeds every item as the old one
    does, which puts its queries in the old gallery's space item by item."""
    dtype = torch.promote_types(torch.promote_types(video.dtype, old_video.dtype), torch.float32)
    with torch.autocast(video.device.type, enabled=False):
        pairs = [(video, old_video.detach()), (text, old_text.detach())]
        distances = [1 - F.cosine_similarity(new.to(dtype), old.to(dtype), dim=-1, eps=1e-8) for new, old in pairs]
    return 0.5 * (distances[0].mean() + distances[1].mean())


def cross_align_loss(
    loss_fn: LossFn,
    video: torch.Tensor,
    text: torch.Tensor,
    old_video: torch.Tensor,
    old_text: torch.Tensor,
    relevance: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`cross_model_loss` plus :func:`alignment_loss`: the cross pairs ranked as the task ranks its own,
    and each new embedding pulled onto the old one of the same item."""
    return cross_model_loss(loss_fn, video, text, old_video, old_text, relevance) + alignment_loss(
        video, text, old_video, old_text
    )


def align_loss(
    loss_fn: LossFn,
    video: torch.Tensor,
    text: torch.Tensor,
    old_video: torch.Tensor,
    old_text: torch.Tensor,
    relevance: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`alignment_loss` alone, in the signature of the compatibility terms (``loss_fn`` and ``relevance``
    unused): the new model distilled item by item from the old one, the task loss its only ranking signal."""
    return alignment_loss(video, text, old_video, old_text)


COMPATIBILITY_TERMS: dict[str, Callable[..., torch.Tensor]] = {
    "cross": cross_model_loss,
    "new_text": new_text_loss,
    "cross_align": cross_align_loss,
    "align": align_loss,
}


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "sms": sms_loss,
    "adaptive_mi_mm": adaptive_mi_mm_loss,
    "mi_mm": mi_mm_loss,
    "infonce": infonce_loss,
}


def get_loss(name: str, **params: float) -> LossFn:
    """Loss ``name`` with ``params`` bound, called uniformly as ``fn(video, text, relevance)``.

    Losses that use no soft labels ignore ``relevance`` (it may be None). Unknown names or parameters fail
    here, when the configuration is read, not at the first training step.
    """
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    fn = LOSSES[name]
    tunable = [p for p in inspect.signature(fn).parameters if p not in ("video", "text", "relevance")]
    unknown = sorted(set(params) - set(tunable))
    if unknown:
        raise ConfigError(f"loss {name!r}: unknown parameter(s) {unknown}; it takes {tunable}")
    uses_relevance = "relevance" in inspect.signature(fn).parameters

    def loss(video: torch.Tensor, text: torch.Tensor, relevance: torch.Tensor | None = None) -> torch.Tensor:
        if not uses_relevance:
            return fn(video, text, **params)
        if relevance is None:
            raise ValueError(f"loss {name!r} needs the batch relevance matrix")
        return fn(video, text, relevance, **params)

    return loss


def _similarity(video: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
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


def _relevance(relevance: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
    relevance = torch.as_tensor(relevance, dtype=sim.dtype, device=sim.device)
    if relevance.shape != sim.shape:
        raise ValueError(f"relevance must be [B, B] = {tuple(sim.shape)}, got {tuple(relevance.shape)}")
    return relevance


def _gaps(matrix: torch.Tensor) -> torch.Tensor:
    """M[i, i] - M[i, k] and M[i, i] - M[k, i] for every ordered (i, k): (2, B, B).

    With M = S (texts on rows) these are the similarity gaps d of text->video (text i against videos i and k)
    and video->text (video i against texts i and k). C has videos on rows, so M = C.T gives the matching
    relevance gaps dR = C[i,i] - C[k,i] and C[i,i] - C[i,k].
    """
    own = matrix.diagonal()[:, None]  # (B, 1)
    return torch.stack([own - matrix, own - matrix.T])  # (2, B, B)


def _off_diagonal_mean(terms: torch.Tensor) -> torch.Tensor:
    """Mean over the 2B(B-1) terms with k != i (the i == k terms compare a pair with itself)."""
    keep = ~torch.eye(terms.shape[-1], dtype=torch.bool, device=terms.device)
    return terms[:, keep].mean()  # (2, B*(B-1)) -> scalar
