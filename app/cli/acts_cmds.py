"""`workbench acts ...`: cache a model's activations at a hook point; inspect a cache."""

from __future__ import annotations

import typer

from app.cli.common import echo_json, echo_table, get_lab

acts_app = typer.Typer(help="Activation caches: sharded activations at one hook point.",
                       no_args_is_help=True)


@acts_app.command("cache")
def cache(
    model: str = typer.Option(..., help="Lab model name, TransformerLens name or HF folder."),
    hook: str = typer.Option(..., help="Hook point, e.g. blocks.1.hook_resid_post."),
    corpus: str = typer.Option(..., help="Corpus artifact name."),
    tokens: int = typer.Option(..., "--tokens", help="Number of text tokens to cache."),
    split: str = typer.Option("train", help="Corpus split."),
    context_size: int = typer.Option(128, help="Tokens per context window (BOS included)."),
    dtype: str = typer.Option("float32", help="Stored dtype: float32, float16 or bfloat16."),
    name: str = typer.Option(None, help="Artifact name (default <model>-<hook>-acts)."),
    shard_tokens: int = typer.Option(65536, help="Tokens per shard file."),
    batch_size: int = typer.Option(
        None, help="Context windows per model forward pass (default: about 1k tokens on CPU, "
                   "32k on GPU)."),
    seed: int = typer.Option(0, help="Seed of the document order."),
    packing: str = typer.Option("concat", help="concat: documents joined into full windows "
                                "(sae-lens style); document: each document in its own windows."),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: CUDA when present)."),
    overwrite: bool = typer.Option(False, help="Replace an existing artifact of that name."),
) -> None:
    """Cache activations (streamed and sharded; rerun the same command to resume)."""
    from workbench.activations import cache_activations, peak_rss_mb

    store = cache_activations(
        get_lab(), name, model, hook, corpus, tokens, context_size=context_size, split=split,
        shard_tokens=shard_tokens, dtype=dtype, model_batch_size=batch_size, seed=seed,
        packing=packing, device=device, overwrite=overwrite,
    )
    m = store.artifact.metrics
    typer.echo(f"cached {store.n_tokens} tokens x {store.d_in} ({store.dtype}) of {store.hook} "
               f"in {len(store.shards)} shards -> {store.name}")
    if m.get("corpus_exhausted"):
        typer.echo(f"note: split {split!r} of {corpus!r} ran out after {store.n_tokens} of "
                   f"{tokens} tokens")
    typer.echo(f"{m['tokens_per_s']} tokens/s; peak RSS {peak_rss_mb():.0f} MiB")


@acts_app.command("show")
def show(
    name: str,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    head: int = typer.Option(0, help="Also print the first N tokens with document and position."),
) -> None:
    """Describe an activations artifact."""
    from workbench.activations import open_activations

    store = open_activations(get_lab(), name)
    info = {k: store.artifact.manifest.get(k) for k in
            ("model", "hook", "d_in", "dtype", "n_tokens", "context_size", "packing", "corpus",
             "split")}
    info["packing"] = store.packing
    info["shards"] = len(store.shards)
    if as_json:
        echo_json({**info, "metrics": store.artifact.metrics})
        return
    for key, value in {**info, **store.artifact.metrics}.items():
        typer.echo(f"{key}: {value}")
    if head > 0:
        _echo_head(store, head)


def _echo_head(store, n: int) -> None:
    n = min(n, store.n_tokens)
    index = store.read_index(0, n)
    docs = store.documents()
    rows = [
        {"i": i, "token_id": int(index["token_ids"][i]), "doc_id": int(index["doc_ids"][i]),
         "position": int(index["positions"][i]),
         "language": docs["language"].get(int(index["doc_ids"][i]), "?")
         if "language" in docs.columns else "?",
         "norm": f"{float(row.norm()):.2f}"}
        for i, row in enumerate(store.read(0, n))
    ]
    echo_table(rows, ["i", "token_id", "doc_id", "position", "language", "norm"])


def register(app: typer.Typer) -> None:
    app.add_typer(acts_app, name="acts")
