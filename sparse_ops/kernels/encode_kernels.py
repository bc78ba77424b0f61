"""Triton kernel for the fused SAE encode: streaming top-k of ``x @ W_enc.T + b_enc``.

Each program owns BLOCK_M token rows and a contiguous range of latent tiles (BLOCK_N latents
each). Per tile it computes the pre-activations in registers (fp32 accumulation over d_in in
BLOCK_K steps), turns every value into one int64 key

    key = (order_preserving_int32(value) << 32) | (0xFFFFFFFF - latent_index)

so that comparing keys compares values first and, on equal values, prefers the smaller latent
index, and merges the tile into a running set of the K_PAD best keys per row. Two merge
strategies, chosen by the constexpr MERGE_BITONIC (the rest of the kernel is shared):

* bitonic (GPU default): ``running = bitonic_merge(maximum(running_ascending, topk(tile)))``.
  The elementwise maximum of an ascending and a descending sorted sequence holds the K_PAD
  largest of their union and is bitonic, so one bitonic merge re-sorts it. Tiles whose best key
  cannot enter any row's set are skipped by a scalar test.
* extraction (interpreter default): while some row's best tile key beats its running minimum,
  move it into that minimum's slot. Once the set has filled, a tile costs a handful of max/min
  reductions. Triton's interpreter runs tl.sort / tl.topk / tl.bitonic_merge correctly but
  very slowly (their xor_sum reduction falls back to a per-element Python loop), while
  tl.max / tl.min map to numpy; both strategies are tested there.

The [tokens x latents] matrix never exists in memory: the output is K_PAD packed keys per
(row, latent split); the host takes the top k of them and decodes values and indices.

Interpreter accommodation besides the merge choice: CAST_F32 (the interpreter's tl.dot gives
garbage for bfloat16 operands, so the host asks for an fp32 upcast of the tiles there).
"""

import triton
import triton.language as tl
from triton import knobs

INTERPRETED = bool(knobs.runtime.interpret)


@triton.jit
def pack_keys(values, latent_ids):
    """fp32 values [M, N] and int latent ids [N] -> int64 keys ordered by (value, -id)."""
    bits = values.to(tl.int32, bitcast=True)
    ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    low = 0xFFFFFFFF - latent_ids.to(tl.int64)
    return (ordered.to(tl.int64) << 32) | low[None, :]


@triton.jit
def topk_encode_kernel(
    X, W, B, Cand,
    n_rows, n_latents, d_in, n_tiles, tiles_per_split,
    stride_xt, stride_wl, stride_ct, stride_cs,
    HAS_BIAS: tl.constexpr, K_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    CAST_F32: tl.constexpr, INPUT_PRECISION: tl.constexpr, MERGE_BITONIC: tl.constexpr,
):
    """Grid (cdiv(n_rows, BLOCK_M), n_splits).

    X [n_rows, d_in], W [n_latents, d_in], B [n_latents] -> Cand [n_rows, n_splits, K_PAD] int64
    keys of the best K_PAD latents of this program's latent range (in no particular order).
    """
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < n_rows
    x_rows = X + offs_m.to(tl.int64)[:, None] * stride_xt

    # running set of K_PAD keys per row; starts with distinct sentinels below every real key
    # (real keys are >= float(-inf)'s key, far above -2**63 + K_PAD)
    removed = tl.full([BLOCK_M, BLOCK_N], -2147483648, tl.int32).to(tl.int64) << 32  # -2**63
    running = (tl.full([BLOCK_M, K_PAD], -2147483648, tl.int32).to(tl.int64) << 32) + (
        1 + tl.arange(0, K_PAD)
    )[None, :]
    tile_begin = pid_s * tiles_per_split
    tile_end = tl.minimum(tile_begin + tiles_per_split, n_tiles)
    for tile in range(tile_begin, tile_end):
        offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < n_latents
        w_rows = W + offs_n.to(tl.int64)[:, None] * stride_wl
        pre = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, d_in, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < d_in
            x = tl.load(x_rows + offs_k[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            w = tl.load(w_rows + offs_k[None, :], mask=mask_n[:, None] & mask_k[None, :], other=0.0)
            if CAST_F32:
                x = x.to(tl.float32)
                w = w.to(tl.float32)
            pre = tl.dot(x, tl.trans(w), pre, input_precision=INPUT_PRECISION)
        if HAS_BIAS:
            pre += tl.load(B + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        pre = tl.where(mask_n[None, :], pre, float("-inf"))
        keys = pack_keys(pre, offs_n)
        # padding rows must not force merges: their tile keys count as removed
        keys = tl.where(mask_m[:, None], keys, removed)
        if MERGE_BITONIC:
            # running stays sorted ascending; merge only if some row's best tile key beats
            # its current K_PAD-th best
            if tl.max((tl.max(keys, axis=1) > tl.min(running, axis=1)).to(tl.int32), axis=0) > 0:
                best = tl.topk(keys, K_PAD, dim=1)  # descending
                running = tl.bitonic_merge(tl.maximum(running, best), dim=1)  # ascending
        else:
            # iterative max extraction: move each row's best tile key into the slot of its
            # running minimum while it beats that minimum (few steps once the set has filled)
            tile_best = tl.max(keys, axis=1)
            worst = tl.min(running, axis=1)
            take = tile_best > worst
            while tl.max(take.to(tl.int32), axis=0) > 0:
                running = tl.where(
                    (running == worst[:, None]) & take[:, None], tile_best[:, None], running
                )
                keys = tl.where((keys == tile_best[:, None]) & take[:, None], removed, keys)
                tile_best = tl.max(keys, axis=1)
                worst = tl.min(running, axis=1)
                take = tile_best > worst

    # unsorted when MERGE_BITONIC is off; the host sorts the [rows, splits * K_PAD] candidates
    offs_c = tl.arange(0, K_PAD)
    out = Cand + offs_m.to(tl.int64)[:, None] * stride_ct + pid_s * stride_cs + offs_c[None, :]
    tl.store(out, running, mask=mask_m[:, None])
