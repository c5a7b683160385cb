"""The export sharded over processes: each rank takes whole batches, and two CPU processes under torchrun (gloo)
write byte for byte the files one process writes (embeddings, texts and compact codes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from eva02at.core.distributed import DistInfo
from eva02at.export.inference import shard_rows
from tests.test_embeddings import make_checkpoint, make_shards

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("count", "batch", "world"), [(0, 4, 2), (7, 2, 2), (5, 4, 3), (33, 32, 4), (9, 1, 4)])
def test_ranks_share_the_rows_in_whole_batches(count, batch, world):
    parts = [shard_rows(count, batch, DistInfo(rank, world, rank, torch.device("cpu"))) for rank in range(world)]
    assert [row for part in parts for row in part] == list(range(count))  # every row once, in rank order
    for part in parts:
        assert part.start % batch == 0 and (part.stop % batch == 0 or part.stop == count)
    sizes = [len(part) // batch for part in parts]
    assert max(sizes) - min(sizes) <= 1  # whole batches, spread evenly


def write_project(root: Path) -> None:
    make_checkpoint(root / "model.pt")
    make_shards(root / "frames/many", [{"clip_id": f"m{i}", "text": f"clip {i}"} for i in range(7)])
    make_shards(root / "frames/one", [{"clip_id": "k0"}, {"clip_id": "k1", "status": "error"}])
    (root / "classes.txt").write_text("".join(f"c{i} put item {i} in the box\n" for i in range(5)))
    (root / "labels.csv").write_text("id,actions\n" + "".join(f"m{i},c{i % 5} 0 1\n" for i in range(7)))
    benchmarks = {
        "out": "frozen",
        "entries": {"charades_ego": {"collection": "many", "queries": "classes.txt", "truth": "labels.csv"}},
    }
    for name in ("one_process", "two_processes"):
        export = {
            "out": name,
            "frames": "frames",
            "batch_size": 2,  # 7 clips: batches of 2, 2, 2, 1 over two ranks; "one" has fewer batches than ranks
            "text_batch_size": 2,
            "workers": 0,
            "device": "cpu",
            "codes": {"int8": True, "binary": {"bits_per_dim": 2}},
            "models": {"tiny": "model.pt"},
            "collections": ["one"],
        }
        params = {
            "benchmarks": benchmarks,
            "export": export,
            "tracking": {"uri": None, "experiment": "eva02at", "enabled": False},
        }
        (root / f"{name}.yaml").write_text(yaml.safe_dump(params))


@pytest.mark.slow
def test_two_processes_write_the_files_of_one(tmp_path):
    write_project(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    freeze = [sys.executable, "-m", "stages.benchmark", "charades_ego", "--params", "one_process.yaml"]
    one = [sys.executable, "-m", "stages.export", "--params", "one_process.yaml"]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two += ["-m", "stages.export", "--params", "two_processes.yaml"]
    for command in (freeze, one, two):
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]

    def files(name: str) -> dict[str, bytes]:
        folder = tmp_path / name
        return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}

    single, sharded = files("one_process"), files("two_processes")
    assert sorted(single) == [
        "tiny/charades_ego_text.parquet",
        "tiny/many_video.codes.parquet",
        "tiny/many_video.parquet",
        "tiny/one_video.codes.parquet",
        "tiny/one_video.parquet",
    ]  # no part file is left behind
    assert sharded == single
