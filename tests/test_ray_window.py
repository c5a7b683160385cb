"""The Ray driver keeps a bounded window of tasks in flight: every call runs once, in submission order, never
more than ``window`` at a time (on a real one-node Ray cluster on loopback, 2 CPUs)."""

from __future__ import annotations

import pytest

from eva02at.data.cluster import run_on_cluster
from tests.ray_cluster import stamped, start_cluster, stop_cluster


@pytest.fixture(scope="module")
def cluster():
    cluster = start_cluster(num_cpus=2)
    yield cluster
    assert stop_cluster(cluster) == []


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of (start, end) intervals that overlap at one time (a sweep over the ends)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in events:  # at equal times an end (-1) sorts before a start: touching is not overlapping
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.slow
@pytest.mark.parametrize("window, tasks, seconds", [(1, 6, 0.2), (2, 30, 0.0), (100, 40, 0.0)])
def test_every_call_runs_once_in_submission_order_within_the_window(cluster, tmp_path, window, tasks, seconds):
    calls = {f"task{k:03d}": (f"task{k:03d}", seconds) for k in range(tasks)}
    results = list(run_on_cluster(cluster.address, stamped, calls, tmp_path, window=window))
    names = [name for name, _, _ in results]
    assert sorted(names) == sorted(calls)
    assert most_at_once([(start, end) for _, start, end in results]) <= window
    if window == 1:  # one at a time on 2 CPUs: without the window two would overlap
        assert names == list(calls)
