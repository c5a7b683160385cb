"""Compact codes of a video export, for galleries too large to hold or scan as float32: int8 with per-dimension
scales, and binary codes for Hamming search. Written beside the float export in Parquet (same ids, same order),
with what it takes to encode a query the same way (scales; mean and projection) in the file's metadata.

int8: ``code = round(x / scale)`` with ``scale_d = max_i |x_id| / 127`` over the gallery. Symmetric, so a float
query scores a clip as ``q . (code * scale)`` and the error of each coordinate is at most ``scale_d / 2``.

binary: ``bits_per_dim`` x D sign bits. The gallery mean is subtracted (embeddings share a common direction
that would set the same bits for every clip), the result is rotated by ``bits_per_dim`` stacked orthogonal
D x D matrices, and the sign of each coordinate is one bit. The Hamming distance of two codes counts the
hyperplanes between the vectors, an estimate of their angle whose variance falls as 1 / (bits_per_dim * D)
(Charikar 2002). More bits per dimension are therefore more rotations rather than more thresholds: for
Hamming distance to follow a difference of 2^b levels the levels need a thermometer code of 2^b - 1 bits per
dimension, and a plain binary code of the levels does not follow it at all. The first rotation is learned by
iterative quantisation (``itq``: PCA, then the rotation that brings the data closest to its binary codes, Gong
and Lazebnik 2011), or is PCA alone (``pca``) or random (``random``); the others are seeded random rotations
of the first. Hamming distance only shortlists: ``eva02at.search.index`` re-ranks with float or int8 scores.

``export_codes`` makes the codes of an export file in bounded memory: one pass over its row groups finds the int8
ranges and gathers the rows the rotations are fitted on (a seeded sample of at most 50,000), a second encodes
and writes one row group at a time. Its file equals, byte for byte, the one ``write_codes(make_codes(...))``
writes from the whole table in memory.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from eva02at.core.atomic import atomic_path
from eva02at.core.config import NonNegativeInt, PositiveInt
from eva02at.core.errors import MissingInput, PipelineError
from eva02at.export.embeddings import ID_COLUMN, ROW_GROUP, VIDEO, ExportInfo, iter_vectors, read_info

FORMAT = "eva02at-codes-v1"
_META_KEY = b"eva02at.codes"  # the file format's key, as every export since the first wrote it (not a module path)
_ITQ_ITERATIONS = 50
_FIT_SAMPLE = 50_000  # vectors that fit the mean and PCA: plenty for D x D statistics, bounded cost at any N
_ITQ_SAMPLE = 10_000  # of those, the ones ITQ iterates on (each iteration costs two N x D x D products)
_CHUNK = ROW_GROUP  # rows encoded at a time: temporaries stay small for millions of clips


class CodesError(PipelineError, ValueError):
    """A codes file or codes params that cannot be used; the message names the file or the key."""


@dataclass
class BinaryCodeParams:
    """Binary codes of an export: ``bits_per_dim`` x D bits (the ``export.codes.binary`` params)."""

    bits_per_dim: PositiveInt = 1
    rotation: Literal["itq", "pca", "random"] = "itq"
    seed: NonNegativeInt = 0  # random rotations and the ITQ start


@dataclass
class CodesParams:
    """Which compact codes the export writes beside each video export (``export.codes``)."""

    int8: bool = False
    binary: BinaryCodeParams | None = None

    @property
    def enabled(self) -> bool:
        return self.int8 or self.binary is not None


@dataclass(frozen=True)
class Int8Quantizer:
    scales: np.ndarray  # (D,) float32

    @classmethod
    def fit(cls, vectors: np.ndarray) -> Int8Quantizer:
        return cls.from_peak(np.abs(vectors).max(axis=0) if len(vectors) else np.zeros(vectors.shape[1]))

    @classmethod
    def from_peak(cls, peak: np.ndarray) -> Int8Quantizer:
        """From the largest ``|x_d|`` of each dimension over the gallery."""
        return cls((np.where(peak > 0, peak, 1.0) / 127).astype(np.float32))

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """int8 codes ``(N, D)``; values beyond the fitted range saturate at +-127."""
        codes = np.empty(vectors.shape, np.int8)
        for start in range(0, len(vectors), _CHUNK):
            part = vectors[start : start + _CHUNK]
            codes[start : start + len(part)] = np.clip(np.rint(part / self.scales), -127, 127)
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return codes.astype(np.float32) * self.scales


@dataclass(frozen=True)
class BinaryQuantizer:
    mean: np.ndarray  # (D,) float32, subtracted before projecting
    projection: np.ndarray  # (bits_per_dim * D, D) float32: stacked orthogonal rotations
    rotation: str

    @property
    def bits(self) -> int:
        return self.projection.shape[0]

    @property
    def code_bytes(self) -> int:
        return (self.bits + 7) // 8

    @classmethod
    def fit(cls, vectors: np.ndarray, config: BinaryCodeParams) -> BinaryQuantizer:
        rng, rows = fit_rows(len(vectors), config)
        return cls.fit_sample(vectors[rows], rng, config)

    @classmethod
    def fit_sample(cls, sample: np.ndarray, rng: np.random.Generator, config: BinaryCodeParams) -> BinaryQuantizer:
        """Fit on the rows ``fit_rows`` chose, in its order, with the generator it returned."""
        dim = sample.shape[1]
        sample = sample.astype(np.float64)
        mean = sample.mean(axis=0) if len(sample) else np.zeros(dim)
        centred = sample - mean
        first = _random_rotation(rng, dim) if config.rotation == "random" else _pca(centred)
        if config.rotation == "itq":
            first = _itq(centred[:_ITQ_SAMPLE] @ first.T, rng) @ first
        blocks = [first] + [_random_rotation(rng, dim) @ first for _ in range(config.bits_per_dim - 1)]
        return cls(mean.astype(np.float32), np.vstack(blocks).astype(np.float32), config.rotation)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """Packed sign bits ``(N, code_bytes)`` uint8, the layout FAISS's binary indexes take."""
        codes = np.empty((len(vectors), self.code_bytes), np.uint8)
        for start in range(0, len(vectors), _CHUNK):
            part = vectors[start : start + _CHUNK]
            signs = (part - self.mean) @ self.projection.T > 0  # (rows, bits)
            codes[start : start + len(part)] = np.packbits(signs, axis=1)
        return codes


def fit_rows(size: int, config: BinaryCodeParams) -> tuple[np.random.Generator, np.ndarray]:
    """The gallery rows the binary rotations are fitted on (a seeded sample, in draw order) and the generator that
    continues the draw (ITQ's start, the extra rotations)."""
    rng = np.random.default_rng(config.seed)
    return rng, rng.permutation(size)[:_FIT_SAMPLE]


def _random_rotation(rng: np.random.Generator, dim: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))  # Haar-distributed: signs fixed so that the draw is uniform


def _pca(centred: np.ndarray) -> np.ndarray:
    """Principal axes as rows, largest variance first."""
    covariance = centred.T @ centred / max(1, len(centred))
    _, vectors = np.linalg.eigh(covariance)
    return vectors[:, ::-1].T


def _itq(projected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ITQ: the orthogonal R minimising ||B - V R^T|| with B = sign(V R^T), alternating B and R (Procrustes)."""
    rotation = _random_rotation(rng, projected.shape[1])
    for _ in range(_ITQ_ITERATIONS):
        signs = np.where(projected @ rotation.T >= 0, 1.0, -1.0)
        u, _, vt = np.linalg.svd(signs.T @ projected)
        rotation = u @ vt
    return rotation


@dataclass(frozen=True)
class Codes:
    """The compact codes of one video export, read back or just made."""

    ids: list[str]
    info: ExportInfo  # of the float export the codes were made from
    int8: np.ndarray | None = None  # (N, D) int8
    int8_quantizer: Int8Quantizer | None = None
    binary: np.ndarray | None = None  # (N, code_bytes) uint8
    binary_quantizer: BinaryQuantizer | None = None


def codes_path(export: str | os.PathLike) -> Path:
    """The codes file beside an export: ``<collection>_video.codes.parquet``."""
    export = Path(export)
    return export.with_name(f"{export.stem}.codes.parquet")


def make_codes(ids: list[str], vectors: np.ndarray, info: ExportInfo, config: CodesParams) -> Codes:
    """Fit the quantizers the config asks for on a video export's ``vectors`` ``(N, D)`` and encode them."""
    if info.kind != VIDEO:
        raise CodesError(f"{info.collection}: compact codes are made for video exports, not {info.kind}")
    int8 = Int8Quantizer.fit(vectors) if config.int8 else None
    binary = BinaryQuantizer.fit(vectors, config.binary) if config.binary else None
    return Codes(
        ids,
        info,
        int8.encode(vectors) if int8 else None,
        int8,
        binary.encode(vectors) if binary else None,
        binary,
    )


def write_codes(path: str | os.PathLike, codes: Codes) -> None:
    """One Parquet file: the id column, ``int8`` (fixed-size list) and/or ``binary`` (fixed-size binary)."""
    chunks = (
        (
            pa.array(codes.ids[start : start + _CHUNK], pa.string()),
            None if codes.int8 is None else codes.int8[start : start + _CHUNK],
            None if codes.binary is None else codes.binary[start : start + _CHUNK],
        )
        for start in range(0, max(1, len(codes.ids)), _CHUNK)
    )
    _write_chunks(path, codes.info, codes.int8_quantizer, codes.binary_quantizer, chunks)


def export_codes(export: str | os.PathLike, path: str | os.PathLike, config: CodesParams) -> None:
    """The codes of the video export file ``export`` written to ``path``, in memory bounded by a row group and the
    fit sample; the same file as ``write_codes(path, make_codes(...))`` of the export read whole."""
    info = read_info(export)
    if info.kind != VIDEO:
        raise CodesError(f"{info.collection}: compact codes are made for video exports, not {info.kind}")
    source = pq.ParquetFile(export)
    size, dim = source.metadata.num_rows, source.schema_arrow.field("embedding").type.list_size
    rng, rows = fit_rows(size, config.binary or BinaryCodeParams())
    wanted = np.sort(rows)  # gathered in file order, put back in draw order below
    sample = np.empty((len(rows), dim), np.float32)
    peak, start = np.zeros(dim, np.float32), 0
    for _, vectors in iter_vectors(export):
        if len(vectors):
            peak = np.maximum(peak, np.abs(vectors).max(axis=0))
        inside = wanted[(wanted >= start) & (wanted < start + len(vectors))]
        sample[np.searchsorted(wanted, inside)] = vectors[inside - start]
        start += len(vectors)
    int8 = Int8Quantizer.from_peak(peak) if config.int8 else None
    binary = None
    if config.binary:
        binary = BinaryQuantizer.fit_sample(sample[np.searchsorted(wanted, rows)], rng, config.binary)
    id_column = ID_COLUMN[VIDEO]
    chunks = (
        (
            ids[id_column].combine_chunks(),
            int8.encode(vectors) if int8 else None,
            binary.encode(vectors) if binary else None,
        )
        for ids, vectors in iter_vectors(export)
    )
    _write_chunks(path, info, int8, binary, chunks)


def _write_chunks(
    path: str | os.PathLike,
    info: ExportInfo,
    int8_quantizer: Int8Quantizer | None,
    binary_quantizer: BinaryQuantizer | None,
    chunks: Iterator[tuple[pa.Array, np.ndarray | None, np.ndarray | None]],
) -> None:
    """Write the codes file from chunks of (ids, int8 codes, binary codes), one row group per chunk."""
    meta = {"format": FORMAT, "export": asdict(info), "int8": None, "binary": None}
    fields = [(ID_COLUMN[VIDEO], pa.string())]
    if int8_quantizer is not None:
        meta["int8"] = {"scales": _pack(int8_quantizer.scales)}
        fields.append(("int8", pa.list_(pa.int8(), len(int8_quantizer.scales))))
    if binary_quantizer is not None:
        meta["binary"] = {
            "rotation": binary_quantizer.rotation,
            "mean": _pack(binary_quantizer.mean),
            "projection": _pack(binary_quantizer.projection),
        }
        fields.append(("binary", pa.binary(binary_quantizer.code_bytes)))
    target = pa.schema(fields, metadata={_META_KEY: json.dumps(meta, sort_keys=True).encode()})
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, target) as writer:
        for ids, int8, binary in chunks:
            columns = [ids]
            if int8_quantizer is not None:
                flat = pa.array(np.ascontiguousarray(int8).reshape(-1), pa.int8())
                columns.append(pa.FixedSizeListArray.from_arrays(flat, len(int8_quantizer.scales)))
            if binary_quantizer is not None:
                flat = pa.array(np.ascontiguousarray(binary).reshape(-1), pa.uint8())
                columns.append(
                    pa.FixedSizeBinaryArray.from_buffers(
                        pa.binary(binary_quantizer.code_bytes), len(ids), [None, flat.buffers()[1]]
                    )
                )
            writer.write_table(pa.Table.from_arrays(columns, schema=target))


def read_codes(path: str | os.PathLike, int8: bool = True) -> Codes:
    """A codes file with its quantizers; what it lacks (int8 or binary), or int8 when not wanted, is None."""
    if not Path(path).is_file():
        raise MissingInput(f"{path}: no compact codes; set export.codes and run the export stage")
    meta = (pq.read_schema(path).metadata or {}).get(_META_KEY)
    if meta is None or json.loads(meta).get("format") != FORMAT:
        raise CodesError(f"{path}: not an eva02at codes file ({FORMAT})")
    meta = json.loads(meta)
    wanted = int8 and meta["int8"] is not None
    table = pq.read_table(path, columns=[name for name in pq.read_schema(path).names if name != "int8" or wanted])
    int8 = binary = int8_quantizer = binary_quantizer = None
    if wanted:
        int8_quantizer = Int8Quantizer(_unpack(meta["int8"]["scales"]))
        dim = table.schema.field("int8").type.list_size
        int8 = table["int8"].combine_chunks().flatten().to_numpy().reshape(len(table), dim)  # (N, D)
    if meta["binary"] is not None:
        found = meta["binary"]
        binary_quantizer = BinaryQuantizer(_unpack(found["mean"]), _unpack(found["projection"]), found["rotation"])
        column = table["binary"].combine_chunks()
        raw = np.frombuffer(column.buffers()[1], np.uint8, offset=column.offset * binary_quantizer.code_bytes)
        binary = raw[: len(table) * binary_quantizer.code_bytes].reshape(len(table), binary_quantizer.code_bytes)
    ids = table[ID_COLUMN[VIDEO]].to_pylist()
    return Codes(ids, ExportInfo(**meta["export"]), int8, int8_quantizer, binary, binary_quantizer)


def _pack(array: np.ndarray) -> dict:
    """A float32 array as JSON: its shape and its little-endian bytes in base64 (exact, unlike decimal text)."""
    data = np.ascontiguousarray(array, dtype="<f4")
    return {"shape": list(data.shape), "float32": base64.b64encode(data.tobytes()).decode()}


def _unpack(packed: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(packed["float32"]), "<f4").reshape(packed["shape"]).astype(np.float32)
