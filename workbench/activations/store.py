"""Reading an activations artifact: batches for training, ranges, the token index, documents.

    store = open_activations(lab, "lm-l1-acts")
    for x in store.iter_batches(4096, seed=0):        # x: [4096, d_in] float32, shuffled
        ...
    index = store.read_index()                         # token_ids, doc_ids, positions [n]
    languages = store.token_labels("language")         # per-token label via the corpus

Shuffled reads use a mixing buffer of a few shards (`batching.shuffled_batches`), so memory stays
at `buffer_shards` shards however big the store is; every token comes once per epoch, in an
order fixed by the seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from workbench.activations.batching import fixed_batches, limit_rows, shuffled_batches
from workbench.activations.shards import INDEX_FIELDS, read_shard_tensor, torch_dtype
from workbench.data.store import load_corpus
from workbench.device import resolve_device
from workbench.errors import InvalidInputError
from workbench.lab import Artifact, Lab

_REQUIRED = ("model", "hook", "d_in", "dtype", "n_tokens", "shards", "corpus", "split")


class ActivationStore:
    """A cached activations artifact (see `shards.py` for the shard layout)."""

    def __init__(self, artifact: Artifact, lab: Lab | None = None):
        if artifact.kind != "activations":
            raise InvalidInputError(
                f"artifact {artifact.name!r} is a {artifact.kind}, not activations")
        missing = [k for k in _REQUIRED if k not in artifact.manifest]
        if missing:
            raise InvalidInputError(
                f"the manifest of activations {artifact.name!r} lacks {missing}; rebuild it with "
                "`workbench acts cache`"
            )
        self.artifact = artifact
        self.lab = lab if lab is not None else Lab(artifact.path.parent.parent)
        m = artifact.manifest
        self.shards: list[tuple[Path, int]] = [(artifact.path / s["file"], int(s["n"]))
                                               for s in m["shards"]]
        self._starts = np.cumsum([0] + [n for _, n in self.shards])
        if int(self._starts[-1]) != int(m["n_tokens"]):
            raise InvalidInputError(
                f"activations {artifact.name!r} are inconsistent: shards hold {self._starts[-1]} "
                f"tokens, manifest says {m['n_tokens']}; rebuild them"
            )
        torch_dtype(m["dtype"])

    # -- description -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.artifact.name

    @property
    def d_in(self) -> int:
        return int(self.artifact.manifest["d_in"])

    @property
    def n_tokens(self) -> int:
        return int(self.artifact.manifest["n_tokens"])

    @property
    def hook(self) -> str:
        return self.artifact.manifest["hook"]

    @property
    def model_name(self) -> str:
        return self.artifact.manifest["model"]

    @property
    def dtype(self) -> str:
        return self.artifact.manifest["dtype"]

    @property
    def corpus_name(self) -> str:
        return self.artifact.manifest["corpus"]

    @property
    def split(self) -> str:
        return self.artifact.manifest["split"]

    @property
    def context_size(self) -> int:
        return int(self.artifact.manifest.get("context_size", 0))

    @property
    def packing(self) -> str:
        return self.artifact.manifest.get("packing", "concat")

    def __len__(self) -> int:
        return self.n_tokens

    def __repr__(self) -> str:
        return (f"ActivationStore({self.name!r}, model={self.model_name!r}, hook={self.hook!r}, "
                f"n_tokens={self.n_tokens}, d_in={self.d_in}, dtype={self.dtype})")

    # -- batches -------------------------------------------------------------------------------
    def iter_batches(
        self,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        device=None,
        drop_last: bool = True,
        epochs: int | None = 1,
        max_tokens: int | None = None,
        buffer_shards: int = 4,
    ) -> Iterator[torch.Tensor]:
        """Batches [batch_size, d_in] float32 on `device`.

        shuffle: shard order permuted each epoch and rows mixed in a buffer of `buffer_shards`
        shards (deterministic given `seed`); otherwise in stored order. `epochs=None` repeats
        forever; `max_tokens` stops after that many rows. With `drop_last=False` every token
        comes exactly once per epoch (the last batch of an epoch may be smaller).
        """
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be positive, got {batch_size}")
        target = resolve_device(device)
        generator = torch.Generator().manual_seed(seed)
        capacity = buffer_shards * max(n for _, n in self.shards)

        def epoch_batches() -> Iterator[torch.Tensor]:
            epoch = 0
            while epochs is None or epoch < epochs:
                if shuffle:
                    order = torch.randperm(len(self.shards), generator=generator).tolist()
                    chunks = (read_shard_tensor(self.shards[i][0], "acts") for i in order)
                    yield from shuffled_batches(chunks, batch_size, capacity, generator, drop_last)
                else:
                    chunks = (read_shard_tensor(path, "acts") for path, _ in self.shards)
                    yield from fixed_batches(chunks, batch_size, drop_last)
                epoch += 1

        for batch in limit_rows(epoch_batches(), max_tokens, drop_last):
            yield batch.to(device=target, dtype=torch.float32)

    # -- random access -------------------------------------------------------------------------
    def read(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Activations of tokens [start, stop) -> [stop - start, d_in] float32."""
        return self._read_range("acts", start, stop).float()

    def read_index(self, start: int = 0, stop: int | None = None) -> dict[str, torch.Tensor]:
        """token_ids [n] int32, doc_ids [n] int64, positions [n] int32 of tokens [start, stop)."""
        return {key: self._read_range(key, start, stop) for key in INDEX_FIELDS}

    def _read_range(self, key: str, start: int, stop: int | None) -> torch.Tensor:
        stop = self.n_tokens if stop is None else stop
        if not 0 <= start <= stop <= self.n_tokens:
            raise InvalidInputError(
                f"token range [{start}, {stop}) is outside activations {self.name!r} "
                f"(0..{self.n_tokens})"
            )
        parts = []
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        for i in range(max(first, 0), len(self.shards)):
            lo, hi = int(self._starts[i]), int(self._starts[i + 1])
            if lo >= stop:
                break
            parts.append(read_shard_tensor(self.shards[i][0], key, max(start, lo) - lo,
                                           min(stop, hi) - lo))
        if not parts:
            width = (self.d_in,) if key == "acts" else ()
            dtype = torch_dtype(self.dtype) if key == "acts" else INDEX_FIELDS[key]
            return torch.empty(0, *width, dtype=dtype)
        return torch.cat(parts)

    # -- documents and labels ------------------------------------------------------------------
    def documents(self) -> pd.DataFrame:
        """The corpus documents of the cached split, indexed by doc_id (language, text, source)."""
        corpus = load_corpus(self.lab, self.corpus_name)
        return corpus.frame(self.split).set_index("doc_id")

    def token_labels(self, column: str = "language", start: int = 0, stop: int | None = None
                     ) -> np.ndarray:
        """Per-token labels [stop - start] from a corpus column (e.g. the document's language)."""
        docs = self.documents()
        if column not in docs.columns:
            raise InvalidInputError(
                f"corpus {self.corpus_name!r} has no column {column!r}; use one of "
                f"{list(docs.columns)}"
            )
        doc_ids = self.read_index(start, stop)["doc_ids"].numpy()
        return docs[column].reindex(doc_ids).to_numpy()


def open_activations(lab: Lab, name: str) -> ActivationStore:
    """The activations artifact `name` of `lab`."""
    return ActivationStore(lab.get(name, kind="activations"), lab)
