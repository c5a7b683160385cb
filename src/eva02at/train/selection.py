"""Best-epoch selection: evaluate every N epochs during training and keep the best weights beside the last.

The peers report a selected epoch: AVION keeps the pretraining epoch with the best zero-shot EK100 mAP and the
SMS fine-tuning script evaluates every 5 epochs and keeps the best. The training loop only calls
``on_epoch_end(epoch)``; :class:`BestEpoch` is that callback, given an ``evaluate`` function (model -> score,
higher is better) that the caller builds, e.g. from a benchmark of ``eva02at.evaluation.benchmarks``. The best weights
are written to their own checkpoint file with the selection record in its ``extra``, so an interrupted run
that resumes keeps the best score seen so far (an epoch evaluated again gives the same score).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from eva02at.core.atomic import atomic_path
from eva02at.core.config import PositiveInt
from eva02at.train.tasks import Task

log = logging.getLogger(__name__)


@dataclass
class SelectParams:
    """``train.select``: which evaluation picks the kept epoch (None: the final weights)."""

    benchmark: str  # a module of eva02at.evaluation.benchmarks (its params: collection, queries, truth below)
    metric: str  # a key of that benchmark's scores; higher is better
    collection: str  # the frames collection evaluated: a validation split, not a benchmark's test collection
    queries: str
    truth: str
    every_epochs: PositiveInt = 1  # and after the last epoch
    frames: PositiveInt | None = None  # frames per clip of the evaluation (the collection's count must match)
    on_test_set: bool = False  # true: select on a benchmark's test collection, as the peers report


@dataclass
class Selection:
    """What was selected: the record kept in the checkpoints' ``extra["select"]`` and written to metrics."""

    benchmark: str
    metric: str
    collection: str
    on_test_set: bool
    epoch: int | None = None  # 1-based epoch of the best score; None before the first evaluation
    score: float | None = None
    scores: dict[int, float] | None = None  # every evaluated epoch's score

    def as_record(self) -> dict:
        return {
            "benchmark": self.benchmark,
            "metric": self.metric,
            "collection": self.collection,
            "on_test_set": self.on_test_set,
            "epoch": self.epoch,
            "score": self.score,
            "scores": {str(k): v for k, v in sorted((self.scores or {}).items())},
        }


class BestEpoch:
    """``on_epoch_end`` callback of :func:`eva02at.train.loop.train` that keeps the best epoch's weights.

    Epoch e (0-based, as the loop counts) is evaluated when ``e + 1`` is a multiple of ``every_epochs`` or the
    last epoch. Only the ``lead`` process evaluates and writes (other processes continue to the next step's
    collective and wait there). ``on_score(epoch, score)`` receives each score (e.g. for MLflow).
    """

    def __init__(
        self,
        task: Task,
        evaluate: Callable[[nn.Module], float],
        config: SelectParams,
        path: Path,
        epochs: int,
        fingerprint: str,
        lead: bool = True,
        on_score: Callable[[int, float], None] | None = None,
    ):
        self.task, self.evaluate, self.config, self.path = task, evaluate, config, Path(path)
        self.epochs, self.fingerprint, self.lead, self.on_score = epochs, fingerprint, lead, on_score
        self.selection = Selection(config.benchmark, config.metric, config.collection, config.on_test_set, scores={})
        self._restore()

    def _restore(self) -> None:
        """The best score so far from an earlier execution of the same run (its best checkpoint)."""
        if not self.path.is_file():
            return
        extra = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True).get("extra", {})
        if extra.get("fingerprint") != self.fingerprint:
            return
        record = extra["select"]
        self.selection.epoch, self.selection.score = record["epoch"], record["score"]
        self.selection.scores = {int(k): float(v) for k, v in record["scores"].items()}

    def due(self, epoch: int) -> bool:
        return (epoch + 1) % self.config.every_epochs == 0 or epoch + 1 == self.epochs

    def __call__(self, epoch: int) -> None:
        if not (self.lead and self.due(epoch)):
            return
        was_training = self.task.model.training
        with torch.random.fork_rng(devices=[]):  # training draws the same random numbers with or without it
            score = float(self.evaluate(self.task.model))
        self.task.model.train(was_training)
        number = epoch + 1
        self.selection.scores = {**(self.selection.scores or {}), number: score}
        log.info("epoch %d: %s %s = %.4f", number, self.config.benchmark, self.config.metric, score)
        if self.on_score is not None:
            self.on_score(number, score)
        if self.selection.score is None or score > self.selection.score:  # ties keep the earlier epoch
            self.selection.epoch, self.selection.score = number, score
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.task.save(self.path, {"fingerprint": self.fingerprint, "select": self.selection.as_record()})
        elif self.path.is_file():  # the record of every score stays with the best weights
            data = torch.load(self.path, map_location="cpu", weights_only=True)
            data["extra"]["select"] = self.selection.as_record()
            with atomic_path(self.path) as tmp:
                torch.save(data, tmp)
