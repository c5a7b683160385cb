"""Frame shards: JPEG-encoded clip frames in Arrow IPC files, and the manifest that indexes them.

Why Arrow IPC for frames: the files are memory-mapped, so a training worker reads any clip view by row
number without decompressing neighbours (JPEG is already compressed). The manifest is Parquet: one row per
clip, a table people inspect, with the status and error of every clip so that nothing is dropped silently.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from eva02at.atomic import atomic_path
from eva02at.errors import MissingInput

SHARD_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("view", pa.int16()),
        ("frame_indices", pa.list_(pa.int32())),
        ("jpeg", pa.list_(pa.binary())),
    ]
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
    ]
)
MANIFEST = "manifest.parquet"
SHARDS = "shards"
SPEC_KEY = "spec"  # manifest metadata key of the collection's FrameSpec (JSON)


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


def write_shard(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write clip views (dicts with the SHARD_SCHEMA fields) to one Arrow IPC file, atomically."""
    table = pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)
    with (
        atomic_path(path) as tmp,
        pa.OSFile(str(tmp), "wb") as sink,
        pa.ipc.new_file(sink, SHARD_SCHEMA) as w,
    ):
        w.write_table(table)


def write_manifest(path: str | os.PathLike, rows: Iterable[dict], metadata: dict[str, str] | None = None) -> None:
    """Write manifest rows to Parquet atomically; ``metadata`` lands in the schema (e.g. a plan hash)."""
    table = pa.Table.from_pylist(list(rows), schema=MANIFEST_SCHEMA)
    if metadata:
        table = table.replace_schema_metadata({k.encode(): v.encode() for k, v in metadata.items()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_manifest(path: str | os.PathLike) -> pa.Table:
    return pq.read_table(path, schema=MANIFEST_SCHEMA)


def manifest_metadata(path: str | os.PathLike) -> dict[str, str]:
    meta = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items()}


@dataclass(frozen=True)
class ClipLocation:
    shard: int
    rows: tuple[int, ...]  # one row per view


class FrameShards:
    """Random access to the clips of one decoded collection (``<dir>/manifest.parquet`` + ``<dir>/shards``).

    Files are opened lazily and memory-mapped, so an instance can be handed to DataLoader worker processes.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path}: no manifest; run the frames stage for this collection")
        self.manifest = read_manifest(manifest_path)
        ok = self.manifest.filter(pa.compute.equal(self.manifest["status"], "ok"))
        self.shard_names = sorted(set(ok["shard"].to_pylist()))
        shard_of = {name: i for i, name in enumerate(self.shard_names)}
        self._locations: dict[str, ClipLocation] = {}
        self._tables: dict[int, pa.Table] = {}
        for name in self.shard_names:
            table = self._table(shard_of[name])
            ids, views = table["clip_id"].to_pylist(), table["view"].to_pylist()
            rows: dict[str, list[tuple[int, int]]] = {}
            for row, (clip, view) in enumerate(zip(ids, views, strict=True)):
                rows.setdefault(clip, []).append((view, row))
            for clip, pairs in rows.items():
                self._locations[clip] = ClipLocation(shard_of[name], tuple(r for _, r in sorted(pairs)))

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
        return len(self._locations[clip_id].rows)

    def jpegs(self, clip_id: str, view: int = 0) -> list[bytes]:
        """The JPEG bytes of one view of one clip, in time order."""
        try:
            location = self._locations[clip_id]
        except KeyError:
            raise KeyError(f"{self.directory}: clip {clip_id!r} is not in the shards (see manifest)") from None
        table = self._table(location.shard)
        row = location.rows[view % len(location.rows)]
        return table["jpeg"][row].as_py()

    def frame_indices(self, clip_id: str, view: int = 0) -> list[int]:
        location = self._locations[clip_id]
        return self._table(location.shard)["frame_indices"][location.rows[view % len(location.rows)]].as_py()

    def _table(self, shard: int) -> pa.Table:
        if shard not in self._tables:
            source = pa.memory_map(str(self._shard_path(self.shard_names[shard])))
            self._tables[shard] = pa.ipc.open_file(source).read_all()
        return self._tables[shard]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_tables"] = {}  # memory maps are reopened in each process
        return state


def decode_jpegs(jpegs: Sequence[bytes], out: np.ndarray | None = None) -> np.ndarray:
    """JPEG bytes to uint8 [T, H, W, 3] RGB with torchvision's libjpeg-turbo decoder.

    ``out`` (uint8 [T, H, W, 3], e.g. a slice of a batch in shared memory) receives the frames, so that a
    loader copies each decoded frame once. The decoder writes rows of pixels (H, W, 3); that memory is kept,
    because transposing it to channels-first on the CPU would cost about as much as decoding.
    """
    if out is not None and len(out) != len(jpegs):
        raise ValueError(f"{len(jpegs)} JPEGs for {len(out)} frames of output")
    for t, data in enumerate(jpegs):
        frame = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        pixels = frame.permute(1, 2, 0).numpy()  # (H, W, 3), the decoder's own memory order: no copy
        if out is None:
            out = np.empty((len(jpegs), *pixels.shape), dtype=np.uint8)
        if out.shape[1:] != pixels.shape:
            raise ValueError(f"frame {t} is {pixels.shape[:2]} pixels, expected {out.shape[1:3]}")
        out[t] = pixels
    if out is None:
        raise ValueError("no JPEG to decode")
    return out
