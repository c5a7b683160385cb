"""EgoClip+: LaViLa's generated captions of the EgoClip clips, read from their pickles into a caption table.

LaViLa publishes two caption sets of its Ego4D training clips as Python pickles, each a list of rows
``(video_uid, start_second, end_second, [caption, ...])``: the rephraser's top 3 paraphrases of the narration
(``ego4d_train.rephraser.no_punkt_top3.pkl``) and the narrator's 10 captions
(``ego4d_train.narrator_63690737.return_10.pkl``). AVION pretrains on the two sets concatenated as one dataset,
each item drawing one caption of its list. A pickle can run any code when loaded, so :func:`read_caption_pickle`
admits plain containers, strings and numbers only. :func:`caption_table` matches each row to its EgoClip clip
by (video, start, end) and writes one table row per caption: the training collection's frames stay EgoClip's.
"""

from __future__ import annotations

import io
import logging
import math
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from eva02at.core.atomic import atomic_path
from eva02at.core.errors import BadInput, MissingInput
from eva02at.data.annotations import Segment

log = logging.getLogger(__name__)

CAPTION_COLUMNS = ("clip_id", "caption_set", "caption_index", "text")
CAPTION_SCHEMA = pa.schema(
    [("clip_id", pa.string()), ("caption_set", pa.string()), ("caption_index", pa.int32()), ("text", pa.string())]
)
TIME_DECIMALS = 3  # clips are matched on (video, start, end) to the millisecond


class _PlainUnpickler(pickle.Unpickler):
    """Refuses every global (class, function): only the built-in containers, strings and numbers remain."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"forbidden object {module}.{name}")


def read_caption_pickle(path: str | os.PathLike) -> list[tuple[str, float, float, list[str]]]:
    """The rows ``(video_uid, start, end, captions)`` of a LaViLa caption pickle; anything that is not a list of
    such rows (or that names a class or function) is refused with one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: caption pickle not found")
    try:
        data = _PlainUnpickler(io.BytesIO(path.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise BadInput(f"{path}: not a plain caption pickle ({err})") from None
    if not isinstance(data, list):
        raise BadInput(f"{path}: expected a list of (video_uid, start, end, captions) rows, got {type(data).__name__}")
    return [_row(path, index, row) for index, row in enumerate(data)]


def _row(path: Path, index: int, row: object) -> tuple[str, float, float, list[str]]:
    """One checked row: a video uid, two finite times, and a non-empty list of strings (or one string)."""
    if not isinstance(row, tuple | list) or len(row) < 4:
        raise BadInput(f"{path}: row {index} is not a (video_uid, start, end, captions) tuple: {row!r:.80}")
    video, start, end, captions = row[:4]
    if isinstance(captions, str):
        captions = [captions]
    times_ok = all(isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t) for t in (start, end))
    if not isinstance(video, str) or not times_ok or end < start:
        raise BadInput(f"{path}: row {index} needs a video uid and start <= end seconds, got {row[:3]!r}")
    if not isinstance(captions, list) or not captions or not all(isinstance(c, str) and c for c in captions):
        raise BadInput(f"{path}: row {index} ({video} {start}-{end}) needs a non-empty list of caption strings")
    return video, float(start), float(end), list(captions)


def caption_table(
    segments: Sequence[Segment], caption_sets: dict[str, str | os.PathLike], max_unmatched_fraction: float = 0.0
) -> pa.Table:
    """The caption table of ``caption_sets`` (name -> pickle) over EgoClip ``segments``: one row per caption,
    (clip id, caption set, caption index in its list, text), in the sets' and the pickles' order.

    A row is matched to the EgoClip clip of the same video uid (the file name's stem), start and end, to the
    millisecond (EgoClip's negative starts are clamped to 0 on both sides). Rows without a clip are counted per
    set; above ``max_unmatched_fraction`` of a set the conversion fails naming the file and a first such row.
    """
    by_span = {_span_key(Path(s.video).stem, s.start, s.end): s.clip_id for s in segments}
    columns: dict[str, list] = {name: [] for name in CAPTION_COLUMNS}
    for name, path in caption_sets.items():
        rows = read_caption_pickle(path)
        unmatched = []
        for video, start, end, captions in rows:
            clip = by_span.get(_span_key(video, start, end))
            if clip is None:
                unmatched.append((video, start, end))
                continue
            columns["clip_id"] += [clip] * len(captions)
            columns["caption_set"] += [name] * len(captions)
            columns["caption_index"] += list(range(len(captions)))
            columns["text"] += captions
        if unmatched:
            fraction = len(unmatched) / len(rows)
            message = f"{path}: {len(unmatched)} of {len(rows)} rows match no EgoClip clip (e.g. {unmatched[0]})"
            if fraction > max_unmatched_fraction:
                raise BadInput(f"{message}, above max_unmatched_fraction {max_unmatched_fraction}")
            log.warning("%s; left out", message)
    return pa.Table.from_pydict(columns, schema=CAPTION_SCHEMA)


def _span_key(video: str, start: float, end: float) -> tuple[str, float, float]:
    return video, round(max(start, 0.0), TIME_DECIMALS), round(end, TIME_DECIMALS)


def write_caption_table(table: pa.Table, path: str | os.PathLike) -> None:
    """Write the caption table to ``path`` (Parquet) atomically."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_caption_table(path: str | os.PathLike) -> pa.Table:
    """A caption table written by :func:`write_caption_table`; another file is refused naming it."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: caption table not found (the egoclip_plus stage writes it)")
    table = pq.read_table(path)
    if not CAPTION_SCHEMA.equals(table.schema, check_metadata=False):
        raise BadInput(f"{path}: a caption table needs the columns {CAPTION_COLUMNS}, has {table.schema.names}")
    return table


def decoded_only(table: pa.Table, clip_ids: Sequence[str]) -> tuple[pa.Table, list[str]]:
    """The caption rows of the clips in ``clip_ids`` (those that decoded), and the clips left out: clips the
    frames stage could not decode are already reported in its manifest; training says how many it lacks."""
    keep = pc.is_in(table.column("clip_id"), value_set=pa.array(list(clip_ids), pa.string()))
    missing = pc.unique(table.column("clip_id").filter(pc.invert(keep))).to_pylist()
    return table.filter(keep), missing
