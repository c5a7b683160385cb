"""The losses fine-tuning chooses among (``finetune.loss``), their modules imported so that each registers: what
the fine-tuning stages import, and the one list a new fine-tuning loss joins. InfoNCE, the pretraining objective,
is imported alone by the stages that pretrain, so that a change to it does not rerun fine-tuning.
"""

from __future__ import annotations

from eva02at.train.losses import adaptive_mi_mm, loss_choice, losses_section, mi_mm, sms

CHOICES = tuple(sorted(module.NAME for module in (adaptive_mi_mm, mi_mm, sms)))
LossName = loss_choice(CHOICES)  # a ``loss`` key: one of CHOICES
LossesParams = losses_section(CHOICES)  # the ``losses`` section: an entry per choice, checked by its dataclass
