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

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from eva02at.core.errors import BadInput

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
    """Segments of an EgoClip-format table (tab- or comma-separated, times in seconds).

    EgoClip has 3.85M rows: the table is parsed in columnar batches (pyarrow.csv) and the usual rows (every
    field there, plain decimal times, a video path from plain fields) are converted with Arrow compute; any
    other row goes through :func:`_egoclip_row`, as every row of a table that is not one row per line does.
    """
    needed = _needed(EGOCLIP_NEEDED, source.pattern)
    read = _egoclip_columnar(source, needed)
    if read is not None:
        return read
    segments, errors = [], []
    for line, row, problem in _rows(source.annotations, needed):
        found = RowError(source.annotations, line, problem) if problem else _egoclip_row(source, line, row)
        (errors if isinstance(found, RowError) else segments).append(found)
    return segments, errors


def _egoclip_row(source: Source, line: int, row: dict[str, str]) -> Segment | RowError:
    """One EgoClip row with all its needed fields: its segment, or why it cannot be one."""
    try:
        start, end, clamped = _span(row["clip_start"], row["clip_end"], clamp_negative_start=True)
        video = source.pattern.format(**row)
    except (ValueError, KeyError) as err:
        return RowError(source.annotations, line, str(err))
    return Segment(f"{row['video_uid']}_{line - 2}", video, start, end, line, row["clip_text"], clamped)


_PLAIN_SECONDS = r"^-?[0-9]+(\.[0-9]*)?$"  # what both Arrow's cast and parse_timestamp read as the same number


def _egoclip_columnar(source: Source, needed: tuple[str, ...]) -> tuple[list[Segment], list[RowError]] | None:
    """:func:`read_egoclip` from Arrow batches, or None when the table is not one row per line (quoted line
    breaks, blank lines, ragged rows: the row-by-row reader then numbers the lines as before)."""
    path = source.annotations
    with open(path, newline="") as handle:
        header_line = handle.readline()
    delimiter = "\t" if "\t" in header_line else ","
    header = next(csv.reader([header_line], delimiter=delimiter), [])
    missing = [c for c in needed if c not in header]
    if missing:
        raise BadInput(f"{path}: missing column(s) {missing}")
    if len(set(header)) != len(header):
        return None
    segments, errors, rows = [], [], 0
    try:
        batches = pv.open_csv(
            path,
            read_options=pv.ReadOptions(block_size=1 << 24),
            parse_options=pv.ParseOptions(delimiter=delimiter),
            convert_options=pv.ConvertOptions(column_types=dict.fromkeys(header, pa.string()), include_columns=needed),
        )
        for batch in batches:
            _egoclip_batch(source, needed, batch, rows, segments, errors)
            rows += batch.num_rows
    except pa.ArrowInvalid:
        return None
    return (segments, errors) if rows == _data_lines(path) else None


def _egoclip_batch(
    source: Source,
    needed: tuple[str, ...],
    batch: pa.RecordBatch,
    first_row: int,
    segments: list[Segment],
    errors: list[RowError],
) -> None:
    """Append the segments and row errors of one Arrow batch of string columns (``first_row``: its offset)."""
    columns = {name: batch.column(name) for name in needed}
    start_text, end_text = columns["clip_start"], columns["clip_end"]
    usual = pc.and_(
        pc.match_substring_regex(start_text, _PLAIN_SECONDS), pc.match_substring_regex(end_text, _PLAIN_SECONDS)
    )
    for name in needed:
        usual = pc.and_(usual, pc.not_equal(pc.utf8_length(columns[name]), 0))
    usual = pc.and_(usual, pc.invert(pc.starts_with(end_text, "-")))
    safe = {name: pc.if_else(usual, column, "0") for name, column in columns.items()}
    negative = pc.starts_with(safe["clip_start"], "-")
    start = pc.cast(pc.utf8_ltrim(safe["clip_start"], "-"), pa.float64())
    end = pc.cast(safe["clip_end"], pa.float64())
    clamped = pc.and_(negative, pc.greater(start, 0)).to_pylist()
    start = pc.if_else(negative, 0.0, start)
    usual = pc.and_(usual, pc.greater(end, start))
    videos = _pattern_column(source.pattern, columns)
    index = pa.array(range(first_row, first_row + batch.num_rows), pa.int64())
    clip_ids = pc.binary_join_element_wise(columns["video_uid"], pc.cast(index, pa.string()), "_")
    values = zip(
        usual.to_pylist(), clip_ids.to_pylist(), videos.to_pylist() if videos is not None else [None] * batch.num_rows,
        start.to_pylist(), end.to_pylist(), columns["clip_text"].to_pylist(), clamped, strict=True,
    )  # fmt: skip
    for row, (is_usual, clip_id, video, start_s, end_s, text, was_clamped) in enumerate(values, first_row):
        line = row + 2  # header = 1
        if is_usual and video is not None:
            reasons = (CLAMP_NEGATIVE_START,) if was_clamped else ()
            segments.append(Segment(clip_id, video, start_s, end_s, line, text, reasons))
            continue
        fields = {name: column[row - first_row].as_py() for name, column in columns.items()}
        empty = [c for c in needed if fields[c] == ""]
        found = RowError(source.annotations, line, f"missing field(s) {empty}") if empty else None
        found = found or _egoclip_row(source, line, fields)
        (errors if isinstance(found, RowError) else segments).append(found)


def _pattern_column(pattern: str, columns: dict[str, pa.Array]) -> pa.Array | None:
    """The video paths of a batch when ``pattern`` names plain fields (``{video_uid}.mp4``), else None."""
    pieces = []
    for literal, name, spec, conversion in string.Formatter().parse(pattern):
        if name is not None and (spec or conversion or name not in columns):
            return None
        pieces += [pa.scalar(literal)] if literal else []
        pieces += [columns[name]] if name is not None else []
    if not any(isinstance(piece, pa.Array | pa.ChunkedArray) for piece in pieces):
        return None
    return pc.binary_join_element_wise(*pieces, "")


def _data_lines(path: str | os.PathLike) -> int:
    """Lines after the header, counting a last line without a line break."""
    count, last = 0, b"\n"
    with open(path, "rb") as handle:
        while block := handle.read(1 << 24):
            count, last = count + block.count(b"\n"), block[-1:]
    return count - 1 + (last != b"\n")


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
    from eva02at.data.video import VideoDecodeError, index_video  # the frames stage's own frame count and rate

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
