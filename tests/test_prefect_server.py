"""End to end: a real Prefect server and process worker, on loopback, run the ``nightly`` deployment of
prefect.yaml (the ``retrain`` flow, its cron schedule included) on a tiny project, and the run registers
a model in MLflow. Everything the test starts is stopped at the end, also when it fails.

The project is a copy of the session's tiny pipeline after its ``dvc repro`` (tests/conftest.py), so the
experiment reruns only what its params override changes. The test talks to the server with Prefect's own
client and waits on readiness (health, flow run state), failing early only when a process it waits on
has exited: a busy machine makes it slower, not red."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import ObjectNotFound

from eva02at.core.tracking import aliased_version, get_run
from eva02at.models import load_video_clip
from tests.project_fixtures import ROOT, git, md5, quiet_env

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tiny_pipeline")]  # the fixture is built once per worker

PREFECT = str(Path(sys.executable).parent / "prefect")
MODEL_NAME = "eva02at-ek100-mir"
METRIC = "finetuned.ek100_mir.mAP_avg"
OVERRIDE = ("evaluate.random.draws", 3)  # only `evaluate` reruns; the fine-tuned model is the pipeline's
TINY_RUN = {"overrides": {OVERRIDE[0]: OVERRIDE[1]}, "retries": 0}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(ready: Callable[[], Any], needed: list[subprocess.Popen], what: str) -> Any:
    """Poll ``ready`` until it returns something truthy; fail as soon as a process it needs has exited."""
    while not (result := ready()):
        exited = [p.args[1] for p in needed if p.poll() is not None]
        assert not exited, f"{what}: `prefect {' '.join(exited)}` exited"
        time.sleep(1)
    return result


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to a process the test started and all its descendants (the worker runs each flow run in a
    session of its own, out of reach of a process-group signal), SIGKILL to those that linger."""
    try:
        root = psutil.Process(process.pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    _, alive = psutil.wait_procs(family, timeout=20)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    process.wait()


@pytest.fixture
def start(tmp_path):
    """Start a background command in a session of its own, output to ``<name>.log``; all are stopped
    when the test ends, whether it passed or not."""
    started: list[subprocess.Popen] = []

    def start(name: str, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
        with open(tmp_path / f"{name}.log", "w") as log:
            process = subprocess.Popen(
                args, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        stop(process)


def logs(directory: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in sorted(directory.glob("*.log")))


def reproduced_copy(tiny_pipeline: tuple[Path, dict, str], dest: Path) -> Path:
    """A copy of the reproduced tiny project, its new dvc.lock committed (a clean checkout, as a worker has)."""
    shutil.copytree(tiny_pipeline[0], dest, symlinks=True)
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "pipeline reproduced")
    return dest


def test_nightly_deployment_runs_on_a_worker_and_registers_a_model(tiny_pipeline, tmp_path, start):
    project = reproduced_copy(tiny_pipeline, tmp_path / "project")
    port = free_port()
    base = f"http://127.0.0.1:{port}/api"
    env = quiet_env(tmp_path / "prefect-home") | {
        "PREFECT_API_URL": base,
        "EVA02AT_PROJECT_DIR": str(project),
        "CUDA_VISIBLE_DEVICES": "",  # this worker's GPU: none
    }
    server = start("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path)
    with SyncPrefectClient(base) as client:
        wait_until(lambda: client.api_healthcheck() is None, [server], "Prefect server")

        # the worker creates its process pool, with Prefect's default job template, as `work-pool create` would
        pools = yaml.safe_load((ROOT / "prefect.yaml").read_text())["definitions"]["work_pools"]
        pool_name = pools["gpu"]["name"]
        command = [PREFECT, "worker", "start", "--pool", pool_name, "--type", "process", "--limit", "1"]
        worker = start("worker", [*command, "--name", "gpu-0"], env, project)
        wait_until(lambda: _exists(lambda: client.read_work_pool(pool_name)), [server, worker], "work pool")
        deploy = [PREFECT, "--no-prompt", "deploy", "--name", "nightly", "--params", json.dumps(TINY_RUN)]
        done = subprocess.run(deploy, env=env, cwd=project, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        deployment = client.read_deployment_by_name("retrain/nightly")
        assert [s.schedule.cron for s in deployment.schedules] == ["0 2 * * *"]
        assert deployment.parameters["metric"] == METRIC
        assert deployment.global_concurrency_limit.limit == 1

        run_id = client.create_flow_run_from_deployment(deployment.id).id

        def finished() -> FlowRun | None:
            flow_run = client.read_flow_run(run_id)
            return flow_run if flow_run.state and flow_run.state.is_final() else None

        final = wait_until(finished, [server, worker], "flow run")
        assert final.state.type == StateType.COMPLETED, logs(tmp_path)

        # the cron schedule is live: the server has queued the next nightly runs, at 02:00 UTC
        queued = FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
        )
        scheduled = wait_until(lambda: client.read_flow_runs(flow_run_filter=queued), [server], "scheduled runs")
    for flow_run in scheduled:
        start_time = flow_run.expected_start_time
        assert (start_time.utcoffset().total_seconds(), start_time.hour, start_time.minute) == (0, 2, 0)

    uri = f"sqlite:///{project / 'mlflow.db'}"
    champion = aliased_version(MODEL_NAME, "champion", uri)
    assert champion is not None and champion.version == 1, logs(tmp_path)
    assert champion.tags["prefect.flow_run"] == str(run_id)
    run = get_run(champion.run_id, uri)
    assert run.tags["retrain.decision"] == "registered"
    assert 0 < run.metrics[METRIC] <= 1 and run.params[f"overrides.{OVERRIDE[0]}"] == str(OVERRIDE[1])
    # the registered file is the experiment's fine-tuned model, the one in the checkout
    registered = Path(champion.source.removeprefix("file://")) / "model.pt"
    fine_tuned = project / "models" / "finetune" / "model.pt"
    assert champion.tags["model.md5"] == md5(registered.read_bytes()) == md5(fine_tuned.read_bytes())
    assert load_video_clip(registered).num_frames == 8
    assert run.tags["retrain.pulled"] == (
        "git pull skipped: the branch tracks no remote branch; dvc pull skipped: no default DVC remote"
    )


def _exists(read: Callable[[], Any]) -> Any:
    """``read()``, or None while the server answers that the object does not exist yet."""
    with contextlib.suppress(ObjectNotFound):
        return read()
    return None
