"""The frames stage as DVC runs it: kill -9 leaves no worker behind and a rerun ends with the uninterrupted bytes;
one MLflow run carries the decode summary; the stage and its decode workers start without torch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from eva02at.core.tracking import find_runs
from tests.processes import in_session, wait_until

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample" / "ego4d"
# a short real clip, a longer one and the damaged video: 2 + 10 + 5 clips of 1 s
VIDEOS = ("ego4d_3c0dffd0_012_014.mp4", "ego4d_site_kaust.mp4", "corrupted.mp4")
WAIT_LIMIT_S = 300  # only ends a hung test; every wait below returns as soon as its condition holds


def test_the_stage_and_its_workers_load_no_torch():
    # six frames stages per pipeline run, each with its decode processes: torch and torchvision add ~3 s to each
    check = "import sys, stages.frames, eva02at.data.extract; assert 'torch' not in sys.modules, 'torch was imported'"
    done = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def write_params(project: Path, tracking: dict) -> Path:
    project.mkdir(parents=True, exist_ok=True)
    clips = project / "clips.csv"
    clips.write_text("file\n" + "".join(f"{video}\n" for video in VIDEOS))
    params = {
        "frames": {
            "out": "frames",
            "size": 16,
            "jpeg_quality": 90,
            "seed": 0,
            "workers": 2,
            "clips_per_shard": 3,
            "max_failure_fraction": 0.5,
            "train_aspect": 1.25,
            "collections": {
                "clips": {
                    "format": "videolist",
                    "annotations": str(clips),
                    "videos": str(SAMPLE),
                    "num_frames": 2,
                    "views": 2,
                    "clip_seconds": 1.0,
                }
            },
        },
        "tracking": tracking,
    }
    path = project / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def start_stage(project: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "MLFLOW_TRACKING_URI": ""}
    command = [sys.executable, "-m", "stages.frames", "clips", "--params", "params.yaml"]
    return subprocess.Popen(
        command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )


def run_stage(project: Path) -> str:
    process = start_stage(project)
    output, _ = process.communicate()
    assert process.returncode == 0, output.decode()
    return output.decode()


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and relies on PR_SET_PDEATHSIG")
def test_kill_9_leaves_no_worker_and_the_rerun_gives_the_uninterrupted_output(tmp_path):
    clean = tmp_path / "clean"
    write_params(clean, {"enabled": True, "uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "frames"})
    log = run_stage(clean)
    assert "clips decoded" in log

    killed = tmp_path / "killed"
    write_params(killed, {"enabled": True, "uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "frames"})
    stage = start_stage(killed)
    first_part = killed / "frames" / "clips" / "parts" / "shard-00000.parquet"
    wait_until(lambda: first_part.exists() or stage.poll() is not None, "the first finished shard", WAIT_LIMIT_S)
    assert stage.poll() is None, "the stage ended before it could be killed"
    assert len(in_session(stage.pid)) >= 3  # the stage and its two decode workers
    os.kill(stage.pid, signal.SIGKILL)
    stage.wait()
    finished_when_killed = sorted(first_part.parent.glob("*.parquet"))
    wait_until(lambda: not in_session(stage.pid), "the workers of the killed stage to exit", WAIT_LIMIT_S)
    assert sorted(first_part.parent.glob("*.parquet")) == finished_when_killed  # no orphan wrote a shard
    shards = len(list((clean / "frames" / "clips" / "parts").glob("*.parquet")))
    assert len(list(first_part.parent.glob("*.parquet"))) < shards  # killed before it finished
    # what a worker killed while writing leaves (whether this kill hit one mid-write is a matter of timing)
    collection = killed / "frames" / "clips"
    for folder, name in ((collection / "parts", "shard-00001.parquet"), (collection / "shards", "shard-00001.arrow")):
        (folder / f".{name}.tmp-0123456789abcdef").write_bytes(b"PAR1 half")

    rerun = run_stage(killed)
    assert "kept from an earlier run" in rerun and "of killed frames@clips executions as KILLED" in rerun
    assert outputs(killed / "frames") == outputs(clean / "frames")

    runs = find_runs("frames", f"sqlite:///{tmp_path / 'mlflow.db'}")  # newest first
    assert [r.status for r in runs] == ["FINISHED", "KILLED", "FINISHED"]  # the rerun, the killed one, clean
    assert runs[1].tags["frames.out"] == str((killed / "frames" / "clips").resolve())
    run = runs[2]
    assert run.name == "frames@clips" and run.status == "FINISHED"
    assert run.tags["dvc.stage"] == "frames@clips" and "git.commit" in run.tags
    metrics = run.metrics
    assert metrics["clips"] == metrics["clips_ok"] + metrics["clips_failed"] == 17  # 1 s clips of VIDEOS
    assert metrics["clips_failed"] == 2  # the damaged video's last seconds
    assert (metrics["shards_written"], metrics["shards_kept"]) == (shards, 0)
    assert metrics["seconds"] > 0 and run.params["spec.aspect"] == "1.25"
