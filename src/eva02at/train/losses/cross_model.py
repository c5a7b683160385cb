"""The cross-model term of backward-compatible fine-tuning (``eva02at.models.compatibility``): any registered
loss, on the pairs that mix a new and a frozen model."""

from __future__ import annotations

import torch

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
