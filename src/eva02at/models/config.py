"""The video-language model's configuration: everything needed to rebuild it from a checkpoint alone."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from eva02at.core.config import ConfigError, from_dict

TEMPORAL_POSITIONS = ("clip_time", "index")
# New models count frame indices at every clip length, as the authors' code does (its temporal rotary table is
# built with the original clip length); ``clip_time`` is the documented alternative (README, Model). At the
# pretraining frame count both conventions are one table.
DEFAULT_TEMPORAL_POSITIONS = "index"
# Checkpoints written before a field existed load with the behaviour they had.
_EARLIER_DEFAULTS = {"temporal_positions": "index", "temporal_embedding": True, "temporal_rope": True}


@dataclass
class VideoCLIPConfig:
    """Architecture of a ``VideoCLIP``.

    Attributes:
        model_name: open_clip model name of the image-text model it starts from (e.g. ``EVA02-B-16``).
        num_frames: frames per clip T (4 to pretrain, 16 to fine-tune and evaluate).
        embed_dim: width of the joint video-text space of the new heads.
        image_mean, image_std: per-channel normalisation of 0-1 RGB pixels, from open_clip's preprocess cfg.
        open_clip_cfg: open_clip's model config of ``model_name`` when the model was built; a checkpoint is
            only rebuilt when the installed open_clip (plus eva02at's tiny configs) still defines the same.
        temporal_positions: what temporal RoPE counts time in. ``index`` (new models, the authors' code):
            ``t``, whatever T; ``clip_time``: frame ``t`` of T at ``t' = (t + 0.5) * reference_frames / T - 0.5``,
            its clip time on the scale of the clips the model was pretrained on, where the interpolated temporal
            embedding places it too. Checkpoints written before this field existed load as ``index``.
        reference_frames: T_ref of ``clip_time``, the frame count the model was built (and pretrained) with;
            ``num_frames`` when not given; ``set_num_frames`` keeps it.
        temporal_embedding: the learnable temporal embedding ``(T, D)`` exists (off: no such parameter).
        temporal_rope: temporal RoPE rotates q and k (off: every frame gets the image model's 2D table).
            With the embedding, the paper's Table IV variants: both on (the paper's model), RoPE only,
            embedding only. Checkpoints written before these fields existed load with both on.
    """

    model_name: str
    num_frames: int = 4
    embed_dim: int = 256
    image_mean: tuple[float, float, float] = OPENAI_DATASET_MEAN
    image_std: tuple[float, float, float] = OPENAI_DATASET_STD
    open_clip_cfg: dict[str, Any] = field(default_factory=dict)
    temporal_positions: str = DEFAULT_TEMPORAL_POSITIONS
    reference_frames: int | None = None
    temporal_embedding: bool = True
    temporal_rope: bool = True

    def __post_init__(self) -> None:
        if self.reference_frames is None:
            self.reference_frames = self.num_frames
        if min(self.num_frames, self.embed_dim, self.reference_frames) < 1:
            raise ConfigError(
                f"num_frames, embed_dim, reference_frames must be >= 1, "
                f"got {self.num_frames}, {self.embed_dim}, {self.reference_frames}"
            )
        if self.temporal_positions not in TEMPORAL_POSITIONS:
            raise ConfigError(f"temporal_positions is {self.temporal_positions!r}, use one of {TEMPORAL_POSITIONS}")
        for name in ("image_mean", "image_std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ConfigError(f"{name} needs 3 values (RGB), got {value}")
            setattr(self, name, value)

    @property
    def rope_reference_frames(self) -> int | None:
        """The T_ref temporal RoPE places frames by (``st_rope.frame_positions``); None for frame indices."""
        return self.reference_frames if self.temporal_positions == "clip_time" else None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples, numbers, strings) for checkpoints and logs."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "model") -> VideoCLIPConfig:
        """Strict inverse of ``to_dict``: unknown or missing keys are a ``ConfigError`` naming ``where``.

        A config saved before a field existed loads with the behaviour it had (``_EARLIER_DEFAULTS``)."""
        return from_dict(cls, {**_EARLIER_DEFAULTS, **values}, where)
