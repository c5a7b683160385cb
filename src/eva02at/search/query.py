"""Text-to-video search over an export: the library side of ``eva02at search``.

The query is encoded with the given checkpoint and looked up in a FAISS index of the export
(``eva02at.search.index``: exact for small galleries; binary codes re-ranked by float scores, or IVF, for large
ones). ``may_search`` alone decides whether a checkpoint's queries may be compared with a gallery: the
checkpoint that exported it, or one trained to stay compatible with it (``eva02at.models.compatibility``), compared by
content hash; any other model's space does not align with the gallery's, so its ranking would be noise. Hits
are printed and drawn as a contact sheet from the frames folder the export records.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from eva02at.core.errors import MissingInput, PipelineError
from eva02at.core.text_table import Table, format_table
from eva02at.data.shards import FrameShards
from eva02at.evaluation.plots import Tile, clip_strip, contact_sheet
from eva02at.export.codes import Codes, CodesError, codes_path, read_codes
from eva02at.export.embeddings import VIDEO, ExportInfo, mapped_vectors, read_embeddings, read_ids, read_info
from eva02at.export.inference import encode_texts
from eva02at.models import load_video_clip
from eva02at.models.compatibility import compatible_digests, recorded_chain
from eva02at.search.index import GalleryIndex, IndexParams, build_index, choose_kind


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


@dataclass(frozen=True)
class Gallery:
    """A video export opened for search: vectors in memory, or memory-mapped when the binary index re-ranks them."""

    path: Path
    info: ExportInfo
    ids: list[str]
    vectors: np.ndarray  # (N, D) float32; memory-mapped for the binary index
    codes: Codes | None


def default_cache() -> Path:
    """Where memory-mapped copies of exports' vectors go: ``$EVA02AT_CACHE``, else ``$XDG_CACHE_HOME/eva02at``."""
    if os.environ.get("EVA02AT_CACHE"):
        return Path(os.environ["EVA02AT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "eva02at"


def open_gallery(path: str | os.PathLike, config: IndexParams, cache: str | os.PathLike | None = None) -> Gallery:
    """A video export and, when the index may use them, its codes; the vectors memory-mapped for the binary index."""
    info = read_info(path)
    if info.kind != VIDEO:
        raise SearchError(f"{path}: holds {info.kind} embeddings; search needs a video export")
    ids = read_ids(path)
    codes = gallery_codes(path, info, ids, config)
    ids = codes.ids if codes is not None else ids  # equal lists: keep one
    if choose_kind(len(ids), config, codes) == "binary" and codes is not None:
        vectors = mapped_vectors(path, cache or default_cache())
    else:
        vectors = read_embeddings(path, VIDEO).vectors
    return Gallery(Path(path), info, ids, vectors, codes)


def gallery_codes(path: str | os.PathLike, info: ExportInfo, ids: list[str], config: IndexParams) -> Codes | None:
    """The export's compact codes when the index may use them (read from beside it, checked to be its own)."""
    if not (config.kind == "binary" or (config.kind == "auto" and len(ids) > config.exact_max)):
        return None
    found = codes_path(path)
    if not found.is_file():
        if config.kind == "binary":
            raise MissingInput(f"{found}: the binary index needs the export's codes; set export.codes.binary")
        return None
    codes = read_codes(found, int8=config.rerank == "int8")  # int8 codes are 8 times the binary ones: only if used
    if codes.info != info or codes.ids != ids:
        raise CodesError(f"{found} was not made from {path} (other checkpoint or clips): run the export again")
    return codes


def gallery_index(gallery: Gallery, config: IndexParams | None = None) -> GalleryIndex:
    """The index ``config`` asks for over a gallery (built once, searched by every query)."""
    return build_index(gallery.vectors, config or IndexParams(), gallery.codes)


def rank_clips(
    query: np.ndarray,
    gallery: Gallery,
    top: int,
    config: IndexParams | None = None,
    index: GalleryIndex | None = None,
) -> list[Hit]:
    """The ``top`` clips most similar to a unit-norm query vector, best first (ties in file order); ``index``:
    the gallery's index when already built (else built from ``config``)."""
    index = index or gallery_index(gallery, config)
    scores, rows = index.search(query[None], top)
    found = [(int(i), float(s)) for i, s in zip(rows[0], scores[0], strict=True) if i >= 0]
    columns = read_rows(gallery.path, [i for i, _ in found], ("clip_id", "source", "start", "end"))
    return [
        Hit(rank, columns["clip_id"][n], columns["source"][n], columns["start"][n], columns["end"][n], score)
        for n, (rank, (_, score)) in enumerate(enumerate(found, start=1))
    ]


def read_rows(path: str | os.PathLike, rows: list[int], columns: tuple[str, ...]) -> dict[str, list]:
    """``columns`` of the given rows of an export, in that order, reading only the row groups that hold them."""
    source = pq.ParquetFile(path)
    sizes = [source.metadata.row_group(group).num_rows for group in range(source.num_row_groups)]
    starts = np.cumsum([0, *sizes])
    group_of = np.searchsorted(starts, np.asarray(rows, np.int64), side="right") - 1
    groups = np.unique(group_of)
    tables = [source.read_row_group(int(group), columns=list(columns)) for group in groups]
    offsets = np.cumsum([0, *(len(table) for table in tables)])
    positions = offsets[np.searchsorted(groups, group_of)] + np.asarray(rows, np.int64) - starts[group_of]
    picked = pa.concat_tables(tables).take(pa.array(positions, pa.int64())) if tables else None
    return {name: picked[name].to_pylist() if picked is not None else [] for name in columns}


def search(
    query: str,
    checkpoint: str | os.PathLike,
    embeddings_path: str | os.PathLike,
    top: int = 5,
    index: IndexParams | None = None,
    cache: str | os.PathLike | None = None,
) -> list[Hit]:
    """The ``top`` clips of a video export that best match ``query``, encoded with ``checkpoint`` (``cache``: where
    the binary index's memory-mapped vectors go, ``default_cache()`` when not given)."""
    if top < 1:
        raise SearchError(f"--top must be at least 1, got {top}")
    if not query.strip():
        raise SearchError("the query is empty")
    if not Path(embeddings_path).is_file():
        raise MissingInput(f"{embeddings_path}: no such embeddings file; the export stage writes exports/<model>/")
    index = index or IndexParams()
    index.check()
    check_checkpoint(read_info(embeddings_path), checkpoint, embeddings_path)
    gallery = open_gallery(embeddings_path, index, cache)
    model = load_video_clip(checkpoint)
    vector = encode_texts(model, [query])[0]  # (D,)
    return rank_clips(vector, gallery, top, index)


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
    config = IndexParams(kind=args.index, **tuned)
    hits = search(args.query, args.checkpoint, args.embeddings, args.top, config, args.cache)
    print(format_hits(hits))
    if args.out:
        frames = read_info(args.embeddings).frames
        draw_hits(args.query, hits, frames, args.out)
        print(f"contact sheet: {args.out}")
    return 0
