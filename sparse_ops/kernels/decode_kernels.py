"""Triton kernels for sparse gather / scatter over a dictionary W [latents, d].

Three primitives serve both the SAE decoder and the encoder's backward pass:

* ``gather_sum_kernel``   out[t, :] = sum_j vals[t, j] * W[idx[t, j], :] (+ bias)
  (decode forward; encode backward for dL/dx)
* ``gather_dot_kernel``   out[t, j] = <G[t, :], W[idx[t, j], :]>
  (decode backward for dL/dvalues)
* ``segment_sum_kernel``  out[l, :] = sum over (t, j) with idx[t, j] == l of vals[t, j] * G[t, :]
  (decode backward for dL/dW_dec; encode backward for dL/dW_enc and dL/db_enc). The (t, j)
  pairs arrive sorted by latent with per-latent offsets, so each program owns one latent's
  segment and writes its row once: no atomics, hot latents included.

All accumulation is fp32; loads of fp16/bf16 are upcast elementwise (no tl.dot here).
"""

import triton
import triton.language as tl
from triton import knobs

INTERPRETED = bool(knobs.runtime.interpret)


@triton.jit
def gather_sum_kernel(
    Vals, Idx, W, Bias, Out,
    n_rows, K, D,
    stride_vt, stride_it, stride_wl, stride_ot,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Grid (cdiv(n_rows, BLOCK_M), cdiv(D, BLOCK_D)). Vals, Idx: [n_rows, K]; W: [L, D]."""
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_m = offs_m < n_rows
    mask_d = offs_d < D
    mask = mask_m[:, None] & mask_d[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for j in range(K):
        v = tl.load(Vals + offs_m * stride_vt + j, mask=mask_m, other=0.0).to(tl.float32)
        i = tl.load(Idx + offs_m * stride_it + j, mask=mask_m, other=0).to(tl.int64)
        w = tl.load(W + i[:, None] * stride_wl + offs_d[None, :], mask=mask, other=0.0)
        acc += v[:, None] * w.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(Bias + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    out_ptrs = Out + offs_m.to(tl.int64)[:, None] * stride_ot + offs_d[None, :]
    tl.store(out_ptrs, acc.to(Out.dtype.element_ty), mask=mask)


@triton.jit
def gather_dot_kernel(
    G, Idx, W, Out,
    n_rows, K, D,
    stride_gt, stride_it, stride_wl, stride_ot,
    BLOCK_M: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Grid (cdiv(n_rows, BLOCK_M), cdiv(K, BLOCK_J)). G: [n_rows, D]; Out: [n_rows, K] fp32."""
    pid_m = tl.program_id(0)
    pid_j = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    mask_mj = (offs_m < n_rows)[:, None] & (offs_j < K)[None, :]
    idx = tl.load(Idx + offs_m[:, None] * stride_it + offs_j[None, :], mask=mask_mj, other=0)
    w_rows = W + idx.to(tl.int64)[:, :, None] * stride_wl  # [BLOCK_M, BLOCK_J, 1] row pointers
    acc = tl.zeros([BLOCK_M, BLOCK_J], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        g = tl.load(
            G + offs_m.to(tl.int64)[:, None] * stride_gt + offs_d[None, :],
            mask=(offs_m < n_rows)[:, None] & mask_d[None, :], other=0.0,
        ).to(tl.float32)
        w = tl.load(
            w_rows + offs_d[None, None, :],
            mask=mask_mj[:, :, None] & mask_d[None, None, :], other=0.0,
        ).to(tl.float32)
        acc += tl.sum(w * g[:, None, :], axis=2)
    tl.store(Out + offs_m[:, None] * stride_ot + offs_j[None, :], acc, mask=mask_mj)


@triton.jit
def segment_sum_kernel(
    Order, Offsets, Vals, G, OutW, OutB,
    K, D,
    stride_gt, stride_ow,
    HAS_BIAS_OUT: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Grid (L, cdiv(D, BLOCK_D)).

    Order: [n_rows * K] flat positions p = t * K + j sorted by latent; Offsets: [L + 1] start of
    each latent's segment in Order; Vals: [n_rows * K] (contiguous); G: [n_rows, D].
    OutW[l, :] = sum_{p in segment l} Vals[p] * G[p // K, :]; OutB[l] = sum Vals[p] (fp32).
    """
    latent = tl.program_id(0)
    pid_d = tl.program_id(1)
    start = tl.load(Offsets + latent)
    end = tl.load(Offsets + latent + 1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_E], dtype=tl.float32)
    for e0 in range(start, end, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        mask_e = offs_e < end
        pos = tl.load(Order + offs_e, mask=mask_e, other=0).to(tl.int64)
        v = tl.load(Vals + pos, mask=mask_e, other=0.0).to(tl.float32)
        rows = pos // K
        g = tl.load(
            G + rows[:, None] * stride_gt + offs_d[None, :],
            mask=mask_e[:, None] & mask_d[None, :], other=0.0,
        ).to(tl.float32)
        acc += tl.sum(v[:, None] * g, axis=0)
        acc_b += v
    tl.store(OutW + latent.to(tl.int64) * stride_ow + offs_d, acc.to(OutW.dtype.element_ty),
             mask=mask_d)
    if HAS_BIAS_OUT:  # noqa: SIM102 (constexpr branch around a runtime one)
        if pid_d == 0:
            tl.store(OutB + latent, tl.sum(acc_b, axis=0))
