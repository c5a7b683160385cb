"""Compact codes: int8 error bounds and binary sign bits against float64 computations, Hamming distances against
a numpy popcount, rotations that are rotations, and the codes file round trip with its quantizers."""

from __future__ import annotations

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eva02at.core.config import ConfigError, from_dict
from eva02at.core.errors import MissingInput
from eva02at.export import codes, embeddings
from eva02at.export.codes import (
    BinaryCodeParams,
    BinaryQuantizer,
    CodesError,
    CodesParams,
    Int8Quantizer,
    codes_path,
    export_codes,
    make_codes,
    read_codes,
    write_codes,
)
from eva02at.export.embeddings import VIDEO, Embeddings, ExportInfo, read_embeddings, write_embeddings


def unit_rows(rng: np.random.Generator, n: int, dim: int, offset: float = 0.0) -> np.ndarray:
    """Unit vectors with a common direction (as real embeddings have) and unequal variance per axis."""
    x = rng.standard_normal((n, dim)) * np.linspace(2.0, 0.2, dim) + offset
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_int8_codes_stay_within_half_a_step_of_the_float64_values():
    rng = np.random.default_rng(0)
    gallery, queries = unit_rows(rng, 500, 32, 0.3), unit_rows(rng, 20, 32, 0.3)
    quantizer = Int8Quantizer.fit(gallery)
    codes = quantizer.encode(gallery)
    assert codes.dtype == np.int8 and np.abs(codes).max(axis=0).tolist() == [127] * 32  # the range is used
    step = np.abs(gallery.astype(np.float64)).max(axis=0) / 127
    np.testing.assert_allclose(quantizer.scales, step, rtol=1e-6)
    error = np.abs(codes.astype(np.float64) * step - gallery)
    assert (error <= step / 2 * (1 + 1e-5)).all()
    # a float query's scores: off by at most sum_d |q_d| * step_d / 2
    exact = queries.astype(np.float64) @ gallery.T.astype(np.float64)
    approximate = queries @ quantizer.decode(codes).T
    bound = (np.abs(queries) @ (step / 2))[:, None]
    assert (np.abs(approximate - exact) <= bound + 1e-6).all()
    assert quantizer.encode(2 * gallery[:3]).max() == 127  # beyond the fitted range: saturated, not wrapped


@pytest.mark.parametrize("rotation", ["itq", "pca", "random"])
def test_binary_codes_are_the_signs_of_the_rotated_centred_vectors(rotation):
    rng = np.random.default_rng(1)
    gallery = unit_rows(rng, 400, 16, 0.5)
    quantizer = BinaryQuantizer.fit(gallery, BinaryCodeParams(bits_per_dim=2, rotation=rotation))
    assert quantizer.projection.shape == (32, 16) and quantizer.code_bytes == 4
    for block in (quantizer.projection[:16], quantizer.projection[16:]):  # each block is a rotation
        np.testing.assert_allclose(block.astype(np.float64) @ block.T, np.eye(16), atol=1e-5)
    np.testing.assert_allclose(quantizer.mean, gallery.astype(np.float64).mean(axis=0), atol=1e-6)
    values = (gallery.astype(np.float64) - quantizer.mean) @ quantizer.projection.T.astype(np.float64)  # (N, 32)
    bits = np.unpackbits(quantizer.encode(gallery), axis=1)
    clear = np.abs(values) > 1e-5  # float32 and float64 may disagree on a sign this close to zero
    assert clear.mean() > 0.99
    assert np.array_equal(bits[clear], (values > 0)[clear])


def test_pca_rotation_starts_with_the_principal_axis_and_itq_has_the_lowest_quantisation_loss():
    rng = np.random.default_rng(2)
    gallery = unit_rows(rng, 2000, 16)
    centred = gallery.astype(np.float64) - gallery.mean(axis=0)
    principal = np.linalg.svd(centred, full_matrices=False)[2][0]
    pca = BinaryQuantizer.fit(gallery, BinaryCodeParams(rotation="pca"))
    assert abs(pca.projection[0] @ principal) > 0.999

    def loss(quantizer: BinaryQuantizer) -> float:  # ITQ's objective: distance of the data to its +-1 codes
        projected = (pca.projection.astype(np.float64) @ centred.T).T  # PCA coordinates, the same for both
        rotated = projected @ (quantizer.projection.astype(np.float64) @ pca.projection.T.astype(np.float64)).T
        return float(np.linalg.norm(np.sign(rotated) - rotated))

    random = BinaryQuantizer.fit(gallery, BinaryCodeParams(rotation="random"))
    assert loss(BinaryQuantizer.fit(gallery, BinaryCodeParams(rotation="itq"))) < min(loss(pca), loss(random))


def test_hamming_distances_of_faiss_match_a_numpy_popcount():
    rng = np.random.default_rng(3)
    gallery, queries = unit_rows(rng, 300, 24, 0.2), unit_rows(rng, 7, 24, 0.2)
    quantizer = BinaryQuantizer.fit(gallery, BinaryCodeParams(bits_per_dim=3, rotation="random"))  # 72 bits: 9 bytes
    codes, query_codes = quantizer.encode(gallery), quantizer.encode(queries)
    index = faiss.IndexBinaryFlat(quantizer.bits)
    index.add(codes)
    distances, rows = index.search(query_codes, len(gallery))
    brute = np.unpackbits(query_codes[:, None, :] ^ codes[None, :, :], axis=2).sum(axis=2)  # (Q, N)
    assert np.array_equal(np.take_along_axis(brute, rows, axis=1), distances)
    assert (np.diff(distances, axis=1) >= 0).all()


def test_more_bits_per_dimension_estimate_the_angle_better():
    rng = np.random.default_rng(4)
    gallery = unit_rows(rng, 300, 32)
    angles = np.arccos(np.clip(gallery[:50].astype(np.float64) @ gallery[50:].T, -1, 1)) / np.pi  # (50, 250)
    errors = []
    for bits in (1, 4):
        quantizer = BinaryQuantizer.fit(gallery, BinaryCodeParams(bits_per_dim=bits, rotation="random"))
        quantizer = BinaryQuantizer(np.zeros(32, np.float32), quantizer.projection, "random")  # uncentred angles
        codes = quantizer.encode(gallery)
        hamming = np.unpackbits(codes[:50, None] ^ codes[None, 50:], axis=2).sum(axis=2) / quantizer.bits
        errors.append(np.abs(hamming - angles).mean())
    assert errors[1] < 0.7 * errors[0]


def export_of(tmp_path, n: int = 50, dim: int = 16) -> Embeddings:
    rng = np.random.default_rng(5)
    info = ExportInfo(VIDEO, "demo", "m.pt", "cd" * 32, "EVA02-Tiny-test", 4, "frames/demo")
    columns = {
        "clip_id": [f"c{i}" for i in range(n)],
        "source": ["v.mp4"] * n,
        "start": [float(i) for i in range(n)],
        "end": [i + 1.0 for i in range(n)],
        "text": [""] * n,
    }
    write_embeddings(tmp_path / "demo_video.parquet", columns, unit_rows(rng, n, dim, 0.3), info)
    return read_embeddings(tmp_path / "demo_video.parquet", VIDEO)


def test_codes_file_round_trips_with_its_quantizers(tmp_path):
    export = export_of(tmp_path)
    config = CodesParams(int8=True, binary=BinaryCodeParams(bits_per_dim=2, rotation="itq", seed=3))
    made = make_codes(export.ids, export.vectors, export.info, config)
    path = codes_path(export.path)
    assert path.name == "demo_video.codes.parquet"
    write_codes(path, made)
    back = read_codes(path)
    assert back.ids == export.ids and back.info == export.info
    assert np.array_equal(back.int8, made.int8) and np.array_equal(back.binary, made.binary)
    assert np.array_equal(back.int8_quantizer.scales, made.int8_quantizer.scales)
    assert np.array_equal(back.binary_quantizer.projection, made.binary_quantizer.projection)
    assert np.array_equal(back.binary_quantizer.mean, made.binary_quantizer.mean)
    queries = unit_rows(np.random.default_rng(6), 4, 16)
    assert np.array_equal(back.binary_quantizer.encode(queries), made.binary_quantizer.encode(queries))
    schema = pq.read_schema(path)
    assert schema.field("int8").type == pa.list_(pa.int8(), 16) and schema.field("binary").type == pa.binary(4)
    assert b"eva02at.codes" in schema.metadata  # the format's key, which galleries exported earlier carry

    write_codes(path, make_codes(export.ids, export.vectors, export.info, CodesParams(int8=True)))
    only_int8 = read_codes(path)
    assert only_int8.binary is None and only_int8.binary_quantizer is None and only_int8.int8 is not None


def test_bad_codes_files_and_params_are_refused(tmp_path):
    with pytest.raises(MissingInput, match=r"missing\.codes\.parquet"):
        read_codes(tmp_path / "missing.codes.parquet")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(CodesError, match="not an eva02at codes file"):
        read_codes(tmp_path / "other.parquet")
    with pytest.raises(ConfigError, match=r"export\.codes\.binary\.rotation = 'spin'"):
        from_dict(CodesParams, {"binary": {"rotation": "spin"}}, "export.codes")
    with pytest.raises(ConfigError, match=r"export\.codes\.binary\.bits_per_dim = 0"):
        from_dict(CodesParams, {"binary": {"bits_per_dim": 0}}, "export.codes")


def test_an_export_without_clips_has_empty_codes(tmp_path):
    info = ExportInfo(VIDEO, "demo", "m.pt", "cd" * 32, "EVA02-Tiny-test", 4, "frames/demo")
    config = CodesParams(int8=True, binary=BinaryCodeParams(bits_per_dim=2))
    write_codes(tmp_path / "e.codes.parquet", make_codes([], np.zeros((0, 16), np.float32), info, config))
    back = read_codes(tmp_path / "e.codes.parquet")
    assert back.ids == [] and back.int8.shape == (0, 16) and back.binary.shape == (0, 4)


def test_encoding_in_chunks_gives_the_codes_of_one_pass(monkeypatch):
    from eva02at.export import codes as module

    gallery = unit_rows(np.random.default_rng(7), 100, 16, 0.3)
    int8 = Int8Quantizer.fit(gallery)
    binary = BinaryQuantizer.fit(gallery, BinaryCodeParams(bits_per_dim=2))
    whole = int8.encode(gallery), binary.encode(gallery)
    monkeypatch.setattr(module, "_CHUNK", 7)  # 100 rows: 14 full chunks and a partial one
    assert np.array_equal(int8.encode(gallery), whole[0]) and np.array_equal(binary.encode(gallery), whole[1])
    signs = (gallery - binary.mean) @ binary.projection.T > 0
    assert np.array_equal(whole[1], np.packbits(signs, axis=1))


@pytest.mark.parametrize(
    "config", [CodesParams(int8=True, binary=BinaryCodeParams(2, "itq", 5)), CodesParams(int8=True)]
)
def test_codes_made_row_group_by_row_group_are_the_file_of_the_whole_table(tmp_path, monkeypatch, config):
    monkeypatch.setattr(embeddings, "ROW_GROUP", 64)  # the export's row groups
    monkeypatch.setattr(codes, "_CHUNK", 64)  # the in-memory writer's
    monkeypatch.setattr(codes, "_FIT_SAMPLE", 150)  # a sample of the 300 rows, gathered from five row groups
    export = export_of(tmp_path, n=300)
    assert pq.ParquetFile(export.path).num_row_groups == 5
    export_codes(export.path, tmp_path / "streamed.codes.parquet", config)
    whole = make_codes(export.ids, export.vectors, export.info, config)
    write_codes(tmp_path / "whole.codes.parquet", whole)
    assert (tmp_path / "streamed.codes.parquet").read_bytes() == (tmp_path / "whole.codes.parquet").read_bytes()
    back = read_codes(tmp_path / "streamed.codes.parquet")
    step = np.abs(export.vectors.astype(np.float64)).max(axis=0) / 127  # the int8 scales from the whole table
    np.testing.assert_allclose(back.int8_quantizer.scales, step, rtol=1e-6)
    assert np.array_equal(back.int8, np.clip(np.rint(export.vectors / back.int8_quantizer.scales), -127, 127))
    if config.binary:
        rng = np.random.default_rng(config.binary.seed)
        sample = export.vectors[rng.permutation(300)[:150]].astype(np.float64)
        np.testing.assert_allclose(back.binary_quantizer.mean, sample.mean(axis=0), atol=1e-6)  # fitted on the sample
        quantizer = back.binary_quantizer
        signs = (export.vectors.astype(np.float64) - quantizer.mean) @ quantizer.projection.T.astype(np.float64) > 0
        assert np.array_equal(back.binary, np.packbits(signs, axis=1))
        binary_only = read_codes(tmp_path / "streamed.codes.parquet", int8=False)  # what float re-ranking reads
        assert binary_only.int8 is None and np.array_equal(binary_only.binary, back.binary)


def test_codes_are_made_for_video_exports_only(tmp_path):
    path = tmp_path / "t.parquet"
    text = ExportInfo("text", "demo", "m.pt", "ab" * 32, "EVA02-Tiny-test", 0, "")
    write_embeddings(path, {"sentence_id": ["s"], "text": ["x"]}, np.ones((1, 4), np.float32), text)
    with pytest.raises(CodesError, match="compact codes are made for video exports, not text"):
        export_codes(path, tmp_path / "t.codes.parquet", CodesParams(int8=True))
