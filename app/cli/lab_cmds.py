"""`workbench lab ...`: list, show, remove and rescan artifacts; build recipes; list jobs."""

from __future__ import annotations

import time

import typer

from app.cli.common import echo_json, echo_table, get_lab

lab_app = typer.Typer(help="Inspect the lab: artifacts and jobs.", no_args_is_help=True)


@lab_app.command("list")
def list_artifacts(
    kind: str = typer.Option(None, help="Only artifacts of this kind."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the lab's artifacts."""
    arts = get_lab().list(kind)
    if as_json:
        echo_json([a.to_dict() for a in arts])
        return
    if not arts:
        typer.echo("the lab is empty; `workbench demo` builds the default lab")
        return
    rows = [
        {
            "name": a.name,
            "kind": a.kind,
            "parents": ",".join(a.parents),
            "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(a.created)),
        }
        for a in arts
    ]
    echo_table(rows, ["name", "kind", "parents", "created"])


@lab_app.command("show")
def show(
    name: str,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show one artifact: manifest, config and metrics."""
    art = get_lab().get(name)
    if as_json:
        echo_json(art.to_dict())
        return
    typer.echo(f"{art.name}  ({art.kind})  {art.path}")
    if art.parents:
        typer.echo(f"parents: {', '.join(art.parents)}")
    for title, section in (("config", art.config), ("metrics", art.metrics)):
        if section:
            typer.echo(f"{title}:")
            for key, value in section.items():
                typer.echo(f"  {key}: {value}")


@lab_app.command("rm")
def remove(name: str) -> None:
    """Remove an artifact and its folder."""
    get_lab().remove(name)
    typer.echo(f"removed {name}")


@lab_app.command("rescan")
def rescan() -> None:
    """Rebuild the catalog from the artifact folders."""
    typer.echo(f"{get_lab().rescan()} artifacts in the catalog")


def _recipe_help() -> str:
    from app.recipes import RECIPES

    lines = "\n".join(f"  {r.name}: {r.summary}" for r in RECIPES.values())
    return ("Build a lab recipe: make whatever of its artifacts is missing (an interrupted "
            f"build resumes).\n\nRecipes:\n\n{lines}")


@lab_app.command("build", help=_recipe_help())
def build(
    recipe: str = typer.Argument(..., help="Recipe name (listed below)."),
    quick: bool = typer.Option(False, "--quick", help="A small size of the recipe, for tests."),
) -> None:
    from app.recipes import get_recipe

    get_recipe(recipe).build(get_lab(), echo=typer.echo, quick=quick)


@lab_app.command("jobs")
def jobs(
    name: str = typer.Option(None, help="Only jobs making this artifact."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List recent jobs with their status and progress."""
    rows = get_lab().jobs(name)
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        r["progress"] = f"{r['step']}/{r['total']}"
    echo_table(rows, ["id", "kind", "name", "status", "progress", "message"])


def register(app: typer.Typer) -> None:
    app.add_typer(lab_app, name="lab")
