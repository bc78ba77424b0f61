"""Threshold-skipping causal flash attention (BLASST).

The dense causal flash loop (key blocks 0..i in ascending order for query block i) skips a key
block, without loading its values, when for *every* valid row r of the query tile

    max_j s[r, j] - m[r] < ln(lambda)

where s are the block's scaled scores and m the running row max so far (``threshold`` = lambda in
[0, 1); 0 never skips and gives exact attention). A skipped block's weights are each below
lambda times the row's current max weight, so each skipped key changes a row's softmax mass by at
most lambda relative to the final normalizer: |out - exact| <= 2 * (skipped keys) * lambda * max|v|.
All rows of the tile must agree, so skip rates fall on flat attention (NVIDIA Model-Optimizer's
note). Returns (out, computed_fraction) with computed_fraction = computed blocks / causal blocks;
the skip rate is 1 - computed_fraction. Forward only.
"""

from __future__ import annotations

import math

import torch

from sparse_ops.attention_common import (
    LOG2E,
    check_attention_inputs,
    check_triton_attention,
    launch_sparse_flash_attention,
    softmax_scale,
    to_blocks,
)
from sparse_ops.block_index import causal_block_pairs, num_blocks
from sparse_ops.dispatch import require, resolve_backend


def skip_threshold_log2(threshold: float) -> float:
    """log2(lambda): the kernels compare scores in base-2 units (-inf for lambda = 0)."""
    return math.log2(threshold) if threshold > 0 else float("-inf")


def blasst_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    threshold: float,
    block_size: int,
    sm_scale: float | None = None,
) -> tuple[torch.Tensor, float]:
    """The same skipping rule in PyTorch, blockwise, in the kernel's order and arithmetic (fp32,
    base-2 online softmax). Step j folds key block j into every query block i >= j at once, so
    each query block still sees its key blocks in ascending order. For the exact result use
    ``sparse_ops.dense_causal_attention``.

    Returns (out [B, H, S, D] in q's dtype, computed_fraction).
    """
    b, h, s, d = q.shape
    qk_scale = softmax_scale(d, sm_scale) * LOG2E
    skip_below = skip_threshold_log2(threshold)
    n = num_blocks(s, block_size)
    qb, kb, vb = (to_blocks(t, block_size) for t in (q, k, v))  # [B, H, n, bs, D] fp32
    pos = torch.arange(n * block_size, device=q.device).view(n, block_size)
    m = torch.full((b, h, n, block_size), float("-inf"), device=q.device)
    l = torch.zeros_like(m)
    acc = torch.zeros_like(qb)
    computed = torch.zeros(b, h, n, device=q.device, dtype=torch.int64)
    for j in range(n):
        scores = (qb[:, :, j:] @ kb[:, :, j, None].transpose(-1, -2)) * qk_scale
        visible = (pos[j][None, None, :] <= pos[j:, :, None]) & (pos[j] < s)
        scores = scores.masked_fill(~visible, float("-inf"))  # [B, H, n - j, bs, bs]
        m_old = m[:, :, j:]
        block_max = scores.amax(-1)
        negligible = ((block_max - m_old) < skip_below) | (pos[j:] >= s)
        needed = ~negligible.all(-1)  # [B, H, n - j]: some row of the query tile needs block j
        m_new = torch.maximum(m_old, block_max)
        m_safe = torch.where(m_new == float("-inf"), 0.0, m_new)
        p = torch.exp2(scores - m_safe[..., None])
        alpha = torch.exp2(m_old - m_safe)
        keep = needed[..., None]
        l[:, :, j:] = torch.where(keep, l[:, :, j:] * alpha + p.sum(-1), l[:, :, j:])
        acc[:, :, j:] = torch.where(
            keep[..., None], acc[:, :, j:] * alpha[..., None] + p @ vb[:, :, j, None], acc[:, :, j:]
        )
        m[:, :, j:] = torch.where(keep, m_new, m_old)
        computed[:, :, j:] += needed
    out = acc / torch.where(l > 0, l, 1.0)[..., None]
    out = out.reshape(b, h, n * block_size, d)[:, :, :s]
    fraction = computed.sum().item() / (b * h * causal_block_pairs(n))
    return out.to(q.dtype), float(fraction)


def blasst_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    threshold: float,
    block_size: int,
    backend: str = "auto",
    *,
    sm_scale: float | None = None,
) -> tuple[torch.Tensor, float]:
    """Causal attention that skips key blocks whose scores are negligible (BLASST).

    Args:
        q, k, v: [batch, heads, seq, head_dim] (fp32 / fp16 / bf16; same dtype and device).
        threshold: lambda in [0, 1): skip a block when every row's block max is below
            running max + ln(lambda). 0 = never skip (exact attention).
        block_size: key/query block size (power of two in [16, 256] for Triton).
        backend: "auto" | "triton" | "torch" ("cpu" runs the reference: no native attention).
        sm_scale: softmax scale (default 1 / sqrt(head_dim)).

    Returns:
        (out [batch, heads, seq, head_dim] in q's dtype, computed_fraction = computed blocks /
        causal blocks; skip rate = 1 - computed_fraction).
    """
    check_attention_inputs(q, k, v, block_size)
    require(
        isinstance(threshold, (int, float)) and 0 <= threshold < 1,
        f"threshold (lambda) must be a number in [0, 1), got {threshold!r}; e.g. 1e-3",
    )
    chosen = resolve_backend(backend, q.device)
    scale = softmax_scale(q.shape[-1], sm_scale)
    if chosen == "triton":
        check_triton_attention(q, block_size)
        out, computed = launch_sparse_flash_attention(
            q, k, v, block_size, scale, skip_below=skip_threshold_log2(float(threshold))
        )
        n = computed.shape[-1]
        return out, computed.sum().item() / (computed.shape[0] * computed.shape[1]
                                             * causal_block_pairs(n))
    return blasst_attention_reference(q, k, v, float(threshold), block_size, scale)
