"""Turn a stream of activation chunks into fixed-size batches, shuffled or in order.

Shuffling uses a bounded mixing buffer (as sae-lens' activation store does): chunks are appended
until the buffer holds `capacity` rows, the buffer is permuted, the first half is emitted as
batches and the second half stays to be mixed with the next chunks. Every row is emitted exactly
once; memory holds at most `capacity` rows plus one chunk (and one permuted copy).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch


def fixed_batches(chunks: Iterable[torch.Tensor], batch_size: int, drop_last: bool = True
                  ) -> Iterator[torch.Tensor]:
    """Chunks [n_i, d] -> batches [batch_size, d] in order (the last may be smaller unless
    `drop_last`)."""
    carry: torch.Tensor | None = None
    for chunk in chunks:
        rows = chunk if carry is None else torch.cat([carry, chunk])
        n_full = rows.shape[0] // batch_size * batch_size
        for start in range(0, n_full, batch_size):
            yield rows[start:start + batch_size]
        carry = rows[n_full:]
    if carry is not None and carry.shape[0] and not drop_last:
        yield carry


def shuffled_batches(chunks: Iterable[torch.Tensor], batch_size: int, capacity: int,
                     generator: torch.Generator, drop_last: bool = True) -> Iterator[torch.Tensor]:
    """Chunks [n_i, d] -> batches [batch_size, d] shuffled within a mixing buffer of `capacity`
    rows (at least two batches)."""
    capacity = max(capacity, 2 * batch_size)
    buffer: list[torch.Tensor] = []
    size = 0
    for chunk in chunks:
        buffer.append(chunk)
        size += chunk.shape[0]
        if size < capacity:
            continue
        rows = _permuted(buffer, generator)
        n_out = size // 2 // batch_size * batch_size
        yield from (rows[i:i + batch_size] for i in range(0, n_out, batch_size))
        buffer, size = [rows[n_out:]], size - n_out
    if size:
        rows = _permuted(buffer, generator)
        yield from fixed_batches([rows], batch_size, drop_last)


def _permuted(parts: list[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    rows = torch.cat(parts) if len(parts) > 1 else parts[0]
    return rows[torch.randperm(rows.shape[0], generator=generator)]


def limit_rows(batches: Iterable[torch.Tensor], max_rows: int | None, drop_last: bool = True
               ) -> Iterator[torch.Tensor]:
    """Pass batches through until `max_rows` rows have been yielded (cutting the last batch
    unless `drop_last`, in which case a batch that would overshoot is dropped)."""
    seen = 0
    for batch in batches:
        if max_rows is not None and seen + batch.shape[0] > max_rows:
            if not drop_last and max_rows > seen:
                yield batch[: max_rows - seen]
            return
        seen += batch.shape[0]
        yield batch
