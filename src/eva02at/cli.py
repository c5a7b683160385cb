"""The ``eva02at`` command. One pair of functions per subcommand: ``add_<name>`` declares its arguments,
``<name>`` runs it and returns the exit status.

Run from the project root: the MLflow store and experiment come from ``params.yaml`` (section
``tracking``), with ``MLFLOW_TRACKING_URI`` taking precedence as in the pipeline's stages.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from eva02at import compare as tables
from eva02at.tracking import find_runs, read_settings

DESCRIPTION = "Look into the results of the eva02at pipeline."


def add_compare(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "compare",
        help="table of MLflow runs: key params, metrics, git commit and DVC hashes",
        description="Runs of an MLflow experiment as a table, newest first or best first by a metric.",
    )
    parser.add_argument("--experiment", help="MLflow experiment (default: tracking.experiment of params.yaml)")
    parser.add_argument("--sort", metavar="METRIC", help="order best first by this metric (highest first)")
    parser.add_argument("--ascending", action="store_true", help="lowest first, for losses and errors")
    parser.add_argument("--stage", help="only runs of this DVC stage or flow (e.g. finetune, retrain)")
    parser.add_argument("--limit", type=int, metavar="N", help="show the first N runs after sorting")
    parser.add_argument("--metric", action="append", help="metric column to show (repeatable; default: all)")
    parser.add_argument(
        "--param", action="append", help="param column to show (repeatable; default: those that differ)"
    )
    parser.add_argument("--params-file", default="params.yaml", help="where the tracking settings are read")
    parser.set_defaults(run=compare)


def compare(args: argparse.Namespace) -> int:
    settings = read_settings(args.params_file)
    experiment = args.experiment or settings.experiment
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    runs = tables.select(find_runs(experiment, settings.uri), args.stage)
    runs = tables.sort_runs(runs, args.sort, args.ascending)[: args.limit]
    if not runs:
        print(f"no runs in experiment {experiment!r}" + (f" for stage {args.stage!r}" if args.stage else ""))
        return 0
    print(tables.format_table(tables.build_table(runs, args.sort, args.metric, args.param)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eva02at", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_compare(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as err:
        print(f"eva02at {args.command}: {err}", file=sys.stderr)
        return 1
