"""`workbench demo` (build the default lab, then serve the dashboard) and `workbench app`."""

from __future__ import annotations

import errno
import os
import socket
import sys
from pathlib import Path

import typer

from app.cli.common import get_lab
from workbench.errors import InvalidInputError

# Passed on the command line so they hold from any working directory (the repository's
# .streamlit/config.toml says the same): offline, no telemetry, no file watcher walking torch.
STREAMLIT_OPTIONS = {
    "server.headless": "true",
    "server.fileWatcherType": "none",
    "server.runOnSave": "false",
    "browser.gatherUsageStats": "false",
    "client.toolbarMode": "minimal",
    "client.showErrorDetails": "none",
    "runner.magicEnabled": "false",
}


def check_port_free(host: str, port: int) -> None:
    """Raise a clear error when `host:port` cannot be bound (taken, or not a local address)."""
    if not 1 <= port <= 65535:
        raise InvalidInputError(f"port {port} is not a valid port (1-65535)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InvalidInputError(
                    f"port {port} on {host} is already in use (another dashboard?); stop it or "
                    f"pick a free port with `workbench app --port {port + 1}`"
                ) from exc
            raise InvalidInputError(
                f"cannot listen on {host}:{port} ({exc.strerror}); use --host 127.0.0.1 or an "
                "address of this machine"
            ) from exc


def serve_dashboard(host: str = "127.0.0.1", port: int = 8501) -> None:
    """Replace this process by the Streamlit dashboard over the current lab.

    `exec` rather than a child process, so that a signal to this process (Ctrl+C, a test's
    terminate) reaches the server itself and leaves nothing running behind.
    """
    import app as app_package

    script = Path(app_package.__file__).parent / "dashboard" / "main.py"
    check_port_free(host, port)
    lab = get_lab()
    repo = str(Path(app_package.__file__).resolve().parents[1])
    pythonpath = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "WORKBENCH_LAB": str(lab.root), "PYTHONPATH": pythonpath}
    cmd = [sys.executable, "-m", "streamlit", "run", str(script),
           "--server.address", host, "--server.port", str(port)]
    for option, value in STREAMLIT_OPTIONS.items():
        cmd += [f"--{option}", value]
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
