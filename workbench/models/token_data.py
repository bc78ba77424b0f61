"""Token streams for language-model training: tokenize once, cache, pack, baseline.

A corpus split becomes one token stream: every document is `BOS doc EOS` and the documents are
concatenated. The stream is cached as safetensors (tensor `ids` [n] int32) in the training work
folder. Packing cuts the stream into rows of `n_ctx - 1` tokens and puts BOS in front of each,
so every training sequence [n_ctx] starts with BOS, exactly like `model.to_tokens(text)`.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from workbench.errors import InvalidInputError

_TOKENIZE_CHUNK = 2048  # documents per tokenizer call (bounded memory)


def tokenize_stream(tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    """Token stream [n] int32 of `texts`: BOS doc_1 EOS BOS doc_2 EOS ..."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise InvalidInputError("the tokenizer needs BOS and EOS tokens to build training data")
    pieces: list[torch.Tensor] = []
    for start in range(0, len(texts), _TOKENIZE_CHUNK):
        chunk = [t for t in texts[start:start + _TOKENIZE_CHUNK] if t]
        for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            pieces.append(torch.tensor([bos, *ids, eos], dtype=torch.int32))
    if not pieces:
        return torch.zeros(0, dtype=torch.int32)
    return torch.cat(pieces)


def cached_stream(path: Path, key: str, tokenizer: Any, texts_fn) -> torch.Tensor:
    """The token stream cached in `path` if it was made for `key`, else tokenize and cache it.

    `texts_fn()` returns the documents; it is only called when the cache is missing or stale.
    """
    if path.exists():
        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("key") == key:
                    return f.get_tensor("ids")
        except (SafetensorError, OSError):
            pass  # damaged cache: rebuild it
    ids = tokenize_stream(tokenizer, texts_fn())
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    save_file({"ids": ids.contiguous()}, str(tmp), metadata={"key": key})
    os.replace(tmp, path)
    return ids


def pack_sequences(stream: torch.Tensor, n_ctx: int, bos_id: int, offset: int = 0) -> torch.Tensor:
    """Cut `stream[offset:]` into rows of n_ctx - 1 tokens, each prefixed with BOS.

    Returns [n_seq, n_ctx] int64; the incomplete tail is dropped.
    """
    body = n_ctx - 1
    usable = (stream.numel() - offset) // body
    if usable <= 0:
        return torch.zeros(0, n_ctx, dtype=torch.long)
    rows = stream[offset:offset + usable * body].view(usable, body).long()
    return torch.cat([torch.full((usable, 1), bos_id, dtype=torch.long), rows], dim=1)


def spread_rows(rows: torch.Tensor, n: int) -> torch.Tensor:
    """At most `n` rows of `rows` [N, ...], evenly spaced over all of them (so a subset of a
    split that is ordered by language still covers every language)."""
    if len(rows) <= n:
        return rows
    return rows[torch.linspace(0, len(rows) - 1, n).round().long()]


@dataclass
class UnigramBaseline:
    """The loss of a model that ignores context and predicts the train unigram distribution.

    entropy_train: entropy (nats) of the train unigram distribution (maximum likelihood),
        i.e. the unigram model's loss on its own training tokens.
    val_loss: cross-entropy (nats) of the add-one-smoothed train unigram distribution on the
        validation targets (smoothing keeps tokens unseen in training finite).
    """

    entropy_train: float
    val_loss: float


def unigram_baseline(train_targets: torch.Tensor, val_targets: torch.Tensor,
                     d_vocab: int) -> UnigramBaseline:
    """Unigram baseline from target token ids (any shape; flattened)."""
    counts = torch.bincount(train_targets.reshape(-1).long(), minlength=d_vocab).double()
    total = counts.sum()
    if total == 0:
        raise InvalidInputError("no training tokens to estimate the unigram baseline from")
    p = counts / total
    nonzero = p[p > 0]
    entropy = float(-(nonzero * nonzero.log()).sum())
    smoothed = (counts + 1.0) / (total + d_vocab)
    val = val_targets.reshape(-1).long()
    val_loss = float(-smoothed.log()[val].mean()) if val.numel() else math.nan
    return UnigramBaseline(entropy_train=entropy, val_loss=val_loss)


class SequenceSampler:
    """Batches of packed training sequences in a seeded, resumable order.

    Epoch e packs the stream at an offset (0 for the first epoch, then a seeded offset in
    [0, n_ctx - 1)) so later epochs see new sequence boundaries, and visits the sequences in a
    seeded random order; an incomplete last batch of an epoch is dropped. The position
    (epoch, index within the epoch) is the whole state, so a run resumed from a checkpoint sees
    exactly the batches an uninterrupted run would.
    """

    def __init__(self, stream: torch.Tensor, n_ctx: int, bos_id: int, batch_size: int,
                 seed: int):
        self.stream, self.n_ctx, self.bos_id = stream, n_ctx, bos_id
        self.batch_size, self.seed = batch_size, seed
        self.epoch, self.index = 0, 0
        self._epoch_cache: tuple[int, torch.Tensor, torch.Tensor] | None = None
        if len(self._epoch_data(0)[0]) < batch_size:
            raise InvalidInputError(
                f"the training split holds {stream.numel()} tokens, fewer than one batch of "
                f"{batch_size} sequences of {n_ctx}; use a bigger corpus or a smaller batch size"
            )

    def _epoch_data(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            offset = 0 if epoch == 0 else int(torch.randint(0, self.n_ctx - 1, (1,), generator=gen))
            seqs = pack_sequences(self.stream, self.n_ctx, self.bos_id, offset)
            order = torch.randperm(len(seqs), generator=gen)
            self._epoch_cache = (epoch, seqs, order)
        return self._epoch_cache[1], self._epoch_cache[2]

    def next_batch(self) -> torch.Tensor:
        """The next batch [batch_size, n_ctx] int64."""
        seqs, order = self._epoch_data(self.epoch)
        if self.index + self.batch_size > len(order):
            self.epoch, self.index = self.epoch + 1, 0
            seqs, order = self._epoch_data(self.epoch)
        batch = seqs[order[self.index:self.index + self.batch_size]]
        self.index += self.batch_size
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed,
                "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


# -- one document per row (packing="document") ---------------------------------------------
def pack_documents(stream: torch.Tensor, n_ctx: int, bos_id: int, eos_id: int,
                   pad_id: int) -> torch.Tensor:
    """One row per document of a `BOS doc EOS ...` stream: [n_docs, n_ctx] int64.

    Each row is BOS + the document (truncated to n_ctx - 1 tokens, EOS kept when it fits),
    right-padded with `pad_id` (a loss that ignores pad_id then sees only real targets). Used
    where a sequence must start at its document's beginning (chess games: the board state is a
    function of the moves since the game's first move).
    """
    ids = stream.long()
    starts = (ids == bos_id).nonzero().flatten().tolist()
    ends = starts[1:] + [ids.numel()]
    rows = torch.full((len(starts), n_ctx), pad_id, dtype=torch.long)
    for row, (start, end) in enumerate(zip(starts, ends)):
        doc = ids[start:end][:n_ctx]
        rows[row, :len(doc)] = doc
    if eos_id == pad_id:
        raise InvalidInputError("document packing needs a PAD token distinct from EOS")
    return rows


class DocumentSampler(SequenceSampler):
    """SequenceSampler over fixed rows (one document each), in a seeded order per epoch."""

    def __init__(self, rows: torch.Tensor, batch_size: int, seed: int):
        self.rows = rows
        if len(rows) < batch_size:
            raise InvalidInputError(
                f"the training split holds {len(rows)} documents, fewer than one batch of "
                f"{batch_size}; use more documents or a smaller batch size"
            )
        self.n_ctx, self.batch_size, self.seed = rows.shape[1], batch_size, seed
        self.epoch, self.index = 0, 0
        self._epoch_cache = None

    def _epoch_data(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch_cache = (epoch, self.rows, torch.randperm(len(self.rows), generator=gen))
        return self._epoch_cache[1], self._epoch_cache[2]
