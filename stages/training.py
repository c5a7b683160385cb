"""What the three training stages share: process setup, MLflow run with lineage, resumable training, outputs.

Outputs of a training stage ``<name>``: ``<out>/model.pt`` (final weights, in the model's checkpoint format),
``<out>/history.csv`` (loss, lr and throughput per logged step, a DVC plot); the resumable training state
lives in ``<checkpoints>/checkpoint.pt``, outside the stage's DVC outputs (which DVC removes before a stage
runs), so that an interrupted run continues where it stopped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from eva02at.atomic import write_text
from eva02at.config import ConfigError
from eva02at.shards import read_frame_spec
from eva02at.tracking import Tracker, read_settings
from eva02at.train.data import ClipPairs
from eva02at.train.distributed import DistInfo, broadcast, cleanup
from eva02at.train.loop import train
from eva02at.train.sampling import CandidateSource, RelevantPairSampler
from eva02at.train.tasks import Task
from stages.common import lineage_tags

log = logging.getLogger(__name__)
EXECUTION_ONLY = ("workers", "log_every", "checkpoint_every", "stop_after_steps")  # train keys results ignore


def check_frames(directory: str | Path, num_frames: int, image_size: int) -> None:
    """Fail before any work when the decoded frames do not fit the model (frame count, image size)."""
    spec = read_frame_spec(directory)
    if spec.num_frames != num_frames and num_frames != 1:
        raise ConfigError(
            f"{directory} holds {spec.num_frames} frames per clip but the model takes {num_frames}: "
            "decode the collection with the model's frame count (frames.collections.*.num_frames)"
        )
    if spec.size != image_size:
        raise ConfigError(
            f"{directory} holds {spec.size} px frames but the model takes {image_size} px: "
            "set frames.size to the model's image size"
        )


def pair_sampler(source: CandidateSource, params: Any, dist: DistInfo, threshold: float = 0.1) -> RelevantPairSampler:
    """The seeded, resumable batch sampler of a training stage, sharded over this process's rank."""
    return RelevantPairSampler(
        source,
        params.train.batch_size,
        seed=params.train.seed,
        threshold=threshold,
        rank=dist.rank,
        world_size=dist.world_size,
    )


def run_training(
    stage: str,
    params: Any,
    task: Task,
    sampler: RelevantPairSampler,
    dataset: ClipPairs,
    dist: DistInfo,
    params_file: str,
) -> None:
    """Train, track and write the stage's outputs; rank 0 alone tracks and writes.

    ``params`` is the stage's params dataclass: ``train``, ``optim``, ``out`` and ``checkpoints`` fields and
    whatever else defines the run (all of it but the output paths is logged and fingerprinted).
    """
    config = {k: v for k, v in asdict(params).items() if k not in ("out", "checkpoints")}
    tracking = read_settings(params_file)
    lead = dist.rank == 0
    tags = lineage_tags(stage) if lead else {}
    deps = {k: v for k, v in tags.items() if k.startswith("dvc.dep.")}
    fingerprint = broadcast(run_fingerprint(config, deps))
    out = Path(params.out)
    tracker = Tracker(tracking.experiment, stage, tracking.uri, enabled=lead and tracking.enabled, tags=tags)
    with tracker:
        tracker.log_params(config)
        result = train(
            task,
            sampler,
            dataset,
            params.train,
            params.optim,
            Path(params.checkpoints) / "checkpoint.pt",
            dist,
            fingerprint,
            on_log=lambda row: tracker.log_metrics(
                {k: row[k] for k in ("loss", "lr", "clips_per_s")}, step=row["step"]
            ),
        )
        if lead:
            task.save(out / "model.pt", {"train_steps": result.steps})
            write_history(out, result.history)
            write_text(out / "config.json", json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
            tracker.log_artifact(out / "model.pt", "checkpoint")
            tracker.log_artifact(out / "history.csv")
            tracker.log_artifact(out / "config.json")
            log.info(
                "%s: %d optimizer steps, final loss %.4f",
                stage,
                result.steps,
                result.history[-1]["loss"] if result.history else float("nan"),
            )
    cleanup()


def run_fingerprint(params: dict, deps: dict[str, str]) -> str:
    """A digest of what defines a run's result: its params and inputs, not how it is executed (loader workers,
    logging and checkpoint intervals, an early stop), so that a run stopped early resumes."""
    train = {k: v for k, v in params["train"].items() if k not in EXECUTION_ONLY}
    return hashlib.sha256(json.dumps([{**params, "train": train}, deps], sort_keys=True).encode()).hexdigest()


def write_history(out: Path, rows: list[dict]) -> None:
    """``<out>/history.csv``: one row per logged optimizer step (only the header when nothing was trained)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["step", "epoch", "loss", "lr", "clips_per_s"])
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "history.csv", buffer.getvalue())
