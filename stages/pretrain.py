"""``pretrain`` stage: single-stage CLIP-to-video pretraining on an EgoClip-format corpus.

Inflates the image checkpoint into the video model (joint space-time attention, spatial-temporal RoPE, zero
temporal embedding) and trains it with symmetric InfoNCE at a fixed temperature and a fixed learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from eva02at.config import PositiveFloat, PositiveInt
from eva02at.losses import get_loss
from eva02at.models import DEFAULT_TEMPORAL_POSITIONS, from_open_clip, load_image_clip
from eva02at.shards import FrameShards
from eva02at.train.data import ClipPairs, OwnCaptions
from eva02at.train.distributed import setup
from eva02at.train.loop import TrainConfig
from eva02at.train.optim import OptimConfig
from eva02at.train.tasks import VideoTextTask
from stages.common import stage_main, stage_params
from stages.training import check_frames, pair_sampler, run_training


@dataclass
class PretrainParams:
    init: str  # image-CLIP checkpoint (the image_clip stage's model.pt)
    frames: str  # decoded EgoClip-format corpus
    out: str
    checkpoints: str
    num_frames: PositiveInt = 4
    embed_dim: PositiveInt = 256
    temporal_positions: Literal["clip_time", "index"] = DEFAULT_TEMPORAL_POSITIONS  # README, Model
    temperature: PositiveFloat = 0.05
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


@stage_main
def main() -> None:
    params, args = stage_params("pretrain", PretrainParams, __doc__)
    torch.manual_seed(params.train.seed)  # the initialisation of the new projection heads
    model = from_open_clip(
        load_image_clip(params.init), params.num_frames, params.embed_dim, temporal_positions=params.temporal_positions
    )
    check_frames(params.frames, params.num_frames, model.image_size)
    shards = FrameShards(params.frames)
    clips = shards.ids  # one Arrow array: no Python string per clip
    texts = shards.texts(clips)
    dist = setup()
    sampler = pair_sampler(OwnCaptions(len(clips)), params, dist)
    task = VideoTextTask(model, get_loss("infonce", temperature=params.temperature))
    run_training("pretrain", params, task, sampler, ClipPairs(shards, clips, texts), dist, args.params)


if __name__ == "__main__":
    main()
