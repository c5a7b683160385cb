"""EPIC-KITCHENS-100 multi-instance retrieval: mAP and nDCG, video-to-text and text-to-video.

Queries: a CSV of the test split's sentences (``narration_id``, ``narration``): the ``soft_labels`` stage's
official table (each text from its video row) or the sentence CSV as published. Ground truth: a relevancy
table of the test split that the ``soft_labels`` stage writes (``eva02at.data.labels``): the exact one, or the
peers' pickle as a table (``eva02at.data.ek100_peers``).
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pandas as pd

from eva02at.core.errors import BadInput
from eva02at.data.labels import RelevancyTable
from eva02at.evaluation.benchmarks import (
    Benchmark,
    BenchmarkParams,
    Queries,
    RetrievalExample,
    RetrievedClip,
    register_benchmark,
    similarity,
)
from eva02at.evaluation.metrics import ek100_mir
from eva02at.export.embeddings import Embeddings


def read_sentences(path: str | os.PathLike) -> Queries:
    """(narration_id, narration) of an EK100 sentence CSV, in file order."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("narration_id", "narration") if c not in frame.columns]
    if missing:
        raise BadInput(f"{path}: missing column(s) {missing}")
    return frame["narration_id"].tolist(), frame["narration"].tolist()


@register_benchmark("ek100_mir")
class Ek100Mir(Benchmark):
    def __init__(self, params: BenchmarkParams) -> None:
        super().__init__(params)
        self.table = RelevancyTable.load(params.truth)
        self.relevancy = self.table.dense()  # (videos, sentences) float64
        self.video_ids, self.sentence_ids = list(self.table.video_ids), list(self.table.sentence_ids)
        self.video_rows = np.arange(len(self.video_ids))  # rows of ``table`` of the videos scored

    @classmethod
    def read_queries(cls, params: BenchmarkParams) -> Queries:
        return read_sentences(params.queries)

    def score(self, videos: Embeddings, texts: Embeddings) -> dict[str, float]:
        return ek100_mir(similarity(videos, texts, self.video_ids, self.sentence_ids, "EK100 MIR"), self.relevancy)

    def chance(self, rng: np.random.Generator) -> dict[str, float]:
        return ek100_mir(rng.standard_normal(self.relevancy.shape, dtype=np.float32), self.relevancy)

    def clip_ids(self) -> list[str]:
        return list(self.video_ids)

    def without(self, missing: set[str]) -> Ek100Mir:
        kept = np.array([k for k, video in enumerate(self.video_ids) if video not in missing], dtype=np.int64)
        restricted = copy.copy(self)
        restricted.video_ids = [self.video_ids[k] for k in kept]
        restricted.relevancy, restricted.video_rows = self.relevancy[kept], self.video_rows[kept]
        return restricted

    def examples(self, videos: Embeddings, texts: Embeddings, count: int = 4, top: int = 5) -> list[RetrievalExample]:
        """Text-to-video results of ``count`` sentences spread evenly over the sentence list."""
        text_of = dict(zip(texts.ids, texts.table["text"].to_pylist(), strict=True))
        picked = np.unique(np.linspace(0, len(self.sentence_ids) - 1, count).round().astype(int))
        query_ids = [self.sentence_ids[j] for j in picked]
        scores = similarity(videos, texts, self.video_ids, query_ids, "the retrieval grid")  # (videos, picked)
        relevance = self.table.lookup(self.video_rows, picked)  # (videos, picked)
        examples = []
        for column, query_id in enumerate(query_ids):
            order = np.argsort(-scores[:, column], kind="stable")[:top]
            hits = [
                RetrievedClip(self.video_ids[i], float(scores[i, column]), float(relevance[i, column])) for i in order
            ]
            examples.append(RetrievalExample(query_id, text_of[query_id], hits))
        return examples
