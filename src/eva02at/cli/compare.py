"""Tables of MLflow runs for ``eva02at compare``: choose, sort and lay out the runs ``tracking`` fetched.

Columns use the names ``dvc exp show`` uses where the two overlap: metrics under their dotted names,
dependencies under their paths (with DVC's hash as the value). Pure functions over ``RunRecord``s, so
the same table can be built from any run store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

from eva02at.core.text_table import Table
from eva02at.core.tracking import RunRecord

DEP_PREFIX = "dvc.dep."
MISSING = "-"


def step_of(run: RunRecord) -> str:
    """The pipeline step that produced a run: its DVC stage (tag ``dvc.stage``), else its flow
    (tag ``prefect.flow``), else empty."""
    return run.tags.get("dvc.stage") or run.tags.get("prefect.flow", "")


def select(runs: Sequence[RunRecord], stage: str | None = None) -> list[RunRecord]:
    """The runs of one stage or flow (all runs when ``stage`` is None)."""
    return [run for run in runs if stage is None or step_of(run) == stage]


def sort_runs(runs: Sequence[RunRecord], metric: str | None = None, ascending: bool = False) -> list[RunRecord]:
    """Best first by ``metric`` (highest first unless ``ascending``); runs without the metric, or with NaN,
    come last. Ties and the no-metric case keep the newest run first."""
    newest_first = sorted(runs, key=lambda run: run.start_time, reverse=True)
    if metric is None:
        return newest_first

    def key(run: RunRecord) -> tuple[bool, float]:
        value = run.metrics.get(metric, math.nan)
        if math.isnan(value):
            return (True, 0.0)
        return (False, value if ascending else -value)

    return sorted(newest_first, key=key)  # stable: equal keys stay newest first


def varying(values: Sequence[dict[str, str]]) -> list[str]:
    """Keys whose value differs between the dicts (a key absent from some dict counts as differing)."""
    keys = sorted(set().union(*values)) if values else []
    return [key for key in keys if len({value.get(key) for value in values}) > 1]


def build_table(
    runs: Sequence[RunRecord],
    sort_metric: str | None = None,
    metrics: Sequence[str] | None = None,
    params: Sequence[str] | None = None,
) -> Table:
    """One row per run, in the given order. Columns: identity (run id, name, stage, start, git commit),
    ``metrics`` (default: every metric, ``sort_metric`` first), ``params`` (default: those that differ
    between the runs) and the DVC dependency hashes that differ between the runs."""
    if metrics is None:
        names = sorted(set().union(*(run.metrics for run in runs))) if runs else []
        metrics = [sort_metric] * (sort_metric is not None) + [m for m in names if m != sort_metric]
    if params is None:
        params = varying([run.params for run in runs])
    deps = varying([_deps(run) for run in runs])
    columns = ["run", "name", "stage", "started (UTC)", "commit", *metrics, *params, *deps]
    rows = [
        [
            run.run_id[:8],
            run.name or MISSING,
            step_of(run) or MISSING,
            _time(run.start_time),
            _commit(run.tags.get("git.commit")),
            *(_number(run.metrics.get(name)) for name in metrics),
            *(run.params.get(name, MISSING) for name in params),
            *(_deps(run).get(path, MISSING)[:8] for path in deps),
        ]
        for run in runs
    ]
    return Table(list(columns), rows)


def _deps(run: RunRecord) -> dict[str, str]:
    return {key[len(DEP_PREFIX) :]: value for key, value in run.tags.items() if key.startswith(DEP_PREFIX)}


def _number(value: float | None) -> str:
    return MISSING if value is None else f"{value:.4g}"


def _time(milliseconds: int) -> str:
    return datetime.fromtimestamp(milliseconds / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")


def _commit(commit: str | None) -> str:
    """A short commit, keeping the ``-dirty`` mark of runs made from uncommitted changes."""
    if not commit:
        return MISSING
    return commit[:10] + ("-dirty" if commit.endswith("-dirty") else "")
