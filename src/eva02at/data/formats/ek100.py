"""EPIC-KITCHENS-100 retrieval CSVs (``EPIC_100_retrieval_{train,test}.csv``) as clip segments."""

from __future__ import annotations

from eva02at.data.annotations import (
    Segment,
    Segments,
    Source,
    needed_columns,
    parse_class_list,
    parse_span,
    register_format,
    segments_of_rows,
    video_path,
)

NAME = "ek100"
# What the reader needs, beside the fields its video path pattern names (README, Real data): a needed field
# that is empty makes the row an error row; any other column may be missing or empty.
EK100_NEEDED = ("narration_id", "start_timestamp", "stop_timestamp", "verb_class", "all_noun_classes")


@register_format(NAME, layout="{participant_id}/{video_id}.MP4")
def read_ek100(source: Source) -> Segments:
    """Segments of an EPIC-KITCHENS-100 retrieval CSV: ids, video, times and classes; the narration is optional.

    Retrieval and its relevancy need the classes, not the narration's timestamp (empty in 70 rows of the
    real test split) nor its text (the queries are the sentence CSV's).
    """

    def segment(line: int, row: dict[str, str]) -> Segment:
        start, end, _ = parse_span(row["start_timestamp"], row["stop_timestamp"])
        try:
            int(row["verb_class"])
        except ValueError:
            raise ValueError(f"bad verb_class {row['verb_class']!r}") from None
        parse_class_list(row["all_noun_classes"])
        video = video_path(source.pattern, row)
        return Segment(row["narration_id"], video, start, end, line, row.get("narration") or "")

    return segments_of_rows(source, needed_columns(EK100_NEEDED, source.pattern), segment)
