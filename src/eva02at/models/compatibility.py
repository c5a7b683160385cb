"""Backward-compatible models: a new model whose queries compare directly with an older model's gallery.

Each new champion would otherwise make every exported gallery stale (two models' spaces do not align), and
millions of clips would have to be embedded again before search works. Fine-tuning with
``finetune.compatible_with`` trains the new model against a frozen earlier one, the *reference*: besides the
task loss on its own (video, text) pairs, the same loss on the cross pairs of the batch, new texts against the
reference's videos and new videos against the reference's texts (``eva02at.train.losses.cross_model``, BCT's
influence loss with the reference's other tower as the old classifier; the other forms of the term are in
``COMPATIBILITY_TERMS`` there). A model pretrained apart can first be rotated onto the reference's space
(:func:`rotate_onto`). No adapter runs at query time.

What a checkpoint was trained to stay compatible with is recorded in its ``extra[CHAIN_KEY]``: the reference's
SHA-256 and path, followed by the reference's own list, so the whole chain back to the first model is known
from the file alone (and only from weights trained with the term: a model fine-tuned from a compatible one
without it inherits nothing). ``compatible_digests`` turns it into the galleries a checkpoint may search.
Whether training achieved it is measured by the evaluation (:func:`criterion`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from eva02at.core.config import ConfigError
from eva02at.core.digest import file_digest
from eva02at.models import VIDEO_FORMAT, VideoCLIP, load_checkpoint_file, load_video_clip
from eva02at.models.video_clip import unit_float32

CHAIN_KEY = "compatible_with"  # key of a video checkpoint's extra: [{"sha256", "path"}, ...], newest first


@dataclass
class Reference:
    """A frozen earlier model (eval mode, no gradients), the weight of the compatibility term against it and
    which term (a key of ``eva02at.train.losses.cross_model.COMPATIBILITY_TERMS``)."""

    model: VideoCLIP
    weight: float
    chain: list[dict[str, str]]  # the new checkpoint's compatibility chain: this model first
    form: str = "cross"

    @property
    def sha256(self) -> str:
        return self.chain[0]["sha256"]

    @torch.no_grad()
    def embed(self, frames: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(video, text) embeddings (B, D) of the normalised frames and tokens the new model sees."""
        self.model.to(frames.device)  # a no-op after the first step
        return self.model(frames, tokens)

    def record(self) -> dict:
        """What the new checkpoint's ``extra`` records: the chain."""
        return {CHAIN_KEY: self.chain}


def recorded_chain(checkpoint: str | os.PathLike) -> list[dict[str, str]]:
    """The compatibility chain a video checkpoint records; [] for a model trained without the term."""
    return list(load_checkpoint_file(checkpoint, VIDEO_FORMAT, mmap=True).get("extra", {}).get(CHAIN_KEY, []))


def compatible_digests(checkpoint: str | os.PathLike) -> set[str]:
    """SHA-256 of the checkpoint and of every model of its chain: the checkpoints whose exports it may search."""
    return {file_digest(checkpoint), *(link["sha256"] for link in recorded_chain(checkpoint))}


def load_reference(
    path: str | os.PathLike,
    like: VideoCLIP,
    weight: float,
    probe_texts: Sequence[str] = ("a person opens a door",),
    form: str = "cross",
) -> Reference:
    """The video checkpoint ``path`` as a frozen reference for training ``like``, at ``like``'s frame count (the
    temporal embedding interpolated, as the export does for a collection's frame count).

    The reference sees the new model's inputs, so it must take the same frames (size, pixel statistics) and
    tokens (checked on ``probe_texts``, e.g. a few training captions), and embed into as many dimensions.
    """
    data = load_checkpoint_file(path, VIDEO_FORMAT)
    model = load_video_clip(data)
    problems = [
        f"{what} {theirs} (the model being trained: {ours})"
        for what, theirs, ours in [
            ("image size", model.image_size, like.image_size),
            ("pixel mean", model.image_mean, like.image_mean),
            ("pixel std", model.image_std, like.image_std),
            ("embedding width", model.config.embed_dim, like.config.embed_dim),
        ]
        if theirs != ours
    ]
    if not torch.equal(model.tokenize(list(probe_texts)), like.tokenize(list(probe_texts))):
        problems.append("another tokenizer")
    if problems:
        raise ConfigError(f"{path}: cannot be the compatibility reference: {'; '.join(problems)}")
    if model.num_frames != like.num_frames:
        model.set_num_frames(like.num_frames)
    model.eval().requires_grad_(False)
    chain = [{"sha256": file_digest(path), "path": os.fspath(path)}, *data.get("extra", {}).get(CHAIN_KEY, [])]
    return Reference(model, weight, chain, form)


def procrustes_rotation(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """The orthogonal R (D, D) that brings the rows of ``new`` (N, D) closest to those of ``old``: the minimiser
    of sum_i ||R new_i - old_i||^2 (orthogonal Procrustes: R = V U^T for new^T old = U S V^T)."""
    u, _, vh = torch.linalg.svd(new.T @ old)  # (D, D) each
    return vh.T @ u.T


@torch.no_grad()
def rotate_onto(model: VideoCLIP, reference: VideoCLIP, texts: Sequence[str]) -> float:
    """Rotate ``model``'s joint space onto ``reference``'s before compatible fine-tuning; returns the mean cosine
    of the two models' embeddings of ``texts`` after it.

    Two models pretrained apart differ mostly by a rotation of their joint spaces (their heads start from
    different draws), which the compatibility term would otherwise have to undo step by step. One orthogonal
    map, fitted on the texts' unit embeddings and folded into both heads (bias-free linear layers), leaves every
    similarity of the model with itself unchanged and adds nothing at query time (the orthogonal adapter of
    compatible representation learning, merged into the weights).
    """
    training = model.training
    model.eval()
    tokens = model.tokenize(list(texts))
    new, old = unit_float32(model.encode_text(tokens)), unit_float32(reference.encode_text(tokens))  # (N, D)
    rotation = procrustes_rotation(new.double(), old.double())
    for head in (model.video_proj, model.text_proj):
        head.weight.copy_((rotation @ head.weight.double()).to(head.weight.dtype))  # (D, D) @ (D, width)
    model.train(training)
    return (new.double() @ rotation.T * old.double()).sum(dim=1).mean().item()


def criterion(old_old: float, new_new: float, new_text_old_video: float, old_text_new_video: float) -> dict:
    """The empirical test of compatibility on one metric: both cross-model scores (new queries against the old
    gallery, and old queries against the new one) at least the old model's own; ``new_new`` beside them says
    what compatibility costs. ``compatible`` is 1.0 or 0.0, so that it is a metric."""
    compatible = min(new_text_old_video, old_text_new_video) >= old_old
    return {
        "old_old": old_old,
        "new_new": new_new,
        "new_text_old_video": new_text_old_video,
        "old_text_new_video": old_text_new_video,
        "compatible": float(compatible),
    }
