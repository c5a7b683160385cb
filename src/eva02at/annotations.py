"""Annotation tables (EPIC-KITCHENS-100, EgoClip, plain video folders) as lists of clip segments.

Every reader validates row by row: a malformed row becomes a :class:`RowError` naming the file, the
line and the reason, and every other row is still returned, so nothing is dropped silently.
"""

from __future__ import annotations

import ast
import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from eva02at.errors import BadInput

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
EGOCLIP_COLUMNS = ("video_uid", "clip_start", "clip_end", "clip_text")


@dataclass(frozen=True)
class Segment:
    """One annotated clip: a time span of one video file, in seconds."""

    clip_id: str
    video: str  # path relative to the collection's video root
    start: float
    end: float
    line: int  # line of the annotation file (header = 1); 0 for clips cut from plain videos
    text: str = ""


@dataclass(frozen=True)
class RowError:
    """A row that could not become a segment, and why."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


def parse_timestamp(value: str) -> float:
    """``HH:MM:SS.ff`` (EPIC-KITCHENS) or plain seconds to seconds."""
    parts = str(value).strip().split(":")
    if not 1 <= len(parts) <= 3 or any(p == "" for p in parts):
        raise ValueError(f"bad timestamp {value!r}")
    try:
        seconds = 0.0
        for part in parts:
            seconds = seconds * 60 + float(part)
    except ValueError:
        raise ValueError(f"bad timestamp {value!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"bad timestamp {value!r}")
    return seconds


def parse_class_list(value: object) -> list[int]:
    """``"[2, 5]"`` (as stored in EK100 CSVs) or a list of ints to a list of ints."""
    items = ast.literal_eval(value) if isinstance(value, str) else value
    if isinstance(items, int):
        items = [items]
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, int) for i in items):
        raise ValueError(f"bad class list {value!r}")
    return list(items)


def read_ek100(csv_path: str | os.PathLike, pattern: str = "{participant_id}/{video_id}.MP4"):
    """Segments of an EPIC-KITCHENS-100 retrieval CSV; videos located by ``pattern``."""
    segments, errors = [], []
    for line, row, problem in _rows(csv_path, EK100_COLUMNS):
        if problem:
            errors.append(RowError(str(csv_path), line, problem))
            continue
        try:
            start, end = _span(row["start_timestamp"], row["stop_timestamp"])
            int(row["verb_class"]), parse_class_list(row["all_noun_classes"])
            video = pattern.format(**row)
        except (ValueError, SyntaxError, KeyError) as err:
            errors.append(RowError(str(csv_path), line, str(err)))
            continue
        segments.append(Segment(row["narration_id"], video, start, end, line, row["narration"]))
    return segments, errors


def read_egoclip(csv_path: str | os.PathLike, pattern: str = "{video_uid}.mp4"):
    """Segments of an EgoClip-format table (tab- or comma-separated, times in seconds)."""
    segments, errors = [], []
    for line, row, problem in _rows(csv_path, EGOCLIP_COLUMNS):
        if problem:
            errors.append(RowError(str(csv_path), line, problem))
            continue
        try:
            start, end = _span(row["clip_start"], row["clip_end"])
            video = pattern.format(**row)
        except (ValueError, KeyError) as err:
            errors.append(RowError(str(csv_path), line, str(err)))
            continue
        clip_id = f"{row['video_uid']}_{line - 2}"
        segments.append(Segment(clip_id, video, start, end, line, row["clip_text"]))
    return segments, errors


def read_egomcq(json_path: str | os.PathLike, pattern: str = "{video_uid}.mp4"):
    """The choice clips of an EgoMCQ file (the queries are text); clip id ``<question>_<choice>``."""
    segments, errors = [], []
    questions = json.loads(Path(json_path).read_text())
    for qid, question in questions.items():
        for choice, clip in sorted(question.get("choices", {}).items()):
            try:
                start, end = _span(clip["clip_start"], clip["clip_end"])
                video = pattern.format(**clip)
            except (ValueError, KeyError, TypeError) as err:
                errors.append(RowError(str(json_path), 0, f"question {qid} choice {choice}: {err}"))
                continue
            segments.append(Segment(f"{qid}_{choice}", video, start, end, 0, clip.get("clip_text", "")))
    return segments, errors


def read_charades(csv_path: str | os.PathLike, pattern: str = "{id}.mp4"):
    """Whole videos of a Charades(-Ego) CSV, each one clip (labels are read by the evaluation)."""
    segments, errors = [], []
    for line, row, problem in _rows(csv_path, ("id", "length")):
        if problem:
            errors.append(RowError(str(csv_path), line, problem))
            continue
        try:
            start, end = _span("0", row["length"])
            video = pattern.format(**row)
        except (ValueError, KeyError) as err:
            errors.append(RowError(str(csv_path), line, str(err)))
            continue
        segments.append(Segment(row["id"], video, start, end, line))
    return segments, errors


def read_video_list(csv_path: str | os.PathLike) -> list[str]:
    """Video files (column ``file``, relative to the video root) of an uncaptioned collection."""
    files = []
    for line, row, problem in _rows(csv_path, ("file",)):
        if problem:
            raise BadInput(f"{csv_path}:{line}: {problem}")
        files.append(row["file"])
    return files


def cut_videos(durations: dict[str, float], clip_seconds: float) -> list[Segment]:
    """Uncaptioned clips: each video cut into consecutive ``clip_seconds`` windows.

    ``durations`` maps video paths to seconds; a video whose duration is unknown (NaN: it could not be
    opened) gets one clip, so that decoding reports the failure against the file.
    """
    segments = []
    for video in sorted(durations):
        duration = durations[video]
        known = math.isfinite(duration)
        count = max(1, int(duration // clip_seconds)) if known else 1
        stem = Path(video).with_suffix("").as_posix().replace("/", "_")
        for k in range(count):
            start = k * clip_seconds
            end = min(start + clip_seconds, duration) if known else clip_seconds
            segments.append(Segment(f"{stem}_{k:04d}", video, start, end, 0))
    return segments


def _span(start: str, stop: str) -> tuple[float, float]:
    start_s, stop_s = parse_timestamp(start), parse_timestamp(stop)
    if stop_s <= start_s:
        raise ValueError(f"stop {stop!r} is not after start {start!r}")
    return start_s, stop_s


def _rows(csv_path: str | os.PathLike, required: tuple[str, ...]):
    """Yield (line, row, problem) for every data row; ``problem`` names a missing column or empty field."""
    with open(csv_path, newline="") as handle:
        sample = handle.readline()
        handle.seek(0)
        dialect = "excel-tab" if "\t" in sample else "excel"
        reader = csv.DictReader(handle, dialect=dialect)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise BadInput(f"{csv_path}: missing column(s) {missing}")
        for row in reader:
            line = reader.line_num
            empty = [c for c in required if row.get(c) in (None, "")]
            yield line, row, f"missing field(s) {empty}" if empty else ""
