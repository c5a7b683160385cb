"""Relevance-aware pair sampler: only candidates, uniform, deterministic, resumable and sharded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch.utils.data
from scipy.stats import chisquare

from eva02at.data.labels import RelevancyTable
from eva02at.train.sampling import RelevantPairSampler


def make_table(videos: int = 40, seed: int = 0) -> RelevancyTable:
    """Random EK100-like table: few verbs and nouns, so most videos have several candidate captions."""
    rng = np.random.default_rng(seed)
    rows = {
        "narration_id": [f"n{i}" for i in range(videos)],
        "verb_class": rng.integers(0, 3, videos),
        "all_noun_classes": [str(rng.choice(6, rng.integers(1, 3), replace=False).tolist()) for _ in range(videos)],
    }
    frame = pd.DataFrame(rows)
    sentences = frame[["narration_id"]].iloc[rng.permutation(videos)[: videos // 2]]
    sentences = pd.concat([sentences, frame[["narration_id"]]]).drop_duplicates().reset_index(drop=True)
    return RelevancyTable.build(frame, sentences)


def epoch_batches(sampler: RelevantPairSampler, epoch: int, start_step: int = 0) -> list[np.ndarray]:
    sampler.set_epoch(epoch, start_step)
    return [np.array(batch) for batch in sampler]


def test_pairs_are_candidates_and_videos_are_visited_once():
    table = make_table()
    sampler = RelevantPairSampler(table, batch_size=6, seed=1)
    pairs = np.concatenate(epoch_batches(sampler, 0))
    assert sampler.steps_per_epoch == 6 and pairs.shape == (36, 2)
    assert len(set(pairs[:, 0])) == 36  # 40 videos, the last incomplete batch is dropped
    relevance = table.dense()[pairs[:, 0], pairs[:, 1]]
    assert (relevance > 0.1).all()


def test_threshold_is_strict_and_configurable():
    table = make_table(seed=4)
    for threshold in (0.1, 0.5):
        sampler = RelevantPairSampler(table, batch_size=10, seed=0, threshold=threshold)
        pairs = np.concatenate([sampler.global_batch(e, s) for e in range(5) for s in range(4)])
        assert (table.dense()[pairs[:, 0], pairs[:, 1]] > threshold).all()


def test_captions_are_uniform_among_candidates():
    table = make_table(videos=8, seed=2)
    sampler = RelevantPairSampler(table, batch_size=8, seed=3)
    video = max(range(8), key=lambda v: len(table.candidates(v)))
    options = table.candidates(video)
    assert len(options) >= 4
    draws = []
    for epoch in range(3000):
        pairs = sampler.global_batch(epoch, 0)
        draws.append(pairs[pairs[:, 0] == video, 1][0])
    counts = np.array([np.sum(np.array(draws) == option) for option in options])
    assert counts.sum() == 3000  # never anything but a candidate
    assert chisquare(counts).pvalue > 1e-3  # fixed seed: deterministic, not flaky


def test_deterministic_per_seed_and_epoch():
    table = make_table()
    first = epoch_batches(RelevantPairSampler(table, batch_size=4, seed=7), 2)
    again = epoch_batches(RelevantPairSampler(table, batch_size=4, seed=7), 2)
    other_epoch = epoch_batches(RelevantPairSampler(table, batch_size=4, seed=7), 3)
    other_seed = epoch_batches(RelevantPairSampler(table, batch_size=4, seed=8), 2)
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(again))
    assert not np.array_equal(np.concatenate(first), np.concatenate(other_epoch))
    assert not np.array_equal(np.concatenate(first), np.concatenate(other_seed))


def test_resume_sees_exactly_the_remaining_batches():
    table = make_table()
    full = epoch_batches(RelevantPairSampler(table, batch_size=4, seed=5), 1)
    resumed = RelevantPairSampler(table, batch_size=4, seed=5)
    epoch_batches(resumed, 0)  # a different epoch first, as a restarted run may have done
    tail = epoch_batches(resumed, 1, start_step=3)
    assert len(tail) == len(full) - 3
    for expected, got in zip(full[3:], tail, strict=True):
        np.testing.assert_array_equal(expected, got)
    with pytest.raises(ValueError, match="start_step"):
        resumed.set_epoch(1, start_step=len(full) + 1)


def test_ranks_split_the_global_batch_in_rank_order():
    table = make_table()
    single = RelevantPairSampler(table, batch_size=8, seed=9)
    ranks = [RelevantPairSampler(table, batch_size=4, seed=9, rank=r, world_size=2) for r in range(2)]
    assert len(single) == ranks[0].steps_per_epoch == 5
    for step in range(5):
        gathered = np.concatenate([sampler.batch(0, step) for sampler in ranks])
        np.testing.assert_array_equal(gathered, single.batch(0, step))


def test_video_without_candidate_is_an_error():
    sampler = RelevantPairSampler(make_table(), batch_size=4, threshold=1.0)  # R > 1 never holds
    with pytest.raises(ValueError, match=r"video \d+ \(narration_id n\d+\) has no caption"):
        sampler.batch(0, 0)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="one global batch"):
        RelevantPairSampler(make_table(videos=6), batch_size=4, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        RelevantPairSampler(make_table(), batch_size=4, rank=2, world_size=2)


def test_works_as_dataloader_batch_sampler():
    table = make_table()

    class Pairs(torch.utils.data.Dataset):
        def __getitem__(self, pair):
            return torch.tensor(pair)

    sampler = RelevantPairSampler(table, batch_size=5, seed=0)
    sampler.set_epoch(4)
    loaded = [batch.numpy() for batch in torch.utils.data.DataLoader(Pairs(), batch_sampler=sampler)]
    np.testing.assert_array_equal(np.concatenate(loaded), np.concatenate(epoch_batches(sampler, 4)))
