"""A benchmark is one module plus one params entry: a toy benchmark registered by its own module flows through
the benchmark, export and evaluate stages, and DVC tracks its files through the project's dvc.yaml unchanged."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import yaml
from dvc.repo import Repo

from eva02at.core.config import ConfigError, read_params
from eva02at.evaluation.benchmarks import BENCHMARKS, benchmark_params, register_benchmark
from eva02at.export.embeddings import read_embeddings
from rehearsal.project import copy_project
from tests.stage_deps import derived_code_deps, listed_code_deps, stages_using, write_code_deps
from tests.test_evaluation import run_pipeline, write_mini_project

ROOT = Path(__file__).resolve().parents[1]
TOY_ENTRY = {"collection": "ek100_test", "queries": "toy_queries.csv", "truth": "toy_truth.csv", "k": 2}
TOY_TRUTH = {"q0": "P01_0", "q1": "P01_1", "q2": "P01_3", "q3": "P01_4", "q4": "P01_3"}  # query -> its clip


@pytest.fixture
def toy():
    """The toy module, imported afresh (so registered) for one test; the registry and the module as they were
    after it (another test module may have imported the toy for all its tests)."""
    earlier_module = sys.modules.pop("tests.toy_benchmark", None)
    earlier = BENCHMARKS.pop(earlier_module.NAME, None) if earlier_module else None
    module = importlib.import_module("tests.toy_benchmark")
    yield module
    del BENCHMARKS[module.NAME]
    if earlier_module is not None:
        sys.modules["tests.toy_benchmark"] = earlier_module
        if earlier is not None:
            BENCHMARKS[module.NAME] = earlier


def add_toy(root: Path, params_path: Path, entries: dict) -> dict:
    """The toy's two files, and its entry added to ``entries`` of the params file: nothing else changes."""
    (root / "toy_queries.csv").write_text("query_id,text\n" + "".join(f"{q},pick up thing {q}\n" for q in TOY_TRUTH))
    (root / "toy_truth.csv").write_text("query_id,clip_id\n" + "".join(f"{q},{c}\n" for q, c in TOY_TRUTH.items()))
    params = read_params(params_path)
    params["benchmarks"]["entries"]["toy_recall"] = entries
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def brute_force_recall(videos, texts, k: int) -> float:
    """Recall at k by the definition, query by query in float64."""
    gallery = list(dict.fromkeys(TOY_TRUTH.values()))
    clip = {item: videos.vectors[row].astype(np.float64) for row, item in enumerate(videos.ids)}
    hits = []
    for row, query in enumerate(texts.ids):
        scores = [float(clip[c] @ texts.vectors[row].astype(np.float64)) for c in gallery]
        rank = sum(s > scores[gallery.index(TOY_TRUTH[query])] for s in scores)  # clips scored above its clip
        hits.append(rank < k)
    return float(np.mean(hits))


def test_a_registered_module_and_its_params_entry_make_a_benchmark(toy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = write_mini_project(tmp_path)  # the three benchmarks of the package
    add_toy(tmp_path, params, TOY_ENTRY)
    run_pipeline(params, monkeypatch)

    assert (tmp_path / "benchmarks/toy_recall/truth.csv").read_text() == (tmp_path / "toy_truth.csv").read_text()
    metrics = json.loads((tmp_path / "metrics/eval.json").read_text())
    for row in ("zero_shot", "finetuned", "random"):
        assert list(metrics[row]) == ["egomcq", "ek100_mir", "charades_ego", "toy_recall"]
        assert 0 <= metrics[row]["toy_recall"]["recall_at_2"] <= 1
    for model in ("zero_shot", "finetuned"):
        texts = read_embeddings(tmp_path / f"exports/{model}/toy_recall_text.parquet")
        assert texts.ids == list(TOY_TRUTH) and texts.info.collection == "ek100_test"
        videos = read_embeddings(tmp_path / f"exports/{model}/ek100_test_video.parquet")  # shared with ek100_mir
        assert metrics[model]["toy_recall"]["recall_at_2"] == brute_force_recall(videos, texts, k=2)


def test_a_benchmarks_own_params_are_checked_with_its_dataclass(toy):
    entry = benchmark_params(toy.NAME, {**TOY_ENTRY, "k": 3}, "benchmarks.entries.toy_recall")
    assert isinstance(entry, toy.ToyParams) and entry.k == 3
    with pytest.raises(ConfigError, match=r"^benchmarks.entries.toy_recall.k = 0: Input should be greater than 0$"):
        benchmark_params(toy.NAME, {**TOY_ENTRY, "k": 0}, "benchmarks.entries.toy_recall")
    with pytest.raises(ValueError, match="registered twice"):
        register_benchmark(toy.NAME)(toy.ToyRecall)


def test_dvc_tracks_a_new_benchmarks_files_through_the_unchanged_dvc_yaml(tmp_path):
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    add_toy(tmp_path, tmp_path / "params.yaml", TOY_ENTRY)
    Repo.init(tmp_path, no_scm=True)
    with Repo(tmp_path) as repo:
        stages = {stage.name: stage for stage in repo.index.stages}
        toy_stage = stages["benchmark@toy_recall"]
        assert {"toy_queries.csv", "toy_truth.csv"} <= {dep.def_path for dep in toy_stage.deps}
        assert [out.def_path for out in toy_stage.outs] == ["data/benchmarks/toy_recall"]
        for name in ("export", "evaluate"):
            assert "data/benchmarks" in {dep.def_path for dep in stages[name].deps}
            assert nx.has_path(repo.index.graph, stages[name], toy_stage)  # it runs after the toy's stage


def test_a_benchmark_module_in_the_package_reruns_the_stages_that_read_benchmarks(tmp_path):
    """The checklist's last step on a copy of the project: the module in the package, its name on the import line,
    code deps regenerated; it then reruns what every benchmark module reruns."""
    project = copy_project(tmp_path / "project")
    package = project / "src/eva02at/evaluation/benchmarks"
    (package / "toy_recall.py").write_text((ROOT / "tests/toy_benchmark.py").read_text())
    init = (package / "__init__.py").read_text()
    (package / "__init__.py").write_text(
        init.replace("egomcq, ek100_mir  # noqa", "egomcq, ek100_mir, toy_recall  # noqa")
    )
    packages = {"eva02at": project / "src", "stages": project}
    write_code_deps(project, packages)
    assert listed_code_deps(project, packages) == derived_code_deps(project, packages)
    toy = stages_using(project, "src/eva02at/evaluation/benchmarks/toy_recall.py", packages)
    assert toy == stages_using(project, "src/eva02at/evaluation/benchmarks/egomcq.py", packages)
    assert {"benchmark", "export", "evaluate"} <= set(toy) and "frames" not in toy
