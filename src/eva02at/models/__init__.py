"""EVA02-AT video-language models built on open_clip's EVA02-CLIP and timm's EVA.

Importing this package registers the tiny EVA02-CLIP configurations (``TINY_MODELS``) with open_clip and timm.
"""

from eva02at.models.config import DEFAULT_TEMPORAL_POSITIONS, TEMPORAL_POSITIONS, VideoCLIPConfig
from eva02at.models.tiny import CONFIGS_DIR, TINY_MODELS
from eva02at.models.video_clip import VideoCLIP, from_open_clip
from eva02at.models.weight_decay import no_weight_decay
from eva02at.models.weights import (
    IMAGE_FORMAT,
    VIDEO_FORMAT,
    CheckpointError,
    create_image_clip,
    load_checkpoint_file,
    load_image_clip,
    load_state_dict_strict,
    load_video_clip,
    save_image_clip,
    save_video_clip,
)

__all__ = [
    "CONFIGS_DIR",
    "DEFAULT_TEMPORAL_POSITIONS",
    "IMAGE_FORMAT",
    "TEMPORAL_POSITIONS",
    "TINY_MODELS",
    "VIDEO_FORMAT",
    "CheckpointError",
    "VideoCLIP",
    "VideoCLIPConfig",
    "create_image_clip",
    "from_open_clip",
    "load_checkpoint_file",
    "load_image_clip",
    "load_state_dict_strict",
    "load_video_clip",
    "no_weight_decay",
    "save_image_clip",
    "save_video_clip",
]
