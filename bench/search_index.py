"""Benchmark the indexes of ``eva02at.search.index`` on a large clustered gallery: bytes, build time, latency, recall.

    python -m bench.search_index --json search_index.json   # 1M clips x 256-d, 200 queries (about an hour here)
    python -m bench.search_index --small                    # 20k clips x 64-d, seconds (used by the tests)

The gallery is synthetic and clustered like real clip embeddings: a mixture of a few thousand Gaussian clusters
(log-normal sizes) on the unit sphere, anisotropic (variance falling over the axes of a random basis, as a
trained embedding's spectrum does), around a common direction (so that unrelated clips have a small positive
cosine, as real ones do). Queries are new draws from the same mixture. The script prints what that gives (the
cosines of the nearest clips and the gap between the 10th and 11th) beside the results.

Per index: resident bytes per clip (FAISS's serialised index over N; for the binary index also the re-rank
store, of which a query reads ``shortlist`` rows), build time (every thread; for binary also the export's code
fitting), query latency on one thread (queries one at a time; median wall and CPU-thread time, the latter less
sensitive to a shared machine) and recall@10 against exact float32 search.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict, dataclass

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from bench.common import machine_info, median, write_json
from eva02at.export.codes import BinaryCodeParams, Codes, CodesParams, make_codes
from eva02at.export.embeddings import VIDEO, ExportInfo
from eva02at.search.index import GalleryIndex, IndexParams, build_index


@dataclass(frozen=True)
class Mixture:
    """Gaussian clusters on the unit sphere: ``draw`` gives unit vectors ``(n, D)`` float32."""

    centres: np.ndarray  # (C, D) unit
    weights: np.ndarray  # (C,) cluster probabilities
    noise: np.ndarray  # (D, D): white noise -> the clusters' anisotropic spread
    spread: float  # expected norm of a clip's offset from its centre

    @classmethod
    def make(cls, dim: int, clusters: int, spread: float, offset: float, seed: int) -> Mixture:
        rng = np.random.default_rng(seed)
        basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        axis_scale = (1.0 + np.arange(dim)) ** -0.5
        axis_scale /= np.sqrt((axis_scale**2).mean())  # (D,), mean square 1
        shape = (basis * axis_scale).T  # rows: scaled basis vectors; x @ shape gives the anisotropic draw
        common = _unit(rng.standard_normal((1, dim)))
        centres = _unit(_unit(rng.standard_normal((clusters, dim)) @ shape) + offset * common)
        weights = rng.lognormal(0.0, 1.0, clusters)
        return cls(centres, weights / weights.sum(), shape / np.sqrt(dim), spread)

    def draw(self, n: int, seed: int, chunk: int = 100_000) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.centres.shape[1]), np.float32)
        for start in range(0, n, chunk):
            size = min(chunk, n - start)
            cluster = rng.choice(len(self.weights), size, p=self.weights)
            offsets = self.spread * rng.standard_normal((size, self.centres.shape[1])) @ self.noise
            out[start : start + size] = _unit(self.centres[cluster] + offsets)
        return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def index_rows(size: int) -> list[tuple[str, IndexParams]]:
    """The configurations measured: cells ~ sqrt(N); the float IVF scans 1/16 of them, the binary IVF 1/8 (or 1/4)."""
    cells = 1 << round(np.log2(max(16, np.sqrt(size))))
    return [
        ("flat", IndexParams(kind="flat")),
        ("ivf", IndexParams(kind="ivf", nlist=cells, nprobe=cells // 16)),
        ("hnsw", IndexParams(kind="hnsw", hnsw_m=32, ef_construction=64, ef_search=128)),
        ("binary-flat", IndexParams(kind="binary", nlist=0, shortlist=1000)),
        ("binary-ivf", IndexParams(kind="binary", nlist=cells, nprobe=cells // 8, shortlist=1000)),
        ("binary-ivf-int8", IndexParams(kind="binary", nlist=cells, nprobe=cells // 8, shortlist=1000, rerank="int8")),
        ("binary-ivf-wide", IndexParams(kind="binary", nlist=cells, nprobe=cells // 4, shortlist=1000)),
    ]


def resident_bytes(index: GalleryIndex) -> int:
    """Bytes FAISS serialises for the index: its codes or vectors, ids, cells or graph."""
    if isinstance(index.index, faiss.IndexBinary):
        return faiss.serialize_index_binary(index.index).size
    return faiss.serialize_index(index.index).size


def time_queries(index: GalleryIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[float], list[float]]:
    """Rows found for each query, searched one at a time on one thread, with wall and thread-CPU seconds."""
    rows, wall, cpu = [], [], []
    threads = faiss.omp_get_max_threads()
    with threadpool_limits(1):
        faiss.omp_set_num_threads(1)
        for query in queries:
            start, start_cpu = time.perf_counter(), time.thread_time()
            rows.append(index.search(query[None], k)[1][0])
            wall.append(time.perf_counter() - start)
            cpu.append(time.thread_time() - start_cpu)
    faiss.omp_set_num_threads(threads)
    return np.stack(rows), wall, cpu


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k].tolist()) & set(t.tolist())) / k for f, t in zip(found, truth, strict=True)]))


def measure(
    name: str, config: IndexParams, gallery: np.ndarray, codes: Codes, queries: np.ndarray, truth: np.ndarray
) -> dict:
    start = time.perf_counter()
    index = build_index(gallery, config, codes)
    build = time.perf_counter() - start
    found, wall, cpu = time_queries(index, queries, truth.shape[1])
    size = len(gallery)
    rerank = {"float": 4 * gallery.shape[1], "int8": gallery.shape[1]}[config.rerank] if config.kind == "binary" else 0
    return {
        "index": name,
        "config": asdict(config),
        "bytes_per_clip": resident_bytes(index) / size,
        "rerank_bytes_per_clip": rerank,
        "build_s": build,
        "latency_ms": 1e3 * median(wall),
        "cpu_ms": 1e3 * median(cpu),
        "recall_at_10": recall_at(found, truth),
    }


def gallery_stats(gallery: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict:
    """What the synthetic data looks like: cosines of the nearest clips and of typical pairs."""
    scores = np.take_along_axis(queries @ gallery.T, truth, axis=1) if len(gallery) <= 50_000 else None
    if scores is None:  # one query at a time: a (Q, 1M) matrix is 800 MB
        scores = np.stack([gallery[rows] @ query for query, rows in zip(queries, truth, strict=True)])
    sample = gallery[np.random.default_rng(0).choice(len(gallery), 2000, replace=False)]
    return {
        "top1_cosine": float(scores[:, 0].mean()),
        "top10_cosine": float(scores[:, 9].mean()),
        "gap_10_11": float(np.median(scores[:, 9] - scores[:, 10])),
        "median_pair_cosine": float(np.median(queries[:50] @ sample.T)),
    }


def format_rows(rows: list[dict], float_bytes: int) -> str:
    header = "| index | params | bytes/clip (resident) | re-rank store B/clip | build s | latency ms (wall) | "
    header += "CPU ms | recall@10 |"
    lines = [header, "|" + "---|" * 8]
    for row in rows:
        config = row["config"]
        params = {
            "flat": "",
            "ivf": f"nlist {config['nlist']}, nprobe {config['nprobe']}",
            "hnsw": f"M {config['hnsw_m']}, efC {config['ef_construction']}, efS {config['ef_search']}",
            "binary": f"nlist {config['nlist']}, nprobe {config['nprobe']}, shortlist {config['shortlist']}, "
            f"re-rank {config['rerank']}",
        }[config["kind"]]
        lines.append(
            f"| {row['index']} | {params} | {row['bytes_per_clip']:.1f} ({row['bytes_per_clip'] / float_bytes:.3f}x) "
            f"| {row['rerank_bytes_per_clip'] or '-'} | {row['build_s']:.1f} | {row['latency_ms']:.2f} | "
            f"{row['cpu_ms']:.2f} | {row['recall_at_10']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="20k clips x 64-d, 100 queries")
    parser.add_argument("--clips", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--clusters", type=int, default=4096)
    parser.add_argument("--spread", type=float, default=0.8, help="offset norm from the centre (cosine ~1/(1+s^2))")
    parser.add_argument("--offset", type=float, default=0.5, help="weight of the common direction")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--bits-per-dim", type=int, default=1)
    parser.add_argument("--indexes", nargs="+", help="names of index rows to run (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write every number here ('-' for standard output)")
    args = parser.parse_args(argv)
    if args.small:
        args.clips, args.dim, args.clusters, args.queries = 20_000, 64, 200, 100

    load = os.getloadavg()[0]
    mixture = Mixture.make(args.dim, args.clusters, args.spread, args.offset, args.seed)
    gallery, queries = mixture.draw(args.clips, args.seed + 1), mixture.draw(args.queries, args.seed + 2)
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(gallery)
    truth = exact.search(queries, 11)[1]  # the 11th only for the gap statistic
    start = time.perf_counter()
    info = ExportInfo(VIDEO, "synthetic", "", "", "synthetic", 0, "")
    config = CodesParams(int8=True, binary=BinaryCodeParams(args.bits_per_dim))
    codes = make_codes([str(i) for i in range(args.clips)], gallery, info, config)
    codes_s = time.perf_counter() - start
    rows = [
        measure(name, config, gallery, codes, queries, truth[:, :10])
        for name, config in index_rows(args.clips)
        if not args.indexes or name in args.indexes
    ]
    result = {
        "machine": machine_info(),
        "faiss": faiss.__version__,
        "load_before": load,
        "load_after": os.getloadavg()[0],
        "data": {key: getattr(args, key) for key in ("clips", "dim", "clusters", "spread", "offset", "queries")},
        "gallery": gallery_stats(gallery, queries, truth),
        "codes_fit_s": codes_s,
        "bits_per_dim": args.bits_per_dim,
        "rows": rows,
    }
    print(f"{args.clips} clips x {args.dim}-d, {args.queries} queries; load {load:.1f}; {result['gallery']}")
    print(f"codes (int8 + binary {args.bits_per_dim} bit/dim, itq) fitted and encoded in {codes_s:.1f} s")
    print(format_rows(rows, 4 * args.dim))
    if args.json:
        write_json(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
