"""Charades-Ego: zero-shot video-to-class mAP, the class names as text queries.

Queries: the Charades class list (``c000 open cupboard`` lines). Ground truth: the multi-hot labels of a
Charades(-Ego) CSV's ``actions`` column (``c001 0.10 2.30;c008 ...``); the frames stage reads the same CSV's
``id`` and ``length`` for the clips.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from eva02at.core.errors import BadInput
from eva02at.evaluation.benchmarks import Benchmark, BenchmarkParams, Queries, register_benchmark, similarity
from eva02at.evaluation.metrics import charades_map
from eva02at.export.embeddings import Embeddings


def read_class_names(path: str | os.PathLike) -> Queries:
    """(class id, class name) of a Charades class list: lines ``c000 open cupboard``."""
    ids, names = [], []
    for line, text in enumerate(Path(path).read_text().splitlines(), start=1):
        if not text.strip():
            continue
        class_id, _, name = text.strip().partition(" ")
        if not name:
            raise BadInput(f"{path}:{line}: expected '<class id> <class name>', got {text!r}")
        ids.append(class_id)
        names.append(name.strip())
    return ids, names


def read_charades_labels(path: str | os.PathLike, class_ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Video ids and multi-hot labels ``(videos, classes)`` uint8 of a Charades(-Ego) CSV's ``actions`` column."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("id", "actions") if c not in frame.columns]
    if missing:
        raise BadInput(f"{path}: missing column(s) {missing}")
    column = {class_id: k for k, class_id in enumerate(class_ids)}
    labels = np.zeros((len(frame), len(class_ids)), dtype=np.uint8)
    for row, actions in enumerate(frame["actions"]):
        for action in filter(None, (a.strip() for a in actions.split(";"))):
            class_id = action.split()[0]
            if class_id not in column:
                raise BadInput(f"{path}: line {row + 2}: action class {class_id!r} is not in the class list")
            labels[row, column[class_id]] = 1
    return frame["id"].tolist(), labels


@register_benchmark("charades_ego")
class CharadesEgo(Benchmark):
    def __init__(self, params: BenchmarkParams) -> None:
        super().__init__(params)
        self.class_ids, _ = read_class_names(params.queries)
        self.video_ids, self.labels = read_charades_labels(params.truth, self.class_ids)

    @classmethod
    def read_queries(cls, params: BenchmarkParams) -> Queries:
        return read_class_names(params.queries)

    def score(self, videos: Embeddings, texts: Embeddings) -> dict[str, float]:
        scores = similarity(videos, texts, self.video_ids, self.class_ids, "Charades-Ego")  # (videos, classes)
        return {"mAP": charades_map(scores, self.labels)}

    def chance(self, rng: np.random.Generator) -> dict[str, float]:
        return {"mAP": charades_map(rng.standard_normal(self.labels.shape), self.labels)}

    def clip_ids(self) -> list[str]:
        return list(self.video_ids)

    def without(self, missing: set[str]) -> CharadesEgo:
        kept = [k for k, video in enumerate(self.video_ids) if video not in missing]
        restricted = copy.copy(self)
        restricted.video_ids, restricted.labels = [self.video_ids[k] for k in kept], self.labels[kept]
        return restricted
