"""The chess lab: games, tokenizer, dense / Switch / MoE-X models, an SAE, the board-state table.

`workbench lab build chess [--quick]`. Steps, each skipped when its artifact exists (an
interrupted build resumes; an interrupted model resumes from its last saved state):

1. `chess`, `chess-tok`        games with board states (random + capture policies), tokenizer
2. `chess-dense_gelu`, `chess-dense_relu`   dense baselines (MLP width k * d_expert)
3. `chess-switch`, `chess-moex`, `chess-moe_relu`, `chess-moex_gelu`   MoE variants at equal
   active parameters (k of n_experts experts of d_expert units)
4. `chess-moex_upcycled`       MoE-X upcycled from `chess-dense_relu-seed` (a dense ReLU of width
   d_expert trained for half the steps), then trained for the other half
5. `chess-sae`                 TopK SAE on the dense GELU model's MLP hidden (as wide as MoE-X)
6. `chess-table`               coverage / reconstruction / probes / val loss per variant

The "small" preset is sized for about an hour on 2 CPU cores; `--quick` is a seconds-long
version for tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from app.recipes import run_step
from workbench.lab import Lab


@dataclass(frozen=True)
class ChessRecipe:
    prefix: str = "chess"
    n_games: int = 3000
    max_chars: int = 1023
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    n_ctx: int = 256
    n_experts: int = 8
    k: int = 2
    d_expert: int = 256
    steps: int = 500
    batch_size: int = 16
    lr: float = 3e-3
    precision: str = "fp32"  # the same arithmetic for every variant (a fair tokens/s)
    upcycle_noise: float = 0.01
    sae_latents: int = 2048
    sae_k: int = 32
    sae_tokens: int = 1_000_000
    sae_acts_games: int = 600
    eval_layer: int = 1
    eval_games: int | None = None
    probe_squares: tuple[int, ...] | None = None
    workers: int = 2

    @property
    def d_mlp(self) -> int:  # dense width at equal active parameters
        return self.k * self.d_expert


QUICK = ChessRecipe(n_games=60, max_chars=300, n_layers=1, d_model=32, n_heads=2, n_ctx=96,
                    n_experts=4, k=2, d_expert=32, steps=6, batch_size=4, sae_latents=128,
                    sae_k=8, sae_tokens=8192, sae_acts_games=20, eval_layer=0, eval_games=12,
                    probe_squares=(12,), workers=1)
MOE_VARIANTS = ("switch", "moex", "moe_relu", "moex_gelu")


def build(lab: Lab, echo: Callable[[str], None] = print, quick: bool = False,
          recipe: ChessRecipe | None = None) -> None:
    r = recipe or (QUICK if quick else ChessRecipe())
    p = r.prefix
    _step(lab, p, echo, lambda: _dataset(lab, r))
    _step(lab, f"{p}-tok", echo, lambda: _tokenizer(lab, r))
    for act in ("gelu", "relu"):
        _step(lab, f"{p}-dense_{act}", echo, lambda act=act: _dense(lab, r, act, r.d_mlp, r.steps,
                                                                     f"{p}-dense_{act}"))
    for variant in MOE_VARIANTS:
        _step(lab, f"{p}-{variant}", echo, lambda v=variant: _moe(lab, r, v))
    half = max(1, r.steps // 2)
    _step(lab, f"{p}-dense_relu-seed", echo,
          lambda: _dense(lab, r, "relu", r.d_expert, half, f"{p}-dense_relu-seed"))
    _step(lab, f"{p}-moex_upcycled", echo, lambda: _upcycled(lab, r, r.steps - half))
    _step(lab, f"{p}-sae", echo, lambda: _sae(lab, r))
    _step(lab, f"{p}-table", echo, lambda: _table(lab, r, echo))


def _step(lab: Lab, name: str, echo, fn) -> None:
    run_step(lab, "chess", name, fn, echo, report_skip=True)


def _dataset(lab: Lab, r: ChessRecipe) -> None:
    from workbench.data.chess import ChessDataConfig, build_chess_dataset

    build_chess_dataset(lab, r.prefix, ChessDataConfig(n_games=r.n_games, max_chars=r.max_chars,
                                                       workers=r.workers))


def _tokenizer(lab: Lab, r: ChessRecipe) -> None:
    from workbench.data.chess import save_chess_tokenizer

    save_chess_tokenizer(lab, f"{r.prefix}-tok")


def _model_cfg(r: ChessRecipe, act_fn: str, d_mlp: int):
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(
        n_layers=r.n_layers, d_model=r.d_model, n_heads=r.n_heads,
        d_head=r.d_model // r.n_heads, d_mlp=d_mlp, d_vocab=35, n_ctx=r.n_ctx, act_fn=act_fn,
        normalization_type="LN", default_prepend_bos=True, model_name=f"{r.prefix}-lm", seed=0)


def _train_cfg(r: ChessRecipe, steps: int):
    from workbench.models.train_config import LMTrainConfig

    return LMTrainConfig(steps=steps, batch_size=r.batch_size, lr=r.lr,
                         warmup_steps=max(1, steps // 20), eval_every=max(1, steps // 5),
                         eval_sequences=32, final_eval_sequences=512,
                         save_every=max(1, min(100, steps // 4)), packing="document",
                         precision=r.precision)


def _dense(lab: Lab, r: ChessRecipe, act: str, d_mlp: int, steps: int, name: str) -> None:
    from workbench.models.training import train_lm

    train_lm(lab, name, r.prefix, f"{r.prefix}-tok", _model_cfg(r, act, d_mlp),
             _train_cfg(r, steps), progress=False)


def _spec(r: ChessRecipe, variant: str):
    from workbench.models.moex import MoESpec

    return MoESpec.for_variant(variant, n_experts=r.n_experts, k=r.k, d_expert=r.d_expert)


def _moe(lab: Lab, r: ChessRecipe, variant: str) -> None:
    from workbench.models.training import train_lm

    train_lm(lab, f"{r.prefix}-{variant}", r.prefix, f"{r.prefix}-tok",
             _model_cfg(r, "relu", r.d_mlp), _train_cfg(r, r.steps), architecture="moex",
             architecture_options={**_spec(r, variant).to_options(), "variant": variant},
             progress=False)


def _upcycled(lab: Lab, r: ChessRecipe, steps: int) -> None:
    from workbench.models.loading import load_model
    from workbench.models.moex import upcycle_dense
    from workbench.models.training import train_lm

    seed_name = f"{r.prefix}-dense_relu-seed"
    spec = _spec(r, "moex")

    def init(model):
        dense = load_model(seed_name, lab=lab, device="cpu")
        model.load_state_dict(upcycle_dense(dense, spec, noise=r.upcycle_noise).state_dict())

    train_lm(lab, f"{r.prefix}-moex_upcycled", r.prefix, f"{r.prefix}-tok",
             _model_cfg(r, "relu", r.d_expert), _train_cfg(r, steps), architecture="moex",
             architecture_options={**spec.to_options(), "variant": "moex",
                                   "upcycled_from": seed_name, "upcycle_noise": r.upcycle_noise},
             initialize=init, progress=False)


def _sae(lab: Lab, r: ChessRecipe) -> None:
    import torch

    from saes.board_eval import mlp_hidden_hook
    from saes.training import SAETrainConfig, tensor_source, train_saes
    from workbench.data.chess import encode_games, load_games
    from workbench.models.loading import load_model

    name = f"{r.prefix}-dense_gelu"
    model = load_model(name, lab=lab)
    hook = mlp_hidden_hook(r.eval_layer)
    games = load_games(lab, r.prefix, "train").text.tolist()[:r.sae_acts_games]
    rows = encode_games(model.tokenizer, games, r.n_ctx)
    acts = []
    with torch.no_grad():
        for s in range(0, len(rows), 16):
            batch = rows[s:s + 16]
            _, cache = model.run_with_cache(batch, names_filter=[hook],
                                            stop_at_layer=r.eval_layer + 1)
            keep = batch != model.tokenizer.pad_token_id
            acts.append(cache[hook][keep].float())
    x = torch.cat(acts)
    batch_size = min(4096, (len(x) // 4) or 1)
    train_saes(lab, [SAETrainConfig(name=f"{r.prefix}-sae", arch="topk", latents=r.sae_latents,
                                    k=r.sae_k, tokens=max(r.sae_tokens, batch_size),
                                    batch_size=batch_size)],
               tensor_source(x, name, hook), progress=False)


def table_rows(r: ChessRecipe):
    from saes.board_eval import TableRow

    p = r.prefix
    return [TableRow("GELU (dense neurons)", f"{p}-dense_gelu"),
            TableRow("ReLU (dense neurons)", f"{p}-dense_relu"),
            TableRow("SAE on GELU MLP", f"{p}-dense_gelu", sae=f"{p}-sae"),
            TableRow("Switch", f"{p}-switch"),
            TableRow("MoE-X", f"{p}-moex"),
            TableRow("MoE-X (upcycled)", f"{p}-moex_upcycled"),
            TableRow("softmax router + ReLU", f"{p}-moe_relu", group="ablation"),
            TableRow("sparsity router + GELU", f"{p}-moex_gelu", group="ablation")]


def _table(lab: Lab, r: ChessRecipe, echo) -> None:
    from saes.board_eval import evaluate_chess_table, format_table

    records = evaluate_chess_table(
        lab, r.prefix, table_rows(r), r.eval_layer, name=f"{r.prefix}-table",
        max_games=r.eval_games,
        probe_squares=list(r.probe_squares) if r.probe_squares else None, echo=echo)
    echo(format_table(records))


def with_prefix(r: ChessRecipe, prefix: str) -> ChessRecipe:
    return replace(r, prefix=prefix)
