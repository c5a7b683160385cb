"""What the three training stages share: process setup, MLflow run with lineage, resumable training, outputs.

Outputs of a training stage ``<name>``: ``<out>/model.pt`` (the final weights, or with ``train.select`` the best
evaluated epoch's, the final ones then in ``<out>/last.pt``; ``metrics/<name>_select.json`` says which), in the
model's checkpoint format,
``<out>/history.csv`` (loss and lr per logged step, a DVC plot; the same bytes for the same inputs, so
throughput goes to MLflow and the log only); the resumable training state lives in
``<checkpoints>/<fingerprint>/checkpoint.pt`` (one resume point per run configuration, with the save before
it as fallback: ``eva02at.train.resume``), outside the stage's DVC outputs (which DVC removes before a stage
runs), so that an interrupted run continues where it stopped, in the same MLflow run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import socket
from dataclasses import asdict
from pathlib import Path
from typing import Any

from eva02at.core.atomic import write_text
from eva02at.core.config import ConfigError
from eva02at.core.distributed import DistInfo, broadcast, cleanup
from eva02at.core.tracking import Tracker
from eva02at.data.shards import read_frame_spec
from eva02at.models import VideoCLIP, load_checkpoint_file
from eva02at.train.data import ClipPairs
from eva02at.train.loop import train
from eva02at.train.resume import resumable_state, resume_point
from eva02at.train.sampling import CandidateSource, RelevantPairSampler
from eva02at.train.selection import BestEpoch
from eva02at.train.tasks import Task
from stages.lineage import lineage_tags, stage_run
from stages.selection import selection_evaluator, selection_inputs

log = logging.getLogger(__name__)
EXECUTION_ONLY = ("workers", "log_every", "checkpoint_every", "stop_after_steps")  # train keys results ignore
HISTORY_COLUMNS = ("step", "epoch", "loss", "lr")
UNLOGGED = "unlogged_metrics.jsonl"  # beside the checkpoint: metrics a tracking outage kept from the server


def check_frames(directory: str | Path, num_frames: int, image_size: int) -> None:
    """Fail before any work when the decoded frames do not fit the model (frame count, image size).

    Frames may be stored larger than the model's input (training collections keep room to crop): the step
    crops and resizes them to the model's square."""
    spec = read_frame_spec(directory)
    if spec.num_frames != num_frames and num_frames != 1:
        raise ConfigError(
            f"{directory} holds {spec.num_frames} frames per clip but the model takes {num_frames}: "
            "decode the collection with the model's frame count (frames.collections.*.num_frames)"
        )
    if min(spec.height, spec.width) < image_size:
        raise ConfigError(
            f"{directory} holds {spec.height}x{spec.width} px frames but the model takes {image_size} px: "
            "set frames.size to at least the model's image size"
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
    inputs: dict[str, str] | None = None,
    selection_metrics: str | None = None,
) -> None:
    """Train, track and write the stage's outputs; rank 0 alone tracks and writes.

    ``params`` is the stage's params dataclass: ``train``, ``optim``, ``out`` and ``checkpoints`` fields and
    whatever else defines the run (all of it but the output paths is logged and fingerprinted). ``inputs``
    name inputs that DVC does not hash (e.g. the compatibility reference, ``{"compatible_with.sha256": ...}``):
    fingerprinted beside the DVC deps and tagged. ``selection_metrics`` (a JSON file) receives which weights
    ``model.pt`` holds: the final ones, or the selected epoch with its score (``train.select``).
    """
    select = params.train.select
    evaluate = None
    if select is not None:
        if not isinstance(task.model, VideoCLIP):
            raise ConfigError(f"{stage}: train.select evaluates video models only; set it to null")
        evaluate = selection_evaluator(select, task.model, dist.device, params_file)
        inputs = {**(inputs or {}), **selection_inputs(select)}
    config = {k: v for k, v in asdict(params).items() if k not in ("out", "checkpoints")}
    lead = dist.rank == 0
    tags = {**lineage_tags(stage), **(inputs or {})} if lead else {}
    deps = {k: v for k, v in tags.items() if k.startswith("dvc.dep.")} | (inputs or {})
    fingerprint = broadcast(run_fingerprint(config, deps))
    out, checkpoint = Path(params.out), resume_point(params.checkpoints, fingerprint)
    with open_tracker(stage, params_file, tags, Path(params.checkpoints), fingerprint, enabled=lead) as tracker:
        tracker.log_params(config)
        best = None
        if select is not None:
            best = BestEpoch(
                task,
                evaluate,
                select,
                checkpoint.parent / "best.pt",
                params.train.epochs,
                fingerprint,
                lead,
                on_score=lambda epoch, score: tracker.log_metrics({f"select.{select.metric}": score}, step=epoch),
            )
        result = train(
            task,
            sampler,
            dataset,
            params.train,
            params.optim,
            checkpoint,
            dist,
            fingerprint,
            on_log=lambda row: tracker.log_metrics(
                {k: row[k] for k in ("loss", "lr", "clips_per_s", "seconds_per_step")}, step=row["step"]
            ),
            run_id=tracker.run_id,
            on_epoch_end=best,
        )
        if lead:
            record = save_models(task, out, result.steps, best)
            if selection_metrics is not None:
                write_text(selection_metrics, json.dumps({stage: {"select": record}}, indent=2) + "\n")
                tracker.log_artifact(selection_metrics)
            tracker.log_metrics(
                {f"select.{k}": v for k, v in record.items() if k in ("epoch", "score") and v is not None}
            )
            if best is not None:
                tracker.log_artifact(out / "last.pt", "checkpoint")
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


def save_models(task: Task, out: Path, steps: int, best: BestEpoch | None) -> dict:
    """``<out>/model.pt``: the selected weights (the best evaluated epoch's, else the final ones), and with a
    selection ``<out>/last.pt``: the final weights beside them. Returns the selection record for metrics."""
    if best is None:
        task.save(out / "model.pt", {"train_steps": steps})
        return {"selected": "final", "epoch": None, "score": None}
    task.save(out / "last.pt", {"train_steps": steps})
    record = best.selection.as_record()
    if best.selection.epoch is None:
        log.warning("no epoch was evaluated before training stopped: %s keeps the final weights", out / "model.pt")
    else:
        task.model.load_state_dict(load_checkpoint_file(best.path)["state_dict"])
    task.save(out / "model.pt", {"train_steps": steps, "select": record})
    return {"selected": "final" if best.selection.epoch is None else "best", **record}


def open_tracker(
    stage: str, params_file: str, tags: dict[str, str], checkpoints: Path, fingerprint: str, enabled: bool
) -> Tracker:
    """The MLflow run of this training: the run of a resumable checkpoint, continued, or a new one.

    Runs of this stage in this checkpoint folder and on this host that are still RUNNING belong to killed
    executions, of this configuration or of any other one (whose rerun DVC may serve from its run cache, never
    executing the stage), and are marked KILLED first (DVC never runs a stage twice at once in one project);
    a resumed configuration sets its run RUNNING again. Metrics that a tracking outage kept from the server are
    written beside the checkpoint and sent when the run is continued.
    """
    checkpoint = resume_point(checkpoints, fingerprint)
    project = {"dvc.stage": stage, "train.checkpoints": str(checkpoints.resolve()), "train.host": socket.gethostname()}
    run_id = resumable_state(checkpoint, fingerprint).get("run_id") if enabled else None
    tracker = stage_run(
        stage,
        params_file,
        lead=enabled,
        tags={"train.checkpoint": str(checkpoint.resolve())},
        lineage=tags,
        execution=project,
        run_id=run_id,
        unlogged=checkpoint.with_name(UNLOGGED),
    )
    if tracker.continued:
        log.info("continuing MLflow run %s of the resumed training", tracker.run_id)
    return tracker


def run_fingerprint(params: dict, deps: dict[str, str]) -> str:
    """A digest of what defines a run's result: its params and inputs, not how it is executed (loader workers,
    logging and checkpoint intervals, an early stop), so that a run stopped early resumes."""
    train = {k: v for k, v in params["train"].items() if k not in EXECUTION_ONLY}
    return hashlib.sha256(json.dumps([{**params, "train": train}, deps], sort_keys=True).encode()).hexdigest()


def write_history(out: Path, rows: list[dict]) -> None:
    """``<out>/history.csv``: one row per logged optimizer step (only the header when nothing was trained)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "history.csv", buffer.getvalue())
