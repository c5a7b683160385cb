"""EPIC-KITCHENS-100 soft labels: the relevance of every sentence to every video.

R(video i, sentence j) = 0.5 * [verb_i == verb_j] + 0.5 * |N_i & N_j| / |N_i | N_j|, with N the set of
``all_noun_classes``. A sentence takes the classes of the video row with its narration_id: sentence texts
repeat and, in the public test file, some are shifted by a row, so text never identifies a sentence.

The train matrix has about 1.07e9 entries, but R depends on a row only through its signature (verb class,
noun set), and videos share a few thousand signatures. :class:`RelevancyTable` stores each row's signature
and, for each pair of signatures, a small integer code into the sorted list of the values R can take. R is
fixed by three integers (same verb, |intersection|, |union|), so the codes are exact: decoding gives the same
float64 as the formula, and the table for the train split stays in the tens of megabytes.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from eva02at.core.atomic import atomic_path
from eva02at.core.errors import BadInput
from eva02at.data.annotations import parse_class_list

FORMAT = "eva02at-relevancy-v1"
_ARRAYS = ("video_sig", "sentence_sig", "codes", "values", "video_ids", "sentence_ids")
_CHUNK_ELEMENTS = 1 << 24  # signature pairs coded per step: bounds the temporary memory to ~100 MB


class RelevancyTable:
    """Exact, compact videos x sentences relevancy matrix.

    ``video_sig[i]`` is the row of ``codes`` for video i, ``sentence_sig[j]`` the column for sentence j, and
    ``values[codes[a, b]]`` the relevance between video signature a and sentence signature b.
    """

    def __init__(
        self,
        video_sig: np.ndarray,
        sentence_sig: np.ndarray,
        codes: np.ndarray,
        values: np.ndarray,
        video_ids: np.ndarray,
        sentence_ids: np.ndarray,
    ) -> None:
        self.video_sig = np.asarray(video_sig, dtype=np.int64)
        self.sentence_sig = np.asarray(sentence_sig, dtype=np.int64)
        self.codes = np.asarray(codes)
        self.values = np.asarray(values, dtype=np.float64)
        self.video_ids = np.asarray(video_ids, dtype=str)
        self.sentence_ids = np.asarray(sentence_ids, dtype=str)
        problems = _layout_problems(self)
        if problems:
            raise ValueError(f"inconsistent relevancy table: {'; '.join(problems)}")

    @classmethod
    def build(
        cls,
        videos: pd.DataFrame,
        sentences: pd.DataFrame,
        *,
        videos_name: str = "videos",
        sentences_name: str = "sentences",
    ) -> RelevancyTable:
        """Table for an EK100 video CSV and sentence CSV (as read by ``pd.read_csv``), in their row orders.

        ``videos_name``/``sentences_name`` (e.g. the file names) prefix error messages.
        """
        _require_columns(videos, ("narration_id", "verb_class", "all_noun_classes"), videos_name)
        _require_columns(sentences, ("narration_id",), sentences_name)
        if len(videos) == 0:
            raise BadInput(f"{videos_name}: no video rows")
        video_ids = videos["narration_id"].astype(str).to_numpy()
        sentence_ids = sentences["narration_id"].astype(str).to_numpy()
        video_sig, sig_verbs, sig_nouns = _video_signatures(videos, video_ids, videos_name)
        sentence_rows = _sentence_video_rows(video_ids, sentence_ids, sentences_name, videos_name)
        # Columns: only the signatures some sentence has, numbered in sorted order.
        column_sigs, sentence_sig = np.unique(video_sig[sentence_rows], return_inverse=True)
        codes, values = _pair_codes(sig_verbs, sig_nouns, column_sigs)
        return cls(video_sig, sentence_sig, codes, values, video_ids, sentence_ids)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.video_sig), len(self.sentence_sig)

    def lookup(self, video_idx, sentence_idx) -> np.ndarray:
        """Float64 sub-matrix ``[len(video_idx), len(sentence_idx)]``: R of each listed video and sentence.

        Indices are 1-D integer arrays (NumPy or CPU tensors), e.g. a gathered batch's video and caption ids.
        """
        rows = self.video_sig[_indices(video_idx, self.shape[0], "video")]
        cols = self.sentence_sig[_indices(sentence_idx, self.shape[1], "sentence")]
        return self.values[self.codes[np.ix_(rows, cols)]]

    def candidates(self, video_idx: int, threshold: float = 0.1) -> np.ndarray:
        """Sorted indices of the sentences whose relevance to video ``video_idx`` is above ``threshold``."""
        (index,) = _indices([video_idx], self.shape[0], "video")
        above = (self.values > threshold)[self.codes[self.video_sig[index]]]  # per sentence signature
        return np.flatnonzero(above[self.sentence_sig])

    def dense(self) -> np.ndarray:
        """The full float64 matrix (meant for small splits such as the test set: 9,668 x 3,842)."""
        return self.values[self.codes[np.ix_(self.video_sig, self.sentence_sig)]]

    def value_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Each value R can take and how many entries of the full matrix have it (counts are exact)."""
        video_weight = np.bincount(self.video_sig, minlength=self.codes.shape[0])
        sentence_weight = np.bincount(self.sentence_sig, minlength=self.codes.shape[1])
        counts = np.zeros(len(self.values), dtype=np.int64)
        step = max(1, _CHUNK_ELEMENTS // max(1, self.codes.shape[1]))
        for start in range(0, self.codes.shape[0], step):
            block = self.codes[start : start + step]
            weight = np.outer(video_weight[start : start + step], sentence_weight)  # (rows, U_s)
            block_counts = np.bincount(block.ravel(), weights=weight.ravel(), minlength=len(counts))
            counts += block_counts.astype(np.int64)  # float64 weights: exact below 2**53 entries
        return self.values, counts

    @property
    def nnz(self) -> int:
        """Number of non-zero entries of the full matrix."""
        values, counts = self.value_counts()
        return int(counts[values != 0].sum())

    def summary(self) -> dict[str, int]:
        """Sizes and counts worth logging as metrics."""
        values, counts = self.value_counts()
        return {
            "videos": self.shape[0],
            "sentences": self.shape[1],
            "video_signatures": self.codes.shape[0],
            "sentence_signatures": self.codes.shape[1],
            "nonzero": int(counts[values != 0].sum()),
            "ones": int(counts[values == 1].sum()),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write a compressed ``.npz`` atomically (no pickled objects, so loading runs no code)."""
        arrays = {name: getattr(self, name) for name in _ARRAYS}
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(handle, format=np.array(FORMAT), **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> RelevancyTable:
        with np.load(path, allow_pickle=False) as data:
            missing = [name for name in ("format", *_ARRAYS) if name not in data.files]
            if missing:
                raise BadInput(f"{path}: not a relevancy table, missing array(s) {missing}")
            if str(data["format"]) != FORMAT:
                raise BadInput(f"{path}: format {str(data['format'])!r}, expected {FORMAT!r}")
            arrays = {name: data[name] for name in _ARRAYS}
        try:
            return cls(**arrays)
        except ValueError as err:
            raise BadInput(f"{path}: {err}") from err


def ek100_relevancy(videos: pd.DataFrame, sentences: pd.DataFrame) -> np.ndarray:
    """Dense float64 relevancy matrix, rows in the video table's order, columns in the sentence table's."""
    return RelevancyTable.build(videos, sentences).dense()


def build_relevancy(
    videos_csv: str | os.PathLike, sentences_csv: str | os.PathLike, out_path: str | os.PathLike
) -> dict[str, int]:
    """Build the table of two EK100 CSVs, save it to ``out_path``; return its summary (sizes and counts)."""
    table = RelevancyTable.build(
        pd.read_csv(videos_csv),
        pd.read_csv(sentences_csv),
        videos_name=os.fspath(videos_csv),
        sentences_name=os.fspath(sentences_csv),
    )
    table.save(out_path)
    return table.summary()


def _require_columns(frame: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise BadInput(f"{name}: missing column(s) {missing}")


def _video_signatures(videos: pd.DataFrame, ids: np.ndarray, name: str):
    """Per-row signature ids, and each signature's verb and sorted noun classes (first-seen order)."""
    duplicated = pd.Index(ids).duplicated()
    if duplicated.any():
        first = int(np.flatnonzero(duplicated)[0])
        raise BadInput(f"{name} line {first + 2}: narration_id {ids[first]!r} appears more than once")
    ids_of_signature: dict[tuple[int, tuple[int, ...]], int] = {}
    row_sig = np.empty(len(videos), dtype=np.int64)
    verbs = videos["verb_class"].to_numpy()
    for row, (verb, nouns) in enumerate(zip(verbs, videos["all_noun_classes"], strict=True)):
        try:
            classes = tuple(sorted(set(parse_class_list(nouns))))
            if not classes or min(classes) < 0:
                raise ValueError(f"all_noun_classes {nouns!r} must list non-negative classes")
            key = (int(verb), classes)
        except (ValueError, SyntaxError, TypeError) as err:
            raise BadInput(f"{name} line {row + 2} (narration_id {ids[row]!r}): {err}") from err
        row_sig[row] = ids_of_signature.setdefault(key, len(ids_of_signature))
    sig_verbs = np.array([verb for verb, _ in ids_of_signature], dtype=np.int64)
    sig_nouns = [nouns for _, nouns in ids_of_signature]
    return row_sig, sig_verbs, sig_nouns


def _sentence_video_rows(video_ids, sentence_ids, sentences_name: str, videos_name: str) -> np.ndarray:
    """Row of the video table holding each sentence's narration_id."""
    rows = pd.Index(video_ids).get_indexer(sentence_ids)
    if (rows < 0).any():
        missing = np.flatnonzero(rows < 0)
        shown = ", ".join(f"line {j + 2}: {sentence_ids[j]!r}" for j in missing[:5])
        raise BadInput(
            f"{sentences_name}: {len(missing)} sentence(s) have a narration_id with no row in "
            f"{videos_name}, so their classes are unknown ({shown})"
        )
    return rows


def _pair_codes(verbs: np.ndarray, nouns: list[tuple[int, ...]], column_sigs: np.ndarray):
    """Codes [all signatures, column signatures] into ``values``, the sorted list of possible R values."""
    sizes = np.array([len(n) for n in nouns], dtype=np.int64)
    multi_hot = np.zeros((len(nouns), max(max(n) for n in nouns) + 1), dtype=np.float32)  # (U, classes)
    multi_hot[np.repeat(np.arange(len(nouns)), sizes), np.concatenate(nouns)] = 1.0
    values, code_of = _value_codes(2 * int(sizes.max()))
    if len(values) > np.iinfo(np.uint16).max + 1:
        raise ValueError(f"rows with {int(sizes.max())} noun classes give too many distinct relevance values")
    codes = np.empty((len(nouns), len(column_sigs)), dtype=np.uint8 if len(values) <= 256 else np.uint16)
    column_hot, column_sizes, column_verbs = multi_hot[column_sigs].T, sizes[column_sigs], verbs[column_sigs]
    step = max(1, _CHUNK_ELEMENTS // max(1, len(column_sigs)))
    for start in range(0, len(nouns), step):
        rows = slice(start, start + step)
        inter = np.rint(multi_hot[rows] @ column_hot).astype(np.int64)  # (rows, U_s), exact small counts
        union = sizes[rows, None] + column_sizes[None, :] - inter
        same_verb = (verbs[rows, None] == column_verbs[None, :]).astype(np.int64)
        codes[rows] = code_of[same_verb, inter, union]
    return codes, values


def _value_codes(max_union: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted possible values of R and the table code_of[same_verb, intersection, union] of their codes."""
    same, inter, union = np.meshgrid(np.arange(2), np.arange(max_union + 1), np.arange(max_union + 1), indexing="ij")
    valid = (union >= 1) & (inter <= union)
    value = 0.5 * same + 0.5 * (inter / np.maximum(union, 1))  # the formula, in float64
    values = np.unique(value[valid])
    code_of = np.where(valid, np.searchsorted(values, value), 0)
    return values, code_of


def _indices(index, size: int, what: str) -> np.ndarray:
    index = np.asarray(index)
    if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
        raise ValueError(f"{what} indices must be a 1-D integer array, got shape {index.shape} {index.dtype}")
    if len(index) and (index.min() < 0 or index.max() >= size):
        bad = index[(index < 0) | (index >= size)][0]
        raise IndexError(f"{what} index {int(bad)} is out of range for {size} {what}s")
    return index


def _layout_problems(table: RelevancyTable) -> list[str]:
    problems = []
    rows, cols = table.codes.shape if table.codes.ndim == 2 else (0, 0)
    if table.codes.ndim != 2 or table.codes.dtype not in (np.uint8, np.uint16):
        problems.append(f"codes must be a 2-D uint8/uint16 array, got {table.codes.dtype} {table.codes.shape}")
    if table.codes.size and int(table.codes.max()) >= len(table.values):
        problems.append("a code points past the value list")
    for name, sig, bound in (
        ("video_sig", table.video_sig, rows),
        ("sentence_sig", table.sentence_sig, cols),
    ):
        if len(sig) and (sig.min() < 0 or sig.max() >= bound):
            problems.append(f"{name} points outside the {bound} signatures")
    if len(table.video_ids) != len(table.video_sig) or len(table.sentence_ids) != len(table.sentence_sig):
        problems.append("narration_id lists do not match the row counts")
    return problems


def video_class_relevancy(labels: np.ndarray, video_ids, class_ids) -> RelevancyTable:
    """Charades-Ego fine-tuning's soft labels, videos x classes: R(v, c) = 1 when class c is among video v's
    actions, else 0 (multi-hot ``labels``, e.g. from the ``actions`` column).

    EVA02-AT fine-tunes on Charades-Ego with the SMS loss over video-class soft labels without giving their
    equation; this is the relevance the action labels define (the class names are the captions), written here
    because no library builds it. Videos with no label have no relevant caption: the caller decides about them.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape != (len(video_ids), len(class_ids)):
        raise ValueError(f"labels {labels.shape} do not match {len(video_ids)} videos x {len(class_ids)} classes")
    signatures, video_sig = np.unique(labels != 0, axis=0, return_inverse=True)
    return RelevancyTable(
        video_sig.ravel(),
        np.arange(len(class_ids)),
        signatures.astype(np.uint8),  # code 0: R = 0, code 1: R = 1
        np.array([0.0, 1.0]),
        np.asarray(video_ids, dtype=str),
        np.asarray(class_ids, dtype=str),
    )
