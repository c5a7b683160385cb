"""``finetune`` stage: multi-instance retrieval fine-tuning with soft labels (EK100; Charades-Ego as
``python -m stages.finetune finetune_charades``: any params section of this schema is a fine-tuning stage, the
relevancy table and its captions say what is learnt).

Starts from the pretrained video model (its temporal embedding interpolated to the fine-tuning frame count),
pairs every training video with a caption drawn among the relevant ones, and trains with the loss named by
``loss`` (one of ``eva02at.train.losses.finetuning.CHOICES``, its params in ``losses.<name>``) on the relevance
of the gathered global batch. With ``compatible_with`` (an earlier video checkpoint, e.g. the champion), the
same loss on the cross pairs with that frozen model is added (``compatibility_form`` picks the term;
``compatibility_init: procrustes`` first rotates the model's joint space onto that model's:
``eva02at.models.compatibility``), and the new checkpoint records the chain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

from eva02at.core.config import Fraction, PositiveFloat, PositiveInt
from eva02at.core.distributed import setup
from eva02at.core.errors import BadInput
from eva02at.data.labels import RelevancyTable
from eva02at.data.shards import FrameShards
from eva02at.models import load_video_clip
from eva02at.models.compatibility import load_reference, rotate_onto
from eva02at.train.data import ClipPairs
from eva02at.train.loop import TrainParams
from eva02at.train.losses import configured_loss
from eva02at.train.losses.cross_model import CompatibilityForm
from eva02at.train.losses.finetuning import LossesParams, LossName
from eva02at.train.optim import OptimParams
from eva02at.train.tasks import VideoTextTask
from stages.common import stage_main, stage_params
from stages.training import check_frames, pair_sampler, run_training

log = logging.getLogger(__name__)
PROBE_TEXTS = 64  # training captions on which the reference must tokenize as the new model does

SELECTION_METRICS = "metrics/{section}_select.json"  # which weights model.pt holds (train.select)


@dataclass
class FinetuneParams:
    init: str  # video checkpoint (the pretrain stage's model.pt)
    frames: str  # decoded train split (EK100, Charades-Ego's first-person videos)
    sentences: str  # CSV of the captions, columns of the relevancy table: narration_id, narration
    relevancy: str  # the soft_labels stage's table of the train split
    out: str
    checkpoints: str
    num_frames: PositiveInt = 16
    loss: LossName = "sms"
    losses: LossesParams = field(default_factory=LossesParams)  # e.g. {sms: {margin: 0.6}}; a loss left out: defaults
    relevance_threshold: Fraction = 0.1  # captions drawn among those with R above this
    compatible_with: str | None = None  # an earlier video checkpoint whose galleries the new model must search
    compatibility_weight: PositiveFloat = 1.0  # of the compatibility term against it (the task loss's weight is 1)
    compatibility_form: CompatibilityForm = "cross"  # the term: a key of COMPATIBILITY_TERMS (README)
    compatibility_init: Literal["as_is", "procrustes"] = "as_is"  # procrustes: rotate the model's joint space
    # onto the reference's before fine-tuning (eva02at.models.compatibility.rotate_onto)
    train: TrainParams = field(default_factory=TrainParams)
    optim: OptimParams = field(default_factory=OptimParams)


def captions(sentences_csv: str, table: RelevancyTable) -> list[str]:
    """Sentence texts in the table's column order (rows matched by narration_id, never by text)."""
    text = pd.read_csv(sentences_csv).set_index("narration_id")["narration"]
    missing = [s for s in table.sentence_ids if s not in text.index]
    if missing:
        raise BadInput(f"{sentences_csv}: no sentence for narration_id(s) {missing[:5]} of the relevancy table")
    return text.loc[list(table.sentence_ids)].astype(str).tolist()


@stage_main
def main() -> None:
    params, args = stage_params("finetune", FinetuneParams, __doc__, section_argument=True)
    loss = configured_loss(params.loss, params.losses)
    model = load_video_clip(params.init)
    if model.num_frames != params.num_frames:
        model.set_num_frames(params.num_frames)  # linear interpolation of the temporal embedding
    check_frames(params.frames, params.num_frames, model.image_size)
    table = RelevancyTable.load(params.relevancy)
    texts = captions(params.sentences, table)
    dataset = ClipPairs(FrameShards(params.frames), list(table.video_ids), texts)
    reference, inputs = None, {}
    if params.compatible_with is not None:
        reference = load_reference(
            params.compatible_with,
            model,
            params.compatibility_weight,
            texts[:PROBE_TEXTS],
            params.compatibility_form,
        )
        inputs = {"compatible_with.sha256": reference.sha256}
        if params.compatibility_init == "procrustes":
            aligned = rotate_onto(model, reference.model, texts)
            log.info(
                "joint space rotated onto %s: mean cosine %.3f on the training captions",
                params.compatible_with,
                aligned,
            )
    dist = setup()
    sampler = pair_sampler(table, params, dist, threshold=params.relevance_threshold)
    task = VideoTextTask(model, loss, relevancy=table, reference=reference)
    selection_metrics = SELECTION_METRICS.format(section=args.section)
    run_training(args.section, params, task, sampler, dataset, dist, args.params, inputs, selection_metrics)


if __name__ == "__main__":
    main()
