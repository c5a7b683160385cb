"""Evaluation from exports: hand-made EK100 MIR, EgoMCQ and Charades-Ego cases against independent
computations (rows shuffled in the files, so only matching by id gives the right answer), the random
baseline against its closed form, and the export and evaluate stages end to end on tiny shards."""

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

from eva02at.codes import read_codes
from eva02at.embeddings import TEXT, VIDEO, ExportInfo, read_embeddings, write_embeddings
from eva02at.evaluation import (
    Benchmarks,
    CharadesLabels,
    McqQuestions,
    evaluate_model,
    flatten_metrics,
    random_baseline,
    read_charades_labels,
    read_class_names,
    read_mcq,
)
from eva02at.labels import RelevancyTable
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


@pytest.fixture
def hand_made(tmp_path):
    """Benchmarks, exports with shuffled rows, and the similarities in annotation order."""
    rng = np.random.default_rng(0)
    table = RelevancyTable.build(EK100_VIDEOS, EK100_SENTENCES)
    write_mcq(tmp_path / "egomcq.json")
    (tmp_path / "classes.txt").write_text("c0 open door\nc1 close door\n\nc2 wash cup\n")
    (tmp_path / "charades.csv").write_text(CHARADES_CSV)
    class_ids, _ = read_class_names(tmp_path / "classes.txt")
    benchmarks = Benchmarks(
        table, read_mcq(tmp_path / "egomcq.json"), read_charades_labels(tmp_path / "charades.csv", class_ids)
    )
    video, sentence = unit_rows(rng, 5), unit_rows(rng, 4)
    basis = np.eye(D)
    # EgoMCQ: query q is basis vector q; the clip of score 1 is the answer for inter-video questions and a
    # wrong choice for intra-video ones, every other choice is orthogonal (score 0).
    clips = np.tile(basis[4:], (4, 2, 1))[:, :5].copy()  # (question, choice, D)
    for q, (answer, wrong) in enumerate([(3, None), (0, None), (2, 1), (4, 0)]):
        clips[q, answer if wrong is None else wrong] = basis[q]
    charades_video, charades_text = unit_rows(rng, 5), unit_rows(rng, 3)
    mcq_ids = [f"{q}_{c}" for q in range(4) for c in range(5)]
    shuffle = rng.permutation
    embeddings = {
        "ek100_mir": (
            write_export(tmp_path / "ek_v.parquet", VIDEO, list(table.video_ids), video, shuffle(5)),
            write_export(tmp_path / "ek_t.parquet", TEXT, list(table.sentence_ids), sentence, shuffle(4)),
        ),
        "egomcq": (
            write_export(tmp_path / "mcq_v.parquet", VIDEO, mcq_ids, clips.reshape(20, D), shuffle(20)),
            write_export(tmp_path / "mcq_t.parquet", TEXT, ["0", "1", "2", "3"], basis[:4], shuffle(4)),
        ),
        "charades_ego": (
            write_export(tmp_path / "ch_v.parquet", VIDEO, ["X0", "X1", "X2", "X3", "X4"], charades_video, shuffle(5)),
            write_export(tmp_path / "ch_t.parquet", TEXT, class_ids, charades_text, shuffle(3)),
        ),
    }
    return benchmarks, embeddings, video @ sentence.T, charades_video @ charades_text.T


def test_ek100_mir_matches_by_id(hand_made):
    benchmarks, embeddings, sim, _ = hand_made
    rel = benchmarks.relevancy.dense()
    assert rel[3, 1] == 0.75 and rel[2, 0] == 1  # soft and shared relevance are both present
    got = evaluate_model(embeddings, benchmarks)["ek100_mir"]
    expected = brute_force_mir(sim, rel)
    assert got == pytest.approx(expected, abs=1e-6)
    videos, texts = embeddings["ek100_mir"]
    by_position = brute_force_mir(videos.vectors @ texts.vectors.T, rel)
    assert by_position != pytest.approx(expected, abs=1e-3)  # the shuffle matters


def test_egomcq_accuracies_carry_their_names(hand_made):
    benchmarks, embeddings, _, _ = hand_made
    assert benchmarks.questions.answers.tolist() == [3, 0, 2, 4]
    assert benchmarks.questions.types.tolist() == [1, 1, 2, 2]
    got = evaluate_model(embeddings, benchmarks)["egomcq"]
    assert got == {"inter_video": 1.0, "intra_video": 0.0, "overall": 0.5}


def test_charades_map_matches_a_peer_library(hand_made):
    benchmarks, embeddings, _, scores = hand_made
    labels = benchmarks.charades
    assert labels.class_ids == ["c0", "c1", "c2"]
    assert labels.labels.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 1]]
    labelled = labels.labels.any(axis=1)  # the unlabeled video ranks last, where it changes no AP
    expected = np.mean([average_precision_score(labels.labels[labelled, k], scores[labelled, k]) for k in range(3)])
    got = evaluate_model(embeddings, benchmarks)["charades_ego"]["mAP"]
    assert got == pytest.approx(expected, abs=1e-6)


def test_exports_of_different_checkpoints_are_refused(hand_made, tmp_path):
    benchmarks, embeddings, _, _ = hand_made
    videos, texts = embeddings["ek100_mir"]
    other = write_export(tmp_path / "other.parquet", TEXT, texts.ids, texts.vectors, np.arange(4), sha="1" * 64)
    with pytest.raises(ValueError, match="different checkpoints"):
        evaluate_model({**embeddings, "ek100_mir": (videos, other)}, benchmarks)


def test_annotation_errors_name_the_row(tmp_path):
    (tmp_path / "a.csv").write_text("id,actions\nX0,c0 0 1;c9 1 2\n")
    with pytest.raises(ValueError, match=r"line 2: action class 'c9'"):
        read_charades_labels(tmp_path / "a.csv", ["c0"])
    (tmp_path / "q.json").write_text(
        json.dumps({"7": {"query": {"clip_text": "x"}, "choices": {"0": {}}, "answer": 0, "types": 3}})
    )
    with pytest.raises(ValueError, match="question 7: types 3"):
        read_mcq(tmp_path / "q.json")


def test_random_baseline_matches_chance():
    """One relevant sentence per video: AP of a random ranking is E[1/rank] = H_n / n, nDCG P(rank 1) = 1/n."""
    n = 10
    videos = pd.DataFrame({"narration_id": [str(i) for i in range(n)], "verb_class": range(n)})
    videos["all_noun_classes"] = [f"[{i}]" for i in range(n)]
    table = RelevancyTable.build(videos, videos[["narration_id"]])
    questions = McqQuestions(
        [str(q) for q in range(40)], [""] * 40, [[""] * 5] * 40, np.arange(40) % 5, np.arange(40) % 2 + 1
    )
    labels = CharadesLabels([str(i) for i in range(6)], ["a", "b", "c"], np.eye(6, 3, dtype=np.uint8))
    benchmarks = Benchmarks(table, questions, labels)
    got = random_baseline(benchmarks, seed=0, draws=200)
    harmonic = sum(1 / k for k in range(1, n + 1)) / n
    assert got["ek100_mir"]["mAP_avg"] == pytest.approx(harmonic, abs=0.03)
    assert got["ek100_mir"]["nDCG_avg"] == pytest.approx(1 / n, abs=0.03)
    assert got["egomcq"]["inter_video"] == pytest.approx(0.2, abs=0.03)
    assert got["egomcq"]["intra_video"] == pytest.approx(0.2, abs=0.03)
    assert random_baseline(benchmarks, seed=3, draws=2) == random_baseline(benchmarks, seed=3, draws=2)
    assert random_baseline(benchmarks, seed=3, draws=2) != random_baseline(benchmarks, seed=4, draws=2)


def test_flatten_metrics():
    assert flatten_metrics({"a": {"b": {"c": 1}, "d": 0.5}}) == {"a.b.c": 1.0, "a.d": 0.5}


class RecordingTracker:
    """Stands in for MLflow's run (its own tests cover it): records what the stage logs."""

    def __init__(self, runs: list, experiment, run_name, uri=None, enabled=True, tags=None):
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
    """Annotations, frame shards, two tiny checkpoints and a params file for the export and evaluate stages."""
    RelevancyTable.build(EK100_VIDEOS, EK100_SENTENCES).save(root / "ek100_test.npz")
    sentences = pd.DataFrame({"narration_id": EK100_SENTENCES["narration_id"], "narration": ["a", "b", "c", "d"]})
    sentences.to_csv(root / "sentences.csv", index=False)
    write_mcq(root / "egomcq.json")
    (root / "classes.txt").write_text("c0 open door\nc1 close door\nc2 wash cup\n")
    (root / "charades.csv").write_text(CHARADES_CSV)
    make_shards(root / "frames/ek100", [{"clip_id": c} for c in EK100_VIDEOS["narration_id"]], num_frames=8)
    make_shards(root / "frames/mcq", [{"clip_id": f"{q}_{c}"} for q in range(4) for c in range(5)])
    make_shards(root / "frames/charades", [{"clip_id": f"X{i}"} for i in range(5)], num_frames=8)
    make_shards(root / "frames/clips", [{"clip_id": "k0"}, {"clip_id": "k1", "status": "error"}], num_frames=8)
    history = pd.DataFrame({"step": [1, 2, 3], "epoch": 0, "loss": [3.0, 2.0, 1.5], "lr": [1e-4, 1e-4, 5e-5]})
    history.assign(clips_per_s=10.0).to_csv(root / "history.csv", index=False)
    params = {
        "export": {
            "out": str(root / "exports"),
            "batch_size": 4,
            "workers": 0,
            "codes": {"int8": True, "binary": {"bits_per_dim": 2, "rotation": "pca"}},
            "models": {
                "zero_shot": str(make_checkpoint(root / "pretrain.pt", num_frames=4, seed=0)),
                "finetuned": str(make_checkpoint(root / "finetune.pt", num_frames=8, seed=1)),
            },
            "collections": {
                "ek100_test": {"frames": "frames/ek100", "texts": "sentences.csv", "text_format": "ek100_sentences"},
                "egomcq": {"frames": "frames/mcq", "texts": "egomcq.json", "text_format": "egomcq_queries"},
                "charades_ego": {
                    "frames": "frames/charades",
                    "texts": "classes.txt",
                    "text_format": "charades_classes",
                },
                "ego4d_clips": {"frames": "frames/clips"},
            },
        },
        "evaluate": {
            "exports": "exports",
            "models": ["zero_shot", "finetuned"],
            "ek100_mir": {"collection": "ek100_test", "relevancy": "ek100_test.npz"},
            "egomcq": {"collection": "egomcq", "questions": "egomcq.json"},
            "charades_ego": {"collection": "charades_ego", "annotations": "charades.csv", "classes": "classes.txt"},
            "histories": {"finetune": "history.csv", "pretrain": "missing.csv"},
            "random": {"seed": 0, "draws": 3},
            "grid": {"model": "finetuned", "queries": 2, "top": 3},
        },
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root / "params.yaml"


def test_export_and_evaluate_stages(tmp_path, monkeypatch):
    from stages import evaluate, export

    monkeypatch.chdir(tmp_path)  # relative paths of the params; the stage's git and DVC lookups find no project
    runs = []
    monkeypatch.setattr(evaluate, "Tracker", functools.partial(RecordingTracker, runs))
    monkeypatch.setattr(export, "Tracker", functools.partial(RecordingTracker, runs))
    params = write_mini_project(tmp_path)
    run_stage(export, params, monkeypatch)
    written = sorted(p.relative_to(tmp_path / "exports").as_posix() for p in (tmp_path / "exports").rglob("*.parquet"))
    assert len(written) == 14 + 8 and "finetuned/ego4d_clips_video.parquet" in written
    assert "finetuned/ego4d_clips_text.parquet" not in written  # uncaptioned: no texts
    assert read_embeddings(tmp_path / "exports/zero_shot/ego4d_clips_video.parquet").ids == ["k0"]
    assert read_embeddings(tmp_path / "exports/zero_shot/ek100_test_video.parquet").info.num_frames == 8
    videos = read_embeddings(tmp_path / "exports/finetuned/egomcq_video.parquet")
    codes = read_codes(tmp_path / "exports/finetuned/egomcq_video.codes.parquet")
    assert codes.ids == videos.ids and codes.info == videos.info
    assert codes.binary.shape == (20, 4) and codes.int8.shape == (20, 16)  # 16-d embeddings, 2 bits per dimension
    (export_run,) = runs
    assert export_run.run_name == "export" and export_run.tags["dvc.stage"] == "export"
    assert export_run.params["codes"]["binary"]["bits_per_dim"] == 2
    assert export_run.metrics == {
        f"{kind}.{model}.{collection}": count
        for model in ("zero_shot", "finetuned")
        for kind, collection, count in [
            ("clips", "ek100_test", 5),
            ("texts", "ek100_test", 4),
            ("clips", "egomcq", 20),
            ("texts", "egomcq", 4),
            ("clips", "charades_ego", 5),
            ("texts", "charades_ego", 3),
            ("clips", "ego4d_clips", 1),
        ]
    }
    runs.clear()

    run_stage(evaluate, params, monkeypatch)
    metrics = json.loads((tmp_path / "metrics/eval.json").read_text())
    assert list(metrics) == ["zero_shot", "finetuned", "random"]
    for row in metrics.values():
        assert set(row) == {"ek100_mir", "egomcq", "charades_ego"}
        assert set(row["ek100_mir"]) == {"mAP_v2t", "mAP_t2v", "mAP_avg", "nDCG_v2t", "nDCG_t2v", "nDCG_avg"}
        assert all(0 <= v <= 1 for v in flatten_metrics(row).values())
    for name in ("training_curves", "metric_bars", "retrieval_grid"):
        with Image.open(tmp_path / f"plots/{name}.png") as image:
            assert image.format == "PNG"
    (run,) = runs
    assert run.run_name == "evaluate" and run.tags["dvc.stage"] == "evaluate"
    assert run.metrics == pytest.approx(flatten_metrics(metrics)) and "finetuned.egomcq.intra_video" in run.metrics
    assert run.artifacts == ["eval.json", "training_curves.png", "metric_bars.png", "retrieval_grid.png"]
