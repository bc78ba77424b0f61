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

    @steer_app.command("check-llamacpp")
    def check_llamacpp_cmd(
        name: str = typer.Argument(..., help="Steering vector (lab artifact or file path) of a "
                                             "lab model."),
        llama_cpp: str = typer.Option(None, "--llama-cpp", envvar="LLAMA_CPP_DIR",
                                      help="llama.cpp source tree (has convert_hf_to_gguf.py)."),
        corpus: str = typer.Option(None, help="Corpus whose validation texts the tokenizers are "
                                              "compared on (default: the model's corpus)."),
        texts: int = typer.Option(400, help="Number of texts to compare token ids on."),
        strength: float = typer.Option(None, help="Strength (default: the vector's own)."),
        work: str = typer.Option(None, help="Folder for the exported files (default: a "
                                            "temporary one)."),
    ) -> None:
        """Take a lab model and a steering vector to llama.cpp (export, llama.cpp's converter,
        GGUF control vector) and compare its logits and token ids with TransformerLens."""
        import tempfile

        from app.cli.common import echo_json
        from steering.export import load_vector
        from steering.llamacpp_check import run_llamacpp_check
        from workbench.data.store import load_corpus
        from workbench.models.loading import load_model

        lab = get_lab()
        vector = load_vector(lab, name)
        model = load_model(vector.model, lab=lab, device="cpu")
        corpus_name = corpus or lab.get(vector.model.split("@", 1)[0], kind="model").parents[0]
        sample = load_corpus(lab, corpus_name).texts("validation")[:texts]
        with tempfile.TemporaryDirectory() as tmp:
            echo_json(run_llamacpp_check(model, vector, sample, work or tmp, llama_cpp,
                                         strength=strength))
