"""EVA02-AT video-language model: open_clip's EVA02-CLIP towers, the video tower, and new joint-space heads.

What the heads read (the one design choice here):
- video: the video tower's pooled CLS features, width D of the trunk (768 for B, 1024 for L). At T = 1 with
  the zero temporal embedding they are open_clip's image features *before* its image projection, which is
  dropped: the new head replaces it.
- text: open_clip's text tower output, unchanged (its own ``text_projection`` included), i.e. open_clip's
  un-normalised ``encode_text``. Keeping the text module whole adds no capacity over dropping that projection
  (a linear map followed by a linear head is one linear map) and keeps the text tower exactly open_clip's.
Both heads are bias-free linear maps into the ``embed_dim``-wide joint space (256 by default); the learnt CLIP
temperature is dropped too (the losses use a fixed one). The heads run in float32 whatever the autocast (the
towers may run in bf16): joint-space embeddings keep float32's 24-bit significand, where bf16's 8 bits would add
ranking noise to evaluation and search.
"""

from __future__ import annotations

import copy
import dataclasses

import open_clip
import torch
from open_clip.timm_model import TimmModel
from open_clip.transformer import TextTransformer
from torch import nn

from eva02at.core.config import ConfigError
from eva02at.models.config import DEFAULT_TEMPORAL_POSITIONS, VideoCLIPConfig
from eva02at.models.video_tower import VideoTower
from eva02at.models.weight_decay import only_parameters, prefixed, text_no_weight_decay

# How open_clip's state dict maps onto VideoCLIP's: prefixes renamed, these dropped, and these new.
KEY_PREFIXES = {"visual.trunk.": "video.trunk.", "text.": "text."}
DROPPED_KEYS = ("visual.trunk.head.weight", "visual.trunk.head.bias", "logit_scale")
NEW_KEYS = ("video.temporal_embed", "video_proj.weight", "text_proj.weight")


def video_key(open_clip_key: str) -> str | None:
    """VideoCLIP's name for an open_clip state-dict key, or None when it has none (dropped or unknown)."""
    if open_clip_key in DROPPED_KEYS:
        return None
    for old, new in KEY_PREFIXES.items():
        if open_clip_key.startswith(old):
            return new + open_clip_key[len(old) :]
    return None


class VideoCLIP(nn.Module):
    """Video and text encoders into one joint space; outputs are un-normalised (losses normalise).

    Built by ``from_open_clip`` (from an image-text model) or ``eva02at.models.load_video_clip`` (from a
    checkpoint); the constructor adopts the towers of ``clip`` without copying them.
    """

    def __init__(self, config: VideoCLIPConfig, clip: nn.Module) -> None:
        super().__init__()
        _check_key_map(clip)
        self.config = config
        self.video = VideoTower(
            clip.visual.trunk,
            config.num_frames,
            config.rope_reference_frames,
            config.temporal_embedding,
            config.temporal_rope,
        )
        self.text = clip.text
        self.video_proj = nn.Linear(self.video.width, config.embed_dim, bias=False)
        self.text_proj = nn.Linear(self.text.output_dim, config.embed_dim, bias=False)
        for head in (self.video_proj, self.text_proj):
            nn.init.normal_(head.weight, std=head.in_features**-0.5)
        self.tokenizer = open_clip.get_tokenizer(config.model_name, context_length=self.text.context_length)
        new = set(NEW_KEYS) - (set() if config.temporal_embedding else {"video.temporal_embed"})
        expected = {video_key(k) for k in clip.state_dict()} - {None} | new
        if set(self.state_dict()) != expected:
            raise ValueError(
                f"{config.model_name}: state dict differs from the key map: {sorted(set(self.state_dict()) ^ expected)}"
            )

    @property
    def num_frames(self) -> int:
        return self.config.num_frames

    @property
    def image_size(self) -> int:
        """Square frame side in pixels."""
        return self.video.trunk.patch_embed.img_size[0]

    @property
    def image_mean(self) -> tuple[float, float, float]:
        return self.config.image_mean

    @property
    def image_std(self) -> tuple[float, float, float]:
        return self.config.image_std

    def tokenize(self, texts: str | list[str]) -> torch.Tensor:
        """open_clip's BPE tokens ``(len(texts), context_length)``, int64."""
        return self.tokenizer(texts)

    def video_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Video tower features before the new head, ``(B, D)``."""
        return self.video(frames)

    def text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text tower features before the new head (open_clip's ``encode_text``), ``(B, text.output_dim)``."""
        return self.text(tokens)

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised frames ``(B, T, 3, H, W)`` -> joint-space embeddings ``(B, embed_dim)``, float32."""
        return _float32_head(self.video_proj, self.video_features(frames))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, context_length)`` -> joint-space embeddings ``(B, embed_dim)``, float32."""
        return _float32_head(self.text_proj, self.text_features(tokens))

    def embed_video(self, frames: torch.Tensor) -> torch.Tensor:
        """Unit-norm joint-space embeddings of ``frames`` (what exports hold), head and norm in float32."""
        return unit_float32(self.encode_video(frames))

    def embed_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unit-norm joint-space embeddings of ``tokens`` (what exports hold), head and norm in float32."""
        return unit_float32(self.encode_text(tokens))

    def forward(self, frames: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_video(frames), self.encode_text(tokens)

    def set_num_frames(self, num_frames: int) -> None:
        """Change T, interpolating the temporal embedding (4 -> 16 before fine-tuning); rebuild optimizers.

        The reference frame count stays, so with ``clip_time`` positions RoPE keeps the pretraining time scale."""
        self.video.set_num_frames(num_frames)
        self.config = dataclasses.replace(self.config, num_frames=num_frames)

    def no_weight_decay(self) -> set[str]:
        """Full names of the embeddings kept from weight decay (timm's interface; biases, norms and gains are
        1-d and left out by shape): the video tower's and the text tower's, each from the tower's own list."""
        names = prefixed("video", self.video.no_weight_decay()) | prefixed("text", text_no_weight_decay(self.text))
        return only_parameters(self, names)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward, in both towers (memory for compute)."""
        self.video.grad_checkpointing = enable
        self.text.set_grad_checkpointing(enable)


def _float32_head(head: nn.Linear, features: torch.Tensor) -> torch.Tensor:
    """``head(features)`` in float32 with autocast off (see the module docstring)."""
    with torch.autocast(features.device.type, enabled=False):
        return head(features.float())


def unit_float32(embeddings: torch.Tensor) -> torch.Tensor:
    """L2-normalised rows in float32 with autocast off."""
    with torch.autocast(embeddings.device.type, enabled=False):
        return nn.functional.normalize(embeddings.float(), dim=-1)


def from_open_clip(
    model: nn.Module,
    num_frames: int,
    embed_dim: int = 256,
    model_name: str | None = None,
    temporal_positions: str = DEFAULT_TEMPORAL_POSITIONS,
    temporal_embedding: bool = True,
    temporal_rope: bool = True,
) -> VideoCLIP:
    """Inflate an open_clip EVA02-CLIP model into a ``VideoCLIP`` (the model itself is left untouched).

    Args:
        model: e.g. ``open_clip.create_model('EVA02-B-16')`` with its weights loaded.
        num_frames: T; the new temporal embedding starts at zero. Also the reference frame count T_ref of
            ``clip_time`` positions: the frame count the model is pretrained with.
        embed_dim: width of the new joint space.
        model_name: open_clip name of ``model``'s config; found among open_clip's registered configs when
            omitted (an error when none or several match).
        temporal_positions: ``index`` or ``clip_time``, see ``VideoCLIPConfig``.
        temporal_embedding, temporal_rope: the two temporal signals on or off (the paper's Table IV).
    """
    _check_key_map(model)
    model_name = model_name or infer_model_name(model)
    open_clip_cfg = open_clip.get_model_config(model_name)
    if open_clip_cfg is None:
        raise ConfigError(f"open_clip knows no model config named {model_name!r}")
    preprocess = model.visual.preprocess_cfg
    config = VideoCLIPConfig(
        model_name=model_name,
        num_frames=num_frames,
        embed_dim=embed_dim,
        image_mean=preprocess["mean"],
        image_std=preprocess["std"],
        open_clip_cfg=open_clip_cfg,
        temporal_positions=temporal_positions,
        temporal_embedding=temporal_embedding,
        temporal_rope=temporal_rope,
    )
    return VideoCLIP(config, copy.deepcopy(model))


def infer_model_name(model: nn.Module) -> str:
    """The registered open_clip config that built ``model``: same timm trunk, image size and text tower."""
    trunk_name = getattr(getattr(model.visual, "trunk", None), "pretrained_cfg", {}).get("architecture")
    text = model.text
    text_cfg = dict(
        width=text.width,
        heads=text.heads,
        layers=len(text.transformer.resblocks),
        context_length=text.context_length,
        vocab_size=text.vocab_size,
    )
    matches = []
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name)
        vision = cfg.get("vision_cfg", {})
        if (
            vision.get("timm_model_name") == trunk_name
            and (vision.get("image_size"),) * 2 == tuple(model.visual.image_size)
            and cfg.get("embed_dim") == text.output_dim
            and all(cfg.get("text_cfg", {}).get(key) == value for key, value in text_cfg.items())
        ):
            matches.append(name)
    if len(matches) != 1:
        raise ValueError(
            f"cannot tell the open_clip config of this model (trunk {trunk_name!r}, text {text_cfg}): "
            f"matching configs {matches}; pass model_name"
        )
    return matches[0]


def _check_key_map(clip: nn.Module) -> None:
    """Every tensor of the open_clip model is either carried over or one of the documented DROPPED_KEYS."""
    if not (
        isinstance(getattr(clip, "visual", None), TimmModel)
        and isinstance(getattr(clip, "text", None), TextTransformer)
    ):
        raise ValueError(f"expected an open_clip EVA02-CLIP model (timm image tower), got {type(clip).__name__}")
    unmapped = sorted(k for k in clip.state_dict() if k not in DROPPED_KEYS and video_key(k) is None)
    if unmapped:
        raise ValueError(f"open_clip model has tensors the video model would lose: {unmapped}")
