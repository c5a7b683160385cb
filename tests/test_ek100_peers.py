"""The peers' EK100 inputs: the relevancy pickle read safely and compared with the exact table, and the
official query texts, on the real annotation CSVs of the repository."""

from __future__ import annotations

import importlib
import json
import os
import pickle
import sys

import numpy as np
import pandas as pd
import pytest

from eva02at.core.errors import BadInput
from eva02at.data.ek100_peers import official_queries, read_relevancy_pickle, relevancy_differences, table_from_dense
from eva02at.data.labels import RelevancyTable
from eva02at.evaluation.benchmarks import BenchmarkParams, load_benchmark
from tests.project_fixtures import ROOT

EK100 = ROOT / "data" / "sample" / "ek100"
READ = {"dtype": str, "keep_default_na": False}


def real_csvs() -> tuple[pd.DataFrame, pd.DataFrame]:
    return (
        pd.read_csv(EK100 / "EPIC_100_retrieval_test.csv", **READ),
        pd.read_csv(EK100 / "EPIC_100_retrieval_test_sentence.csv", **READ),
    )


def test_official_query_texts_differ_from_the_published_sentence_csv_in_six_rows():
    videos, sentences = real_csvs()
    queries = official_queries(videos, sentences, "videos.csv", "sentences.csv")
    assert len(sentences) == 3842 and len(queries.table) == 3842
    assert queries.table["narration_id"].tolist() == sentences["narration_id"].tolist()
    # independent check: a loop over the rows, each text looked up in the video CSV by its id
    text_of = {row.narration_id: row.narration for row in videos.itertuples()}
    expected = [
        (line, row.narration_id)
        for line, row in enumerate(sentences.itertuples(), start=2)
        if text_of[row.narration_id] != row.narration
    ]
    assert len(expected) == 6
    assert [entry.split(":")[0] for entry in queries.differing] == [f"line {line} {i}" for line, i in expected]
    assert queries.differing[0] == "line 3837 P22_04_144: 'wash cooker' -> 'cut slice'"
    assert (queries.table["narration"] == [text_of[i] for i in sentences["narration_id"]]).all()


def test_a_sentence_without_a_video_row_is_named():
    videos, sentences = real_csvs()
    sentences.loc[4, "narration_id"] = "P99_99_9"
    with pytest.raises(BadInput, match=r"sentences.csv line 6: narration_id 'P99_99_9' has no row in videos.csv"):
        official_queries(videos, sentences, "videos.csv", "sentences.csv")


@pytest.fixture(scope="module")
def small_exact() -> RelevancyTable:
    """The exact table of 300 real test videos and the sentences whose video row is among them."""
    videos = pd.read_csv(EK100 / "EPIC_100_retrieval_test.csv").head(300)
    sentences = pd.read_csv(EK100 / "EPIC_100_retrieval_test_sentence.csv")
    sentences = sentences[sentences["narration_id"].isin(videos["narration_id"])]
    return RelevancyTable.build(videos, sentences)


def published_pickle(matrix: np.ndarray, path: os.PathLike, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
    """The distributed format: the matrix itself, pickled."""
    with open(path, "wb") as handle:
        pickle.dump(matrix, handle, protocol=protocol)


def test_a_pickle_with_noise_is_read_compared_and_usable_as_truth(small_exact, tmp_path):
    exact = small_exact.dense()
    noisy = exact.copy()
    cells = [(3, 1), (3, 7), (120, 1), (299, len(exact[0]) - 1)]
    for k, (i, j) in enumerate(cells):
        noisy[i, j] += 0.01 * (k + 1)
    published_pickle(noisy.astype(np.float32), tmp_path / "caption_relevancy_EPIC_100_retrieval_test.pkl")
    matrix = read_relevancy_pickle(tmp_path / "caption_relevancy_EPIC_100_retrieval_test.pkl")
    np.testing.assert_array_equal(matrix, noisy.astype(np.float32).astype(np.float64))

    texts = {str(i): f"text {i}" for i in small_exact.sentence_ids}
    differences = relevancy_differences(small_exact, matrix, texts)
    assert differences.cells == int((np.abs(matrix - exact) > 1e-6).sum()) == 4  # not float32's rounding of 1/3
    assert (matrix != exact).sum() > 4
    assert differences.largest == pytest.approx(np.abs(matrix - exact).max())
    columns = sorted({j for _, j in cells})
    assert differences.sentences == len(columns)
    assert differences.first == [f"{small_exact.sentence_ids[j]}: text {small_exact.sentence_ids[j]}" for j in columns]

    table_from_dense(matrix, small_exact, "p.pkl").save(tmp_path / "pickle.npz")
    peers = load_benchmark("ek100_mir", BenchmarkParams("ek100_test", "unused.csv", str(tmp_path / "pickle.npz")))
    np.testing.assert_array_equal(peers.relevancy, matrix)
    assert peers.video_ids == list(small_exact.video_ids) and peers.sentence_ids == list(small_exact.sentence_ids)


def test_the_exact_table_compared_with_itself_differs_nowhere(small_exact, tmp_path):
    published_pickle(small_exact.dense(), tmp_path / "same.pkl", protocol=2)
    differences = relevancy_differences(small_exact, read_relevancy_pickle(tmp_path / "same.pkl"), {})
    assert (differences.cells, differences.largest, differences.first) == (0, 0.0, [])


def test_a_pickle_written_by_numpy_1_loads(tmp_path):
    """NumPy 1 names its reconstructor numpy.core.multiarray; NumPy 2 numpy._core.multiarray."""
    text = pickle.dumps(np.eye(3), protocol=0).replace(b"numpy._core.", b"numpy.core.")
    (tmp_path / "old.pkl").write_bytes(text)
    np.testing.assert_array_equal(read_relevancy_pickle(tmp_path / "old.pkl"), np.eye(3))


class RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps([np.eye(2), RunsCode(str(marker))]))
    with pytest.raises(BadInput, match=r"evil.pkl: not a relevancy pickle: refuses posix.system"):
        read_relevancy_pickle(tmp_path / "evil.pkl")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"relevancy": [1, 2]}, r"expected a 2-D numeric array \(videos x sentences\), got dict"),
        (np.zeros(4), r"expected a 2-D numeric array \(videos x sentences\), got ndarray \(4,\)"),
        (np.array([[np.nan]]), "holds non-finite relevance values"),
    ],
)
def test_pickles_that_are_not_a_relevancy_matrix_are_named(tmp_path, content, message):
    published_pickle(content, tmp_path / "bad.pkl")
    with pytest.raises(BadInput, match=message):
        read_relevancy_pickle(tmp_path / "bad.pkl")


def test_a_pickle_of_other_splits_shape_is_refused(small_exact):
    with pytest.raises(BadInput, match=r"p.pkl: shape \(2, 2\), but the CSVs give"):
        table_from_dense(np.zeros((2, 2)), small_exact, "p.pkl")


def test_the_soft_labels_stage_writes_official_queries_and_reports_the_pickle(tmp_path, monkeypatch):
    videos, sentences = real_csvs()
    sentences = sentences.tail(60)  # holds the six rows whose text differs from their video row's
    videos = videos[videos["narration_id"].isin(sentences["narration_id"]) | (videos.index < 200)]
    videos.to_csv(tmp_path / "videos.csv", index=False)
    sentences.to_csv(tmp_path / "sentences.csv", index=False)
    exact = RelevancyTable.build(pd.read_csv(tmp_path / "videos.csv"), pd.read_csv(tmp_path / "sentences.csv"))
    noisy = exact.dense()
    noisy[0, 2] += 0.25
    published_pickle(noisy, tmp_path / "relevancy.pkl")
    split = {"videos": "videos.csv", "sentences": "sentences.csv", "pickle": "relevancy.pkl"}
    params = {
        "soft_labels": {"out": "labels", "splits": {"ek100_test": split}},
        "tracking": {"uri": None, "experiment": "eva02at", "enabled": False},
    }
    (tmp_path / "params.yaml").write_text(json.dumps(params))  # JSON is YAML
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["soft_labels"])
    importlib.import_module("stages.soft_labels").main()

    summary = json.loads((tmp_path / "labels" / "summary.json").read_text())["ek100_test"]
    assert summary["query_texts_differing"] == 6 and summary["query_texts"][0].startswith("line ")
    assert (summary["pickle_cells"], summary["pickle_largest"], summary["pickle_sentences"]) == (1, 0.25, 1)
    official_text = dict(zip(videos["narration_id"], videos["narration"], strict=True))[exact.sentence_ids[2]]
    assert summary["pickle_first"] == [f"{exact.sentence_ids[2]}: {official_text}"]
    queries = pd.read_csv(tmp_path / "labels" / "ek100_test_queries.csv", **READ)
    text_of = dict(zip(videos["narration_id"], videos["narration"], strict=True))
    assert queries["narration"].tolist() == [text_of[i] for i in sentences["narration_id"]]
    np.testing.assert_array_equal(RelevancyTable.load(tmp_path / "labels" / "ek100_test_pickle.npz").dense(), noisy)
    np.testing.assert_array_equal(RelevancyTable.load(tmp_path / "labels" / "ek100_test.npz").dense(), exact.dense())
