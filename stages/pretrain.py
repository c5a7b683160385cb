"""``pretrain`` stage: single-stage CLIP-to-video pretraining on an EgoClip-format corpus.

Inflates the image checkpoint into the video model (joint space-time attention, spatial-temporal RoPE, zero
temporal embedding) and trains it with symmetric InfoNCE at a fixed temperature and a fixed learning rate, on
each clip's own caption or, with ``captions``, on EgoClip+ (one caption per clip and caption set, drawn anew
every epoch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import torch

from eva02at.core.config import PositiveFloat, PositiveInt
from eva02at.core.distributed import setup
from eva02at.data.egoclip_plus import decoded_only, read_caption_table
from eva02at.data.shards import FrameShards
from eva02at.models import DEFAULT_TEMPORAL_POSITIONS, from_open_clip, load_image_clip
from eva02at.train.data import CaptionSets, ClipPairs, OwnCaptions
from eva02at.train.loop import TrainParams
from eva02at.train.losses import get_loss, infonce
from eva02at.train.optim import OptimParams
from eva02at.train.tasks import VideoTextTask
from stages.common import stage_main, stage_params
from stages.training import check_frames, pair_sampler, run_training

log = logging.getLogger(__name__)
SELECTION_METRICS = "metrics/pretrain_select.json"  # which weights model.pt holds (train.select)


@dataclass
class PretrainParams:
    init: str  # image-CLIP checkpoint (the image_clip stage's model.pt)
    frames: str  # decoded EgoClip-format corpus
    out: str
    checkpoints: str
    num_frames: PositiveInt = 4
    embed_dim: PositiveInt = 256
    temporal_positions: Literal["clip_time", "index"] = DEFAULT_TEMPORAL_POSITIONS  # README, Model
    temporal_embedding: bool = True  # the learnable temporal embedding (paper, Table IV)
    temporal_rope: bool = True  # temporal RoPE (paper, Table IV)
    temperature: PositiveFloat = 0.05
    captions: str | None = None  # EgoClip+ caption table (egoclip_plus stage); None: each clip's own caption
    train: TrainParams = field(default_factory=TrainParams)
    optim: OptimParams = field(default_factory=OptimParams)


@stage_main
def main() -> None:
    params, args = stage_params("pretrain", PretrainParams, __doc__)
    torch.manual_seed(params.train.seed)  # the initialisation of the new projection heads
    model = from_open_clip(
        load_image_clip(params.init),
        params.num_frames,
        params.embed_dim,
        temporal_positions=params.temporal_positions,
        temporal_embedding=params.temporal_embedding,
        temporal_rope=params.temporal_rope,
    )
    check_frames(params.frames, params.num_frames, model.image_size)
    shards = FrameShards(params.frames)
    if params.captions is None:
        clips = shards.ids  # one Arrow array: no Python string per clip
        source, dataset = OwnCaptions(len(clips)), ClipPairs(shards, clips, shards.texts(clips))
    else:  # one item per clip and caption set, one caption of its list drawn per epoch
        table, missing = decoded_only(read_caption_table(params.captions), shards.clip_ids)
        if missing:
            log.warning(
                "%d captioned clips have no frames (see the frames manifest), e.g. %s", len(missing), missing[0]
            )
        source = CaptionSets(table, params.captions)
        dataset = ClipPairs(shards, source.clip_ids, source.texts)
        uncaptioned = len(set(shards.clip_ids) - set(source.clip_ids))
        log.info(
            "%d items (clip, caption set) of %s; %d clips without captions",
            len(source.clip_ids),
            params.captions,
            uncaptioned,
        )
    dist = setup()
    sampler = pair_sampler(source, params, dist)
    task = VideoTextTask(model, get_loss(infonce.NAME, temperature=params.temperature))
    run_training("pretrain", params, task, sampler, dataset, dist, args.params, selection_metrics=SELECTION_METRICS)


if __name__ == "__main__":
    main()
