"""The model sizes a params file may name: open_clip's EVA02-CLIP configurations, this project's tiny ones included.

A size is an open_clip JSON config (``model_cfg``); open_clip ships the real ones (EVA02-B-16, EVA02-L-14, ...)
and ``configs/`` adds the tiny ones (``tiny.py``). Names and image sizes are read from those configs, never
kept in a table here, so a new config is a new size with nothing else to edit.
"""

from __future__ import annotations

import open_clip

import eva02at.models.tiny  # noqa: F401  (adds the tiny configs to open_clip's)
from eva02at.core.config import ConfigError

EVA02_PREFIX = "EVA02-"  # open_clip's EVA02-CLIP configurations; other towers have no spatial RoPE to inflate


def model_names() -> list[str]:
    """Every EVA02-CLIP configuration open_clip has, the tiny ones of ``configs/`` included."""
    return sorted(name for name in open_clip.list_models() if name.startswith(EVA02_PREFIX))


def known_model(name: str) -> str:
    """``name`` when it is one of :func:`model_names` (a params validator: the error lists them)."""
    if name not in model_names():
        raise ValueError(f"not an EVA02-CLIP configuration of open_clip; known: {model_names()}")
    return name


def image_size(name: str) -> int:
    """The side, in pixels, of the images model ``name`` takes (its config's ``vision_cfg.image_size``)."""
    size = open_clip.get_model_config(name)["vision_cfg"]["image_size"]
    return int(size if isinstance(size, int) else size[0])


def check_frames_size(model: str, frames_size: object, where: str) -> None:
    """Stop with one line when the frames are not stored at the size model ``model`` takes (``where``: the
    params file): frames are decoded once at ``frames.size``, and a tower cannot take another size."""
    needed = image_size(model)
    if frames_size != needed:
        raise ConfigError(
            f"{where}: frames.size = {frames_size!r} does not fit image_clip.model = {model!r}, whose images are "
            f"{needed} px: set frames.size: {needed} (README, Model: the size each model needs)"
        )
