"""``evaluate`` stage: every benchmark's metrics for every exported model and for chance, as DVC metrics, MLflow
and plots.

Writes ``metrics`` (JSON, nested ``<row>.<benchmark>.<metric>``, fractions; rows are the export stage's
models plus ``random``, benchmarks the entries of the ``benchmarks`` params in their order) and three PNGs
under ``plots``: training curves, metric bars and a text-to-video retrieval grid of one benchmark's queries.
With ``compatibility`` (an old and a new model), ``metrics`` also holds ``compatibility``: the cross-model rows
``new_text_old_video`` and ``old_text_new_video`` (``<row>.<benchmark>.<metric>`` below it, drawn in the metric
bars too) and the ``criterion`` on one benchmark's metric (``eva02at.models.compatibility.criterion``).
Ground truth is read from the copies the ``benchmark`` stage froze. One MLflow run "evaluate" holds the
flattened metrics, the params, the lineage tags and the files.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import pandas as pd
from pydantic import Field

from eva02at.core.atomic import write_text
from eva02at.core.config import ConfigError, NonNegativeInt, PositiveInt
from eva02at.core.errors import BadInput
from eva02at.core.tracking import flatten, read_settings
from eva02at.data.shards import FrameShards
from eva02at.evaluation.benchmarks import (
    BENCHMARKS,
    Benchmark,
    BenchmarkParams,
    chance,
    load_benchmark,
    missing_clips,
    score_model,
)
from eva02at.evaluation.benchmarks.frozen import frozen_benchmarks, require_frozen
from eva02at.evaluation.plots import Tile, clip_strip, metric_bars, retrieval_grid, training_curves
from eva02at.export.embeddings import TEXT, VIDEO, Embeddings, export_path, read_embeddings
from eva02at.models.compatibility import criterion
from stages.common import stage_main, stage_params
from stages.lineage import stage_run

log = logging.getLogger(__name__)
PLOTS = {"curves": "training_curves.png", "bars": "metric_bars.png", "grid": "retrieval_grid.png"}


@dataclass
class RandomParams:
    seed: NonNegativeInt = 0
    draws: PositiveInt = 5


@dataclass
class GridParams:
    benchmark: str  # whose queries the retrieval grid shows: a benchmark with retrieval examples
    model: str = "finetuned"  # whose results it shows
    queries: PositiveInt = 4
    top: PositiveInt = 5


@dataclass
class CompatibilityParams:
    """Cross-model rows of two exported models, and the criterion that says whether the new is compatible."""

    old: str  # export model whose galleries must stay searchable (e.g. the champion)
    new: str = "finetuned"
    benchmark: str = "ek100_mir"  # the criterion: cross-model <metric> of this benchmark >= the old model's own
    metric: str = "mAP_avg"

    def __post_init__(self) -> None:
        if self.old == self.new:
            raise ValueError(f"old and new are both {self.old!r}: compatibility compares two models")


@dataclass
class EvaluateParams:
    exports: str
    models: Annotated[list[str], Field(min_length=1)]  # export stage model names, e.g. [zero_shot, finetuned]
    grid: GridParams
    histories: dict[str, str] = field(default_factory=dict)  # training stage -> history.csv
    metrics: str = "metrics/eval.json"
    plots: str = "plots"
    random: RandomParams = field(default_factory=RandomParams)
    compatibility: CompatibilityParams | None = None  # its two models are rows too, listed in models or not
    allow_missing_clips: bool = False  # score a benchmark without the clips its export lacks (failed to decode)

    def __post_init__(self) -> None:
        if self.grid.model not in self.models:
            raise ValueError(f"grid.model {self.grid.model!r} is not one of models {self.models}")

    @property
    def rows(self) -> list[str]:
        """The models scored: ``models``, then the compatibility's two if not among them."""
        pair = [self.compatibility.old, self.compatibility.new] if self.compatibility else []
        return list(dict.fromkeys([*self.models, *pair]))


def load_exports(
    params: EvaluateParams, benchmarks: dict[str, Benchmark], model: str
) -> dict[str, tuple[Embeddings, Embeddings]]:
    """(video, text) exports of ``model`` for each benchmark: its collection's clips and its queries."""
    return {
        name: (
            read_embeddings(export_path(params.exports, model, benchmark.params.collection, VIDEO), VIDEO),
            read_embeddings(export_path(params.exports, model, name, TEXT), TEXT),
        )
        for name, benchmark in benchmarks.items()
    }


def without_missing_clips(params: EvaluateParams, benchmarks: dict[str, Benchmark]) -> dict[str, Benchmark]:
    """The benchmarks on the clips the first model's video exports hold: with clips missing (they failed to
    decode, see the frames manifest) a one-line refusal that counts them, or, if ``allow_missing_clips``, the
    benchmarks without them and a warning. Every model scores the same clips, and so does chance."""
    kept = {}
    for name, benchmark in benchmarks.items():
        videos = load_exports(params, {name: benchmark}, params.rows[0])[name][0]
        missing = missing_clips(benchmark, videos)
        needed = len(benchmark.clip_ids())
        if missing and not params.allow_missing_clips:
            raise BadInput(
                f"{name}: {len(missing)} of {needed} clips are not in {videos.path} (they failed to decode: see "
                f"{videos.info.frames}/manifest.parquet, e.g. {missing[0]}); evaluate.allow_missing_clips: true "
                f"scores the other {needed - len(missing)}"
            )
        kept[name] = benchmark.without(set(missing)) if missing else benchmark
        if missing:
            log.warning(
                "%s: scored without %d of %d clips, which are not in %s (evaluate.allow_missing_clips)",
                name,
                len(missing),
                needed,
                videos.path,
            )
    return kept


def check_grid(params: EvaluateParams, entries: dict[str, BenchmarkParams], params_file: str) -> None:
    """The retrieval grid's benchmark must be one of the entries and show retrieval examples."""
    showing = sorted(name for name in entries if hasattr(BENCHMARKS[name], "examples"))
    if params.grid.benchmark not in showing:
        raise ConfigError(
            f"{params_file}: evaluate.grid.benchmark = {params.grid.benchmark!r}: not a benchmark with retrieval "
            f"examples; those of benchmarks.entries that have them: {showing}"
        )


def draw_grid(params: EvaluateParams, benchmark: Benchmark, path: Path) -> None:
    """The retrieval grid of ``grid.model``: top clips of a few queries, relevant ones framed."""
    videos, texts = load_exports(params, {benchmark.name: benchmark}, params.grid.model)[benchmark.name]
    shards = FrameShards(videos.info.frames)
    rows = []
    for example in benchmark.examples(videos, texts, params.grid.queries, params.grid.top):
        tiles = [
            Tile(
                clip_strip(shards, hit.clip_id),
                f"{hit.clip_id} s={hit.score:.2f} R={hit.relevance:.2f}",
                "relevant" if hit.relevance == 1 else "partial" if hit.relevance > 0 else None,
            )
            for hit in example.hits
        ]
        rows.append((example.text, tiles))
    retrieval_grid(rows, path)


def check_compatibility(params: EvaluateParams, entries: dict[str, BenchmarkParams], params_file: str) -> None:
    """The criterion's benchmark must be one of the entries."""
    compat = params.compatibility
    if compat is not None and compat.benchmark not in entries:
        raise ConfigError(
            f"{params_file}: evaluate.compatibility.benchmark = {compat.benchmark!r}: not one of "
            f"benchmarks.entries {list(entries)}"
        )


def cross_model(params: EvaluateParams, benchmarks: dict[str, Benchmark], results: dict, params_file: str) -> dict:
    """The ``compatibility`` metrics: every benchmark on the two cross-model export pairs, and the criterion on
    ``compatibility.metric`` of ``compatibility.benchmark`` (``results`` holds the old and new models' rows)."""
    compat = params.compatibility
    old, new = load_exports(params, benchmarks, compat.old), load_exports(params, benchmarks, compat.new)
    rows = {
        "new_text_old_video": {name: b.score(old[name][0], new[name][1]) for name, b in benchmarks.items()},
        "old_text_new_video": {name: b.score(new[name][0], old[name][1]) for name, b in benchmarks.items()},
    }
    scored = results[compat.old][compat.benchmark]
    if compat.metric not in scored:
        raise ConfigError(
            f"{params_file}: evaluate.compatibility.metric = {compat.metric!r}: {compat.benchmark} gives {list(scored)}"
        )
    old_old, new_new, *cross = (
        row[compat.benchmark][compat.metric] for row in (results[compat.old], results[compat.new], *rows.values())
    )
    return {**rows, "criterion": criterion(old_old, new_new, *cross)}


def bar_rows(params: EvaluateParams, results: dict) -> dict:
    """The metric bars' rows: the models, chance, and the cross-model rows named after their two models."""
    rows = {name: metrics for name, metrics in results.items() if name != "compatibility"}
    if params.compatibility:
        old, new = params.compatibility.old, params.compatibility.new
        rows[f"{new} text, {old} videos"] = results["compatibility"]["new_text_old_video"]
        rows[f"{old} text, {new} videos"] = results["compatibility"]["old_text_new_video"]
    return rows


def draw_plots(params: EvaluateParams, results: dict, grid: Benchmark) -> list[Path]:
    out = Path(params.plots)
    histories = {}
    for stage, path in params.histories.items():
        if Path(path).is_file():
            histories[stage] = pd.read_csv(path)
        else:
            log.warning("no training history %s for %s; left out of the curves", path, stage)
    training_curves(histories, out / PLOTS["curves"])
    metric_bars(bar_rows(params, results), out / PLOTS["bars"])
    draw_grid(params, grid, out / PLOTS["grid"])
    return [out / name for name in PLOTS.values()]


def summary(metrics: dict[str, dict[str, float]]) -> str:
    """One log line of a row's metrics, in percent."""
    return " | ".join(
        f"{name} " + " ".join(f"{key} {100 * value:.1f}" for key, value in values.items())
        for name, values in metrics.items()
    )


@stage_main
def main() -> None:
    params, args = stage_params("evaluate", EvaluateParams, __doc__)
    read_settings(args.params)  # the tracking section, checked before any work
    entries = frozen_benchmarks(args.params)
    check_grid(params, entries, args.params)
    check_compatibility(params, entries, args.params)
    require_frozen(entries)
    benchmarks = without_missing_clips(params, {name: load_benchmark(name, entry) for name, entry in entries.items()})
    with stage_run("evaluate", args.params) as tracker:
        tracker.log_params({**asdict(params), "benchmarks": {name: asdict(b.params) for name, b in benchmarks.items()}})
        results = {model: score_model(benchmarks, load_exports(params, benchmarks, model)) for model in params.rows}
        results["random"] = chance(benchmarks, params.random.seed, params.random.draws)
        if params.compatibility:
            results["compatibility"] = cross_model(params, benchmarks, results, args.params)
        for row, metrics in bar_rows(params, results).items():
            log.info("%-10s %s", row, summary(metrics))
        if params.compatibility:
            log.info("compatibility criterion %s", results["compatibility"]["criterion"])
        write_text(params.metrics, json.dumps(results, indent=2) + "\n")
        tracker.log_metrics(flatten(results))
        tracker.log_artifact(params.metrics)
        for path in draw_plots(params, results, benchmarks[params.grid.benchmark]):
            tracker.log_artifact(path, "plots")


if __name__ == "__main__":
    main()
