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
    tau: float = typer.Option(0.05, help="Frequency threshold: share of L's tokens."),
    tau_r: float = typer.Option(0.2, "--tau-r", help="Random-token filter threshold."),
    min_selectivity: float = typer.Option(
        5.0, help="Ours, not the paper's: also require p_L >= this x the largest frequency on "
        "another language (reads the other languages' text); 0 = the paper's monolingual pick."),
    max_features: int = typer.Option(5, help="Ours: at most this many features per language, "
                                     "most frequent first; 0 = no cap."),
    n_docs: int = typer.Option(100, help="Monolingual documents per language."),
    vectors: bool = typer.Option(True, help="Also store the steering vectors "
                                 "<name>-<language>-<method>."),
    strength: float = typer.Option(2.0, help="Default strength of the vectors (x resid_norm)."),
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
                LangFIRConfig(tau=tau, tau_r=tau_r, min_selectivity=min_selectivity or None,
                              max_features=max_features or None, n_docs=n_docs),
                overwrite=overwrite,
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
    import math

    from steering.report_views import ablation_pivot, kept_summary, stability_pivot

    meta = report.meta
    cfg = meta["config"]
    typer.echo(f"{report.name}: {meta['sae']} at {meta['hook']} of {meta['model']}, "
               f"tau {cfg['tau']}, tau_r {cfg['tau_r']}, min_selectivity "
               f"{cfg.get('min_selectivity')}, max_features {cfg.get('max_features')}")

    def fmt(value: float, spec: str) -> str:
        return "-" if math.isnan(value) else format(value, spec)  # NaN: no kept features

    per_lang = meta["summary"]["languages"]

    def paper_pick(lang: str) -> str:  # the paper's tau/tau_r pick before our filter and cap
        paper = per_lang.get(lang, {})
        if "n_candidates" not in paper:
            return "-"
        return f"{paper['n_candidates']} ({paper['n_candidates_selective_5x']} >=5x)"

    rows = [{"language": r.language, "kept": r.n_kept, "paper_pick": paper_pick(r.language),
             "features": ",".join(str(i) for i in r.features[:8]),
             "min_selectivity": fmt(r.min_selectivity, ".1f"),
             "max_p_random": fmt(r.max_p_random, ".3f"),
             "max_guide_other": fmt(r.max_guide_p_other, ".3f")}
            for r in kept_summary(report).itertuples()]
    echo_table(rows, ["language", "kept", "paper_pick", "features", "min_selectivity",
                      "max_p_random",
                      "max_guide_other"])
    if len(report.ablation):
        typer.echo("\nCE increase with the kept directions projected out (rows ablated, "
                   "columns evaluated):")
        typer.echo(ablation_pivot(report).round(3).to_string())
        dom = meta["summary"].get("ablation_dominance", {})
        typer.echo(f"diagonal-dominant (own >= {dom.get('factor')}x mean of others): "
                   f"{len(dom.get('passing', []))}/{len(dom.get('ratio', {}))}")
    typer.echo("\nkept features by number of documents:\n"
               + stability_pivot(report).to_string())
    timings = meta.get("timings", {})
    typer.echo(f"\ntime: {timings.get('total_s', 0):.1f} s")


def register(app: typer.Typer) -> None:
    app.add_typer(langfir_app, name="langfir")
