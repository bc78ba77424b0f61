"""`workbench bench dashboard`: warm render time of every dashboard page on the lab.
`register(bench_app)` adds the command to the `bench` group (bench_cmds.py)."""

from __future__ import annotations

import typer

from app.cli.common import echo_json, get_lab


def dashboard_command(
    pages: str = typer.Option(None, "--pages", help="Comma list of pages: lab, model, saes, "
                              "features, steering, laws, attention, depth, moex (default: all)."),
    repeats: int = typer.Option(5, "--repeats", help="Warm reruns per page (median reported)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Render each dashboard page cold, then warm (goal: < 2 s each, feature page with every
    panel < 1 s), and print the figures per page."""
    from dataclasses import asdict

    from app.dashboard.bench import PAGES, bench_dashboard, format_report
    from workbench.errors import InvalidInputError

    chosen = [p.strip() for p in pages.split(",")] if pages else None
    unknown = [p for p in chosen or [] if p not in PAGES]
    if unknown:
        raise InvalidInputError(f"unknown pages {unknown}; choose from {', '.join(PAGES)}")
    if repeats < 1:
        raise InvalidInputError("--repeats must be at least 1")
    lab = get_lab()
    rows = bench_dashboard(lab.root, chosen, repeats)
    if as_json:
        echo_json([{**asdict(r), "ok": r.ok} for r in rows])
    else:
        typer.echo(f"dashboard render times on {lab.root} (median of {repeats} warm reruns)")
        typer.echo(format_report(rows))


def register(bench_app: typer.Typer) -> None:
    bench_app.command("dashboard")(dashboard_command)
