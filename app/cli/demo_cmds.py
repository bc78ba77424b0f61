"""`workbench demo` (build the default lab, then serve the dashboard) and `workbench app`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from app.cli.common import get_lab


def serve_dashboard(host: str = "127.0.0.1", port: int = 8501) -> None:
    """Replace this process by the Streamlit dashboard over the current lab.

    `exec` rather than a child process, so that a signal to this process (Ctrl+C, a test's
    terminate) reaches the server itself and leaves nothing running behind.
    """
    import app as app_package

    script = Path(app_package.__file__).parent / "home.py"
    lab = get_lab()
    env = {**os.environ, "WORKBENCH_LAB": str(lab.root)}
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(script),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
    ]
    typer.echo(f"dashboard: http://{host}:{port}  (lab {lab.root}; Ctrl+C stops it)")
    sys.stdout.flush()
    os.execve(sys.executable, cmd, env)


def app_command(
    host: str = typer.Option("127.0.0.1", help="Address to bind (default: local only)."),
    port: int = typer.Option(8501, help="Port."),
) -> None:
    """Start the Streamlit dashboard."""
    serve_dashboard(host, port)


def demo_command(
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Start the dashboard afterwards."),
    host: str = typer.Option("127.0.0.1", help="Dashboard address."),
    port: int = typer.Option(8501, help="Dashboard port."),
) -> None:
    """Build the default lab (first run only; later runs reuse it), then serve the dashboard."""
    from app.recipes import get_recipe

    get_recipe("default").build(get_lab(), echo=typer.echo)
    if serve:
        serve_dashboard(host, port)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
    app.command("app")(app_command)
