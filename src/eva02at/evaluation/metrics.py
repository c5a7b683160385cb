"""Evaluation metrics: EPIC-KITCHENS-100 multi-instance retrieval, EgoMCQ and Charades-Ego.

All metrics are fractions (0.573, not 57.3). Inputs may be numpy arrays or torch tensors.

EK100 MIR follows the official (JPoSE) definition; ``bench/mir_reference.py`` is its literal whole-matrix
form and the tests hold :func:`ek100_mir` to it. What this module adds is speed with bounded memory: the
literal form argsorts the whole 9,668 x 3,842 test matrix four times; here each chunk of queries is
sorted once, as packed int64 keys (numpy's vectorised sort is several times faster than argsort), workers
sort chunks in parallel (numpy releases the GIL while it sorts) in scratch arrays they reuse, and only the
items of non-zero relevance (about 11 % of the test matrix) are read back from the sorted rows.
"""

from __future__ import annotations

import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import torch

from eva02at.data.formats.egomcq import MCQ_INTER_VIDEO, MCQ_INTRA_VIDEO

MIR_KEYS = ("mAP_v2t", "mAP_t2v", "mAP_avg", "nDCG_v2t", "nDCG_t2v", "nDCG_avg")

_MAGNITUDE = np.int64(0x7FFF_FFFF_FFFF_FFFF)  # every bit but the sign
_BLOCK = 512  # columns per block while building keys: 128 rows x 512 int64 stay in a 512 KiB L2 cache
_ZERO_LOW_BITS = {np.dtype(np.float16): 42, np.dtype(np.float32): 29}  # always-zero low bits as float64


def ek100_mir(similarity, relevancy, *, chunk_size: int = 128, threads: int | None = None) -> dict[str, float]:
    """mAP and nDCG of EK100 multi-instance retrieval in both directions, and their averages.

    ``similarity`` and ``relevancy`` are [videos, sentences], relevancy in [0, 1]: video->text ranks each
    row, text->video each column. A query's items are ranked by descending similarity; ties keep their
    index order (a stable sort; the official code's quicksort leaves the order of ties unspecified).

    - mAP: only relevance 1 is a hit, but the precision at a hit of rank r is (sum of the soft relevance
      over ranks 1..r) / r; AP averages it over the query's hits, mAP averages AP over all queries.
    - nDCG: DCG = sum over ranks r <= k of R / log2(r + 1), k = the query's number of non-zero
      relevancies, divided by the same sum with the relevancies sorted in descending order.

    A query with no relevance-1 item has AP = 0/0, which makes the official mean NaN; here it raises
    ``ValueError`` naming the direction and the query. ``threads`` workers (default: all CPUs) each sort
    ``chunk_size`` queries at a time; besides a boolean copy of the relevancy pattern, memory stays
    within about ``threads * chunk_size * items * 40`` bytes.
    """
    sim = _as_array(similarity, "similarity")
    rel = np.ascontiguousarray(_as_array(relevancy, "relevancy"), dtype=np.float64)
    if sim.ndim != 2 or sim.shape != rel.shape:
        raise ValueError(f"similarity {sim.shape} and relevancy {rel.shape} must have the same 2-D shape")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if sim.dtype.kind == "f" and np.isnan(sim).any():
        video, sentence = np.argwhere(np.isnan(sim))[0]
        raise ValueError(f"similarity is NaN for video {video} and sentence {sentence}")
    nonzero = rel != 0
    workers = threads or os.cpu_count() or 1
    out = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for tag, query, item, transposed in (("v2t", "video", "sentence", False), ("t2v", "sentence", "video", True)):
            starts = np.arange(0, sim.shape[int(transposed)], chunk_size)
            # A few runs of consecutive chunks per worker: scratch arrays are reused within a run, and a
            # worker that finishes early (the machine may be shared) takes the next run.
            runs = [run for run in np.array_split(starts, 4 * workers) if len(run)]
            task = partial(_run_scores, sim=sim, rel=rel, nonzero=nonzero, size=chunk_size, transposed=transposed)
            parts = pool.map(task, runs)
            ap, ndcg, hits = (np.concatenate(column) for column in zip(*parts, strict=True))
            _require_hits(hits, f"{tag}: {query}", item)
            out[f"mAP_{tag}"], out[f"nDCG_{tag}"] = float(ap.mean()), float(ndcg.mean())
    out["mAP_avg"] = (out["mAP_v2t"] + out["mAP_t2v"]) / 2
    out["nDCG_avg"] = (out["nDCG_v2t"] + out["nDCG_t2v"]) / 2
    return {key: out[key] for key in MIR_KEYS}


def _require_hits(hits: np.ndarray, query: str, item: str) -> None:
    """Refuse queries without a relevance-1 item: their AP is 0/0 and the official mean silently NaN.

    (Such a query may still have an nDCG; a query with no non-zero relevance at all has no hit either.)
    """
    empty = np.flatnonzero(hits == 0)
    if len(empty):
        raise ValueError(
            f"{query} {int(empty[0])} (and {len(empty) - 1} more) has no {item} of relevance 1, so its AP is "
            "0/0 and the mean over queries is undefined (NaN in the official evaluation)"
        )


class _Scratch:
    """Arrays one worker reuses from chunk to chunk.

    A fresh large array is mapped from the OS page by page on first write; on a busy machine those page
    faults took up to a fifth of the time.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        size = math.prod(shape)
        array = self._arrays.get(name)
        if array is None or array.size < size or array.dtype != dtype:
            array = self._arrays[name] = np.empty(size, dtype)
        return array[:size].reshape(shape)


def _run_scores(starts: np.ndarray, *, sim, rel, nonzero, size: int, transposed: bool):
    """AP, nDCG and hit count of the queries of a run of chunks (starting at ``starts``), in one worker.

    Queries are the rows of ``sim``, ``rel`` (C-contiguous float64) and ``nonzero`` (``rel != 0``), or
    their columns when ``transposed``.
    """
    scratch, parts = _Scratch(), []
    for first in starts:
        sim_q, nonzero_q = (
            m.T[first : first + size] if transposed else m[first : first + size] for m in (sim, nonzero)
        )
        query, rank, item = _ranked_nonzero(sim_q, nonzero_q, scratch)
        row, col = (item, first + query) if transposed else (first + query, item)
        gain = rel.reshape(-1)[row * rel.shape[1] + col]  # soft relevance of each non-zero item, in rank order
        if gain.size and not (gain.min() > 0 and gain.max() <= 1):
            bad = np.flatnonzero(~((gain > 0) & (gain <= 1)))[0]
            raise ValueError(
                f"relevancy must lie in [0, 1], but is {gain[bad]} at video {row[bad]}, sentence {col[bad]}"
            )
        parts.append(_scores(query, rank, gain, len(sim_q), scratch))
    return tuple(np.concatenate(column) for column in zip(*parts, strict=True))


def _ranked_nonzero(sim: np.ndarray, nonzero: np.ndarray, scratch: _Scratch) -> tuple[np.ndarray, ...]:
    """(query, 0-based rank, item) of every non-zero item of a chunk, query by query, ranks ascending."""
    items = sim.shape[1]
    exact = _payload_bits(items) <= _ZERO_LOW_BITS.get(sim.dtype, 0)
    lost = None if exact else scratch.get("lost", sim.shape, _payload_dtype(items))
    keys = _sorted_keys(sim, nonzero, lost, scratch)
    query, rank, item = _flagged(keys, scratch)
    if lost is not None and _repair_near_ties(keys, lost, query, rank, sim, nonzero):
        query, rank, item = _flagged(keys, scratch)
    return query, rank, item


def _payload_bits(items: int) -> int:
    """Low key bits replaced by the column index and the non-zero flag: 16, or 32 past 32,768 items."""
    return 16 if items <= 1 << 15 else 32


def _payload_dtype(items: int) -> np.dtype:
    return np.dtype(np.uint16 if _payload_bits(items) == 16 else np.uint32)


def _payload(keys: np.ndarray) -> np.ndarray:
    """The low ``_payload_bits`` of each key, as a strided unsigned-integer view."""
    dtype = _payload_dtype(keys.shape[1])
    step = 8 // dtype.itemsize
    return keys.view(dtype)[:, 0 if sys.byteorder == "little" else step - 1 :: step]  # (rows, items)


def _sorted_keys(sim: np.ndarray, nonzero: np.ndarray, lost: np.ndarray | None, scratch: _Scratch) -> np.ndarray:
    """Each row sorted by descending similarity, ties in column order, as one int64 key per item.

    A key holds the similarity's order-preserving float64 bits with the lowest ones replaced by a payload:
    the column index and a flag for non-zero relevance. Float32 similarities have zeros there, so their
    order is exact; for float64 ones the replaced bits are saved in ``lost`` (if given) for
    :func:`_repair_near_ties` to check. The keys are built by blocks of ``_BLOCK`` columns that stay in
    cache through all steps (several times faster than whole-chunk passes, and a transposed ``sim`` is
    read in short runs rather than with a large stride).
    """
    keys = scratch.get("keys", sim.shape, np.int64)
    sign = scratch.get("sign", (len(sim), _BLOCK), np.int64)
    payload = _payload(keys)
    index = np.arange(sim.shape[1], dtype=payload.dtype) << 1
    for start in range(0, sim.shape[1], _BLOCK):
        cols = slice(start, start + _BLOCK)
        block = keys[:, cols]  # (rows, block)
        # Ascending -sim = descending sim, and 0 - (-0.0) = +0.0, so both zeros get one key.
        np.subtract(0.0, sim[:, cols], out=block.view(np.float64))
        block_sign = np.right_shift(block, 63, out=sign[:, : block.shape[1]])
        block_sign &= _MAGNITUDE
        block ^= block_sign  # IEEE-754 bits -> signed integers in the same order (negatives: flip the magnitude)
        if lost is not None:
            lost[:, cols] = payload[:, cols]
        np.bitwise_or(index[cols], nonzero[:, cols], out=payload[:, cols])
    keys.sort(axis=1)
    return keys


def _flagged(keys: np.ndarray, scratch: _Scratch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query, 0-based rank, item) of the flagged entries of sorted keys, row by row, ranks ascending."""
    byte_of_bit0 = 0 if sys.byteorder == "little" else 7
    flag = np.bitwise_and(keys.view(np.uint8)[:, byte_of_bit0::8], 1, out=scratch.get("flag", keys.shape, np.uint8))
    flat = np.flatnonzero(flag.view(np.bool_))  # cheaper than a pass over keys & 1
    query, rank = np.divmod(flat, keys.shape[1])
    return query, rank, (keys.reshape(-1)[flat] & ((1 << _payload_bits(keys.shape[1])) - 1)) >> 1


def _repair_near_ties(
    keys: np.ndarray, lost: np.ndarray, query: np.ndarray, rank: np.ndarray, sim: np.ndarray, nonzero: np.ndarray
) -> bool:
    """Re-sort exactly (stable argsort) the rows whose key order may be wrong; True if there were any.

    Similarities whose keys differ only in the ``lost`` bits (the ones the payload replaced) fall in one
    cluster of equal keys and are ordered by index instead of value. Only non-zero items matter
    (reordering zero-relevance items changes no metric), so only rows where a non-zero item sits in a
    cluster are checked, and only those with a cluster of unequal lost bits are sorted again: exact ties
    (as in the oracle ``similarity = relevancy``) are already in stable order.
    """
    items = keys.shape[1]
    low = _payload_bits(items)
    flat = keys.reshape(-1)
    position = query * items + rank
    value = flat[position] >> low
    before = (rank > 0) & (flat[np.maximum(position - 1, 0)] >> low == value)
    after = (rank < items - 1) & (flat[np.minimum(position + 1, flat.size - 1)] >> low == value)
    rows = np.unique(query[before | after])
    if not len(rows):
        return False
    every = len(rows) == len(keys)  # (as for the oracle) then skip the copies fancy indexing makes
    ordered, ordered_lost = (keys, lost) if every else (keys[rows], lost[rows])  # (suspect rows, items)
    neighbours = np.bitwise_xor(ordered[:, 1:], ordered[:, :-1]).view(np.uint64)
    same_cluster = neighbours < (1 << low)  # (suspect rows, items - 1): equal bits above the payload
    lost_ordered = np.take_along_axis(ordered_lost, _payload(ordered) >> 1, axis=1)
    mixed = rows[(same_cluster & (lost_ordered[:, 1:] != lost_ordered[:, :-1])).any(axis=1)]
    for row in mixed:
        order = np.argsort(np.subtract(0.0, sim[row], dtype=np.float64), kind="stable")
        keys[row] = (order << 1) | nonzero[row, order]  # later steps read only positions and payloads
    return len(mixed) > 0


def _scores(query: np.ndarray, rank: np.ndarray, gain: np.ndarray, rows: int, scratch: _Scratch):
    """AP, nDCG and hit count per query, from its non-zero items in rank order.

    Running sums and the ideal order need each query's gains side by side: they are laid out in a
    zero-padded [rows, k_max] table (k_max = most non-zero items of a query in the chunk). Sums run in a
    fixed order (bincount, cumsum), so a query's scores do not depend on the chunk around it.
    """
    nonzero = np.bincount(query, minlength=rows)  # k of each query
    width = int(nonzero.max(initial=0))
    if width == 0:  # no non-zero relevance at all, so no hit: the caller rejects these queries
        return np.full(rows, np.nan), np.full(rows, np.nan), np.zeros(rows, dtype=np.int64)
    # 1 / log2(r + 1) for ranks r = 1, 2, ...: looked up by rank rather than computed for every item.
    discount = 1.0 / np.log2(np.arange(2, max(width, int(rank.max()) + 1) + 2))
    # Entry e is the (e - start of its query)-th non-zero item of its query: its cell in the flat table.
    cell = np.arange(len(query)) + (np.arange(rows) * width - (np.cumsum(nonzero) - nonzero))[query]
    table = scratch.get("table", (rows, width), np.float64)
    table.fill(0.0)
    table.reshape(-1)[cell] = gain
    running = np.cumsum(table, axis=1, out=scratch.get("running", table.shape, np.float64))
    hit = np.flatnonzero(gain == 1)
    precision = running.reshape(-1)[cell[hit]] / (rank[hit] + 1)  # soft relevance up to a hit / its rank
    hits = np.bincount(query[hit], minlength=rows)
    top_k = np.flatnonzero(rank < nonzero[query])
    dcg = np.bincount(query[top_k], gain[top_k] * discount[rank[top_k]], minlength=rows)
    table.sort(axis=1)  # ascending, padding first: the ideal order read backwards, so reverse the discounts
    ideal = np.multiply(table, discount[width - 1 :: -1], out=running)
    ideal = np.cumsum(ideal, axis=1, out=ideal)[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 queries are rejected by the caller
        return np.bincount(query[hit], precision, minlength=rows) / hits, dcg / ideal, hits


def egomcq_accuracy(scores, answers, types) -> dict[str, float]:
    """EgoMCQ accuracy per question type and overall.

    ``scores`` [questions, choices] (5 choices in EgoMCQ), ``answers`` [questions] the index of the right
    choice, ``types`` [questions] the file's codes: 1 = inter-video (the choices are clips of five
    different videos: the easy split), 2 = intra-video (five clips of one video: the hard split); the
    names "inter_video" and "intra_video" are accepted too. Several public evaluators label the groups by
    zipping the sorted codes with ["Intra-video", "Inter-video"], which swaps the two; here each code is
    mapped to its name explicitly. A question is right when the argmax of its scores (the first maximum
    on ties) is its answer. A type with no question gets NaN.
    """
    scores = _as_array(scores, "scores")
    answers = _as_array(answers, "answers")
    given = _as_array(types, "types") if isinstance(types, torch.Tensor) else np.asarray(types)
    codes = given
    if scores.ndim != 2 or answers.shape != (len(scores),) or codes.shape != (len(scores),):
        raise ValueError(
            f"scores {scores.shape} must be [questions, choices], answers {answers.shape} and types "
            f"{codes.shape} [questions]"
        )
    if codes.dtype.kind in "US":
        codes = np.select([codes == "inter_video", codes == "intra_video"], [MCQ_INTER_VIDEO, MCQ_INTRA_VIDEO], 0)
    invalid = ~np.isin(codes, (MCQ_INTER_VIDEO, MCQ_INTRA_VIDEO)) | (answers < 0) | (answers >= scores.shape[1])
    if invalid.any():
        q = int(np.flatnonzero(invalid)[0])
        raise ValueError(
            f"question {q}: type {given[q].item()!r} must be 1/inter_video or 2/intra_video and "
            f"answer {answers[q]} must index one of its {scores.shape[1]} choices"
        )
    right = scores.argmax(axis=1) == answers
    out = {"overall": float(right.mean())}
    for name, code in (("inter_video", MCQ_INTER_VIDEO), ("intra_video", MCQ_INTRA_VIDEO)):
        chosen = codes == code
        out[name] = float(right[chosen].mean()) if chosen.any() else float("nan")
    return out


def charades_map(scores, labels, *, unlabeled_last: bool = True) -> float:
    """Charades-Ego video->class mAP: per class, AP over the videos ranked by that class's score.

    ``scores`` [videos, classes], ``labels`` multi-hot [videos, classes]. AP of a class = mean over its
    positive videos of the precision at their rank (descending score, ties in video order as MATLAB's
    stable sort in the official Charades_v1_classify.m); mAP = mean over the classes with at least one
    positive (the official mean is NaN otherwise). The official script scores a video without any label
    as -inf (it falls out of the script's id lookup), so such videos rank last for every class;
    ``unlabeled_last`` reproduces that, as the peers' Python ports do.
    """
    score = _as_array(scores, "scores").astype(np.float64)
    label = _as_array(labels, "labels")
    if score.ndim != 2 or score.shape != label.shape:
        raise ValueError(f"scores {score.shape} and labels {label.shape} must have the same 2-D shape")
    if not np.isin(label, (0, 1)).all() or np.isnan(score).any():
        raise ValueError("labels must be 0/1 and scores must not be NaN")
    positive = label.astype(bool)
    if not positive.any():
        raise ValueError("no class has a positive video: mAP is undefined")
    if unlabeled_last:
        score = np.where(positive.any(axis=1, keepdims=True), score, -np.inf)
    order = np.argsort(-score, axis=0, kind="stable")  # (videos, classes)
    hits = np.take_along_axis(positive, order, axis=0)
    precision = np.cumsum(hits, axis=0) / np.arange(1, len(score) + 1)[:, None]
    count = hits.sum(axis=0)
    has_positive = count > 0
    ap = (precision * hits).sum(axis=0)[has_positive] / count[has_positive]
    return float(ap.mean())


def _as_array(x, name: str) -> np.ndarray:
    """numpy view of a numpy array or a (CPU or GPU) torch tensor; half precision becomes float32."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        return x.numpy()
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric, got dtype {x.dtype}")
    return x
