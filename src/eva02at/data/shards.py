"""Frame shards: JPEG-encoded clip frames in Arrow IPC files, and the manifest that indexes them.

Why Arrow IPC for frames: the files are memory-mapped, so a training worker reads any clip view by row
number without decompressing neighbours (JPEG is already compressed). The manifest is Parquet: one row per
clip, a table people inspect, with the status and error of every clip so that nothing is dropped silently.

Shard layout (``SHARD_LAYOUT``): one row per clip holding each distinct frame of the clip once; its views
refer to those frames by position, so a frame that several jittered views share is stored once.
"""

from __future__ import annotations

import bisect
import json
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from eva02at.core.atomic import atomic_path
from eva02at.core.digest import file_digest
from eva02at.core.errors import MissingInput, PipelineError

SHARD_LAYOUT = "clip-frames/2"  # schema metadata of every shard; readers refuse any other layout
SHARD_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("frame_indices", pa.list_(pa.int32())),  # the clip's distinct frames, ascending
        ("jpeg", pa.list_(pa.binary())),  # one JPEG per entry of frame_indices
        ("views", pa.list_(pa.list_(pa.int16()))),  # per view, positions into frame_indices in time order
    ],
    metadata={"layout": SHARD_LAYOUT},
)
MANIFEST_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("source", pa.string()),  # video path relative to the collection's video root
        ("line", pa.int32()),  # annotation line (header = 1), 0 when the clip has none
        ("start", pa.float64()),  # seconds
        ("end", pa.float64()),
        ("text", pa.string()),
        ("frame_indices", pa.list_(pa.list_(pa.int32()))),  # one list per view
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("status", pa.string()),  # "ok" or "error"
        ("error", pa.string()),
        ("shard", pa.string()),  # file name under shards/, empty for errors
        ("clamped", pa.list_(pa.string())),  # why the segment was moved inside the video (CLAMP_* reasons)
    ]
)
MANIFEST = "manifest.parquet"
MANIFEST_ROW_GROUP = 1 << 16  # rows per Parquet row group of a manifest written in pieces
SHARDS = "shards"
SPEC_KEY = "spec"  # manifest metadata key of the collection's FrameSpec (JSON)
ARROW_SCHEMA_KEY = b"ARROW:schema"  # Parquet footer metadata that pyarrow keeps for itself


class ShardReadError(PipelineError):
    """A shard or manifest file cannot be read (truncated, corrupt, another layout); names the file."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        super().__init__(f"{self.path}: cannot read ({reason}); rerun the frames stage to rebuild it")


@dataclass(frozen=True)
class FrameSpec:
    """How clips become frames: T frames per view, ``views`` jittered views (0: one view at the midpoints).

    Stored frames are ``height x width`` pixels: the short side resized to ``size`` and the picture
    centre-cropped to ``aspect`` (long side / short side; 1.0 is the model's square).
    """

    num_frames: int
    views: int = 0
    size: int = 224
    jpeg_quality: int = 90
    seed: int = 0
    aspect: float = 1.0

    @property
    def height(self) -> int:
        return self.size

    @property
    def width(self) -> int:
        return round(self.size * self.aspect)

    def metadata(self) -> dict[str, str]:
        """The manifest metadata entry that records this spec."""
        return {SPEC_KEY: json.dumps(asdict(self), sort_keys=True)}


def read_frame_spec(directory: str | os.PathLike) -> FrameSpec:
    """The spec a decoded collection (``<directory>/manifest.parquet``) was written with."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise MissingInput(f"{path}: no frame shards; run the frames stage for this collection first")
    return FrameSpec(**json.loads(manifest_metadata(path)[SPEC_KEY]))


@dataclass(frozen=True)
class ShardFile:
    """Size and SHA-256 of a written shard: recorded beside it, checked before a resumed run keeps it."""

    size: int
    sha256: str

    @classmethod
    def of(cls, path: str | os.PathLike) -> ShardFile:
        return cls(os.path.getsize(path), file_digest(path))


def write_shard(path: str | os.PathLike, views: list[dict]) -> ShardFile:
    """Write clip views (dicts with ``clip_id``, ``view``, ``frame_indices``, ``jpeg``) to one Arrow IPC file,
    atomically, each distinct frame of a clip stored once; returns the file's size and checksum."""
    table = pa.Table.from_pylist(_clip_rows(views), schema=SHARD_SCHEMA)
    with atomic_path(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, SHARD_SCHEMA) as writer:
            writer.write_table(table)
        return ShardFile.of(tmp)


def _clip_rows(views: list[dict]) -> list[dict]:
    """Per-view rows to one row per clip: distinct frames once, views as positions into them."""
    clips: dict[str, dict[int, tuple[list[int], list[bytes]]]] = {}
    for view in views:
        clips.setdefault(view["clip_id"], {})[view["view"]] = (view["frame_indices"], view["jpeg"])
    rows = []
    for clip_id, by_view in clips.items():
        jpeg_of: dict[int, bytes] = {}
        for indices, jpegs in by_view.values():
            for index, jpeg in zip(indices, jpegs, strict=True):
                if jpeg_of.setdefault(index, jpeg) != jpeg:
                    raise ValueError(f"clip {clip_id!r}: two views hold different pictures of frame {index}")
        frames = sorted(jpeg_of)
        position = {index: k for k, index in enumerate(frames)}
        positions = [[position[i] for i in by_view[v][0]] for v in sorted(by_view)]
        rows.append(
            {"clip_id": clip_id, "frame_indices": frames, "jpeg": [jpeg_of[i] for i in frames], "views": positions}
        )
    return rows


def write_manifest(path: str | os.PathLike, rows: Iterable[dict], metadata: dict[str, str] | None = None) -> None:
    """Write manifest rows to Parquet atomically; ``metadata`` lands in the schema (e.g. a plan hash)."""
    write_manifest_tables(path, [pa.Table.from_pylist(list(rows), schema=MANIFEST_SCHEMA)], metadata)


def write_manifest_tables(
    path: str | os.PathLike,
    tables: Iterable[pa.Table],
    metadata: dict[str, str] | None = None,
    rows_per_group: int = MANIFEST_ROW_GROUP,
) -> None:
    """Write manifest tables (e.g. one per shard, read one at a time) to one Parquet file atomically, holding
    about ``rows_per_group`` rows at a time whatever the total."""
    schema = MANIFEST_SCHEMA.with_metadata(metadata) if metadata else MANIFEST_SCHEMA
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        pending: list[pa.Table] = []
        rows = 0
        for table in tables:
            pending.append(table if table.schema.equals(MANIFEST_SCHEMA) else table.cast(MANIFEST_SCHEMA))
            rows += len(table)
            if rows >= rows_per_group:
                writer.write_table(pa.concat_tables(pending).cast(schema), row_group_size=rows_per_group)
                pending, rows = [], 0
        if pending:
            writer.write_table(pa.concat_tables(pending).cast(schema))


def read_manifest(path: str | os.PathLike) -> pa.Table:
    """A manifest (or manifest part); an unreadable file is a ShardReadError naming it."""
    try:
        with pq.ParquetFile(path) as parquet:  # one file: cheaper than read_table's dataset (a resume reads ~38k)
            table = parquet.read()
    except (pa.ArrowException, OSError) as err:
        raise ShardReadError(path, str(err).splitlines()[0]) from err
    if table.schema.equals(MANIFEST_SCHEMA):  # the usual case: no column to add, move or convert
        return table.replace_schema_metadata(None)
    if "clamped" not in table.column_names:  # manifests written before clamping was recorded
        table = table.append_column("clamped", pa.nulls(len(table), pa.list_(pa.string())))
    return table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)


def manifest_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The key-value metadata of a manifest (or part) from its footer alone (no schema is built: a resume
    reads ~38k footers)."""
    try:
        meta = pq.read_metadata(path).metadata or {}
    except (pa.ArrowException, OSError) as err:
        raise ShardReadError(path, str(err).splitlines()[0]) from err
    return {k.decode(): v.decode() for k, v in meta.items() if k != ARROW_SCHEMA_KEY}


def manifest_rows(path: str | os.PathLike) -> int:
    """The number of rows of a manifest, from its footer."""
    try:
        return pq.read_metadata(path).num_rows
    except (pa.ArrowException, OSError) as err:
        raise ShardReadError(path, str(err).splitlines()[0]) from err


def manifest_tail(path: str | os.PathLike, rows: int) -> pa.Table:
    """The last ``rows`` rows of a manifest, reading only the row groups that hold them."""
    try:
        with pq.ParquetFile(path) as parquet:
            groups, held = [], 0
            for group in reversed(range(parquet.num_row_groups)):
                if held >= rows:
                    break
                groups.insert(0, group)
                held += parquet.metadata.row_group(group).num_rows
            table = parquet.read_row_groups(groups) if groups else parquet.schema_arrow.empty_table()
    except (pa.ArrowException, OSError) as err:
        raise ShardReadError(path, str(err).splitlines()[0]) from err
    return table.slice(max(0, len(table) - rows)).replace_schema_metadata(None)


def manifest_row_groups(path: str | os.PathLike, columns: list[str]) -> Iterator[pa.Table]:
    """``columns`` of a manifest, one row group at a time."""
    try:
        with pq.ParquetFile(path) as parquet:
            for group in range(parquet.num_row_groups):
                yield parquet.read_row_group(group, columns=columns)
    except (pa.ArrowException, OSError) as err:
        raise ShardReadError(path, str(err).splitlines()[0]) from err


class FrameShards:
    """Random access to the clips of one decoded collection (``<dir>/manifest.parquet`` + ``<dir>/shards``).

    The index is columnar (clip ids as one Arrow array, shard and row numbers as NumPy arrays), built from
    the manifest alone: at EgoClip's 3.85M clips it is a few hundred MB shared copy-on-write by forked
    loader workers, where Python objects per clip were GBs copied into each. Shards are memory-mapped when
    first read and at most ``max_open`` stay mapped (least recently used closed first), so the count of
    maps stays far below Linux's per-process limit (65,530) whatever the number of shard files.
    A shard that cannot be read, or whose rows are not the manifest's, raises :class:`ShardReadError`.
    """

    def __init__(self, directory: str | os.PathLike, max_open: int = 64):
        if max_open < 1:
            raise ValueError(f"max_open must be at least 1, got {max_open}")
        self.directory, self.max_open = Path(directory), max_open
        self._manifest_path = self.directory / MANIFEST
        if not self._manifest_path.is_file():
            raise MissingInput(f"{self._manifest_path}: no manifest; run the frames stage for this collection")
        index = _read_manifest_columns(self._manifest_path, ["clip_id", "status", "shard"])
        ok = index.filter(pc.equal(index["status"], "ok"))
        self.ids: pa.StringArray = ok["clip_id"].combine_chunks()  # decoded clips, in manifest order
        shard = pc.dictionary_encode(ok["shard"].combine_chunks())
        self.shard_names: list[str] = shard.dictionary.to_pylist()
        self._shard = shard.indices.to_numpy().astype(np.int32)
        # a shard's rows are its clips in manifest order: stable-sort by shard, count within each run
        self._by_shard = np.argsort(self._shard, kind="stable")
        self._shard_start = np.searchsorted(self._shard[self._by_shard], np.arange(len(self.shard_names) + 1))
        self._row = np.empty(len(self._shard), np.int32)
        self._row[self._by_shard] = np.arange(len(self._shard)) - self._shard_start[self._shard[self._by_shard]]
        self._tables: OrderedDict[int, pa.Table] = OrderedDict()

    @property
    def manifest(self) -> pa.Table:
        """The whole manifest, read from disk on each access (the index keeps only what it needs)."""
        return read_manifest(self._manifest_path)

    @property
    def clip_ids(self) -> list[str]:
        """Clips that decoded successfully, in manifest order (as Python strings; :attr:`ids` is the array)."""
        return self.ids.to_pylist()

    def positions(self, clip_ids: Sequence[str] | pa.Array) -> np.ndarray:
        """Index positions (int64) of ``clip_ids``, -1 for a clip that is not in the shards."""
        if isinstance(clip_ids, pa.Array) and clip_ids.equals(self.ids):  # every clip: no hash table to build
            return np.arange(len(self.ids), dtype=np.int64)
        found = pc.index_in(pa.array(clip_ids, pa.string()), value_set=self.ids)
        return found.fill_null(-1).to_numpy().astype(np.int64)

    def texts(self, clip_ids: Sequence[str] | pa.Array) -> pa.StringArray:
        """The annotation text of each clip (its caption, for captioned collections), as one Arrow array."""
        if isinstance(clip_ids, pa.Array) and clip_ids.equals(self.ids):  # every decoded clip, in order
            table = _read_manifest_columns(self._manifest_path, ["status", "text"])
            return table.filter(pc.equal(table["status"], "ok"))["text"].combine_chunks()
        table = _read_manifest_columns(self._manifest_path, ["clip_id", "text"])
        found = pc.index_in(pa.array(clip_ids, pa.string()), value_set=table["clip_id"].combine_chunks())
        if found.null_count:
            missing = pa.array(clip_ids, pa.string()).filter(pc.is_null(found))[0]
            raise KeyError(f"{self._manifest_path}: clip {missing.as_py()!r} is not in the manifest")
        return table["text"].combine_chunks().take(found)

    def __contains__(self, clip_id: str) -> bool:
        return self._find(clip_id) >= 0

    def num_views(self, clip_id: str) -> int:
        return self.num_views_at(self._position(clip_id))

    def jpegs(self, clip_id: str, view: int = 0) -> list[bytes]:
        """The JPEG bytes of one view of one clip, in time order (only that view's frames are copied out)."""
        return self.jpegs_at(self._position(clip_id), view)

    def frame_indices(self, clip_id: str, view: int = 0) -> list[int]:
        position = self._position(clip_id)
        frames = self._cell(position, "frame_indices").as_py()
        return [frames[p] for p in self._view(position, view)]

    def num_views_at(self, position: int) -> int:
        return len(self._cell(position, "views"))

    def jpegs_at(self, position: int, view: int = 0) -> list[bytes]:
        """:meth:`jpegs` of the clip at index ``position`` (see :meth:`positions`): no lookup by name."""
        stored = self._cell(position, "jpeg").values
        return [stored[p].as_py() for p in self._view(position, view)]

    @cached_property
    def _sorted(self) -> np.ndarray:
        """Positions in clip id order (Arrow's byte order of UTF-8 is Python's order of str)."""
        return pc.sort_indices(self.ids).to_numpy()

    def _find(self, clip_id: str) -> int:
        """The position of one clip by binary search (:meth:`positions` hashes the whole index per call)."""
        ids, order = self.ids, self._sorted
        k = bisect.bisect_left(range(len(order)), clip_id, key=lambda i: ids[int(order[i])].as_py())
        return int(order[k]) if k < len(order) and ids[int(order[k])].as_py() == clip_id else -1

    def _position(self, clip_id: str) -> int:
        position = self._find(clip_id)
        if position < 0:
            raise KeyError(f"{self.directory}: clip {clip_id!r} is not in the shards (see manifest)")
        return position

    def _view(self, position: int, view: int) -> list[int]:
        views = self._cell(position, "views").as_py()
        return views[view % len(views)]

    def _cell(self, position: int, column: str) -> pa.ListScalar:
        return self._table(int(self._shard[position]))[column][int(self._row[position])]

    def _table(self, shard: int) -> pa.Table:
        if shard in self._tables:
            self._tables.move_to_end(shard)
            return self._tables[shard]
        path = self.directory / SHARDS / self.shard_names[shard]
        table = read_shard(path)
        expected = self.ids.take(self._by_shard[self._shard_start[shard] : self._shard_start[shard + 1]])
        if not table["clip_id"].combine_chunks().equals(expected):
            raise ShardReadError(path, f"its clips are not those {MANIFEST} places in it")
        if len(self._tables) >= self.max_open:
            self._tables.popitem(last=False)  # its map closes once no array of it is referenced
        self._tables[shard] = table
        return table

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_tables"] = OrderedDict()  # memory maps are reopened in each process
        return state


def _read_manifest_columns(path: Path, columns: list[str]) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as err:
        raise ShardReadError(path, str(err).splitlines()[0]) from err


def read_shard(path: str | os.PathLike) -> pa.Table:
    """One shard, memory-mapped; a missing, truncated or foreign file is a ShardReadError naming it."""
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    except (pa.ArrowException, OSError) as err:
        raise ShardReadError(path, str(err).splitlines()[0]) from err
    layout = (table.schema.metadata or {}).get(b"layout", b"").decode()
    if layout != SHARD_LAYOUT:
        raise ShardReadError(path, f"layout {layout or 'unversioned'!r}, expected {SHARD_LAYOUT!r}")
    return table
