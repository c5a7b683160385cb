"""``image_clip`` stage: the EVA02-CLIP image checkpoint that pretraining starts from.

With ``weights`` set (an open_clip EVA02-CLIP weights file downloaded once) the weights are imported
strictly and checked on the sample frames. Without, a small image CLIP is trained on single frames and
captions of the pretraining corpus and saved in the same form, so pretraining runs the real inflation path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch
from pydantic import AfterValidator

from eva02at.core.config import PositiveFloat, read_params
from eva02at.core.distributed import setup
from eva02at.data.shards import FrameShards
from eva02at.models import create_image_clip, save_image_clip
from eva02at.models.sizes import check_frames_size, known_model
from eva02at.train.data import ClipPairs, Collate, OwnCaptions, clip_frames
from eva02at.train.loop import NonFiniteLoss, TrainParams
from eva02at.train.losses import get_loss, infonce
from eva02at.train.optim import OptimParams
from eva02at.train.tasks import ImageTextTask
from stages.common import stage_main, stage_params
from stages.training import check_frames, pair_sampler, run_training, write_history

log = logging.getLogger(__name__)


@dataclass
class ImageClipParams:
    model: Annotated[str, AfterValidator(known_model)]  # open_clip's EVA02-B-16, EVA02-L-14, ... or a tiny one
    frames: str  # decoded pretraining corpus: one frame per clip is used
    out: str
    checkpoints: str
    weights: str | None = None  # EVA02-CLIP image-text weights file; when set, imported instead of trained
    temperature: PositiveFloat = 0.05
    train: TrainParams = field(default_factory=TrainParams)
    optim: OptimParams = field(default_factory=OptimParams)


def frames_size(params_file: str) -> object:
    """``frames.size`` of the params file (None when absent): the frames stage validates the section itself."""
    frames = read_params(params_file).get("frames")
    return frames.get("size") if isinstance(frames, dict) else None


@stage_main
def main() -> None:
    params, args = stage_params("image_clip", ImageClipParams, __doc__)
    check_frames_size(params.model, frames_size(args.params), args.params)
    torch.manual_seed(params.train.seed)  # the initialisation of a model trained from scratch
    model = create_image_clip(params.model, params.weights)
    check_frames(params.frames, 1, int(model.visual.image_size[0]))
    shards = FrameShards(params.frames)
    clips = shards.ids  # one Arrow array: no Python string per clip
    texts = shards.texts(clips)
    task = ImageTextTask(model, params.model, get_loss(infonce.NAME, temperature=params.temperature))
    if params.weights:
        check_imported(task, ClipPairs(shards, clips, texts, single_frame=True))
        save_image_clip(model, params.model, Path(params.out) / "model.pt")
        write_history(Path(params.out), [])  # nothing trained: the training-curve plot shows no image_clip line
        return
    dist = setup()
    sampler = pair_sampler(OwnCaptions(len(clips)), params, dist)
    dataset = ClipPairs(shards, clips, texts, single_frame=True)
    run_training("image_clip", params, task, sampler, dataset, dist, args.params)


@torch.no_grad()
def check_imported(task: ImageTextTask, dataset: ClipPairs, count: int = 16) -> None:
    """Imported weights must give a finite loss on real frames and captions."""
    batch = Collate(task.tokenizer)([dataset[(0, i, i)] for i in range(min(count, len(dataset)))])
    frames = clip_frames(batch, torch.device("cpu"), task.image_size, task.mean, task.std)
    task.model.eval()
    loss = task.loss(task.model, frames, batch["tokens"], batch)
    if not torch.isfinite(loss):
        raise NonFiniteLoss(f"imported weights give a non-finite loss ({loss.item()}) on the sample frames")
    log.info("imported %s: InfoNCE on %d sample pairs = %.4f", task.model_name, len(batch["texts"]), loss)


if __name__ == "__main__":
    main()
