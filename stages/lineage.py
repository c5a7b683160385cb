"""What a stage's MLflow run records about where it came from: the git commit, the DVC stage and its
dependencies' hashes, and the one helper that opens a stage's run with them."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from eva02at.core.tracking import Tracker, end_abandoned_runs, read_settings

CODE_AND_CONFIG = ("src", "stages", "flows", "dvc.yaml", "params.yaml", "pyproject.toml")


def git_commit() -> str:
    """The checked-out commit, with ``-dirty`` when code or configuration differ from it; ``unknown`` outside git.

    Results tracked in git (``dvc.lock``, metrics, plots) do not count: a ``dvc repro`` rewrites them.
    """
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_AND_CONFIG],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def dependency_hashes(stage: str) -> dict[str, str]:
    """DVC's hash of every dependency of ``stage`` now, the same values ``dvc.lock`` records for this run.

    Computed with DVC's own hashing at the start of the stage (``dvc.lock`` is only written after it ends).
    Empty outside a DVC project.
    """
    try:
        from dvc.repo import Repo

        with Repo(".") as repo:
            (dvc_stage,) = repo.stage.collect(stage)
            hashes = {dep.def_path: dep.get_hash().value for dep in dvc_stage.deps if dep.exists}
            return {path: value for path, value in hashes.items() if isinstance(value, str)}  # params are logged apart
    except Exception as err:  # lineage is informative; its absence must not stop training
        logging.getLogger(__name__).warning("no DVC lineage for stage %s: %s", stage, err)
        return {}


def lineage_tags(stage: str) -> dict[str, str]:
    """MLflow tags linking a run to its code and data: git commit, DVC stage and dependency hashes."""
    tags = {"dvc.stage": stage, "git.commit": git_commit()}
    tags.update({f"dvc.dep.{path}": value for path, value in dependency_hashes(stage).items()})
    return tags


def stage_run(
    stage: str,
    params_file: str | Path,
    lead: bool = True,
    tags: dict[str, str] | None = None,
    execution: dict[str, str] | None = None,
    run_id: str | None = None,
    unlogged: Path | None = None,
    lineage: dict[str, str] | None = None,
) -> Tracker:
    """The MLflow run of one execution of ``stage``: tagged with its lineage (``lineage_tags``), ``tags`` and
    ``execution``, or a tracker that records nothing where ``tracking.enabled`` is off and on every process but
    the ``lead`` one.

    ``execution`` names what one execution owns (its stage, output or checkpoint folder, host): RUNNING runs
    with those tags, except ``run_id``, belong to executions killed before they could end them (DVC runs one
    execution of a stage at a time) and are marked KILLED first. ``run_id`` continues that run (a resumed
    training); ``unlogged`` is where metrics a tracking outage kept back wait for it; ``lineage`` is
    ``lineage_tags(stage)`` where the caller has computed it already (hashing the dependencies takes time).
    """
    tracking = read_settings(params_file)
    if not (lead and tracking.enabled):
        return Tracker(tracking.experiment, stage, enabled=False)
    if execution:
        ended = end_abandoned_runs(tracking.experiment, execution, keep=run_id, uri=tracking.uri)
        if ended:
            logging.getLogger(__name__).warning(
                "marked MLflow run(s) %s of killed %s executions as KILLED", ended, stage
            )
    all_tags = {**(lineage or lineage_tags(stage)), **(tags or {}), **(execution or {})}
    return Tracker(tracking.experiment, stage, tracking.uri, tags=all_tags, run_id=run_id, unlogged=unlogged)
