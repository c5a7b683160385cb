"""Benchmark results from exported embeddings: EK100 MIR, EgoMCQ and Charades-Ego, and a random baseline.

This module turns annotation files and embedding exports into the inputs of ``eva02at.metrics``. Every
vector is looked up by its id (EK100 narration_id, EgoMCQ question and ``<question>_<choice>`` clip, Charades
video and class id), never by row position or text: exports keep the frames manifest's order, which need
not be the annotation's, and EK100 sentence texts repeat. The random row scores every pair with a seeded
normal draw, averaged over a few draws, so results can be read against chance.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from eva02at.config import ConfigError
from eva02at.embeddings import Embeddings
from eva02at.errors import BadInput
from eva02at.labels import RelevancyTable
from eva02at.metrics import INTER_VIDEO, INTRA_VIDEO, charades_map, egomcq_accuracy, ek100_mir

BENCHMARKS = ("ek100_mir", "egomcq", "charades_ego")


@dataclass(frozen=True)
class McqQuestions:
    """EgoMCQ questions: a query text and the clips of its choices, one of them the answer."""

    ids: list[str]  # question ids (the file's keys)
    texts: list[str]  # query texts
    choices: list[list[str]]  # clip ids ``<question>_<choice>`` in choice order
    answers: np.ndarray  # index into ``choices[q]``
    types: np.ndarray  # 1 = inter-video, 2 = intra-video (the file's "types")


@dataclass(frozen=True)
class CharadesLabels:
    """Charades-Ego multi-label ground truth: ``labels[v, k]`` = 1 when video v shows class k."""

    video_ids: list[str]
    class_ids: list[str]
    labels: np.ndarray  # (videos, classes) uint8


@dataclass(frozen=True)
class Benchmarks:
    """The ground truth of the three benchmarks."""

    relevancy: RelevancyTable  # EK100 test videos x sentences
    questions: McqQuestions
    charades: CharadesLabels


def read_sentences(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(narration_id, narration) of an EK100 sentence CSV, in file order."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("narration_id", "narration") if c not in frame.columns]
    if missing:
        raise BadInput(f"{path}: missing column(s) {missing}")
    return frame["narration_id"].tolist(), frame["narration"].tolist()


def read_mcq(path: str | os.PathLike) -> McqQuestions:
    """The questions of an EgoMCQ file (EgoVLP's egomcq.json layout)."""
    ids, texts, choices, answers, types = [], [], [], [], []
    for qid, question in json.loads(Path(path).read_text()).items():
        try:
            keys = sorted(question["choices"], key=int)
            answer, kind = keys.index(str(question["answer"])), int(question["types"])
            text = question["query"]["clip_text"]
        except (KeyError, ValueError, TypeError) as err:
            raise BadInput(f"{path}: question {qid}: needs query.clip_text, choices, answer, types ({err!r})") from err
        if kind not in (INTER_VIDEO, INTRA_VIDEO):
            raise BadInput(f"{path}: question {qid}: types {kind} is neither {INTER_VIDEO} nor {INTRA_VIDEO}")
        ids.append(qid)
        texts.append(text)
        choices.append([f"{qid}_{key}" for key in keys])
        answers.append(answer)
        types.append(kind)
    return McqQuestions(ids, texts, choices, np.array(answers, dtype=np.int64), np.array(types, dtype=np.int64))


def read_class_names(path: str | os.PathLike) -> tuple[list[str], list[str]]:
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


def read_charades_labels(path: str | os.PathLike, class_ids: Sequence[str]) -> CharadesLabels:
    """Multi-hot labels of a Charades(-Ego) CSV from its ``actions`` column (``c001 0.10 2.30;c008 ...``)."""
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
    return CharadesLabels(frame["id"].tolist(), list(class_ids), labels)


def read_mcq_queries(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(question id, query text) of an EgoMCQ file: the texts matched against the choice clips."""
    questions = read_mcq(path)
    return questions.ids, questions.texts


TEXT_FORMATS: dict[str, Callable[[str], tuple[list[str], list[str]]]] = {
    "ek100_sentences": read_sentences,  # EK100 retrieval sentences: narration_id, narration
    "egomcq_queries": read_mcq_queries,  # question id, query text
    "charades_classes": read_class_names,  # class id, class name
}


def read_texts(text_format: str, path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(sentence ids, texts) a collection's text export holds, read with the named format."""
    if text_format not in TEXT_FORMATS:
        raise ConfigError(f"{path}: unknown text format {text_format!r}; known: {sorted(TEXT_FORMATS)}")
    return TEXT_FORMATS[text_format](os.fspath(path))


def similarity(
    videos: Embeddings, texts: Embeddings, video_ids: Sequence[str], sentence_ids: Sequence[str], what: str
) -> np.ndarray:
    """Cosine similarity ``[len(video_ids), len(sentence_ids)]`` of unit-norm exports, rows and columns by id."""
    return videos.select(video_ids, what) @ texts.select(sentence_ids, what).T


def mcq_scores(videos: Embeddings, texts: Embeddings, questions: McqQuestions) -> np.ndarray:
    """``[questions, choices]`` similarity of each query text to each of its choice clips."""
    sizes = {len(c) for c in questions.choices}
    if len(sizes) != 1:
        raise BadInput(f"EgoMCQ questions have different numbers of choices: {sorted(sizes)}")
    query = texts.select(questions.ids, "EgoMCQ queries")  # (Q, D)
    clips = videos.select([c for choice in questions.choices for c in choice], "EgoMCQ choices")
    clips = clips.reshape(len(questions.ids), sizes.pop(), -1)  # (Q, C, D)
    return np.einsum("qd,qcd->qc", query, clips)


def mcq_metrics(scores: np.ndarray, questions: McqQuestions) -> dict[str, float]:
    accuracy = egomcq_accuracy(scores, questions.answers, questions.types)
    return {key: accuracy[key] for key in ("inter_video", "intra_video", "overall")}


def evaluate_model(embeddings: dict[str, tuple[Embeddings, Embeddings]], benchmarks: Benchmarks) -> dict:
    """Metrics of one model: ``embeddings[benchmark]`` is its (video, text) export pair."""
    missing = [name for name in BENCHMARKS if name not in embeddings]
    if missing:
        raise ValueError(f"no embeddings for benchmark(s) {missing}")
    for videos, texts in embeddings.values():
        if videos.info.checkpoint_sha256 != texts.info.checkpoint_sha256:
            raise BadInput(
                f"{videos.path} ({videos.info.checkpoint}) and {texts.path} ({texts.info.checkpoint}) were "
                "exported with different checkpoints: their similarities mean nothing"
            )
    table, labels = benchmarks.relevancy, benchmarks.charades
    mir = similarity(*embeddings["ek100_mir"], list(table.video_ids), list(table.sentence_ids), "EK100 MIR")
    charades = similarity(*embeddings["charades_ego"], labels.video_ids, labels.class_ids, "Charades-Ego")
    return {
        "ek100_mir": ek100_mir(mir, table.dense()),
        "egomcq": mcq_metrics(mcq_scores(*embeddings["egomcq"], benchmarks.questions), benchmarks.questions),
        "charades_ego": {"mAP": charades_map(charades, labels.labels)},
    }


def random_baseline(benchmarks: Benchmarks, seed: int = 0, draws: int = 5) -> dict:
    """Expected metrics of chance: standard-normal similarities (seeded), averaged over ``draws`` draws."""
    if draws < 1:
        raise ValueError(f"random baseline needs at least one draw, got {draws}")
    rng = np.random.default_rng(seed)
    relevancy = benchmarks.relevancy.dense()
    questions, labels = benchmarks.questions, benchmarks.charades
    results = []
    for _ in range(draws):
        mcq = rng.standard_normal((len(questions.ids), len(questions.choices[0])))
        results.append(
            {
                "ek100_mir": ek100_mir(rng.standard_normal(relevancy.shape, dtype=np.float32), relevancy),
                "egomcq": mcq_metrics(mcq, questions),
                "charades_ego": {"mAP": charades_map(rng.standard_normal(labels.labels.shape), labels.labels)},
            }
        )
    return {
        name: {key: float(np.mean([r[name][key] for r in results])) for key in results[0][name]} for name in results[0]
    }


def flatten_metrics(nested: dict, prefix: str = "") -> dict[str, float]:
    """Nested metrics as flat dotted names (``finetuned.ek100_mir.mAP_avg``), the form MLflow takes."""
    flat: dict[str, float] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        flat.update(flatten_metrics(value, f"{name}.") if isinstance(value, dict) else {name: float(value)})
    return flat


@dataclass(frozen=True)
class RetrievedClip:
    clip_id: str
    score: float
    relevance: float  # EK100 soft relevance of the clip to the query sentence


@dataclass(frozen=True)
class RetrievalExample:
    sentence_id: str
    text: str
    hits: list[RetrievedClip]  # best first


def retrieval_examples(
    videos: Embeddings, texts: Embeddings, table: RelevancyTable, count: int = 4, top: int = 5
) -> list[RetrievalExample]:
    """Text-to-video results of ``count`` EK100 sentences spread evenly over the sentence list."""
    text_of = dict(zip(texts.ids, texts.table["text"].to_pylist(), strict=True))
    video_ids, sentence_ids = list(table.video_ids), list(table.sentence_ids)
    picked = np.unique(np.linspace(0, len(sentence_ids) - 1, count).round().astype(int))
    scores = similarity(videos, texts, video_ids, [sentence_ids[j] for j in picked], "the retrieval grid")
    relevance = table.lookup(np.arange(len(video_ids)), picked)  # (videos, picked)
    examples = []
    for column, j in enumerate(picked):
        order = np.argsort(-scores[:, column], kind="stable")[:top]
        hits = [RetrievedClip(video_ids[i], float(scores[i, column]), float(relevance[i, column])) for i in order]
        examples.append(RetrievalExample(sentence_ids[j], text_of[sentence_ids[j]], hits))
    return examples
