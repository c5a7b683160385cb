"""``python -m rehearsal``: the rehearsal (``make rehearsal``); ``--smallest`` runs the form the tests run."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from eva02at.core.config import read_params
from rehearsal.project import make_project
from rehearsal.run import (
    OVERRIDES,
    SMALLEST,
    StageFailed,
    as_json,
    rehearse,
    remove_project,
    selections,
    summary,
    table,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rehearsal", description=__doc__)
    parser.add_argument("--smallest", action="store_true", help="one step per training stage, the fewest clips")
    parser.add_argument("--override", type=Path, action="append", default=[], help="a further override, merged last")
    parser.add_argument("--workdir", type=Path, help="for the copy, the logs and report.json (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the copy after a rehearsal that passed (GBs)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the copy records into its own store, never the caller's server
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="eva02at-rehearsal-"))
    if (workdir / "project").exists():
        sys.exit(f"rehearsal: {workdir / 'project'} exists; give a new --workdir")
    overrides = [*OVERRIDES, *([SMALLEST] if args.smallest else []), *args.override]
    print(f"rehearsal: {', '.join(map(str, overrides))} over params.yaml, in {workdir / 'project'}", flush=True)
    project = make_project(workdir / "project", *overrides)
    report = {"form": "smallest" if args.smallest else "full", "overrides": list(map(str, overrides))}
    report["params"] = read_params(project / "params.yaml")  # what the stages read
    report["load_average_start"], started = list(os.getloadavg()), time.perf_counter()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # `timeout`, `kill`: as Ctrl-C
    results = []
    try:
        for result in rehearse(project, workdir / "logs"):
            results.append(result)
            print(summary(result), flush=True)
    except (StageFailed, KeyboardInterrupt, SystemExit) as stopped:
        failed = str(stopped) if isinstance(stopped, StageFailed) else "interrupted"
        finish(report, results, started, workdir, failed=failed.splitlines()[0])
        sys.exit(f"rehearsal: {failed}\nthe copy is kept: {project}")
    report["selections"] = selections(project)
    finish(report, results, started, workdir)
    if not args.keep:
        remove_project(project)


def finish(report: dict, results: list, started: float, workdir: Path, failed: str | None = None) -> None:
    """Print the table and write ``report.json`` (with the machine it ran on) to ``workdir``."""
    from bench.common import machine_info  # imports torch: only once the stages have run

    seconds = time.perf_counter() - started
    report |= {"seconds": seconds, "load_average_end": list(os.getloadavg()), "failed": failed}
    report |= {"machine": machine_info(), "stages": as_json(results)}
    (workdir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{table(results)}\n\n{len(results)} stages in {seconds / 60:.1f} min; report: {workdir / 'report.json'}")


if __name__ == "__main__":
    main()
