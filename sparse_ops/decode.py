"""Sparse SAE decode: ``x_hat = sum_j values[:, j] * W_dec[indices[:, j]] + b_dec``.

Shapes: values [tokens, k] (float), indices [tokens, k] (int64 or int32), W_dec [latents, d_in],
b_dec [d_in] or None -> x_hat [tokens, d_in] in W_dec's dtype (fp32 accumulation).

Backward: dL/dvalues[t, j] = <dL/dx_hat[t], W_dec[indices[t, j]]> (a gather and a dot per pair),
dL/dW_dec by a *sorted* scatter-add: the (latent, token) pairs are sorted by latent and each
latent's segment is reduced by one program, so hot latents cause no atomic contention and the
result is deterministic. dL/db_dec = dL/dx_hat summed over tokens.

On the native CPU backend (``backend="cpu"``) the weight gradient is summed in token order
instead, each thread owning a range of latents (``cpu_native.pair_sums``, no sort), and
dL/dvalues comes from the same pass.

Ragged codes (top-AFA keeps its own k(x) per token): ``lengths`` [tokens] says that row t holds
only its first lengths[t] pairs; the rest of the [tokens, K] rectangle is padding that adds
nothing and gets no gradient. The cpu and torch paths then cost the kept pairs only (ragged
``embedding_bag`` forward, ``pair_sums`` over each row's length); the triton path zeroes the
padding and runs the rectangle. ``offsets`` [tokens] takes the same code as flat bags instead
(values, indices [nnz], no padding at all: what top-AFA's encode returns), so nothing scales
with the batch's longest row.

The three sparse primitives below (``gather_sum``, ``gather_dot``, ``segment_sum``) are also the
building blocks of the fused encoder's backward pass (``sparse_ops/encode.py``); each takes the
backend ``"torch"``, ``"cpu"`` or ``"triton"``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparse_ops import cpu_native
from sparse_ops.dispatch import (
    check_indices,
    check_same_device,
    check_tensor,
    load_kernels,
    require,
    resolve_backend,
)

# Rows handled per chunk by the PyTorch fallbacks of gather_dot, bounding their [rows, k, d]
# temporary to about this many elements.
_TORCH_CHUNK_ELEMENTS = 1 << 24


# ----------------------------------------------------------------------------------------------
# reference


def sparse_decode_reference(
    values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor | None
) -> torch.Tensor:
    """The definition of correct: ``F.embedding_bag(..., mode="sum") + b_dec`` (plain autograd).

    Computed in fp32 and cast to W_dec's dtype. values/indices [tokens, k], W_dec [latents, d].
    """
    out = F.embedding_bag(
        indices.long(), W_dec.float(), per_sample_weights=values.float(), mode="sum"
    )
    if b_dec is not None:
        out = out + b_dec.float()
    return out.to(W_dec.dtype)


# ----------------------------------------------------------------------------------------------
# sparse primitives, each with a PyTorch and a Triton implementation


def padding_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """bool [tokens, width]: True at the kept pairs of a ragged code (j < lengths[t])."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def _zero_padding(vals: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    return vals if lengths is None else vals * padding_mask(lengths, vals.shape[1]).to(vals.dtype)


def gather_sum(
    vals: torch.Tensor,
    idx: torch.Tensor,
    W: torch.Tensor,
    bias: torch.Tensor | None,
    backend: str,
    out_dtype: torch.dtype | None = None,
    lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """out[t] = sum_j vals[t, j] * W[idx[t, j]] (+ bias): [T, k] x [L, D] -> [T, D]; with
    lengths [T], j < lengths[t] only."""
    out_dtype = out_dtype or W.dtype
    if backend in ("torch", "cpu"):  # embedding_bag is ATen's own CPU kernel
        if lengths is None:
            out = F.embedding_bag(idx.long(), W.float(), per_sample_weights=vals.float(),
                                  mode="sum")
        else:  # the kept pairs as one flat bag per row
            if backend == "cpu" and cpu_native.usable(vals):
                flat_vals, flat_idx, offsets = cpu_native.flatten_rows(vals, idx, lengths)
            else:
                keep = padding_mask(lengths, idx.shape[1])
                flat_vals, flat_idx = vals[keep], idx[keep].long()
                offsets = torch.cumsum(lengths, 0) - lengths
            out = F.embedding_bag(flat_idx, W.float(), offsets,
                                  per_sample_weights=flat_vals.float(), mode="sum")
        if bias is not None:
            out = out + bias.float()
        return out.to(out_dtype)
    kernels = load_kernels("decode_kernels")
    vals, idx, W = _zero_padding(vals, lengths).contiguous(), idx.contiguous(), W.contiguous()
    n_rows, k = idx.shape
    d = W.shape[1]
    out = torch.empty((n_rows, d), device=W.device, dtype=out_dtype)
    block_m, block_d = 32, min(128, max(16, _pow2_at_most(d)))
    grid = (triton_cdiv(n_rows, block_m), triton_cdiv(d, block_d))
    kernels.gather_sum_kernel[grid](
        vals, idx, W, bias if bias is not None else W, out,
        n_rows, k, d,
        vals.stride(0), idx.stride(0), W.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_D=block_d,
    )
    return out


def gather_dot(G: torch.Tensor, idx: torch.Tensor, W: torch.Tensor, backend: str) -> torch.Tensor:
    """out[t, j] = <G[t], W[idx[t, j]]>: G [T, D], idx [T, k], W [L, D] -> [T, k] fp32."""
    n_rows, k = idx.shape
    if backend in ("torch", "cpu"):
        d = W.shape[1]
        chunk = max(1, _TORCH_CHUNK_ELEMENTS // max(1, k * d))
        parts = [
            torch.bmm(W[idx[s : s + chunk]].float(), G[s : s + chunk].float().unsqueeze(-1))
            .squeeze(-1)
            for s in range(0, n_rows, chunk)
        ]
        return torch.cat(parts) if parts else G.new_zeros((0, k), dtype=torch.float32)
    kernels = load_kernels("decode_kernels")
    G, idx, W = G.contiguous(), idx.contiguous(), W.contiguous()
    d = W.shape[1]
    out = torch.empty((n_rows, k), device=W.device, dtype=torch.float32)
    block_m, block_j, block_d = 8, min(16, max(2, _pow2_at_most(k))), 64
    grid = (triton_cdiv(n_rows, block_m), triton_cdiv(k, block_j))
    kernels.gather_dot_kernel[grid](
        G, idx, W, out,
        n_rows, k, d,
        G.stride(0), idx.stride(0), W.stride(0), out.stride(0),
        BLOCK_M=block_m, BLOCK_J=block_j, BLOCK_D=block_d,
    )
    return out


def segment_sum(
    vals: torch.Tensor,
    idx: torch.Tensor,
    G: torch.Tensor,
    n_latents: int,
    backend: str,
    out_dtype: torch.dtype,
    with_bias: bool = False,
    lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scatter-add per latent: out[l] = sum_{(t, j): idx[t, j] = l} vals[t, j] * G[t].

    vals, idx [T, k]; G [T, D]; lengths [T] or None (j < lengths[t] only) -> (out [L, D] in
    out_dtype, bias_out [L] fp32 = sum of vals per latent, or None). The torch and triton
    backends sort the pairs by latent first (no atomics on hot rows); the cpu backend sums in
    token order with a range of latents per thread.
    """
    if backend == "cpu" and cpu_native.usable(vals, G):
        out, bias_out, _ = cpu_native.pair_sums(vals, idx, G, n_latents, with_bias,
                                                lengths=lengths)
        return out.to(out_dtype), bias_out
    if backend == "cpu":
        backend = "torch"
    vals = _zero_padding(vals, lengths)
    n_rows, k = idx.shape
    d = G.shape[1]
    flat_idx = idx.reshape(-1).long()
    if backend == "torch":
        rows = torch.arange(n_rows, device=G.device).repeat_interleave(k)
        pairs = torch.sparse_coo_tensor(
            torch.stack([flat_idx, rows]),
            vals.reshape(-1).float(),
            (n_latents, n_rows),
            check_invariants=False,  # indices were range-checked by the caller
        ).coalesce()  # coalesce = sort by (latent, token) and merge duplicates
        out = torch.sparse.mm(pairs, G.float()).to(out_dtype)
        bias_out = None
        if with_bias:
            bias_out = torch.zeros(n_latents, device=G.device, dtype=torch.float32)
            bias_out.index_add_(0, flat_idx, vals.reshape(-1).float())
        return out, bias_out
    kernels = load_kernels("decode_kernels")
    order = torch.argsort(flat_idx, stable=True)
    if order.numel() < 2**31:
        order = order.to(torch.int32)
    offsets = torch.zeros(n_latents + 1, device=G.device, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.bincount(flat_idx, minlength=n_latents), 0)
    if n_rows * k < 2**31:
        offsets = offsets.to(torch.int32)
    G = G.contiguous()
    vals_flat = vals.reshape(-1).contiguous()
    out = torch.empty((n_latents, d), device=G.device, dtype=out_dtype)
    bias_out = torch.empty(n_latents, device=G.device, dtype=torch.float32) if with_bias else None
    block_d = min(128, max(16, _pow2_at_most(d)))
    grid = (n_latents, triton_cdiv(d, block_d))
    kernels.segment_sum_kernel[grid](
        order, offsets, vals_flat, G, out, bias_out if with_bias else out,
        k, d,
        G.stride(0), out.stride(0),
        HAS_BIAS_OUT=with_bias, BLOCK_E=32, BLOCK_D=block_d,
    )
    return out, bias_out


def triton_cdiv(a: int, b: int) -> int:
    """Ceiling division for launch grids (kept here so no triton import is needed)."""
    return -(-a // b)


def _pow2_at_most(n: int) -> int:
    """Largest power of two <= n (n >= 1)."""
    return 1 << (max(1, int(n)).bit_length() - 1)


# ----------------------------------------------------------------------------------------------
# flat bags: a ragged code without padding (top-AFA's code)
#
# values, indices [nnz]; token t's pairs are values[offsets[t] : offsets[t] + lengths[t]]
# (offsets [T] ascending from 0, embedding_bag's convention; lengths [T] their counts). The cpu
# backend runs cpu_native.pair_sums over the bags; elsewhere PyTorch ops (embedding_bag forward,
# index_add backward) run on any device, so the triton backend takes the torch path here.


def bag_lengths(offsets: torch.Tensor, nnz: int) -> torch.Tensor:
    """Each bag's pair count [T] from its offsets [T] and the total nnz."""
    ends = torch.cat([offsets[1:], offsets.new_full((1,), nnz)]) if offsets.numel() else offsets
    return ends - offsets


def bag_sum(vals: torch.Tensor, idx: torch.Tensor, offsets: torch.Tensor, W: torch.Tensor,
            bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """out[t] = sum over token t's pairs of vals * W[idx] (+ bias): [nnz] x [L, D] -> [T, D]."""
    out = F.embedding_bag(idx, W.float(), offsets, per_sample_weights=vals.float(), mode="sum")
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


def bag_pair_sums(vals: torch.Tensor, idx: torch.Tensor, offsets: torch.Tensor,
                  lengths: torch.Tensor, G: torch.Tensor, n_latents: int, backend: str,
                  with_bias: bool = False, W: torch.Tensor | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per latent, the sum over its pairs of vals * G[token] -> out [L, D] fp32 (a weight
    gradient), with bias [L] = sum of vals per latent when with_bias; with W [L, D] also
    grad_vals [nnz] = <G[token], W[idx]> (a decode's code gradient). G [T, D]."""
    if backend == "cpu" and cpu_native.usable(vals, G, W):
        return cpu_native.pair_sums(vals, idx, G, n_latents, with_bias, W=W, lengths=lengths,
                                    offsets=offsets)
    rows = torch.repeat_interleave(torch.arange(G.shape[0], device=G.device), lengths)
    d = G.shape[1]
    out = torch.zeros((n_latents, d), device=G.device, dtype=torch.float32)
    grad_vals = None if W is None else torch.empty(idx.shape[0], device=G.device,
                                                    dtype=torch.float32)
    step = max(1, _TORCH_CHUNK_ELEMENTS // max(1, d))
    for s in range(0, idx.shape[0], step):
        g = G[rows[s:s + step]].float()
        i = idx[s:s + step]
        out.index_add_(0, i, g * vals[s:s + step, None].float())
        if W is not None:
            grad_vals[s:s + step] = (g * W[i].float()).sum(1)
    bias = None
    if with_bias:
        bias = torch.zeros(n_latents, device=G.device, dtype=torch.float32)
        bias.index_add_(0, idx, vals.float())
    return out, bias, grad_vals


# ----------------------------------------------------------------------------------------------
# autograd


class SparseDecodeFunction(torch.autograd.Function):
    """Autograd for sparse decode on either backend (gradients for values, W_dec and b_dec)."""

    @staticmethod
    def forward(ctx, values, indices, W_dec, b_dec, backend, lengths=None):  # type: ignore[override]
        ctx.backend = backend
        ctx.lengths = lengths
        ctx.save_for_backward(values, indices, W_dec)
        ctx.has_bias = b_dec is not None
        return gather_sum(values, indices, W_dec, b_dec, backend, lengths=lengths)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        values, indices, W_dec = ctx.saved_tensors
        lengths = ctx.lengths
        grad_values = grad_W = grad_b = None
        want_values, want_W = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        if ctx.backend == "cpu" and (want_values or want_W):
            # one native pass: dL/dW_dec and dL/dvalues from the same read of grad_out
            grad_W, _, grad_values = cpu_native.pair_sums(
                values, indices, grad_out, W_dec.shape[0], W=W_dec if want_values else None,
                lengths=lengths)
            want_values = want_W = False
            grad_W = grad_W if ctx.needs_input_grad[2] else None
        if want_values:
            grad_values = _zero_padding(gather_dot(grad_out, indices, W_dec, ctx.backend),
                                        lengths).to(values.dtype)
        if want_W:
            grad_W, _ = segment_sum(
                values, indices, grad_out, W_dec.shape[0], ctx.backend, W_dec.dtype,
                lengths=lengths)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_b = grad_out.float().sum(0).to(W_dec.dtype)
        return grad_values, None, grad_W, grad_b, None, None


class BagDecodeFunction(torch.autograd.Function):
    """Autograd for the decode of flat bags (gradients for values, W_dec and b_dec)."""

    @staticmethod
    def forward(ctx, values, indices, offsets, lengths, W_dec, b_dec, backend):  # type: ignore[override]
        ctx.backend = backend
        ctx.has_bias = b_dec is not None
        ctx.save_for_backward(values, indices, offsets, lengths, W_dec)
        return bag_sum(values, indices, offsets, W_dec, b_dec, W_dec.dtype)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        values, indices, offsets, lengths, W_dec = ctx.saved_tensors
        grad_values = grad_W = grad_b = None
        want_values, want_W = ctx.needs_input_grad[0], ctx.needs_input_grad[4]
        if want_values or want_W:  # one pass: dL/dW_dec and dL/dvalues from one read of grad_out
            out, _, gv = bag_pair_sums(values, indices, offsets, lengths, grad_out.contiguous(),
                                       W_dec.shape[0], ctx.backend,
                                       W=W_dec if want_values else None)
            grad_W = out.to(W_dec.dtype) if want_W else None
            grad_values = gv.to(values.dtype) if want_values else None
        if ctx.has_bias and ctx.needs_input_grad[5]:
            grad_b = grad_out.float().sum(0).to(W_dec.dtype)
        return grad_values, None, None, None, grad_W, grad_b, None


# ----------------------------------------------------------------------------------------------
# public entry point


def check_decode_inputs(
    values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor | None,
    lengths: torch.Tensor | None = None,
) -> None:
    """Validate sparse_decode's inputs; raises SparseOpsInputError naming the problem and fix."""
    if lengths is not None:
        check_lengths(lengths, values)
    check_tensor("values", values, ndim=2)
    check_tensor("W_dec", W_dec, ndim=2)
    check_same_device(values=values, indices=indices, W_dec=W_dec, b_dec=b_dec)
    check_indices("indices", indices, values.shape[0], W_dec.shape[0])
    require(
        indices.shape == values.shape,
        f"indices {tuple(indices.shape)} and values {tuple(values.shape)} must have the same "
        f"shape [tokens, k]; pass the pair returned by topk_encode",
    )
    require(
        values.dtype == W_dec.dtype,
        f"values ({values.dtype}) and W_dec ({W_dec.dtype}) must share a dtype; "
        f"use values.to(W_dec.dtype)",
    )
    if b_dec is not None:
        check_tensor("b_dec", b_dec, ndim=1)
        require(
            b_dec.shape[0] == W_dec.shape[1],
            f"b_dec has {b_dec.shape[0]} entries but W_dec rows have d_in={W_dec.shape[1]}; "
            f"W_dec must be shaped [latents, d_in] (transpose it if it is [d_in, latents])",
        )
        require(
            b_dec.dtype == W_dec.dtype,
            f"b_dec ({b_dec.dtype}) and W_dec ({W_dec.dtype}) must share a dtype",
        )


def check_lengths(lengths: torch.Tensor, values: torch.Tensor) -> None:
    """lengths must be int64 [tokens] with 0 <= lengths[t] <= values.shape[1]."""
    check_tensor("lengths", lengths, ndim=1, dtypes=(torch.int64,))
    require(lengths.device == values.device,
            f"lengths is on {lengths.device} but values on {values.device}; move them together")
    require(lengths.shape[0] == values.shape[0],
            f"lengths has {lengths.shape[0]} entries but values has {values.shape[0]} rows")
    if lengths.numel():
        low, high = int(lengths.min()), int(lengths.max())
        require(low >= 0 and high <= values.shape[1],
                f"lengths must lie in [0, {values.shape[1]}] (the code's width), got "
                f"[{low}, {high}]")


def check_bags(values: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor) -> None:
    """Flat bags: values, indices [nnz], offsets [tokens] int64 ascending from 0."""
    check_tensor("values", values, ndim=1)
    check_tensor("offsets", offsets, ndim=1, dtypes=(torch.int64,))
    check_tensor("indices", indices, ndim=1, dtypes=(torch.int64,))
    check_same_device(values=values, indices=indices, offsets=offsets)
    require(indices.shape == values.shape,
            f"indices {tuple(indices.shape)} and values {tuple(values.shape)} must have the same "
            f"shape [nnz] (flat bags)")
    nnz = values.shape[0]
    if offsets.numel():
        steps = offsets[1:] - offsets[:-1]
        require(int(offsets[0]) == 0 and bool((steps >= 0).all()) and int(offsets[-1]) <= nnz,
                f"offsets must rise from 0 to at most nnz={nnz} (each token's first pair, as "
                f"embedding_bag takes them)")
    else:
        require(nnz == 0, f"no offsets (no tokens) but {nnz} pairs")


def sparse_decode(
    values: torch.Tensor,
    indices: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor | None,
    backend: str = "auto",
    lengths: torch.Tensor | None = None,
    offsets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sparse SAE decode ``x_hat[t] = sum_j values[t, j] * W_dec[indices[t, j]] + b_dec``.

    Args:
        values: [tokens, k] activations (same dtype as W_dec).
        indices: [tokens, k] latent ids (int64 or int32) in [0, latents).
        W_dec: [latents, d_in] decoder rows.
        b_dec: [d_in] or None.
        backend: one of sparse_ops.dispatch.BACKENDS ("auto" picks, see there).
        lengths: [tokens] int64 or None: a ragged code, row t holding its first lengths[t]
            pairs (the rest is ignored and gets gradient 0).
        offsets: [tokens] int64 or None: flat bags instead of a [tokens, k] code (values and
            indices [nnz], token t's pairs from offsets[t] to the next offset, as
            F.embedding_bag takes them; top-AFA's code).

    Returns:
        x_hat [tokens, d_in] in W_dec's dtype; differentiable w.r.t. values, W_dec and b_dec.
    """
    if offsets is not None:
        require(lengths is None, "pass lengths (a padded ragged code) or offsets (flat bags), "
                                 "not both")
        check_bags(values, indices, offsets)
        check_decode_inputs(values[:, None], indices[:, None], W_dec, b_dec)
        chosen = resolve_backend(backend, W_dec.device)
        chosen = "cpu" if chosen == "cpu" and cpu_native.usable(values, W_dec, b_dec) else "torch"
        return BagDecodeFunction.apply(values, indices, offsets,
                                       bag_lengths(offsets, values.shape[0]), W_dec, b_dec, chosen)
    check_decode_inputs(values, indices, W_dec, b_dec, lengths)
    chosen = resolve_backend(backend, W_dec.device)
    if values.shape[0] == 0:
        chosen = "torch"  # nothing to launch
    if chosen == "cpu" and not cpu_native.usable(values, W_dec, b_dec):
        chosen = "torch"  # the native code reads float32 only
    return SparseDecodeFunction.apply(values, indices, W_dec, b_dec, chosen, lengths)
