"""What the flows share: commands run in the project, the stage order and the metrics, both read from DVC.

Flows work on the project in the current directory, as ``dvc`` does: deployments enter it with the pull
step of prefect.yaml, local runs start at the project root. DVC stays the only cache of results, so no
task caches its result in Prefect.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import networkx as nx
from dvc.repo import Repo
from prefect import get_run_logger

from eva02at.core.tracking import end_orphaned_runs, flatten, read_settings
from eva02at.core.workers import signal_on_parent_exit

# Nothing the flows start reports usage to outside services, whatever the caller's environment says: the one
# place these are set (MLflow's own switch is set by eva02at.core.tracking, the only module that imports MLflow; the
# project's .dvc/config also turns DVC's analytics off).
QUIET = {
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
for _name, _value in QUIET.items():
    os.environ.setdefault(_name, _value)


# how long a stopped command's processes get for their clean-up before SIGKILL; less than the 30 s a Prefect
# worker gives a cancelled flow run's process before killing it
STOP_GRACE_S = 20.0


class CommandError(RuntimeError):
    """A command run by a flow failed; the message ends with the last lines of its output."""


def command_env() -> dict[str, str]:
    """The flow's environment with its interpreter's folder first on PATH, so that ``python`` in stage commands
    is the flow's own (a worker started as ``.venv/bin/prefect`` without activating the venv still works)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def dvc(*args: str) -> list[str]:
    """A DVC command line using the DVC installed next to the flow's interpreter."""
    return [sys.executable, "-m", "dvc", *args]


def run(args: Sequence[str], tail: int = 30) -> str:
    """Run a command in the project, each output line going to the flow's log as it comes; returns the
    output. A non-zero exit raises ``CommandError`` with the command and the last ``tail`` lines.

    The command runs in a process group of its own, which is stopped with it (``stop_group``) when the flow is
    told to stop while it runs: a cancelled flow run's SIGTERM, Ctrl-C, any exception. Should the flow's
    process exit without clean-up (``kill -9``), the command gets SIGTERM from the kernel."""
    logger = get_run_logger()
    logger.info("$ %s", " ".join(args))
    lines: list[str] = []
    with subprocess.Popen(
        list(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=command_env(),
        process_group=0,
        preexec_fn=functools.partial(signal_on_parent_exit, signal.SIGTERM),
    ) as process:
        try:
            for line in process.stdout or ():
                lines.append(line.rstrip())
                logger.info(lines[-1])
        except BaseException:
            stop_group(process)
            raise
    if process.returncode:
        output = "\n".join(lines[-tail:])
        raise CommandError(f"`{' '.join(args)}` failed with exit status {process.returncode}:\n{output}")
    return "\n".join(lines)


def stop_group(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to the process group that ``process`` leads (``dvc repro`` and the stage it runs, with their
    workers), then SIGKILL to what is left of it after ``grace_s`` seconds: a stage stops after clean-up (its
    MLflow run ends KILLED), one that does not stop is not left running."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(grace_s)
    while time.monotonic() < deadline and _group_exists(process.pid):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _group_exists(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def query(args: Sequence[str]) -> subprocess.CompletedProcess:
    """Run a read-only command quietly; the caller looks at its exit status and output."""
    return subprocess.run(list(args), capture_output=True, text=True, env=command_env(), check=False)


def order_stages(
    stages: Sequence[str], edges: Sequence[tuple[str, str]], targets: Sequence[str] | None = None
) -> list[str]:
    """``stages`` (in dvc.yaml order) ordered so that each comes after the stages it depends on, keeping
    dvc.yaml's order where the graph allows. ``edges`` go from a stage to a stage it depends on. With
    ``targets``, only those stages and everything upstream of them; a target may name a foreach group
    (``frames`` covers ``frames@egoclip``, ...)."""
    graph = nx.DiGraph(edges)
    graph.add_nodes_from(stages)
    keep = set(stages)
    if targets:
        keep = set()
        for target in targets:
            matches = [s for s in stages if s == target or s.startswith(f"{target}@")]
            if not matches:
                raise ValueError(f"no DVC stage {target!r}; the stages are {list(stages)}")
            for match in matches:
                keep |= {match} | nx.descendants(graph, match)
    position = {stage: i for i, stage in enumerate(stages)}
    ordered = nx.lexicographical_topological_sort(graph.reverse(), key=position.__getitem__)
    return [stage for stage in ordered if stage in keep]


def stage_order(targets: Sequence[str] | None = None) -> list[str]:
    """The project's stages in an order DVC can run them (see ``order_stages``), from DVC's own graph."""
    with Repo(".") as repo:
        stages = [stage.addressing for stage in repo.index.stages]
        edges = [(a.addressing, b.addressing) for a, b in repo.index.graph.edges]
    return order_stages(stages, edges, targets)


def parse_metrics_show(shown: dict[str, Any]) -> tuple[dict[str, float], list[str]]:
    """The numbers of ``dvc metrics show --json`` under dotted names (``finetuned.ek100_mir.mAP_avg``),
    the file left out as ``dvc exp show`` does, and the problems DVC reported (e.g. a metrics file not
    written yet). A name found in two files is an error naming both."""
    workspace = shown.get("", {})
    problems = [f"DVC metrics: {workspace['error'].get('msg', workspace['error'])}"] if "error" in workspace else []
    metrics: dict[str, float] = {}
    origin: dict[str, str] = {}
    for path, content in (workspace.get("data") or {}).items():
        if "error" in content:
            problems.append(f"{path}: {content['error'].get('msg', content['error'])}")
            continue
        for name, value in flatten(content.get("data", {})).items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if name in metrics:
                raise ValueError(f"metric {name!r} is in both {origin[name]} and {path}; rename one of them")
            metrics[name], origin[name] = float(value), path
    return metrics, problems


def read_metrics() -> dict[str, float]:
    """The project's current DVC metrics (see ``parse_metrics_show``); problems go to the flow's log."""
    result = query(dvc("metrics", "show", "--json"))
    if result.returncode:
        raise CommandError(f"`dvc metrics show` failed:\n{result.stderr.strip()}")
    metrics, problems = parse_metrics_show(json.loads(result.stdout or "{}"))
    for problem in problems:
        get_run_logger().warning("%s", problem)
    return metrics


def close_orphaned_runs() -> None:
    """Mark KILLED the MLflow runs that killed processes on this host left RUNNING (``kill -9``, out of memory):
    a stage that DVC then finds up to date or restores from its run cache never executes to end its own."""
    settings = read_settings()
    if settings.enabled:
        ended = end_orphaned_runs(settings.experiment, settings.uri)
        if ended:
            get_run_logger().warning("marked MLflow run(s) %s of exited processes as KILLED", ended)
