"""Model inference for exports: unit-norm video embeddings of a decoded collection's clips and text embeddings
of its query texts, batched, written in the export format of ``eva02at.export.embeddings``; on one process or sharded
over the processes of a torchrun launch.

Video embeddings are written as their batches finish (``eva02at.export.embeddings.stream_embeddings``), so memory holds
one Parquet row group of vectors whatever the collection's size. A sharded export gives each rank a contiguous
run of whole batches, so every batch holds exactly the items it holds in a one-process run and computes the
same numbers. Each rank streams its rows into a part file beside the output; rank 0 streams the parts in rank
order into the file a single process writes, and removes them.
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.distributed
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from eva02at.core.digest import file_digest
from eva02at.core.distributed import DistInfo
from eva02at.data.jpeg import decode_jpegs
from eva02at.data.pixels import normalize
from eva02at.data.shards import FrameShards, read_frame_spec
from eva02at.export.embeddings import (
    ID_COLUMN,
    TEXT,
    VIDEO,
    ExportError,
    ExportInfo,
    iter_vectors,
    read_ids,
    stream_embeddings,
)
from eva02at.models import VideoCLIP

ALONE = DistInfo(0, 1, 0, torch.device("cpu"))  # a one-process export


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: the GPU when there is one, else the CPU."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


class _ClipFrames(Dataset):
    """uint8 frames ``(T, 3, H, W)`` of the evaluation view of each clip; decoded in loader workers."""

    def __init__(self, shards: FrameShards, clip_ids: list[str]):
        self.shards, self.clip_ids = shards, clip_ids

    def __len__(self) -> int:
        return len(self.clip_ids)

    def __getitem__(self, index: int) -> torch.Tensor:
        frames = decode_jpegs(self.shards.jpegs(self.clip_ids[index]))  # (T, H, W, 3)
        return torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, 3, H, W)


def model_for_frames(model: VideoCLIP, frames: str | os.PathLike) -> VideoCLIP:
    """``model``, or a copy with its temporal embedding interpolated to the collection's frame count.

    A copy, because interpolating down and back up does not restore the original embedding. The frame
    size must already be the model's: resizing decoded JPEGs would evaluate on pixels training never saw.
    """
    spec = read_frame_spec(frames)
    if spec.size != model.image_size:
        raise ExportError(
            f"{frames} holds {spec.size} px frames but the model takes {model.image_size} px: "
            "decode the collection at the model's image size (frames.size)"
        )
    if spec.num_frames == model.num_frames:
        return model
    adapted = copy.deepcopy(model, memo={id(model.tokenizer): model.tokenizer})  # share the large BPE tables
    adapted.set_num_frames(spec.num_frames)
    return adapted


def encode_clips(
    model: VideoCLIP,
    shards: FrameShards,
    clip_ids: list[str],
    batch_size: int = 32,
    device: torch.device | None = None,
    workers: int = 0,
) -> Iterator[np.ndarray]:
    """Unit-norm video embeddings of ``clip_ids`` float32, one ``(batch, D)`` array per batch as it finishes; the
    towers under bf16 autocast on a GPU, the heads and the norm in float32 (``VideoCLIP.embed_video``)."""
    device = device or torch.device("cpu")
    model = model.to(device).eval()
    loader = DataLoader(
        _ClipFrames(shards, clip_ids),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    for frames in tqdm(loader, desc=f"videos {shards.directory.name}", unit="batch", leave=False):
        with torch.inference_mode():
            frames = normalize(frames.to(device, non_blocking=True), model.image_mean, model.image_std)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                yield model.embed_video(frames).cpu().numpy()


@torch.inference_mode()
def encode_texts(
    model: VideoCLIP, texts: Sequence[str], batch_size: int = 256, device: torch.device | None = None
) -> np.ndarray:
    """Unit-norm text embeddings ``[len(texts), D]`` float32, batched; the towers under bf16
    autocast on a GPU, the heads and the norm in float32 (``VideoCLIP.embed_video``)."""
    device = device or torch.device("cpu")
    model = model.to(device).eval()
    parts = []
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="texts", unit="batch", leave=False, disable=len(starts) < 2):
        tokens = model.tokenize(list(texts[start : start + batch_size])).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            parts.append(model.embed_text(tokens))
    return torch.cat(parts).cpu().numpy() if parts else np.zeros((0, model.config.embed_dim), np.float32)


def export_videos(
    model: VideoCLIP,
    checkpoint: str | os.PathLike,
    frames: str | os.PathLike,
    out: str | os.PathLike,
    collection: str,
    *,
    batch_size: int = 32,
    device: torch.device | None = None,
    workers: int = 0,
    checkpoint_sha256: str | None = None,
    dist: DistInfo = ALONE,
) -> int:
    """Embed every clip of a collection that decoded (manifest status ``ok``) and write them; returns the count.

    ``checkpoint`` (and its hash, computed when not given) is recorded as the vectors' origin. Under torchrun
    every rank calls this with its ``dist``; each encodes its share and rank 0 writes ``out``.
    """
    shards = FrameShards(frames)
    model = model_for_frames(model, frames)
    clip_ids = shards.clip_ids
    names = ["clip_id", "source", "start", "end", "text"]
    manifest = shards.manifest.select(names)
    columns = manifest.filter(pc.is_in(manifest["clip_id"], value_set=pa.array(clip_ids, pa.string())))
    columns = columns.set_column(4, "text", pc.fill_null(columns["text"], ""))  # uncaptioned clips: empty text
    rows = shard_rows(len(clip_ids), batch_size, dist)
    batches = encode_clips(model, shards, clip_ids[rows.start : rows.stop], batch_size, device, workers)
    info = ExportInfo(
        VIDEO,
        collection,
        os.fspath(checkpoint),
        checkpoint_sha256 or file_digest(checkpoint),
        model.config.model_name,
        model.num_frames,
        os.fspath(frames),
    )
    write_sharded(out, columns, batches, info, rows, dist, model.config.embed_dim)
    return len(clip_ids)


def export_texts(
    model: VideoCLIP,
    checkpoint: str | os.PathLike,
    ids: Sequence[str],
    texts: Sequence[str],
    out: str | os.PathLike,
    collection: str,
    *,
    batch_size: int = 256,
    device: torch.device | None = None,
    checkpoint_sha256: str | None = None,
    dist: DistInfo = ALONE,
) -> int:
    """Embed the query texts of a collection (sentence ids must be unique) and write them; returns the count."""
    duplicated = sorted(item for item, count in Counter(ids).items() if count > 1)
    if duplicated or len(ids) != len(texts):
        raise ExportError(f"{collection}: sentence ids must be unique and one per text; repeated: {duplicated[:5]}")
    rows = shard_rows(len(ids), batch_size, dist)
    vectors = [encode_texts(model, texts[rows.start : rows.stop], batch_size, device)]
    info = ExportInfo(
        TEXT,
        collection,
        os.fspath(checkpoint),
        checkpoint_sha256 or file_digest(checkpoint),
        model.config.model_name,
        0,
        "",
    )
    columns = pa.table({"sentence_id": pa.array(list(ids), pa.string()), "text": pa.array(list(texts), pa.string())})
    write_sharded(out, columns, vectors, info, rows, dist, model.config.embed_dim)
    return len(ids)


def shard_rows(count: int, batch_size: int, dist: DistInfo) -> range:
    """This rank's rows of ``count``: a contiguous run of whole batches (possibly none), ranks in order."""
    batches = -(-count // batch_size)
    first, stop = batches * dist.rank // dist.world_size, batches * (dist.rank + 1) // dist.world_size
    return range(min(first * batch_size, count), min(stop * batch_size, count))


def part_path(out: str | os.PathLike, rank: int) -> Path:
    """Where ``rank`` writes its rows of ``out``: a hidden sibling that rank 0 removes after joining."""
    out = Path(out)
    return out.with_name(f".{out.name}.part-{rank:05d}")


def write_sharded(
    out: str | os.PathLike,
    columns: pa.Table,
    batches: Iterable[np.ndarray],
    info: ExportInfo,
    rows: range,
    dist: DistInfo,
    dim: int,
) -> None:
    """Write ``out`` from every rank's ``batches`` of vectors of its ``rows`` (``columns``, the id columns, hold all
    rows on every rank), streaming: no rank holds more than a row group of vectors."""
    if dist.world_size == 1:
        stream_embeddings(out, columns, batches, info, dim)
        return
    stream_embeddings(part_path(out, dist.rank), columns.slice(rows.start, len(rows)), batches, info, dim)
    torch.distributed.barrier()  # every part is complete
    if dist.rank != 0:
        return
    parts = [part_path(out, rank) for rank in range(dist.world_size)]
    if [item for part in parts for item in read_ids(part)] != columns[ID_COLUMN[info.kind]].to_pylist():
        raise RuntimeError(f"{out}: the parts of {dist.world_size} ranks do not hold the rows in order")
    stream_embeddings(out, columns, (vectors for part in parts for _, vectors in iter_vectors(part)), info, dim)
    for part in parts:
        part.unlink()
