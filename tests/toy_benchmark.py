"""A toy benchmark, written as a module of ``eva02at.evaluation.benchmarks`` would be: text-to-video recall at k.

Queries: a CSV ``query_id,text``. Ground truth: a CSV ``query_id,clip_id``, the one relevant clip of each
query; the gallery is the truth's clips. Importing the module registers it, as for the package's own.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd

from eva02at.core.config import PositiveInt
from eva02at.evaluation.benchmarks import Benchmark, BenchmarkParams, Queries, register_benchmark, similarity
from eva02at.export.embeddings import Embeddings

NAME = "toy_recall"


@dataclass
class ToyParams(BenchmarkParams):
    k: PositiveInt = 1  # a hit is the relevant clip among the top k


@register_benchmark(NAME)
class ToyRecall(Benchmark):
    Params = ToyParams

    def __init__(self, params: ToyParams) -> None:
        super().__init__(params)
        truth = pd.read_csv(params.truth, dtype=str)
        self.query_ids = truth["query_id"].tolist()
        self.gallery = list(dict.fromkeys(truth["clip_id"]))
        self.relevant = np.array([self.gallery.index(clip) for clip in truth["clip_id"]])  # per query

    @classmethod
    def read_queries(cls, params: BenchmarkParams) -> Queries:
        queries = pd.read_csv(params.queries, dtype=str)
        return queries["query_id"].tolist(), queries["text"].tolist()

    def score(self, videos: Embeddings, texts: Embeddings) -> dict[str, float]:
        return self.recall(similarity(videos, texts, self.gallery, self.query_ids, "toy recall"))

    def chance(self, rng: np.random.Generator) -> dict[str, float]:
        return self.recall(rng.standard_normal((len(self.gallery), len(self.query_ids))))

    def clip_ids(self) -> list[str]:
        return list(self.gallery)

    def without(self, missing: set[str]) -> ToyRecall:
        """Without the missing clips, and without the queries whose relevant clip is missing."""
        relevant = [self.gallery[k] for k in self.relevant]
        queries = [q for q, clip in enumerate(relevant) if clip not in missing]
        restricted = copy.copy(self)
        restricted.gallery = [clip for clip in self.gallery if clip not in missing]
        restricted.query_ids = [self.query_ids[q] for q in queries]
        restricted.relevant = np.array([restricted.gallery.index(relevant[q]) for q in queries])
        return restricted

    def recall(self, scores: np.ndarray) -> dict[str, float]:
        """Recall at k of ``(gallery, queries)`` scores."""
        top = np.argsort(-scores, axis=0, kind="stable")[: self.params.k]  # (k, queries)
        return {f"recall_at_{self.params.k}": float((top == self.relevant).any(axis=0).mean())}
