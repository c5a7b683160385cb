"""``soft_labels`` stage: the EK100 relevancy tables (videos x sentences) of the train and test splits."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from eva02at.atomic import write_text
from eva02at.labels import build_relevancy
from stages.common import stage_main, stage_params

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
    params, _ = stage_params("soft_labels", SoftLabelParams, __doc__)
    out = Path(params.out)
    summaries = {}
    for name, split in params.splits.items():
        summaries[name] = build_relevancy(split.videos, split.sentences, out / f"{name}.npz")
        log.info("%s: %s", name, summaries[name])
    write_text(out / "summary.json", json.dumps(summaries, indent=2) + "\n")


if __name__ == "__main__":
    main()
