"""FAISS indexes over a video export: the nearest clips of unit-norm queries, at any gallery size.

- ``flat``: exact inner product (``IndexFlatIP``) over float32, 4 D bytes a clip. Small galleries use it: a
  scan of 100k 256-d clips costs about 11 ms on one core, less than building any index, and loses nothing.
- ``ivf``: float vectors in k-means cells (``IndexIVFFlat``); a query scans its ``nprobe`` nearest cells.
- ``hnsw``: a navigable small-world graph over float vectors (``IndexHNSWFlat``).
- ``binary``: Hamming search over the export's binary codes (``eva02at.export.codes``; ``IndexBinaryFlat``, or
  ``IndexBinaryIVF`` when ``nlist`` > 0) for a shortlist of ``shortlist`` clips, re-ranked by the float (or int8)
  inner product. Memory holds the codes alone; the re-ranking reads ``shortlist`` rows per query.

What this module adds to FAISS: the choice by gallery size, the re-ranking of a Hamming shortlist, and one
result order for every index (best score first, ties in gallery order, as a stable sort of exact scores gives).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np

from eva02at.core.errors import PipelineError
from eva02at.export.codes import BinaryQuantizer, Codes

KINDS = ("auto", "flat", "ivf", "hnsw", "binary")
RERANK = ("float", "int8")
_POINTS_PER_CELL = 64  # k-means training sample per cell: bounded build time, enough for stable cells


class IndexConfigError(PipelineError, ValueError):
    """An index that cannot be built from what the export provides; the message says what is missing."""


@dataclass
class IndexParams:
    """Which index searches a gallery and its parameters (``eva02at search --index``, ``bench/search_index.py``)."""

    kind: str = "auto"  # auto: flat up to exact_max clips, above that binary (when codes exist) or ivf
    exact_max: int = 100_000
    nlist: int = 1024  # ivf and binary: k-means cells, capped at one per 64 clips; binary with 0: scan every code
    nprobe: int = 256  # ivf and binary: cells a query scans (1/4 of 1024: recall 0.98 at 1M, BENCHMARKS.md)
    hnsw_m: int = 32  # hnsw: links per node
    ef_construction: int = 64
    ef_search: int = 128
    shortlist: int = 1000  # binary: Hamming candidates re-ranked
    rerank: str = "float"  # binary: float | int8 (the export's int8 codes)
    seed: int = 0  # k-means training sample

    def check(self) -> None:
        if self.kind not in KINDS or self.rerank not in RERANK:
            raise IndexConfigError(f"index kind must be one of {list(KINDS)} and rerank one of {list(RERANK)}")
        if min(self.exact_max, self.nprobe, self.hnsw_m, self.ef_construction, self.ef_search, self.shortlist) < 1:
            raise IndexConfigError("exact_max, nprobe, hnsw_m, ef_construction, ef_search and shortlist must be >= 1")


class GalleryIndex:
    """A built index: ``search`` returns scores and gallery rows ``(Q, k)``, best first, -1 past the gallery."""

    def __init__(self, kind: str, index, size: int):
        self.kind, self.index, self.size = kind, index, size

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.size))
        return _in_order(scores, rows, k)


class BinaryIndex(GalleryIndex):
    """Hamming shortlist, re-ranked by ``vectors_of(rows) @ query`` (float rows or decoded int8 codes)."""

    def __init__(
        self,
        index,
        size: int,
        quantizer: BinaryQuantizer,
        vectors_of: Callable[[np.ndarray], np.ndarray],
        shortlist: int,
    ):
        super().__init__("binary", index, size)
        self.quantizer, self.vectors_of, self.shortlist = quantizer, vectors_of, shortlist

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        _, candidates = self.index.search(self.quantizer.encode(queries), min(max(k, self.shortlist), self.size))
        scores = np.full((len(queries), k), -np.inf, np.float32)
        rows = np.full((len(queries), k), -1, np.int64)
        for q, found in enumerate(candidates):
            found = np.sort(found[found >= 0])  # gallery order, so that the stable sort breaks ties by it
            exact = self.vectors_of(found) @ queries[q]  # (len(found),)
            best = np.argsort(-exact, kind="stable")[:k]
            scores[q, : len(best)], rows[q, : len(best)] = exact[best], found[best]
        return scores, rows


def _in_order(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """FAISS results padded to ``k`` columns and re-sorted by (score desc, row asc) within each query."""
    pad = k - scores.shape[1]
    scores = np.pad(np.where(rows >= 0, scores, -np.inf), ((0, 0), (0, pad)), constant_values=-np.inf)
    rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
    order = np.lexsort((np.where(rows >= 0, rows, np.iinfo(np.int64).max), -scores), axis=1)
    return np.take_along_axis(scores, order, 1).astype(np.float32), np.take_along_axis(rows, order, 1)


def choose_kind(size: int, config: IndexParams, codes: Codes | None) -> str:
    """The configured kind, or for ``auto``: exact search up to ``exact_max`` clips, then the binary codes when the
    export has them (memory holds only codes), else IVF over the float vectors."""
    if config.kind != "auto":
        return config.kind
    if size <= config.exact_max:
        return "flat"
    return "binary" if codes is not None and codes.binary is not None else "ivf"


def build_index(vectors: np.ndarray, config: IndexParams, codes: Codes | None = None) -> GalleryIndex:
    """An index over the unit-norm gallery ``vectors`` ``(N, D)`` (and its codes, which ``binary`` needs)."""
    config.check()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    size, dim = vectors.shape
    kind = choose_kind(size, config, codes)
    if kind == "binary":
        return _binary_index(vectors, config, codes)
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction, index.hnsw.efSearch = config.ef_construction, config.ef_search
    else:
        cells = _cells(size, config.nlist or 1)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
        index.train(_training_sample(vectors, cells, config.seed))
        index.nprobe = min(config.nprobe, cells)
    index.add(vectors)
    return GalleryIndex(kind, index, size)


def _binary_index(vectors: np.ndarray, config: IndexParams, codes: Codes | None) -> BinaryIndex:
    if codes is None or codes.binary is None or codes.binary_quantizer is None:
        raise IndexConfigError("the binary index needs binary codes: set export.codes.binary and run the export stage")
    if config.rerank == "int8":
        if codes.int8 is None or codes.int8_quantizer is None:
            raise IndexConfigError("int8 re-ranking needs int8 codes: set export.codes.int8 and run the export stage")
        int8, quantizer = codes.int8, codes.int8_quantizer
        vectors_of: Callable[[np.ndarray], np.ndarray] = lambda rows: quantizer.decode(int8[rows])  # noqa: E731
    else:
        vectors_of = vectors.__getitem__
    bits, size = codes.binary_quantizer.bits, len(codes.binary)
    if config.nlist == 0:
        index = faiss.IndexBinaryFlat(bits)
    else:
        cells = _cells(size, config.nlist)
        index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits), bits, cells)
        index.train(_training_sample(codes.binary, cells, config.seed))
        index.nprobe = min(config.nprobe, cells)
    index.add(np.ascontiguousarray(codes.binary))
    return BinaryIndex(index, size, codes.binary_quantizer, vectors_of, config.shortlist)


def _cells(size: int, nlist: int) -> int:
    return max(1, min(nlist, size // _POINTS_PER_CELL))


def _training_sample(data: np.ndarray, cells: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    count = min(len(data), cells * _POINTS_PER_CELL)
    return np.ascontiguousarray(data[np.sort(rng.choice(len(data), count, replace=False))])
