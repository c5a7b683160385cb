"""``evaluate`` stage: benchmark metrics of every exported model and of chance, as DVC metrics, MLflow and plots.

Writes ``metrics`` (JSON, nested ``<row>.<benchmark>.<metric>``, fractions; rows are the export stage's
models plus ``random``) and three PNGs under ``plots``: training curves, metric bars and a text-to-video
retrieval grid of EK100 sentences. One MLflow run "evaluate" holds the flattened metrics, the params, the
lineage tags and the files.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import pandas as pd
from pydantic import Field

from eva02at.atomic import write_text
from eva02at.config import NonNegativeInt, PositiveInt
from eva02at.embeddings import TEXT, VIDEO, Embeddings, export_path, read_embeddings
from eva02at.evaluation import (
    BENCHMARKS,
    Benchmarks,
    evaluate_model,
    flatten_metrics,
    random_baseline,
    read_charades_labels,
    read_class_names,
    read_mcq,
    retrieval_examples,
)
from eva02at.labels import RelevancyTable
from eva02at.plots import Tile, clip_strip, metric_bars, retrieval_grid, training_curves
from eva02at.shards import FrameShards
from eva02at.tracking import Tracker, read_settings
from stages.common import lineage_tags, stage_main, stage_params

log = logging.getLogger(__name__)
PLOTS = {"curves": "training_curves.png", "bars": "metric_bars.png", "grid": "retrieval_grid.png"}


@dataclass
class Ek100Params:
    collection: str  # export collection of the EK100 test videos and sentences
    relevancy: str  # the soft_labels stage's table of the test split


@dataclass
class EgoMcqParams:
    collection: str
    questions: str  # egomcq.json


@dataclass
class CharadesParams:
    collection: str
    annotations: str  # CharadesEgo_v1_test_only1st.csv (labels from its actions column)
    classes: str  # Charades_v1_classes.txt


@dataclass
class RandomParams:
    seed: NonNegativeInt = 0
    draws: PositiveInt = 5


@dataclass
class GridParams:
    model: str = "finetuned"  # whose results the retrieval grid shows
    queries: PositiveInt = 4
    top: PositiveInt = 5


@dataclass
class EvaluateParams:
    exports: str
    models: Annotated[list[str], Field(min_length=1)]  # export stage model names, e.g. [zero_shot, finetuned]
    ek100_mir: Ek100Params
    egomcq: EgoMcqParams
    charades_ego: CharadesParams
    histories: dict[str, str] = field(default_factory=dict)  # training stage -> history.csv
    metrics: str = "metrics/eval.json"
    plots: str = "plots"
    random: RandomParams = field(default_factory=RandomParams)
    grid: GridParams = field(default_factory=GridParams)

    def __post_init__(self) -> None:
        if self.grid.model not in self.models:
            raise ValueError(f"grid.model {self.grid.model!r} is not one of models {self.models}")


def load_benchmarks(params: EvaluateParams) -> Benchmarks:
    class_ids, _ = read_class_names(params.charades_ego.classes)
    return Benchmarks(
        RelevancyTable.load(params.ek100_mir.relevancy),
        read_mcq(params.egomcq.questions),
        read_charades_labels(params.charades_ego.annotations, class_ids),
    )


def load_exports(params: EvaluateParams, model: str) -> dict[str, tuple[Embeddings, Embeddings]]:
    """(video, text) exports of ``model`` for each benchmark."""
    collections = {name: getattr(params, name).collection for name in BENCHMARKS}
    return {
        name: tuple(
            read_embeddings(export_path(params.exports, model, collection, kind), kind) for kind in (VIDEO, TEXT)
        )
        for name, collection in collections.items()
    }


def draw_grid(params: EvaluateParams, benchmarks: Benchmarks, path: Path) -> None:
    """The retrieval grid of ``grid.model``: top clips of a few EK100 sentences, relevant ones framed."""
    videos, texts = load_exports(params, params.grid.model)["ek100_mir"]
    shards = FrameShards(videos.info.frames)
    rows = []
    for example in retrieval_examples(videos, texts, benchmarks.relevancy, params.grid.queries, params.grid.top):
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


def draw_plots(params: EvaluateParams, results: dict, benchmarks: Benchmarks) -> list[Path]:
    out = Path(params.plots)
    histories = {}
    for stage, path in params.histories.items():
        if Path(path).is_file():
            histories[stage] = pd.read_csv(path)
        else:
            log.warning("no training history %s for %s; left out of the curves", path, stage)
    training_curves(histories, out / PLOTS["curves"])
    metric_bars(results, out / PLOTS["bars"])
    draw_grid(params, benchmarks, out / PLOTS["grid"])
    return [out / name for name in PLOTS.values()]


@stage_main
def main() -> None:
    params, args = stage_params("evaluate", EvaluateParams, __doc__)
    tracking = read_settings(args.params)
    benchmarks = load_benchmarks(params)
    with Tracker(tracking.experiment, "evaluate", tracking.uri, tracking.enabled, lineage_tags("evaluate")) as tracker:
        tracker.log_params(asdict(params))
        results = {model: evaluate_model(load_exports(params, model), benchmarks) for model in params.models}
        results["random"] = random_baseline(benchmarks, params.random.seed, params.random.draws)
        for row, metrics in results.items():
            mir, mcq = metrics["ek100_mir"], metrics["egomcq"]
            log.info(
                "%-10s EK100 mAP %.1f nDCG %.1f | EgoMCQ inter %.1f intra %.1f | Charades-Ego mAP %.1f",
                row,
                100 * mir["mAP_avg"],
                100 * mir["nDCG_avg"],
                100 * mcq["inter_video"],
                100 * mcq["intra_video"],
                100 * metrics["charades_ego"]["mAP"],
            )
        write_text(params.metrics, json.dumps(results, indent=2) + "\n")
        tracker.log_metrics(flatten_metrics(results))
        tracker.log_artifact(params.metrics)
        for path in draw_plots(params, results, benchmarks):
            tracker.log_artifact(path, "plots")


if __name__ == "__main__":
    main()
