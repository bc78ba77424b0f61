"""`workbench bench ...`: benchmarks.

    workbench bench sae-train --vs sae-lens,sparsify [--tokens 2000000]   our SAE trainer vs
                                                  sae-lens' and EleutherAI sparsify's
    workbench bench kernels                                       sparse_ops kernels (bench_kernels.py)
    workbench bench sae-quality ...                               SAE quality (bench_quality_cmds.py)
"""

from __future__ import annotations

import importlib

import typer

from app.cli.common import echo_json, get_lab
from app.cli.sae_cmds import passive_openmp
from workbench.errors import InvalidInputError

bench_app = typer.Typer(help="Benchmarks: SAE training speed, kernels, SAE quality.",
                        no_args_is_help=True)


@bench_app.command("sae-train")
def sae_train(
    vs: str = typer.Option("sae-lens", "--vs",
                           help="Baseline trainers: sae-lens, sparsify or sae-lens,sparsify "
                                "(sparsify needs the bench extra: pip install -e '.\\[bench]')."),
    sae_lens_lr: str = typer.Option("default,ours", "--sae-lens-lr",
                                    help="sae-lens rows: at its default lr, at ours, or both."),
    tokens: int = typer.Option(2_000_000, "--tokens", help="Training tokens per run."),
    modes: str = typer.Option("cache,live", "--modes",
                              help="cache (every trainer from the same activation cache), live "
                                   "(every trainer from the same live model), or cache,live."),
    model: str = typer.Option(None, "--model",
                              help="Lab model (default: one with d_model 256, else a random one)."),
    corpus: str = typer.Option(None, "--corpus", help="Corpus (default: the lab's first)."),
    latents: int = typer.Option(4096, "--latents", help="SAE latents."),
    k: int = typer.Option(32, "--k", help="TopK k."),
    batch_size: int = typer.Option(4096, "--batch-size", help="Tokens per step."),
    eval_tokens: int = typer.Option(65536, "--eval-tokens", help="Held-out evaluation tokens."),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Train the same TopK SAE with our trainer and with sae-lens's and/or sparsify's, on the
    same activations."""
    passive_openmp()
    from saes.bench_train import BenchTrainConfig, format_report, run_benchmark

    chosen = _items(modes)
    if not chosen or set(chosen) - {"cache", "live"}:
        raise InvalidInputError(f"--modes {modes!r}: use cache, live or cache,live")
    cfg = BenchTrainConfig(tokens=tokens, modes=tuple(chosen), model=model, corpus=corpus,
                           latents=latents, k=k, batch_size=batch_size, eval_tokens=eval_tokens,
                           threads=threads, baselines=_items(vs), sae_lens_lrs=_items(sae_lens_lr))
    report = run_benchmark(get_lab(), cfg, echo=lambda m: typer.echo(m, err=as_json))
    if as_json:
        echo_json(report)
    else:
        typer.echo(format_report(report))


def _items(text: str) -> tuple[str, ...]:
    """'a, b' -> ('a', 'b')."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


for _module in ("bench_kernels", "bench_quality_cmds", "bench_dashboard_cmds"):  # join `bench`
    importlib.import_module(f"app.cli.{_module}").register(bench_app)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
