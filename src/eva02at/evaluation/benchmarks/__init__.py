"""Benchmarks: one module each, registered where it is defined, found by name.

A benchmark module defines a :class:`Benchmark` subclass and registers it with :func:`register_benchmark`
(as timm registers models); this package imports its modules, so the stages find a benchmark by the name of
its params entry (``benchmarks.entries.<name>``). A benchmark declares its params (a dataclass, checked by
``eva02at.core.config``), reads its query texts (what the export embeds) and its ground truth, scores a (video,
text) export pair and knows what chance scores. Scores look vectors up by id, never by row position or text:
exports keep the frames manifest's order, which need not be the annotation's, and EK100 sentence texts repeat.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from eva02at.core.config import ConfigError, from_dict
from eva02at.core.errors import BadInput
from eva02at.export.embeddings import Embeddings

Queries = tuple[list[str], list[str]]  # (query ids, texts) in file order


@dataclass
class BenchmarkParams:
    """A params entry: the clips scored, and the benchmark's two files (the same file may be both)."""

    collection: str  # a frames collection: its videos are exported as <collection>_video
    queries: str  # the query texts, exported as <benchmark>_text
    truth: str  # the ground truth the scores are computed against


class Benchmark(ABC):
    """A benchmark with its ground truth read: scores export pairs and chance draws.

    ``score`` takes any (video, text) pair, so that one model's queries can be scored against another
    model's gallery; the evaluation decides which pairs are meaningful (:func:`score_model`). A benchmark
    that can show retrieval examples for the grid also defines ``examples(videos, texts, count, top)``,
    returning a list of :class:`RetrievalExample`.
    """

    name: ClassVar[str] = ""  # set by register_benchmark
    Params: ClassVar[type[BenchmarkParams]] = BenchmarkParams  # a subclass with more fields for more params

    def __init__(self, params: BenchmarkParams) -> None:
        self.params = params

    @classmethod
    @abstractmethod
    def read_queries(cls, params: BenchmarkParams) -> Queries:
        """(query ids, texts) of ``params.queries``: what the export embeds for this benchmark."""

    @abstractmethod
    def score(self, videos: Embeddings, texts: Embeddings) -> dict[str, float]:
        """Metrics (fractions) of the similarities of a video and a text export."""

    @abstractmethod
    def chance(self, rng: np.random.Generator) -> dict[str, float]:
        """The same metrics for one draw of standard-normal similarities from ``rng``."""

    @abstractmethod
    def clip_ids(self) -> list[str]:
        """The clips of the collection that the scores need."""

    @abstractmethod
    def without(self, missing: set[str]) -> Benchmark:
        """This benchmark scored without the clips ``missing`` (e.g. clips that failed to decode)."""


def missing_clips(benchmark: Benchmark, videos: Embeddings) -> list[str]:
    """The clips ``benchmark`` needs that the video export lacks, in the benchmark's order."""
    exported = set(videos.ids)
    return [clip for clip in benchmark.clip_ids() if clip not in exported]


B = TypeVar("B", bound=type[Benchmark])
BENCHMARKS: dict[str, type[Benchmark]] = {}


def register_benchmark(name: str) -> Callable[[B], B]:
    """Register a Benchmark subclass under ``name``, the key of its params entry and of its metrics."""

    def register(cls: B) -> B:
        if name in BENCHMARKS:
            raise ValueError(f"benchmark {name!r} is registered twice")
        cls.name = name
        BENCHMARKS[name] = cls
        return cls

    return register


def benchmark_params(name: str, values: Any, where: str) -> BenchmarkParams:
    """A params entry checked against its benchmark's params dataclass; errors name ``where`` (the key path)."""
    if name not in BENCHMARKS:
        raise ConfigError(f"{where}: no benchmark module registers {name!r}; known: {sorted(BENCHMARKS)}")
    return from_dict(BENCHMARKS[name].Params, values, where)


def load_benchmark(name: str, params: BenchmarkParams) -> Benchmark:
    """Benchmark ``name`` with its ground truth read from ``params``' files."""
    return BENCHMARKS[name](params)


def similarity(
    videos: Embeddings, texts: Embeddings, video_ids: Sequence[str], text_ids: Sequence[str], what: str
) -> np.ndarray:
    """Cosine similarity ``[len(video_ids), len(text_ids)]`` of unit-norm exports, rows and columns by id."""
    return videos.select(video_ids, what) @ texts.select(text_ids, what).T


def require_one_checkpoint(videos: Embeddings, texts: Embeddings) -> None:
    """Refuse a pair exported with different checkpoints: two models' embedding spaces do not align."""
    if videos.info.checkpoint_sha256 != texts.info.checkpoint_sha256:
        raise BadInput(
            f"{videos.path} ({videos.info.checkpoint}) and {texts.path} ({texts.info.checkpoint}) were "
            "exported with different checkpoints: their similarities mean nothing"
        )


def score_model(
    benchmarks: Mapping[str, Benchmark], exports: Mapping[str, tuple[Embeddings, Embeddings]]
) -> dict[str, dict[str, float]]:
    """Metrics of one model: ``exports[name]`` is its (video, text) pair for benchmark ``name``."""
    missing = [name for name in benchmarks if name not in exports]
    if missing:
        raise ValueError(f"no exports for benchmark(s) {missing}")
    for name in benchmarks:
        require_one_checkpoint(*exports[name])
    return {name: benchmark.score(*exports[name]) for name, benchmark in benchmarks.items()}


def chance(benchmarks: Mapping[str, Benchmark], seed: int = 0, draws: int = 5) -> dict[str, dict[str, float]]:
    """Expected metrics of chance: each benchmark's ``chance`` averaged over ``draws`` draws.

    The draws come from one generator seeded with ``seed``, taking turns: the first draw of every benchmark
    in the order of ``benchmarks``, then the second, ... . A benchmark's chance row therefore also depends on
    the benchmarks before it (within the noise of ``draws`` draws).
    """
    if draws < 1:
        raise ValueError(f"the chance row needs at least one draw, got {draws}")
    rng = np.random.default_rng(seed)
    results = [{name: benchmark.chance(rng) for name, benchmark in benchmarks.items()} for _ in range(draws)]
    return {
        name: {key: float(np.mean([r[name][key] for r in results])) for key in results[0][name]} for name in results[0]
    }


@dataclass(frozen=True)
class RetrievedClip:
    clip_id: str
    score: float
    relevance: float  # ground-truth relevance of the clip to the query: 1 relevant, in (0, 1) partly


@dataclass(frozen=True)
class RetrievalExample:
    """A query and its best clips, for the retrieval grid (a benchmark that shows some has ``examples``)."""

    query_id: str
    text: str
    hits: list[RetrievedClip]  # best first


# The benchmarks of this package: each registers itself when imported (a new one is a module and its name here).
from eva02at.evaluation.benchmarks import charades_ego, egomcq, ek100_mir  # noqa: E402, F401
