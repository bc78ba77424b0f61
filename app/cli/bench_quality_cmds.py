"""`workbench bench sae-quality`: TopK / BatchTopK / top-AFA / structured SAEs at matched L0.
`register(bench_app)` adds the command to the `bench` group (bench_cmds.py)."""

from __future__ import annotations

import typer

from app.cli.common import echo_json, get_lab


def _floats(text: str) -> tuple[float, ...]:
    """'1/128,1/64' or '0.01,0.02' -> floats."""
    out = []
    for part in text.split(","):
        part = part.strip()
        num, _, den = part.partition("/")
        try:
            out.append(float(num) / float(den) if den else float(num))
        except ValueError as exc:
            raise typer.BadParameter(f"not a number or fraction: {part!r}") from exc
    return tuple(out)


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(","))
    except ValueError as exc:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from exc


def sae_quality_command(
    acts: str = typer.Option(None, "--acts", help="Activations artifact (default: the one "
                             "`workbench demo` made, else the lab's newest)."),
    latents: int = typer.Option(2048, help="Latents of every SAE."),
    tokens: int = typer.Option(800_000, "--tokens", help="Training tokens per SAE."),
    batch_size: int = typer.Option(2048, help="Training batch (tokens)."),
    ks: str = typer.Option("8,16,32,64", help="k values of TopK and BatchTopK."),
    afa_lambdas: str = typer.Option("1/128,1/64,1/32,1/16", help="lambda_AFA values of top-AFA."),
    group_size: int = typer.Option(8, help="Structured SAE: values per group."),
    k_groups: int = typer.Option(4, help="Structured SAE: groups kept per token."),
    eval_tokens: int = typer.Option(32768, help="Held-out tokens per evaluation."),
    concepts: bool = typer.Option(True, "--concepts/--no-concepts",
                                  help="Also run the language concept evaluation."),
    prefix: str = typer.Option("bq", help="Name prefix of the benchmark's SAEs."),
    retrain: bool = typer.Option(False, help="Retrain SAEs that already exist."),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: CUDA when present)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Train and compare TopK, BatchTopK, top-AFA and structured SAEs at matched L0."""
    from app.recipes.default import DefaultRecipe
    from saes.bench_quality import QualityBenchConfig, format_report, run_quality_bench

    lab = get_lab()
    if acts is None and lab.exists(DefaultRecipe.acts):
        acts = DefaultRecipe.acts
    config = QualityBenchConfig(
        acts=acts, latents=latents, tokens=tokens, batch_size=batch_size, ks=_ints(ks),
        afa_lambdas=_floats(afa_lambdas), structured_group_size=group_size,
        structured_k_groups=k_groups, eval_tokens=eval_tokens, concepts=concepts,
        prefix=prefix, retrain=retrain, device=device,
    )
    report = run_quality_bench(lab, config, echo=lambda m: typer.echo(m, err=as_json))
    if as_json:
        from saes.evaluation.lab_runs import json_safe

        echo_json(json_safe(report))
    else:
        typer.echo(format_report(report))


def register(bench_app: typer.Typer) -> None:
    bench_app.command("sae-quality")(sae_quality_command)
