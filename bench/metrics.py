"""Benchmark ``eva02at.evaluation.metrics.ek100_mir`` against the literal reference on the EK100 test relevancy.

    python -m bench.metrics --repeats 3          # the real 9,668 x 3,842 test matrix
    python -m bench.metrics --small --repeats 1  # a sub-matrix, a few seconds (used by the tests)

Both run on the same seeded uniform-random similarity, alternately, ``--repeats`` times each; the script
checks that they agree to 1e-9 and prints the median wall times, the speed-up and the machine as a
markdown table row for BENCHMARKS.md (the load average tells how busy the shared machine was).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.common import machine_info, median, time_calls
from bench.mir_reference import reference_mir
from eva02at.data.labels import ek100_relevancy
from eva02at.evaluation.metrics import MIR_KEYS, ek100_mir

DATA = Path(__file__).resolve().parents[1] / "data" / "sample" / "ek100"
HEADER = (
    "| date | CPU | cores | load | numpy | torch | matrix | similarity | threads | reference s (CPU s) | "
    "ek100_mir s (CPU s) | speed-up | max abs diff | mAP avg % | nDCG avg % |"
)


def load_relevancy(data_dir: Path, small: bool) -> np.ndarray:
    """The EK100 test relevancy; ``small``: every 8th video, the sentences of those videos, and of the
    videos only those with a relevance-1 sentence left (so every query has a hit in both directions)."""
    videos = pd.read_csv(data_dir / "EPIC_100_retrieval_test.csv")
    sentences = pd.read_csv(data_dir / "EPIC_100_retrieval_test_sentence.csv")
    if not small:
        return ek100_relevancy(videos, sentences)
    videos = videos.iloc[::8].reset_index(drop=True)
    sentences = sentences[sentences["narration_id"].isin(videos["narration_id"])].reset_index(drop=True)
    relevancy = ek100_relevancy(videos, sentences)
    return relevancy[(relevancy == 1).any(axis=1)]


def measure(calls: dict[str, Callable[[], dict]], repeats: int) -> dict[str, dict]:
    """Wall and CPU seconds of each call, alternating the calls so that a change in the shared machine's
    load hits all alike; CPU seconds (all threads) are the less load-sensitive of the two."""
    runs = {name: {"wall": [], "cpu": [], "result": None} for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.process_time()
            wall = time_calls(lambda call=call, name=name: runs[name].update(result=call()), 1, torch.device("cpu"))
            runs[name]["wall"] += wall
            runs[name]["cpu"].append(time.process_time() - start)
    return runs


def table_row(args: argparse.Namespace, load: float, shape: tuple[int, int], runs: dict[str, dict], diff: float) -> str:
    info = machine_info()
    reference, fast = runs["reference"], runs["ek100_mir"]
    cells = [
        info["date"],
        info["cpu"],
        str(info["cores"]),
        f"{load:.1f}",
        np.__version__,
        info["versions"]["torch"],
        f"{shape[0]}x{shape[1]}",
        f"uniform {args.dtype}",
        str(args.threads or os.cpu_count()),
        f"{median(reference['wall']):.2f} ({median(reference['cpu']):.2f})",
        f"{median(fast['wall']):.3f} ({median(fast['cpu']):.2f})",
        f"{median(reference['wall']) / median(fast['wall']):.1f}x",
        f"{diff:.1e}",
        f"{100 * fast['result']['mAP_avg']:.2f}",
        f"{100 * fast['result']['nDCG_avg']:.2f}",
    ]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="a sub-matrix of the test split (seconds)")
    parser.add_argument("--data", type=Path, default=DATA, help="folder with the EK100 test CSVs")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--threads", type=int, default=None, help="ek100_mir workers (default: all CPUs)")
    parser.add_argument("--chunk-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    load = os.getloadavg()[0]  # before this script adds its own: how busy the shared machine was
    relevancy = load_relevancy(args.data, args.small)
    similarity = np.random.default_rng(args.seed).random(relevancy.shape).astype(args.dtype)
    calls = {
        "reference": lambda: reference_mir(similarity, relevancy),
        "ek100_mir": lambda: ek100_mir(similarity, relevancy, chunk_size=args.chunk_size, threads=args.threads),
    }
    runs = measure(calls, args.repeats)
    diff = max(abs(runs["ek100_mir"]["result"][key] - runs["reference"]["result"][key]) for key in MIR_KEYS)
    print(HEADER)
    print("|" + "---|" * HEADER.count(" | ") + "---|")
    print(table_row(args, load, relevancy.shape, runs, diff))
    print("runs (wall s):", {name: [round(s, 3) for s in run["wall"]] for name, run in runs.items()})
    if diff > 1e-9:
        print(f"MISMATCH: ek100_mir differs from the reference by {diff:.3g}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
