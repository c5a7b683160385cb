"""Search indexes: exact search against a float64 ranking, every index's recall@10 on a small clustered gallery
against exact search, re-ranked scores that are exact, a gallery on disk searched through its codes as brute
force ranks it, the choice by gallery size, and the benchmarks' small runs."""

from __future__ import annotations

import json
import mmap

import numpy as np
import pyarrow.parquet as pq
import pytest

from bench import scale_gallery
from bench import search_index as bench
from eva02at.export import embeddings
from eva02at.export.codes import BinaryCodeParams, Codes, CodesParams, codes_path, export_codes, make_codes, read_codes
from eva02at.export.embeddings import VIDEO, ExportInfo, read_embeddings, write_embeddings
from eva02at.search.index import IndexConfigError, IndexParams, build_index, choose_kind
from eva02at.search.query import open_gallery, read_rows

INFO = ExportInfo(VIDEO, "demo", "m.pt", "ab" * 32, "EVA02-Tiny-test", 4, "")


def exact_top(gallery: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k best clips per query by float64 scores, ties in gallery order (a plain stable sort)."""
    scores = queries.astype(np.float64) @ gallery.T.astype(np.float64)
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth, strict=True)]))


@pytest.fixture(scope="module")
def clustered():
    """5,000 clips and 60 queries of 32-d from the benchmark's clustered mixture, with int8 and 2-bit codes."""
    mixture = bench.Mixture.make(dim=32, clusters=60, spread=0.8, offset=0.5, seed=0)
    gallery, queries = mixture.draw(5000, seed=1), mixture.draw(60, seed=2)
    config = CodesParams(int8=True, binary=BinaryCodeParams(bits_per_dim=2))
    codes = make_codes([f"c{i}" for i in range(len(gallery))], gallery, INFO, config)
    return gallery, queries, codes, exact_top(gallery, queries, 10)


def test_flat_search_is_the_exact_ranking_with_ties_in_gallery_order():
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((40, 8)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    gallery[[5, 17, 30]] = gallery[11]  # exact ties: rows 5, 11, 17, 30
    queries = np.vstack([gallery[11], rng.standard_normal((3, 8)).astype(np.float32)])
    scores, rows = build_index(gallery, IndexParams(kind="flat")).search(queries, 45)
    assert rows.shape == (4, 45) and (rows[:, 40:] == -1).all() and np.isneginf(scores[:, 40:]).all()
    assert rows[0, :4].tolist() == [5, 11, 17, 30]
    assert np.array_equal(rows[:, :40], exact_top(gallery, queries, 40))
    np.testing.assert_allclose(scores[:, :40], np.take_along_axis(queries @ gallery.T, rows[:, :40], 1), atol=1e-6)


@pytest.mark.parametrize(
    ("config", "least"),
    [
        (IndexParams(kind="ivf", nlist=64, nprobe=4), 0.9),
        (IndexParams(kind="hnsw", hnsw_m=8, ef_search=16), 0.9),
        (IndexParams(kind="binary", nlist=0, shortlist=100), 0.9),
        (IndexParams(kind="binary", nlist=64, nprobe=8, shortlist=300), 0.9),
        (IndexParams(kind="binary", nlist=0, shortlist=300, rerank="int8"), 0.9),
    ],
    ids=["ivf", "hnsw", "binary-flat", "binary-ivf", "binary-int8"],
)
def test_approximate_indexes_find_most_of_the_exact_top_10(clustered, config, least):
    # the settings are frugal on purpose (recall 0.94 to 0.98 measured), so that a broken index cannot pass
    gallery, queries, codes, truth = clustered
    scores, rows = build_index(gallery, config, codes).search(queries, 10)
    assert recall(rows, truth) >= least
    if config.kind == "binary":  # re-ranked: the scores are those of the re-rank vectors, best first
        vectors = gallery if config.rerank == "float" else codes.int8_quantizer.decode(codes.int8)
        expected = np.einsum("qd,qkd->qk", queries.astype(np.float64), vectors[rows].astype(np.float64))
        np.testing.assert_allclose(scores, expected, atol=1e-5)
        assert (np.diff(scores, axis=1) <= 0).all()


def test_binary_shortlist_of_the_whole_gallery_is_exact(clustered):
    gallery, queries, codes, truth = clustered
    _, rows = build_index(gallery, IndexParams(kind="binary", nlist=0, shortlist=len(gallery)), codes).search(
        queries, 10
    )
    assert np.array_equal(rows, truth)


def test_the_index_kind_follows_the_gallery_size_and_the_codes(clustered):
    gallery, _, codes, _ = clustered
    small, large = IndexParams(exact_max=len(gallery)), IndexParams(exact_max=len(gallery) - 1)
    assert choose_kind(len(gallery), small, codes) == "flat"
    assert choose_kind(len(gallery), large, codes) == "binary"
    assert choose_kind(len(gallery), large, None) == "ivf"
    assert choose_kind(len(gallery), IndexParams(kind="hnsw"), codes) == "hnsw"
    int8_only = Codes(codes.ids, codes.info, codes.int8, codes.int8_quantizer)
    assert choose_kind(len(gallery), large, int8_only) == "ivf"
    with pytest.raises(IndexConfigError, match="needs binary codes"):
        build_index(gallery, IndexParams(kind="binary"), int8_only)
    with pytest.raises(IndexConfigError, match="index kind must be one of"):
        build_index(gallery, IndexParams(kind="lsh"))
    with pytest.raises(IndexConfigError, match=">= 1"):
        build_index(gallery, IndexParams(nprobe=0))


def test_benchmark_small_run_reports_consistent_numbers(tmp_path):
    out = tmp_path / "search.json"
    assert bench.main(["--small", "--indexes", "flat", "ivf", "binary-ivf", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {row["index"]: row for row in result["rows"]}
    assert list(rows) == ["flat", "ivf", "binary-ivf"]
    float_bytes = 4 * result["data"]["dim"]
    assert rows["flat"]["recall_at_10"] == 1.0 and rows["flat"]["bytes_per_clip"] == pytest.approx(float_bytes, 0.01)
    assert rows["ivf"]["bytes_per_clip"] > float_bytes  # the vectors, their ids and the cells
    binary = rows["binary-ivf"]
    code_bytes = result["data"]["dim"] * result["bits_per_dim"] / 8
    assert code_bytes + 8 <= binary["bytes_per_clip"] < float_bytes / 8  # code and id per clip, plus the cells
    assert binary["rerank_bytes_per_clip"] == float_bytes
    for row in rows.values():
        assert 0 < row["recall_at_10"] <= 1 and row["latency_ms"] > 0 and row["cpu_ms"] >= 0
    gallery = result["gallery"]
    assert gallery["top1_cosine"] > gallery["top10_cosine"] > gallery["median_pair_cosine"] > 0


def test_a_gallery_on_disk_is_searched_through_its_codes_as_brute_force_ranks_it(tmp_path, monkeypatch):
    monkeypatch.setattr(embeddings, "ROW_GROUP", 100)  # 1,000 clips in ten row groups
    mixture = bench.Mixture.make(dim=32, clusters=20, spread=0.8, offset=0.5, seed=3)
    gallery, queries = mixture.draw(1000, seed=4), mixture.draw(8, seed=5)
    ids = [f"c{i}" for i in range(len(gallery))]
    columns = {
        "clip_id": ids,
        "source": ["v.mp4"] * 1000,
        "start": [0.0] * 1000,
        "end": [1.0] * 1000,
        "text": [""] * 1000,
    }
    path = tmp_path / "demo_video.parquet"
    write_embeddings(path, columns, gallery, INFO)
    export_codes(path, codes_path(path), CodesParams(binary=BinaryCodeParams()))
    config = IndexParams(kind="binary", nlist=0, shortlist=1000)  # every clip shortlisted: re-ranking decides
    opened = open_gallery(path, config, tmp_path / "cache")
    assert isinstance(opened.vectors.base, mmap.mmap) and opened.codes is not None and opened.ids == ids
    scores, rows = build_index(opened.vectors, config, opened.codes).search(queries, 10)
    truth = exact_top(gallery, queries, 10)
    assert np.array_equal(rows, truth)
    expected = np.take_along_axis(queries.astype(np.float64) @ gallery.T.astype(np.float64), truth, 1)
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    picked = read_rows(path, [int(r) for r in rows[0][::-1]], ("clip_id",))  # rows from several row groups, any order
    assert picked["clip_id"] == [ids[r] for r in rows[0][::-1]]
    assert not isinstance(open_gallery(path, IndexParams(kind="flat"), tmp_path / "cache").vectors.base, mmap.mmap)


def test_the_gallery_scale_benchmark_runs_its_components_in_order(tmp_path, capsys):
    scale_gallery.COMPONENTS["search"](3000, tmp_path)  # an empty folder: export and codes run first
    export = scale_gallery.export_file(tmp_path)
    assert list(scale_gallery.COMPONENTS) == ["export", "codes", "search"]
    assert pq.ParquetFile(export).metadata.num_rows == 3000 and len(read_codes(codes_path(export)).ids) == 3000
    vectors = read_embeddings(export, VIDEO).vectors
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)  # unit rows, as exports hold
    assert "median query latency" in capsys.readouterr().out
