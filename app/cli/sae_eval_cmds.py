"""`workbench sae eval|concepts|stats NAME`: evaluate a lab SAE and compute its feature
statistics. `add_commands(sae_app)` adds the commands to the `sae` group (sae_cmds.py)."""

from __future__ import annotations

from typing import Any

import typer

from app.cli.common import echo_json, echo_table, get_lab

HEADLINE = ("nmse", "fvu", "explained_variance", "l0", "dead_fraction", "shrinkage",
            "eps_lbo_median", "ce_loss_without_sae", "ce_loss_with_sae", "ce_loss_with_ablation",
            "ce_loss_score", "delta_lm_loss", "kl_div_with_sae", "kl_div_score", "n_tokens")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _plain_json(obj: Any) -> None:
    from saes.evaluation.lab_runs import json_safe

    echo_json(json_safe(obj))


def eval_command(
    name: str = typer.Argument(..., help="Lab SAE name."),
    tokens: int = typer.Option(32768, "--tokens", help="Held-out tokens to evaluate on."),
    acts: str = typer.Option(None, "--acts", help="Activations artifact giving model, hook and "
                             "corpus (default: the SAE's own)."),
    on_acts: bool = typer.Option(False, "--on-acts", help="Reconstruction metrics over the "
                                 "cached activations instead of held-out text."),
    batch_size: int = typer.Option(4096, help="Tokens encoded at once."),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: CUDA when present)."),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
) -> None:
    """Evaluate an SAE: NMSE, FVU, L0, dead latents, shrinkage, eps_LBO, CE/KL spliced."""
    from saes.evaluation import evaluate_lab_sae

    result = evaluate_lab_sae(get_lab(), name, n_tokens=tokens, acts_name=acts, on_acts=on_acts,
                              device=device, batch_size=batch_size)
    if as_json:
        _plain_json(result)
        return
    echo_table([{"metric": k, "value": _fmt(result[k])} for k in HEADLINE if k in result],
               ["metric", "value"])
    typer.echo(f"stored in {name}/eval.json")


def concepts_command(
    name: str = typer.Argument(..., help="Lab SAE name."),
    tokens: int = typer.Option(16384, "--tokens", help="Labelled tokens to read."),
    acts: str = typer.Option(None, "--acts", help="Activations artifact (default: the SAE's)."),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: CUDA when present)."),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
) -> None:
    """Language concept: probe upper bound vs the best latent per language and best group."""
    from saes.evaluation import evaluate_lab_concepts

    result = evaluate_lab_concepts(get_lab(), name, n_tokens=tokens, acts_name=acts,
                                   device=device)
    if as_json:
        _plain_json(result)
        return
    rows = [{"language": lang, "latent": v["latent"], "test_auroc": _fmt(v["test_auroc"]),
             "test_f1": _fmt(v["test_f1"]), "logpost_corr": _fmt(v["logpost_corr"]),
             "probe_auroc": _fmt(result["probe"]["auroc_per_class"][lang])}
            for lang, v in result["single_latent"]["per_class"].items()]
    echo_table(rows, ["language", "latent", "test_auroc", "test_f1", "logpost_corr",
                      "probe_auroc"])
    group = result["group"]
    typer.echo(f"probe (upper bound): accuracy {_fmt(result['probe']['accuracy'])}")
    typer.echo(f"group of best latents {group['latents']}: accuracy {_fmt(group['accuracy'])}, "
               f"log-posterior corr {_fmt(group['logpost_corr'])}")
    if "posterior_group" in result:
        pg = result["posterior_group"]
        typer.echo(f"best posterior group {pg['group']}: accuracy {_fmt(pg['accuracy'])}, "
                   f"log-posterior corr {_fmt(pg['logpost_corr'])}, direct "
                   f"{_fmt(pg['direct_logpost_corr'])}")


def stats_command(
    name: str = typer.Argument(..., help="Lab SAE name."),
    tokens: int = typer.Option(262144, "--tokens", help="Tokens of the activations to read."),
    acts: str = typer.Option(None, "--acts", help="Activations artifact (default: the SAE's)."),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: CUDA when present)."),
) -> None:
    """Feature statistics for the dashboard (frequency, histograms, contexts, logit effects)."""
    from saes.feature_stats import compute_feature_stats

    summary = compute_feature_stats(get_lab(), name, n_tokens=tokens, acts_name=acts,
                                    device=device)
    typer.echo(f"feature statistics of {name} over {summary['feature_stats_tokens']} tokens of "
               f"{summary['feature_stats_activations']} (dead fraction "
               f"{_fmt(summary['feature_stats_dead_fraction'])}) -> "
               "feature_stats.parquet, feature_contexts.parquet")


def add_commands(sae_app: typer.Typer) -> None:
    """Add `eval`, `concepts` and `stats` to the `sae` command group."""
    sae_app.command("eval")(eval_command)
    sae_app.command("concepts")(concepts_command)
    sae_app.command("stats")(stats_command)
