"""The `workbench` command line.

Each area has its own module here with a `register(app)` function that adds its commands or
sub-command group; this module only assembles them and turns WorkbenchError into a readable
message with exit status 2.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from workbench.errors import WorkbenchError

AREA_MODULES = (
    "lab_cmds",
    "data_cmds",
    "lm_cmds",
    "acts_cmds",
    "probe_cmds",
    "sae_cmds",
    "langfir_cmds",
    "analyze_cmds",
    "moex_cmds",
    "bench_cmds",
    "steer_cmds",
    "demo_cmds",
)

app = typer.Typer(
    name="workbench",
    help="Sparsity workbench: SAEs, LangFIR steering, MoE-X and sparsity analyses.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    lab: str = typer.Option(
        None, "--lab", help="Lab folder (default: $WORKBENCH_LAB or ./lab).", envvar="WORKBENCH_LAB"
    ),
) -> None:
    if lab:
        os.environ["WORKBENCH_LAB"] = lab


def _register_areas() -> None:
    for module in AREA_MODULES:
        importlib.import_module(f"app.cli.{module}").register(app)


_register_areas()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        app(args=argv, standalone_mode=True)
    except WorkbenchError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("\ninterrupted: run the same command again to resume from the last checkpoint",
                   err=True)
        sys.exit(130)
