"""Activation shards: safetensors files of a fixed number of tokens.

Each shard `shard_XXXXX.safetensors` holds, for n tokens:
    acts       [n, d_in]  float32 | float16 | bfloat16
    token_ids  [n]        int32
    doc_ids    [n]        int64   (corpus document id)
    positions  [n]        int32   (token index within its document)

`ShardWriter` fills one preallocated shard buffer and writes it out when it is full, so memory
holds at most one shard however many tokens are cached.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from workbench.errors import InvalidInputError, NotFoundError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
INDEX_FIELDS = {"token_ids": torch.int32, "doc_ids": torch.int64, "positions": torch.int32}


def shard_file_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise InvalidInputError(f"unknown activation dtype {name!r}; use one of {list(DTYPES)}")
    return DTYPES[name]


@dataclass
class ShardInfo:
    file: str
    n: int

    def to_dict(self) -> dict:
        return {"file": self.file, "n": self.n}


class ShardWriter:
    """Collect per-token rows and write them to `folder` as shards of `shard_tokens` tokens.

    `add(acts [n, d_in], token_ids [n], doc_ids [n], positions [n])` returns the shards it
    completed; `close()` writes the last, partial shard. Files are written under a temporary
    name and renamed, so a shard file on disk is always complete.
    """

    def __init__(self, folder: Path, shard_tokens: int, d_in: int, dtype: str,
                 first_index: int = 0):
        if shard_tokens < 1:
            raise InvalidInputError(f"shard_tokens must be positive, got {shard_tokens}")
        self.folder = Path(folder)
        self.shard_tokens = shard_tokens
        self.next_index = first_index
        self._acts = torch.empty(shard_tokens, d_in, dtype=torch_dtype(dtype))
        self._index = {k: torch.empty(shard_tokens, dtype=t) for k, t in INDEX_FIELDS.items()}
        self._fill = 0

    def add(self, acts: torch.Tensor, token_ids: torch.Tensor, doc_ids: torch.Tensor,
            positions: torch.Tensor) -> list[ShardInfo]:
        done = []
        columns = {"token_ids": token_ids, "doc_ids": doc_ids, "positions": positions}
        start, n = 0, acts.shape[0]
        while start < n:
            take = min(n - start, self.shard_tokens - self._fill)
            rows = slice(self._fill, self._fill + take)
            self._acts[rows] = acts[start:start + take]
            for key, column in columns.items():
                self._index[key][rows] = column[start:start + take]
            self._fill += take
            start += take
            if self._fill == self.shard_tokens:
                done.append(self._flush())
        return done

    def close(self) -> list[ShardInfo]:
        return [self._flush()] if self._fill else []

    def _flush(self) -> ShardInfo:
        n = self._fill
        tensors = {"acts": self._acts[:n].clone()}
        tensors.update({key: column[:n].clone() for key, column in self._index.items()})
        name = shard_file_name(self.next_index)
        tmp = self.folder / f".{name}.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, self.folder / name)
        self.next_index += 1
        self._fill = 0
        return ShardInfo(name, n)


def read_shard_tensor(path: Path, key: str, start: int = 0, stop: int | None = None
                      ) -> torch.Tensor:
    """Rows [start, stop) of one tensor of a shard, read without loading the rest of the file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            if stop is None and start == 0:
                return f.get_tensor(key)
            return f.get_slice(key)[start:stop]
    except FileNotFoundError as exc:
        raise NotFoundError(f"activation shard {path} is missing; rebuild the activations") from exc
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise InvalidInputError(
            f"activation shard {path} is unreadable ({exc}); rebuild the activations"
        ) from exc
