"""The paper's tables (EVA02-AT, arXiv 2506.14356) as experiments: its rows as params overrides, its numbers as
data, and a report that puts each measured value beside the published one.

``paper/rows/<row>.yaml`` is one override per published row, stacked on the user's params (the recipe merged
with the real data's paths); it names only what the row changes. ``paper/published.csv`` holds one line per
published table cell: ``table, row, metric, value`` (percent), ``result`` (where the measured value sits in the
evaluate stage's metrics: ``<model>.<benchmark>.<metric>``, fractions) and ``where`` (the place in the paper).
The comparison and its provenance are computed here; running DVC is the command line's part.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eva02at.core.config import ConfigError, parse_yaml
from eva02at.core.errors import BadInput, MissingInput

COLUMNS = ("table", "row", "metric", "value", "result", "where")
SELECTED = {  # training stage -> export model it gives
    "pretrain": "zero_shot",
    "finetune": "finetuned",
    "finetune_charades": "charades_finetuned",
}


@dataclass(frozen=True)
class Row:
    """One published row: an override of params.yaml and the comment that says what it changes."""

    name: str
    override: dict[str, Any]
    about: str


@dataclass(frozen=True)
class Published:
    table: str
    row: str
    metric: str
    value: float  # percent, as printed in the paper
    result: str  # <model>.<benchmark>.<metric> in metrics/eval.json
    where: str


@dataclass(frozen=True)
class Run:
    """An experiment's outcome: the evaluate stage's metrics and the params that produced them."""

    metrics: dict[str, Any]
    params: dict[str, Any]


@dataclass(frozen=True)
class Line:
    """A published cell beside its measurement (``measured`` None: ``missing`` says why)."""

    cell: Published
    measured: float | None = None  # percent
    missing: str = "not run"  # or "not in the run's metrics" (the run has no such model or benchmark)
    provenance: str = ""
    data: str = ""

    @property
    def difference(self) -> float | None:
        return None if self.measured is None else self.measured - self.cell.value

    @property
    def ratio(self) -> float | None:
        return None if self.measured is None else self.measured / self.cell.value


def read_rows(folder: str | Path) -> dict[str, Row]:
    """Every ``<row>.yaml`` of ``folder``, by name; a file that is not a mapping is a one-line error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInput(f"{folder}: no such folder of paper rows")
    rows = {}
    for path in sorted(folder.glob("*.yaml")):
        text = path.read_text()
        override = parse_yaml(text)
        if not isinstance(override, dict):
            raise ConfigError(f"{path}: a row's override must be a mapping of params sections")
        comment = [line.lstrip("# ").rstrip() for line in text.splitlines() if line.startswith("#")]
        rows[path.stem] = Row(path.stem, override, " ".join(comment))
    return rows


def read_published(path: str | Path, rows: Mapping[str, Row]) -> list[Published]:
    """The published cells of ``path``; a bad header, value or unknown row is an error naming the line."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: no such table of published numbers")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise BadInput(f"{path}: columns must be {','.join(COLUMNS)}, got {reader.fieldnames}")
        cells = []
        for number, record in enumerate(reader, start=2):
            try:
                value = float(record["value"])
            except ValueError:
                raise BadInput(f"{path}:{number}: value {record['value']!r} is not a number") from None
            if record["row"] not in rows:
                raise BadInput(f"{path}:{number}: row {record['row']!r} has no override; rows: {sorted(rows)}")
            if len(record["result"].split(".")) != 3:
                raise BadInput(f"{path}:{number}: result {record['result']!r} is not <model>.<benchmark>.<metric>")
            cells.append(Published(**{**record, "value": value}))
    return cells


def settings(override: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The override as ``key.path=value`` assignments (``dvc exp run -S``): one per leaf, values in YAML flow
    form (JSON is YAML), so that lists, null and booleans keep their types. An empty mapping is a leaf only when
    it is the whole value of a key (it then replaces that key's mapping)."""
    assignments = []
    for key, value in override.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            assignments += settings(value, f"{path}.")
        else:
            assignments.append(f"{path}={json.dumps(value)}")
    return assignments


def queue_arguments(row: Row, extra: list[str]) -> list[str]:
    """``dvc`` arguments that queue ``row`` as the experiment of its name: each leaf of its override as
    ``-S ++key=value`` (Hydra's add-or-override: the row may name a key the params file lacks), then ``extra``
    assignments (the user's, e.g. a data path), which replace the row's value of the same key."""
    replaced = {assignment.lstrip("+").split("=", 1)[0] for assignment in extra}
    own = [f"++{item}" for item in settings(row.override) if item.split("=", 1)[0] not in replaced]
    return ["exp", "run", "--queue", "-n", row.name, *(part for item in [*own, *extra] for part in ("-S", item))]


def lookup(tree: Mapping[str, Any], dotted: str) -> Any:
    """The value at ``a.b.c`` of nested mappings, None where a key is missing."""
    node: Any = tree
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def provenance(params: Mapping[str, Any], result: str) -> str:
    """Which checkpoint, how many frames and which relevancy table a measured value comes from."""
    model, benchmark, _ = result.split(".")
    checkpoint = lookup(params, f"export.models.{model}") or "?"
    stage = next((name for name, row in SELECTED.items() if row == model), None)
    select = (lookup(params, f"{stage}.train.select") if stage else None) or "final epoch"
    if isinstance(select, Mapping):
        select = ", ".join(f"{key} {value}" for key, value in select.items())
    collection = lookup(params, f"benchmarks.entries.{benchmark}.collection")
    frames = lookup(params, f"frames.collections.{collection}.num_frames")
    parts = [f"{checkpoint} ({select})", f"{frames} frames"]
    if benchmark == "ek100_mir":
        queries = lookup(params, "benchmarks.entries.ek100_mir.queries") or ""
        labels = lookup(params, "soft_labels.out") or ""
        official = bool(labels) and Path(queries).is_relative_to(Path(labels))  # the soft_labels stage's table
        parts.append(f"relevancy {lookup(params, 'benchmarks.entries.ek100_mir.truth')}")
        parts.append(f"query texts {'official (video rows)' if official else 'as in ' + queries}")
    return "; ".join(parts)


def data_note(params: Mapping[str, Any]) -> str:
    """``synthetic sample`` when the evaluated EK100 test split is the sample's rendering, else ``real data``."""
    sample = lookup(params, "sample.out")
    annotations = lookup(params, "frames.collections.ek100_test.annotations") or ""
    inside = bool(sample) and Path(annotations).is_relative_to(Path(sample))
    return "synthetic sample" if inside else "real data"


def compare(cells: list[Published], runs: Mapping[str, Run]) -> list[Line]:
    """Each published cell beside the value its row's run measured (fractions become percent)."""
    lines = []
    for cell in cells:
        run = runs.get(cell.row)
        value = lookup(run.metrics, cell.result) if run else None
        if run is None:
            lines.append(Line(cell))
            continue
        if not isinstance(value, int | float) or not math.isfinite(value):
            lines.append(Line(cell, missing="not in the run's metrics"))
            continue
        lines.append(
            Line(cell, 100 * float(value), provenance=provenance(run.params, cell.result), data=data_note(run.params))
        )
    return lines


def _number(value: float | None, form: str, missing: str) -> str:
    return missing if value is None else format(value, form)


def markdown(lines: list[Line]) -> str:
    """The report: one table per paper table, measured beside published, with the provenance of each value."""
    out = [
        "# EVA02-AT: measured beside published (arXiv 2506.14356)",
        "",
        "Values in percent. Difference = measured - published (points); ratio = measured / published. A value",
        "measured on the synthetic sample is not a reproduction: the sample only exercises the code paths.",
    ]
    for table in dict.fromkeys(line.cell.table for line in lines):
        out += [
            "",
            f"## {table}",
            "",
            "| row | metric | published | measured | difference | ratio | data | provenance | in the paper |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for line in (line for line in lines if line.cell.table == table):
            cell = line.cell
            out.append(
                f"| {cell.row} | {cell.metric} | {cell.value:.1f} | {_number(line.measured, '.1f', line.missing)} "
                f"| {_number(line.difference, '+.1f', '-')} | {_number(line.ratio, '.3f', '-')} | {line.data or '-'} "
                f"| {line.provenance or '-'} | {cell.where} |"
            )
    return "\n".join(out) + "\n"


def plot(lines: list[Line], path: str | os.PathLike) -> tuple[int, int]:
    """Published and measured values side by side, one bar pair per cell; a cell not run shows published only."""
    from eva02at.evaluation.plots import paired_bars  # matplotlib: only when drawing

    return paired_bars(
        [f"{line.cell.row}: {line.cell.metric}" for line in lines],
        [line.cell.value for line in lines],
        [line.measured for line in lines],
        path,
    )


def runs_from_experiments(table: list[dict[str, Any]], metrics: str, params: str = "params.yaml") -> dict[str, Run]:
    """Named experiments of ``dvc exp show --json`` (its parsed output) as runs, by name; the newest of a name
    wins (DVC lists the newest first). An experiment that failed or has no metrics file is left out (not run)."""
    runs: dict[str, Run] = {}
    for baseline in table:
        for experiment in baseline.get("experiments") or []:
            for revision in experiment.get("revs") or []:
                data = revision.get("data") or {}
                name = revision.get("name")
                measured = ((data.get("metrics") or {}).get(metrics) or {}).get("data")
                if name and name not in runs and measured:
                    runs[name] = Run(measured, ((data.get("params") or {}).get(params) or {}).get("data") or {})
    return runs
