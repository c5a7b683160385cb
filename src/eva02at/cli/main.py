"""The ``eva02at`` command. One pair of functions per subcommand: ``add_<name>`` declares its arguments,
``<name>`` runs it and returns the exit status.

Run from the project root: the MLflow store and experiment come from ``params.yaml`` (section
``tracking``), with ``MLFLOW_TRACKING_URI`` taking precedence as in the pipeline's stages.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from eva02at.cli import compare as tables
from eva02at.cli import paper
from eva02at.core.atomic import write_text
from eva02at.core.config import ConfigError, read_params
from eva02at.core.errors import PipelineError
from eva02at.core.text_table import Table, format_table
from eva02at.core.tracking import find_runs, read_settings

DESCRIPTION = "Look into the results of the eva02at pipeline: compare runs, search and browse clips, the paper's rows."


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
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {args.limit}")
    settings = read_settings(args.params_file)
    experiment = args.experiment or settings.experiment
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
    from eva02at.search.query import run_search  # imports torch and the models: only when searching

    return run_search(args)


def add_paper(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "paper",
        help="the paper's rows: list them, queue them as DVC experiments, report measured beside published",
        description="Rows of the EVA02-AT paper's tables as params overrides (paper/rows) and their numbers "
        "(paper/published.csv).",
    )
    parser.add_argument("--folder", default="paper", help="folder with rows/ and published.csv")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="each row, what it changes and the cells it is published with")
    run = actions.add_parser("run", help="queue each row as a named DVC experiment (`dvc queue start` runs them)")
    run.add_argument("rows", nargs="+", metavar="ROW")
    run.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="one more -S for every row (e.g. a path)"
    )
    run.add_argument("--dry-run", action="store_true", help="print the dvc commands instead of running them")
    report = actions.add_parser("report", help="Markdown table and PNG: measured beside published")
    report.add_argument("--out", default="paper/report", help="folder for report.md and report.png")
    report.add_argument("--metrics", default="metrics/eval.json", help="the evaluate stage's metrics file")
    report.add_argument(
        "--workspace", metavar="ROW", help="also report the workspace's metrics and params.yaml as this row"
    )
    report.add_argument(
        "--experiments",
        type=Path,
        help="`dvc exp show --json` output saved to a file (default: run it here)",
    )
    parser.set_defaults(run=run_paper)


def run_paper(args: argparse.Namespace) -> int:
    rows = paper.read_rows(Path(args.folder) / "rows")
    cells = paper.read_published(Path(args.folder) / "published.csv", rows)
    if args.action == "list":
        print(format_table(Table(["row", "published cells", "changes"], list_rows(rows, cells))))
        print("\n" + "\n".join(f"{name}: {row.about}" for name, row in rows.items()))
        return 0
    if args.action == "run":
        return queue_rows(rows, args.rows, args.set, args.dry_run)
    return report(cells, args)


def list_rows(rows: dict[str, paper.Row], cells: list[paper.Published]) -> list[list[str]]:
    return [
        [name, str(sum(cell.row == name for cell in cells)), " ".join(paper.settings(row.override)) or "(the recipe)"]
        for name, row in rows.items()
    ]


def queue_rows(rows: dict[str, paper.Row], names: list[str], extra: list[str], dry_run: bool) -> int:
    """``dvc exp run --queue -n <row> -S ...`` for each row: queued, not run, so that workers pick them up."""
    unknown = sorted(set(names) - set(rows))
    if unknown:
        raise ConfigError(f"unknown rows {unknown}; `eva02at paper list` shows them: {sorted(rows)}")
    for name in names:
        arguments = paper.queue_arguments(rows[name], extra)
        print(shlex.join(["dvc", *arguments]))
        if not dry_run:
            run_dvc(arguments)
    return 0


def run_dvc(arguments: list[str]) -> str:
    """``dvc <arguments>``'s output; dvc missing from PATH or failing is a one-line error with its last line."""
    executable = shutil.which("dvc")
    if executable is None:
        raise PipelineError("dvc is not on PATH: run from the project's environment (.venv/bin)")
    done = subprocess.run([executable, *arguments], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise PipelineError(f"dvc {' '.join(arguments[:2])} failed (exit {done.returncode}): {last}")
    return done.stdout


def report(cells: list[paper.Published], args: argparse.Namespace) -> int:
    if args.experiments and not args.experiments.is_file():
        raise ConfigError(f"--experiments {args.experiments}: no such file")
    text = args.experiments.read_text() if args.experiments else run_dvc(["exp", "show", "--json"])
    try:
        table = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{args.experiments or 'dvc exp show --json'}: not JSON ({err})") from None
    runs = paper.runs_from_experiments(table, args.metrics)
    if args.workspace:
        metrics = Path(args.metrics)
        if not metrics.is_file():
            raise ConfigError(f"--workspace {args.workspace}: {metrics} does not exist (run the pipeline first)")
        runs[args.workspace] = paper.Run(json.loads(metrics.read_text()), read_params("params.yaml"))
    lines = paper.compare(cells, runs)
    out = Path(args.out)
    write_text(out / "report.md", paper.markdown(lines))
    paper.plot(lines, out / "report.png")
    measured = sum(line.measured is not None for line in lines)
    print(f"{measured} of {len(lines)} published values measured; {out / 'report.md'}, {out / 'report.png'}")
    return 0


def add_browse(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "browse",
        help="local web page: text queries, top clips as frame strips, two models side by side",
        description="Serve a page that searches one or more galleries, each with its own checkpoint, as "
        "`eva02at search` does (same refusal rule); hits of a benchmark query are coloured by relevance.",
    )
    parser.add_argument(
        "--panel",
        nargs=3,
        action="append",
        metavar=("NAME", "CHECKPOINT", "EMBEDDINGS"),
        help="a model and the video export it searches (repeatable; default: finetuned and zero_shot on the "
        "EK100 test clips)",
    )
    parser.add_argument(
        "--relevancy",
        default="data/benchmarks/ek100_mir/truth.npz",
        help="relevancy table that colours the hits of benchmark queries ('' for none)",
    )
    parser.add_argument(
        "--sentences",
        default="data/benchmarks/ek100_mir/queries.csv",
        help="the benchmark's sentence CSV (narration_id, narration): which queries are benchmark queries",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=8765)
    parser.set_defaults(run=browse)


def browse(args: argparse.Namespace) -> int:
    from eva02at.search.browse import run_browse  # imports torch, the models and the web server: only when browsing

    return run_browse(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eva02at", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_compare(commands)
    add_search(commands)
    add_paper(commands)
    add_browse(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except PipelineError as err:  # expected: one line; anything else keeps its traceback
        print(f"eva02at {args.command}: {err}", file=sys.stderr)
        return 1
