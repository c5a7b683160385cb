"""The evaluation behind ``train.select``: a benchmark of the registry scoring the model being trained.

Built from ``train.select`` and the ``benchmarks`` params before training starts: the benchmark's module reads
its queries and ground truth, the frames collection must hold ``select.frames`` frames per clip at the model's
image size, and a benchmark's own (test) collection is refused unless ``on_test_set`` says so. At each
evaluated epoch the model embeds the collection and the queries exactly as the export does (into a temporary
folder) and the benchmark scores them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from eva02at.core.config import ConfigError
from eva02at.core.digest import file_digest
from eva02at.data.shards import read_frame_spec
from eva02at.evaluation.benchmarks import BENCHMARKS, benchmark_params, load_benchmark
from eva02at.evaluation.benchmarks.frozen import read_suite
from eva02at.export.embeddings import TEXT, VIDEO, read_embeddings
from eva02at.export.inference import export_texts, export_videos
from eva02at.models import VideoCLIP
from eva02at.train.selection import SelectParams

ORIGIN = "training"  # what the temporary exports name as their checkpoint


def reported_collections(params_file: str) -> dict[str, str]:
    """collection -> the benchmark that reports on it (``benchmarks.entries``): the sets selection must not use."""
    return {entry.collection: name for name, entry in read_suite(params_file).items()}


def selection_evaluator(
    select: SelectParams, model: VideoCLIP, device: torch.device, params_file: str
) -> Callable[[VideoCLIP], float]:
    """The ``evaluate`` function of ``train.selection.BestEpoch``, checked against the data before training."""
    where = f"{params_file}: train.select"
    collection = Path(select.collection).name
    reporting = reported_collections(params_file).get(collection)
    if reporting is not None and not select.on_test_set:
        raise ConfigError(
            f"{where}.collection {select.collection} is the test collection of benchmarks.entries.{reporting}: "
            "select on a validation split, or set on_test_set: true to select on the test set as the peers report"
        )
    spec = read_frame_spec(select.collection)
    frames = select.frames or spec.num_frames
    if spec.num_frames != frames or spec.size != model.image_size:
        raise ConfigError(
            f"{where}: {select.collection} holds {spec.num_frames} frames of {spec.size} px per clip; the selection "
            f"evaluates {frames} frames of {model.image_size} px: decode a collection of that shape"
        )
    entry = benchmark_params(
        select.benchmark, {"collection": collection, "queries": select.queries, "truth": select.truth}, where
    )
    benchmark = load_benchmark(select.benchmark, entry)
    metrics = sorted(benchmark.chance(np.random.default_rng(0)))
    if select.metric not in metrics:
        raise ConfigError(f"{where}.metric {select.metric!r} is not a score of {select.benchmark}: {metrics}")
    ids, texts = BENCHMARKS[select.benchmark].read_queries(entry)

    def evaluate(trained: VideoCLIP) -> float:
        with tempfile.TemporaryDirectory(prefix="select-") as folder:
            videos, queries = Path(folder) / "video.parquet", Path(folder) / "text.parquet"
            origin = {"device": device, "checkpoint_sha256": ORIGIN}
            export_videos(trained, ORIGIN, select.collection, videos, collection, **origin)
            export_texts(trained, ORIGIN, ids, texts, queries, collection, **origin)
            scores = benchmark.score(read_embeddings(videos, VIDEO), read_embeddings(queries, TEXT))
        return scores[select.metric]

    return evaluate


def selection_inputs(select: SelectParams) -> dict[str, str]:
    """Digests of the selection's files, which DVC does not track: part of the run's fingerprint and tags."""
    manifest = Path(select.collection) / "manifest.parquet"
    files = {"collection": manifest, "queries": Path(select.queries), "truth": Path(select.truth)}
    return {f"select.{key}.sha256": file_digest(path) for key, path in files.items() if path.is_file()}
