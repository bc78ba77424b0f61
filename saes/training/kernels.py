"""The sparse encode/decode ops the trainer runs, chosen per device.

Two implementations of one contract (sparse_ops' `topk_encode` / `sparse_decode` and its
gradient primitives `gather_sum` / `segment_sum`):

- `SPARSE_OPS`: sparse_ops' dispatch (`backend="auto"`: Triton kernels on CUDA, its PyTorch
  reference elsewhere). Used on GPUs, and on CPU when asked (`kernels="sparse_ops"`).
- `CPU`: the same math tuned for a few CPU cores, the trainer's default on CPU:
    encode  dense x W_enc^T into a reused buffer (the one unavoidable matmul), then an exact
            row-wise top-k: the native selection of `cpu_native` where it builds, else a
            two-level torch.topk (latent j belongs to block j mod n_blocks; the k blocks with
            the largest maxima hold the top k, so one topk over k * block_size candidates
            finishes)
    among   `topk_encode_among` (AuxK's top-k among the dead latents) selects from the
            pre-activations the main encode of the same step left in the buffer: no second
            matmul
    decode  embedding_bag over the selected decoder rows
    grads   touch only the selected latents: per-latent sums of the selected pairs in token
            order, each thread owning a range of latents (native), or argsort + embedding_bag;
            dL/dvalues of the decode in the same native pass, or by ATen's embedding_bag
            per-sample-weight backward (no [n, k, d] copy)
  Values come back unsorted within a row (callers must not rely on order).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import sparse_ops
from saes.training import cpu_native
from sparse_ops.decode import gather_sum as _sparse_ops_gather_sum
from sparse_ops.decode import segment_sum as _sparse_ops_segment_sum
from sparse_ops.dispatch import resolve_backend
from sparse_ops.encode import TRITON_MAX_K

KERNEL_CHOICES = ("auto", "cpu", "sparse_ops")


@dataclass(frozen=True)
class SparseKernels:
    """topk_encode(x, W, b, k) -> (values, indices); topk_encode_among(x, W, b, k, columns) ->
    the same restricted to the latents `columns` [C] (indices still latent ids);
    sparse_decode(values, indices, W, b) -> x_hat; gather_sum(vals, idx, W) -> [n, d];
    segment_sum(vals, idx, G, rows, with_bias) -> ([rows, d], [rows] | None). Shapes as in
    sparse_ops (W [latents, d_in])."""

    name: str
    topk_encode: Callable
    topk_encode_among: Callable
    sparse_decode: Callable
    gather_sum: Callable
    segment_sum: Callable


def kernels_for(device: torch.device, choice: str = "auto") -> SparseKernels:
    """The implementation for `device`: "auto" = CPU kernels on CPU, sparse_ops elsewhere."""
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"unknown kernels {choice!r}; use one of {KERNEL_CHOICES}")
    if choice == "sparse_ops" or (choice == "auto" and torch.device(device).type != "cpu"):
        return SPARSE_OPS
    return CPU


# ----------------------------------------------------------------------------------------------
# sparse_ops adapters


def _so_topk_encode(x, W, b, k):
    """sparse_ops' encode; widths beyond the Triton kernel's k limit (wide top-AFA / BatchTopK
    candidate sets) take its PyTorch path on the same device."""
    return sparse_ops.topk_encode(x, W, b, int(k), backend="torch" if k > TRITON_MAX_K else "auto")


def _so_topk_encode_among(x, W, b, k, columns):
    """Top-k among `columns` by encoding with those rows of W only."""
    values, idx = _so_topk_encode(x, W[columns], b[columns] if b is not None else None, k)
    return values, columns[idx]


def _so_gather_sum(vals, idx, W):
    return _sparse_ops_gather_sum(vals, idx, W, None, resolve_backend("auto", W.device))


def _so_segment_sum(vals, idx, G, rows, with_bias):
    backend = resolve_backend("auto", G.device)
    return _sparse_ops_segment_sum(vals, idx, G, rows, backend, G.dtype, with_bias=with_bias)


SPARSE_OPS = SparseKernels("sparse_ops", _so_topk_encode, _so_topk_encode_among,
                           sparse_ops.sparse_decode, _so_gather_sum, _so_segment_sum)


# ----------------------------------------------------------------------------------------------
# CPU primitives


def cpu_gather_sum(vals: torch.Tensor, idx: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """out[n] = sum_j vals[n, j] * W[idx[n, j]]: [n, K] x [L, d] -> [n, d]."""
    return F.embedding_bag(idx, W, per_sample_weights=vals, mode="sum")


def cpu_segment_sum(
    vals: torch.Tensor, idx: torch.Tensor, G: torch.Tensor, rows: int, with_bias: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """out[l] = sum over (n, j) with idx[n, j] = l of vals[n, j] * G[n] -> [rows, d]
    (and the per-latent sums of vals [rows] when with_bias), by sorting the pairs by latent."""
    if _native_floats(vals, G):
        out, bias, _ = cpu_native.pair_sums(vals, idx, G, rows, with_bias)
        return out, bias
    flat = idx.reshape(-1)
    flat_vals = vals.reshape(-1)
    order, offsets, bags = _sorted_by_latent(idx, rows)
    out = F.embedding_bag(bags, G, offsets, per_sample_weights=flat_vals[order], mode="sum")
    bias = None
    if with_bias:
        bias = torch.zeros(rows, dtype=vals.dtype, device=vals.device).index_add_(0, flat, flat_vals)
    return out, bias


_LAST_SORT: list = []  # [(weakref to idx, version, rows, (order, offsets, bags))]: encode and
                       # decode backward share one sort of the same indices


def _sorted_by_latent(idx: torch.Tensor, rows: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(order, offsets, bags) for idx [n, K]: positions of idx.flatten() sorted by latent (stable),
    each latent's start in that order, and the row n of each sorted position."""
    if _LAST_SORT:
        ref, version, n, result = _LAST_SORT[0]
        if ref() is idx and version == idx._version and n == rows:
            return result
    flat = idx.reshape(-1)
    order = torch.argsort(flat.to(torch.int32) if rows < 2**31 else flat, stable=True)
    counts = torch.bincount(flat, minlength=rows)
    result = (order, torch.cumsum(counts, 0) - counts, order // idx.shape[1])
    _LAST_SORT[:] = [(weakref.ref(idx), idx._version, rows, result)]
    return result


def cpu_gather_dot(G: torch.Tensor, idx: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """out[n, j] = <G[n], W[idx[n, j]]>: [n, d], [n, K], [L, d] -> [n, K] (no [n, K, d] copy)."""
    n, k = idx.shape
    offsets = torch.arange(0, n * k, k, device=idx.device)
    offset2bag = torch.arange(n, device=idx.device).repeat_interleave(k)
    out = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        G, W, idx.reshape(-1), offsets, offset2bag, 0, -1)
    return out.view(n, k)


def exact_topk(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top k of each row of pre [n, L] -> (values [n, k], indices [n, k]), rows unsorted.

    The native selection (`cpu_native`) when it is built and pre is a float32 CPU matrix with
    contiguous rows. Otherwise two-level when it pays: latents are split into n_blocks = L / b
    strided blocks (latent j in block j mod n_blocks); any latent outside the k blocks with the largest maxima is beaten by
    those k maxima, so the top k lies among the k * b candidates of those blocks (exact up to
    ties). Falls back to torch.topk when L is not a multiple of the block size or k is large.
    """
    if cpu_native.usable_rows(pre):
        return cpu_native.topk_rows(pre, k)
    n, L = pre.shape
    block = next((b for b in (8, 4) if L % b == 0 and 4 * k * b <= L), None)
    if block is None:
        return torch.topk(pre, k, dim=1, sorted=False)
    n_blocks = L // block
    block_max = pre.view(n, block, n_blocks).amax(dim=1)
    blocks = torch.topk(block_max, k, dim=1, sorted=False).indices
    cand = (blocks.unsqueeze(-1) + torch.arange(0, L, n_blocks, device=pre.device)).view(n, -1)
    values, pos = torch.topk(pre.gather(1, cand), k, dim=1, sorted=False)
    return values, cand.gather(1, pos)


_WORKSPACE: dict[tuple, torch.Tensor] = {}


def _workspace(rows: int, cols: int, like: torch.Tensor, slot: str = "pre") -> torch.Tensor:
    """A reused [rows, cols] buffer (one flat buffer per slot, dtype and device, grown as
    needed): a fresh 64 MB pre-activation tensor per step costs page faults comparable to a
    third of the matmul. Only valid until the next call."""
    key = (slot, like.dtype, like.device)
    buf = _WORKSPACE.get(key)
    if buf is None or buf.numel() < rows * cols:
        buf = _WORKSPACE[key] = torch.empty(rows * cols, dtype=like.dtype, device=like.device)
    return buf[: rows * cols].view(rows, cols)


def dense_preactivations(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x W^T + b [n, L] into the reused buffer. The bias rides along as an extra input column
    of ones ([x, 1] [W, b]^T): one GEMM, where addmm would first copy b into all n x L outputs."""
    pre = _workspace(x.shape[0], W.shape[0], x)
    if b is None:
        return torch.mm(x, W.T, out=pre)
    n, d = x.shape
    x1 = _workspace(n, d + 1, x, "x1")
    x1[:, :d] = x
    x1[:, d] = 1.0
    wb = _workspace(W.shape[0], d + 1, W, "wb")
    wb[:, :d] = W
    wb[:, d] = b
    return torch.mm(x1, wb.T, out=pre)


def topk_among(pre: torch.Tensor, k: int, columns: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top k of each row of pre [n, L] among `columns` [C] -> (values [n, k], latent ids [n, k])."""
    if cpu_native.usable_rows(pre):
        return cpu_native.topk_rows(pre, k, columns)
    values, pos = exact_topk(pre.index_select(1, columns), k)
    return values, columns[pos]


_LAST_PRE: list = []  # [key of the (x, W, b) whose pre-activations the "pre" buffer holds]


def _preactivation_key(x, W, b) -> tuple:
    return tuple((weakref.ref(t), t._version) if t is not None else None for t in (x, W, b))


def _same_key(key: tuple, x, W, b) -> bool:
    for entry, t in zip(key, (x, W, b)):
        if (entry is None) != (t is None):
            return False
        if entry is not None and (entry[0]() is not t or entry[1] != t._version):
            return False
    return True


def preactivations(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x W^T + b [n, L] in the reused buffer; recomputed unless the buffer already holds them for
    these very tensors, unmodified since (AuxK after the main encode of the same step)."""
    if _LAST_PRE and _same_key(_LAST_PRE[0], x, W, b):
        return _workspace(x.shape[0], W.shape[0], x)
    _LAST_PRE.clear()
    pre = dense_preactivations(x, W, b)
    _LAST_PRE.append(_preactivation_key(x, W, b))
    return pre


def release_workspace() -> None:
    """Free the pre-activation buffer (end of training)."""
    _WORKSPACE.clear()
    _LAST_SORT.clear()
    _LAST_PRE.clear()


class _CPUTopKEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W, b, k, columns=None):  # type: ignore[override]
        pre = preactivations(x, W, b)
        if columns is None:
            values, indices = exact_topk(pre, k)
        else:
            values, indices = topk_among(pre, k, columns)
        values = values.relu_()
        ctx.has_bias = b is not None
        ctx.save_for_backward(x, W, values, indices)
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad_values, _grad_indices):  # type: ignore[override]
        x, W, values, indices = ctx.saved_tensors
        g = (grad_values * (values > 0)).contiguous()
        grad_x = cpu_gather_sum(g, indices, W) if ctx.needs_input_grad[0] else None
        grad_W = grad_b = None
        want_b = ctx.has_bias and ctx.needs_input_grad[2]
        if ctx.needs_input_grad[1] or want_b:
            grad_W, grad_b = cpu_segment_sum(g, indices, x, W.shape[0], want_b)
        return grad_x, grad_W, grad_b, None, None


class _CPUSparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, indices, W, b):  # type: ignore[override]
        ctx.has_bias = b is not None
        ctx.save_for_backward(values, indices, W)
        out = cpu_gather_sum(values, indices, W)
        return out + b if b is not None else out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        values, indices, W = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        want_values, want_W = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        if (want_values or want_W) and _native_floats(values, grad_out, W):
            grad_W, _, grad_values = cpu_native.pair_sums(values, indices, grad_out, W.shape[0],
                                                          W=W if want_values else None)
        else:
            grad_values = cpu_gather_dot(grad_out, indices, W) if want_values else None
            grad_W = cpu_segment_sum(values, indices, grad_out, W.shape[0])[0] if want_W else None
        grad_b = grad_out.sum(0) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return grad_values, None, grad_W, grad_b


def _native_floats(*tensors: torch.Tensor) -> bool:
    return cpu_native.available() and all(
        t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def cpu_topk_encode(x, W_enc, b_enc, k):
    """(values, indices) = top-k of ReLU(x W_enc^T + b_enc): [n, d], [L, d], [L] -> [n, k] x2."""
    return _CPUTopKEncode.apply(x, W_enc, b_enc, int(k))


def cpu_topk_encode_among(x, W_enc, b_enc, k, columns):
    """cpu_topk_encode restricted to the latents `columns` [C] int64 (indices are latent ids)."""
    return _CPUTopKEncode.apply(x, W_enc, b_enc, int(k), columns)


def cpu_sparse_decode(values, indices, W_dec, b_dec):
    """x_hat = sum_j values[:, j] W_dec[indices[:, j]] + b_dec -> [n, d]."""
    return _CPUSparseDecode.apply(values, indices, W_dec, b_dec)


CPU = SparseKernels("cpu", cpu_topk_encode, cpu_topk_encode_among, cpu_sparse_decode,
                    cpu_gather_sum, cpu_segment_sum)
