"""Annotation tables written the way the real datasets write them."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable


def write_table(path: str | os.PathLike, columns: tuple[str, ...], rows: Iterable[dict], delimiter: str = ",") -> None:
    """A CSV (or, with ``delimiter="\\t"``, TSV) file with exactly ``columns``, quoting only where needed."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, delimiter=delimiter, lineterminator="\n", extrasaction="raise")
        writer.writeheader()
        writer.writerows(rows)


def clock(seconds: float, decimals: int) -> str:
    """``HH:MM:SS.ff`` (EPIC-KITCHENS timestamps) with ``decimals`` digits after the point."""
    scale = 10**decimals
    ticks = round(seconds * scale)
    whole, fraction = divmod(ticks, scale)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{fraction:0{decimals}d}"
