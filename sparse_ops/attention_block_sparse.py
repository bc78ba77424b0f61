"""Block-sparse causal flash attention: each query block visits only its listed key blocks.

q, k, v: [batch, heads, seq, head_dim]; ``block_index`` in either format of
``sparse_ops/block_index.py`` (bool block mask [B|1, H|1, n, n], or the (kv_indices, kv_counts)
lists). Returns (out [batch, heads, seq, head_dim], computed_fraction): the fraction of the
causal block triangle that was computed. Forward only (inference / analysis).

Inside a visited block the usual token-level causal mask applies; rows whose query block visits
no key block (possible only when the diagonal is left out) output 0.

Three implementations: the Triton kernel (``sparse_ops/kernels/attention_kernels.py``, shared
with BLASST); a PyTorch path that, like the kernel, gathers only the listed key blocks (the CPU
backend); and the reference, dense softmax under the token-level mask (the definition).
"""

from __future__ import annotations

import torch

from sparse_ops.attention_common import (
    check_attention_inputs,
    check_triton_attention,
    launch_sparse_flash_attention,
    softmax_scale,
    to_blocks,
)
from sparse_ops.block_index import (
    block_lists_to_mask,
    block_mask_to_lists,
    check_block_mask,
    computed_fraction,
    num_blocks,
)
from sparse_ops.dispatch import require, resolve_backend

# Elements of the score / gathered-block temporaries the PyTorch paths create per chunk.
_TORCH_SCORE_ELEMENTS = 1 << 22


def block_sparse_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor,
    block_size: int,
    sm_scale: float | None = None,
) -> torch.Tensor:
    """The definition of correct: softmax attention in fp32 under the token-level mask
    ``block_mask[i // bs, j // bs] and j <= i`` (rows with no visible key -> 0).

    Computed in query chunks so the score matrix stays bounded; block_mask [B|1, H|1, n, n].
    """
    b, h, s, d = q.shape
    scale = softmax_scale(d, sm_scale)
    block_of = torch.arange(s, device=q.device) // block_size
    kf, vf = k.float(), v.float()
    rows_per_chunk = max(block_size, _TORCH_SCORE_ELEMENTS // max(1, b * h * s))
    out = torch.empty(b, h, s, d, device=q.device, dtype=torch.float32)
    for r0 in range(0, s, rows_per_chunk):
        rows = torch.arange(r0, min(s, r0 + rows_per_chunk), device=q.device)
        allowed = block_mask[:, :, block_of[rows]][..., block_of]  # [B|1, H|1, rows, S]
        allowed = allowed & (torch.arange(s, device=q.device)[None, :] <= rows[:, None])
        scores = (q[:, :, rows].float() @ kf.transpose(-1, -2)) * scale
        probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        out[:, :, rows] = torch.nan_to_num(probs, nan=0.0) @ vf
    return out.to(q.dtype)


def _block_sparse_torch(q, k, v, kv_indices, kv_counts, block_size, scale) -> torch.Tensor:
    """PyTorch path that, like the kernel, touches only the listed key blocks: per query block
    it gathers its max_k key/value blocks and runs a masked softmax over them (fp32)."""
    b, h, s, d = q.shape
    n = num_blocks(s, block_size)
    qb, kb, vb = (to_blocks(t, block_size) for t in (q, k, v))  # [B, H, n, bs, D]
    max_k = kv_indices.shape[-1]
    pos = torch.arange(n * block_size, device=q.device).view(n, block_size)
    bi = torch.arange(b, device=q.device)[:, None, None, None]
    hi = torch.arange(h, device=q.device)[None, :, None, None]
    slot_ok = torch.arange(max_k, device=q.device) < kv_counts[..., None].long()  # [B,H,n,mk]
    per_block = b * h * max_k * block_size * (block_size + 2 * d)
    chunk = max(1, _TORCH_SCORE_ELEMENTS // max(1, per_block))
    out = torch.empty_like(qb)
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        idx = kv_indices[:, :, c0:c1].long()  # [B, H, c, mk]
        keys = kb[bi, hi, idx].flatten(3, 4)  # [B, H, c, mk * bs, D]
        vals = vb[bi, hi, idx].flatten(3, 4)
        key_pos = pos[idx].flatten(3)  # [B, H, c, mk * bs]
        ok = slot_ok[:, :, c0:c1].repeat_interleave(block_size, dim=-1) & (key_pos < s)
        ok = ok[:, :, :, None, :] & (key_pos[:, :, :, None, :] <= pos[c0:c1, :, None])
        scores = (qb[:, :, c0:c1] @ keys.transpose(-1, -2)) * scale
        probs = torch.softmax(scores.masked_fill(~ok, float("-inf")), dim=-1)
        out[:, :, c0:c1] = torch.nan_to_num(probs, nan=0.0) @ vals
    return out.reshape(b, h, n * block_size, d)[:, :, :s].to(q.dtype)


def _normalize_block_index(block_index, batch: int, heads: int, n: int):
    """Return (mask [B, H, n, n], kv_indices, kv_counts) from either accepted format."""
    if isinstance(block_index, torch.Tensor):
        mask = check_block_mask(block_index, batch, heads, n)
        kv_indices, kv_counts = block_mask_to_lists(mask)
        return mask, kv_indices, kv_counts
    require(
        isinstance(block_index, (tuple, list)) and len(block_index) == 2,
        "block_index must be a bool block mask [B, H, n_blocks, n_blocks] or a "
        "(kv_indices, kv_counts) pair; see sparse_ops.block_index",
    )
    kv_indices, kv_counts = block_index
    mask = block_lists_to_mask(kv_indices, kv_counts, n)
    mask = check_block_mask(mask, batch, heads, n)
    # re-derive the lists so they are sorted, causal and expanded to [B, H, ...]
    kv_indices, kv_counts = block_mask_to_lists(mask)
    return mask, kv_indices, kv_counts


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_index,
    block_size: int,
    backend: str = "auto",
    *,
    sm_scale: float | None = None,
) -> tuple[torch.Tensor, float]:
    """Causal attention computed only on the key blocks named by ``block_index``.

    Args:
        q, k, v: [batch, heads, seq, head_dim] (fp32 / fp16 / bf16; same dtype and device).
        block_index: bool mask [B|1, H|1, n_blocks, n_blocks] or (kv_indices, kv_counts); see
            sparse_ops.block_index (n_blocks = ceil(seq / block_size)).
        block_size: tokens per block (power of two in [16, 256] for Triton).
        backend: "auto" | "triton" | "torch" ("cpu" runs the reference: no native attention).
        sm_scale: softmax scale (default 1 / sqrt(head_dim)).

    Returns:
        (out [batch, heads, seq, head_dim] in q's dtype, computed_fraction float in [0, 1]).
    """
    check_attention_inputs(q, k, v, block_size)
    b, h, s, d = q.shape
    n = num_blocks(s, block_size)
    mask, kv_indices, kv_counts = _normalize_block_index(block_index, b, h, n)
    require(mask.device == q.device, f"block_index is on {mask.device} but q on {q.device}")
    chosen = resolve_backend(backend, q.device)
    scale = softmax_scale(d, sm_scale)
    if chosen == "triton":
        check_triton_attention(q, block_size)
        out, _ = launch_sparse_flash_attention(
            q, k, v, block_size, scale, block_lists=(kv_indices, kv_counts)
        )
    else:
        out = _block_sparse_torch(q, k, v, kv_indices, kv_counts, block_size, scale)
    return out, computed_fraction(mask)
