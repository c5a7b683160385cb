"""MLflow tracking: the only module that imports MLflow. One run per stage execution, rank 0 only.

A run records the params, per-step metrics, the final checkpoint and resolved config as artifacts, and
lineage tags given by the caller (git commit, pipeline stage, dependency hashes). Queries return plain
records (``RunRecord``, ``ModelVersion``) so that callers never handle MLflow objects.

A training run interrupted and resumed is one MLflow run: the resumed execution continues the run whose id
its checkpoint holds (``Tracker(run_id=...)``), and runs that a killed execution left RUNNING are marked
KILLED when the stage starts again (``end_abandoned_runs``). Every run records the process that writes it
(tags ``process.host``, ``process.pid``, ``process.start``), so that a run whose process is gone without
ending it (``kill -9``, the kernel's out-of-memory killer) is marked KILLED by the next tracker of that run
name on its host, or by the flows after ``dvc repro`` (``end_orphaned_runs``): DVC may serve the rerun from its
run cache, never executing the stage.

Outages of a tracking server (an ``http(s)://`` URI): MLflow's HTTP timeout and retries are bounded here
(``HTTP_LIMITS``; the environment overrides them), a stage that cannot reach the server at its start fails
within seconds with one line naming the URI (``TrackingUnavailable``), and metrics logged while the server is
gone mid-run are kept and sent when it answers again; those still unsent when the run ends are written to the
tracker's ``unlogged`` file and sent by the next execution that continues the run. The outage handling is
written here because MLflow's client has none: it retries each call, then raises.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eva02at.core.atomic import atomic_path, write_text
from eva02at.core.config import ConfigError, from_dict, read_params
from eva02at.core.errors import MissingInput, PipelineError, Stopped

log = logging.getLogger(__name__)
DEFAULT_URI = "sqlite:///mlflow.db"
# MLflow reports usage unless told not to; set before MLflow is first imported (always from here), so that
# neither a stage nor anything it starts does.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# MLflow's defaults (120 s per request, 7 retries with doubling back-off) block a call for minutes when the
# server is gone; these bound one call to about 30 s on a hung server and a few seconds on a refused one.
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}
for _name, _value in HTTP_LIMITS.items():
    os.environ.setdefault(_name, _value)
HEALTH_TIMEOUT_S = 5.0  # for the one request that checks a server is there
RETRY_AFTER_S = 60.0  # after a failed send, buffered metrics wait this long before the next try
ORPHAN_REASON = "end.reason"  # the tag that says why a run was ended by another process


class TrackingUnavailable(PipelineError):
    """The tracking server does not answer; the message names its URI and what to do."""


def server_answers(uri: str) -> bool:
    """Whether the tracking store at ``uri`` is there: a local store always is; a server must answer an HTTP
    request (any status) within HEALTH_TIMEOUT_S."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S):
            return True
    except urllib.error.HTTPError:  # it answered, with an error status (e.g. authentication)
        return True
    except (OSError, ValueError):
        return False


def require_server(uri: str) -> None:
    """Fail in one line naming ``uri`` when its server does not answer (before any MLflow call could block)."""
    if not server_answers(uri):
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} does not answer within {HEALTH_TIMEOUT_S:.0f} s: start it, point "
            "MLFLOW_TRACKING_URI (or tracking.uri in params.yaml) at one that answers, or set tracking.enabled: false"
        )


def tracking_uri(configured: str | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set (deployments point workers at a server), else params, else local SQLite."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or DEFAULT_URI


@dataclass(frozen=True)
class TrackingParams:
    """The ``tracking`` section of params.yaml: every key required, its defaults written there (where DVC sees
    them), so that a deleted or mis-indented section is refused rather than replaced by defaults."""

    experiment: str
    uri: str | None  # MLFLOW_TRACKING_URI overrides it; sqlite:///mlflow.db when both are null/unset
    enabled: bool


def read_settings(params_file: str | Path = "params.yaml") -> TrackingParams:
    """The tracking settings of a params file, read as the stages read it; a missing file, section or key is a
    one-line ConfigError naming it."""
    params = read_params(params_file)
    if "tracking" not in params:
        raise ConfigError(f"{params_file}: no 'tracking' section (required: experiment, uri and enabled)")
    return from_dict(TrackingParams, params["tracking"], f"{params_file}: tracking")


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested params or metrics under flat dotted names (``finetuned.ek100_mir.mAP_avg``), the names MLflow,
    ``dvc exp show`` and ``eva02at compare`` use; the leaves are kept as they are."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        flat.update(flatten(value, f"{name}.") if isinstance(value, dict) else {name: value})
    return flat


class Tracker:
    """An MLflow run, or nothing at all when ``enabled`` is false (non-zero ranks, tracking switched off).

    With ``run_id`` the run of an earlier, interrupted execution is continued (set RUNNING again, ``tags``
    added); a run that this store does not have, or cannot continue, is replaced by a new one, with a warning.
    Metrics the server does not take (an outage) are kept and sent with the next ones; ``unlogged`` is the file
    that receives those still unsent when the run ends, and whose rows a later tracker sends first.
    Runs of ``run_name`` that exited processes on this host left RUNNING are marked KILLED first (except
    ``run_id``), and the run records this process (``process_tags``).
    """

    def __init__(
        self,
        experiment: str,
        run_name: str,
        uri: str | None = None,
        enabled: bool = True,
        tags: dict[str, str] | None = None,
        run_id: str | None = None,
        unlogged: Path | None = None,
    ):
        self.enabled = enabled
        self.run_id: str | None = None
        self.continued = False
        self.uri = tracking_uri(uri)
        self.unlogged = unlogged
        self._pending: list[tuple[dict[str, float], int | None]] = []  # metrics the server has not taken yet
        self._retry_at: float | None = None  # set while the server is out
        if not enabled:
            return
        require_server(self.uri)
        import mlflow

        self._mlflow = mlflow
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(experiment)
        ended = end_orphaned_runs(experiment, self.uri, run_name=run_name, keep=run_id)
        if ended:
            log.warning("marked MLflow run(s) %s of exited %s processes as KILLED", ended, run_name)
        tags = {**(tags or {}), **process_tags()}
        run = self._continue(run_id, run_name, tags) if run_id else None
        self.continued = run is not None
        run = run or mlflow.start_run(run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        self._send_unlogged()

    def _send_unlogged(self) -> None:
        """Send the rows an earlier execution could not, then remove their file."""
        if self.unlogged is None or not self.unlogged.is_file():
            return
        rows = [json.loads(line) for line in self.unlogged.read_text().splitlines() if line]
        for row in rows:
            self._mlflow.log_metrics(row["metrics"], step=row["step"])
        self.unlogged.unlink()
        log.info(
            "sent %d metric row(s) of an earlier execution from %s to run %s", len(rows), self.unlogged, self.run_id
        )

    def _continue(self, run_id: str, run_name: str, tags: dict[str, str]):
        from mlflow.exceptions import MlflowException

        try:
            return self._mlflow.start_run(run_id=run_id, run_name=run_name, tags=tags)
        except MlflowException as err:
            log.warning("cannot continue MLflow run %s (%s); starting a new run", run_id, err.message)
            return None

    def log_params(self, params: dict[str, Any]) -> None:
        """Log ``params``; on a continued run, only those it lacks (MLflow never changes a logged param), and
        any value that changed on resuming (an execution-only knob) as a ``resumed.<key>`` tag."""
        if not self.enabled:
            return
        flat = {key: str(value)[:6000] for key, value in flatten(params).items()}  # MLflow's length limit
        logged = self._mlflow.get_run(self.run_id).data.params if self.continued else {}
        keys = sorted(k for k in flat if k not in logged)
        for start in range(0, len(keys), 100):  # MLflow accepts at most 100 params per batch
            self._mlflow.log_params({k: flat[k] for k in keys[start : start + 100]})
        changed = {f"resumed.{k}": v for k, v in flat.items() if k in logged and logged[k] != v}
        if changed:
            self._mlflow.set_tags(changed)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Send ``metrics``, after any the server did not take; during an outage they are kept, and sends are
        tried again RETRY_AFTER_S later, so that training goes on at its pace."""
        if self.enabled:
            self._pending.append(({k: float(v) for k, v in metrics.items()}, step))
            self._send_pending()

    def _send_pending(self, now: bool = False) -> bool:
        """Send the kept metrics in order; False when the server is out (then they stay kept)."""
        if not now and self._retry_at is not None and time.monotonic() < self._retry_at:
            return False
        sent = 0
        try:
            while self._pending:
                metrics, step = self._pending[0]
                self._mlflow.log_metrics(metrics, step=step)
                self._pending.pop(0)
                sent += 1
        except Exception as err:
            if server_answers(self.uri):  # not an outage: a real error, of this row
                self._pending.pop(0)
                raise
            if self._retry_at is None:
                log.warning(
                    "MLflow tracking server %s does not answer (%s); metrics are kept and sent when it answers again",
                    self.uri,
                    type(err).__name__,
                )
            self._retry_at = time.monotonic() + RETRY_AFTER_S
            return False
        if self._retry_at is not None:
            log.info("MLflow tracking server %s answers again: %d kept metric row(s) sent", self.uri, sent)
            self._retry_at = None
        return True

    def _keep_unsent(self) -> Path | None:
        """Write the metrics still unsent to ``unlogged`` (after rows already there); its path, or None."""
        if not self._pending or self.unlogged is None:
            return None
        old = self.unlogged.read_text() if self.unlogged.is_file() else ""
        rows = "".join(json.dumps({"step": step, "metrics": metrics}) + "\n" for metrics, step in self._pending)
        write_text(self.unlogged, old + rows)
        return self.unlogged

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.enabled:
            self._mlflow.set_tags(tags)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            try:
                self._mlflow.log_artifact(str(path), artifact_path)
            except Exception as err:
                if server_answers(self.uri):
                    raise
                raise TrackingUnavailable(
                    f"MLflow tracking server {self.uri} went away: {path} not logged to run {self.run_id}; "
                    "the stage's outputs are written: rerun it when the server answers (it resumes at its last step)"
                ) from err

    def log_json(self, data: Any, name: str) -> None:
        if self.enabled:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / name
                path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
                self._mlflow.log_artifact(str(path))

    def end(self, failed: bool = False, killed: bool = False) -> None:
        """End the run (``killed``: told to stop); metrics the server still does not take go to ``unlogged``
        and, unless the run already failed, a TrackingUnavailable says where (the run stays RUNNING until a
        rerun continues it)."""
        if not (self.enabled and self._mlflow.active_run() is not None):
            return
        if not self._send_pending(now=True):
            kept = self._keep_unsent()
            where = f"kept in {kept}, sent by the next execution" if kept else "lost"
            message = f"MLflow tracking server {self.uri} does not answer: {len(self._pending)} metric row(s) {where}"
            if failed or killed:
                log.warning("%s", message)
                return
            raise TrackingUnavailable(f"{message}; rerun the stage when the server answers")
        self._mlflow.end_run(status="KILLED" if killed else "FAILED" if failed else "FINISHED")

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        killed = exc_type is not None and issubclass(exc_type, Stopped | KeyboardInterrupt)
        self.end(failed=exc_type is not None, killed=killed)


@dataclass(frozen=True)
class RunRecord:
    """One MLflow run as plain data, so that tables and comparisons need no MLflow objects."""

    run_id: str
    name: str
    status: str
    start_time: int  # milliseconds since the epoch
    params: dict[str, str]
    metrics: dict[str, float]  # the last logged value of each metric
    tags: dict[str, str]


@dataclass(frozen=True)
class ModelVersion:
    """One version of a registered model, with the run that produced it and its lineage tags."""

    name: str
    version: int
    run_id: str | None
    source: str
    tags: dict[str, str]
    aliases: tuple[str, ...]


def _client(uri: str | None):
    from mlflow import MlflowClient

    resolved = tracking_uri(uri)
    require_server(resolved)
    return MlflowClient(tracking_uri=resolved, registry_uri=resolved)


def _record(run) -> RunRecord:
    return RunRecord(
        run_id=run.info.run_id,
        name=run.info.run_name or "",
        status=run.info.status,
        start_time=run.info.start_time or 0,
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        tags={k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
    )


def _running_runs(client, experiment: str, run_name: str | None = None) -> list:
    """Every RUNNING run of ``experiment`` (of ``run_name`` only, when given), all pages read first: ending runs
    while paging would shift the pages."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs(
            [found.experiment_id], "attributes.status = 'RUNNING'", max_results=1000, page_token=token
        )
        runs += [run for run in page if run_name is None or run.info.run_name == run_name]
        token = page.token
        if not token:
            return runs


def end_abandoned_runs(
    experiment: str, tags: dict[str, str], keep: str | None = None, uri: str | None = None
) -> list[str]:
    """Mark KILLED every RUNNING run of ``experiment`` whose tags include all of ``tags`` (e.g. one stage on
    one checkpoint on one host), except ``keep``: runs of executions that were killed before they could end
    them. Returns their ids."""
    client = _client(uri)
    abandoned = [
        run.info.run_id
        for run in _running_runs(client, experiment)
        if run.info.run_id != keep and all(run.data.tags.get(k) == v for k, v in tags.items())
    ]
    for run_id in abandoned:
        client.set_terminated(run_id, status="KILLED")
    return abandoned


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks after boot (``/proc/<pid>/stat``), which tells it from a later
    process given the same pid; None once it has exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the fields after the command name, from the state on
    return None if fields[0] in ("Z", "X") else fields[19]


def process_tags() -> dict[str, str]:
    """The tags that name this process: the host, the pid and its start (see ``end_orphaned_runs``)."""
    pid, start = os.getpid(), process_start(os.getpid())
    return {"process.host": socket.gethostname(), "process.pid": str(pid)} | ({"process.start": start} if start else {})


def end_orphaned_runs(
    experiment: str, uri: str | None = None, run_name: str | None = None, keep: str | None = None
) -> list[str]:
    """Mark KILLED the RUNNING runs of ``experiment`` (of ``run_name`` only, when given; never ``keep``) whose
    process, on this host, is gone: killed before it could end its run (``kill -9``, out of memory). Each gets
    the tag ``end.reason``. Runs of other hosts, of live processes and without process tags (written elsewhere
    than on Linux, or before these tags) are left alone. Returns the ids of the runs ended."""
    client = _client(uri)
    orphans = [run for run in _running_runs(client, experiment, run_name) if run.info.run_id != keep and _orphaned(run)]
    for run in orphans:
        reason = f"process {run.data.tags['process.pid']} on {socket.gethostname()} exited without ending the run"
        client.set_tag(run.info.run_id, ORPHAN_REASON, reason)
        client.set_terminated(run.info.run_id, status="KILLED")
    return [run.info.run_id for run in orphans]


def _orphaned(run) -> bool:
    """Whether the run's tags name a process of this host that is gone (a new process with its pid is not it)."""
    tags = run.data.tags
    pid, start = tags.get("process.pid", ""), tags.get("process.start")
    if tags.get("process.host") != socket.gethostname() or not (pid.isdigit() and start):
        return False
    return process_start(int(pid)) != start


def find_runs(experiment: str, uri: str | None = None) -> list[RunRecord]:
    """Every run of ``experiment``, newest first (all pages of MLflow's search)."""
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise MissingInput(f"no MLflow experiment {experiment!r} at {tracking_uri(uri)}")
    runs: list[RunRecord] = []
    token = None
    while True:
        page = client.search_runs(
            [found.experiment_id], max_results=1000, order_by=["attributes.start_time DESC"], page_token=token
        )
        runs += [_record(run) for run in page]
        token = page.token
        if not token:
            return runs


def get_run(run_id: str, uri: str | None = None) -> RunRecord:
    return _record(_client(uri).get_run(run_id))


def metric_history(run_id: str, key: str, uri: str | None = None) -> list[tuple[int, float]]:
    """Every logged value of metric ``key`` of a run, as (step, value) in step order."""
    return sorted((m.step, m.value) for m in _client(uri).get_metric_history(run_id, key))


def _version(found) -> ModelVersion:
    return ModelVersion(
        name=found.name,
        version=int(found.version),
        run_id=found.run_id or None,
        source=found.source,
        tags=dict(found.tags),
        aliases=tuple(found.aliases),
    )


def aliased_version(model_name: str, alias: str, uri: str | None = None) -> ModelVersion | None:
    """The version of ``model_name`` that ``alias`` points at; None when the model or the alias is absent."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    try:
        model = client.get_registered_model(model_name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = model.aliases.get(alias)
    return None if version is None else _version(client.get_model_version(model_name, str(version)))


def register_model(
    model_name: str,
    path: str | Path,
    run_id: str,
    tags: dict[str, str],
    alias: str,
    uri: str | None = None,
) -> ModelVersion:
    """Upload the file ``path`` into the run's artifacts (``model/``), add it as a new version of
    ``model_name`` (created on first use) with ``tags``, and move ``alias`` to that version.

    The file is copied into the run, so the registry serves it to every machine that shares the server.
    """
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    client.log_artifact(run_id, str(path), "model")
    try:
        client.create_registered_model(model_name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/model"
    created = client.create_model_version(model_name, source, run_id=run_id, tags=tags)
    client.set_registered_model_alias(model_name, alias, created.version)
    return _version(client.get_model_version(model_name, created.version))


def download_version(version: ModelVersion, folder: str | Path, uri: str | None = None) -> Path:
    """The file of a registered version (the one file ``register_model`` uploaded) in ``folder``, downloaded
    unless it is there already: a version never changes, so a file found there is that version's. The folder
    is filled beside its place and moved in whole, so an interrupted download leaves nothing behind."""
    from mlflow.artifacts import download_artifacts

    folder = Path(folder)
    found = sorted(folder.iterdir()) if folder.is_dir() else []
    if len(found) == 1 and found[0].is_file():
        return found[0]
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as download, atomic_path(folder, directory=True) as tmp:
        local = Path(download_artifacts(artifact_uri=version.source, dst_path=download, tracking_uri=tracking_uri(uri)))
        files = [path for path in local.rglob("*") if path.is_file()] if local.is_dir() else [local]
        if len(files) != 1:
            raise MissingInput(f"{version.name} v{version.version}: expected one model file at {version.source}")
        os.replace(files[0], tmp / files[0].name)
    return folder / files[0].name
