"""EPIC-KITCHENS-100 multi-instance retrieval metrics, written straight from the official definition.

This is the slow, obvious whole-matrix numpy version, shaped like the JPoSE / EPIC-KITCHENS-100 evaluation
code: for mAP and again for nDCG it argsorts every query's items, gathers the relevancies in rank order and
applies the formula literally.
It exists to check :func:`eva02at.evaluation.metrics.ek100_mir` (tests) and to time it against (``bench/metrics.py``).

Ties are ordered by a stable sort on descending similarity, so tied items keep their column order; the
official code sorts with numpy's default quicksort, whose tie order is unspecified.
A query with no relevance-1 item gets AP 0/0 = NaN and a query with no non-zero relevance gets nDCG 0/0 =
NaN, as in the official code, and the mean over queries is then NaN.
"""

from __future__ import annotations

import numpy as np


def _ranked_relevancy(similarity: np.ndarray, relevancy: np.ndarray) -> np.ndarray:
    """Each row's relevancies reordered by descending similarity (stable: ties keep column order)."""
    order = np.argsort(-similarity, axis=1, kind="stable")
    return np.take_along_axis(relevancy, order, axis=1)


def reference_map(similarity: np.ndarray, relevancy: np.ndarray) -> float:
    """Mean over rows of AP, where only R == 1 is a hit but precision sums the soft R."""
    ranked = _ranked_relevancy(similarity, relevancy)
    cumulative = np.cumsum(ranked, axis=1)
    hits = ranked == 1
    ranks = np.arange(1, ranked.shape[1] + 1)
    precision_at_hits = np.where(hits, cumulative / ranks, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        average_precision = precision_at_hits.sum(axis=1) / hits.sum(axis=1)
    return float(np.mean(average_precision))


def reference_ndcg(similarity: np.ndarray, relevancy: np.ndarray) -> float:
    """Mean over rows of DCG / IDCG, both cut at k = the row's number of non-zero relevancies."""
    k = (relevancy > 0).sum(axis=1, keepdims=True)
    ranks = np.arange(1, relevancy.shape[1] + 1)
    discount = np.where(ranks <= k, 1.0 / np.log2(ranks + 1), 0.0)
    dcg = (_ranked_relevancy(similarity, relevancy) * discount).sum(axis=1)
    ideal = (-np.sort(-relevancy, axis=1) * discount).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.mean(dcg / ideal))


def reference_mir(similarity: np.ndarray, relevancy: np.ndarray) -> dict[str, float]:
    """Both directions (video->text on rows, text->video on columns) and their averages."""
    sim = np.asarray(similarity, dtype=np.float64)
    rel = np.asarray(relevancy, dtype=np.float64)
    out = {
        "mAP_v2t": reference_map(sim, rel),
        "mAP_t2v": reference_map(sim.T, rel.T),
        "nDCG_v2t": reference_ndcg(sim, rel),
        "nDCG_t2v": reference_ndcg(sim.T, rel.T),
    }
    out["mAP_avg"] = (out["mAP_v2t"] + out["mAP_t2v"]) / 2
    out["nDCG_avg"] = (out["nDCG_v2t"] + out["nDCG_t2v"]) / 2
    return out
