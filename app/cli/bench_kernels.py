"""`workbench bench kernels`: sparse_ops kernel benchmarks against their PyTorch baselines.

The lead wires it in with ``register(bench_app)`` on the ``bench`` sub-app.
"""

from __future__ import annotations

import json

import typer


def kernels(
    quick: bool = typer.Option(False, "--quick", help="Fewer shapes and repeats."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
    device: str = typer.Option(
        None, "--device", help="cuda or cpu (default: cuda when available)."
    ),
) -> None:
    """Time and measure peak memory of the sparse_ops kernels against PyTorch baselines.

    On CUDA this runs the Triton kernels; on CPU the native CPU kernels for encode and decode
    (where they build; else the PyTorch reference) and the PyTorch reference for attention, on
    small shapes, and says so (Triton's interpreter is never timed).
    """
    from sparse_ops.bench import format_table, run_kernel_benchmarks

    rows = run_kernel_benchmarks(device=device, quick=quick)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        typer.echo(format_table(rows))


def register(bench_app: typer.Typer) -> None:
    """Add the ``kernels`` command to the ``bench`` sub-app."""
    bench_app.command("kernels")(kernels)
