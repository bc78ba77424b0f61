"""Documents -> context windows of token ids, with the document and position of each token.

Each document becomes `BOS doc EOS` (just `BOS doc` when the tokenizer's EOS is its BOS, as in
GPT-2), as the workbench LM is trained (`workbench.models.token_data`). Two packings:

- "concat" (sae-lens' `concat_and_batch_sequences`): the documents are joined into one stream
  and cut into windows of `context_size` tokens that each begin with BOS (a document BOS right
  after the window's BOS is dropped rather than doubled). No padding, so every forward pass is
  full; a token's context may hold the end of the previous document.
- "document": every document starts a new window, so a token sees only its own document (what
  per-token probes and language features want: with "concat" the first tokens of a document are
  read in the context of a previous, often other-language, document). The last window of a
  document is padded; pad positions come after the text, so causal attention never sees them,
  and a batch is cut to its longest window.
A document longer than a window continues in the next window (its positions keep counting), so
no text is lost; with "concat" the incomplete last window of the split is dropped.

BOS, EOS and padding positions are marked with doc id -1 and position -1. Activation caches skip
them: the BOS position sees only itself, so its activation is the same vector in every window
and says nothing about the text; in larger LMs it is moreover an attention sink with a norm many
times a text token's, which would dominate SAE reconstruction losses and feature statistics
(sae-lens excludes special tokens for the same reason). EOS marks a boundary, not text.

Everything streams: memory holds one chunk of tokenized documents and one batch of windows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from workbench.errors import InvalidInputError

NOT_TEXT = -1
"""doc id and position given to BOS / EOS / padding (they are not part of any document)."""
PACKINGS = ("concat", "document")


@dataclass
class WindowBatch:
    """A batch of packed context windows.

    tokens [batch, ctx] int64 token ids (column 0 is BOS when BOS is prepended);
    doc_ids [batch, ctx] int64 document id of each token, NOT_TEXT (-1) at BOS/EOS;
    positions [batch, ctx] int32 index of the token within its document, -1 at BOS/EOS.
    """

    tokens: torch.Tensor
    doc_ids: torch.Tensor
    positions: torch.Tensor

    @property
    def is_text(self) -> torch.Tensor:
        """[batch, ctx] bool: True where the token belongs to a document (not BOS/EOS)."""
        return self.doc_ids != NOT_TEXT

    @property
    def n_text_tokens(self) -> int:
        return int(self.is_text.sum())


CPU_TOKENS_PER_FORWARD = 1024
"""Tokens per forward pass on CPU when the caller does not say: measured on the `small` preset
(4 x 256, context 128) on 2 cores, 8 windows run 1.46x faster than 16 (41k vs 28k tokens/s),
because the attention intermediates of a smaller batch stay in the CPU caches."""
GPU_TOKENS_PER_FORWARD = 32768


def default_model_batch_size(context_size: int, device: str | torch.device | None) -> int:
    """Windows of `context_size` tokens per forward pass: about 1k tokens on CPU, 32k on GPU."""
    on_cpu = torch.device(device or "cpu").type == "cpu"
    tokens = CPU_TOKENS_PER_FORWARD if on_cpu else GPU_TOKENS_PER_FORWARD
    return max(1, tokens // max(1, int(context_size)))


def bos_token_id(tokenizer) -> int:
    """The tokenizer's BOS id (its EOS id when it has no BOS, as in GPT-2)."""
    for attr in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise InvalidInputError(
        "the model's tokenizer has neither a BOS nor an EOS token, so context windows cannot be "
        "packed; give the tokenizer a bos_token (tokenizer.add_special_tokens({'bos_token': ...}))"
    )


def iter_window_batches(
    tokenizer,
    documents: Iterable[tuple[int, str]],
    context_size: int,
    batch_size: int,
    packing: str = "concat",
    tokenize_chunk: int = 256,
) -> Iterator[WindowBatch]:
    """Pack `(doc_id, text)` pairs into batches of windows of (at most) `context_size` tokens.

    Yields WindowBatch objects of `batch_size` windows (the last one may be smaller).
    """
    if context_size < 2:
        raise InvalidInputError(
            f"context_size must be at least 2 (BOS + one token), got {context_size}")
    if packing not in PACKINGS:
        raise InvalidInputError(f"unknown packing {packing!r}; use one of {list(PACKINGS)}")
    bos = bos_token_id(tokenizer)
    eos = getattr(tokenizer, "eos_token_id", None)
    eos = eos if eos is not None and eos != bos else None
    pad = next((v for v in (getattr(tokenizer, "pad_token_id", None), eos) if v is not None), bos)
    windows = _TokenStream(bos, eos) if packing == "concat" else _DocumentWindows(bos, eos)
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for chunk in _chunks(documents, tokenize_chunk):
        ids = tokenizer([text for _, text in chunk], add_special_tokens=False)["input_ids"]
        for (doc_id, _), doc_tokens in zip(chunk, ids):
            windows.add_document(int(doc_id), doc_tokens)
        while (window := windows.next_window(context_size)) is not None:
            rows.append(window)
            if len(rows) == batch_size:
                yield _stack(rows, pad)
                rows = []
    if rows:
        yield _stack(rows, pad)


def _document_arrays(bos: int, eos: int | None, doc_id: int, doc_tokens: list[int]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """tokens, doc ids, positions of `BOS doc [EOS]` (-1 at BOS/EOS)."""
    n = len(doc_tokens)
    end = [] if eos is None else [eos]
    tokens = np.array([bos, *doc_tokens, *end], dtype=np.int64)
    docs = np.full(len(tokens), doc_id, dtype=np.int64)
    positions = np.arange(-1, len(tokens) - 1, dtype=np.int32)
    docs[0] = docs[n + 1:] = NOT_TEXT
    positions[0] = positions[n + 1:] = -1
    return tokens, docs, positions


class _DocumentWindows:
    """Each document cut into its own BOS-led windows (the last one short, padded later)."""

    def __init__(self, bos: int, eos: int | None):
        self.bos = bos
        self.eos = eos
        self._ready: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add_document(self, doc_id: int, doc_tokens: list[int]) -> None:
        if doc_tokens:
            self._ready.append(_document_arrays(self.bos, self.eos, doc_id, doc_tokens))

    def next_window(self, context_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        if not self._ready:
            return None
        tokens, docs, positions = self._ready.pop(0)
        if len(tokens) > context_size:   # continue the document in a window of its own
            rest = (tokens[context_size:], docs[context_size:], positions[context_size:])
            self._ready.insert(0, (np.concatenate(([self.bos], rest[0])),
                                   np.concatenate(([NOT_TEXT], rest[1])),
                                   np.concatenate(([-1], rest[2])).astype(np.int32)))
            tokens, docs, positions = (tokens[:context_size], docs[:context_size],
                                       positions[:context_size])
        if not (docs != NOT_TEXT).any():
            return self.next_window(context_size)   # only a trailing EOS was left
        return tokens, docs, positions


class _TokenStream:
    """Token stream of `BOS doc [EOS]` documents, cut into BOS-led windows.

    Holds the not-yet-windowed tail of the stream as one set of arrays plus a read offset; new
    documents are queued and joined to it once, when the next window is cut.
    """

    def __init__(self, bos: int, eos: int | None):
        self.bos = bos
        self.eos = eos
        empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int32))
        self._arrays = empty
        self._offset = 0
        self._queued: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add_document(self, doc_id: int, doc_tokens: list[int]) -> None:
        if doc_tokens:
            self._queued.append(_document_arrays(self.bos, self.eos, doc_id, doc_tokens))

    def next_window(self, context_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Return (tokens, doc_ids, positions), each [context_size], or None if too few tokens."""
        body = context_size - 1
        if self._available() < body + 1 and self._queued:
            self._join_queue()
        tokens, docs, positions = self._arrays
        if self._offset < len(docs) and docs[self._offset] == NOT_TEXT \
                and tokens[self._offset] == self.bos:
            self._offset += 1  # the window starts with BOS already; don't double it
        if self._available() < body:
            return None
        sl = slice(self._offset, self._offset + body)
        self._offset += body
        return (
            np.concatenate(([self.bos], tokens[sl])),
            np.concatenate(([NOT_TEXT], docs[sl])),
            np.concatenate(([-1], positions[sl])).astype(np.int32),
        )

    def _available(self) -> int:
        return len(self._arrays[0]) - self._offset

    def _join_queue(self) -> None:
        tail = tuple(a[self._offset:] for a in self._arrays)
        self._arrays = tuple(np.concatenate(parts) for parts in zip(tail, *self._queued))
        self._offset = 0
        self._queued = []


def _stack(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], pad: int) -> WindowBatch:
    """Rows of (tokens, doc_ids, positions) -> a batch, right-padded to the longest row."""
    width = max(len(r[0]) for r in rows)
    tokens = np.full((len(rows), width), pad, dtype=np.int64)
    docs = np.full((len(rows), width), NOT_TEXT, dtype=np.int64)
    positions = np.full((len(rows), width), -1, dtype=np.int32)
    for i, (t, d, p) in enumerate(rows):
        tokens[i, :len(t)], docs[i, :len(t)], positions[i, :len(t)] = t, d, p
    return WindowBatch(*(torch.from_numpy(a) for a in (tokens, docs, positions)))


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
