"""EK100 soft labels: exact values, the public test-split counts, the compact table and its file."""

from __future__ import annotations

import ast

import numpy as np
import pandas as pd
import pytest

from eva02at.data.labels import RelevancyTable, build_relevancy, ek100_relevancy


def loop_relevancy(videos: pd.DataFrame, sentences: pd.DataFrame) -> np.ndarray:
    """Independent reference: the definition written as a double loop over Python sets."""
    classes = {
        row.narration_id: (int(row.verb_class), set(ast.literal_eval(row.all_noun_classes)))
        for row in videos.itertuples()
    }
    out = np.zeros((len(videos), len(sentences)))
    for i, video_id in enumerate(videos.narration_id):
        verb_i, nouns_i = classes[video_id]
        for j, sentence_id in enumerate(sentences.narration_id):
            verb_j, nouns_j = classes[sentence_id]
            out[i, j] = 0.5 * (verb_i == verb_j) + 0.5 * len(nouns_i & nouns_j) / len(nouns_i | nouns_j)
    return out


def frame(rows: list[tuple[str, int, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["narration_id", "verb_class", "all_noun_classes"])


TOY_VIDEOS = frame(
    [
        ("a", 0, "[2]"),
        ("b", 0, "[2, 5]"),
        ("c", 1, "[5, 5]"),  # a repeated class counts once
        ("d", 3, "[1, 2, 3, 4, 5]"),
        ("e", 0, "[2]"),  # same signature as "a"
    ]
)
TOY_SENTENCES = pd.DataFrame({"narration_id": ["b", "c", "a", "d"], "narration": ["x", "x", "x", "x"]})


@pytest.fixture(scope="module")
def ek100_test(ek100_dir):
    """The public EK100 retrieval test split (embedded sample copy of the official CSVs)."""
    videos = pd.read_csv(ek100_dir / "EPIC_100_retrieval_test.csv")
    sentences = pd.read_csv(ek100_dir / "EPIC_100_retrieval_test_sentence.csv")
    return videos, sentences, RelevancyTable.build(videos, sentences)


def test_toy_values_by_hand():
    r = ek100_relevancy(TOY_VIDEOS, TOY_SENTENCES)
    assert r.dtype == np.float64 and r.shape == (5, 4)
    # video a = (0, {2}) against sentences b=(0,{2,5}), c=(1,{5}), a=(0,{2}), d=(3,{1..5})
    np.testing.assert_array_equal(r[0], [0.5 + 0.5 / 2, 0.0, 1.0, 0.5 / 5])
    # video c = (1, {5}): b shares noun 5 of 2, c is itself, d shares 1 of 5
    np.testing.assert_array_equal(r[2], [0.25, 1.0, 0.0, 0.1])
    np.testing.assert_array_equal(r[4], r[0])
    np.testing.assert_array_equal(r, loop_relevancy(TOY_VIDEOS, TOY_SENTENCES))


def test_sentence_classes_come_from_the_video_row_not_own_columns():
    # Train-style sentence table whose own class columns disagree with the video rows: they are ignored.
    sentences = TOY_SENTENCES.assign(verb_class=[9, 9, 9, 9], noun_classes=["[0]"] * 4)
    np.testing.assert_array_equal(ek100_relevancy(TOY_VIDEOS, sentences), ek100_relevancy(TOY_VIDEOS, TOY_SENTENCES))


def test_many_nouns_use_wide_codes_and_stay_exact():
    rng = np.random.default_rng(3)
    nouns = [sorted(rng.choice(30, rng.integers(1, 16), replace=False).tolist()) for _ in range(40)]
    videos = frame([(f"v{i}", int(rng.integers(0, 3)), str(n)) for i, n in enumerate(nouns)])
    sentences = pd.DataFrame({"narration_id": [f"v{i}" for i in rng.permutation(40)[:25]]})
    table = RelevancyTable.build(videos, sentences)
    assert table.codes.dtype == np.uint16  # unions up to 30 classes give more than 256 distinct values
    np.testing.assert_array_equal(table.dense(), loop_relevancy(videos, sentences))


def test_ek100_test_split_counts(ek100_test):
    _, _, table = ek100_test
    dense = table.dense()
    assert dense.shape == table.shape == (9668, 3842)
    assert int((dense != 0).sum()) == 4_224_956
    assert int((dense == 1).sum()) == 62_535
    summary = table.summary()
    assert (summary["nonzero"], summary["ones"]) == (4_224_956, 62_535) and table.nnz == 4_224_956


def test_ek100_submatrix_matches_loop(ek100_test):
    videos, sentences, table = ek100_test
    rng = np.random.default_rng(0)
    rows, cols = rng.choice(len(videos), 60, replace=False), rng.choice(len(sentences), 40, replace=False)
    sub_sentences = sentences.iloc[cols].reset_index(drop=True)
    owners = videos[videos.narration_id.isin(sub_sentences.narration_id)]  # the loop looks classes up there
    expected = loop_relevancy(pd.concat([videos.iloc[rows], owners]), sub_sentences)[: len(rows)]
    np.testing.assert_array_equal(table.lookup(rows, cols), expected)


def test_ek100_sentences_keyed_by_narration_id(ek100_test):
    videos, sentences, table = ek100_test
    own_row = pd.Index(videos.narration_id).get_indexer(sentences.narration_id)
    own = table.lookup(own_row, np.arange(len(sentences)))
    np.testing.assert_array_equal(np.diagonal(own), 1.0)  # includes the rows whose text is shifted
    shifted = videos.narration.to_numpy()[own_row] != sentences.narration.to_numpy()
    assert shifted.sum() >= 5


def test_candidates_are_strictly_above_threshold():
    table = RelevancyTable.build(TOY_VIDEOS, TOY_SENTENCES)
    dense = table.dense()
    for video in range(5):
        np.testing.assert_array_equal(table.candidates(video), np.flatnonzero(dense[video] > 0.1))
        np.testing.assert_array_equal(table.candidates(video, 0.3), np.flatnonzero(dense[video] > 0.3))
    assert dense[2, 3] == 0.1 and 3 not in table.candidates(2)  # R exactly 0.1 is not a candidate


def test_lookup_rejects_out_of_range_indices():
    table = RelevancyTable.build(TOY_VIDEOS, TOY_SENTENCES)
    with pytest.raises(IndexError, match="video index 5"):
        table.lookup([0, 5], [0])
    with pytest.raises(IndexError, match="sentence index -1"):
        table.lookup([0], [-1])


def test_sentence_without_video_row_is_named():
    sentences = pd.DataFrame({"narration_id": ["a", "zz_9"]})
    with pytest.raises(ValueError, match=r"line 3: 'zz_9'"):
        RelevancyTable.build(TOY_VIDEOS, sentences, sentences_name="sent.csv")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("a", 0, "[2]"), ("a", 1, "[3]")], "line 3: narration_id 'a' appears more than once"),
        ([("a", 0, "[2]"), ("b", 1, "[]")], r"line 3 \(narration_id 'b'\)"),
        ([("a", 0, "[2]"), ("b", 1, "two")], r"line 3 \(narration_id 'b'\)"),
        ([], "videos: no video rows"),
    ],
)
def test_bad_video_rows_are_named(rows, message):
    with pytest.raises(ValueError, match=message):
        RelevancyTable.build(frame(rows), pd.DataFrame({"narration_id": ["a"]}))


def test_save_load_round_trip(tmp_path):
    table = RelevancyTable.build(TOY_VIDEOS, TOY_SENTENCES)
    table.save(tmp_path / "rel.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel.npz"]  # no temporary left behind
    loaded = RelevancyTable.load(tmp_path / "rel.npz")
    np.testing.assert_array_equal(loaded.dense(), table.dense())
    np.testing.assert_array_equal(loaded.sentence_ids, ["b", "c", "a", "d"])
    np.savez(tmp_path / "other.npz", codes=np.zeros(3))
    with pytest.raises(ValueError, match=r"other\.npz: not a relevancy table"):
        RelevancyTable.load(tmp_path / "other.npz")


def test_build_relevancy_from_csv(tmp_path):
    TOY_VIDEOS.to_csv(tmp_path / "videos.csv", index=False)
    TOY_SENTENCES.to_csv(tmp_path / "sentences.csv", index=False)
    summary = build_relevancy(tmp_path / "videos.csv", tmp_path / "sentences.csv", tmp_path / "out" / "r.npz")
    expected = loop_relevancy(TOY_VIDEOS, TOY_SENTENCES)
    assert summary["nonzero"] == int((expected != 0).sum()) and summary["ones"] == int((expected == 1).sum())
    np.testing.assert_array_equal(RelevancyTable.load(tmp_path / "out" / "r.npz").dense(), expected)
    # the same inputs give the same bytes and the same summary (no build time in the tracked outputs)
    again = build_relevancy(tmp_path / "videos.csv", tmp_path / "sentences.csv", tmp_path / "again" / "r.npz")
    assert again == summary
    assert (tmp_path / "again" / "r.npz").read_bytes() == (tmp_path / "out" / "r.npz").read_bytes()
