"""Annotation formats (EPIC-KITCHENS-100, EgoClip, EgoMCQ, Charades-Ego, plain video lists) as clip segments.

Every reader validates row by row: a malformed row becomes a :class:`RowError` naming the file, the
line and the reason, and every other row is still returned, so nothing is dropped silently. Readers are
registered where they are defined (:func:`register_format`), so a new format is one function and its
decorator; :func:`read_segments` reads a collection with the reader its ``format`` names.
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import math
import os
import string
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from eva02at.errors import BadInput

log = logging.getLogger(__name__)

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
# What each reader needs, beside the fields its video path pattern names (README, Real data): a needed field
# that is empty makes the row an error row; any other column may be missing or empty.
EK100_NEEDED = ("narration_id", "start_timestamp", "stop_timestamp", "verb_class", "all_noun_classes")
EGOCLIP_NEEDED = ("video_uid", "clip_start", "clip_end", "clip_text")
CHARADES_NEEDED = ("id", "length")
VIDEOLIST_NEEDED = ("file",)
MCQ_INTER_VIDEO, MCQ_INTRA_VIDEO = 1, 2  # EgoMCQ "types": choices from five videos, or from one video

# Why a segment was moved inside its video (the manifest's ``clamped`` column, counted in the stage summary).
CLAMP_NEGATIVE_START = "negative_start"  # EgoClip clip_start < 0: starts at 0, as EgoVLP does
CLAMP_END_PAST_VIDEO = "end_past_video"  # end within one frame past the video's end: ends on its last frame


@dataclass(frozen=True, slots=True)
class Segment:
    """One annotated clip: a time span of one video file, in seconds (slots: EgoClip holds 3.85M of them)."""

    clip_id: str
    video: str  # path relative to the collection's video root
    start: float
    end: float
    line: int  # line of the annotation file (header = 1); 0 for clips cut from plain videos
    text: str = ""
    clamped: tuple[str, ...] = ()  # CLAMP_* reasons applied while reading

    def __post_init__(self) -> None:
        # one string per video, not per clip: EgoClip's 3.85M clips name about 9.6k videos
        object.__setattr__(self, "video", sys.intern(self.video))


@dataclass(frozen=True)
class Source:
    """Where a collection's clips come from: its annotation file and video folder (``frames.collections``)."""

    annotations: str
    videos: str = ""
    pattern: str | None = None  # video path from annotation fields; None: the format's layout
    clip_seconds: float = 2.0  # videolist only: window length


Reader = Callable[[Source], "tuple[list[Segment], list[RowError]]"]


@dataclass(frozen=True)
class AnnotationFormat:
    read: Reader
    layout: str  # default video path pattern of the format's download


FORMATS: dict[str, AnnotationFormat] = {}


def register_format(name: str, layout: str) -> Callable[[Reader], Reader]:
    """Register a reader of ``Source`` -> (segments, row errors) under ``name`` (the collection's ``format``)."""

    def register(read: Reader) -> Reader:
        if name in FORMATS:
            raise ValueError(f"annotation format {name!r} is registered twice")
        FORMATS[name] = AnnotationFormat(read, layout)
        return read

    return register


def read_segments(format_name: str, source: Source) -> tuple[list[Segment], list[RowError]]:
    """The clips a collection asks for, and the annotation rows that could not become clips."""
    if format_name not in FORMATS:
        raise ValueError(f"{source.annotations}: unknown annotation format {format_name!r}; known: {sorted(FORMATS)}")
    found = FORMATS[format_name]
    return found.read(replace(source, pattern=source.pattern or found.layout))


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


@register_format("ek100", layout="{participant_id}/{video_id}.MP4")
def read_ek100(source: Source) -> tuple[list[Segment], list[RowError]]:
    """Segments of an EPIC-KITCHENS-100 retrieval CSV: ids, video, times and classes; the narration is optional.

    Retrieval and its relevancy need the classes, not the narration's timestamp (empty in 70 rows of the
    real test split) nor its text (the queries are the sentence CSV's).
    """
    segments, errors = [], []
    for line, row, problem in _rows(source.annotations, _needed(EK100_NEEDED, source.pattern)):
        if problem:
            errors.append(RowError(source.annotations, line, problem))
            continue
        try:
            start, end, _ = _span(row["start_timestamp"], row["stop_timestamp"])
            int(row["verb_class"]), parse_class_list(row["all_noun_classes"])
            video = source.pattern.format(**row)
        except (ValueError, SyntaxError, KeyError) as err:
            errors.append(RowError(source.annotations, line, str(err)))
            continue
        segments.append(Segment(row["narration_id"], video, start, end, line, row.get("narration") or ""))
    return segments, errors


@register_format("egoclip", layout="{video_uid}.mp4")
def read_egoclip(source: Source) -> tuple[list[Segment], list[RowError]]:
    """Segments of an EgoClip-format table (tab- or comma-separated, times in seconds)."""
    segments, errors = [], []
    for line, row, problem in _rows(source.annotations, _needed(EGOCLIP_NEEDED, source.pattern)):
        if problem:
            errors.append(RowError(source.annotations, line, problem))
            continue
        try:
            start, end, clamped = _span(row["clip_start"], row["clip_end"], clamp_negative_start=True)
            video = source.pattern.format(**row)
        except (ValueError, KeyError) as err:
            errors.append(RowError(source.annotations, line, str(err)))
            continue
        clip_id = f"{row['video_uid']}_{line - 2}"
        segments.append(Segment(clip_id, video, start, end, line, row["clip_text"], clamped))
    return segments, errors


@dataclass(frozen=True)
class McqQuestion:
    """One EgoMCQ question: a query text and the clips of its choices, one of them the answer."""

    qid: str  # the file's key
    text: str  # query clip_text
    choices: tuple[str, ...]  # clip ids ``<question>_<choice>`` in choice order
    answer: int  # index into ``choices``
    kind: int  # MCQ_INTER_VIDEO or MCQ_INTRA_VIDEO (the file's "types")


@dataclass(frozen=True)
class EgoMcq:
    """An EgoMCQ file parsed once: its questions (for evaluation) and its choice clips (for frames)."""

    questions: list[McqQuestion]
    question_errors: list[RowError]  # questions without query text, choices, answer or types
    segments: list[Segment]
    clip_errors: list[RowError]  # choice clips without a video or a valid time span


def parse_egomcq(json_path: str | os.PathLike, pattern: str = "{video_uid}.mp4") -> EgoMcq:
    """EgoVLP's egomcq.json: clip id ``<question>_<choice>``, choices in numeric order."""
    path = str(json_path)
    parsed = EgoMcq([], [], [], [])
    for qid, question in json.loads(Path(path).read_text()).items():
        choices = question.get("choices") if isinstance(question, dict) else None
        keys = sorted(choices, key=_choice_order) if isinstance(choices, dict) else []
        try:
            answer, kind = keys.index(str(question["answer"])), int(question["types"])
            text = question["query"]["clip_text"]
            if kind not in (MCQ_INTER_VIDEO, MCQ_INTRA_VIDEO):
                raise ValueError(f"types {kind} is neither {MCQ_INTER_VIDEO} nor {MCQ_INTRA_VIDEO}")
            parsed.questions.append(McqQuestion(qid, text, tuple(f"{qid}_{k}" for k in keys), answer, kind))
        except (KeyError, ValueError, TypeError) as err:
            reason = f"question {qid}: needs query.clip_text, choices, answer, types ({err!r})"
            parsed.question_errors.append(RowError(path, 0, reason))
        for key in keys:
            try:
                clip = choices[key]
                start, end, clamped = _span(clip["clip_start"], clip["clip_end"], clamp_negative_start=True)
                video = pattern.format(**clip)
            except (ValueError, KeyError, TypeError) as err:
                parsed.clip_errors.append(RowError(path, 0, f"question {qid} choice {key}: {err}"))
                continue
            parsed.segments.append(Segment(f"{qid}_{key}", video, start, end, 0, clip.get("clip_text", ""), clamped))
    return parsed


def read_mcq_questions(json_path: str | os.PathLike) -> list[McqQuestion]:
    """The questions of an EgoMCQ file for evaluation, which needs every one: a malformed question is an error."""
    parsed = parse_egomcq(json_path)
    if parsed.question_errors:
        raise BadInput(str(parsed.question_errors[0]))
    return parsed.questions


@register_format("egomcq", layout="{video_uid}.mp4")
def read_egomcq(source: Source) -> tuple[list[Segment], list[RowError]]:
    """The choice clips of an EgoMCQ file (the queries are text, read by the evaluation)."""
    parsed = parse_egomcq(source.annotations, source.pattern)
    return parsed.segments, parsed.clip_errors


@register_format("charades", layout="{id}.mp4")
def read_charades(source: Source) -> tuple[list[Segment], list[RowError]]:
    """Whole videos of a Charades(-Ego) CSV, each one clip (labels are read by the evaluation).

    ``length`` has two decimals, so it can end up to 5 ms past the last frame; decoding clamps such ends.
    """
    segments, errors = [], []
    for line, row, problem in _rows(source.annotations, _needed(CHARADES_NEEDED, source.pattern)):
        if problem:
            errors.append(RowError(source.annotations, line, problem))
            continue
        try:
            start, end, _ = _span("0", row["length"])
            video = source.pattern.format(**row)
        except (ValueError, KeyError) as err:
            errors.append(RowError(source.annotations, line, str(err)))
            continue
        segments.append(Segment(row["id"], video, start, end, line))
    return segments, errors


@register_format("videolist", layout="{file}")
def read_video_clips(source: Source) -> tuple[list[Segment], list[RowError]]:
    """Uncaptioned clips: the videos of a list (column ``file``) cut into ``clip_seconds`` windows."""
    from eva02at.video import VideoDecodeError, index_video  # the frames stage's own frame count and rate

    durations, errors = {}, []
    for line, row, problem in _rows(source.annotations, _needed(VIDEOLIST_NEEDED, source.pattern)):
        if problem:
            errors.append(RowError(source.annotations, line, problem))
            continue
        video = source.pattern.format(**row)
        try:
            index = index_video(Path(source.videos) / video)
            durations[video] = index.num_frames / index.fps
        except VideoDecodeError as err:
            log.warning("%s: %s", source.annotations, err)
            durations[video] = math.nan
    return cut_videos(durations, source.clip_seconds), errors


def read_video_list(csv_path: str | os.PathLike) -> list[str]:
    """Video files (column ``file``, relative to the video root) of an uncaptioned collection."""
    files = []
    for line, row, problem in _rows(csv_path, VIDEOLIST_NEEDED):
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


def _span(start: object, stop: object, clamp_negative_start: bool = False) -> tuple[float, float, tuple[str, ...]]:
    """(start, stop) seconds and the clamps applied; a negative start is clamped to 0 where the format allows."""
    clamped: tuple[str, ...] = ()
    text = str(start).strip()
    if clamp_negative_start and text.startswith("-"):
        if parse_timestamp(text[1:]) > 0:  # a well-formed time below zero
            clamped = (CLAMP_NEGATIVE_START,)
        text = "0"
    start_s, stop_s = parse_timestamp(text), parse_timestamp(str(stop))
    if stop_s <= start_s:
        raise ValueError(f"stop {stop!r} is not after start {start!r}")
    return start_s, stop_s, clamped


def _needed(columns: tuple[str, ...], pattern: str | None) -> tuple[str, ...]:
    """``columns`` and the fields the video path ``pattern`` names (``{participant_id}/{video_id}.MP4``)."""
    named = [field for _, field, _, _ in string.Formatter().parse(pattern or "") if field]
    return tuple(dict.fromkeys([*columns, *named]))


def _choice_order(key: str) -> tuple[int, int | str]:
    """EgoMCQ choice keys ``"0"``..``"4"`` in numeric order (``"10"`` after ``"9"``); others after, by name."""
    return (0, int(key)) if str(key).isdigit() else (1, str(key))


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
