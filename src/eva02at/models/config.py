"""The video-language model's configuration: everything needed to rebuild it from a checkpoint alone."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from eva02at.config import ConfigError, from_dict


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
    """

    model_name: str
    num_frames: int = 4
    embed_dim: int = 256
    image_mean: tuple[float, float, float] = OPENAI_DATASET_MEAN
    image_std: tuple[float, float, float] = OPENAI_DATASET_STD
    open_clip_cfg: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.embed_dim < 1:
            raise ConfigError(f"num_frames, embed_dim must be >= 1, got {self.num_frames}, {self.embed_dim}")
        for name in ("image_mean", "image_std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ConfigError(f"{name} needs 3 values (RGB), got {value}")
            setattr(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples, numbers, strings) for checkpoints and logs."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "model") -> VideoCLIPConfig:
        """Strict inverse of ``to_dict``: unknown or missing keys are a ``ConfigError`` naming ``where``."""
        return from_dict(cls, values, where)
