"""A synthetic EPIC-KITCHENS-100 retrieval split: real caption rows, drawn videos, real table formats.

Each split's segments are real rows (test rows for the test split, train sentences for the train
split) placed a few at a time into videos of made-up participants, so train and test differ in
people (backgrounds) as in the real benchmark.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from eva02at.data.synthetic.captions import NOUN_CLASSES_CSV, VERB_CLASSES_CSV, Caption
from eva02at.data.synthetic.config import SampleParams
from eva02at.data.synthetic.layout import Shot, VideoJob, chunk_sizes, plan_spans
from eva02at.data.synthetic.tables import clock, write_table

ROOT = "epic-kitchens"
# The published retrieval CSV's columns, in order (the reader needs only some: eva02at.data.formats.ek100).
EK100_COLUMNS = (
    "narration_id",
    "participant_id",
    "video_id",
    "narration_timestamp",
    "start_timestamp",
    "stop_timestamp",
    "start_frame",
    "stop_frame",
    "narration",
    "verb",
    "verb_class",
    "noun",
    "noun_class",
    "all_nouns",
    "all_noun_classes",
)
TRAIN_SENTENCE_COLUMNS = ("narration_id", "narration", "verb_class", "noun_classes", "verb", "nouns")


def plan_split(
    rng: np.random.Generator, captions: list[Caption], participants: list[str], cfg: SampleParams
) -> tuple[list[VideoJob], list[dict]]:
    """Videos showing ``captions`` in order (a few per video, participants in turn) and their rows."""
    jobs, rows, videos_of = [], [], Counter()
    pending = iter(captions)
    for index, size in enumerate(chunk_sizes(rng, len(captions), cfg.segments_per_video)):
        participant = participants[index % len(participants)]
        videos_of[participant] += 1
        video_id = f"{participant}_{videos_of[participant]:02d}"
        spans, frames = plan_spans(rng, size, cfg.fps, cfg.segment_seconds, cfg.gap_seconds)
        shots = []
        for k, (start, stop) in enumerate(spans):
            caption = next(pending)
            shots.append(Shot(start, stop, caption.verb_class, caption.noun_classes))
            said = start + rng.uniform(0.0, 0.5) * (stop - start)  # narrations are spoken during the action
            rows.append(
                {
                    "narration_id": f"{video_id}_{k}",
                    "participant_id": participant,
                    "video_id": video_id,
                    "narration_timestamp": clock(said / cfg.fps, 3),
                    "start_timestamp": clock(start / cfg.fps, 2),
                    "stop_timestamp": clock(stop / cfg.fps, 2),
                    "start_frame": start + 1,  # EPIC-KITCHENS frames count from 1
                    "stop_frame": stop,
                    **_labels(caption),
                }
            )
        jobs.append(VideoJob(f"{ROOT}/videos/{participant}/{video_id}.MP4", participant, frames, tuple(shots)))
    return jobs, rows


def write_tables(
    folder: Path, source: Path, train: list[dict], test: list[dict], jobs: list[VideoJob], cfg: SampleParams
) -> None:
    """The annotation folder: both splits' video and sentence tables, video info and class lists."""
    folder.mkdir(parents=True, exist_ok=True)
    write_table(folder / "EPIC_100_retrieval_train.csv", EK100_COLUMNS, train)
    write_table(folder / "EPIC_100_retrieval_test.csv", EK100_COLUMNS, test)
    test_sentences = [{"narration_id": r["narration_id"], "narration": r["narration"]} for r in _first_of_each(test)]
    write_table(folder / "EPIC_100_retrieval_test_sentence.csv", ("narration_id", "narration"), test_sentences)
    train_sentences = [
        {
            "narration_id": r["narration_id"],
            "narration": r["narration"],
            "verb_class": r["verb_class"],
            "noun_classes": r["all_noun_classes"],
            "verb": r["verb"],
            "nouns": r["all_nouns"],
        }
        for r in _first_of_each(train)
    ]
    write_table(folder / "EPIC_100_retrieval_train_sentence.csv", TRAIN_SENTENCE_COLUMNS, train_sentences)
    info = [
        {
            "video_id": Path(job.path).stem,
            "duration": f"{job.frames / cfg.fps:.3f}",
            "fps": cfg.fps,
            "resolution": f"{cfg.width}x{cfg.height}",
        }
        for job in jobs
    ]
    write_table(folder / "EPIC_100_video_info.csv", ("video_id", "duration", "fps", "resolution"), info)
    for name in (VERB_CLASSES_CSV, NOUN_CLASSES_CSV):
        (folder / name).write_bytes((source / name).read_bytes())


def _labels(caption: Caption) -> dict:
    """The label columns, written as the real files write them (lists as Python literals)."""
    return {
        "narration": caption.narration,
        "verb": caption.verb,
        "verb_class": caption.verb_class,
        "noun": caption.nouns[0],
        "noun_class": caption.noun_classes[0],
        "all_nouns": str(list(caption.nouns)),
        "all_noun_classes": str(list(caption.noun_classes)),
    }


def _first_of_each(rows: list[dict]) -> list[dict]:
    """One row per distinct narration text: the first one, so sentences are keyed by a real row's id."""
    seen: dict[str, dict] = {}
    for row in rows:
        seen.setdefault(row["narration"], row)
    return list(seen.values())
