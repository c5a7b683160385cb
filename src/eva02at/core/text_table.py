"""Plain-text tables for the command line (``eva02at compare``, ``eva02at search``): aligned columns that read
well in a terminal and paste into an issue as they are."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[str]]


def format_table(table: Table) -> str:
    """Left-aligned text columns separated by two spaces, a rule under the header."""
    widths = [max(len(cell) for cell in column) for column in zip(table.columns, *table.rows, strict=True)]
    lines = [table.columns, ["-" * width for width in widths], *table.rows]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)
