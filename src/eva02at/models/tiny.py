"""Tiny EVA02-CLIP configurations for CPU tests and the embedded demo, on the same code path as the real ones.

open_clip builds an EVA02-CLIP image tower as ``TimmModel`` around a timm ``Eva`` trunk named by
``timm_model_name``; it passes no other trunk arguments. So the tiny trunks are registered here as timm model
names with the EVA02-CLIP architecture (SwiGLU, sub-LN, q/v bias, abs pos embed + 2D RoPE on a 16-grid, CLS
pooling) and only smaller sizes, and the open_clip JSON configs in ``configs/`` name them. Importing
``eva02at.models`` registers both, so ``open_clip.create_model('EVA02-Tiny-16')`` works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import open_clip
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from timm.models import build_model_with_cfg, register_model
from timm.models.eva import Eva, checkpoint_filter_fn

from eva02at.core.config import ConfigError

CONFIGS_DIR = Path(__file__).parent / "configs"
TINY_MODELS = ("EVA02-Tiny-16", "EVA02-Tiny-test")  # open_clip names of the configs in CONFIGS_DIR

# EVA02-CLIP trunk settings shared by every size (those of timm's eva02_base_patch16_clip_224).
_EVA02_CLIP = dict(
    qkv_fused=False,
    mlp_ratio=4 * 2 / 3,
    swiglu_mlp=True,
    scale_mlp=True,
    scale_attn_inner=True,
    use_rot_pos_emb=True,
    ref_feat_shape=(16, 16),
)


def _default_cfg(image_size: int) -> dict[str, Any]:
    """timm pretrained cfg (no weights): input size and CLIP normalisation, read by timm's builder."""
    return dict(
        url="",
        num_classes=0,
        input_size=(3, image_size, image_size),
        mean=OPENAI_DATASET_MEAN,
        std=OPENAI_DATASET_STD,
        first_conv="patch_embed.proj",
        classifier="head",
    )


# timm's register_model reads this module-level name to attach each entrypoint's pretrained cfg.
default_cfgs = {
    "eva02at_tiny_patch16_clip_64": _default_cfg(64),
    "eva02at_micro_patch16_clip_32": _default_cfg(32),
}


def _create(variant: str, pretrained: bool, model_args: dict[str, Any], kwargs: dict[str, Any]) -> Eva:
    if pretrained:
        raise ConfigError(f"{variant}: tiny EVA02 trunks have no pretrained weights")
    args = dict(_EVA02_CLIP, **model_args, global_pool=kwargs.pop("global_pool", "token"))
    return build_model_with_cfg(
        Eva, variant, pretrained=False, pretrained_filter_fn=checkpoint_filter_fn, **dict(args, **kwargs)
    )


@register_model
def eva02at_tiny_patch16_clip_64(pretrained: bool = False, **kwargs: Any) -> Eva:
    """Demo trunk: 64 px, patch 16 (4x4 grid), width 96, 4 blocks, 3 heads of 32."""
    model_args = dict(img_size=64, patch_size=16, embed_dim=96, depth=4, num_heads=3)
    return _create("eva02at_tiny_patch16_clip_64", pretrained, model_args, kwargs)


@register_model
def eva02at_micro_patch16_clip_32(pretrained: bool = False, **kwargs: Any) -> Eva:
    """Unit-test trunk: 32 px, patch 16 (2x2 grid), width 32, 2 blocks, 2 heads of 16."""
    model_args = dict(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2)
    return _create("eva02at_micro_patch16_clip_32", pretrained, model_args, kwargs)


open_clip.add_model_config(CONFIGS_DIR)
