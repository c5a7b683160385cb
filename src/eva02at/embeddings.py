"""Embedding exports: video and text embeddings with their ids, in Parquet files that evaluation and search read.

One file per (model, collection, kind). A row holds the ids that name the item (clip id, source video and
times; or sentence id and text) beside its embedding, a fixed-size ``list<float32>`` column that reads back
as one ``[N, D]`` array without copies. Embeddings are L2-normalised, so a dot product is the cosine
similarity every benchmark ranks by. The schema metadata records the checkpoint (path and SHA-256) and, for
videos, the frames folder: search refuses vectors of another checkpoint and shows the frames of its hits.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from eva02at.atomic import atomic_path
from eva02at.config import ConfigError
from eva02at.errors import BadInput, MissingInput
from eva02at.models import VideoCLIP
from eva02at.shards import FrameShards, decode_jpegs, read_frame_spec
from eva02at.train.data import normalize

FORMAT = "eva02at-embeddings-v1"
VIDEO, TEXT = "video", "text"
_ID_COLUMN = {VIDEO: "clip_id", TEXT: "sentence_id"}
_INFO_KEY = b"eva02at"


@dataclass(frozen=True)
class ExportInfo:
    """What made an export: recorded in the Parquet schema metadata."""

    kind: str  # VIDEO or TEXT
    collection: str
    checkpoint: str  # path as given to the export
    checkpoint_sha256: str
    model_name: str
    num_frames: int  # frames per clip the model saw (0 for text)
    frames: str  # the collection's frame shards folder ("" for text)


@dataclass(frozen=True)
class Embeddings:
    """An export read back: ids, unit-norm vectors ``[N, D]`` float32, the whole table and its info."""

    path: Path
    ids: list[str]
    vectors: np.ndarray
    table: pa.Table
    info: ExportInfo

    def rows(self, ids: Sequence[str], what: str) -> np.ndarray:
        """Row numbers of ``ids`` in this file; an id it lacks is an error naming ``what`` needs it."""
        index = {item: row for row, item in enumerate(self.ids)}
        missing = [item for item in ids if item not in index]
        if missing:
            raise BadInput(
                f"{self.path}: {len(missing)} id(s) needed by {what} are not in this export "
                f"(e.g. {missing[:3]}); a clip that failed to decode is listed in the frames manifest"
            )
        return np.array([index[item] for item in ids], dtype=np.int64)

    def select(self, ids: Sequence[str], what: str) -> np.ndarray:
        """Vectors of ``ids`` in that order, ``[len(ids), D]``: matching is by id, never by position."""
        return self.vectors[self.rows(ids, what)]


def export_path(root: str | os.PathLike, model: str, collection: str, kind: str) -> Path:
    """Where the export stage writes a file: ``<root>/<model>/<collection>_<kind>.parquet``."""
    return Path(root) / model / f"{collection}_{kind}.parquet"


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def schema(kind: str, dim: int) -> pa.Schema:
    """Columns of a video or a text export with ``dim``-wide embeddings."""
    ids = {
        VIDEO: [
            ("clip_id", pa.string()),
            ("source", pa.string()),  # video path relative to the collection's video root
            ("start", pa.float64()),  # seconds
            ("end", pa.float64()),
            ("text", pa.string()),  # annotation text of the clip, empty for uncaptioned clips
        ],
        TEXT: [("sentence_id", pa.string()), ("text", pa.string())],
    }[kind]
    return pa.schema([*ids, ("embedding", pa.list_(pa.float32(), dim))])


def write_embeddings(path: str | os.PathLike, columns: dict[str, list], vectors: np.ndarray, info: ExportInfo) -> None:
    """Write one export atomically; ``columns`` are the id columns of ``schema(info.kind, D)``."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or any(len(values) != len(vectors) for values in columns.values()):
        raise ValueError(f"{path}: {vectors.shape} vectors do not match {len(columns[_ID_COLUMN[info.kind]])} ids")
    target = schema(info.kind, vectors.shape[1])
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    arrays = [pa.array(columns[name], type=target.field(name).type) for name in target.names[:-1]]
    table = pa.Table.from_arrays([*arrays, embedding], schema=target)
    table = table.replace_schema_metadata({_INFO_KEY: json.dumps(asdict(info), sort_keys=True).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_info(path: str | os.PathLike) -> ExportInfo:
    """The export's info from the file footer alone (no column is read)."""
    if not Path(path).is_file():
        raise MissingInput(f"{path}: no embeddings; run the export stage first")
    meta = pq.read_schema(path).metadata or {}
    if _INFO_KEY not in meta:
        raise BadInput(f"{path}: not an eva02at embeddings file (no '{_INFO_KEY.decode()}' metadata)")
    return ExportInfo(**json.loads(meta[_INFO_KEY]))


def read_embeddings(path: str | os.PathLike, kind: str | None = None) -> Embeddings:
    """Read an export, checking its kind (when given) and its columns."""
    info = read_info(path)
    if kind is not None and info.kind != kind:
        raise BadInput(f"{path}: holds {info.kind} embeddings, expected {kind}")
    table = pq.read_table(path)
    column = table.schema.field("embedding").type if "embedding" in table.schema.names else None
    if not isinstance(column, pa.FixedSizeListType) or table.schema != schema(info.kind, column.list_size):
        raise BadInput(f"{path}: columns {table.schema.names} do not match a {info.kind} export")
    flat = table["embedding"].combine_chunks().flatten().to_numpy()
    vectors = flat.reshape(len(table), column.list_size)  # (N, D)
    return Embeddings(Path(path), table[_ID_COLUMN[info.kind]].to_pylist(), vectors, table, info)


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
        raise ConfigError(
            f"{frames} holds {spec.size} px frames but the model takes {model.image_size} px: "
            "decode the collection at the model's image size (frames.size)"
        )
    if spec.num_frames == model.num_frames:
        return model
    adapted = copy.deepcopy(model, memo={id(model.tokenizer): model.tokenizer})  # share the large BPE tables
    adapted.set_num_frames(spec.num_frames)
    return adapted


@torch.inference_mode()
def encode_clips(
    model: VideoCLIP,
    shards: FrameShards,
    clip_ids: list[str],
    batch_size: int = 32,
    device: torch.device | None = None,
    workers: int = 0,
) -> np.ndarray:
    """Unit-norm video embeddings ``[len(clip_ids), D]`` float32, batched; bf16 autocast on a GPU."""
    device = device or torch.device("cpu")
    model = model.to(device).eval()
    loader = DataLoader(
        _ClipFrames(shards, clip_ids),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    parts = []
    for frames in tqdm(loader, desc=f"videos {shards.directory.name}", unit="batch", leave=False):
        frames = normalize(frames.to(device, non_blocking=True), model.image_mean, model.image_std)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            parts.append(_unit(model.encode_video(frames)))
    return torch.cat(parts).cpu().numpy() if parts else np.zeros((0, model.config.embed_dim), np.float32)


@torch.inference_mode()
def encode_texts(
    model: VideoCLIP, texts: Sequence[str], batch_size: int = 256, device: torch.device | None = None
) -> np.ndarray:
    """Unit-norm text embeddings ``[len(texts), D]`` float32, batched; bf16 autocast on a GPU."""
    device = device or torch.device("cpu")
    model = model.to(device).eval()
    parts = []
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="texts", unit="batch", leave=False, disable=len(starts) < 2):
        tokens = model.tokenize(list(texts[start : start + batch_size])).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            parts.append(_unit(model.encode_text(tokens)))
    return torch.cat(parts).cpu().numpy() if parts else np.zeros((0, model.config.embed_dim), np.float32)


def _unit(embeddings: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(embeddings.float(), dim=-1)


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
) -> int:
    """Embed every clip of a collection that decoded (manifest status ``ok``) and write them; returns the count.

    ``checkpoint`` (and its hash, computed when not given) is recorded as the vectors' origin.
    """
    shards = FrameShards(frames)
    model = model_for_frames(model, frames)
    clip_ids = shards.clip_ids
    manifest = {row["clip_id"]: row for row in shards.manifest.to_pylist()}
    vectors = encode_clips(model, shards, clip_ids, batch_size, device, workers)
    columns = {name: [manifest[clip][name] for clip in clip_ids] for name in ("clip_id", "source", "start", "end")}
    columns["text"] = [manifest[clip]["text"] or "" for clip in clip_ids]
    info = ExportInfo(
        VIDEO,
        collection,
        os.fspath(checkpoint),
        checkpoint_sha256 or file_sha256(checkpoint),
        model.config.model_name,
        model.num_frames,
        os.fspath(frames),
    )
    write_embeddings(out, columns, vectors, info)
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
) -> int:
    """Embed the query texts of a collection (sentence ids must be unique) and write them; returns the count."""
    duplicated = sorted(item for item, count in Counter(ids).items() if count > 1)
    if duplicated or len(ids) != len(texts):
        raise BadInput(f"{collection}: sentence ids must be unique and one per text; repeated: {duplicated[:5]}")
    vectors = encode_texts(model, texts, batch_size, device)
    info = ExportInfo(
        TEXT,
        collection,
        os.fspath(checkpoint),
        checkpoint_sha256 or file_sha256(checkpoint),
        model.config.model_name,
        0,
        "",
    )
    write_embeddings(out, {"sentence_id": list(ids), "text": list(texts)}, vectors, info)
    return len(ids)
