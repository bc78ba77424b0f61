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
    arts, broken = get_lab().scan(kind)
    if as_json:
        echo_json([a.to_dict() for a in arts] + [{**b, "broken": True} for b in broken])
        return
    for item in broken:
        typer.echo(f"BROKEN {item['name']} ({item['kind']}): {item['error']}", err=True)
    if not arts:
        if not broken:
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
    active: bool = typer.Option(False, "--active", help="Only running jobs."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List recent jobs with their status and progress (dead ones are marked lost)."""
    from workbench.jobs import ACTIVE

    rows = get_lab().jobs(name)
    if active:
        rows = [r for r in rows if r["status"] in ACTIVE]
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        r["progress"] = f"{r['step']}/{r['total']}" if r["total"] else ""
        r["names"] = ",".join(r["names"])
        r["parent"] = r.get("parent") or ""
    echo_table(rows, ["id", "kind", "names", "status", "progress", "pid", "parent", "message"])


@lab_app.command("cancel")
def cancel(
    job_id: int = typer.Argument(..., help="Job id (see `workbench lab jobs`)."),
    timeout: float = typer.Option(20.0, help="Seconds to wait before stopping it harder."),
) -> None:
    """Stop a running job; its checkpoints stay, so the same command resumes it."""
    from workbench.jobs import cancel as cancel_job

    row = cancel_job(get_lab(), job_id, timeout=timeout)
    typer.echo(f"job {job_id}: {row['status']} ({row['message']})")


@lab_app.command(
    "start", context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def start(
    ctx: typer.Context,
    names: str = typer.Option(None, "--names",
                              help="Comma-separated artifact names the command makes (refused "
                                   "at once when one is being made). Default: its --name."),
) -> None:
    """Run a workbench command as a background job: `workbench lab start -- sae train ...`.

    Prints the job id at once; follow it with `workbench lab jobs`, stop it with
    `workbench lab cancel ID`; output goes to LAB/logs/job-ID.log.
    """
    from app.cli.background import start_command

    args = list(ctx.args)
    job_id = start_command(get_lab(), args, names.split(",") if names else None)
    typer.echo(f"started job {job_id}: workbench {' '.join(args)}")


def register(app: typer.Typer) -> None:
    app.add_typer(lab_app, name="lab")
