"""The frames stage on a real Ray cluster (one node on loopback, 2 CPUs): the same bytes as a local run, a killed
worker's shard retried, a killed driver's tasks gone, a folder the nodes do not share named."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import eva02at.data.cluster
import eva02at.data.extract
from eva02at.data.cluster import FolderNotShared, TasksLost
from eva02at.data.extract import extract, ray_runner
from eva02at.data.formats.videolist import cut_videos
from eva02at.data.shards import FrameSpec
from eva02at.data.video import video_info
from tests.ray_cluster import (
    BlockFirstAttempt,
    KillsItself,
    kill_when_marked,
    start_cluster,
    stop_cluster,
    wait_for_files,
    wait_until_dead,
    worker_env,
)

SPEC = FrameSpec(num_frames=2, size=16)
SHARDING = {"clips_per_shard": 8, "max_failure_fraction": 0.0}  # 33 clips of 7 videos in 6 shards


@pytest.fixture(scope="module")
def cluster():
    cluster = start_cluster(num_cpus=2)
    yield cluster
    assert stop_cluster(cluster) == []  # nothing of the cluster outlived its `ray start`


def sample_videos(ego4d_dir: Path) -> list[str]:
    """The sample's Ego4D clips but the damaged one (its decoder's error text carries the time of day)."""
    return [p.name for p in sorted(ego4d_dir.glob("*.mp4")) if p.name != "corrupted.mp4"]


@pytest.fixture(scope="module")
def segments(ego4d_dir):
    """2 s windows of the sample videos, as the stage cuts a video list."""
    return cut_videos({name: video_info(ego4d_dir / name).duration for name in sample_videos(ego4d_dir)}, 2.0)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, segments, ego4d_dir) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("local")
    extract(segments, [], ego4d_dir, out, SPEC, workers=1, **SHARDING)
    return output_files(out)


def output_files(out: Path) -> dict[str, bytes]:
    """Manifest, shards and manifest parts by relative path."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_cluster_run_is_byte_identical_and_resumes(cluster, segments, local_run, ego4d_dir, tmp_path):
    summary = extract(segments, [], ego4d_dir, tmp_path, SPEC, runner=ray_runner(cluster.address), **SHARDING)
    assert (summary.clips, summary.ok, summary.written_shards) == (len(segments), 33, 6)
    assert output_files(tmp_path) == local_run
    (tmp_path / "parts" / "shard-00003.parquet").unlink()  # as if that shard's task had not finished
    again = extract(segments, [], ego4d_dir, tmp_path, SPEC, runner=ray_runner(cluster.address), **SHARDING)
    assert (again.written_shards, again.kept_shards) == (1, 5)
    assert output_files(tmp_path) == local_run


@pytest.mark.slow
def test_killed_worker_is_retried(cluster, segments, local_run, ego4d_dir, tmp_path, monkeypatch):
    markers, out = tmp_path / "markers", tmp_path / "out"
    monkeypatch.setattr(eva02at.data.extract, "decode_chain", BlockFirstAttempt(markers, {"shard-00002"}))
    killer = kill_when_marked(markers / "shard-00002.pid")  # kills the worker while it runs that shard's task
    summary = extract(segments, [], ego4d_dir, out, SPEC, runner=ray_runner(cluster.client_address), **SHARDING)
    killer.join()
    assert wait_until_dead([int((markers / "shard-00002.pid").read_text())]) == []
    assert summary.clips == summary.ok == len(segments)
    assert output_files(out) == local_run


@pytest.mark.slow
@pytest.mark.parametrize("client", [False, True], ids=["driver-on-node", "ray-client"])
def test_killed_driver_takes_its_tasks_along(cluster, local_run, ego4d_dir, tmp_path, client):
    params = tiny_params(tmp_path, ego4d_dir, cluster.client_address if client else cluster.address)
    markers = tmp_path / "markers"
    driver = subprocess.Popen(  # the frames stage, each task blocking in its shard until killed
        [sys.executable, "-c", BLOCKED_STAGE, str(markers), str(params)], cwd=tmp_path, env=worker_env()
    )
    running = wait_for_files(markers, "*.pid", 2)  # both CPUs busy with a shard
    driver.kill()
    driver.wait()
    assert wait_until_dead([int(p.read_text()) for p in running]) == []
    out = tmp_path / "frames" / "clips"
    assert list((out / "parts").iterdir()) == []
    rerun = subprocess.run(
        [sys.executable, "-m", "stages.frames", "clips", "--params", str(params)],
        cwd=tmp_path,
        env=worker_env(),
        capture_output=True,
        text=True,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert sorted(markers.glob("*.pid")) == running  # no task of the killed run started again
    assert output_files(out) == local_run


BLOCKED_STAGE = """
import sys
import eva02at.data.extract
from tests.ray_cluster import BlockFirstAttempt
eva02at.data.extract.decode_chain = BlockFirstAttempt(sys.argv[1])
sys.argv = ["frames", "clips", "--params", sys.argv[2]]
from stages.frames import main
main()
"""


def tiny_params(folder: Path, ego4d_dir: Path, address: str) -> Path:
    """A params file for the frames stage: the sample's Ego4D clips as a video list, on the Ray cluster."""
    (folder / "clips.csv").write_text("file\n" + "".join(f"{name}\n" for name in sample_videos(ego4d_dir)))
    frames = {
        "out": str(folder / "frames"),
        "size": SPEC.size,
        "jpeg_quality": SPEC.jpeg_quality,
        "seed": SPEC.seed,
        "workers": 1,
        **SHARDING,
        "ray_address": address,
        "collections": {
            "clips": {
                "format": "videolist",
                "annotations": str(folder / "clips.csv"),
                "videos": str(ego4d_dir),
                "num_frames": SPEC.num_frames,
            }
        },
    }
    path = folder / "params.yaml"
    tracking = {"uri": None, "experiment": "eva02at", "enabled": True}  # sqlite:///mlflow.db in the folder
    path.write_text(yaml.safe_dump({"frames": frames, "tracking": tracking}))
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("unshared", "message"),
    [
        ("output", "does not see the output folder /proc/self/cwd/out (a file the driver wrote there is missing)"),
        ("videos", "does not see /proc/self/cwd/videos, unlike the driver"),
    ],
    ids=["output", "videos"],
)
def test_folder_a_node_does_not_see_is_named(cluster, segments, ego4d_dir, tmp_path, monkeypatch, unshared, message):
    # /proc/self/cwd is the folder each process runs in: the driver's is tmp_path, the Ray workers' another one
    monkeypatch.chdir(tmp_path)
    (tmp_path / "videos").symlink_to(ego4d_dir)
    out = Path("/proc/self/cwd/out") if unshared == "output" else tmp_path / "out"
    videos = Path("/proc/self/cwd/videos") if unshared == "videos" else ego4d_dir
    with pytest.raises(
        FolderNotShared, match=r"1 of 1 Ray nodes do not see the driver's folders.*" + re.escape(message)
    ):
        extract(segments, [], videos, out, SPEC, runner=ray_runner(cluster.address), **SHARDING)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["parts", "shards"]  # and no token left
    assert not any((tmp_path / "out" / "parts").iterdir())  # no shard ran


@pytest.mark.slow
def test_task_that_keeps_losing_its_worker_is_named(cluster, segments, ego4d_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(eva02at.data.cluster, "RETRIES", 1)
    monkeypatch.setattr(eva02at.data.extract, "decode_chain", KillsItself("shard-00001"))
    three_shards = segments[:18]  # ego4d_3c0dffd0 and bristol (6 clips), catania (5), fair (7)
    with pytest.raises(TasksLost, match=r"1 of 3 tasks failed on the Ray cluster \(shard-00001\), after 1 retries"):
        extract(three_shards, [], ego4d_dir, tmp_path, SPEC, runner=ray_runner(cluster.address), **SHARDING)
    finished = sorted(p.name for p in (tmp_path / "parts").iterdir())
    assert finished == ["shard-00000.parquet", "shard-00002.parquet"]  # the other shards are done and kept


def test_local_run_starts_nothing_of_ray(tmp_path, ego4d_dir):
    code = (
        "import sys; from eva02at.data.extract import extract; from eva02at.data.annotations import Segment; "
        "from eva02at.data.shards import FrameSpec; "
        f"extract([Segment('a', 'ego4d_3c0dffd0_012_014.mp4', 0.0, 2.0, 0)], [], {str(ego4d_dir)!r}, "
        f"{str(tmp_path)!r}, FrameSpec(2, size=16), workers=1); "
        "assert 'ray' not in sys.modules, 'ray was imported'"
    )
    subprocess.run([sys.executable, "-c", code], env=worker_env(), check=True)
