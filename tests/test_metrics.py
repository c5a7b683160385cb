"""Evaluation metrics against hand computations, the literal EK100 reference, sklearn and the real test split."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score

from bench import metrics as bench_metrics
from bench.mir_reference import reference_mir
from eva02at.data.labels import ek100_relevancy
from eva02at.evaluation.metrics import MIR_KEYS, charades_map, egomcq_accuracy, ek100_mir

# Two videos x three sentences, ranked by hand below.
HAND_SIM = np.array([[0.9, 0.8, 0.7], [0.1, 0.2, 0.3]])
HAND_REL = np.array([[0.5, 0.5, 1.0], [1.0, 1.0, 0.0]])


def random_relevancy(rng: np.random.Generator, videos: int, sentences: int) -> np.ndarray:
    """Soft relevancies with at least one 1 in every row and column (so every AP is defined)."""
    rel = rng.choice([0.0, 0.0, 0.0, 0.0, 0.1, 0.25, 1 / 3, 0.5, 0.75, 1.0], size=(videos, sentences))
    rel[np.arange(videos), rng.integers(0, sentences, videos)] = 1.0
    rel[rng.integers(0, videos, sentences), np.arange(sentences)] = 1.0
    return rel


def assert_matches_reference(similarity, relevancy, **kwargs) -> None:
    got = ek100_mir(similarity, relevancy, **kwargs)
    expected = reference_mir(np.asarray(similarity, dtype=np.float64), relevancy)
    for key in MIR_KEYS:
        assert abs(got[key] - expected[key]) <= 1e-9, (key, got[key], expected[key])


@pytest.mark.parametrize("mir", [ek100_mir, reference_mir], ids=["ek100_mir", "reference"])
def test_soft_precision_by_hand(mir):
    m = mir(HAND_SIM, HAND_REL)
    # video 0 ranks relevances 0.5, 0.5, 1: one hit at rank 3 with precision (0.5 + 0.5 + 1) / 3 = 2/3 (not 1/3).
    # video 1 ranks 0, 1, 1: hits at ranks 2 and 3 with precisions 1/2 and 2/3.
    assert m["mAP_v2t"] == pytest.approx((2 / 3 + (1 / 2 + 2 / 3) / 2) / 2, abs=1e-12)
    # Each sentence ranks video 0 first: relevances (0.5, 1), (0.5, 1) and (1, 0).
    assert m["mAP_t2v"] == pytest.approx((1.5 / 2 + 1.5 / 2 + 1.0) / 3, abs=1e-12)
    assert m["mAP_avg"] == pytest.approx((m["mAP_v2t"] + m["mAP_t2v"]) / 2, abs=1e-15)


@pytest.mark.parametrize("mir", [ek100_mir, reference_mir], ids=["ek100_mir", "reference"])
def test_ndcg_by_hand_cuts_at_the_number_of_relevant_items(mir):
    m = mir(HAND_SIM, HAND_REL)
    log2 = math.log2
    # video 0: k = 3, ranked 0.5, 0.5, 1; ideal 1, 0.5, 0.5.
    video0 = (0.5 / log2(2) + 0.5 / log2(3) + 1 / log2(4)) / (1 / log2(2) + 0.5 / log2(3) + 0.5 / log2(4))
    # video 1: k = 2, ranked 0, 1, 1: the 1 at rank 3 lies past k and does not count.
    video1 = (1 / log2(3)) / (1 / log2(2) + 1 / log2(3))
    assert m["nDCG_v2t"] == pytest.approx((video0 + video1) / 2, abs=1e-12)
    # sentences: k = 2, 2, 1; ranked (0.5, 1), (0.5, 1), (1, 0).
    sentence01 = (0.5 + 1 / log2(3)) / (1 + 0.5 / log2(3))
    assert m["nDCG_t2v"] == pytest.approx((2 * sentence01 + 1.0) / 3, abs=1e-12)


@pytest.mark.parametrize("shape", [(1, 5), (5, 1), (40, 25), (97, 301), (300, 64)])
def test_equals_reference_on_tie_free_inputs(shape):
    rng = np.random.default_rng(sum(shape))
    relevancy = random_relevancy(rng, *shape)
    assert_matches_reference(rng.standard_normal(shape), relevancy)  # float64: checks for near ties
    assert_matches_reference(rng.random(shape, dtype=np.float32), relevancy)


@pytest.mark.parametrize(
    "make",
    [
        lambda rng, shape: np.round(rng.random(shape), 1).astype(np.float32),  # many exact ties
        lambda rng, shape: np.round(rng.random(shape), 1),
        # float64 values that differ only in their lowest bits (the bits the fast key drops)
        lambda rng, shape: np.round(rng.random(shape), 1) * (1 + rng.integers(0, 3, shape) * 2.0**-52),
        lambda rng, shape: rng.choice([0.0, -0.0, 0.5, -0.5, np.inf, -np.inf], size=shape),
        lambda rng, shape: np.zeros(shape),
    ],
)
def test_ties_are_ordered_like_a_stable_sort(make):
    rng = np.random.default_rng(3)
    relevancy = random_relevancy(rng, 60, 45)
    assert_matches_reference(make(rng, (60, 45)), relevancy)


def test_more_items_than_the_short_payload_holds():
    rng = np.random.default_rng(4)
    relevancy = random_relevancy(rng, 40_000, 3)  # text->video ranks 40,000 videos: 32-bit payload
    assert_matches_reference(rng.random((40_000, 3), dtype=np.float32), relevancy)
    assert_matches_reference(np.round(rng.random((40_000, 3)), 2).astype(np.float32), relevancy)


def test_chunk_size_and_threads_do_not_change_results():
    rng = np.random.default_rng(5)
    similarity, relevancy = rng.standard_normal((123, 77)), random_relevancy(rng, 123, 77)
    expected = ek100_mir(similarity, relevancy)
    for chunk_size, threads in ((1, 1), (7, 2), (64, 3), (1000, 1)):
        assert ek100_mir(similarity, relevancy, chunk_size=chunk_size, threads=threads) == expected


def test_numpy_and_torch_inputs_agree():
    rng = np.random.default_rng(6)
    similarity = rng.random((50, 30), dtype=np.float32)
    relevancy = random_relevancy(rng, 50, 30)
    expected = ek100_mir(similarity, relevancy)
    assert ek100_mir(torch.from_numpy(similarity), torch.from_numpy(relevancy)) == expected
    assert ek100_mir(torch.from_numpy(similarity).requires_grad_(), relevancy) == expected
    half = torch.from_numpy(similarity).bfloat16()
    assert ek100_mir(half, relevancy) == ek100_mir(half.float().numpy(), relevancy)


def test_undefined_queries_and_bad_inputs_are_named():
    # Sentences 0 and 1 have no video of relevance 1: the literal official mean is NaN, ek100_mir refuses.
    assert math.isnan(reference_mir(HAND_SIM[:1], HAND_REL[:1])["mAP_t2v"])
    with pytest.raises(ValueError, match=r"t2v: sentence 0 \(and 1 more\) has no video of relevance 1"):
        ek100_mir(HAND_SIM[:1], HAND_REL[:1])
    with pytest.raises(ValueError, match=r"v2t: video 1 \(and 0 more\) has no sentence of relevance 1"):
        ek100_mir(np.eye(2), np.array([[1.0, 1.0], [0.5, 0.0]]))
    with pytest.raises(ValueError, match="NaN for video 0 and sentence 1"):
        ek100_mir(np.where(np.eye(2, 3, 1) > 0, np.nan, HAND_SIM), HAND_REL)
    with pytest.raises(ValueError, match=r"relevancy must lie in \[0, 1\], but is 1.5 at video 0, sentence 1"):
        ek100_mir(HAND_SIM, np.array([[1.0, 1.5, 1.0], [1.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="same 2-D shape"):
        ek100_mir(HAND_SIM, HAND_REL.T)


@pytest.fixture(scope="module")
def ek100_test_relevancy(ek100_dir):
    videos = pd.read_csv(ek100_dir / "EPIC_100_retrieval_test.csv")
    sentences = pd.read_csv(ek100_dir / "EPIC_100_retrieval_test_sentence.csv")
    return ek100_relevancy(videos, sentences)


def test_real_test_split_random_and_oracle(ek100_test_relevancy):
    relevancy = ek100_test_relevancy
    assert relevancy.shape == (9668, 3842)
    assert np.count_nonzero(relevancy) == 4_224_956 and np.count_nonzero(relevancy == 1) == 62_535
    random = ek100_mir(np.random.default_rng(0).random(relevancy.shape, dtype=np.float32), relevancy)
    assert 100 * random["mAP_avg"] == pytest.approx(5.6, abs=0.3)
    assert 100 * random["nDCG_avg"] == pytest.approx(10.9, abs=0.3)
    oracle = ek100_mir(relevancy, relevancy)
    assert all(value == pytest.approx(1.0, abs=1e-12) for value in oracle.values())


def test_benchmark_script_small_run(capsys):
    assert bench_metrics.main(["--small", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| date |") and lines[2].startswith("| ")
    assert len(lines[2].split("|")) == len(lines[0].split("|"))


def test_egomcq_names_inter_and_intra_video():
    # code 1 = inter-video (easy), code 2 = intra-video (hard), as in egomcq.json "types"
    scores = np.array(
        [
            [0.9, 0.1, 0.0, 0.0, 0.0],  # argmax 0
            [0.0, 0.2, 0.8, 0.0, 0.0],  # argmax 2
            [0.1, 0.7, 0.0, 0.0, 0.2],  # argmax 1
            [0.3, 0.3, 0.0, 0.1, 0.0],  # tie: the first maximum, 0
            [0.0, 0.0, 0.0, 0.0, 1.0],  # argmax 4
        ]
    )
    answers = np.array([0, 2, 4, 0, 1])
    types = np.array([1, 1, 2, 2, 2])
    expected = {"inter_video": 1.0, "intra_video": 1 / 3, "overall": 3 / 5}
    assert egomcq_accuracy(scores, answers, types) == pytest.approx(expected)
    named = np.array(["inter_video", "inter_video", "intra_video", "intra_video", "intra_video"])
    assert egomcq_accuracy(torch.from_numpy(scores), torch.from_numpy(answers), named) == pytest.approx(expected)
    only_inter = egomcq_accuracy(scores[:2], answers[:2], types[:2])
    assert only_inter["inter_video"] == 1.0 and math.isnan(only_inter["intra_video"])
    with pytest.raises(ValueError, match="question 1: type 3"):
        egomcq_accuracy(scores[:2], answers[:2], np.array([1, 3]))
    with pytest.raises(ValueError, match=r"question 0: .* answer 5"):
        egomcq_accuracy(scores[:1], np.array([5]), np.array([1]))


def sklearn_map(scores: np.ndarray, labels: np.ndarray) -> float:
    classes = [c for c in range(labels.shape[1]) if labels[:, c].any()]
    return float(np.mean([average_precision_score(labels[:, c], scores[:, c]) for c in classes]))


def test_charades_map_matches_sklearn():
    rng = np.random.default_rng(7)
    scores = rng.standard_normal((200, 30))
    labels = (rng.random((200, 30)) < 0.1).astype(np.int64)
    labels[:, 3] = 0  # a class without positives is left out of the mean
    labels[:20] = 0  # videos without any label
    assert charades_map(scores, labels, unlabeled_last=False) == pytest.approx(sklearn_map(scores, labels), abs=1e-12)
    # The official script ranks unlabeled videos last for every class.
    last = np.where(labels.any(axis=1, keepdims=True), scores, scores.min() - 1)
    assert charades_map(scores, labels) == pytest.approx(sklearn_map(last, labels), abs=1e-12)
    assert charades_map(scores, labels) > charades_map(scores, labels, unlabeled_last=False)
    assert charades_map(torch.from_numpy(scores).float(), torch.from_numpy(labels)) == pytest.approx(
        charades_map(scores.astype(np.float32), labels), abs=1e-12
    )


def test_charades_map_by_hand_and_errors():
    # one class, videos ranked by score: positive, negative, positive -> AP = (1/1 + 2/3) / 2
    scores, labels = np.array([[0.9], [0.5], [0.1]]), np.array([[1], [0], [1]])
    assert charades_map(scores, labels, unlabeled_last=False) == pytest.approx(5 / 6)
    assert charades_map(scores, labels) == 1.0  # the middle video has no label at all: ranked last
    with pytest.raises(ValueError, match="0/1"):
        charades_map(np.zeros((2, 2)), np.full((2, 2), 2))
    with pytest.raises(ValueError, match="no class has a positive"):
        charades_map(np.zeros((2, 2)), np.zeros((2, 2)))
