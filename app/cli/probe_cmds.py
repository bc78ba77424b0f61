"""`workbench probe ...`: train a linear/logistic probe on activations; show a probe."""

from __future__ import annotations

import typer

from app.cli.common import echo_json, echo_table, get_lab

probe_app = typer.Typer(help="Probes on activations (e.g. language ID).", no_args_is_help=True)


@probe_app.command("train")
def train(
    model: str = typer.Option(..., help="Lab model name, TransformerLens name or HF folder."),
    hook: str = typer.Option(..., help="Hook point, e.g. blocks.1.hook_resid_post."),
    corpus: str = typer.Option(..., help="Corpus artifact name (labels and text)."),
    name: str = typer.Option(..., help="Name of the probe artifact."),
    labels: str = typer.Option("language", help="Corpus column with the label of each document."),
    acts: str = typer.Option(None, help="Use this activations artifact instead of the live model."),
    kind: str = typer.Option("logistic", help="logistic (multinomial) or linear (ridge)."),
    tokens: int = typer.Option(50_000, help="Training tokens (from --acts or the train split)."),
    val_tokens: int = typer.Option(20_000, help="Validation tokens from the validation split "
                                               "(live model only; --acts holds out documents)."),
    pool: str = typer.Option("token", help="token: one row per token; mean: one per document."),
    context_size: int = typer.Option(128, help="Tokens per context window."),
    packing: str = typer.Option("document", help="Live model: document (each document in its "
                                "own context) or concat (documents joined)."),
    weight_decay: float = typer.Option(1e-4, help="L2 penalty."),
    seed: int = typer.Option(0, help="Seed (document order, validation split)."),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: CUDA when present)."),
    overwrite: bool = typer.Option(False, help="Replace an existing artifact of that name."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Train a probe and print its held-out metrics per class."""
    from workbench.probes import ProbeRun, run_probe

    run = ProbeRun(model=model, hook=hook, corpus=corpus, labels=labels, kind=kind, acts=acts,
                   n_tokens=tokens, val_tokens=val_tokens, context_size=context_size, pool=pool,
                   packing=packing,
                   weight_decay=weight_decay, seed=seed)
    probe = run_probe(get_lab(), name, run, device=device, overwrite=overwrite)
    _echo_metrics(probe.metrics, as_json)
    if not as_json:
        typer.echo(f"saved probe {name}")


@probe_app.command("show")
def show(name: str, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show a probe's kind, classes and metrics."""
    from workbench.probes import load_probe

    probe = load_probe(get_lab(), name)
    if not as_json:
        typer.echo(f"{name}: {probe.kind} probe, {len(probe.classes)} classes, d_in {probe.d_in}, "
                   f"model {probe.info.get('model')}, hook {probe.info.get('hook')}")
    _echo_metrics(probe.metrics, as_json)


def _echo_metrics(metrics: dict, as_json: bool) -> None:
    if as_json:
        echo_json({split: {k: v for k, v in m.items() if k != "confusion"}
                   for split, m in metrics.items()})
        return
    for split, m in metrics.items():
        typer.echo(f"{split}: accuracy {m['accuracy']:.4f}  macro F1 {m['macro_f1']:.4f}  "
                   f"({m['n']} examples)")
    if "validation" in metrics:
        rows = [{"class": c, **{k: (f"{v:.3f}" if isinstance(v, float) else v)
                                for k, v in pc.items()}}
                for c, pc in metrics["validation"]["per_class"].items()]
        echo_table(rows, ["class", "accuracy", "precision", "recall", "f1", "support"])


def register(app: typer.Typer) -> None:
    app.add_typer(probe_app, name="probe")
