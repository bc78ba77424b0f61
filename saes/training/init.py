"""Weight and bias initialization: unit-norm decoder rows, W_enc = W_dec^T, median b_dec."""

from __future__ import annotations

import torch

from workbench.errors import InvalidInputError


def random_unit_rows(rows: int, d_in: int, generator: torch.Generator) -> torch.Tensor:
    """[rows, d_in] random directions (Gaussian, normalized to unit length)."""
    w = torch.randn(rows, d_in, generator=generator)
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


def geometric_median(points: torch.Tensor, iters: int = 100, tol: float = 1e-7) -> torch.Tensor:
    """Geometric median of points [n, d] by Weiszfeld's iterations (float64) -> [d].

    The point minimizing the sum of Euclidean distances; robust to the outlier tokens (e.g. the
    first position of a window) that pull the mean away from the bulk.
    """
    pts = points.double()
    median = pts.mean(0)
    for _ in range(iters):
        dist = (pts - median).norm(dim=1).clamp_min(1e-12)
        weights = 1.0 / dist
        new = (weights[:, None] * pts).sum(0) / weights.sum()
        shift = (new - median).norm() / median.norm().clamp_min(1e-12)
        median = new
        if shift < tol:
            break
    return median.to(points.dtype)


def decoder_bias(sample: torch.Tensor, how: str) -> torch.Tensor:
    """b_dec from a sample of (normalized) activations [n, d]: geometric_median | mean | zeros."""
    if how == "geometric_median":
        return geometric_median(sample)
    if how == "mean":
        return sample.mean(0)
    if how == "zeros":
        return torch.zeros(sample.shape[1], dtype=sample.dtype)
    raise InvalidInputError(f"unknown b_dec init {how!r}; use geometric_median, mean or zeros")
