"""Evaluation from exports: the three benchmark modules on hand-made EK100 MIR, EgoMCQ and Charades-Ego cases
against independent computations (rows shuffled in the files, so only matching by id gives the right answer),
the chance row against its closed form, and the benchmark, export and evaluate stages end to end on tiny shards."""

from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from sklearn.metrics import average_precision_score

from eva02at.core.errors import BadInput
from eva02at.core.tracking import flatten
from eva02at.data.labels import RelevancyTable
from eva02at.evaluation.benchmarks import BenchmarkParams, chance, load_benchmark, missing_clips, score_model
from eva02at.export.codes import read_codes
from eva02at.export.embeddings import TEXT, VIDEO, ExportInfo, read_embeddings, write_embeddings
from tests.test_embeddings import make_checkpoint, make_shards

D = 8


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, D))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force_mir(sim: np.ndarray, rel: np.ndarray) -> dict[str, float]:
    """EK100 MIR by the definition, query by query in float64 (an independent check of the whole path)."""

    def scores(s: np.ndarray, r: np.ndarray) -> tuple[float, float]:
        ranked = [r[i] for i in sorted(range(len(s)), key=lambda i: -s[i])]
        precisions = [sum(ranked[: k + 1]) / (k + 1) for k, value in enumerate(ranked) if value == 1]
        k = int((r > 0).sum())
        dcg = sum(ranked[i] / math.log2(i + 2) for i in range(k))
        ideal = sorted(r, reverse=True)
        return sum(precisions) / len(precisions), dcg / sum(ideal[i] / math.log2(i + 2) for i in range(k))

    v2t = np.array([scores(sim[i], rel[i]) for i in range(sim.shape[0])])
    t2v = np.array([scores(sim[:, j], rel[:, j]) for j in range(sim.shape[1])])
    out = {"mAP_v2t": v2t[:, 0].mean(), "mAP_t2v": t2v[:, 0].mean(), "nDCG_v2t": v2t[:, 1].mean()}
    out["nDCG_t2v"] = t2v[:, 1].mean()
    out["mAP_avg"], out["nDCG_avg"] = (out["mAP_v2t"] + out["mAP_t2v"]) / 2, (out["nDCG_v2t"] + out["nDCG_t2v"]) / 2
    return out


def write_export(path, kind: str, ids: list[str], vectors: np.ndarray, order: np.ndarray, sha: str = "0" * 64):
    """An export whose rows are in ``order`` (a shuffle of the ids)."""
    ids = [ids[i] for i in order]
    if kind == VIDEO:
        columns = {"clip_id": ids, "source": ids, "start": [0.0] * len(ids), "end": [1.0] * len(ids), "text": ids}
    else:
        columns = {"sentence_id": ids, "text": ids}
    info = ExportInfo(kind, path.stem, "model.pt", sha, "EVA02-Tiny-test", 4 if kind == VIDEO else 0, "")
    write_embeddings(path, columns, vectors[order].astype(np.float32), info)
    return read_embeddings(path, kind)


EK100_VIDEOS = pd.DataFrame(
    {
        "narration_id": ["P01_0", "P01_1", "P01_2", "P01_3", "P01_4"],
        "verb_class": [0, 1, 0, 1, 2],
        "all_noun_classes": ["[0]", "[1]", "[0]", "[0, 1]", "[2]"],  # P01_2 has P01_0's classes: R = 1 too
    }
)
EK100_SENTENCES = pd.DataFrame({"narration_id": ["P01_0", "P01_1", "P01_3", "P01_4"]})
CHARADES_CSV = """id,actions,length
X0,c0 0.1 1.0;c2 1.0 2.0,3
X1,c1 0 1,2
X2,,2
X3,c0 0.5 1.5,2
X4,c2 0 1;c1 1 2,2
"""


def write_mcq(path) -> None:
    """Four questions: 0 and 1 inter-video (types 1), 2 and 3 intra-video (types 2)."""
    questions = {
        str(q): {
            "query": {"video_uid": "v", "clip_start": 0, "clip_end": 1, "clip_text": f"query {q}"},
            "choices": {str(c): {"video_uid": "v", "clip_start": c, "clip_end": c + 1} for c in range(5)},
            "answer": answer,
            "types": 1 if q < 2 else 2,
        }
        for q, answer in enumerate([3, 0, 2, 4])
    }
    path.write_text(json.dumps(questions))


def write_benchmark_files(root: Path) -> dict[str, BenchmarkParams]:
    """The three benchmarks' files (EK100 sentences and relevancy, EgoMCQ, Charades-Ego) and their entries."""
    RelevancyTable.build(EK100_VIDEOS, EK100_SENTENCES).save(root / "ek100_test.npz")
    sentences = pd.DataFrame({"narration_id": EK100_SENTENCES["narration_id"], "narration": ["a", "b", "c", "d"]})
    sentences.to_csv(root / "sentences.csv", index=False)
    write_mcq(root / "egomcq.json")
    (root / "classes.txt").write_text("c0 open door\nc1 close door\n\nc2 wash cup\n")
    (root / "charades.csv").write_text(CHARADES_CSV)
    return {
        "egomcq": BenchmarkParams("egomcq", str(root / "egomcq.json"), str(root / "egomcq.json")),
        "ek100_mir": BenchmarkParams("ek100_test", str(root / "sentences.csv"), str(root / "ek100_test.npz")),
        "charades_ego": BenchmarkParams("charades_ego", str(root / "classes.txt"), str(root / "charades.csv")),
    }


@pytest.fixture
def hand_made(tmp_path):
    """Benchmarks read from their files, exports with shuffled rows, and the similarities in annotation order."""
    rng = np.random.default_rng(0)
    benchmarks = {name: load_benchmark(name, entry) for name, entry in write_benchmark_files(tmp_path).items()}
    video, sentence = unit_rows(rng, 5), unit_rows(rng, 4)
    basis = np.eye(D)
    # EgoMCQ: query q is basis vector q; the clip of score 1 is the answer for inter-video questions and a
    # wrong choice for intra-video ones, every other choice is orthogonal (score 0).
    clips = np.tile(basis[4:], (4, 2, 1))[:, :5].copy()  # (question, choice, D)
    for q, (answer, wrong) in enumerate([(3, None), (0, None), (2, 1), (4, 0)]):
        clips[q, answer if wrong is None else wrong] = basis[q]
    charades_video, charades_text = unit_rows(rng, 5), unit_rows(rng, 3)
    mcq_ids = [f"{q}_{c}" for q in range(4) for c in range(5)]
    ek100_ids = list(benchmarks["ek100_mir"].video_ids)
    shuffle = rng.permutation
    embeddings = {
        "ek100_mir": (
            write_export(tmp_path / "ek_v.parquet", VIDEO, ek100_ids, video, shuffle(5)),
            write_export(tmp_path / "ek_t.parquet", TEXT, benchmarks["ek100_mir"].sentence_ids, sentence, shuffle(4)),
        ),
        "egomcq": (
            write_export(tmp_path / "mcq_v.parquet", VIDEO, mcq_ids, clips.reshape(20, D), shuffle(20)),
            write_export(tmp_path / "mcq_t.parquet", TEXT, ["0", "1", "2", "3"], basis[:4], shuffle(4)),
        ),
        "charades_ego": (
            write_export(tmp_path / "ch_v.parquet", VIDEO, ["X0", "X1", "X2", "X3", "X4"], charades_video, shuffle(5)),
            write_export(tmp_path / "ch_t.parquet", TEXT, ["c0", "c1", "c2"], charades_text, shuffle(3)),
        ),
    }
    return benchmarks, embeddings, video @ sentence.T, charades_video @ charades_text.T


def test_ek100_mir_matches_by_id(hand_made):
    benchmarks, embeddings, sim, _ = hand_made
    rel = benchmarks["ek100_mir"].relevancy
    assert rel[3, 1] == 0.75 and rel[2, 0] == 1  # soft and shared relevance are both present
    got = score_model(benchmarks, embeddings)["ek100_mir"]
    expected = brute_force_mir(sim, rel)
    assert got == pytest.approx(expected, abs=1e-6)
    videos, texts = embeddings["ek100_mir"]
    by_position = brute_force_mir(videos.vectors @ texts.vectors.T, rel)
    assert by_position != pytest.approx(expected, abs=1e-3)  # the shuffle matters


def test_egomcq_accuracies_carry_their_names(hand_made):
    benchmarks, embeddings, _, _ = hand_made
    assert benchmarks["egomcq"].answers.tolist() == [3, 0, 2, 4]
    assert benchmarks["egomcq"].types.tolist() == [1, 1, 2, 2]
    got = score_model(benchmarks, embeddings)["egomcq"]
    assert got == {"inter_video": 1.0, "intra_video": 0.0, "overall": 0.5}


def test_charades_map_matches_a_peer_library(hand_made):
    benchmarks, embeddings, _, scores = hand_made
    charades = benchmarks["charades_ego"]
    assert charades.class_ids == ["c0", "c1", "c2"]
    assert charades.labels.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 1]]
    labels = charades.labels
    labelled = labels.any(axis=1)  # the unlabeled video ranks last, where it changes no AP
    expected = np.mean([average_precision_score(labels[labelled, k], scores[labelled, k]) for k in range(3)])
    got = score_model(benchmarks, embeddings)["charades_ego"]["mAP"]
    assert got == pytest.approx(expected, abs=1e-6)


def test_exports_of_different_checkpoints_are_refused_but_any_pair_can_be_scored(hand_made, tmp_path):
    benchmarks, embeddings, sim, _ = hand_made
    videos, texts = embeddings["ek100_mir"]
    other = write_export(tmp_path / "other.parquet", TEXT, texts.ids, texts.vectors, np.arange(4), sha="1" * 64)
    with pytest.raises(BadInput, match="different checkpoints"):
        score_model(benchmarks, {**embeddings, "ek100_mir": (videos, other)})
    # a benchmark itself scores any pair (one model's queries against another's gallery), by id
    got = benchmarks["ek100_mir"].score(videos, other)
    assert got == pytest.approx(brute_force_mir(sim, benchmarks["ek100_mir"].relevancy), abs=1e-6)


def test_annotation_errors_name_the_row(tmp_path):
    entries = write_benchmark_files(tmp_path)
    (tmp_path / "charades.csv").write_text("id,actions\nX0,c0 0 1;c9 1 2\n")
    with pytest.raises(BadInput, match=r"charades.csv: line 2: action class 'c9'"):
        load_benchmark("charades_ego", entries["charades_ego"])
    questions = json.loads((tmp_path / "egomcq.json").read_text())
    questions["2"]["types"] = 3
    (tmp_path / "egomcq.json").write_text(json.dumps(questions))
    with pytest.raises(BadInput, match=r"question 2: .*types 3 is neither 1 nor 2"):
        load_benchmark("egomcq", entries["egomcq"])
    (tmp_path / "classes.txt").write_text("c0 open door\nc1\n")
    with pytest.raises(BadInput, match=r"classes.txt:2: expected '<class id> <class name>'"):
        load_benchmark("charades_ego", entries["charades_ego"])


def test_chance_matches_its_closed_form(tmp_path):
    """One relevant sentence per video: AP of a random ranking is E[1/rank] = H_n / n, nDCG P(rank 1) = 1/n;
    EgoMCQ with five choices: 1/5; Charades-Ego with one positive video of three per class: H_3 / 3."""
    n = 10
    videos = pd.DataFrame({"narration_id": [str(i) for i in range(n)], "verb_class": range(n)})
    videos["all_noun_classes"] = [f"[{i}]" for i in range(n)]
    RelevancyTable.build(videos, videos[["narration_id"]]).save(tmp_path / "relevancy.npz")
    choices = {str(c): {"video_uid": "v", "clip_start": c, "clip_end": c + 1} for c in range(5)}
    mcq = {
        str(q): {"query": {"clip_text": ""}, "choices": choices, "answer": q % 5, "types": q % 2 + 1} for q in range(40)
    }
    (tmp_path / "egomcq.json").write_text(json.dumps(mcq))
    (tmp_path / "classes.txt").write_text("a x\nb y\nc z\n")
    labelled = "".join(f"{i},{name} 0 1\n" for i, name in enumerate("abc"))  # one video per class
    (tmp_path / "charades.csv").write_text("id,actions\n" + labelled + "3,\n4,\n5,\n")  # and three unlabeled
    entries = {
        "egomcq": BenchmarkParams("mcq", str(tmp_path / "egomcq.json"), str(tmp_path / "egomcq.json")),
        "ek100_mir": BenchmarkParams("ek", "unused.csv", str(tmp_path / "relevancy.npz")),
        "charades_ego": BenchmarkParams("ch", str(tmp_path / "classes.txt"), str(tmp_path / "charades.csv")),
    }
    benchmarks = {name: load_benchmark(name, entry) for name, entry in entries.items()}
    got = chance(benchmarks, seed=0, draws=200)
    harmonic = sum(1 / k for k in range(1, n + 1)) / n
    assert got["ek100_mir"]["mAP_avg"] == pytest.approx(harmonic, abs=0.03)
    assert got["ek100_mir"]["nDCG_avg"] == pytest.approx(1 / n, abs=0.03)
    assert got["egomcq"]["inter_video"] == pytest.approx(0.2, abs=0.03)
    assert got["egomcq"]["intra_video"] == pytest.approx(0.2, abs=0.03)
    # a class's one positive among three labelled videos (unlabeled ones rank last): E[1/rank] = H_3 / 3
    assert got["charades_ego"]["mAP"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3, abs=0.04)
    assert chance(benchmarks, seed=3, draws=2) == chance(benchmarks, seed=3, draws=2)
    assert chance(benchmarks, seed=3, draws=2) != chance(benchmarks, seed=4, draws=2)


def test_flatten_metrics():
    assert flatten({"a": {"b": {"c": 1}, "d": 0.5}}) == {"a.b.c": 1.0, "a.d": 0.5}


class RecordingTracker:
    """Stands in for MLflow's run (its own tests cover it): records what the stage logs."""

    def __init__(self, runs: list, experiment, run_name, uri=None, enabled=True, tags=None, **resume):
        self.run_name, self.tags, self.metrics, self.artifacts = run_name, tags, {}, []
        runs.append(self)

    def log_params(self, params):
        self.params = params

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append(Path(path).name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def run_stage(module, params, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [module.__name__, "--params", str(params)])
    module.main()


def write_mini_project(root: Path) -> Path:
    """Benchmark files, frame shards, two tiny checkpoints and a params file for the benchmark, export and
    evaluate stages (paths relative to ``root``)."""
    entries = write_benchmark_files(root)
    make_shards(root / "frames/ek100_test", [{"clip_id": c} for c in EK100_VIDEOS["narration_id"]], num_frames=8)
    make_shards(root / "frames/egomcq", [{"clip_id": f"{q}_{c}"} for q in range(4) for c in range(5)])
    make_shards(root / "frames/charades_ego", [{"clip_id": f"X{i}"} for i in range(5)], num_frames=8)
    make_shards(root / "frames/ego4d_clips", [{"clip_id": "k0"}, {"clip_id": "k1", "status": "error"}], num_frames=8)
    history = pd.DataFrame({"step": [1, 2, 3], "epoch": 0, "loss": [3.0, 2.0, 1.5], "lr": [1e-4, 1e-4, 5e-5]})
    history.assign(clips_per_s=10.0).to_csv(root / "history.csv", index=False)
    params = {
        "benchmarks": {
            "out": "benchmarks",
            "entries": {
                name: {
                    key: str(Path(value).relative_to(root)) if key != "collection" else value
                    for key, value in vars(entry).items()
                }
                for name, entry in entries.items()
            },
        },
        "export": {
            "out": str(root / "exports"),
            "frames": "frames",
            "batch_size": 4,
            "workers": 0,
            "codes": {"int8": True, "binary": {"bits_per_dim": 2, "rotation": "pca"}},
            "models": {
                "zero_shot": str(make_checkpoint(root / "pretrain.pt", num_frames=4, seed=0)),
                "finetuned": str(make_checkpoint(root / "finetune.pt", num_frames=8, seed=1)),
            },
            "collections": ["ego4d_clips"],
        },
        "evaluate": {
            "exports": "exports",
            "models": ["zero_shot", "finetuned"],
            "histories": {"finetune": "history.csv", "pretrain": "missing.csv"},
            "random": {"seed": 0, "draws": 3},
            "grid": {"benchmark": "ek100_mir", "model": "finetuned", "queries": 2, "top": 3},
            "compatibility": {"old": "zero_shot", "new": "finetuned"},
        },
        "tracking": {"uri": None, "experiment": "eva02at", "enabled": True},  # runs recorded by RecordingTracker
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root / "params.yaml"


def run_pipeline(params: Path, monkeypatch) -> list[RecordingTracker]:
    """The benchmark stage for every entry, then export and evaluate; the runs they record."""
    from stages import benchmark, evaluate, export, lineage

    runs: list[RecordingTracker] = []
    monkeypatch.setattr(lineage, "Tracker", functools.partial(RecordingTracker, runs))  # every stage's run
    for name in yaml.safe_load(params.read_text())["benchmarks"]["entries"]:
        monkeypatch.setattr(sys, "argv", ["benchmark", name, "--params", str(params)])
        benchmark.main()
    run_stage(export, params, monkeypatch)
    run_stage(evaluate, params, monkeypatch)
    return runs


def test_benchmark_export_and_evaluate_stages(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths of the params; the stage's git and DVC lookups find no project
    params = write_mini_project(tmp_path)
    export_run, run = run_pipeline(params, monkeypatch)
    frozen = sorted(p.relative_to(tmp_path / "benchmarks").as_posix() for p in (tmp_path / "benchmarks").rglob("*"))
    assert frozen == [
        "charades_ego",
        "charades_ego/queries.txt",
        "charades_ego/truth.csv",
        "egomcq",
        "egomcq/queries.json",
        "egomcq/truth.json",
        "ek100_mir",
        "ek100_mir/queries.csv",
        "ek100_mir/truth.npz",
    ]
    assert (tmp_path / "benchmarks/ek100_mir/truth.npz").read_bytes() == (tmp_path / "ek100_test.npz").read_bytes()
    written = sorted(p.relative_to(tmp_path / "exports").as_posix() for p in (tmp_path / "exports").rglob("*.parquet"))
    assert len(written) == 2 * (4 * 2 + 3) and "finetuned/ego4d_clips_video.parquet" in written
    assert "finetuned/ek100_mir_text.parquet" in written and "finetuned/ek100_test_video.codes.parquet" in written
    assert read_embeddings(tmp_path / "exports/zero_shot/ego4d_clips_video.parquet").ids == ["k0"]
    assert read_embeddings(tmp_path / "exports/zero_shot/ek100_test_video.parquet").info.num_frames == 8
    videos = read_embeddings(tmp_path / "exports/finetuned/egomcq_video.parquet")
    codes = read_codes(tmp_path / "exports/finetuned/egomcq_video.codes.parquet")
    assert codes.ids == videos.ids and codes.info == videos.info
    assert codes.binary.shape == (20, 4) and codes.int8.shape == (20, 16)  # 16-d embeddings, 2 bits per dimension
    assert export_run.run_name == "export" and export_run.tags["dvc.stage"] == "export"
    assert export_run.params["codes"]["binary"]["bits_per_dim"] == 2
    assert export_run.metrics == {
        f"{kind}.{model}.{name}": count
        for model in ("zero_shot", "finetuned")
        for kind, name, count in [
            ("clips", "egomcq", 20),
            ("clips", "ek100_test", 5),
            ("clips", "charades_ego", 5),
            ("clips", "ego4d_clips", 1),
            ("texts", "egomcq", 4),
            ("texts", "ek100_mir", 4),
            ("texts", "charades_ego", 3),
        ]
    }

    metrics = json.loads((tmp_path / "metrics/eval.json").read_text())
    assert list(metrics) == ["zero_shot", "finetuned", "random", "compatibility"]
    compatibility = metrics["compatibility"]
    assert list(compatibility) == ["new_text_old_video", "old_text_new_video", "criterion"]
    rows = [metrics[name] for name in ("zero_shot", "finetuned", "random")] + [
        compatibility[name] for name in ("new_text_old_video", "old_text_new_video")
    ]
    for row in rows:
        assert list(row) == ["egomcq", "ek100_mir", "charades_ego"]  # the params' order
        assert set(row["ek100_mir"]) == {"mAP_v2t", "mAP_t2v", "mAP_avg", "nDCG_v2t", "nDCG_t2v", "nDCG_avg"}
        assert all(0 <= v <= 1 for v in flatten(row).values())
    for name in ("training_curves", "metric_bars", "retrieval_grid"):
        with Image.open(tmp_path / f"plots/{name}.png") as image:
            assert image.format == "PNG"
    assert run.run_name == "evaluate" and run.tags["dvc.stage"] == "evaluate"
    assert "finetuned.egomcq.intra_video" in run.metrics and "compatibility.criterion.compatible" in run.metrics
    assert run.metrics == pytest.approx(flatten(metrics))
    assert run.artifacts == ["eval.json", "training_curves.png", "metric_bars.png", "retrieval_grid.png"]

    # cross-model rows: one model's texts against the other's videos, checked by brute force
    relevancy = RelevancyTable.load(tmp_path / "ek100_test.npz")
    ids = list(relevancy.video_ids), list(relevancy.sentence_ids)

    def cross(video_model: str, text_model: str) -> dict[str, float]:
        videos = read_embeddings(tmp_path / f"exports/{video_model}/ek100_test_video.parquet").select(ids[0], "test")
        texts = read_embeddings(tmp_path / f"exports/{text_model}/ek100_mir_text.parquet").select(ids[1], "test")
        return brute_force_mir(videos.astype(np.float64) @ texts.T.astype(np.float64), relevancy.dense())

    new_text_old_video, old_text_new_video = cross("zero_shot", "finetuned"), cross("finetuned", "zero_shot")
    assert compatibility["new_text_old_video"]["ek100_mir"] == pytest.approx(new_text_old_video, abs=1e-6)
    assert compatibility["old_text_new_video"]["ek100_mir"] == pytest.approx(old_text_new_video, abs=1e-6)
    old_old, new_new = metrics["zero_shot"]["ek100_mir"]["mAP_avg"], metrics["finetuned"]["ek100_mir"]["mAP_avg"]
    cross_maps = [new_text_old_video["mAP_avg"], old_text_new_video["mAP_avg"]]
    assert compatibility["criterion"] == pytest.approx(
        {
            "old_old": old_old,
            "new_new": new_new,
            "new_text_old_video": cross_maps[0],
            "old_text_new_video": cross_maps[1],
            "compatible": float(min(cross_maps) >= old_old),
        },
        abs=1e-6,
    )


def test_benchmarks_without_missing_clips_score_the_rest(hand_made, tmp_path):
    """A clip that failed to decode is missing from the export: each benchmark is scored without it, checked
    against the independent computation on the remaining rows."""
    benchmarks, embeddings, sim, charades_scores = hand_made
    ek_videos, ek_texts = embeddings["ek100_mir"]
    kept = [k for k in range(5) if k != 2]
    partial = write_export(
        tmp_path / "ek_partial.parquet",
        VIDEO,
        [ek_videos.ids[k] for k in range(5) if ek_videos.ids[k] != "P01_2"],
        ek_videos.vectors[[k for k in range(5) if ek_videos.ids[k] != "P01_2"]],
        np.arange(4),
    )
    ek100 = benchmarks["ek100_mir"]
    assert missing_clips(ek100, partial) == ["P01_2"]
    got = ek100.without({"P01_2"}).score(partial, ek_texts)
    assert got == pytest.approx(brute_force_mir(sim[kept], ek100.relevancy[kept]), abs=1e-6)
    assert ek100.clip_ids() == ["P01_0", "P01_1", "P01_2", "P01_3", "P01_4"]  # the original is unchanged

    charades = benchmarks["charades_ego"]
    labels, scores = charades.labels[kept], charades_scores[kept]
    expected = np.mean([average_precision_score(labels[:, k], scores[:, k]) for k in range(3) if labels[:, k].any()])
    assert charades.without({"X2"}).score(*embeddings["charades_ego"])["mAP"] == pytest.approx(expected, abs=1e-6)

    egomcq = benchmarks["egomcq"].without({"2_1"})  # intra-video question 2 loses a choice: it is left out
    assert egomcq.score(*embeddings["egomcq"]) == pytest.approx(
        {"inter_video": 1.0, "intra_video": 0.0, "overall": 2 / 3}
    )
    assert [q.qid for q in egomcq.questions] == ["0", "1", "3"]


def test_evaluation_refuses_missing_clips_unless_allowed(tmp_path, monkeypatch, caplog):
    from stages import evaluate

    monkeypatch.chdir(tmp_path)
    params = write_mini_project(tmp_path)
    clips = [{"clip_id": c, "status": "error" if c == "P01_2" else "ok"} for c in EK100_VIDEOS["narration_id"]]
    make_shards(tmp_path / "frames/ek100_test", clips, num_frames=8)
    with pytest.raises(SystemExit):  # the stage's one-line error and exit status 1
        run_pipeline(params, monkeypatch)
    message = caplog.records[-1].getMessage()
    assert "\n" not in message and message.startswith("ek100_mir: 1 of 5 clips are not in exports/zero_shot/")
    assert "evaluate.allow_missing_clips: true scores the other 4" in message

    values = yaml.safe_load(params.read_text())
    values["evaluate"]["allow_missing_clips"] = True
    params.write_text(yaml.safe_dump(values, sort_keys=False))
    run_stage(evaluate, params, monkeypatch)
    metrics = json.loads((tmp_path / "metrics/eval.json").read_text())
    relevancy = RelevancyTable.load(tmp_path / "ek100_test.npz")
    kept = [k for k, video in enumerate(relevancy.video_ids) if video != "P01_2"]
    videos = read_embeddings(tmp_path / "exports/finetuned/ek100_test_video.parquet")
    texts = read_embeddings(tmp_path / "exports/finetuned/ek100_mir_text.parquet")
    sim = videos.select([relevancy.video_ids[k] for k in kept], "test") @ texts.select(relevancy.sentence_ids, "t").T
    expected = brute_force_mir(sim.astype(np.float64), relevancy.dense()[kept])
    assert metrics["finetuned"]["ek100_mir"] == pytest.approx(expected, abs=1e-6)
