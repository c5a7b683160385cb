"""``soft_labels`` stage: the EK100 relevancy tables (videos x sentences) of the train and test splits.

Writes ``<out>/<split>.npz`` and ``<out>/summary.json`` (each table's sizes and counts; no timings, so that
the same inputs give the same bytes). One MLflow run "soft_labels" holds the params, the summaries and the
build seconds as metrics (``<split>.<name>``), ``summary.json`` and the lineage tags.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from eva02at.atomic import write_text
from eva02at.labels import build_relevancy
from eva02at.tracking import Tracker, read_settings
from stages.common import lineage_tags, stage_main, stage_params

log = logging.getLogger(__name__)


@dataclass
class Split:
    videos: str  # EPIC_100_retrieval_<split>.csv
    sentences: str  # EPIC_100_retrieval_<split>_sentence.csv


@dataclass
class SoftLabelParams:
    out: str
    splits: dict[str, Split]


@stage_main
def main() -> None:
    params, args = stage_params("soft_labels", SoftLabelParams, __doc__)
    out = Path(params.out)
    tracking = read_settings(args.params)
    tags = lineage_tags("soft_labels")
    with Tracker(tracking.experiment, "soft_labels", tracking.uri, tracking.enabled, tags) as tracker:
        tracker.log_params(asdict(params))
        summaries = {}
        for name, split in params.splits.items():
            started = time.perf_counter()
            summaries[name] = build_relevancy(split.videos, split.sentences, out / f"{name}.npz")
            seconds = time.perf_counter() - started
            log.info("%s: %s in %.1f s", name, summaries[name], seconds)
            metrics = {**summaries[name], "build_seconds": seconds}
            tracker.log_metrics({f"{name}.{key}": value for key, value in metrics.items()})
        write_text(out / "summary.json", json.dumps(summaries, indent=2) + "\n")
        tracker.log_artifact(out / "summary.json")


if __name__ == "__main__":
    main()
