"""AdamW (or LAMB) with the usual CLIP parameter groups and the two learning-rate schedules EVA02-AT uses.

Pretraining keeps the learning rate fixed; fine-tuning warms up linearly from ``warmup_lr`` to ``lr`` and
then follows a cosine down to ``final_lr``. A warmup may precede the constant schedule too (training an
image CLIP from scratch needs one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from pydantic import Field
from timm.optim import Lamb, param_groups_weight_decay
from torch import nn

from eva02at.core.config import NonNegativeFloat, PositiveFloat
from eva02at.models import no_weight_decay

Beta = Annotated[float, Field(ge=0, lt=1)]  # Adam's moment decay rates


@dataclass
class OptimParams:
    name: Literal["adamw", "lamb"] = "adamw"  # lamb: timm's LAMB (layer-wise trust ratio; Charades-Ego fine-tuning)
    lr: PositiveFloat = 3e-5
    weight_decay: NonNegativeFloat = 0.01
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: NonNegativeFloat = 0.0
    warmup_lr: NonNegativeFloat = 1e-6
    final_lr: NonNegativeFloat = 1e-6
    grad_clip: NonNegativeFloat = 0.0  # 0 disables clipping


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups the timm / open_clip way: weight matrices are decayed; biases, norm weights, gains and the
    logit scale (1-d or scalar) and the embeddings named by ``eva02at.models.no_weight_decay`` are not.

    timm's grouping reads the names as shell patterns; parameter names hold no wildcard, so each matches
    exactly one parameter (never a substring of another's name). Frozen parameters are left out.
    """
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=no_weight_decay(model))


def build_optimizer(model: nn.Module, config: OptimParams) -> torch.optim.Optimizer:
    """The optimizer ``config.name`` over the weight-decay groups. LAMB's own gradient clipping is off: clipping is
    ``grad_clip``'s, the same for both."""
    groups = parameter_groups(model, config.weight_decay)
    if config.name == "lamb":
        return Lamb(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps, max_grad_norm=None)
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps)


def lr_at(step: int, total_steps: int, steps_per_epoch: int, config: OptimParams) -> float:
    """The learning rate of optimizer step ``step`` (0-based): linear warmup, then constant or cosine."""
    if config.schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown schedule {config.schedule!r}; use 'constant' or 'cosine'")
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return config.warmup_lr + (config.lr - config.warmup_lr) * step / warmup
    if config.schedule == "constant":
        return config.lr
    progress = (step - warmup) / max(1, total_steps - warmup)
    return config.final_lr + 0.5 * (config.lr - config.final_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int, config: OptimParams
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR whose factor turns the optimizer's base ``lr`` into :func:`lr_at`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(step, total_steps, steps_per_epoch, config) / config.lr
    )
