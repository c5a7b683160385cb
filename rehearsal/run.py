"""The rehearsal: every stage of the pipeline at the paper's shapes, in an isolated copy of the project.

The copy (``rehearsal.project``) gets ``recipe.yaml`` and ``scale.yaml`` merged into its params.yaml (and
``smallest.yaml`` with ``--smallest``, the form the tests run). Each stage of dvc.yaml then runs in DVC's order as
``dvc repro --single-item <stage>``, one process tree per stage, measured from outside: wall time, peak memory
(the largest resident set of any process of the stage, from the resource usage of the stage's tree, so nothing
polls) and, for the training stages, the seconds of each optimizer step the stage logged to MLflow (the
copy's own store). The first stage that fails stops the rehearsal with its name, exit status and the end of its
log, and a non-zero exit; the copy is then kept for inspection.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from eva02at.core.text_table import Table, format_table
from eva02at.core.tracking import find_runs, metric_history

HERE = Path(__file__).resolve().parent
OVERRIDES = (HERE / "recipe.yaml", HERE / "scale.yaml")
SMALLEST = HERE / "smallest.yaml"
GIB = 1024**3


class StageFailed(RuntimeError):
    """A stage of the rehearsal exited with an error; the message names it and ends with its log's last lines."""


@dataclass(frozen=True)
class Measured:
    returncode: int
    seconds: float
    peak_rss_bytes: int  # the largest resident set of any process of the tree


@dataclass
class StageResult:
    stage: str
    seconds: float
    peak_rss_gib: float
    load: float  # 1-minute load average when the stage ended (the machine may be shared)
    step_seconds: list[float] = field(default_factory=list)  # each logged optimizer step (training stages)

    @property
    def seconds_per_step(self) -> float | None:
        """Median step time; the first step (loader start-up, first-call costs) counts only when it is alone."""
        steps = self.step_seconds[1:] or self.step_seconds
        return statistics.median(steps) if steps else None


def measure(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> Measured:
    """Run ``command`` to completion with its output in ``log``; its wall time and the peak memory of its tree,
    taken by ``rehearsal/peak.py`` (see there why the caller cannot take it)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    result = log.with_suffix(".peak.json")
    result.unlink(missing_ok=True)
    with log.open("wb") as out:
        start = time.perf_counter()
        wrapper = subprocess.Popen(
            [sys.executable, str(HERE / "peak.py"), str(result), *command],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: an interrupt stops the whole stage below
        )
        try:
            wrapper.wait()
        except BaseException:  # Ctrl-C, SIGTERM (see __main__): no stage left running on its own
            os.killpg(wrapper.pid, signal.SIGTERM)
            wrapper.wait()
            raise
        seconds = time.perf_counter() - start
    if not result.exists():  # the wrapper itself was killed
        return Measured(wrapper.returncode, seconds, 0)
    measured = json.loads(result.read_text())
    return Measured(measured["returncode"], seconds, measured["peak_rss_bytes"])


def run_stage(project: Path, stage: str, env: dict[str, str], logs: Path) -> StageResult:
    """``dvc repro --single-item stage`` in ``project``, measured; StageFailed when it fails."""
    log = logs / f"{stage}.log"
    measured = measure([*dvc_command(), "repro", "--single-item", stage], project, env, log)
    if measured.returncode:
        how = f"signal {-measured.returncode}" if measured.returncode < 0 else f"exit status {measured.returncode}"
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise StageFailed(f"stage {stage} failed ({how}) after {measured.seconds:.0f} s; the end of {log}:\n{tail}")
    return StageResult(stage, measured.seconds, measured.peak_rss_bytes / GIB, os.getloadavg()[0])


def dvc_command() -> list[str]:
    from flows.common import dvc

    return dvc()


def stage_env(project: Path) -> dict[str, str]:
    """The stages' environment: this interpreter's tools first, the copy's own code first on the import path (an
    editable install or PYTHONPATH would otherwise import the workspace's, which may change while the stages run),
    and no tracking server of the caller's (every stage records into the copy's own MLflow store)."""
    from flows.common import command_env

    env = {k: v for k, v in command_env().items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project / "src"), str(project), env.get("PYTHONPATH")]))
    return env


def stages_in_order(project: Path) -> list[str]:
    from flows.common import stage_order

    with contextlib.chdir(project):
        return stage_order()


def step_times(project: Path, stage: str) -> list[float]:
    """The ``seconds_per_step`` a stage logged (one value per logged optimizer step) to the copy's MLflow store,
    newest run of the stage; empty for a stage that trains nothing."""
    if not (project / "mlflow.db").exists():
        return []
    uri = f"sqlite:///{project / 'mlflow.db'}"
    runs = [run for run in find_runs("eva02at", uri) if run.tags.get("dvc.stage") == stage]  # newest first
    if not runs or "seconds_per_step" not in runs[0].metrics:
        return []
    return [value for _, value in metric_history(runs[0].run_id, "seconds_per_step", uri)]


def rehearse(project: Path, logs: Path) -> Iterator[StageResult]:
    """Run every stage of ``project`` in order, measured, yielding each result as its stage ends; StageFailed at
    the first failing stage."""
    env = stage_env(project)
    for stage in stages_in_order(project):
        result = run_stage(project, stage, env, logs)
        result.step_seconds = step_times(project, stage)
        yield result


def selections(project: Path) -> dict:
    """What each training stage's ``model.pt`` holds (``metrics/<stage>_select.json``): the final weights, or the
    epoch that ``train.select`` kept with its score; the report keeps them, as the copy is removed."""
    records: dict = {}
    for path in sorted((project / "metrics").glob("*_select.json")):
        records |= json.loads(path.read_text())
    return records


def summary(result: StageResult) -> str:
    steps = f", {len(result.step_seconds)} steps, {result.seconds_per_step:.1f} s/step" if result.step_seconds else ""
    return f"{result.stage}: {result.seconds:.1f} s, peak {result.peak_rss_gib:.2f} GiB{steps}, load {result.load:.1f}"


def table(results: list[StageResult]) -> str:
    columns = ["stage", "seconds", "peak RSS GiB", "steps", "s/step", "first step s", "s outside steps", "load"]
    rows = []
    for r in results:
        cells = [""] * 4
        if r.step_seconds:
            times = [r.seconds_per_step, r.step_seconds[0], r.seconds - sum(r.step_seconds)]
            cells = [str(len(r.step_seconds)), *(f"{v:.1f}" for v in times)]
        rows.append([r.stage, f"{r.seconds:.1f}", f"{r.peak_rss_gib:.2f}", *cells, f"{r.load:.1f}"])
    return format_table(Table(columns, rows))


def as_json(results: list[StageResult]) -> list[dict]:
    return [{**asdict(r), "seconds_per_step": r.seconds_per_step} for r in results]


def remove_project(project: Path) -> None:
    shutil.rmtree(project, ignore_errors=True)
