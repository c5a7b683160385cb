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
from eva02at.config import ConfigError
from eva02at.errors import PipelineError
from eva02at.text_table import format_table
from eva02at.tracking import find_runs, read_settings

DESCRIPTION = "Look into the results of the eva02at pipeline: compare runs, search clips."


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
        raise ConfigError(f"--limit must be at least 1, got {args.limit}")
    runs = tables.select(find_runs(experiment, settings.uri), args.stage)
    runs = tables.sort_runs(runs, args.sort, args.ascending)[: args.limit]
    if not runs:
        print(f"no runs in experiment {experiment!r}" + (f" for stage {args.stage!r}" if args.stage else ""))
        return 0
    print(format_table(tables.build_table(runs, args.sort, args.metric, args.param)))
    return 0


def add_search(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "search",
        help="text-to-video search over exported clip embeddings",
        description="Encode a text with a checkpoint and list the closest exported clips; writes a contact sheet.",
    )
    parser.add_argument("query", help="text to search for")
    parser.add_argument("--top", type=int, default=5, help="number of clips to show")
    parser.add_argument(
        "--checkpoint",
        default="models/finetune/model.pt",
        help="video checkpoint that encodes the query (the one that exported the embeddings)",
    )
    parser.add_argument(
        "--embeddings",
        default="exports/finetuned/ego4d_clips_video.parquet",
        help="video embeddings written by the export stage",
    )
    parser.add_argument("--out", default="search.png", help="contact-sheet PNG of the hits ('' to skip)")
    parser.add_argument(
        "--index",
        choices=("auto", "flat", "ivf", "hnsw", "binary"),
        default="auto",
        help="auto: exact search for small galleries; Hamming search over the export's binary codes, "
        "re-ranked by float scores, for large ones (IVF over the floats when there are no codes)",
    )
    parser.add_argument("--nprobe", type=int, help="ivf, binary: k-means cells a query scans")
    parser.add_argument("--shortlist", type=int, help="binary: Hamming candidates re-ranked")
    parser.add_argument("--rerank", choices=("float", "int8"), help="binary: re-rank with the floats or int8 codes")
    parser.add_argument(
        "--cache",
        help="binary: folder of the memory-mapped float32 copy of the export's vectors, read to re-rank "
        "(default $EVA02AT_CACHE, else $XDG_CACHE_HOME/eva02at or ~/.cache/eva02at)",
    )
    parser.set_defaults(run=search)


def search(args: argparse.Namespace) -> int:
    from eva02at.search import run_search  # imports torch and the models: only when searching

    return run_search(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eva02at", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_compare(commands)
    add_search(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except PipelineError as err:  # expected: one line; anything else keeps its traceback
        print(f"eva02at {args.command}: {err}", file=sys.stderr)
        return 1
