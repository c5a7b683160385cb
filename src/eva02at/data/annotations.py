"""What every annotation format shares: clip segments, row errors, the format registry and the row handling.

Every reader validates row by row: a malformed row becomes a :class:`RowError` naming the file, the line and
the reason, and every other row is still returned, so nothing is dropped silently. Each format is one module
of ``eva02at.data.formats`` that registers its reader where it is defined (:func:`register_format`) and uses
the public helpers here (:func:`read_rows`, :func:`segments_of_rows`, :func:`parse_span`, ...);
:func:`read_segments` reads a collection with the reader its ``format`` names. This module imports no format,
so that a module needing only :class:`Segment` does not depend on every reader.
"""

from __future__ import annotations

import ast
import csv
import math
import os
import string
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from eva02at.core.config import ConfigError, from_dict
from eva02at.core.errors import BadInput

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
class RowError:
    """A row that could not become a segment, and why."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class FormatParams:
    """A format's own keys of a ``frames.collections`` entry: none; a format with knobs subclasses this."""


@dataclass(frozen=True)
class Source:
    """Where a collection's clips come from: its annotation file and video folder (``frames.collections``)."""

    annotations: str
    videos: str = ""
    pattern: str | None = None  # video path from annotation fields; None: the format's layout
    options: FormatParams | None = None  # the format's params; None: its defaults (read_segments fills them in)


Segments = tuple[list[Segment], list[RowError]]
Reader = Callable[[Source], Segments]


@dataclass(frozen=True)
class AnnotationFormat:
    read: Reader
    layout: str  # default video path pattern of the format's download
    Params: type[FormatParams] = FormatParams


FORMATS: dict[str, AnnotationFormat] = {}


def register_format(name: str, layout: str, params: type[FormatParams] = FormatParams) -> Callable[[Reader], Reader]:
    """Register a reader of ``Source`` -> (segments, row errors) under ``name`` (the collection's ``format``),
    with the dataclass of its own params keys (the reader finds them in ``source.options``)."""

    def register(read: Reader) -> Reader:
        if name in FORMATS:
            raise ValueError(f"annotation format {name!r} is registered twice")
        FORMATS[name] = AnnotationFormat(read, layout, params)
        return read

    return register


def format_params(name: str, values: Any, where: str) -> FormatParams:
    """A collection's format-specific keys checked against its format's params; errors name ``where``."""
    if name not in FORMATS:
        raise ConfigError(f"{where}: no format module registers {name!r}; known: {sorted(FORMATS)}")
    return from_dict(FORMATS[name].Params, values, where)


def read_segments(format_name: str, source: Source) -> Segments:
    """The clips a collection asks for, and the annotation rows that could not become clips.

    Only formats whose module was imported are registered: ``eva02at.data.formats.registered`` imports them all.
    """
    if format_name not in FORMATS:
        raise ValueError(f"{source.annotations}: unknown annotation format {format_name!r}; known: {sorted(FORMATS)}")
    found = FORMATS[format_name]
    options = source.options if source.options is not None else found.Params()
    if not isinstance(options, found.Params):
        raise TypeError(f"format {format_name!r} takes {found.Params.__name__}, not {type(options).__name__}")
    return found.read(replace(source, pattern=source.pattern or found.layout, options=options))


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
    try:
        items = ast.literal_eval(value) if isinstance(value, str) else value
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(f"bad class list {value!r}") from None
    if isinstance(items, int):
        items = [items]
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, int) for i in items):
        raise ValueError(f"bad class list {value!r}")
    return list(items)


def parse_span(start: object, stop: object, clamp_negative_start: bool = False) -> tuple[float, float, tuple[str, ...]]:
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


def needed_columns(columns: tuple[str, ...], pattern: str | None) -> tuple[str, ...]:
    """``columns`` and the fields the video path ``pattern`` names (``{participant_id}/{video_id}.MP4``)."""
    try:
        named = [field for _, field, _, _ in string.Formatter().parse(pattern or "") if field]
    except ValueError as err:
        raise BadInput(f"video path pattern {pattern!r}: {err}") from None
    return tuple(dict.fromkeys([*columns, *named]))


def missing_columns(path: str | os.PathLike, header: list[str] | None, needed: tuple[str, ...]) -> None:
    """Stop reading a file whose header lacks a needed column: every row would be an error row."""
    missing = [c for c in needed if c not in (header or [])]
    if missing:
        raise BadInput(f"{path}: missing column(s) {missing}")


def read_rows(csv_path: str | os.PathLike, needed: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str], str]]:
    """Yield (line, row, problem) for every data row of a comma- or tab-separated file; ``problem`` names the
    needed fields a row leaves empty (a missing needed column stops the read: :func:`missing_columns`)."""
    with open(csv_path, newline="") as handle:
        sample = handle.readline()
        handle.seek(0)
        dialect = "excel-tab" if "\t" in sample else "excel"
        reader = csv.DictReader(handle, dialect=dialect)
        missing_columns(csv_path, list(reader.fieldnames or []), needed)
        for row in reader:
            empty = [c for c in needed if row.get(c) in (None, "")]
            yield reader.line_num, row, f"missing field(s) {empty}" if empty else ""


def video_path(pattern: str, fields: dict[str, Any]) -> str:
    """The video path ``pattern`` makes of a row's fields (a ValueError when they do not fit it)."""
    try:
        return pattern.format(**fields)
    except (KeyError, IndexError, AttributeError, TypeError, ValueError) as err:
        raise ValueError(f"video path pattern {pattern!r}: {err!r}") from None


def segments_of_rows(
    source: Source, needed: tuple[str, ...], segment_of: Callable[[int, dict[str, str]], Segment]
) -> Segments:
    """Every data row of ``source`` made a segment by ``segment_of(line, row)``; a row with an empty needed
    field, or one that ``segment_of`` refuses with a ValueError, is an error row naming its line."""
    segments, errors = [], []
    for line, row, problem in read_rows(source.annotations, needed):
        try:
            if problem:
                raise ValueError(problem)
            segments.append(segment_of(line, row))
        except ValueError as err:
            errors.append(RowError(source.annotations, line, str(err)))
    return segments, errors
