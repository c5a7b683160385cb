"""Video-text objectives, one module each, registered where defined and found by name.

Every loss takes the global batch of B (video_i, caption_i) embeddings, [B, D] each and not necessarily
normalised, and works on cosine similarities S[a, b] = cos(text_a, video_b) (``pairwise``). The margin losses
read soft labels C[a, b] = R(video_a, caption_b), the relevance of caption b to video a from the full relevancy
matrix, so a negative pair is scored by its true relevance.

A loss module defines its ``NAME``, the loss function and its params dataclass (one typed field per keyword
argument) and registers both with :func:`register_loss`. This package imports none of them: a stage imports the
loss modules it can use (``finetuning`` for those fine-tuning chooses among, ``infonce`` to pretrain), so that a
change to one loss reruns only the stages that can use it.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol, TypeVar

import torch
from pydantic import AfterValidator

from eva02at.core.config import CheckedAs, ConfigError, from_dict


class LossFn(Protocol):
    """A loss over a (global) batch of video and text embeddings; soft labels for the losses that use them."""

    def __call__(
        self, video: torch.Tensor, text: torch.Tensor, relevance: torch.Tensor | None = None
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class RegisteredLoss:
    fn: Callable[..., torch.Tensor]  # (video, text[, relevance], **params) -> scalar
    Params: type  # a dataclass: one field per keyword argument of fn, typed and with its default
    uses_relevance: bool


F = TypeVar("F", bound=Callable[..., torch.Tensor])
LOSSES: dict[str, RegisteredLoss] = {}
EMBEDDINGS = ("video", "text", "relevance")  # the arguments every loss shares; the rest are its params


def register_loss(name: str, params_cls: type) -> Callable[[F], F]:
    """Register a loss function under ``name`` (the value of a stage's ``loss`` key and of its key in the
    ``losses`` section), with ``params_cls`` as the type of that section's entry."""

    def register(fn: F) -> F:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is registered twice")
        signature = inspect.signature(fn).parameters
        tunable = [p for p in signature if p not in EMBEDDINGS]
        fields = [f.name for f in dataclasses.fields(params_cls)]
        if tunable != fields:
            raise ValueError(f"loss {name!r}: {params_cls.__name__} has fields {fields}, the function takes {tunable}")
        LOSSES[name] = RegisteredLoss(fn, params_cls, "relevance" in signature)
        return fn

    return register


def loss_choice(names: Sequence[str]) -> Any:
    """The type of a ``loss`` key that may name any of the registered losses ``names``."""

    def check(name: str) -> str:
        if name not in names:
            raise ValueError(f"not a registered loss; known: {sorted(names)}")
        return name

    return Annotated[str, AfterValidator(check)]


def losses_section(names: Sequence[str]) -> type:
    """The ``losses`` params section of a stage whose params choose among the registered losses ``names``: one
    entry each, checked against its loss's params dataclass and kept as written ({} when left out: the loss's
    defaults), so that a run's recorded config is what the params file says."""
    entries = [
        (name, Annotated[dict[str, Any], CheckedAs(LOSSES[name].Params)], dataclasses.field(default_factory=dict))
        for name in sorted(names)
    ]
    return dataclasses.make_dataclass("LossesParams", entries)


def get_loss(name: str, **params: Any) -> LossFn:
    """Loss ``name`` with ``params`` bound, called uniformly as ``fn(video, text, relevance)``.

    ``params`` are checked against the loss's params dataclass, so unknown or ill-typed ones fail here, when the
    configuration is read, not at the first training step. Losses that use no soft labels ignore ``relevance``.
    """
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    entry = LOSSES[name]
    bound = dataclasses.asdict(from_dict(entry.Params, params, f"loss {name}"))

    def loss(video: torch.Tensor, text: torch.Tensor, relevance: torch.Tensor | None = None) -> torch.Tensor:
        if not entry.uses_relevance:
            return entry.fn(video, text, **bound)
        if relevance is None:
            raise ValueError(f"loss {name!r} needs the batch relevance matrix")
        return entry.fn(video, text, relevance, **bound)

    return loss


def configured_loss(name: str, losses: object) -> LossFn:
    """Loss ``name`` bound to its entry of a ``losses`` section (:func:`losses_section`)."""
    return get_loss(name, **getattr(losses, name))
