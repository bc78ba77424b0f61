"""Activations with their token index, read in order by ranges (what feature statistics need).

`IndexedActivations.from_store(store)` wraps a cached activations artifact;
`IndexedActivations.from_tensors(...)` wraps tensors in memory (e.g. a `collect_activations`
chunk or a synthetic test case).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from workbench.errors import InvalidInputError, WorkbenchError


@dataclass
class IndexedActivations:
    """n tokens: `read(start, stop)` -> [stop - start, d_in] float32; token_ids, doc_ids,
    positions [n] int64; doc_language maps doc id -> language (may be empty)."""

    read: Callable[[int, int], torch.Tensor]
    token_ids: torch.Tensor
    doc_ids: torch.Tensor
    positions: torch.Tensor
    doc_language: dict[int, str]

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    def chunks(self, chunk_size: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(start, activations [<=chunk_size, d_in]) in token order."""
        for start in range(0, self.n_tokens, chunk_size):
            yield start, self.read(start, min(start + chunk_size, self.n_tokens))

    def languages(self) -> list[str | None]:
        """Language of every token's document ([n]; None where unknown)."""
        return [self.doc_language.get(int(d)) for d in self.doc_ids.tolist()]

    @classmethod
    def from_store(cls, store, n_tokens: int | None = None) -> IndexedActivations:
        """The first `n_tokens` tokens of an ActivationStore (all when None)."""
        n = store.n_tokens if n_tokens is None else min(int(n_tokens), store.n_tokens)
        if n <= 0:
            raise InvalidInputError(f"activations {store.name!r} hold no tokens to analyse")
        index = store.read_index(0, n)
        try:
            docs = store.documents()
            doc_language = {int(k): str(v) for k, v in docs["language"].items()}
        except (WorkbenchError, KeyError):  # corpus gone or without languages: no labels
            doc_language = {}
        return cls(
            read=lambda start, stop: store.read(start, stop),
            token_ids=index["token_ids"].long(),
            doc_ids=index["doc_ids"].long(),
            positions=index["positions"].long(),
            doc_language=doc_language,
        )

    @classmethod
    def from_tensors(cls, acts: torch.Tensor, token_ids: torch.Tensor, doc_ids: torch.Tensor,
                     positions: torch.Tensor, doc_language: dict[int, str] | None = None
                     ) -> IndexedActivations:
        """acts [n, d_in] with token_ids, doc_ids, positions [n]."""
        n = len(acts)
        if not (len(token_ids) == len(doc_ids) == len(positions) == n):
            raise InvalidInputError("acts, token_ids, doc_ids and positions must have equal length")
        return cls(
            read=lambda start, stop: acts[start:stop].float(),
            token_ids=token_ids.long(), doc_ids=doc_ids.long(), positions=positions.long(),
            doc_language=dict(doc_language or {}),
        )
