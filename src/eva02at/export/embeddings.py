"""The embedding export format: video and text embeddings with their ids, in Parquet files that evaluation,
search and the compact codes read.

One file per (model, collection, kind). A row holds the ids that name the item (clip id, source video and
times; or sentence id and text) beside its embedding, a fixed-size ``list<float32>`` column that reads back
as one ``[N, D]`` array without copies. Embeddings are L2-normalised, so a dot product is the cosine
similarity every benchmark ranks by. The schema metadata records the checkpoint (path and SHA-256) and, for
videos, the frames folder: search refuses vectors of another checkpoint and shows the frames of its hits.
Computing the embeddings with a model is ``eva02at.export.inference``'s job.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from eva02at.core.atomic import atomic_path
from eva02at.core.errors import MissingInput, PipelineError

FORMAT = "eva02at-embeddings-v1"
VIDEO, TEXT = "video", "text"
ID_COLUMN = {VIDEO: "clip_id", TEXT: "sentence_id"}  # the column that names a row
_INFO_KEY = b"eva02at"
ROW_GROUP = 65_536  # rows per Parquet row group: what a streaming writer or reader holds at once (64 MiB at D=256)


class ExportError(PipelineError, ValueError):
    """An export that cannot be written or used as asked: wrong kind, columns or ids; the message names the file."""


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
            raise ExportError(
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
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or any(len(values) != len(vectors) for values in columns.values()):
        raise ExportError(f"{path}: {vectors.shape} vectors do not match {len(columns[ID_COLUMN[info.kind]])} ids")
    stream_embeddings(path, columns, [vectors], info, vectors.shape[1])


def stream_embeddings(
    path: str | os.PathLike,
    columns: dict[str, list] | pa.Table,
    batches: Iterable[np.ndarray],
    info: ExportInfo,
    dim: int,
) -> None:
    """Write one export atomically from ``batches`` of vectors ``(n, dim)`` in row order, as they are computed.

    Rows go out in row groups of ``ROW_GROUP`` as soon as that many have arrived, so memory holds one row group
    of vectors whatever the gallery's size (the id ``columns``, all rows, are held as Arrow arrays). The file is
    the one ``pq.write_table`` writes of the whole table in row groups of ``ROW_GROUP``: the same bytes however
    the rows were batched.
    """
    target = schema(info.kind, dim).with_metadata({_INFO_KEY: json.dumps(asdict(info), sort_keys=True).encode()})
    ids = columns if isinstance(columns, pa.Table) else None
    if ids is None:
        ids = pa.table({name: pa.array(columns[name], type=target.field(name).type) for name in target.names[:-1]})
    total = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, target) as writer:
        for rows in _row_groups(batches, dim, path):
            if total + len(rows) > len(ids):
                raise ExportError(f"{path}: more vectors than the {len(ids)} ids")
            embedding = pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), dim)
            part = ids.slice(total, len(rows)).select(target.names[:-1])
            writer.write_table(pa.Table.from_arrays([*part.columns, embedding], schema=target))
            total += len(rows)
        if total != len(ids):
            raise ExportError(f"{path}: {total} vectors do not match {len(ids)} ids")
        if total == 0:
            writer.write_table(target.empty_table())  # one empty row group, as ``pq.write_table`` writes


def _row_groups(batches: Iterable[np.ndarray], dim: int, path: str | os.PathLike) -> Iterator[np.ndarray]:
    """``batches`` regrouped into runs of exactly ``ROW_GROUP`` rows (the last one shorter), float32."""
    pending: list[np.ndarray] = []
    held = 0
    for batch in batches:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 2 or batch.shape[1] != dim:
            raise ExportError(f"{path}: a batch of vectors {batch.shape} is not (n, {dim})")
        pending.append(batch)
        held += len(batch)
        while held >= ROW_GROUP:
            joined = np.concatenate(pending)
            yield joined[:ROW_GROUP]
            pending, held = [joined[ROW_GROUP:]], held - ROW_GROUP
    if held:
        yield np.concatenate(pending)


def iter_vectors(path: str | os.PathLike) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """An export one row group at a time: its id columns and its vectors ``(n, D)``; memory holds one group."""
    source = pq.ParquetFile(path)
    dim = source.schema_arrow.field("embedding").type.list_size
    for group in range(source.num_row_groups):
        table = source.read_row_group(group)
        vectors = table["embedding"].combine_chunks().flatten().to_numpy().reshape(len(table), dim)
        yield table.drop_columns(["embedding"]), vectors


def read_ids(path: str | os.PathLike) -> list[str]:
    """The id column of an export alone."""
    kind = read_info(path).kind
    return pq.read_table(path, columns=[ID_COLUMN[kind]])[ID_COLUMN[kind]].to_pylist()


def mapped_vectors(path: str | os.PathLike, cache: str | os.PathLike) -> np.ndarray:
    """An export's vectors ``(N, D)``, read-only, memory-mapped from a float32 file in ``cache`` (``.base`` is the
    ``mmap``).

    Parquet pages are compressed, so one row cannot be read without its page: re-ranking a shortlist of rows
    scattered over a large gallery needs them at fixed offsets. The file is written once per export (named
    after the export's path, size and modification time), one row group at a time.
    """
    stat = Path(path).stat()
    key = hashlib.sha256(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    source = pq.ParquetFile(path)
    rows, dim = source.metadata.num_rows, source.schema_arrow.field("embedding").type.list_size
    target = Path(cache) / f"{Path(path).stem}.{key}.f32"
    if not target.is_file():
        with atomic_path(target) as tmp, open(tmp, "wb") as out:
            for _, vectors in iter_vectors(path):
                out.write(np.ascontiguousarray(vectors).tobytes())
    if rows == 0:
        return np.zeros((0, dim), np.float32)
    with open(target, "rb") as file:
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    mapped.madvise(mmap.MADV_RANDOM)  # rows are read scattered: a cold file is read without read-ahead
    return np.ndarray((rows, dim), np.float32, buffer=mapped)


def read_info(path: str | os.PathLike) -> ExportInfo:
    """The export's info from the file footer alone (no column is read)."""
    if not Path(path).is_file():
        raise MissingInput(f"{path}: no embeddings; run the export stage first")
    meta = pq.read_schema(path).metadata or {}
    if _INFO_KEY not in meta:
        raise ExportError(f"{path}: not an eva02at embeddings file (no '{_INFO_KEY.decode()}' metadata)")
    return ExportInfo(**json.loads(meta[_INFO_KEY]))


def read_embeddings(path: str | os.PathLike, kind: str | None = None) -> Embeddings:
    """Read an export, checking its kind (when given) and its columns."""
    info = read_info(path)
    if kind is not None and info.kind != kind:
        raise ExportError(f"{path}: holds {info.kind} embeddings, expected {kind}")
    table = pq.read_table(path)
    column = table.schema.field("embedding").type if "embedding" in table.schema.names else None
    if not isinstance(column, pa.FixedSizeListType) or table.schema != schema(info.kind, column.list_size):
        raise ExportError(f"{path}: columns {table.schema.names} do not match a {info.kind} export")
    flat = table["embedding"].combine_chunks().flatten().to_numpy()
    vectors = flat.reshape(len(table), column.list_size)  # (N, D)
    return Embeddings(Path(path), table[ID_COLUMN[info.kind]].to_pylist(), vectors, table, info)
