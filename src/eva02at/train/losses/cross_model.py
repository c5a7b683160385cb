"""The term of backward-compatible fine-tuning (``eva02at.models.compatibility``): any registered loss, on the
pairs that mix a new and a frozen model, and the other published forms the term may take
(:data:`COMPATIBILITY_TERMS`, chosen by ``finetune.compatibility_form``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from eva02at.train.losses import LossFn


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

CompatibilityForm = Literal[tuple(COMPATIBILITY_TERMS)]  # a ``compatibility_form`` key: one of the terms' names
