"""Pieces every analysis shares: the model, its evaluation tokens, losses, progress, artifacts.

- `resolve_model(model, lab, device)`: a `HookedTransformer` (passed through) or anything
  `workbench.models.load_model` loads (lab model, `NAME@STEP` checkpoint, TransformerLens name,
  Hugging Face folder); returns (model, its name).
- `eval_tokens(model, corpus, n_tokens, ...)`: [n_seq, ctx] int64 windows of a corpus split,
  packed like the LM was trained ("concat": each window starts with BOS).
- `batched_loss(model, tokens, fwd_hooks)`: mean next-token loss under optional hooks.
- `write_analysis(lab, name, analysis, tables, summary, ...)`: an `analysis` artifact holding one
  Parquet file per table plus `summary.json`; the manifest lists the tables and their columns.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from workbench.errors import InvalidInputError, NotFoundError
from workbench.lab import Artifact, Lab, write_json

SUMMARY_FILE = "summary.json"
DEFAULT_BATCH_TOKENS = 4096  # tokens per forward pass on CPU (about 32 windows of 128)


def resolve_model(model: Any, lab: Lab | None = None,
                  device: str | torch.device | None = None):
    """(HookedTransformer in eval mode, name) from a model object or a `load_model` spec."""
    from transformer_lens import HookedTransformer

    if isinstance(model, HookedTransformer):
        return model.eval(), str(getattr(model.cfg, "model_name", "model"))
    if not isinstance(model, (str, os.PathLike)):
        raise InvalidInputError(
            f"model must be a HookedTransformer or a model spec (lab name, NAME@STEP, "
            f"TransformerLens name, Hugging Face folder), got {type(model).__name__}")
    from workbench.models.loading import load_model

    return load_model(model, lab=lab, device=device), str(model)


def model_corpus(lab: Lab | None, model_name: str) -> str | None:
    """The corpus a lab model was trained on (None for models from elsewhere)."""
    if lab is None:
        return None
    base = model_name.partition("@")[0]
    try:
        if lab.exists(base):
            return lab.get(base, kind="model").manifest.get("corpus")
    except (InvalidInputError, NotFoundError):
        return None
    return None


def eval_tokens(model, lab: Lab | None, corpus: str | None, n_tokens: int,
                context_size: int | None = None, split: str = "validation",
                seed: int = 0) -> torch.Tensor:
    """Evaluation windows [n_seq, ctx] int64 of about `n_tokens` tokens (n_seq = ceil(n /
    ctx)) from a corpus split, in a seeded document order. When the split is shorter, its
    windows are all returned (and the caller reports the real count).

    `context_size` defaults to the model's n_ctx capped at 128.
    """
    from workbench.activations.live import iter_documents
    from workbench.activations.windows import iter_window_batches
    from workbench.data.store import load_corpus

    if n_tokens < 1:
        raise InvalidInputError(f"n_tokens must be >= 1, got {n_tokens}")
    if corpus is None:
        raise InvalidInputError(
            "name a corpus for the evaluation tokens (--corpus NAME); lab models default to the "
            "corpus they were trained on, other models need one")
    if lab is None:
        raise InvalidInputError(f"corpus {corpus!r} needs a lab (--lab or WORKBENCH_LAB)")
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise InvalidInputError("the model has no tokenizer attached; load it with load_model")
    ctx = int(context_size or min(int(model.cfg.n_ctx), 128))
    if ctx < 2 or ctx > model.cfg.n_ctx:
        raise InvalidInputError(f"context_size must lie in 2..{model.cfg.n_ctx}, got {ctx}")
    n_seq = math.ceil(n_tokens / ctx)
    rows: list[torch.Tensor] = []
    have = 0
    docs = iter_documents(load_corpus(lab, corpus), split=split, shuffle=True, seed=seed)
    for batch in iter_window_batches(tokenizer, docs, ctx, batch_size=256, packing="concat"):
        rows.append(batch.tokens)
        have += len(batch.tokens)
        if have >= n_seq:
            break
    if not rows:
        raise InvalidInputError(f"split {split!r} of corpus {corpus!r} yields no windows")
    return torch.cat(rows)[:n_seq]


def iter_batches(tokens: torch.Tensor, batch_tokens: int = DEFAULT_BATCH_TOKENS
                 ) -> Iterator[torch.Tensor]:
    """Row batches of `tokens` [n_seq, ctx] with about `batch_tokens` tokens each."""
    rows = max(1, batch_tokens // max(1, tokens.shape[1]))
    for start in range(0, len(tokens), rows):
        yield tokens[start:start + rows]


def token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-target loss [batch, ctx - 1] (nats) from logits [batch, ctx, vocab]."""
    return F.cross_entropy(logits[:, :-1].float().transpose(1, 2), tokens[:, 1:],
                           reduction="none")


@torch.no_grad()
def batched_loss(model, tokens: torch.Tensor, fwd_hooks: Sequence = (),
                 batch_tokens: int = DEFAULT_BATCH_TOKENS) -> float:
    """Mean next-token loss (nats) of `model` on `tokens` [n_seq, ctx] under `fwd_hooks`."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in iter_batches(tokens, batch_tokens):
        batch = batch.to(device)
        logits = model.run_with_hooks(batch, fwd_hooks=list(fwd_hooks))
        losses = token_loss(logits, batch)
        total += float(losses.sum())
        count += losses.numel()
    return total / max(1, count)


def progress_bar(iterable: Iterable, desc: str, total: int | None = None,
                 enabled: bool = True):
    """A tqdm bar (to stderr) unless `enabled` is False."""
    return tqdm(iterable, desc=desc, total=total, disable=not enabled, dynamic_ncols=True,
                mininterval=0.5, leave=False)


def check_fraction(label: str, value: float, low: float = 0.0, high: float = 1.0,
                   open_low: bool = False) -> float:
    """`value` if it lies in [low, high] (or (low, high]), else a clear InvalidInputError."""
    ok = isinstance(value, (int, float)) and math.isfinite(value) and value <= high and (
        value > low if open_low else value >= low)
    if not ok:
        bracket = "(" if open_low else "["
        raise InvalidInputError(f"{label} must lie in {bracket}{low}, {high}], got {value!r}")
    return float(value)


def write_analysis(lab: Lab, name: str, analysis: str, tables: dict[str, pd.DataFrame],
                   summary: dict[str, Any], parents: Sequence[str] = (),
                   config: dict[str, Any] | None = None, overwrite: bool = False) -> Artifact:
    """Store an `analysis` artifact: `<table>.parquet` per table and `summary.json`.

    The manifest gets `analysis` (which analysis), `tables` ({table: [columns]}) and `summary`.
    """
    parents = [p for p in dict.fromkeys(parents) if p and lab.exists(p)]
    with lab.new_artifact("analysis", name, parents=parents, config=config or {},
                          overwrite=overwrite) as art:
        for table, frame in tables.items():
            frame.reset_index(drop=True).to_parquet(art.path / f"{table}.parquet", index=False)
        write_json(art.path / SUMMARY_FILE, summary)
        art.manifest.update({"analysis": analysis,
                             "tables": {t: list(f.columns) for t, f in tables.items()},
                             "summary": summary})
        art.metrics.update({k: v for k, v in summary.items()
                            if isinstance(v, (int, float, str, bool)) or v is None})
    return lab.get(name, kind="analysis")


def read_table(lab: Lab, name: str, table: str) -> pd.DataFrame:
    """One table of an analysis artifact (NotFoundError listing its tables)."""
    art = lab.get(name, kind="analysis")
    file = art.path / f"{table}.parquet"
    if not file.exists():
        raise NotFoundError(f"analysis {name!r} has no table {table!r}; tables: "
                            f"{sorted(art.manifest.get('tables', {}))}")
    return pd.read_parquet(file)


def check_name_free(lab: Lab | None, name: str | None, overwrite: bool) -> None:
    """Fail before the work starts if the result artifact exists (and no overwrite)."""
    if lab is not None and name is not None and lab.exists(name) and not overwrite:
        raise InvalidInputError(f"artifact {name!r} already exists; choose another --name or "
                                "pass --overwrite")
