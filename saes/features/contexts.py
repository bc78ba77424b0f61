"""Token windows around selected (feature, token) examples, with the feature's activation on
every token of the window.

A window is up to `radius` tokens each side of the centre, kept inside the centre token's
document and contiguous in it (same doc id, consecutive positions). The per-token activations
come from re-encoding the window tokens in one ordered pass (`gather_window_acts`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from saes.features.source import IndexedActivations
from workbench.models.token_text import readable_token


@dataclass
class Windows:
    """For m examples: centre token [m], feature [m], and the window token indices
    [m, 2 * radius + 1] (-1 where the window is cut by a document edge)."""

    centre: torch.Tensor
    feature: torch.Tensor
    tokens: torch.Tensor
    radius: int


def build_windows(centre: torch.Tensor, feature: torch.Tensor, doc_ids: torch.Tensor,
                  positions: torch.Tensor, radius: int) -> Windows:
    """Windows of +-radius tokens around each centre token index (see module docstring)."""
    n = len(doc_ids)
    offsets = torch.arange(-radius, radius + 1)
    idx = centre[:, None] + offsets[None, :]  # [m, w]
    inside = (idx >= 0) & (idx < n)
    safe = idx.clamp(0, max(n - 1, 0))
    same_doc = doc_ids[safe] == doc_ids[centre][:, None]
    contiguous = positions[safe] - positions[centre][:, None] == offsets[None, :]
    valid = inside & same_doc & contiguous
    # cut at the first break on each side so a window never skips over foreign tokens
    left = valid[:, :radius].flip(1).long().cumprod(1).flip(1).bool()
    right = valid[:, radius + 1:].long().cumprod(1).bool()
    valid = torch.cat([left, valid[:, radius:radius + 1], right], dim=1)
    return Windows(centre, feature, torch.where(valid, idx, torch.full_like(idx, -1)), radius)


@torch.no_grad()
def gather_window_acts(windows: Windows, acts: IndexedActivations,
                       encode: Callable[[torch.Tensor], torch.Tensor], chunk_size: int
                       ) -> torch.Tensor:
    """Activation of each window's feature on each window token -> [m, w] (0 where cut).

    encode: activations [n, d_in] -> dense code [n, h]. Only chunks holding a needed token are
    encoded.
    """
    m, w = windows.tokens.shape
    out = torch.zeros(m, w)
    flat_tok = windows.tokens.reshape(-1)
    flat_feat = windows.feature[:, None].expand(m, w).reshape(-1)
    wanted = torch.nonzero(flat_tok >= 0).flatten()
    order = wanted[torch.argsort(flat_tok[wanted])]
    sorted_tok = flat_tok[order]
    for start in range(0, acts.n_tokens, chunk_size):
        stop = min(start + chunk_size, acts.n_tokens)
        lo = int(torch.searchsorted(sorted_tok, torch.tensor(start)))
        hi = int(torch.searchsorted(sorted_tok, torch.tensor(stop)))
        if lo == hi:
            continue
        f = encode(acts.read(start, stop)).float().cpu()
        sel = order[lo:hi]
        out.view(-1)[sel] = f[flat_tok[sel] - start, flat_feat[sel]]
    return out


def token_strings(tokenizer: Any, vocab_size: int) -> list[str]:
    """Readable string of every token id (decoded one at a time, so byte-level BPE markers
    become real characters); ids without a tokenizer are shown as '<id>'."""
    if tokenizer is None:
        return [f"<{i}>" for i in range(vocab_size)]
    return [readable_token(tokenizer, i) for i in range(vocab_size)]


def _list_column(values: np.ndarray, offsets: np.ndarray) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values))


def contexts_frame(windows: Windows, window_acts: torch.Tensor, acts: IndexedActivations,
                   vocab: list[str], kind: list[str], bins: torch.Tensor, ranks: torch.Tensor
                   ) -> pd.DataFrame:
    """The contexts table, one row per example (columns documented in saes.feature_stats),
    built column-wise (list columns as Arrow lists: no Python loop over the examples)."""
    valid = windows.tokens >= 0  # [m, w]
    flat_tokens = windows.tokens[valid]
    ids = acts.token_ids[flat_tokens].numpy()
    strings = np.asarray(vocab, dtype=object)[ids]  # vocab covers every id in the store
    offsets = np.concatenate([[0], valid.sum(1).cumsum(0).numpy()])
    doc = acts.doc_ids[windows.centre].numpy()
    table = pa.table({
        "feature": pa.array(windows.feature.numpy(), pa.int64()),
        "kind": pa.array(kind, pa.string()),
        "bin": pa.array(bins.numpy(), pa.int64()),
        "rank": pa.array(ranks.numpy(), pa.int64()),
        "activation": pa.array(window_acts[:, windows.radius].numpy(), pa.float32()),
        "token_index": pa.array(windows.centre.numpy(), pa.int64()),
        "doc_id": pa.array(doc, pa.int64()),
        "language": pa.array([acts.doc_language.get(int(d)) for d in doc], pa.string()),
        "centre": pa.array(valid[:, :windows.radius].sum(1).numpy(), pa.int64()),
        "token_ids": _list_column(ids.astype(np.int64), offsets),
        "tokens": _list_column(strings.astype(str), offsets),
        "acts": _list_column(window_acts[valid].numpy().astype(np.float32), offsets),
    })
    return table.to_pandas()
