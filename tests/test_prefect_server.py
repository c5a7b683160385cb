"""End to end: a real Prefect server and process worker, on loopback, run the ``nightly`` deployment of
prefect.yaml (the ``retrain`` flow, its cron schedule included) on a tiny project, and the run registers
a model in MLflow. Everything the test starts is stopped at the end, also when it fails."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from eva02at.models import load_video_clip
from eva02at.tracking import aliased_version, get_run
from tests.project_fixtures import ROOT, empty_mlflow_store, make_tiny_project, md5, quiet_env

pytestmark = pytest.mark.slow

PREFECT = str(Path(sys.executable).parent / "prefect")
MODEL_NAME = "eva02at-ek100-mir"
METRIC = "finetuned.ek100_mir.mAP_avg"
TINY_RUN = {"overrides": {"finetune.optim.lr": 1.0e-4}, "retries": 0}  # the whole tiny pipeline, default metric
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, whatever the env says


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api(base: str, method: str, path: str, body: Any = None, attempts: int = 5) -> Any:
    """One call of the server's REST API; like Prefect's own client, a busy server's 429/502/503 is retried."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    for attempt in range(attempts):
        try:
            with NO_PROXY.open(request, timeout=15) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            if err.code not in (429, 502, 503) or attempt == attempts - 1:
                raise
            time.sleep(2**attempt)


def wait_for(check: Callable[[], Any], seconds: float, what: str) -> Any:
    """Poll ``check`` until it returns something truthy; connection errors count as not yet."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{what} not ready after {seconds} s")


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


def test_nightly_deployment_runs_on_a_worker_and_registers_a_model(tmp_path, start, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = make_tiny_project(tmp_path / "project", with_candidate=False)
    port = free_port()
    base = f"http://127.0.0.1:{port}/api"
    env = quiet_env(tmp_path / "prefect-home") | {
        "PREFECT_API_URL": base,
        "EVA02AT_PROJECT_DIR": str(project),
        "CUDA_VISIBLE_DEVICES": "",  # this worker's GPU: none
    }
    with ThreadPoolExecutor(1) as pool:  # MLflow builds its tables while the server starts
        store = pool.submit(empty_mlflow_store)
        start("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path)
        wait_for(lambda: api(base, "GET", "/health"), 120, "Prefect server")
        shutil.copy(store.result(), project / "mlflow.db")

    # the worker creates its process pool, with Prefect's default job template, as `work-pool create` would
    pool_name = yaml.safe_load((ROOT / "prefect.yaml").read_text())["definitions"]["work_pools"]["gpu"]["name"]
    worker = [PREFECT, "worker", "start", "--pool", pool_name, "--type", "process", "--limit", "1", "--name", "gpu-0"]
    start("worker", worker, env, project)
    wait_for(lambda: api(base, "GET", f"/work_pools/{pool_name}"), 60, "work pool")
    deploy = [PREFECT, "--no-prompt", "deploy", "--name", "nightly", "--params", json.dumps(TINY_RUN)]
    done = subprocess.run(deploy, env=env, cwd=project, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    deployment = api(base, "GET", "/deployments/name/retrain/nightly")
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 2 * * *"]
    assert deployment["parameters"]["metric"] == METRIC
    assert deployment["global_concurrency_limit"]["limit"] == 1

    run_id = api(base, "POST", f"/deployments/{deployment['id']}/create_flow_run", {})["id"]

    def finished() -> dict | None:
        flow_run = api(base, "GET", f"/flow_runs/{run_id}")
        return flow_run if flow_run["state_type"] in TERMINAL else None

    final = wait_for(finished, 900, "flow run")
    assert final["state_type"] == "COMPLETED", logs(tmp_path)

    uri = f"sqlite:///{project / 'mlflow.db'}"
    champion = aliased_version(MODEL_NAME, "champion", uri)
    assert champion is not None and champion.version == 1, logs(tmp_path)
    assert champion.tags["prefect.flow_run"] == run_id
    run = get_run(champion.run_id, uri)
    assert run.tags["retrain.decision"] == "registered"
    assert 0 < run.metrics[METRIC] <= 1 and run.params["overrides.finetune.optim.lr"] == "0.0001"
    # the registered file is the experiment's fine-tuned model: its md5 is the one dvc.lock recorded
    (registered,) = (project / "mlruns").rglob("model/model.pt")
    assert champion.tags["model.md5"] == md5(registered.read_bytes())
    assert load_video_clip(registered).num_frames == 8
    assert run.tags["retrain.pulled"] == (
        "git pull skipped: the branch tracks no remote branch; dvc pull skipped: no default DVC remote"
    )

    # the cron schedule is live: the server has queued the next nightly runs, at 02:00 UTC
    query = {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}, "state": {"type": {"any_": ["SCHEDULED"]}}}}
    scheduled = wait_for(lambda: api(base, "POST", "/flow_runs/filter", query), 30, "scheduled runs")
    for flow_run in scheduled:
        start_time = datetime.fromisoformat(flow_run["expected_start_time"])
        assert (start_time.utcoffset().total_seconds(), start_time.hour, start_time.minute) == (0, 2, 0)
