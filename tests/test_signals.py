"""A stage told to stop (SIGTERM, SIGINT, or the exit of the process that started it: `dvc repro`, a launcher)
ends after clean-up with one plain line, and its tracking run ends KILLED, not RUNNING; so does the run of a
process killed without clean-up, once another process looks."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from eva02at.core.errors import Stopped
from eva02at.core.tracking import Tracker, end_orphaned_runs, process_start, process_tags
from tests.processes import alive, wait_until
from tests.project_fixtures import ROOT, empty_mlflow_store

# a stage entry point that writes its pid to argv[1] and then waits to be told to stop
STAGE = """
import os, sys, threading
from pathlib import Path
from stages.common import stage_main

@stage_main
def main():
    Path(sys.argv[1]).write_text(str(os.getpid()))
    threading.Event().wait()

main()
"""
# starts the stage and waits: a stand-in for `dvc repro`
PARENT = """
import subprocess, sys, threading
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], stderr=open(sys.argv[3], "w"))
threading.Event().wait()
"""


def stage_pid(marker, starter: subprocess.Popen) -> int:
    wait_until(lambda: marker.exists() or starter.poll() is not None, "the stage to start")
    assert marker.exists(), f"the stage's starter ended with status {starter.returncode}"
    wait_until(lambda: marker.read_text() != "", "the stage to write its pid")
    return int(marker.read_text())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_stage_stops_with_one_plain_line(tmp_path, signum):
    marker = tmp_path / "pid"
    stage = subprocess.Popen(
        [sys.executable, "-c", STAGE, str(marker)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        # started as a background job of a script is: with SIGINT ignored, which a stage must not inherit
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    stage_pid(marker, stage)
    stage.send_signal(signum)
    try:
        _, stderr = stage.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        stage.kill()
        pytest.fail(f"the stage did not stop on {signal.Signals(signum).name}")
    assert stage.returncode == 128 + signum
    name = signal.Signals(signum).name
    assert stderr.splitlines() == [
        f"ERROR __main__: -c stopped by {name}: unfinished outputs were dropped, finished ones and the last "
        "checkpoint are kept; rerun to continue"
    ]


def test_a_stage_stops_when_the_process_that_started_it_is_killed(tmp_path):
    marker, log = tmp_path / "pid", tmp_path / "stage.log"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, STAGE, str(marker), str(log)], cwd=ROOT)
    pid = stage_pid(marker, parent)
    parent.send_signal(signal.SIGKILL)  # as a scheduler's kill -9 of `dvc repro`: no clean-up of its own
    parent.wait()
    wait_until(lambda: not alive(pid), "the stage to end with its parent")
    assert "stopped by SIGTERM" in log.read_text()


def test_a_stopped_run_ends_killed(tmp_path):
    shutil.copy(empty_mlflow_store(), tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(Stopped), Tracker("signals", "frames@egoclip", uri) as tracker:
        raise Stopped(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), Tracker("signals", "frames@egoclip", uri) as interrupted:
        raise KeyboardInterrupt
    with pytest.raises(ValueError), Tracker("signals", "frames@egoclip", uri) as failed:
        raise ValueError("a bug")
    client = MlflowClient(uri)
    statuses = [client.get_run(t.run_id).info.status for t in (tracker, interrupted, failed)]
    assert statuses == ["KILLED", "KILLED", "FAILED"]


def test_runs_whose_process_is_gone_end_killed_and_the_others_are_left_alone(tmp_path):
    shutil.copy(empty_mlflow_store(), tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    killed = subprocess.Popen(["sleep", "600"])
    tags_of_killed = process_tags() | {"process.pid": str(killed.pid), "process.start": process_start(killed.pid)}
    killed.kill()
    killed.wait()
    assert process_start(killed.pid) is None
    client = MlflowClient(uri)
    experiment = client.create_experiment("orphans")

    def running(name: str, tags: dict[str, str]) -> str:
        return client.create_run(experiment, run_name=name, tags=tags).info.run_id

    orphan = running("stage", tags_of_killed)
    other_name = running("other", tags_of_killed)
    kept = running("stage", tags_of_killed)
    alive = running("stage", process_tags())  # this test's own process
    other_host = running("stage", tags_of_killed | {"process.host": "elsewhere"})
    reused_pid = running("stage", process_tags() | {"process.start": "1"})  # same pid, an earlier process
    untagged = running("stage", {})
    assert sorted(end_orphaned_runs("orphans", uri, run_name="stage", keep=kept)) == sorted([orphan, reused_pid])
    assert client.get_run(orphan).data.tags["end.reason"] == (
        f"process {killed.pid} on {tags_of_killed['process.host']} exited without ending the run"
    )
    statuses = {
        run_id: client.get_run(run_id).info.status for run_id in (other_name, kept, alive, other_host, untagged)
    }
    assert set(statuses.values()) == {"RUNNING"}
    assert {client.get_run(r).info.status for r in (orphan, reused_pid)} == {"KILLED"}
    # a tracker of the same name ends them before it starts, and records its own process
    with Tracker("orphans", "other", uri) as tracker:
        assert client.get_run(other_name).info.status == "KILLED"
        assert client.get_run(tracker.run_id).data.tags["process.pid"] == str(os.getpid())
    assert end_orphaned_runs("absent", uri) == []


BLOCK_STAGE = """\
stages:
  block:
    cmd: python block.py {marker}
    deps: [block.py]
    outs: [done.txt]
"""


@pytest.mark.slow
def test_sigterm_to_dvc_repro_ends_the_stage_it_runs(tmp_path):
    project, marker, log = tmp_path / "project", tmp_path / "pid", tmp_path / "dvc.log"
    project.mkdir()
    (project / "dvc.yaml").write_text(BLOCK_STAGE.format(marker=marker))
    (project / "block.py").write_text(STAGE)
    bin_dir = str(Path(sys.executable).parent)
    # DVC runs a stage through $SHELL -c, and bash hands its process over to the stage (README, Reliability)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env["SHELL"] = "/bin/bash"
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=project, env=env, check=True)
    with log.open("w") as out:
        repro = subprocess.Popen(
            [sys.executable, "-m", "dvc", "repro"], cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        pid = stage_pid(marker, repro)
        repro.send_signal(signal.SIGTERM)  # what a scheduler, a shell's kill or a cancelled flow sends
        repro.wait()
    wait_until(lambda: not alive(pid), "the stage to end with dvc repro")
    assert "stopped by SIGTERM" in log.read_text()
    assert not (project / "done.txt").exists()
