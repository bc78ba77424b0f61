"""Helpers shared by the CLI modules."""

from __future__ import annotations

import json
from typing import Any

import typer

from workbench.lab import Lab


def get_lab() -> Lab:
    """The lab chosen by --lab / $WORKBENCH_LAB / ./lab."""
    return Lab()


def echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def echo_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Print rows as an aligned plain-text table."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    typer.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)))
