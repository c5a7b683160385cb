"""Weights in and out: image-text weights files (the start of pretraining) and this project's checkpoints.

File formats, all ``torch.save`` of a dict readable with ``torch.load(weights_only=True)``:
- image-CLIP checkpoint: ``{"format": IMAGE_FORMAT, "version", "model_name", "open_clip_cfg", "state_dict",
  "extra"}``;
- video checkpoint: ``{"format": VIDEO_FORMAT, "version", "config", "state_dict", "extra"}``, where ``extra``
  is the caller's (training state: tensors, numbers, strings, lists and dicts only);
- a weights file from elsewhere (e.g. open_clip's EVA02-CLIP download): a state dict, possibly wrapped as
  ``{"state_dict": ...}``, possibly with DDP's ``module.`` prefix, ``.safetensors`` or torch pickle.
Every load is strict: a key or shape that does not fit is a ``CheckpointError`` naming the keys and the file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import load_file
from torch import nn

from eva02at.core.atomic import atomic_path
from eva02at.core.config import ConfigError
from eva02at.core.errors import PipelineError
from eva02at.models.config import VideoCLIPConfig
from eva02at.models.video_clip import VideoCLIP

IMAGE_FORMAT = "eva02at.image_clip"
VIDEO_FORMAT = "eva02at.video_clip"
FORMAT_VERSION = 1
_SHOWN_KEYS = 10  # keys named per kind of mismatch in an error message


class CheckpointError(PipelineError):
    """A weights or checkpoint file is missing, unreadable, of the wrong kind, or does not fit the model."""


def load_checkpoint_file(
    path: str | os.PathLike, kind: str | None = None, map_location: Any = "cpu", mmap: bool = False
) -> dict:
    """Read a checkpoint of this project; ``kind`` (IMAGE_FORMAT or VIDEO_FORMAT) is checked when given.
    ``mmap``: tensors are mapped, not read (cheap when only ``config`` or ``extra`` is wanted)."""
    return _checked(_torch_load(path, map_location, mmap), path, kind)


def _checked(data: Any, path: str | os.PathLike, kind: str | None) -> dict:
    """``data`` if it is a checkpoint of this project (of ``kind`` when given), else a CheckpointError."""
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt not in (IMAGE_FORMAT, VIDEO_FORMAT):
        raise CheckpointError(f"{path}: not an eva02at checkpoint (format {fmt!r})")
    if kind is not None and fmt != kind:
        raise CheckpointError(f"{path}: is a {fmt} checkpoint, expected {kind}")
    if data.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {data.get('version')!r}, expected {FORMAT_VERSION}")
    return data


def load_state_dict_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], source: Any) -> None:
    """Load ``state_dict`` into ``module``; any missing, unexpected or mis-shaped key is a CheckpointError.

    Keys naming a non-persistent buffer of ``module`` (e.g. a causal mask some files carry) are recomputed by
    the module itself and are ignored.
    """
    own = module.state_dict()
    derived = {name for name, _ in module.named_buffers()} - set(own)
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own) - derived)
    shapes = sorted(
        f"{key} {tuple(state_dict[key].shape)} vs {tuple(own[key].shape)}"
        for key in set(own) & set(state_dict)
        if state_dict[key].shape != own[key].shape
    )
    problems = [
        f"{len(keys)} {what}: {keys[:_SHOWN_KEYS]}{' ...' if len(keys) > _SHOWN_KEYS else ''}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{source}: weights do not fit {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict({key: state_dict[key] for key in own})


def create_image_clip(model_name: str, weights: str | os.PathLike | None = None) -> nn.Module:
    """Build open_clip model ``model_name`` (no download), loading ``weights`` strictly when given.

    ``weights`` is a state-dict file (see module doc) or this project's image-CLIP checkpoint of that model.
    """
    clip = _random_open_clip(model_name, quiet=weights is not None)
    if weights is not None:
        load_state_dict_strict(clip, read_image_weights(weights, model_name), weights)
    return clip


def read_image_weights(path: str | os.PathLike, model_name: str) -> dict[str, torch.Tensor]:
    """The state dict of an image-text weights file, unwrapped; checks the model name of our checkpoints."""
    if str(path).endswith(".safetensors"):
        _require_file(path)
        state = load_file(str(path), device="cpu")
    else:
        data = _torch_load(path, "cpu")
        if isinstance(data, dict) and "format" in data:
            data = _checked(data, path, IMAGE_FORMAT)
            if data["model_name"] != model_name:
                raise CheckpointError(f"{path}: holds {data['model_name']} weights, not {model_name}")
        state = data.get("state_dict", data) if isinstance(data, dict) else data
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def save_image_clip(model: nn.Module, model_name: str, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Save an open_clip model built from config ``model_name`` so that ``load_image_clip`` rebuilds it;
    ``extra`` carries the caller's state (e.g. optimizer and loop state), as in ``save_video_clip``."""
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ConfigError(f"open_clip knows no model config named {model_name!r}")
    data = {
        "format": IMAGE_FORMAT,
        "version": FORMAT_VERSION,
        "model_name": model_name,
        "open_clip_cfg": cfg,
        "state_dict": model.state_dict(),
        "extra": dict(extra or {}),
    }
    _atomic_save(data, path)


def load_image_clip(source: str | os.PathLike | dict, map_location: Any = "cpu") -> nn.Module:
    """Rebuild the open_clip model saved by ``save_image_clip`` from the file alone (or its dict already
    read by ``load_checkpoint_file``)."""
    if isinstance(source, dict):
        data, where = _checked(source, "checkpoint", IMAGE_FORMAT), "checkpoint"
    else:
        data, where = load_checkpoint_file(source, IMAGE_FORMAT, map_location), str(source)
    clip = _create_open_clip(data["model_name"], data["open_clip_cfg"], where)
    load_state_dict_strict(clip, data["state_dict"], where)
    return clip


def save_video_clip(model: VideoCLIP, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Atomically save config, weights and the caller's ``extra`` (e.g. optimizer and loop state)."""
    if not isinstance(model, VideoCLIP):
        raise TypeError(f"save_video_clip takes a VideoCLIP (unwrap DDP first), got {type(model).__name__}")
    data = {
        "format": VIDEO_FORMAT,
        "version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": model.state_dict(),
        "extra": dict(extra or {}),
    }
    _atomic_save(data, path)


def load_video_clip(source: str | os.PathLike | dict, map_location: Any = "cpu") -> VideoCLIP:
    """Rebuild a ``VideoCLIP`` from a video checkpoint path, or from its dict already read by
    ``load_checkpoint_file`` (resuming reads the file once and takes ``extra`` from the same dict)."""
    if isinstance(source, dict):
        data, where = _checked(source, "checkpoint", VIDEO_FORMAT), "checkpoint"
    else:
        data, where = load_checkpoint_file(source, VIDEO_FORMAT, map_location), str(source)
    try:
        config = VideoCLIPConfig.from_dict(data["config"], where=f"{where}: config")
    except ConfigError as err:
        raise CheckpointError(str(err)) from err
    model = VideoCLIP(config, _create_open_clip(config.model_name, config.open_clip_cfg, where))
    load_state_dict_strict(model, data["state_dict"], where)
    return model


def _create_open_clip(model_name: str, saved_cfg: dict, source: Any) -> nn.Module:
    """open_clip model ``model_name``, once checked that open_clip still defines it as the checkpoint says."""
    registered = open_clip.get_model_config(model_name)
    if registered is None:
        raise CheckpointError(f"{source}: open_clip has no model config {model_name!r}")
    differences = _differences(saved_cfg, registered)
    if differences:
        raise CheckpointError(
            f"{source}: open_clip's config of {model_name} differs from the checkpoint's at {differences}"
        )
    return _random_open_clip(model_name, quiet=True)


class _NoPretrainedWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def _random_open_clip(model_name: str, quiet: bool) -> nn.Module:
    """open_clip's model with random weights (never a download). ``quiet`` drops open_clip's warning that no
    pretrained weights were loaded, which only misleads when weights are loaded right after."""
    if not quiet:
        return open_clip.create_model(model_name, pretrained=None)
    root, hush = logging.getLogger(), _NoPretrainedWarning()
    root.addFilter(hush)
    try:
        return open_clip.create_model(model_name, pretrained=None)
    finally:
        root.removeFilter(hush)


def _differences(saved: Any, current: Any, where: str = "") -> list[str]:
    """Dotted paths at which two JSON-like configs differ."""
    if isinstance(saved, dict) and isinstance(current, dict):
        return [
            path
            for key in sorted(set(saved) | set(current), key=str)
            for path in _differences(saved.get(key), current.get(key), f"{where}.{key}".lstrip("."))
        ]
    return [] if saved == current else [where or "<root>"]


def _require_file(path: str | os.PathLike) -> None:
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such file")


def _torch_load(path: str | os.PathLike, map_location: Any, mmap: bool = False) -> Any:
    _require_file(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read ({type(err).__name__}: {err})") from err


def _atomic_save(data: dict, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
