"""`workbench langfir ...`: find language features of an SAE (LangFIR), show a report."""

from __future__ import annotations

import typer

from app.cli.common import echo_json, echo_table, get_lab

langfir_app = typer.Typer(help="LangFIR: language features of an SAE by random-token filtering.",
                          no_args_is_help=True)


@langfir_app.command("run")
def run(
    model: str = typer.Option(..., help="Lab model name, TransformerLens name or HF folder."),
    sae: str = typer.Option(..., help="SAE: lab name, sae-lens folder or release/id."),
    corpus: str = typer.Option(..., help="Corpus artifact with monolingual text per language."),
    name: str = typer.Option(..., help="Name of the report artifact (kind langfir)."),
    languages: str = typer.Option(None, help="Comma-separated languages (default: all)."),
    tau: float = typer.Option(0.3, help="Frequency threshold: share of L's tokens."),
    tau_r: float = typer.Option(0.1, "--tau-r", help="Random-token filter threshold."),
    n_docs: int = typer.Option(100, help="Monolingual documents per language."),
    vectors: bool = typer.Option(True, help="Also store the steering vectors "
                                 "<name>-<language>-<method>."),
    strength: float = typer.Option(4.0, help="Default strength of the vectors (x resid_norm)."),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: CUDA when present)."),
    overwrite: bool = typer.Option(False, help="Replace existing artifacts of these names."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Kept features per language, stability, ablation matrix; optionally the vectors."""
    from steering.langfir import LangFIRConfig, load_report, run_langfir
    from steering.making import make_report_vectors

    lab = get_lab()
    langs = [s.strip() for s in languages.split(",") if s.strip()] if languages else None
    run_langfir(lab, name, model, sae, corpus, langs,
                LangFIRConfig(tau=tau, tau_r=tau_r, n_docs=n_docs), overwrite=overwrite,
                device=device)
    made = make_report_vectors(lab, name, strength=strength, overwrite=overwrite) if vectors else []
    report = load_report(lab, name)
    if as_json:
        echo_json({**report.meta, "vectors": [a.name for a in made]})
        return
    _print_report(report)
    if made:
        typer.echo(f"vectors: {len(made)} ({made[0].name}, ...)")


@langfir_app.command("show")
def show(name: str, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Kept features, ablation matrix and stability of a LangFIR report."""
    from steering.langfir import load_report

    report = load_report(get_lab(), name)
    if as_json:
        echo_json(report.meta)
        return
    _print_report(report)


def _print_report(report) -> None:
    meta = report.meta
    typer.echo(f"{report.name}: {meta['sae']} at {meta['hook']} of {meta['model']}, "
               f"tau {meta['config']['tau']}, tau_r {meta['config']['tau_r']}")
    rows = []
    feats = report.features
    for lang in report.languages:
        mine = feats[feats.language == lang]
        rows.append({
            "language": lang, "kept": len(mine),
            "features": ",".join(str(i) for i in mine.feature.tolist()[:8]),
            "min_selectivity": f"{mine.selectivity.min():.1f}" if len(mine) else "-",
            "max_p_random": f"{mine.p_random.max():.3f}" if len(mine) else "-",
            "max_guide_other": f"{mine.max_guide_p_other.max():.3f}" if len(mine) else "-",
        })
    echo_table(rows, ["language", "kept", "features", "min_selectivity", "max_p_random",
                      "max_guide_other"])
    if len(report.ablation):
        typer.echo("\nCE increase with the kept directions projected out (rows ablated, "
                   "columns evaluated):")
        matrix = report.ablation.pivot(index="ablated", columns="evaluated", values="increase")
        typer.echo(matrix.round(3).to_string())
        dom = meta["summary"].get("ablation_dominance", {})
        typer.echo(f"diagonal-dominant (own >= {dom.get('factor')}x mean of others): "
                   f"{len(dom.get('passing', []))}/{len(dom.get('ratio', {}))}")
    stab = report.stability.pivot(index="language", columns="n_docs", values="n_kept")
    typer.echo("\nkept features by number of documents:\n" + stab.to_string())
    timings = meta.get("timings", {})
    typer.echo(f"\ntime: {timings.get('total_s', 0):.1f} s")


def register(app: typer.Typer) -> None:
    app.add_typer(langfir_app, name="langfir")
