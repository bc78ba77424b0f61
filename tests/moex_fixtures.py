"""Tiny chess labs for the MoE-X / chess tests: games and tokenizer (`build_chess_lab`, a few
seconds) or the whole quick chess recipe (`build_quick_chess_lab`)."""

from __future__ import annotations

from pathlib import Path

from transformer_lens import HookedTransformerConfig

from workbench.data.chess import ChessDataConfig, build_chess_dataset, save_chess_tokenizer
from workbench.lab import Lab
from workbench.models.train_config import LMTrainConfig

N_CTX = 64


def build_chess_lab(root: Path, n_games: int = 48) -> Lab:
    lab = Lab(root)
    build_chess_dataset(lab, "chess", ChessDataConfig(n_games=n_games, max_chars=160,
                                                      val_fraction=0.1, test_fraction=0.2,
                                                      workers=1))
    save_chess_tokenizer(lab, "chess-tok")
    return lab


def small_cfg(act_fn: str = "relu", d_mlp: int = 64) -> HookedTransformerConfig:
    return HookedTransformerConfig(n_layers=1, d_model=32, n_heads=2, d_head=16, d_mlp=d_mlp,
                                   d_vocab=35, n_ctx=N_CTX, act_fn=act_fn, seed=0,
                                   default_prepend_bos=True)


def train_cfg(steps: int = 4, **kw) -> LMTrainConfig:
    return LMTrainConfig(steps=steps, batch_size=4, lr=3e-3, warmup_steps=1, eval_every=2,
                         eval_sequences=4, final_eval_sequences=8, save_every=1,
                         packing="document", precision="fp32", **kw)



def build_quick_chess_lab(root: Path) -> Lab:
    """The chess recipe at --quick size (every model variant, the SAE and the stored table
    `chess-table` at layer 0; about 12 s on 2 cores)."""
    from app.recipes.chess import build

    lab = Lab(root)
    build(lab, echo=lambda s: None, quick=True)
    return lab
