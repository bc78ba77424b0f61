"""Probe datasets: activations with labels and the document of each row.

Labels come from a corpus column (e.g. `language`: a per-document label given to every token
of the document) or from a {doc_id: label} mapping. `pool="mean"` turns token rows into one row
per document (the mean activation over its tokens) for per-document probes. Splits into train
and validation go by document, so tokens of one text never sit on both sides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from workbench.activations.live import ActivationChunk, collect_activations
from workbench.activations.store import ActivationStore
from workbench.data.store import Corpus, load_corpus
from workbench.errors import InvalidInputError

POOLS = ("token", "mean")


@dataclass
class ProbeData:
    """features [N, d] float32; labels [N] (object array); groups [N] int64 document ids."""

    features: torch.Tensor
    labels: np.ndarray
    groups: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, mask: torch.Tensor) -> ProbeData:
        return ProbeData(self.features[mask], self.labels[mask.numpy()], self.groups[mask])

    def split_by_group(self, val_fraction: float, seed: int = 0) -> tuple[ProbeData, ProbeData]:
        """(train, validation) with a `val_fraction` share of the documents held out."""
        is_val = group_split_mask(self.groups, val_fraction, seed)
        return self.subset(~is_val), self.subset(is_val)


def group_split_mask(groups: torch.Tensor, val_fraction: float, seed: int = 0) -> torch.Tensor:
    """[N] bool, True for rows whose group (document) is among a seeded `val_fraction` of groups."""
    if not 0 < val_fraction < 1:
        raise InvalidInputError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    unique = torch.unique(groups)
    if len(unique) < 2:
        raise InvalidInputError(
            "all rows come from one document, so no document can be held out for validation; "
            "use more tokens or pass validation data"
        )
    generator = torch.Generator().manual_seed(seed)
    n_val = min(max(1, round(val_fraction * len(unique))), len(unique) - 1)
    held_out = unique[torch.randperm(len(unique), generator=generator)[:n_val]]
    return torch.isin(groups, held_out)


def document_labels(corpus: Corpus, split: str, column: str) -> pd.Series:
    """doc_id -> label from a corpus column."""
    frame = corpus.frame(split)
    if column not in frame.columns or column in ("doc_id", "text"):
        usable = [c for c in frame.columns if c not in ("doc_id", "text")]
        raise InvalidInputError(
            f"corpus {corpus.name!r} has no label column {column!r}; use one of {usable}")
    return frame.set_index("doc_id")[column]


def labelled_rows(chunk: ActivationChunk, labels: pd.Series | Mapping[int, Any], pool: str = "token"
                  ) -> ProbeData:
    """Rows of `chunk` whose document has a label, pooled per document when pool="mean"."""
    if pool not in POOLS:
        raise InvalidInputError(f"unknown pooling {pool!r}; use one of {list(POOLS)}")
    series = labels if isinstance(labels, pd.Series) else pd.Series(dict(labels), dtype=object)
    per_token = series.reindex(chunk.doc_ids.numpy()).to_numpy(dtype=object)
    keep = torch.from_numpy(pd.notna(per_token).astype(bool))
    if not keep.any():
        raise InvalidInputError("none of the activation rows has a label; check the label source")
    features, groups = chunk.acts[keep].float(), chunk.doc_ids[keep]
    if pool == "mean":
        features, groups = mean_by_group(features, groups)
        return ProbeData(features, series.reindex(groups.numpy()).to_numpy(dtype=object), groups)
    return ProbeData(features, per_token[keep.numpy()], groups)


def mean_by_group(features: torch.Tensor, groups: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the rows of each group: features [N, d], groups [N] -> ([G, d], group ids [G])."""
    unique, inverse = torch.unique(groups, return_inverse=True)
    sums = torch.zeros(len(unique), features.shape[1]).index_add_(0, inverse, features)
    counts = torch.bincount(inverse, minlength=len(unique)).clamp(min=1)
    return sums / counts[:, None], unique


def probe_data_from_store(store: ActivationStore, labels: str | Mapping[int, Any] = "language",
                          n_tokens: int | None = None, pool: str = "token") -> ProbeData:
    """The first `n_tokens` tokens of an activations store with labels (a corpus column name or a
    {doc_id: label} mapping)."""
    stop = store.n_tokens if n_tokens is None else min(n_tokens, store.n_tokens)
    index = store.read_index(0, stop)
    chunk = ActivationChunk(store.read(0, stop), index["token_ids"].long(), index["doc_ids"],
                            index["positions"])
    if isinstance(labels, str):
        labels = document_labels(load_corpus(store.lab, store.corpus_name), store.split, labels)
    return labelled_rows(chunk, labels, pool)


def probe_data_from_model(model, hook: str, corpus: Corpus,
                          labels: str | Mapping[int, Any] = "language",
                          n_tokens: int = 50_000, split: str = "train", context_size: int = 128,
                          pool: str = "token", seed: int = 0, packing: str = "document"
                          ) -> ProbeData:
    """`n_tokens` tokens of a corpus split run through a live model, with labels. Each document
    is read in a context of its own unless packing="concat" (see activations/windows.py)."""
    chunk = collect_activations(model, hook, corpus, n_tokens, split, context_size, seed=seed,
                                packing=packing)
    if isinstance(labels, str):
        labels = document_labels(corpus, split, labels)
    return labelled_rows(chunk, labels, pool)
