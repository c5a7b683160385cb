"""Flow ``reproduce``: the DVC pipeline stage by stage, each stage one Prefect task that asks DVC for it.

DVC decides what happens to a stage: unchanged deps and params skip it, inputs it has seen before restore
its outputs from the run cache, and anything else runs it. The flow adds retries with back-off, a record
of what each stage did (from DVC's state before and after, through its Python API, not from its log
text), and the final metrics, all logged to MLflow as one run named ``reproduce``. It also ends the MLflow runs
that killed stages left RUNNING, which a stage DVC does not execute again never ends itself.

Locally, from the project root: ``python -m flows.reproduce [STAGE ...]``.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dvc.repo import Repo
from dvc.stage.cache import RunCacheNotFoundError
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from eva02at.core.tracking import Tracker, read_settings
from flows.common import CommandError, close_orphaned_runs, dvc, read_metrics, run, stage_order
from stages.common import EXIT_PARAMS
from stages.lineage import git_commit

OUTCOMES = ("ran", "restored", "unchanged", "updated")
PARAMS_FAILURE = re.compile(rf", exited with {EXIT_PARAMS}$", re.MULTILINE)


def _state(target: str) -> tuple[bool, bool, set[Path]]:
    """Whether DVC finds ``target`` changed, whether it has a command, and the entries of DVC's run cache."""
    with Repo(".") as repo, repo.lock:
        (stage,) = repo.stage.collect(target)
        return stage.changed(), bool(stage.cmd), set(Path(repo.stage_cache.cache_dir).glob("*/*/*"))


def _restorable(target: str) -> bool:
    """Whether DVC's run cache can give back ``target``'s outputs as dvc.lock records them; never true for a
    stage DVC does not cache (persistent outputs, no outputs, always changed)."""
    with Repo(".") as repo, repo.lock:
        (stage,) = repo.stage.collect(target)
        try:
            repo.stage_cache.restore(stage, dry=True)
        except RunCacheNotFoundError:
            return False
        return True


def reproduce_single(target: str, bring_up_to_date: Callable[[], object]) -> str:
    """Call ``bring_up_to_date`` (``dvc repro --single-item <target>``) and say what DVC did, from DVC's state
    before and after: ``unchanged`` (nothing differed from dvc.lock), ``updated`` (a data source or import,
    verified or synced without a command), ``ran``, or ``restored`` (its outputs came from the run cache:
    DVC adds a run cache entry after every run of a stage it can cache, and none appeared)."""
    changed, has_command, entries = _state(target)
    bring_up_to_date()
    if not changed:
        return "unchanged"
    if not has_command:
        return "updated"
    if _state(target)[2] - entries or not _restorable(target):
        return "ran"
    return "restored"


def worth_retrying(task, task_run, state) -> bool:
    """Retry a failed stage unless its params do not fit: its command's exit status EXIT_PARAMS, as DVC's last
    line reports it (``failed to run: <cmd>, exited with 2``), says a rerun would fail again."""
    failure = state.data
    return not (isinstance(failure, CommandError) and PARAMS_FAILURE.search(str(failure)))


@task(cache_policy=NO_CACHE, retry_condition_fn=worth_retrying)
def repro_stage(stage: str) -> dict[str, Any]:
    """Bring one stage up to date; the stages before it in the order have been brought up to date already."""
    started = time.perf_counter()
    outcome = reproduce_single(stage, lambda: run(dvc("repro", "--single-item", stage)))
    return {"stage": stage, "outcome": outcome, "seconds": round(time.perf_counter() - started, 1)}


@task(cache_policy=NO_CACHE)
def track_summary(summary: dict[str, Any]) -> str | None:
    """Log the summary as the MLflow run ``reproduce``: outcomes as params, metrics, the whole as JSON."""
    settings = read_settings()
    tags = {"prefect.flow": "reproduce", "prefect.flow_run": str(flow_run.id), "git.commit": git_commit()}
    with Tracker(settings.experiment, "reproduce", settings.uri, enabled=settings.enabled, tags=tags) as tracker:
        by_outcome = {
            f"stages.{name}": ",".join(s["stage"] for s in summary["stages"] if s["outcome"] == name)
            for name in [*OUTCOMES, "failed"]
        }
        tracker.log_params({"targets": ",".join(summary["targets"]) or "all", **by_outcome})
        tracker.log_metrics(summary["metrics"])
        tracker.log_json(summary, "summary.json")
        tracker.set_tags({"reproduce.status": summary["status"]})
        return tracker.run_id


@flow(name="reproduce", log_prints=True)
def reproduce(
    targets: list[str] | None = None, retries: int = 2, retry_delay_s: float = 30.0, track: bool = True
) -> dict[str, Any]:
    """Reproduce the DVC pipeline stage by stage and summarise what ran, what came from DVC's cache, and
    the metrics.

    Args:
        targets: Stages to bring up to date together with everything upstream of them, named as in
            `dvc stage list` (a foreach group name such as `frames` covers all its items). Empty: all.
        retries: How many times a failed stage is retried (for transient failures: a lost node, a full
            disk being cleaned, a busy DVC lock); a stage whose params do not fit is not retried.
        retry_delay_s: Seconds before the first retry; each further retry waits twice as long.
        track: Log the summary to MLflow as a run named `reproduce`.
    """
    stages = stage_order(targets)
    print(f"stages in order: {', '.join(stages)}")
    step = repro_stage.with_options(retries=retries, retry_delay_seconds=exponential_backoff(retry_delay_s))
    results, failure = [], None
    for stage in stages:
        try:
            results.append(step(stage))
        except Exception as err:  # recorded in the summary, then raised again
            results.append({"stage": stage, "outcome": "failed", "error": str(err)[-2000:]})
            failure = err
            break
    close_orphaned_runs()
    summary = {
        "targets": list(targets or []),
        "status": "failed" if failure else "completed",
        "stages": results,
        "metrics": {} if failure else read_metrics(),
    }
    for result in results:
        print(f"{result['stage']:<32} {result['outcome']:<10} {result.get('seconds', '')}")
    if track:
        summary["mlflow_run"] = track_summary(summary)
    if failure:
        raise failure
    return summary


if __name__ == "__main__":
    reproduce(targets=sys.argv[1:] or None)
