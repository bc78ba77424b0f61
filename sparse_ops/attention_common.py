"""Pieces shared by the two sparse attention variants: validation, scale, dense reference, launch.

q, k, v are [batch, heads, seq, head_dim] (causal self-attention: all three the same shape).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sparse_ops.dispatch import (
    check_same_device,
    check_same_dtype,
    check_tensor,
    load_kernels,
    require,
)

LOG2E = 1.4426950408889634
TRITON_HEAD_DIMS = (16, 32, 64, 128, 256)


def check_attention_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int
) -> None:
    """Validate q/k/v [batch, heads, seq, head_dim] and block_size; clear errors otherwise."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, ndim=4)
    check_same_device(q=q, k=k, v=v)
    check_same_dtype(q=q, k=k, v=v)
    require(
        q.shape == k.shape == v.shape,
        f"q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} must share the shape "
        f"[batch, heads, seq, head_dim] (causal self-attention; repeat k/v heads for GQA)",
    )
    require(q.shape[2] >= 1, "the sequence is empty (seq = 0)")
    require(
        isinstance(block_size, int) and not isinstance(block_size, bool) and block_size >= 1,
        f"block_size must be a positive int, got {block_size!r}",
    )


def check_triton_attention(q: torch.Tensor, block_size: int) -> None:
    """Extra constraints of the Triton kernels (power-of-two tiles for tl.arange / tl.dot)."""
    require(
        q.shape[-1] in TRITON_HEAD_DIMS,
        f"head_dim={q.shape[-1]} is not supported by the Triton kernels (use one of "
        f"{TRITON_HEAD_DIMS}) ; use backend='torch' for other sizes",
    )
    require(
        block_size >= 16 and block_size & (block_size - 1) == 0 and block_size <= 256,
        f"block_size={block_size} must be a power of two in [16, 256] for the Triton kernels "
        f"(64 or 128 are typical); use backend='torch' otherwise",
    )


def softmax_scale(head_dim: int, sm_scale: float | None) -> float:
    """The softmax temperature: ``sm_scale`` or 1 / sqrt(head_dim)."""
    return float(sm_scale) if sm_scale is not None else 1.0 / math.sqrt(head_dim)


def dense_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float | None = None
) -> torch.Tensor:
    """Exact causal softmax attention in fp32, cast back to q's dtype (the dense baseline)."""
    scale = softmax_scale(q.shape[-1], sm_scale)
    out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, scale=scale)
    return out.to(q.dtype)


def to_blocks(t: torch.Tensor, block_size: int) -> torch.Tensor:
    """[B, H, S, D] -> fp32 [B, H, n_blocks, block_size, D], zero-padded past the end."""
    b, h, s, d = t.shape
    n = -(-s // block_size)
    padded = torch.zeros(b, h, n * block_size, d, device=t.device, dtype=torch.float32)
    padded[:, :, :s] = t
    return padded.view(b, h, n, block_size, d)


def launch_sparse_flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: int,
    scale: float,
    block_lists: tuple[torch.Tensor, torch.Tensor] | None = None,
    skip_below: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the Triton kernel; returns (out like q, blocks computed per (b, h, q block) int32).

    block_lists: (kv_indices [B, H, n, max_k], kv_counts [B, H, n]) for block-sparse, or None
    for the dense causal walk. skip_below: log2(lambda) to enable threshold skipping.
    """
    kernels = load_kernels("attention_kernels")
    b, h, s, d = q.shape
    n = -(-s // block_size)
    out = torch.empty_like(q)
    computed = torch.zeros(b * h * n, device=q.device, dtype=torch.int32)
    strides: list[int] = []
    for t in (q, k, v, out):
        require(t.stride(-1) == 1, "the head_dim axis must be contiguous; call .contiguous()")
        strides += [t.stride(0), t.stride(1), t.stride(2)]
    if block_lists is not None:
        kv_indices, kv_counts = (t.contiguous() for t in block_lists)
        strides += [kv_indices.stride(0), kv_indices.stride(1), kv_indices.stride(2),
                    kv_counts.stride(0), kv_counts.stride(1)]
    else:
        kv_indices = kv_counts = computed  # unused by the kernel
        strides += [0, 0, 0, 0, 0]
    options = {"CAST_F32": False}
    if q.is_cuda:
        options["num_warps"] = 8 if block_size * d >= 128 * 128 else 4
        options["num_stages"] = 3 if block_size <= 64 else 2
    else:  # the interpreter's tl.dot is wrong for bfloat16 operands
        options["CAST_F32"] = q.dtype == torch.bfloat16
    kernels.sparse_flash_attn_kernel[(n, b * h)](
        q, k, v, out, kv_indices, kv_counts, computed,
        s, h, n, scale * LOG2E, float("-inf") if skip_below is None else skip_below,
        *strides,
        BLOCK=block_size, HEAD_DIM=d,
        USE_BLOCK_LIST=block_lists is not None, THRESHOLD_SKIP=skip_below is not None,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        **options,
    )
    return out, computed.view(b, h, n)
