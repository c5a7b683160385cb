"""Text-to-video search over an export: the library side of ``eva02at search``.

The query is encoded with the given checkpoint and looked up in a FAISS index of the export
(``eva02at.search_index``: exact for small galleries; binary codes re-ranked by float scores, or IVF, for large
ones). ``may_search`` alone decides whether a checkpoint's queries may be compared with a gallery: the
checkpoint that exported it, or one trained to stay compatible with it (``eva02at.compatibility``), compared by
content hash; any other model's space does not align with the gallery's, so its ranking would be noise. Hits
are printed and drawn as a contact sheet from the frames folder the export records.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eva02at.codes import Codes, CodesError, codes_path, read_codes
from eva02at.compatibility import compatible_digests, recorded_chain
from eva02at.embeddings import VIDEO, Embeddings, ExportInfo, read_embeddings, read_info
from eva02at.errors import MissingInput, PipelineError
from eva02at.inference import encode_texts
from eva02at.models import load_video_clip
from eva02at.plots import Tile, clip_strip, contact_sheet
from eva02at.search_index import GalleryIndex, IndexConfig, build_index
from eva02at.shards import FrameShards
from eva02at.text_table import Table, format_table


class SearchError(PipelineError, ValueError):
    """A search that cannot be run as asked (empty query, no hit wanted); the message says why."""


class IncompatibleCheckpoint(SearchError):
    """The query checkpoint may not search this gallery: its vectors live in another space."""


@dataclass(frozen=True)
class Hit:
    rank: int  # 1 = best
    clip_id: str
    source: str  # video path relative to the collection's video root
    start: float  # seconds
    end: float
    score: float  # cosine similarity to the query


def may_search(checkpoint: str | os.PathLike, gallery: ExportInfo) -> bool:
    """Whether queries encoded by ``checkpoint`` may be compared with the vectors of ``gallery``.

    The one place that decides it, by content hash (a copy elsewhere is the same model): the checkpoint that
    exported the gallery, or one whose compatibility chain names it (trained against it, or against a model
    trained against it, ...).
    """
    return gallery.checkpoint_sha256 in compatible_digests(checkpoint)


def check_checkpoint(info: ExportInfo, checkpoint: str | os.PathLike, embeddings_path: str | os.PathLike) -> None:
    """Refuse a checkpoint that ``may_search`` does not admit, saying which checkpoint would do."""
    if not Path(checkpoint).is_file():
        raise MissingInput(f"{checkpoint}: no such checkpoint")
    if not may_search(checkpoint, info):
        chain = [link["sha256"][:12] for link in recorded_chain(checkpoint)]
        trained = f"trained to stay compatible with {', '.join(chain)}" if chain else "trained without compatibility"
        raise IncompatibleCheckpoint(
            f"{embeddings_path} was exported with {info.checkpoint} (sha256 {info.checkpoint_sha256[:12]}); "
            f"{checkpoint} is another model, not known to be compatible with it ({trained}): export the clips "
            "with this checkpoint, search with that one, or fine-tune with finetune.compatible_with set to it"
        )


def gallery_codes(videos: Embeddings, config: IndexConfig) -> Codes | None:
    """The export's compact codes when the index may use them (read from beside it, checked to be its own)."""
    if not (config.kind == "binary" or (config.kind == "auto" and len(videos.ids) > config.exact_max)):
        return None
    path = codes_path(videos.path)
    if not path.is_file():
        if config.kind == "binary":
            raise MissingInput(f"{path}: the binary index needs the export's codes; set export.codes.binary")
        return None
    codes = read_codes(path)
    if codes.info != videos.info or codes.ids != videos.ids:
        raise CodesError(f"{path} was not made from {videos.path} (other checkpoint or clips): run the export again")
    return codes


def gallery_index(videos: Embeddings, config: IndexConfig | None = None) -> GalleryIndex:
    """The index ``config`` asks for over a video export (built once, searched by every query)."""
    config = config or IndexConfig()
    return build_index(videos.vectors, config, gallery_codes(videos, config))


def rank_clips(
    query: np.ndarray,
    videos: Embeddings,
    top: int,
    config: IndexConfig | None = None,
    index: GalleryIndex | None = None,
) -> list[Hit]:
    """The ``top`` clips most similar to a unit-norm query vector, best first (ties in file order); ``index``:
    the gallery's index when already built (else built from ``config``)."""
    index = index or gallery_index(videos, config)
    scores, rows = index.search(query[None], top)
    columns = {name: videos.table[name].to_pylist() for name in ("clip_id", "source", "start", "end")}
    found = [(int(i), float(s)) for i, s in zip(rows[0], scores[0], strict=True) if i >= 0]
    return [
        Hit(rank, columns["clip_id"][i], columns["source"][i], columns["start"][i], columns["end"][i], score)
        for rank, (i, score) in enumerate(found, start=1)
    ]


def search(
    query: str,
    checkpoint: str | os.PathLike,
    embeddings_path: str | os.PathLike,
    top: int = 5,
    index: IndexConfig | None = None,
) -> list[Hit]:
    """The ``top`` clips of a video export that best match ``query``, encoded with ``checkpoint``."""
    if top < 1:
        raise SearchError(f"--top must be at least 1, got {top}")
    if not query.strip():
        raise SearchError("the query is empty")
    if not Path(embeddings_path).is_file():
        raise MissingInput(f"{embeddings_path}: no such embeddings file; the export stage writes exports/<model>/")
    videos = read_embeddings(embeddings_path, kind=VIDEO)
    check_checkpoint(videos.info, checkpoint, embeddings_path)
    model = load_video_clip(checkpoint)
    vector = encode_texts(model, [query])[0]  # (D,)
    return rank_clips(vector, videos, top, index)


def format_hits(hits: list[Hit]) -> str:
    """Hits as an aligned text table."""
    header = ["rank", "score", "clip_id", "source", "start", "end"]
    rows = [[str(h.rank), f"{h.score:.4f}", h.clip_id, h.source, f"{h.start:.2f}", f"{h.end:.2f}"] for h in hits]
    return format_table(Table(header, rows))


def draw_hits(query: str, hits: list[Hit], frames: str | os.PathLike, out: str | os.PathLike) -> tuple[int, int]:
    """Contact sheet of the hits' frames (from the export's frames folder); returns its pixel size."""
    shards = FrameShards(frames)
    rows = [
        (
            f"#{h.rank}  {h.score:.3f}",
            Tile(clip_strip(shards, h.clip_id, 8), f"{h.clip_id}  {h.source}  {h.start:.1f}-{h.end:.1f} s"),
        )
        for h in hits
    ]
    return contact_sheet(query, rows, out)


def run_search(args: argparse.Namespace) -> int:
    """``eva02at search``: print the hits and write their contact sheet; returns the exit status."""
    tuned = {name: getattr(args, name) for name in ("nprobe", "shortlist", "rerank") if getattr(args, name) is not None}
    hits = search(args.query, args.checkpoint, args.embeddings, args.top, IndexConfig(kind=args.index, **tuned))
    print(format_hits(hits))
    if args.out:
        frames = read_info(args.embeddings).frames
        draw_hits(args.query, hits, frames, args.out)
        print(f"contact sheet: {args.out}")
    return 0
