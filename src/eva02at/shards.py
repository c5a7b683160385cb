"""Frame shards: JPEG-encoded clip frames in Arrow IPC files, and the manifest that indexes them.

Why Arrow IPC for frames: the files are memory-mapped, so a training worker reads any clip view by row
number without decompressing neighbours (JPEG is already compressed). The manifest is Parquet: one row per
clip, a table people inspect, with the status and error of every clip so that nothing is dropped silently.

Shard layout (``SHARD_LAYOUT``): one row per clip holding each distinct frame of the clip once; its views
refer to those frames by position, so a frame that several jittered views share is stored once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from eva02at.atomic import atomic_path
from eva02at.digest import file_digest
from eva02at.errors import MissingInput, PipelineError

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
SHARDS = "shards"
SPEC_KEY = "spec"  # manifest metadata key of the collection's FrameSpec (JSON)


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
    table = pa.Table.from_pylist(list(rows), schema=MANIFEST_SCHEMA)
    if metadata:
        table = table.replace_schema_metadata({k.encode(): v.encode() for k, v in metadata.items()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_manifest(path: str | os.PathLike) -> pa.Table:
    """A manifest (or manifest part); an unreadable file is a ShardReadError naming it."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise ShardReadError(path, str(err).splitlines()[0]) from err
    if "clamped" not in table.column_names:  # manifests written before clamping was recorded
        table = table.append_column("clamped", pa.nulls(len(table), pa.list_(pa.string())))
    return table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)


def manifest_metadata(path: str | os.PathLike) -> dict[str, str]:
    try:
        meta = pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError) as err:
        raise ShardReadError(path, str(err).splitlines()[0]) from err
    return {k.decode(): v.decode() for k, v in meta.items()}


@dataclass(frozen=True)
class ClipLocation:
    shard: int
    row: int


class FrameShards:
    """Random access to the clips of one decoded collection (``<dir>/manifest.parquet`` + ``<dir>/shards``).

    Files are opened lazily and memory-mapped, so an instance can be handed to DataLoader worker processes.
    A shard that cannot be read raises :class:`ShardReadError` naming the file.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST
        if not manifest_path.is_file():
            raise MissingInput(f"{manifest_path}: no manifest; run the frames stage for this collection")
        self.manifest = read_manifest(manifest_path)
        ok = self.manifest.filter(pa.compute.equal(self.manifest["status"], "ok"))
        self.shard_names = sorted(set(ok["shard"].to_pylist()))
        self._locations: dict[str, ClipLocation] = {}
        self._tables: dict[int, pa.Table] = {}
        for shard in range(len(self.shard_names)):
            for row, clip in enumerate(self._table(shard)["clip_id"].to_pylist()):
                self._locations[clip] = ClipLocation(shard, row)

    def _shard_path(self, name: str) -> Path:
        return self.directory / SHARDS / name

    @property
    def clip_ids(self) -> list[str]:
        """Clips that decoded successfully, in manifest order."""
        return [c for c in self.manifest["clip_id"].to_pylist() if c in self._locations]

    def texts(self, clip_ids: list[str]) -> list[str]:
        """The annotation text of each clip (its caption, for captioned collections)."""
        text_of = dict(zip(self.manifest["clip_id"].to_pylist(), self.manifest["text"].to_pylist(), strict=True))
        return [text_of[c] for c in clip_ids]

    def __contains__(self, clip_id: str) -> bool:
        return clip_id in self._locations

    def num_views(self, clip_id: str) -> int:
        return len(self._cell(clip_id, "views"))

    def jpegs(self, clip_id: str, view: int = 0) -> list[bytes]:
        """The JPEG bytes of one view of one clip, in time order (only that view's frames are copied out)."""
        stored = self._cell(clip_id, "jpeg").values
        return [stored[p].as_py() for p in self._view(clip_id, view)]

    def frame_indices(self, clip_id: str, view: int = 0) -> list[int]:
        frames = self._cell(clip_id, "frame_indices").as_py()
        return [frames[p] for p in self._view(clip_id, view)]

    def _view(self, clip_id: str, view: int) -> list[int]:
        views = self._cell(clip_id, "views").as_py()
        return views[view % len(views)]

    def _cell(self, clip_id: str, column: str) -> pa.ListScalar:
        try:
            location = self._locations[clip_id]
        except KeyError:
            raise KeyError(f"{self.directory}: clip {clip_id!r} is not in the shards (see manifest)") from None
        return self._table(location.shard)[column][location.row]

    def _table(self, shard: int) -> pa.Table:
        if shard not in self._tables:
            self._tables[shard] = read_shard(self._shard_path(self.shard_names[shard]))
        return self._tables[shard]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_tables"] = {}  # memory maps are reopened in each process
        return state


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
