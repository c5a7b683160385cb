"""Text-to-video search over exported clip embeddings: the library side of ``eva02at search``.

The query is encoded with the given checkpoint and compared with vectors that the same checkpoint made: the
export records its checkpoint's SHA-256, and a different file is refused (two models' spaces do not
align, so the ranking would be noise). Hits are printed and drawn as a contact sheet from the frames
folder the export records.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eva02at.embeddings import VIDEO, Embeddings, ExportInfo, file_sha256, read_embeddings, read_info
from eva02at.inference import encode_texts
from eva02at.models import load_video_clip
from eva02at.plots import Tile, clip_strip, contact_sheet
from eva02at.shards import FrameShards


@dataclass(frozen=True)
class Hit:
    rank: int  # 1 = best
    clip_id: str
    source: str  # video path relative to the collection's video root
    start: float  # seconds
    end: float
    score: float  # cosine similarity to the query


def check_checkpoint(info: ExportInfo, checkpoint: str | os.PathLike, embeddings_path: str | os.PathLike) -> None:
    """Refuse a checkpoint other than the one that made the embeddings (compared by content hash)."""
    if not Path(checkpoint).is_file():
        raise ValueError(f"{checkpoint}: no such checkpoint")
    if file_sha256(checkpoint) != info.checkpoint_sha256:
        raise ValueError(
            f"{embeddings_path} was exported with {info.checkpoint} (sha256 {info.checkpoint_sha256[:12]}), "
            f"not with {checkpoint}: export the clips with this checkpoint, or search with that one"
        )


def rank_clips(query: np.ndarray, videos: Embeddings, top: int) -> list[Hit]:
    """The ``top`` clips most similar to a unit-norm query vector, best first (ties in file order)."""
    scores = videos.vectors @ query  # (N,)
    order = np.argsort(-scores, kind="stable")[:top]
    columns = {name: videos.table[name].to_pylist() for name in ("clip_id", "source", "start", "end")}
    return [
        Hit(rank, columns["clip_id"][i], columns["source"][i], columns["start"][i], columns["end"][i], float(scores[i]))
        for rank, i in enumerate(order, start=1)
    ]


def search(query: str, checkpoint: str | os.PathLike, embeddings_path: str | os.PathLike, top: int = 5) -> list[Hit]:
    """The ``top`` clips of a video export that best match ``query``, encoded with ``checkpoint``."""
    if top < 1:
        raise ValueError(f"--top must be at least 1, got {top}")
    if not query.strip():
        raise ValueError("the query is empty")
    if not Path(embeddings_path).is_file():
        raise ValueError(f"{embeddings_path}: no such embeddings file; the export stage writes exports/<model>/")
    videos = read_embeddings(embeddings_path, kind=VIDEO)
    check_checkpoint(videos.info, checkpoint, embeddings_path)
    model = load_video_clip(checkpoint)
    vector = encode_texts(model, [query])[0]  # (D,)
    return rank_clips(vector, videos, top)


def format_hits(hits: list[Hit]) -> str:
    """Hits as an aligned text table."""
    header = ("rank", "score", "clip_id", "source", "start", "end")
    rows = [(str(h.rank), f"{h.score:.4f}", h.clip_id, h.source, f"{h.start:.2f}", f"{h.end:.2f}") for h in hits]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    return "\n".join(line.rstrip() for line in lines)


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
    hits = search(args.query, args.checkpoint, args.embeddings, args.top)
    print(format_hits(hits))
    if args.out:
        frames = read_info(args.embeddings).frames
        draw_hits(args.query, hits, frames, args.out)
        print(f"contact sheet: {args.out}")
    return 0
