"""`workbench analyze ...`: sparsity analyses on any model `load_model` loads.

    workbench analyze sparsity --model default-lm [--p 1] [--tokens 32768]
    workbench analyze sparsity-law sl-relu-L2-d128 sl-silu-L2-d128 --name my-law
    workbench analyze attention --model default-lm [--no-whatif]
    workbench analyze depth --model default-lm [--model other-lm ...]
    workbench analyze bench [--tokens 100000]          timing + attention peak memory
    workbench analyze show NAME [--table layers]       print a stored analysis table

Each analysis is stored as an `analysis` artifact (Parquet tables + summary.json; default name
`<analysis>-<model>`) that the dashboard reads; `--json` prints the summary as JSON.
"""

from __future__ import annotations

import re

import typer

from app.cli.common import echo_json, echo_table, get_lab
from app.cli.sae_cmds import passive_openmp

analyze_app = typer.Typer(help="Analyses: activation sparsity (PPL-p%), sparsity laws, "
                               "attention sparsity, depth utilization.", no_args_is_help=True)

_MODEL_HELP = "Model: lab model (NAME or NAME@STEP), TransformerLens name or Hugging Face folder."
_CORPUS_HELP = "Corpus of the evaluation tokens (default: the lab model's training corpus)."


def default_name(analysis: str, model: str) -> str:
    """The default artifact name of an analysis of `model` (also what the dashboard proposes)."""
    text = re.sub(r"[^A-Za-z0-9_.\-]+", "-", f"{analysis}-{model}").strip("-.")
    return text[:100]


def _print_result(result: dict, table: str, columns: list[str] | None, as_json: bool) -> None:
    summary = result["summary"]
    if as_json:
        echo_json(summary)
        return
    frame = result["tables"][table]
    cols = columns or list(frame.columns)
    rows = [{c: _fmt(v) for c, v in row.items()} for row in frame[cols].to_dict("records")]
    echo_table(rows, cols)
    for key, value in summary.items():
        if isinstance(value, (int, float, str)) and key not in ("analysis",):
            typer.echo(f"{key}: {_fmt(value)}")
    if result.get("artifact") is not None:
        typer.echo(f"stored as analysis artifact {result['artifact'].name!r}")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value)


@analyze_app.command("sparsity")
def sparsity_cmd(
    model: str = typer.Option(..., "--model", help=_MODEL_HELP),
    corpus: str = typer.Option(None, "--corpus", help=_CORPUS_HELP),
    split: str = typer.Option("validation", "--split", help="Corpus split."),
    tokens: int = typer.Option(32768, "--tokens", help="Evaluation tokens."),
    search_tokens: int = typer.Option(16384, "--search-tokens",
                                      help="Tokens the PPL-p% searches run on."),
    threshold_tokens: int = typer.Option(4096, "--threshold-tokens",
                                         help="Dense-activation sample for the thresholds."),
    p: float = typer.Option(1.0, "--p", help="Allowed perplexity increase in percent."),
    ppl_tol: float = typer.Option(0.05, "--ppl-tol",
                                  help="Stop once within this many percentage points of p."),
    fixed_eps: float = typer.Option(1e-2, "--fixed-eps", help="Fixed-threshold baseline |a|<=eps."),
    topk: bool = typer.Option(True, "--topk/--no-topk", help="Search the top-k baseline too."),
    name: str = typer.Option(None, "--name", help="Artifact name (default sparsity-MODEL)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing artifact."),
    device: str = typer.Option(None, "--device", help="cpu / cuda (default: CUDA if present)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """MLP activation sparsity at PPL-p% (CETT thresholds) with zero / fixed / top-k baselines."""
    passive_openmp()
    from workbench.analysis.sparsity import SparsityConfig, analyze_sparsity

    cfg = SparsityConfig(corpus=corpus, split=split, n_tokens=tokens, search_tokens=search_tokens,
                         threshold_tokens=threshold_tokens, p=p, ppl_tol=ppl_tol,
                         fixed_eps=fixed_eps, topk=topk)
    result = analyze_sparsity(model, get_lab(), cfg, name or default_name("sparsity", model),
                              overwrite=overwrite, device=device)
    _print_result(result, "layers", ["layer", "threshold", "cett", "activation_ratio",
                                     "zero_ratio", "fixed_ratio", "topk_ratio"], as_json)


@analyze_app.command("sparsity-law")
def sparsity_law_cmd(
    models: list[str] = typer.Argument(  # noqa: B008 (typer's declaration style)
        ..., help="Lab models with kept checkpoints."),
    corpus: str = typer.Option(None, "--corpus", help=_CORPUS_HELP),
    tokens: int = typer.Option(16384, "--tokens", help="Evaluation tokens per checkpoint."),
    threshold_tokens: int = typer.Option(4096, "--threshold-tokens",
                                         help="Dense-activation sample for the thresholds."),
    p: float = typer.Option(1.0, "--p", help="Allowed perplexity increase in percent."),
    joint_last: int = typer.Option(3, "--joint-last",
                                   help="Search one CETT target on the last N checkpoints "
                                        "(0: per checkpoint)."),
    fit_min_step: int = typer.Option(8, "--fit-min-step",
                                     help="Fit the laws on checkpoints from this step on."),
    name: str = typer.Option(None, "--name", help="Artifact name (default sparsity-law-MODEL)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing artifact."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """PPL-p% activation ratio at every kept checkpoint and the fitted sparsity laws."""
    passive_openmp()
    from workbench.analysis.sparsity_law import SparsityLawConfig, analyze_sparsity_law

    cfg = SparsityLawConfig(corpus=corpus, n_tokens=tokens, threshold_tokens=threshold_tokens,
                            p=p, joint_last=joint_last, fit_min_step=fit_min_step)
    result = analyze_sparsity_law(get_lab(), name or default_name("sparsity-law", models[0]),
                                  models, cfg, overwrite=overwrite)
    if as_json:
        echo_json(result["summary"])
        return
    _print_result(result, "ratios", ["model", "step", "D", "cett_target", "activation_ratio",
                                     "ppl_ratio"], False)
    for line in result["summary"]["report"]:
        typer.echo(line)


@analyze_app.command("attention")
def attention_cmd(
    model: str = typer.Option(..., "--model", help=_MODEL_HELP),
    corpus: str = typer.Option(None, "--corpus", help=_CORPUS_HELP),
    split: str = typer.Option("validation", "--split", help="Corpus split."),
    tokens: int = typer.Option(32768, "--tokens", help="Evaluation tokens."),
    whatif: bool = typer.Option(True, "--whatif/--no-whatif",
                                help="Measure the loss under sparse attention."),
    whatif_tokens: int = typer.Option(None, "--whatif-tokens",
                                      help="Tokens of the what-if runs (default: all)."),
    block_size: int = typer.Option(16, "--block-size", help="Key/query block size."),
    backend: str = typer.Option("auto", "--backend", help="sparse_ops backend: auto/torch/triton."),
    name: str = typer.Option(None, "--name", help="Artifact name (default attention-MODEL)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing artifact."),
    device: str = typer.Option(None, "--device", help="cpu / cuda (default: CUDA if present)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """k@p coverage, entropy, sink/local mass and pattern class per head; sparse-attention loss."""
    passive_openmp()
    from workbench.analysis.attention import AttentionConfig, analyze_attention

    cfg = AttentionConfig(corpus=corpus, split=split, n_tokens=tokens, whatif=whatif,
                          whatif_tokens=whatif_tokens, block_size=block_size, backend=backend)
    result = analyze_attention(model, get_lab(), cfg, name or default_name("attention", model),
                               overwrite=overwrite, device=device)
    _print_result(result, "heads", ["layer", "head", "k90", "k99", "entropy", "eff_keys",
                                    "sink_mass", "local_mass", "vs_coverage", "block_k90",
                                    "pattern_class"], as_json)
    if whatif and not as_json:
        frame = result["tables"]["whatif"]
        echo_table([{c: _fmt(v) for c, v in r.items()} for r in frame.to_dict("records")],
                   list(frame.columns))


@analyze_app.command("depth")
def depth_cmd(
    model: list[str] = typer.Option(..., "--model",  # noqa: B008 (typer's declaration style)
                                    help=_MODEL_HELP + " Repeat for a comparison table."),
    corpus: str = typer.Option(None, "--corpus", help=_CORPUS_HELP),
    split: str = typer.Option("validation", "--split", help="Corpus split."),
    tokens: int = typer.Option(32768, "--tokens", help="Evaluation tokens."),
    fit_tokens: int = typer.Option(8192, "--fit-tokens",
                                   help="Held-out tokens the affine replacements are fitted on."),
    useful_ratio: float = typer.Option(1.1, "--useful-ratio",
                                       help="A layer is useful when loss_affine/loss > this."),
    name: str = typer.Option(None, "--name", help="Artifact name (default depth-MODEL)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing artifact."),
    device: str = typer.Option(None, "--device", help="cpu / cuda (default: CUDA if present)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Angular distances, layer skipping, usefulness, variances, causal scores (per model)."""
    passive_openmp()
    from workbench.analysis.depth import DepthConfig, analyze_depth, compare_depth

    cfg = DepthConfig(corpus=corpus, split=split, n_tokens=tokens, fit_tokens=fit_tokens,
                      useful_ratio=useful_ratio)
    lab = get_lab()
    if len(model) == 1:
        result = analyze_depth(model[0], lab, cfg, name or default_name("depth", model[0]),
                               overwrite=overwrite, device=device)
        _print_result(result, "layers", ["layer", "skip_delta", "affine_ratio", "useful",
                                         "resid_var", "attn_var", "mlp_var"], as_json)
        return
    result = compare_depth(model, lab, cfg, name or default_name("depth-compare", model[0]),
                           overwrite=overwrite, device=device)
    if as_json:
        echo_json(result["summary"])
        return
    frame = result["tables"]["comparison"]
    echo_table([{c: _fmt(v) for c, v in r.items()} for r in frame.to_dict("records")],
               list(frame.columns))


@analyze_app.command("bench")
def bench_cmd(
    model: str = typer.Option("default-lm", "--model", help=_MODEL_HELP),
    corpus: str = typer.Option(None, "--corpus", help=_CORPUS_HELP),
    tokens: int = typer.Option(100_000, "--tokens", help="Tokens per analysis."),
    memory_tokens: str = typer.Option("25000,100000", "--memory-tokens",
                                      help="Token counts of the attention peak-memory runs."),
    only: str = typer.Option("sparsity,attention,depth,memory", "--only",
                             help="Which parts to run."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Time the three analyses over `--tokens` tokens; attention metrics' peak RSS per size."""
    passive_openmp()
    from workbench.analysis.bench import BenchConfig, format_report, run_bench

    cfg = BenchConfig(model=model, corpus=corpus, tokens=tokens,
                      memory_tokens=tuple(int(t) for t in memory_tokens.split(",") if t.strip()),
                      parts=tuple(p.strip() for p in only.split(",") if p.strip()))
    report = run_bench(get_lab(), cfg, echo=lambda m: typer.echo(m, err=as_json))
    if as_json:
        echo_json(report)
    else:
        typer.echo(format_report(report))


@analyze_app.command("show")
def show_cmd(
    name: str = typer.Argument(..., help="An analysis artifact."),
    table: str = typer.Option(None, "--table", help="Table to print (default: the summary)."),
    limit: int = typer.Option(50, "--limit", help="Rows to print."),
) -> None:
    """Print the summary or one table of a stored analysis."""
    from workbench.analysis.common import read_table

    lab = get_lab()
    art = lab.get(name, kind="analysis")
    if table is None:
        echo_json({"tables": art.manifest.get("tables", {}),
                   "summary": art.manifest.get("summary", {})})
        return
    frame = read_table(lab, name, table).head(limit)
    echo_table([{c: _fmt(v) for c, v in r.items()} for r in frame.to_dict("records")],
               list(frame.columns))


def register(app: typer.Typer) -> None:
    app.add_typer(analyze_app, name="analyze")
