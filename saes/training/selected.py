"""Pre-activations of selected latents with gradients that touch only those latents.

When the selection (top-k groups, AuxK's dead latents, ...) is made on a dense pre-activation
matrix computed without autograd, `selected_linear` returns the chosen entries

    out[n, j] = x[n] . W[idx[n, j]] + b[idx[n, j]]            [N, K]

and its backward costs O(N * K * d) instead of three dense [N, latents] matmuls. The sparse
gradient primitives are sparse_ops' (`gather_sum`, `segment_sum`), shared with its fused encoder.
"""

from __future__ import annotations

import torch

from saes.training.kernels import SparseKernels


class _SelectedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W, b, idx, selected, kernels):  # type: ignore[override]
        ctx.kernels = kernels
        ctx.has_bias = b is not None
        ctx.save_for_backward(x, W, idx)
        return selected.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, W, idx = ctx.saved_tensors
        g = grad.contiguous()
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = ctx.kernels.gather_sum(g, idx, W)
        want_b = ctx.has_bias and ctx.needs_input_grad[2]
        if ctx.needs_input_grad[1] or want_b:
            grad_W, grad_b = ctx.kernels.segment_sum(g, idx, x, W.shape[0], want_b)
            grad_b = grad_b.to(W.dtype) if want_b else None
        return grad_x, grad_W, grad_b, None, None, None


def selected_linear(
    x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, idx: torch.Tensor,
    dense_pre: torch.Tensor, kernels: SparseKernels,
) -> torch.Tensor:
    """Entries idx [N, K] of dense_pre = x W^T + b [N, L] (computed without grad) -> [N, K].

    x [N, d], W [L, d], b [L] or None. Differentiable w.r.t. x, W and b through the chosen
    entries only.
    """
    return _SelectedLinear.apply(x, W, b, idx, dense_pre.gather(1, idx), kernels)
