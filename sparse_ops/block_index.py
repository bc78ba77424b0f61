"""Block indices for causal block-sparse attention: formats, conversions and builders.

Formats (sequence of ``seq`` tokens cut into ``n_blocks = ceil(seq / block_size)`` blocks; the
last block may be partial):

* **block mask** (canonical): bool ``[batch, heads, n_blocks, n_blocks]``, ``mask[b, h, i, j]``
  True = query block i attends to key block j. Entries above the diagonal (j > i) are ignored
  (attention is causal). Size-1 batch / head dimensions broadcast.
* **block lists** (what the Triton kernel reads): ``(kv_indices, kv_counts)`` with
  ``kv_indices`` int32 ``[batch, heads, n_blocks, max_k]`` (ascending key blocks, padded with 0)
  and ``kv_counts`` int32 ``[batch, heads, n_blocks]`` (valid entries per query block).

:func:`block_mask_to_lists` and :func:`block_lists_to_mask` convert between them. The computed
fraction of a mask counts (query block, key block) pairs with key block <= query block against
the causal triangle ``n_blocks * (n_blocks + 1) / 2`` per (batch, head).

Builders (after MInference), both keep the first key block (attention sink) and the diagonal:

* :func:`topk_block_index`: score blocks by mean-pooled Q . mean-pooled K, keep the best
  ``keep_blocks`` per query block;
* :func:`vertical_slash_index`: from the attention of the last ``last_q`` queries, pick the
  ``n_vertical`` key columns and ``n_slash`` diagonals with the most mass and mark every block they
  cross.
"""

from __future__ import annotations

import math

import torch

from sparse_ops.dispatch import check_tensor, require


def num_blocks(seq_len: int, block_size: int) -> int:
    """Number of blocks of ``block_size`` covering ``seq_len`` tokens (last one may be partial)."""
    return -(-seq_len // block_size)


def causal_block_pairs(n_blocks: int) -> int:
    """(query block, key block) pairs with key block <= query block: the causal triangle."""
    return n_blocks * (n_blocks + 1) // 2


def causal_block_mask(n_blocks: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool [n_blocks, n_blocks] lower triangle including the diagonal."""
    return torch.ones(n_blocks, n_blocks, dtype=torch.bool, device=device).tril()


def computed_fraction(block_mask: torch.Tensor) -> float:
    """Fraction of the causal triangle that a block mask [B, H, n, n] computes (averaged)."""
    n = block_mask.shape[-1]
    kept = (block_mask & causal_block_mask(n, block_mask.device)).sum().item()
    pairs = causal_block_pairs(n) * block_mask.shape[0] * block_mask.shape[1]
    return float(kept) / max(1, pairs)


def check_block_mask(
    block_mask: torch.Tensor, batch: int, heads: int, n_blocks: int
) -> torch.Tensor:
    """Validate a block mask and expand it to [batch, heads, n_blocks, n_blocks]."""
    check_tensor("block_index", block_mask, ndim=4, dtypes=(torch.bool,))
    b, h, nq, nk = block_mask.shape
    require(
        nq == n_blocks and nk == n_blocks and b in (1, batch) and h in (1, heads),
        f"block mask has shape {tuple(block_mask.shape)}; expected [{batch} or 1, {heads} or 1, "
        f"{n_blocks}, {n_blocks}] (n_blocks = ceil(seq / block_size)); build it with "
        f"topk_block_index / vertical_slash_index for the same block_size",
    )
    return block_mask.expand(batch, heads, n_blocks, n_blocks)


def block_mask_to_lists(block_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool mask [B, H, n, n] -> (kv_indices int32 [B, H, n, max_k], kv_counts int32 [B, H, n]).

    Above-diagonal entries are dropped; indices ascend; padding entries are 0.
    """
    n = block_mask.shape[-1]
    mask = block_mask & causal_block_mask(n, block_mask.device)
    counts = mask.sum(-1)
    max_k = max(1, int(counts.max().item())) if counts.numel() else 1
    cols = torch.arange(n, device=mask.device).expand_as(mask)
    ordered = torch.where(mask, cols, n).sort(dim=-1).values[..., :max_k]
    indices = torch.where(ordered < n, ordered, 0)
    return indices.to(torch.int32).contiguous(), counts.to(torch.int32).contiguous()


def block_lists_to_mask(
    kv_indices: torch.Tensor, kv_counts: torch.Tensor, n_blocks: int
) -> torch.Tensor:
    """(kv_indices [B, H, n, max_k], kv_counts [B, H, n]) -> bool mask [B, H, n, n] (causal)."""
    check_tensor("kv_indices", kv_indices, ndim=4, dtypes=(torch.int32, torch.int64))
    check_tensor("kv_counts", kv_counts, ndim=3, dtypes=(torch.int32, torch.int64))
    require(
        kv_indices.shape[:3] == kv_counts.shape and kv_indices.shape[2] == n_blocks,
        f"kv_indices {tuple(kv_indices.shape)} and kv_counts {tuple(kv_counts.shape)} must be "
        f"[B, H, {n_blocks}, max_k] and [B, H, {n_blocks}]",
    )
    if kv_indices.numel():
        require(
            int(kv_indices.min()) >= 0 and int(kv_indices.max()) < n_blocks,
            f"kv_indices must lie in [0, {n_blocks}) (key block ids)",
        )
    slot = torch.arange(kv_indices.shape[-1], device=kv_indices.device)
    valid = slot < kv_counts[..., None]
    mask = torch.zeros(
        (*kv_counts.shape, n_blocks + 1), dtype=torch.bool, device=kv_indices.device
    )
    mask.scatter_(-1, torch.where(valid, kv_indices.long(), n_blocks), True)
    return mask[..., :n_blocks] & causal_block_mask(n_blocks, mask.device)


def _force_sink_and_diagonal(mask: torch.Tensor) -> torch.Tensor:
    """Set the first key block and the diagonal of a [B, H, n, n] mask; clip to causal."""
    n = mask.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=mask.device)
    mask = mask | eye
    mask[..., 0] = True
    return mask & causal_block_mask(n, mask.device)


def _check_qk(q: torch.Tensor, k: torch.Tensor, block_size: int) -> None:
    check_tensor("q", q, ndim=4)
    check_tensor("k", k, ndim=4)
    require(
        q.shape == k.shape,
        f"q {tuple(q.shape)} and k {tuple(k.shape)} must both be [batch, heads, seq, head_dim]",
    )
    require(
        isinstance(block_size, int) and block_size >= 1,
        f"block_size must be a positive int, got {block_size!r}",
    )


def _block_mean(t: torch.Tensor, block_size: int) -> torch.Tensor:
    """Mean over each block of tokens: [B, H, S, D] -> [B, H, n_blocks, D] (fp32)."""
    b, h, s, d = t.shape
    n = num_blocks(s, block_size)
    padded = torch.zeros(b, h, n * block_size, d, device=t.device, dtype=torch.float32)
    padded[:, :, :s] = t.float()
    sizes = torch.full((n,), float(block_size), device=t.device)
    sizes[-1] = s - (n - 1) * block_size
    return padded.view(b, h, n, block_size, d).sum(3) / sizes[:, None]


def topk_block_index(
    q: torch.Tensor, k: torch.Tensor, block_size: int, keep_blocks: int
) -> torch.Tensor:
    """Block-sparse index from mean-pooled Q/K scores (MInference "block_sparse" pattern).

    Args:
        q, k: [batch, heads, seq, head_dim].
        block_size: tokens per block.
        keep_blocks: key blocks kept per query block, the first block and the diagonal included
            (query blocks with fewer causal blocks keep all of them).

    Returns:
        bool block mask [batch, heads, n_blocks, n_blocks].
    """
    _check_qk(q, k, block_size)
    require(
        isinstance(keep_blocks, int) and keep_blocks >= 1,
        f"keep_blocks must be a positive int, got {keep_blocks!r}",
    )
    qp, kp = _block_mean(q, block_size), _block_mean(k, block_size)
    n = qp.shape[2]
    scores = qp @ kp.transpose(-1, -2)
    causal = causal_block_mask(n, q.device)
    scores = scores.masked_fill(~causal, float("-inf"))
    scores[..., 0] = float("inf")
    scores.diagonal(dim1=-2, dim2=-1).fill_(float("inf"))
    top = scores.topk(min(keep_blocks, n), dim=-1).indices
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=q.device).scatter_(-1, top, True)
    return _force_sink_and_diagonal(mask)


def vertical_slash_index(
    q: torch.Tensor,
    k: torch.Tensor,
    block_size: int,
    n_vertical: int,
    n_slash: int,
    last_q: int = 64,
) -> torch.Tensor:
    """Block index from vertical and slash lines (MInference "vertical_and_slash" pattern).

    The attention of the last ``last_q`` queries over all keys (causal softmax, fp32) is summed
    per key column (vertical lines: tokens every later query reads) and per diagonal offset
    query - key (slash lines: fixed relative positions). The ``n_vertical`` best columns and
    ``n_slash`` best offsets are kept; every (query block, key block) pair that one of these lines
    crosses is marked, plus the first block and the diagonal.

    Args:
        q, k: [batch, heads, seq, head_dim].
        block_size: tokens per block.
        n_vertical, n_slash: numbers of columns and diagonals kept (>= 0).
        last_q: number of final queries used for the estimate.

    Returns:
        bool block mask [batch, heads, n_blocks, n_blocks].
    """
    _check_qk(q, k, block_size)
    require(
        n_vertical >= 0 and n_slash >= 0 and last_q >= 1,
        f"need n_vertical >= 0, n_slash >= 0, last_q >= 1 (got {n_vertical}, {n_slash}, {last_q})",
    )
    b, h, s, d = q.shape
    n = num_blocks(s, block_size)
    lq = min(last_q, s)
    q_pos = torch.arange(s - lq, s, device=q.device)
    k_pos = torch.arange(s, device=q.device)
    logits = (q[:, :, s - lq :].float() @ k.float().transpose(-1, -2)) / math.sqrt(d)
    visible = k_pos[None, :] <= q_pos[:, None]
    att = torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1)  # [B, H, lq, S]

    mask = torch.zeros(b, h, n, n + 1, dtype=torch.bool, device=q.device)  # column n: discard
    if n_vertical > 0:
        columns = att.sum(2).topk(min(n_vertical, s), dim=-1).indices  # [B, H, nv]
        # a column c is read by every query block at or below block c // block_size
        col_blocks = torch.zeros(b, h, n, dtype=torch.bool, device=q.device)
        col_blocks.scatter_(-1, columns // block_size, True)
        mask[..., :n] |= col_blocks[:, :, None, :]
    if n_slash > 0:
        offset = (q_pos[:, None] - k_pos[None, :]).clamp(min=0).expand(b, h, lq, s)
        per_offset = torch.zeros(b, h, s, device=q.device).scatter_add_(
            -1, offset.reshape(b, h, -1), att.reshape(b, h, -1)
        )
        offsets = per_offset.topk(min(n_slash, s), dim=-1).indices  # [B, H, ns]
        # diagonal key = query - offset crosses, in query block i (rows first..last), the key
        # blocks from (first - offset) // bs to (last - offset) // bs: at most two
        first = torch.arange(n, device=q.device) * block_size
        last = (first + block_size - 1).clamp(max=s - 1)
        lo = torch.div(first[:, None] - offsets[:, :, None, :], block_size, rounding_mode="floor")
        hi = torch.div(last[:, None] - offsets[:, :, None, :], block_size, rounding_mode="floor")
        for blocks in (lo.clamp(min=0), hi):
            mask.scatter_(-1, torch.where(hi >= 0, blocks, n), True)
    return _force_sink_and_diagonal(mask[..., :n].contiguous())
