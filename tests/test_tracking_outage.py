"""A tracking server that is not there at the start fails the run at once, in one line naming it; one that goes
away mid-run costs no training: metrics are kept, sent when it answers again, or written beside the checkpoint
and sent by the next execution. The server is MLflow's own app, on 127.0.0.1, started and stopped here."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from eva02at.core import tracking
from eva02at.core.tracking import HTTP_LIMITS, Tracker, TrackingUnavailable, end_abandoned_runs, server_answers
from tests.processes import wait_until
from tests.project_fixtures import empty_mlflow_store

# MLflow's tracking app served by werkzeug, bound to the loopback only
SERVER = """
import os, sys
os.environ["_MLFLOW_SERVER_FILE_STORE"] = sys.argv[2]
os.environ["_MLFLOW_SERVER_ARTIFACT_ROOT"] = sys.argv[3]
from mlflow.server import app
from werkzeug.serving import make_server
make_server("127.0.0.1", int(sys.argv[1]), app, threaded=True).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """An MLflow server over a SQLite store in ``folder`` that a test stops and starts again on the same port."""

    def __init__(self, folder: Path):
        self.store, self.artifacts = folder / "mlflow.db", folder / "artifacts"
        shutil.copy(empty_mlflow_store(), self.store)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        argv = [sys.executable, "-c", SERVER, str(self.port), f"sqlite:///{self.store}", str(self.artifacts)]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: server_answers(self.uri) or self.process.poll() is not None, "the MLflow server")
        assert self.process.poll() is None, "the MLflow server did not start"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def server(tmp_path):
    found = Server(tmp_path)
    yield found
    if found.process is not None and found.process.poll() is None:
        found.stop()


def test_mlflow_http_calls_are_bounded():
    env = {k: v for k, v in os.environ.items() if k not in HTTP_LIMITS}
    probe = "import json, os, eva02at.core.tracking as t; print(json.dumps({k: os.environ[k] for k in t.HTTP_LIMITS}))"
    shown = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert json.loads(shown.stdout) == HTTP_LIMITS  # set for MLflow on import, where the environment has none


def test_a_server_that_is_not_there_fails_at_the_start_in_one_line_naming_it():
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(TrackingUnavailable, match=rf"^MLflow tracking server {uri} does not answer") as err:
        Tracker("outage", "stage", uri)
    assert "\n" not in str(err.value) and "tracking.enabled: false" in str(err.value)
    with pytest.raises(TrackingUnavailable, match=rf"server {uri} does not answer"):
        end_abandoned_runs("outage", {"dvc.stage": "stage"}, uri=uri)


def test_metrics_of_an_outage_are_kept_and_sent_when_the_server_answers_again(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(tracking, "RETRY_AFTER_S", 0.0)  # try again at every log call
    unlogged = tmp_path / "checkpoints" / "unlogged_metrics.jsonl"
    server.start()
    tracker = Tracker("outage", "stage", server.uri, unlogged=unlogged)
    tracker.log_metrics({"loss": 1.0}, step=1)
    server.stop()
    tracker.log_metrics({"loss": 2.0}, step=2)  # kept, no error: training goes on
    tracker.log_metrics({"loss": 3.0}, step=3)
    assert f"MLflow tracking server {server.uri} does not answer" in caplog.text
    server.start()
    tracker.log_metrics({"loss": 4.0}, step=4)  # sends 2, 3 and 4 in order
    client = MlflowClient(server.uri)
    assert [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "loss")] == [
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (4, 4.0),
    ]

    server.stop()
    tracker.log_metrics({"loss": 5.0}, step=5)
    with pytest.raises(TrackingUnavailable, match=rf"1 metric row\(s\) kept in {unlogged}, sent by the next"):
        tracker.end()
    assert unlogged.read_text() == '{"step": 5, "metrics": {"loss": 5.0}}\n'
    server.start()
    mlflow.end_run()  # what the failed execution's exit does to its process-wide active run
    again = Tracker("outage", "stage", server.uri, run_id=tracker.run_id, unlogged=unlogged)
    assert again.continued and not unlogged.exists()
    again.end()
    assert [m.step for m in client.get_metric_history(tracker.run_id, "loss")] == [1, 2, 3, 4, 5]
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_a_real_error_of_a_server_that_answers_is_raised_not_kept(server):
    """An invalid metric name: the server answers, so it is no outage; the row is dropped with the error."""
    server.start()
    tracker = Tracker("outage", "stage", server.uri)
    with pytest.raises(Exception, match=r"INVALID_PARAMETER_VALUE"):
        tracker.log_metrics({"bad name \x00": 1.0}, step=1)
    tracker.end()
