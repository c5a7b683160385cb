"""``egoclip_plus`` stage: LaViLa's EgoClip+ caption pickles to one Parquet caption table, once.

Reads the EgoClip annotation table (the clips the frames stage decodes) and each named caption pickle with the
restricted unpickler of ``eva02at.data.egoclip_plus``, and writes ``<out>``: (clip id, caption set, caption index,
text), which ``pretrain.captions`` names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from eva02at.core.config import ConfigError
from eva02at.core.errors import BadInput
from eva02at.data.annotations import Source, read_segments
from eva02at.data.egoclip_plus import caption_table, write_caption_table
from eva02at.data.formats import egoclip
from stages.common import stage_main, stage_params

log = logging.getLogger(__name__)


@dataclass
class EgoClipPlusParams:
    annotations: str  # the EgoClip table whose clips the captions describe
    out: str  # the Parquet caption table
    sets: dict[str, str] = field(default_factory=dict)  # caption set name -> LaViLa pickle
    max_unmatched_fraction: float = 0.0  # of a set's rows without an EgoClip clip; above it the stage fails


@stage_main
def main() -> None:
    params, _ = stage_params("egoclip_plus", EgoClipPlusParams, __doc__)
    if not params.sets:
        raise ConfigError("egoclip_plus.sets names no caption pickle")
    segments, errors = read_segments(egoclip.NAME, Source(params.annotations))
    if errors:
        raise BadInput(f"{len(errors)} bad EgoClip row(s), first: {errors[0]}")
    table = caption_table(segments, params.sets, params.max_unmatched_fraction)
    write_caption_table(table, params.out)
    log.info("egoclip_plus: %d captions of %d caption sets -> %s", table.num_rows, len(params.sets), params.out)


if __name__ == "__main__":
    main()
