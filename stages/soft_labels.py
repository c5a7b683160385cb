"""``soft_labels`` stage: the relevancy tables (videos x sentences) of the EK100 train and test splits, and of
Charades-Ego's training videos (videos x class names, ``format: charades``) for its fine-tuning.

Writes ``<out>/<split>.npz`` (the exact table), ``<out>/<split>_queries.csv`` (each sentence with the text of
its video row, as the official evaluation reads the queries), with ``pickle`` set ``<out>/<split>_pickle.npz``
(the peers' relevancy pickle as a table, for evaluation to use instead); for a Charades-Ego split
``<out>/<split>.npz`` and ``<out>/<split>_queries.csv`` (class id and name, the captions), videos without an
action left out and listed; and ``<out>/summary.json``: each
table's sizes and counts, the sentence rows whose CSV text differs from their video row's, and where the
pickle differs from the exact table (no timings, so that the same inputs give the same bytes). One MLflow run
"soft_labels" holds the params, the numeric summaries and build seconds as metrics (``<split>.<name>``),
``summary.json`` and the lineage tags. The pickle is a param, not a DVC dep (it is optional); its SHA-256 goes
into ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from eva02at.core.atomic import write_text
from eva02at.core.config import ConfigError
from eva02at.core.digest import file_digest
from eva02at.data.ek100_peers import official_queries, read_relevancy_pickle, relevancy_differences, table_from_dense
from eva02at.data.labels import RelevancyTable, build_relevancy, video_class_relevancy
from eva02at.evaluation.benchmarks.charades_ego import read_charades_labels, read_class_names
from stages.common import stage_main, stage_params
from stages.lineage import stage_run

log = logging.getLogger(__name__)


@dataclass
class Split:
    videos: str  # EPIC_100_retrieval_<split>.csv; charades: CharadesEgo_v1_<split>_only1st.csv
    sentences: str  # EPIC_100_retrieval_<split>_sentence.csv; charades: Charades_v1_classes.txt
    pickle: str | None = None  # the peers' relevancy pickle of the split (caption_relevancy_EPIC_100_retrieval_*.pkl)
    format: Literal["ek100", "charades"] = "ek100"


@dataclass
class SoftLabelParams:
    out: str
    splits: dict[str, Split]


@stage_main
def main() -> None:
    params, args = stage_params("soft_labels", SoftLabelParams, __doc__)
    out = Path(params.out)
    with stage_run("soft_labels", args.params) as tracker:
        tracker.log_params(asdict(params))
        summaries = {}
        for name, split in params.splits.items():
            started = time.perf_counter()
            if split.format == "charades":
                summaries[name] = charades_split(name, split, out)
            else:
                summaries[name] = build_relevancy(split.videos, split.sentences, out / f"{name}.npz")
            seconds = time.perf_counter() - started
            log.info("%s: %s in %.1f s", name, summaries[name], seconds)
            if split.format == "ek100":
                summaries[name] |= peer_inputs(name, split, out)
            metrics = {key: value for key, value in summaries[name].items() if isinstance(value, int | float)}
            tracker.log_metrics(
                {f"{name}.{key}": value for key, value in {**metrics, "build_seconds": seconds}.items()}
            )
        write_text(out / "summary.json", json.dumps(summaries, indent=2) + "\n")
        tracker.log_artifact(out / "summary.json")


def charades_split(name: str, split: Split, out: Path) -> dict[str, Any]:
    """The video x class table of a Charades-Ego CSV and its class-name captions; what it holds.

    A video without any action has no relevant class to train on: it is left out, counted and listed."""
    if split.pickle is not None:
        raise ConfigError(f"soft_labels.splits.{name}.pickle: only EK100 splits have the peers' pickle")
    class_ids, names = read_class_names(split.sentences)
    video_ids, labels = read_charades_labels(split.videos, class_ids)
    labelled = labels.any(axis=1)
    unlabelled = [video for video, kept in zip(video_ids, labelled, strict=True) if not kept]
    if unlabelled:
        log.warning("%s: %d video(s) of %s have no action and are left out", name, len(unlabelled), split.videos)
    kept = [video for video, keep in zip(video_ids, labelled, strict=True) if keep]
    table = video_class_relevancy(labels[labelled], kept, class_ids)
    table.save(out / f"{name}.npz")
    queries = pd.DataFrame({"narration_id": class_ids, "narration": names})
    write_text(out / f"{name}_queries.csv", queries.to_csv(index=False))
    return {**table.summary(), "videos_without_action": len(unlabelled), "without_action": unlabelled}


def peer_inputs(name: str, split: Split, out: Path) -> dict[str, Any]:
    """The split's official query table and, with a pickle, its table and differences; what they found."""
    read = {"dtype": str, "keep_default_na": False}
    queries = official_queries(
        pd.read_csv(split.videos, **read), pd.read_csv(split.sentences, **read), split.videos, split.sentences
    )
    write_text(out / f"{name}_queries.csv", queries.table.to_csv(index=False))
    found: dict[str, Any] = {"query_texts_differing": len(queries.differing), "query_texts": queries.differing}
    if queries.differing:
        log.info("%s: %d sentence text(s) differ from their video row's", name, len(queries.differing))
    if split.pickle is not None:
        exact = RelevancyTable.load(out / f"{name}.npz")
        matrix = read_relevancy_pickle(split.pickle)
        table_from_dense(matrix, exact, split.pickle).save(out / f"{name}_pickle.npz")
        texts = dict(zip(queries.table["narration_id"], queries.table["narration"], strict=True))
        differences = relevancy_differences(exact, matrix, texts)
        log.info(
            "%s: the pickle differs from the exact table in %d cells (largest %g)",
            name,
            differences.cells,
            differences.largest,
        )
        found |= {f"pickle_{key}": value for key, value in differences.summary().items()}
        found["pickle_sha256"] = file_digest(split.pickle)
    return found


if __name__ == "__main__":
    main()
