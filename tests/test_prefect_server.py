"""End to end: a real Prefect server and process worker, on loopback, run the ``nightly`` deployment of
prefect.yaml (the ``retrain`` flow, its cron schedule included) on a tiny project, and the run registers
a model in MLflow; a cancelled ``on-demand`` run, or a local flow run sent SIGTERM, leaves no stage running.
Everything the tests start is stopped at the end, also when they fail.

The project of the nightly run is a copy of the session's tiny pipeline after its ``dvc repro``
(tests/conftest.py), so the experiment reruns only what its params override changes. The tests talk to the
server with Prefect's own client and wait on readiness (health, flow run state), failing early when a process
they wait on has exited; each wait's limit is generous and only ends a hung test: a busy machine makes it
slower, not red."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

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
from prefect.states import Cancelling

from eva02at.core.tracking import aliased_version, get_run
from eva02at.models import load_video_clip
from tests.project_fixtures import ROOT, git, make_tiny_project, md5, quiet_env
from tests.test_exposure import is_loopback, listening

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


def wait_until(ready: Callable[[], Any], needed: list[subprocess.Popen], what: str, limit: float = 1800.0) -> Any:
    """Poll ``ready`` until it returns something truthy; fail as soon as a process it needs has exited, or after
    ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not (result := ready()):
        exited = [" ".join(map(str, p.args[1:3])) for p in needed if p.poll() is not None]
        assert not exited, f"{what}: `{' | '.join(exited)}` exited"
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
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


def start_server(start: Callable[..., subprocess.Popen], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """``prefect server start`` on loopback, as README says for one machine, at ``env``'s PREFECT_API_URL; returns
    once it answers."""
    port = str(api_port(env))
    server = start("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", port], env, cwd)
    with SyncPrefectClient(env["PREFECT_API_URL"]) as client:
        wait_until(lambda: client.api_healthcheck() is None, [server], "Prefect server")
    return server


def api_port(env: dict[str, str]) -> int:
    """The port of ``env``'s PREFECT_API_URL."""
    return int(env["PREFECT_API_URL"].removesuffix("/api").rsplit(":", 1)[1])


def server_env(tmp_path: Path, project: Path) -> dict[str, str]:
    """The environment of a server on a free loopback port and of its worker, whose flow runs start in ``project``."""
    return quiet_env(tmp_path / "prefect-home") | {
        "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",
        "EVA02AT_PROJECT_DIR": str(project),
        "CUDA_VISIBLE_DEVICES": "",  # this worker's GPU: none
    }


def deploy_on_a_worker(
    start: Callable[..., subprocess.Popen],
    client: SyncPrefectClient,
    env: dict[str, str],
    project: Path,
    server: subprocess.Popen,
    name: str,
    params: dict[str, Any],
) -> tuple[subprocess.Popen, Any]:
    """Start a process worker in ``project`` (it creates its pool, with Prefect's default job template, as
    `work-pool create` would) and deploy ``name`` (``flow/deployment``) of prefect.yaml with ``params``; returns
    the worker and the deployment."""
    pools = yaml.safe_load((ROOT / "prefect.yaml").read_text())["definitions"]["work_pools"]
    pool_name = pools["gpu"]["name"]
    command = [PREFECT, "worker", "start", "--pool", pool_name, "--type", "process", "--limit", "1"]
    worker = start("worker", [*command, "--name", "gpu-0"], env, project)
    wait_until(lambda: _exists(lambda: client.read_work_pool(pool_name)), [server, worker], "work pool")
    deploy = [PREFECT, "--no-prompt", "deploy", "--name", name.split("/")[1], "--params", json.dumps(params)]
    done = subprocess.run(deploy, env=env, cwd=project, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout + done.stderr
    return worker, client.read_deployment_by_name(name)


def test_the_readmes_prefect_server_listens_on_loopback_only(tmp_path, start):
    """``prefect server start --host 127.0.0.1`` as README starts it on one machine; every socket that it and the
    processes it starts listen on, read from the kernel's tables."""
    env = server_env(tmp_path, tmp_path)
    server = start_server(start, env, tmp_path)
    family = [server.pid, *(child.pid for child in psutil.Process(server.pid).children(recursive=True))]
    sockets = listening(family)
    assert ("127.0.0.1", api_port(env)) in sockets
    assert {(host, p) for host, p in sockets if not is_loopback(host)} == set()


def test_nightly_deployment_runs_on_a_worker_and_registers_a_model(tiny_pipeline, tmp_path, start):
    project = reproduced_copy(tiny_pipeline, tmp_path / "project")
    env = server_env(tmp_path, project)
    server = start_server(start, env, tmp_path)
    with SyncPrefectClient(env["PREFECT_API_URL"]) as client:
        worker, deployment = deploy_on_a_worker(start, client, env, project, server, "retrain/nightly", TINY_RUN)
        assert [s.schedule.cron for s in deployment.schedules] == ["0 2 * * *"]
        assert deployment.parameters["metric"] == METRIC
        assert deployment.global_concurrency_limit.limit == 1

        run_id = client.create_flow_run_from_deployment(deployment.id).id
        final = wait_until(lambda: finished(client, run_id), [server, worker], "flow run")
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


def finished(client: SyncPrefectClient, run_id: UUID) -> FlowRun | None:
    """The flow run once its state is final, else None."""
    flow_run = client.read_flow_run(run_id)
    return flow_run if flow_run.state and flow_run.state.is_final() else None


BLOCK_STAGE = """\
stages:
  block:
    cmd: python block.py
    deps: [block.py]
    outs: [done.txt]
"""
# writes its pid (whole, by a rename) to a file outside the project, then blocks; no signal handler and no
# parent-death signal of its own, so it ends only when a signal is sent to it
BLOCK_SCRIPT = """\
import os, time
from pathlib import Path

Path({marker!r} + ".tmp").write_text(str(os.getpid()))
os.replace({marker!r} + ".tmp", {marker!r})
while True:
    time.sleep(1)
"""
BLOCK_TARGET = "block/dvc.yaml:block"


def blocking_project(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny project with a stage that blocks (``BLOCK_TARGET``); returns it and the file the stage's pid goes to."""
    project, marker = make_tiny_project(tmp_path / "project", with_candidate=False), tmp_path / "stage.pid"
    (project / "block").mkdir()
    (project / "block" / "dvc.yaml").write_text(BLOCK_STAGE)
    (project / "block" / "block.py").write_text(BLOCK_SCRIPT.format(marker=str(marker)))
    return project, marker


def stage_and_starters(marker: Path, root: int, needed: list[subprocess.Popen]) -> list[psutil.Process]:
    """Once the blocking stage runs: it and the processes between ``root`` (excluded) and it (a flow run,
    ``dvc repro``, a shell)."""
    pid = int(wait_until(lambda: marker.is_file() and marker.read_text(), needed, "the stage to start"))
    chain = [psutil.Process(pid)]
    while chain[-1].ppid() != root:
        chain.append(chain[-1].parent())
        assert chain[-1] is not None and chain[-1].pid != 1, "the stage does not descend from the process started"
    return chain


def running(process: psutil.Process) -> bool:
    """Whether ``process`` (that very process, not a later one with its pid) runs; a zombie has ended."""
    with contextlib.suppress(psutil.NoSuchProcess):
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    return False


def assert_all_end(family: list[psutil.Process], needed: list[subprocess.Popen]) -> None:
    """Wait for every process of ``family`` to end; SIGKILL to those still running if they do not (clean-up)."""
    try:
        wait_until(
            lambda: not any(map(running, family)),
            needed,
            "the stage, `dvc repro` and the flow run to end",
            limit=300,
        )
    finally:
        for member in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()


def test_a_cancelled_flow_run_leaves_no_stage_running(tmp_path, start):
    project, marker = blocking_project(tmp_path)
    env = server_env(tmp_path, project)
    server = start_server(start, env, tmp_path)
    with SyncPrefectClient(env["PREFECT_API_URL"]) as client:
        params = {"targets": [BLOCK_TARGET], "retries": 0, "track": False}
        worker, deployment = deploy_on_a_worker(start, client, env, project, server, "reproduce/on-demand", params)
        run_id = client.create_flow_run_from_deployment(deployment.id).id
        family = stage_and_starters(marker, worker.pid, [server, worker])
        client.set_flow_run_state(run_id, Cancelling())  # what `prefect flow-run cancel` and the UI ask for
        final = wait_until(lambda: finished(client, run_id), [server, worker], "the flow run to end")
        assert final.state.type == StateType.CANCELLED, logs(tmp_path)
        assert_all_end(family, [server, worker])
    assert not (project / "block" / "done.txt").exists()


def test_sigterm_to_a_local_flow_run_ends_its_stage(tmp_path, start):
    project, marker = blocking_project(tmp_path)
    env = server_env(tmp_path, project)
    server = start_server(start, env, tmp_path)
    flow = start("flow", [sys.executable, "-m", "flows.reproduce", BLOCK_TARGET], env, project)
    family = stage_and_starters(marker, flow.pid, [server, flow])
    flow.send_signal(signal.SIGTERM)  # a local run is stopped by a signal: without a worker, nothing acts on a cancel
    assert_all_end([psutil.Process(flow.pid), *family], [server])
    assert flow.wait(timeout=60) != 0


def _exists(read: Callable[[], Any]) -> Any:
    """``read()``, or None while the server answers that the object does not exist yet."""
    with contextlib.suppress(ObjectNotFound):
        return read()
    return None
