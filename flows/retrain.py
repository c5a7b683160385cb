"""Flow ``retrain``, the scheduled job: bring code and data up to date, run the pipeline as a DVC
experiment with params overrides, and register the fine-tuned model in MLflow's model registry only
when it beats the champion.

The champion is the version of the registered model that the alias ``champion`` points at; the MLflow
run that registered it holds the metrics it was judged by. Every execution logs one MLflow run, named
after its DVC experiment and tagged ``prefect.flow=retrain``, whose tags ``retrain.decision`` and
``retrain.reason`` say what happened to the candidate and why.

Compatibility with the champion (README, Compatible retraining): the champion's file is downloaded from the
registry (``<champions>/<model>/v<N>/``, a path per version, so DVC sees a new champion as a changed param) and
brought into the experiment by params overrides: exported as model ``champion`` and compared with the candidate
by the evaluation's cross-model rows, and, with ``train_compatible``, fine-tuned against. The run records the
criterion's verdict (tags ``retrain.compatible``, ``retrain.compatibility``; metrics ``compatibility.*``), a
registered version that passed it carries the tag ``compatible_with`` (the champion's version), and
``require_compatible`` promotes only such candidates.

A checkout that was clean when the flow started is clean again when it ends: the experiment lives on in
DVC (``dvc exp show``, ``dvc exp apply NAME``), so the next scheduled run pulls and starts from HEAD.

Locally, from the project root: ``python -m flows.retrain [KEY=VALUE ...]`` (params overrides).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dvc.repo import Repo
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from eva02at.core.config import parse_yaml
from eva02at.core.digest import file_digest
from eva02at.core.tracking import (
    ModelVersion,
    Tracker,
    aliased_version,
    download_version,
    get_run,
    read_settings,
    register_model,
)
from flows.common import close_orphaned_runs, dvc, query, read_metrics, run
from stages.lineage import git_commit

DEFAULT_METRIC = "finetuned.ek100_mir.mAP_avg"
ALIAS = "champion"
CHAMPION_MODEL = "champion"  # the champion's name among the experiment's export models
CANDIDATE_MODEL = "finetuned"  # the export model that is the candidate (the file at model_path)
CRITERION = "compatibility.criterion"  # the evaluation's compatibility criterion (metrics under this name)


@dataclass(frozen=True)
class Decision:
    register: bool
    reason: str


@dataclass(frozen=True)
class Compatibility:
    """Whether the candidate's queries may search the champion's galleries, as the experiment measured it."""

    compatible: bool | None  # None: not measured (no champion, or the experiment did not evaluate it)
    reason: str

    @property
    def tag(self) -> str:
        return {True: "yes", False: "no", None: "unknown"}[self.compatible]


def compatibility(metrics: dict[str, float], champion: int | None) -> Compatibility:
    """The verdict of the evaluation's criterion on champion version ``champion``, read from the metrics."""
    if champion is None:
        return Compatibility(None, "no champion to be compatible with")
    prefix = f"{CRITERION}."
    found = {key.removeprefix(prefix): value for key, value in metrics.items() if key.startswith(prefix)}
    if "compatible" not in found:
        return Compatibility(None, f"the experiment did not measure compatibility with champion v{champion}")
    compatible = found["compatible"] == 1.0
    cross = min(found["new_text_old_video"], found["old_text_new_video"])
    return Compatibility(
        compatible,
        f"cross-model {cross:.4g} {'>=' if compatible else '<'} champion v{champion}'s own {found['old_old']:.4g} "
        f"(candidate's own {found['new_new']:.4g})",
    )


def decide(
    metric: str,
    value: float | None,
    model: Path,
    champion: int | None,
    champion_value: float | None,
    compatible: Compatibility | None = None,
    require_compatible: bool = False,
) -> Decision:
    """Register the candidate only if it has the metric, a model file, and a strictly higher value than
    champion version ``champion`` (any value wins when there is no champion or it lacks the metric); with
    ``require_compatible``, only if it is also ``compatible`` with that champion."""
    if value is None or math.isnan(value):
        return Decision(False, f"the experiment produced no value for metric {metric!r}")
    if not model.is_file():
        return Decision(False, f"the experiment produced no model file {model}")
    if champion is None:
        return Decision(True, f"{metric}={value:.6g} and no champion yet")
    if require_compatible and not (compatible and compatible.compatible):
        why = compatible.reason if compatible else "not measured"
        return Decision(False, f"not compatible with champion v{champion}, which promotion requires: {why}")
    if champion_value is None or math.isnan(champion_value):
        return Decision(True, f"{metric}={value:.6g}; champion v{champion} has no value for it")
    if value > champion_value:
        return Decision(True, f"{metric}={value:.6g} beats champion v{champion} ({champion_value:.6g})")
    return Decision(False, f"{metric}={value:.6g} does not beat champion v{champion} ({champion_value:.6g})")


def is_clean() -> bool:
    """True when no tracked file differs from HEAD."""
    return not query(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip()


@task(cache_policy=NO_CACHE)
def pull_code(clean: bool) -> str:
    """``git pull --ff-only`` when the branch tracks a remote branch; otherwise the reason it was skipped."""
    upstream = query(["git", "rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{u}"])
    if upstream.returncode:
        done = "git pull skipped: the branch tracks no remote branch"
    elif not clean:
        done = "git pull skipped: tracked files have uncommitted changes"
    else:
        run(["git", "pull", "--ff-only"])
        done = f"git pull from {upstream.stdout.strip()}"
    get_run_logger().info("%s", done)
    return done


@task(cache_policy=NO_CACHE)
def pull_data() -> str:
    """``dvc pull`` from the default DVC remote, if one is configured; otherwise the reason it was skipped."""
    with Repo(".") as repo:
        remote = repo.config["core"].get("remote")
    if remote:
        run(dvc("pull", "--allow-missing"))  # what the remote lacks, the experiment rebuilds
        done = f"dvc pull from {remote}"
    else:
        done = "dvc pull skipped: no default DVC remote"
    get_run_logger().info("%s", done)
    return done


@task(cache_policy=NO_CACHE)
def fetch_champion(model_name: str, champions: str) -> tuple[ModelVersion | None, Path | None]:
    """The champion version and its model file, downloaded from the registry into ``<champions>/<model>/v<N>``;
    (None, None) when there is no champion yet."""
    settings = read_settings()
    champion = aliased_version(model_name, ALIAS, settings.uri)
    if champion is None:
        get_run_logger().info("no champion of %s yet: nothing to be compatible with", model_name)
        return None, None
    path = download_version(champion, Path(champions) / model_name / f"v{champion.version}", settings.uri)
    get_run_logger().info("champion %s v%d: %s", model_name, champion.version, path)
    return champion, path


def champion_overrides(path: Path, train_compatible: bool) -> dict[str, Any]:
    """Params that bring the champion's file into the experiment: exported as model ``champion`` (``++`` adds
    the key), compared with the candidate by the evaluation, and with ``train_compatible`` fine-tuned against
    in the form that meets the criterion from a new start (README, Compatible retraining): rotated onto the
    champion's space first, then the cross-model term with the alignment of each item."""
    overrides: dict[str, Any] = {
        f"++export.models.{CHAMPION_MODEL}": str(path),
        "evaluate.compatibility": {"old": CHAMPION_MODEL, "new": CANDIDATE_MODEL},
    }
    if train_compatible:
        overrides["finetune.compatible_with"] = str(path)
        overrides["finetune.compatibility_init"] = "procrustes"
        overrides["finetune.compatibility_form"] = "cross_align"
    return overrides


def override_value(value: Any) -> str:
    """A params value in the override syntax of ``dvc exp run --set-param`` (Hydra's): JSON, except that a
    mapping's keys are bare (``{old: "champion"}``)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {override_value(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(override_value(item) for item in value) + "]"
    return json.dumps(value)


@task(cache_policy=NO_CACHE)
def run_experiment(name: str, overrides: dict[str, Any], targets: list[str]) -> None:
    """``dvc exp run`` in the workspace: DVC runs what changed, records the experiment under ``name``."""
    settings = [f"--set-param={key}={override_value(value)}" for key, value in overrides.items()]
    run(dvc("exp", "run", "--name", name, *settings, *targets))


def experiment_commit(name: str) -> str:
    """The git commit DVC made for experiment ``name`` (its ref is ``refs/exps/.../<name>``)."""
    refs = query(["git", "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps"]).stdout
    found = [line.split()[1] for line in refs.splitlines() if line.split()[0].endswith(f"/{name}")]
    return found[0] if found else "unknown"


@dataclass(frozen=True)
class Candidate:
    """What one execution produced and from what: the DVC experiment and its inputs and metrics."""

    experiment: str  # DVC experiment name
    commit: str  # git commit the experiment started from
    pulled: list[str]  # what the pulls before it did, or why they were skipped
    overrides: dict[str, Any]
    targets: list[str]
    metrics: dict[str, float]
    error: str | None = None  # why the experiment failed, if it did


def lineage(candidate: Candidate, metric: str, model: Path) -> dict[str, str]:
    """Tags of a registered version: where its code, params and bytes come from, and its metric."""
    return {
        "git.commit": candidate.commit,
        "dvc.experiment": candidate.experiment,
        "dvc.experiment.commit": experiment_commit(candidate.experiment),
        "overrides": json.dumps(candidate.overrides, sort_keys=True),
        "metric": metric,
        "metric.value": repr(candidate.metrics[metric]),
        "model.md5": file_digest(model, "md5"),  # the hash dvc.lock records
        "prefect.flow_run": str(flow_run.id),
    }


@task(cache_policy=NO_CACHE)
def judge_and_register(
    candidate: Candidate,
    metric: str,
    model: Path,
    model_name: str,
    champion: ModelVersion | None,
    require_compatible: bool = False,
) -> dict[str, Any]:
    """Compare the candidate with ``champion``, log the flow's MLflow run, register the model if better (and,
    with ``require_compatible``, compatible with it)."""
    settings = read_settings()  # the registry needs MLflow, so tracking.enabled does not apply here
    best = get_run(champion.run_id, settings.uri).metrics.get(metric) if champion and champion.run_id else None
    compatible = compatibility(candidate.metrics, champion and champion.version)
    if candidate.error:
        decision = Decision(False, f"the experiment failed: {candidate.error}")
    else:
        value = candidate.metrics.get(metric)
        decision = decide(metric, value, model, champion and champion.version, best, compatible, require_compatible)
    tags = {
        "prefect.flow": "retrain",
        "prefect.flow_run": str(flow_run.id),
        "git.commit": candidate.commit,
        "dvc.experiment": candidate.experiment,
        "retrain.decision": "registered" if decision.register else "not registered",
        "retrain.reason": decision.reason,
        "retrain.pulled": "; ".join(candidate.pulled),
        "retrain.compatible": compatible.tag,
        "retrain.compatibility": compatible.reason,
    }
    overrides = {key.lstrip("+"): value for key, value in candidate.overrides.items()}  # MLflow names take no "+"
    with Tracker(settings.experiment, candidate.experiment, settings.uri, tags=tags) as tracker:
        tracker.log_params({"overrides": overrides, "targets": ",".join(candidate.targets) or "all", "metric": metric})
        tracker.log_metrics(candidate.metrics)
        version = None
        if decision.register:
            version_tags = lineage(candidate, metric, model)
            if compatible.compatible:
                version_tags["compatible_with"] = str(champion.version)
            registered = register_model(model_name, model, tracker.run_id, version_tags, ALIAS, settings.uri)
            version = registered.version
            tracker.set_tags({"registry.model": model_name, "registry.version": str(version)})
    get_run_logger().info("%s: %s", "registered" if decision.register else "not registered", decision.reason)
    return {
        "registered": decision.register,
        "reason": decision.reason,
        "version": version,
        "previous_champion": champion and champion.version,
        "compatible": compatible.compatible,
        "mlflow_run": tracker.run_id,
    }


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` arguments as overrides, values read as YAML 1.2, as DVC reads params (``lr=1e-4`` is a number)."""
    pairs = [arg.partition("=") for arg in args]
    bad = [arg for arg, (_, sep, _) in zip(args, pairs, strict=True) if not sep]
    if bad:
        raise SystemExit(f"overrides must look like KEY=VALUE, got {bad}")
    return {key: parse_yaml(value) for key, _, value in pairs}


@flow(name="retrain", log_prints=True)
def retrain(
    overrides: dict[str, Any] | None = None,
    targets: list[str] | None = None,
    metric: str = DEFAULT_METRIC,
    model_path: str = "models/finetune/model.pt",
    model_name: str = "eva02at-ek100-mir",
    name: str | None = None,
    retries: int = 1,
    retry_delay_s: float = 60.0,
    train_compatible: bool = False,
    require_compatible: bool = False,
    champions: str = "models/registry",
) -> dict[str, Any]:
    """Pull, run the pipeline as a DVC experiment, and promote the model to champion only if it is better.

    Args:
        overrides: Params to change for this experiment, `{"finetune.optim.lr": 1e-4}`, passed to
            `dvc exp run --set-param` (a key may name its file: `params.yaml:finetune.loss`).
        targets: Stages to run with everything upstream of them; empty: the whole pipeline.
        metric: DVC metric (dotted name, as in `dvc exp show`) that decides; higher is better.
        model_path: The model file to register, an output of the pipeline.
        model_name: Registered model in MLflow; the alias `champion` marks its best version.
        name: DVC experiment name; default `retrain-<UTC time>`.
        retries: Retries of the pulls and of the experiment after a failure (transient errors).
        retry_delay_s: Seconds before the first retry; each further retry waits twice as long.
        train_compatible: Fine-tune against the champion (`finetune.compatible_with`, with
            `compatibility_init: procrustes` and `compatibility_form: cross_align`), so that the candidate's
            queries can search galleries the champion exported.
        require_compatible: Promote only a candidate that the evaluation finds compatible with the champion.
        champions: Folder the champion's file is downloaded into (`<champions>/<model_name>/v<N>/`).
    """
    overrides, targets = overrides or {}, targets or []
    name = name or f"retrain-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    options = {"retries": retries, "retry_delay_seconds": exponential_backoff(retry_delay_s)}
    clean = is_clean()
    pulled = [pull_code.with_options(**options)(clean), pull_data.with_options(**options)()]
    champion, champion_file = fetch_champion.with_options(**options)(model_name, champions)
    if champion_file is not None:  # the caller's overrides win
        overrides = {**champion_overrides(champion_file, train_compatible), **overrides}
    commit, failure, metrics = git_commit(), None, {}
    try:
        try:
            run_experiment.with_options(**options)(name, overrides, targets)
            metrics = read_metrics()
        except Exception as err:  # recorded in MLflow as the reason nothing was registered, then raised again
            failure = err
        close_orphaned_runs()
        error = str(failure)[-1000:] if failure else None
        candidate = Candidate(name, commit, pulled, overrides, targets, metrics, error)
        result = judge_and_register(candidate, metric, Path(model_path), model_name, champion, require_compatible)
    finally:
        if clean:  # every change is the experiment's, and DVC keeps it
            run(["git", "checkout", "HEAD", "--", "."])
    if failure:
        raise failure
    print(f"experiment {name}: {'registered' if result['registered'] else 'not registered'}: {result['reason']}")
    return {"experiment": name, "pulled": pulled, "metrics": candidate.metrics, **result}


if __name__ == "__main__":
    retrain(overrides=parse_overrides(sys.argv[1:]))
