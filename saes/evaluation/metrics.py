"""Reconstruction and sparsity metrics, defined once for every evaluation in the workbench.

- NMSE = mean over tokens of ||x - x_hat||^2 / ||x||^2
- FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2; explained variance = 1 - FVU
- L0 = mean number of nonzero latents per token (plus the per-token distribution)
- dead fraction = share of latents that never fired over the evaluated window
- density histogram = histogram of log10 firing frequency of the latents that fired
- shrinkage = mean over tokens of ||x_hat|| / ||x||

The pure functions take whole tensors; `ReconstructionAccumulator` streams the same quantities
over chunks (float64 sums on CPU, so long windows do not lose precision). Names follow
sae-lens's evals where both have the metric (mse, cossim, l0, l1, explained_variance,
l2_norm_in, l2_norm_out, l2_ratio).
"""

from __future__ import annotations

import math
from typing import Any

import torch

_TINY = 1e-12


def nmse(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean over tokens of ||x - x_hat||^2 / ||x||^2; x, x_hat [n, d]."""
    err = (x - x_hat).double().pow(2).sum(-1)
    return float((err / x.double().pow(2).sum(-1).clamp_min(_TINY)).mean())


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Fraction of variance unexplained: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2."""
    x64 = x.double()
    total = (x64 - x64.mean(0)).pow(2).sum()
    return float((x64 - x_hat.double()).pow(2).sum() / total.clamp_min(_TINY))


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return 1.0 - fvu(x, x_hat)


def shrinkage(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean over tokens of ||x_hat|| / ||x||."""
    return float((x_hat.double().norm(dim=-1) / x.double().norm(dim=-1).clamp_min(_TINY)).mean())


def compress_integer_histogram(counts: torch.Tensor, max_bins: int = 64) -> dict[str, list]:
    """counts[i] = how many tokens had value i -> {"edges", "counts"} with at most max_bins bins.

    Bin j covers [edges[j], edges[j + 1]) on the integers; trailing empty values are dropped.
    """
    nonzero = torch.nonzero(counts).flatten()
    top = int(nonzero.max()) + 1 if len(nonzero) else 1
    width = max(1, math.ceil(top / max_bins))
    edges = list(range(0, top + width, width))
    padded = torch.zeros(len(edges[:-1]) * width, dtype=torch.long)
    padded[:top] = counts[:top]
    return {"edges": edges, "counts": padded.view(-1, width).sum(1).tolist()}


def density_histogram(fire_counts: torch.Tensor, n_tokens: int, n_bins: int = 40) -> dict[str, Any]:
    """Histogram of log10 firing frequency over latents that fired; dead latents counted apart.

    fire_counts [h]: tokens on which each latent was nonzero. Bins span
    [log10(1 / n_tokens), 0] so every possible frequency has a bin.
    """
    n_tokens = max(int(n_tokens), 1)
    alive = fire_counts[fire_counts > 0].double()
    low = -math.log10(n_tokens)
    edges = torch.linspace(low, 0.0, n_bins + 1, dtype=torch.float64)
    log_freq = torch.log10(alive / n_tokens)
    counts = (torch.histc(log_freq, bins=n_bins, min=low, max=0.0) if len(alive)
              else torch.zeros(n_bins))
    return {
        "log10_edges": edges.tolist(),
        "counts": counts.long().tolist(),
        "n_dead": int((fire_counts == 0).sum()),
    }


class ReconstructionAccumulator:
    """Streams reconstruction and sparsity metrics over chunks of (x, f, x_hat)."""

    def __init__(self, d_sae: int):
        self.d_sae = d_sae
        self.n = 0
        self.sum_x = None  # [d] float64
        self.sum_x_sq = 0.0
        self.sum_err_sq = 0.0
        self.sum_nmse = 0.0
        self.sum_cossim = 0.0
        self.sum_norm_in = 0.0
        self.sum_norm_out = 0.0
        self.sum_ratio = 0.0
        self.sum_l1 = 0.0
        self.fire_counts = torch.zeros(d_sae, dtype=torch.long)
        self.l0_counts = torch.zeros(d_sae + 1, dtype=torch.long)

    @torch.no_grad()
    def update(self, x: torch.Tensor, f: torch.Tensor, x_hat: torch.Tensor) -> None:
        """x, x_hat [n, d_in]; f [n, d_sae] dense."""
        x64, xh64 = x.double(), x_hat.double()
        err = (x64 - xh64).pow(2).sum(-1)
        norm_in, norm_out = x64.norm(dim=-1), xh64.norm(dim=-1)
        self.n += len(x)
        batch_sum = x64.sum(0).cpu()
        self.sum_x = batch_sum if self.sum_x is None else self.sum_x + batch_sum
        self.sum_x_sq += float(x64.pow(2).sum())
        self.sum_err_sq += float(err.sum())
        self.sum_nmse += float((err / norm_in.pow(2).clamp_min(_TINY)).sum())
        self.sum_cossim += float(
            ((x64 * xh64).sum(-1) / (norm_in * norm_out).clamp_min(_TINY)).sum()
        )
        self.sum_norm_in += float(norm_in.sum())
        self.sum_norm_out += float(norm_out.sum())
        self.sum_ratio += float((norm_out / norm_in.clamp_min(_TINY)).sum())
        active = f != 0
        self.sum_l1 += float(f.abs().double().sum())
        self.fire_counts += active.sum(0).cpu()
        self.l0_counts += torch.bincount(active.sum(-1).cpu(), minlength=self.d_sae + 1)

    def result(self) -> dict[str, Any]:
        if self.n == 0:
            return {"n_tokens": 0}
        n = self.n
        total_var = self.sum_x_sq - float((self.sum_x / n).pow(2).sum()) * n
        fvu_value = self.sum_err_sq / max(total_var, _TINY)
        l0_values = torch.arange(self.d_sae + 1, dtype=torch.float64)
        fire_freq = self.fire_counts.double() / n
        return {
            "n_tokens": n,
            "nmse": self.sum_nmse / n,
            "fvu": fvu_value,
            "explained_variance": 1.0 - fvu_value,
            "mse": self.sum_err_sq / n,
            "cossim": self.sum_cossim / n,
            "l0": float((self.l0_counts.double() * l0_values).sum()) / n,
            "l1": self.sum_l1 / n,
            "dead_fraction": float((self.fire_counts == 0).double().mean()),
            "n_dead": int((self.fire_counts == 0).sum()),
            "dense_fraction": float((fire_freq > 0.1).double().mean()),
            "l2_norm_in": self.sum_norm_in / n,
            "l2_norm_out": self.sum_norm_out / n,
            "shrinkage": self.sum_ratio / n,
            "l0_histogram": compress_integer_histogram(self.l0_counts),
            "density_histogram": density_histogram(self.fire_counts, n),
        }
