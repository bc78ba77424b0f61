"""Activations straight from a live model: corpus documents -> windows -> hook activations.

This is the one pipeline behind everything in this package: `cache_activations` writes its
chunks to shards, `iter_live_batches` shuffles them into training batches (for SAE training
from a live model, no cache on disk), and `collect_activations` gathers a few thousand tokens
with their index (for probes and feature statistics).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from workbench.activations.batching import fixed_batches, limit_rows, shuffled_batches
from workbench.activations.extract import hook_activations
from workbench.activations.windows import default_model_batch_size, iter_window_batches
from workbench.data.store import Corpus
from workbench.device import resolve_device
from workbench.errors import InvalidInputError
from workbench.models.hooks import validate_hook


@dataclass
class ActivationChunk:
    """Activations of n text tokens (BOS/EOS excluded) with their index.

    acts [n, d_in] (model dtype); token_ids [n] int64; doc_ids [n] int64; positions [n] int32.
    """

    acts: torch.Tensor
    token_ids: torch.Tensor
    doc_ids: torch.Tensor
    positions: torch.Tensor

    def __len__(self) -> int:
        return self.acts.shape[0]

    def narrow(self, start: int, stop: int | None = None) -> ActivationChunk:
        sl = slice(start, stop)
        return ActivationChunk(self.acts[sl], self.token_ids[sl], self.doc_ids[sl],
                               self.positions[sl])

    @staticmethod
    def concat(chunks: list[ActivationChunk]) -> ActivationChunk:
        return ActivationChunk(*(torch.cat(parts) for parts in zip(
            *((c.acts, c.token_ids, c.doc_ids, c.positions) for c in chunks))))


def iter_documents(corpus: Corpus, split: str = "train", shuffle: bool = True, seed: int = 0
                   ) -> Iterator[tuple[int, str]]:
    """(doc_id, text) of a corpus split, in a seeded random order when `shuffle` (a corpus is
    often stored grouped by language; a prefix of it should still mix all languages)."""
    frame = corpus.frame(split)
    if len(frame) == 0:
        raise InvalidInputError(f"split {split!r} of corpus {corpus.name!r} has no documents")
    order = np.random.default_rng(seed).permutation(len(frame)) if shuffle else range(len(frame))
    doc_ids = frame["doc_id"].to_numpy()
    texts = frame["text"].to_numpy()
    for i in order:
        yield int(doc_ids[i]), texts[i]


def iter_activation_chunks(
    model,
    hook: str,
    corpus: Corpus,
    split: str = "train",
    context_size: int = 128,
    model_batch_size: int | None = None,
    shuffle_documents: bool = True,
    seed: int = 0,
    skip_tokens: int = 0,
    device: str | torch.device | None = "cpu",
    packing: str = "concat",
) -> Iterator[ActivationChunk]:
    """Activations of one model batch of windows at a time, BOS/EOS positions dropped.

    Batches of windows whose tokens all fall in the first `skip_tokens` text tokens are not run
    through the model (resuming a cache); of the batch that straddles the boundary only the
    tokens after it are kept.
    Chunks are moved to `device` (None: stay on the model's device). `packing`: "concat" or
    "document" (see `windows.py`). `model_batch_size`: windows per forward pass (None:
    `default_model_batch_size`, about 1k tokens on CPU).
    """
    validate_hook(model, hook)
    check_context_size(model, context_size)
    if model_batch_size is None:
        model_batch_size = default_model_batch_size(context_size, model.cfg.device)
    tokenizer = _tokenizer(model)
    documents = iter_documents(corpus, split, shuffle_documents, seed)
    to_skip = skip_tokens
    for windows in iter_window_batches(tokenizer, documents, context_size, model_batch_size,
                                       packing):
        n_text = windows.n_text_tokens
        if to_skip >= n_text:
            to_skip -= n_text
            continue
        acts = hook_activations(model, windows.tokens, hook)
        keep = windows.is_text
        if device is not None:
            acts = acts.to(device)
        chunk = ActivationChunk(
            acts[keep.to(acts.device)], windows.tokens[keep], windows.doc_ids[keep],
            windows.positions[keep],
        )
        if to_skip:
            chunk, to_skip = chunk.narrow(to_skip), 0
        yield chunk


def iter_live_batches(
    model,
    hook: str,
    corpus: Corpus,
    batch_size: int,
    context_size: int = 128,
    split: str = "train",
    seed: int = 0,
    shuffle: bool = True,
    buffer_batches: int = 8,
    model_batch_size: int | None = None,
    epochs: int | None = 1,
    max_tokens: int | None = None,
    device: str | torch.device | None = None,
    drop_last: bool = True,
    packing: str = "concat",
) -> Iterator[torch.Tensor]:
    """Batches [batch_size, d_in] float32 of activations at `hook`, computed on the fly.

    Documents are visited in a new seeded order each epoch (`epochs=None`: forever); rows are
    shuffled within a buffer of `buffer_batches` model batches (model_batch_size windows of
    context_size tokens each; None: `default_model_batch_size`). Stops after `max_tokens` rows
    when given.
    """
    target = resolve_device(device)
    if model_batch_size is None:
        model_batch_size = default_model_batch_size(context_size, model.cfg.device)
    capacity = buffer_batches * model_batch_size * context_size
    generator = torch.Generator().manual_seed(seed)

    def rows():
        epoch = 0
        while epochs is None or epoch < epochs:
            chunks = iter_activation_chunks(model, hook, corpus, split, context_size,
                                            model_batch_size, True, seed + epoch, device=target,
                                            packing=packing)
            acts = (c.acts.float() for c in chunks)
            if shuffle:
                yield from shuffled_batches(acts, batch_size, capacity, generator, drop_last)
            else:
                yield from fixed_batches(acts, batch_size, drop_last)
            epoch += 1

    yield from limit_rows(_to_device(rows(), target), max_tokens, drop_last)


def collect_activations(
    model,
    hook: str,
    corpus: Corpus,
    n_tokens: int,
    split: str = "train",
    context_size: int = 128,
    model_batch_size: int | None = None,
    seed: int = 0,
    packing: str = "document",
) -> ActivationChunk:
    """The first `n_tokens` text tokens of a (seeded, shuffled) split with their activations,
    in order, on the CPU. Fewer when the split is smaller. Each document is read in a context
    of its own by default (packing="document"), as per-token labels and feature contexts want."""
    chunks, total = [], 0
    for chunk in iter_activation_chunks(model, hook, corpus, split, context_size,
                                        model_batch_size, True, seed, packing=packing):
        chunks.append(chunk.narrow(0, n_tokens - total))
        total += len(chunks[-1])
        if total >= n_tokens:
            break
    if not chunks:
        raise InvalidInputError(
            f"split {split!r} of corpus {corpus.name!r} has fewer tokens than one context window "
            f"({context_size}); use a smaller --context-size or a bigger corpus"
        )
    return ActivationChunk.concat(chunks)


def check_context_size(model, context_size: int) -> None:
    n_ctx = int(model.cfg.n_ctx)
    if context_size > n_ctx:
        raise InvalidInputError(
            f"context_size {context_size} is longer than the model's context ({n_ctx} tokens); "
            f"use --context-size {n_ctx} or less"
        )


def _tokenizer(model):
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise InvalidInputError(
            "the model has no tokenizer attached (model.tokenizer is None); load it with "
            "workbench.models.loading.load_model or call model.set_tokenizer(...)"
        )
    return tokenizer


def _to_device(batches: Iterator[torch.Tensor], device: torch.device) -> Iterator[torch.Tensor]:
    for batch in batches:
        yield batch.to(device)
