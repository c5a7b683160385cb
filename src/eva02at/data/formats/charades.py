"""Charades(-Ego) CSVs (``CharadesEgo_v1_{train,test}_only1st.csv``): each video one clip."""

from __future__ import annotations

from eva02at.data.annotations import (
    Segment,
    Segments,
    Source,
    needed_columns,
    parse_span,
    register_format,
    segments_of_rows,
    video_path,
)

NAME = "charades"
CHARADES_NEEDED = ("id", "length")


@register_format(NAME, layout="{id}.mp4")
def read_charades(source: Source) -> Segments:
    """Whole videos of a Charades(-Ego) CSV, each one clip (labels are read by the evaluation).

    ``length`` has two decimals, so it can end up to 5 ms past the last frame; decoding clamps such ends.
    """

    def segment(line: int, row: dict[str, str]) -> Segment:
        start, end, _ = parse_span("0", row["length"])
        return Segment(row["id"], video_path(source.pattern, row), start, end, line)

    return segments_of_rows(source, needed_columns(CHARADES_NEEDED, source.pattern), segment)
