"""What a training step computes: embeddings of a batch, gathered over ranks, and a loss over them.

A task also says what its inputs look like (image size, pixel mean and std, the tokenizer the loader
workers run), so that the step turns any batch into model inputs the same way (``train.data.clip_frames``).
Every rank computes the loss of the whole global batch (embeddings gathered with gradients), and the soft
labels of fine-tuning are rebuilt from the full relevancy table with the gathered (video, caption) indices.
Compatible fine-tuning adds a frozen earlier model (``eva02at.models.compatibility.Reference``): it embeds the same
inputs, its embeddings are gathered the same way (without gradients), and the loss gains the cross-model term.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import open_clip
import torch
from torch import nn

from eva02at.core.distributed import all_gather_no_grad, all_gather_with_grad
from eva02at.models import VideoCLIP, save_image_clip, save_video_clip
from eva02at.train.losses import LossFn
from eva02at.train.losses.cross_model import COMPATIBILITY_TERMS


class Task(Protocol):
    model: nn.Module
    image_size: int  # the model's square input, in pixels
    mean: tuple[float, float, float]  # per-channel pixel statistics on 0-1 pixels
    std: tuple[float, float, float]
    tokenizer: Callable[[list[str]], torch.Tensor]  # texts to tokens, run in the loader workers

    def embed(self, model: nn.Module, frames: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The trained model's (video, text) embeddings (B, D) of normalised ``frames`` (B, T, 3, S, S) and
        ``tokens`` (B, L) on the device."""
        ...

    def frozen(self, frames: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A frozen model's (video, text) embeddings of the same inputs, without gradients; None without one."""
        ...

    def batch_loss(
        self, video: torch.Tensor, text: torch.Tensor, batch: dict, frozen: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        """The global-batch loss of this process's embeddings (gathered over the processes); ``batch`` gives
        the (video, caption) indices of their rows."""
        ...

    def loss(self, model: nn.Module, frames: torch.Tensor, tokens: torch.Tensor, batch: dict) -> torch.Tensor:
        """``batch_loss`` of ``embed`` and ``frozen`` of one batch."""
        ...

    def save(self, path, extra: dict) -> None: ...


class RelevanceLookup(Protocol):
    def lookup(self, video_idx, sentence_idx): ...


class FrozenReference(Protocol):
    """A frozen earlier model the new one is trained to stay compatible with
    (``eva02at.models.compatibility.Reference``)."""

    weight: float  # of the cross-model term
    form: str  # which term: a key of eva02at.train.losses.cross_model.COMPATIBILITY_TERMS

    def embed(self, frames: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(video, text) embeddings (B, D) of the batch, without gradients."""
        ...

    def record(self) -> dict:
        """What the new checkpoint's ``extra`` records about it."""
        ...


def global_loss(
    video: torch.Tensor,
    text: torch.Tensor,
    batch: dict,
    loss_fn: LossFn,
    relevancy: RelevanceLookup | None,
    old: tuple[torch.Tensor, torch.Tensor] | None = None,
    weight: float = 1.0,
    form: str = "cross",
) -> torch.Tensor:
    """The loss of the global batch: gather embeddings (with gradients) and, if needed, the soft labels; with
    ``old`` (a frozen model's video and text embeddings of the same batch) plus ``weight`` x the compatibility
    term ``form`` (``COMPATIBILITY_TERMS``; ``cross``: the cross-model term)."""
    video, text = all_gather_with_grad(video), all_gather_with_grad(text)  # (W*B, D)
    relevance = None
    if relevancy is not None:
        videos = all_gather_no_grad(batch["videos"]).numpy()
        captions = all_gather_no_grad(batch["captions"]).numpy()
        relevance = torch.from_numpy(relevancy.lookup(videos, captions)).to(video.device)  # (W*B, W*B)
    loss = loss_fn(video, text, relevance)
    if old is None:
        return loss
    old_video, old_text = all_gather_no_grad(old[0]), all_gather_no_grad(old[1])  # (W*B, D), in the same order
    return loss + weight * COMPATIBILITY_TERMS[form](loss_fn, video, text, old_video, old_text, relevance)


class VideoTextTask:
    """A VideoCLIP on (clip, caption) pairs: InfoNCE in pretraining, soft-label losses in fine-tuning, with a
    ``reference`` to stay compatible with in compatible fine-tuning."""

    def __init__(
        self,
        model: VideoCLIP,
        loss_fn: LossFn,
        relevancy: RelevanceLookup | None = None,
        reference: FrozenReference | None = None,
    ):
        self.model, self.loss_fn, self.relevancy, self.reference = model, loss_fn, relevancy, reference
        self.image_size, self.mean, self.std = model.image_size, model.image_mean, model.image_std
        self.tokenizer = model.tokenizer

    def embed(self, model: nn.Module, frames: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return model(frames, tokens)  # (B, D) each

    def frozen(self, frames: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None if self.reference is None else self.reference.embed(frames, tokens)

    def batch_loss(
        self, video: torch.Tensor, text: torch.Tensor, batch: dict, frozen: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        if self.reference is None:
            return global_loss(video, text, batch, self.loss_fn, self.relevancy, frozen)
        weight, form = self.reference.weight, self.reference.form
        return global_loss(video, text, batch, self.loss_fn, self.relevancy, frozen, weight, form)

    def loss(self, model: nn.Module, frames: torch.Tensor, tokens: torch.Tensor, batch: dict) -> torch.Tensor:
        return self.batch_loss(*self.embed(model, frames, tokens), batch, self.frozen(frames, tokens))

    def save(self, path, extra: dict) -> None:
        save_video_clip(self.model, path, {**extra, **(self.reference.record() if self.reference else {})})


class ImageTextTask:
    """An open_clip image CLIP trained on single frames and captions (the start of pretraining)."""

    def __init__(self, model: nn.Module, model_name: str, loss_fn: LossFn):
        self.model, self.model_name, self.loss_fn = model, model_name, loss_fn
        model.logit_scale.requires_grad_(False)  # the temperature is fixed by the loss
        preprocess = open_clip.get_model_preprocess_cfg(model)
        self.mean, self.std = tuple(preprocess["mean"]), tuple(preprocess["std"])
        self.image_size = int(model.visual.image_size[0])
        self.tokenizer = open_clip.get_tokenizer(model_name)

    def embed(self, model: nn.Module, frames: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # frames (B, 1, 3, S, S): the single frame; open_clip returns (image, text, logit_scale, ...)
        image, text = model(frames[:, 0], tokens)[:2]
        return image, text

    def frozen(self, frames: torch.Tensor, tokens: torch.Tensor) -> None:
        return None

    def batch_loss(self, video: torch.Tensor, text: torch.Tensor, batch: dict, frozen: None) -> torch.Tensor:
        return global_loss(video, text, batch, self.loss_fn, None)

    def loss(self, model: nn.Module, frames: torch.Tensor, tokens: torch.Tensor, batch: dict) -> torch.Tensor:
        return self.batch_loss(*self.embed(model, frames, tokens), batch, None)

    def save(self, path, extra: dict) -> None:
        save_image_clip(self.model, self.model_name, path, extra)
