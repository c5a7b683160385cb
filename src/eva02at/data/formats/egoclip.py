"""EgoClip tables (``egoclip.csv``: tab- or comma-separated, times in seconds) as clip segments."""

from __future__ import annotations

import csv
import os
import string

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from eva02at.data.annotations import (
    CLAMP_NEGATIVE_START,
    RowError,
    Segment,
    Segments,
    Source,
    missing_columns,
    needed_columns,
    parse_span,
    read_rows,
    register_format,
    video_path,
)

NAME = "egoclip"
EGOCLIP_NEEDED = ("video_uid", "clip_start", "clip_end", "clip_text")


@register_format(NAME, layout="{video_uid}.mp4")
def read_egoclip(source: Source) -> Segments:
    """Segments of an EgoClip-format table (tab- or comma-separated, times in seconds).

    EgoClip has 3.85M rows: the table is parsed in columnar batches (pyarrow.csv) and the usual rows (every
    field there, plain decimal times, a video path from plain fields) are converted with Arrow compute; any
    other row goes through :func:`_egoclip_row`, as every row of a table that is not one row per line does.
    """
    needed = needed_columns(EGOCLIP_NEEDED, source.pattern)
    read = _egoclip_columnar(source, needed)
    if read is not None:
        return read
    segments, errors = [], []
    for line, row, problem in read_rows(source.annotations, needed):
        found = RowError(source.annotations, line, problem) if problem else _egoclip_row(source, line, row)
        (errors if isinstance(found, RowError) else segments).append(found)
    return segments, errors


def _egoclip_row(source: Source, line: int, row: dict[str, str]) -> Segment | RowError:
    """One EgoClip row with all its needed fields: its segment, or why it cannot be one."""
    try:
        start, end, clamped = parse_span(row["clip_start"], row["clip_end"], clamp_negative_start=True)
        video = video_path(source.pattern, row)
    except ValueError as err:
        return RowError(source.annotations, line, str(err))
    return Segment(f"{row['video_uid']}_{line - 2}", video, start, end, line, row["clip_text"], clamped)


_PLAIN_SECONDS = r"^-?[0-9]+(\.[0-9]*)?$"  # what both Arrow's cast and parse_timestamp read as the same number


def _egoclip_columnar(source: Source, needed: tuple[str, ...]) -> Segments | None:
    """:func:`read_egoclip` from Arrow batches, or None when the table is not one row per line (quoted line
    breaks, blank lines, ragged rows: the row-by-row reader then numbers the lines as before)."""
    path = source.annotations
    with open(path, newline="") as handle:
        header_line = handle.readline()
    delimiter = "\t" if "\t" in header_line else ","
    header = next(csv.reader([header_line], delimiter=delimiter), [])
    missing_columns(path, header, needed)
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
