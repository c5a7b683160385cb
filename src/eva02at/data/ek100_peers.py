"""What the peers' EK100 multi-instance retrieval evaluation uses, beside what eva02at computes exactly.

- The relevancy matrix distributed as a pickle (``caption_relevancy_EPIC_100_retrieval_test.pkl``: a float
  array, videos x sentences, in the two CSVs' row orders), read with an unpickler that only rebuilds plain
  containers and NumPy arrays, so a tampered file cannot run code; compared cell by cell with the exact table.
- The query texts: the official evaluation takes each sentence's text from its video row (same
  ``narration_id``); the published sentence CSV carries a neighbouring narration's text in a few rows.

Written here (no library reads the pickle safely or knows the EK100 layout); pickle.Unpickler does the parsing.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass

import numpy as np
import pandas as pd

from eva02at.core.errors import BadInput
from eva02at.data.labels import RelevancyTable

# The globals a pickled ndarray needs (NumPy 1 and 2 module paths, any protocol); nothing else is looked up.
ARRAY_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how protocols 0-2 spell an array's bytes
}
SHOWN = 5  # differing sentences listed by name
TOLERANCE = 1e-6  # a float32 pickle rounds 1/3 at 1e-8: not a difference


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f"refuses {module}.{name}: only plain containers and NumPy arrays load")
        return super().find_class(module, name)


def read_relevancy_pickle(path: str | os.PathLike) -> np.ndarray:
    """The float64 matrix of a relevancy pickle; anything but a 2-D numeric array is a one-line error."""
    try:
        with open(path, "rb") as handle:
            loaded = _ArrayUnpickler(io.BufferedReader(handle)).load()
    except FileNotFoundError:
        raise BadInput(f"{path}: no such relevancy pickle") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise BadInput(f"{path}: not a relevancy pickle: {err}") from None
    if not isinstance(loaded, np.ndarray) or loaded.ndim != 2 or not np.issubdtype(loaded.dtype, np.number):
        shape = getattr(loaded, "shape", "")
        raise BadInput(
            f"{path}: expected a 2-D numeric array (videos x sentences), got {type(loaded).__name__} {shape}"
        )
    matrix = loaded.astype(np.float64)
    if not np.isfinite(matrix).all():
        raise BadInput(f"{path}: holds non-finite relevance values")
    return matrix


def table_from_dense(matrix: np.ndarray, exact: RelevancyTable, name: str) -> RelevancyTable:
    """``matrix`` as a relevancy table with the exact table's ids (the pickle has none: rows and columns are
    the CSVs' orders, the exact table's too); every video and sentence its own signature."""
    if matrix.shape != exact.shape:
        raise BadInput(f"{name}: shape {matrix.shape}, but the CSVs give {exact.shape} (videos x sentences)")
    values, codes = np.unique(matrix, return_inverse=True)
    if len(values) > np.iinfo(np.uint16).max + 1:
        raise BadInput(f"{name}: {len(values)} distinct relevance values, more than a table codes (65,536)")
    dtype = np.uint8 if len(values) <= 256 else np.uint16
    codes = codes.reshape(matrix.shape).astype(dtype)
    rows, cols = np.arange(matrix.shape[0]), np.arange(matrix.shape[1])
    return RelevancyTable(rows, cols, codes, values, exact.video_ids, exact.sentence_ids)


@dataclass(frozen=True)
class Differences:
    """Where a peer relevancy matrix departs from the exact table."""

    cells: int  # entries that differ by more than TOLERANCE
    largest: float  # largest absolute difference
    sentences: int  # sentences (columns) with at least one differing entry
    first: list[str]  # the first differing sentences, "<narration_id>: <text>"

    def summary(self) -> dict[str, int | float | list[str]]:
        return {"cells": self.cells, "largest": self.largest, "sentences": self.sentences, "first": self.first}


def relevancy_differences(exact: RelevancyTable, other: np.ndarray, texts: dict[str, str]) -> Differences:
    """Cells of ``other`` that differ from the exact table (same shape) by more than float32 rounding, and the
    first sentences concerned."""
    gap = np.abs(exact.dense() - other)
    differing = gap > TOLERANCE
    columns = np.flatnonzero(differing.any(axis=0))
    first = [f"{exact.sentence_ids[j]}: {texts.get(str(exact.sentence_ids[j]), '')}" for j in columns[:SHOWN]]
    return Differences(int(differing.sum()), float(gap.max(initial=0.0)), len(columns), first)


@dataclass(frozen=True)
class QueryTexts:
    """The sentences with their official texts, and the rows where the sentence CSV says otherwise."""

    table: pd.DataFrame  # narration_id, narration (from the video rows), in the sentence CSV's order
    differing: list[str]  # "line <n> <narration_id>: <sentence CSV text> -> <video row text>"


def official_queries(
    videos: pd.DataFrame, sentences: pd.DataFrame, videos_name: str, sentences_name: str
) -> QueryTexts:
    """Each sentence's text taken from the video row of its ``narration_id``, as the official evaluation does."""
    for frame, name in ((videos, videos_name), (sentences, sentences_name)):
        missing = [c for c in ("narration_id", "narration") if c not in frame.columns]
        if missing:
            raise BadInput(f"{name}: missing column(s) {missing}")
    video_text = dict(zip(videos["narration_id"].astype(str), videos["narration"].astype(str), strict=True))
    ids, texts = sentences["narration_id"].astype(str).tolist(), sentences["narration"].astype(str).tolist()
    absent = [(line, i) for line, i in enumerate(ids, start=2) if i not in video_text]
    if absent:
        line, i = absent[0]
        raise BadInput(f"{sentences_name} line {line}: narration_id {i!r} has no row in {videos_name}")
    official = [video_text[i] for i in ids]
    differing = [
        f"line {line} {i}: {text!r} -> {video!r}"
        for line, (i, text, video) in enumerate(zip(ids, texts, official, strict=True), start=2)
        if text != video
    ]
    return QueryTexts(pd.DataFrame({"narration_id": ids, "narration": official}), differing)
