"""`workbench steer export ...`: steering vectors for other tools (safetensors pair, llama.cpp
GGUF control vector, Neuronpedia steering JSON). The `steer` group adds these with
`add_commands(steer_app)`."""

from __future__ import annotations

import typer

from app.cli.common import get_lab


def add_commands(steer_app: typer.Typer) -> None:
    """Add `export` to the `steer` command group."""

    @steer_app.command("export")
    def export_cmd(
        name: str = typer.Argument(..., help="Steering vector: lab artifact name or file path."),
        fmt: str = typer.Option(..., "--format",
                                help="safetensors (pair + JSON sidecar), gguf (llama.cpp "
                                     "control vector) or neuronpedia (steering JSON)."),
        out: str = typer.Option(..., help="Output file (safetensors: NAME gives NAME.safetensors "
                                          "+ NAME.json)."),
        strength: float = typer.Option(None, help="Strength in units of the residual norm "
                                                  "(default: the vector's own)."),
        overwrite: bool = typer.Option(False, help="Replace existing output files."),
    ) -> None:
        """Export a steering vector; gguf needs blocks.L.hook_resid_post hooks with L >= 1."""
        from steering.export import export_lab_vector

        for path in export_lab_vector(get_lab(), name, fmt, out, strength=strength,
                                      overwrite=overwrite):
            typer.echo(f"wrote {path}")
