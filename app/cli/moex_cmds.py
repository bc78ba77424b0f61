"""`workbench moex ...`: train MoE-X / Switch / dense variants on a chess (or text) corpus and
print the board-state interpretability table (the paper's Table 1 plus ablation rows)."""

from __future__ import annotations

import typer

from app.cli.common import echo_json, get_lab

moex_app = typer.Typer(help="MoE-X: interpretable mixture-of-experts models and their "
                            "board-state evaluation.", no_args_is_help=True)


@moex_app.command("train")
def train_cmd(
    corpus: str = typer.Option(..., help="Corpus artifact (e.g. the chess dataset 'chess')."),
    tokenizer: str = typer.Option(..., help="Tokenizer artifact (e.g. 'chess-tok')."),
    name: str = typer.Option(..., help="Name of the model artifact."),
    variant: str = typer.Option("moex", help="moex | switch | moe_relu | moex_gelu | "
                                             "dense_gelu | dense_relu."),
    experts: int = typer.Option(8, help="Number of experts M."),
    k: int = typer.Option(2, help="Experts per token (top-k)."),
    d_expert: int = typer.Option(256, help="Hidden units per expert D (dense width: k * D)."),
    balance_coef: float = typer.Option(0.01, help="Load-balancing loss coefficient."),
    layers: int = typer.Option(2, help="Transformer layers."),
    d_model: int = typer.Option(128, help="Residual width."),
    heads: int = typer.Option(4, help="Attention heads."),
    n_ctx: int = typer.Option(256, help="Context length (characters + BOS for chess)."),
    steps: int = typer.Option(500, help="Optimizer steps."),
    batch_size: int = typer.Option(16, help="Sequences per step (the global batch under DDP)."),
    lr: float = typer.Option(3e-3, help="Peak learning rate."),
    packing: str = typer.Option("document", help="document (one game per row) | stream."),
    precision: str = typer.Option("fp32", help="fp32 | bf16 | auto."),
    upcycle_from: str = typer.Option(None, help="Start every expert from this dense lab model "
                                                "(its d_mlp must equal --d-expert)."),
    upcycle_noise: float = typer.Option(0.01, help="Noise (x weight std) added when upcycling."),
    restart: bool = typer.Option(False, help="Discard an interrupted run instead of resuming."),
) -> None:
    """Train one variant through the lab's LM trainer (resumable; torchrun for DDP)."""
    from transformer_lens import HookedTransformerConfig

    from workbench.errors import InvalidInputError
    from workbench.models.moex import DENSE_VARIANTS, MoESpec, upcycle_dense
    from workbench.models.train_config import LMTrainConfig
    from workbench.models.training import train_lm

    lab = get_lab()
    if variant not in DENSE_VARIANTS:
        spec = MoESpec.for_variant(variant, n_experts=experts, k=k, d_expert=d_expert,
                                   balance_coef=balance_coef)
    elif upcycle_from:
        raise InvalidInputError("--upcycle-from makes a MoE model; choose a MoE --variant")
    if heads < 1 or d_model % heads:
        raise InvalidInputError(f"--heads ({heads}) must divide --d-model ({d_model})")
    from workbench.models.tokenizer import load_tokenizer

    d_vocab = len(load_tokenizer(lab, tokenizer))
    cfg = HookedTransformerConfig(
        n_layers=layers, d_model=d_model, n_heads=heads, d_head=d_model // heads,
        d_mlp=d_expert if upcycle_from else k * d_expert, d_vocab=d_vocab, n_ctx=n_ctx,
        act_fn=DENSE_VARIANTS.get(variant, "relu"), default_prepend_bos=True, seed=0)
    train_cfg = LMTrainConfig(steps=steps, batch_size=batch_size, lr=lr, packing=packing,
                              precision=precision, warmup_steps=max(1, steps // 20),
                              eval_every=max(1, steps // 5))
    kwargs = {}
    if variant not in DENSE_VARIANTS:
        options = {**spec.to_options(), "variant": variant}
        if upcycle_from:
            from workbench.models.loading import load_model

            options.update(upcycled_from=upcycle_from, upcycle_noise=upcycle_noise)

            def init(model):
                dense = load_model(upcycle_from, lab=lab, device="cpu")
                model.load_state_dict(upcycle_dense(dense, spec, upcycle_noise).state_dict())

            kwargs["initialize"] = init
        kwargs.update(architecture="moex", architecture_options=options)
    import os

    art = train_lm(lab, name, corpus, tokenizer, cfg, train_cfg, restart=restart, **kwargs)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        typer.echo(f"model {art.name}: val loss {art.metrics['val_loss']:.4f}, "
                   f"{art.metrics['tokens_per_s']:.0f} tokens/s, {art.metrics['n_params']} params")


@moex_app.command("eval")
def eval_cmd(
    dataset: str = typer.Option("chess", help="Chess dataset artifact."),
    models: str = typer.Option(..., help="Comma-separated LABEL=MODEL (or MODEL) entries; "
                                         "MODEL+SAE for SAE features of MODEL's MLP hidden; "
                                         "prefix a label with '~' for an ablation row."),
    layer: int = typer.Option(1, help="Block whose MLP hidden units are scored."),
    name: str = typer.Option(None, help="Store the table as this analysis artifact."),
    max_games: int = typer.Option(None, help="Use at most this many games per split."),
    overwrite: bool = typer.Option(False, help="Replace an existing table artifact."),
    json_out: bool = typer.Option(False, "--json", help="Print the records as JSON."),
) -> None:
    """Board-state coverage / reconstruction / probes / val loss per model."""
    from saes.board_eval import TableRow, evaluate_chess_table, format_table

    rows = []
    for entry in [e.strip() for e in models.split(",") if e.strip()]:
        label, _, spec = entry.rpartition("=")
        spec_model, _, sae = spec.partition("+")
        group = "ablation" if label.startswith("~") else "main"
        rows.append(TableRow(label.lstrip("~") or spec, spec_model, sae or None, group))
    lab = get_lab()
    records = evaluate_chess_table(lab, dataset, rows, layer, name=name, max_games=max_games,
                                   overwrite=overwrite, echo=lambda s: None)
    if json_out:
        echo_json(records)
    else:
        typer.echo(format_table(records))


@moex_app.command("show")
def show_cmd(name: str = typer.Argument("chess-table", help="A stored table artifact.")) -> None:
    """Print a stored board-state table."""
    from saes.board_eval import format_table, load_chess_table

    typer.echo(format_table(load_chess_table(get_lab(), name).records))


@moex_app.command("text")
def text_cmd(
    corpus: str = typer.Option("default-corpus", help="Multilingual corpus artifact (its "
                                                      "validation split is read)."),
    models: str = typer.Option(..., help="Comma-separated LABEL=MODEL (or MODEL) entries; "
                                         "MODEL+SAE for SAE features of MODEL's MLP hidden."),
    layer: int = typer.Option(1, help="Block whose MLP hidden units (hook_post) are scored."),
    tokens: int = typer.Option(16384, help="Validation tokens for the concept evaluation."),
    name: str = typer.Option(None, help="Store the table as this analysis artifact."),
    overwrite: bool = typer.Option(False, help="Replace an existing table artifact."),
    json_out: bool = typer.Option(False, "--json", help="Print the records as JSON."),
) -> None:
    """MoE-X vs dense on text: validation loss and the language concept evaluation of MLP
    hidden units (MoE-X's wide hidden, dense neurons) and SAE features of a dense model."""
    from saes.text_eval import TextRow, evaluate_text_table, format_text_table

    rows = []
    for entry in [e.strip() for e in models.split(",") if e.strip()]:
        label, _, spec = entry.rpartition("=")
        spec_model, _, sae = spec.partition("+")
        rows.append(TextRow(label or spec, spec_model, sae or None))
    records = evaluate_text_table(get_lab(), corpus, rows, layer, n_tokens=tokens, name=name,
                                  overwrite=overwrite, echo=lambda s: None)
    if json_out:
        echo_json(records)
    else:
        typer.echo(format_text_table(records))


@moex_app.command("bench")
def bench_cmd(
    experts: int = typer.Option(8, help="Experts M."),
    k: int = typer.Option(2, help="Experts per token."),
    d_expert: int = typer.Option(256, help="Units per expert (dense width k * D)."),
    layers: int = typer.Option(2, help="Layers."),
    d_model: int = typer.Option(128, help="Residual width."),
    n_ctx: int = typer.Option(256, help="Sequence length."),
    batch_size: int = typer.Option(16, help="Sequences per step."),
    steps: int = typer.Option(10, help="Timed training steps (after 2 warm-up steps)."),
    precision: str = typer.Option("fp32", help="fp32 | bf16."),
) -> None:
    """Training tokens/s (forward + backward + AdamW) of dense GELU/ReLU and each MoE variant
    at equal active parameters, on random tokens."""
    import time

    import torch
    from transformer_lens import HookedTransformerConfig

    from workbench.models.architectures import quiet_hooked_transformer
    from workbench.models.losses import next_token_loss
    from workbench.models.moex import VARIANTS, MoESpec, build_moex, load_balance_loss

    cfg = HookedTransformerConfig(n_layers=layers, d_model=d_model, n_heads=max(1, d_model // 32),
                                  d_head=32, d_mlp=k * d_expert, d_vocab=35, n_ctx=n_ctx,
                                  act_fn="gelu", seed=0)
    tokens = torch.randint(0, 35, (batch_size, n_ctx), generator=torch.Generator().manual_seed(0))
    rows = []
    builds = {"dense_gelu": lambda: quiet_hooked_transformer(cfg),
              "dense_relu": lambda: quiet_hooked_transformer(
                  HookedTransformerConfig(**{**cfg.to_dict(), "act_fn": "relu"}))}
    for variant in VARIANTS:
        spec = MoESpec.for_variant(variant, n_experts=experts, k=k, d_expert=d_expert)
        builds[variant] = lambda spec=spec: build_moex(cfg, spec.to_options())
    for variant, make in builds.items():
        model = make().train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for i in range(steps + 2):
            if i == 2:
                t0 = time.perf_counter()
            loss = next_token_loss(model, tokens, precision)
            aux = load_balance_loss(model)
            (loss if aux is None else loss + aux).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - t0
        rows.append({"variant": variant, "tokens_per_s": round(steps * tokens.numel() / seconds),
                     "params": sum(p.numel() for p in model.parameters())})
    base = rows[0]["tokens_per_s"]
    typer.echo(f"threads {torch.get_num_threads()}, batch {batch_size} x {n_ctx}, {precision}; "
               f"active MLP width {k * d_expert} everywhere")
    for r in rows:
        typer.echo(f"{r['variant']:<11} {r['tokens_per_s']:>8} tokens/s  "
                   f"({r['tokens_per_s'] / base:.2f}x dense GELU)  {r['params']:>9} params")


def register(app: typer.Typer) -> None:
    app.add_typer(moex_app, name="moex")
