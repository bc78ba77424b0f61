"""eps_LBO and the ZF plot (Lee et al. 2025, "Evaluating and Designing Sparse Autoencoders by
Approximating Quasi-Orthogonality", arXiv 2503.24277).

With unit decoder directions, an SAE writes its working-space input z as
z ~= f~ @ [W_dec / ||W_dec||; b_dec / ||b_dec||] where f~ = [f_i * ||W_dec,i||, ||b_dec||]
(h + 1 entries). If the directions were orthogonal, ||z|| = ||f~||; how far the two norms part,
per token, is

    eps_LBO = | ||z||^2 - ||f~||^2 | / ((h - 1) * ||f~||^2)         (h = number of latents)

The ZF plot puts ||z|| against ||f~||; the bands ||f~|| in [||z|| / sqrt(1 + c), ||z|| /
sqrt(1 - c)] for c = eps (h - 1) in {0.25, 0.5, 1} show where tokens with eps_LBO <= c / (h - 1)
lie. z is the SAE's input in its working space (after the SAE's own input normalization).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from saes.evaluation.sampling import GroupedBottomK

BAND_LEVELS = (0.25, 0.5, 1.0)
"""Values of c = eps_LBO * (h - 1) drawn as bands in the ZF plot."""


def f_tilde_norm(f: torch.Tensor, decoder_norms: torch.Tensor, b_dec_norm: float) -> torch.Tensor:
    """||f~|| per token: f [n, h], decoder_norms [h] -> [n]."""
    scaled = f.float() * decoder_norms.float()
    return (scaled.pow(2).sum(dim=-1) + float(b_dec_norm) ** 2).sqrt()


def eps_lbo(z_norm: torch.Tensor, ftilde_norm: torch.Tensor, h: int) -> torch.Tensor:
    """eps_LBO per token from ||z|| [n] and ||f~|| [n] for an SAE with h latents -> [n]."""
    if h < 2:
        raise ValueError(f"eps_LBO needs at least 2 latents, got h={h}")
    f2 = ftilde_norm.double().pow(2).clamp_min(1e-30)
    return ((z_norm.double().pow(2) - f2).abs() / ((h - 1) * f2)).float()


def zf_bands(h: int, levels: tuple[float, ...] = BAND_LEVELS) -> list[dict[str, Any]]:
    """Bands of the ZF plot as slopes of lines through the origin: ||f~|| = slope * ||z||.

    For each c: eps = c / (h - 1), lower slope 1 / sqrt(1 + c), upper slope 1 / sqrt(1 - c)
    (None when c >= 1: the band is open above).
    """
    bands = []
    for c in levels:
        bands.append(
            {
                "c": c,
                "eps": c / (h - 1),
                "lower_slope": 1.0 / math.sqrt(1.0 + c),
                "upper_slope": 1.0 / math.sqrt(1.0 - c) if c < 1.0 else None,
            }
        )
    return bands


class ZFCollector:
    """Streams eps_LBO over chunks; keeps every token's eps (for quantiles) and a uniform sample
    of (||z||, ||f~||) points for the plot."""

    def __init__(self, sae: Any, n_points: int = 2000, seed: int = 0):
        self.decoder_norms = sae.W_dec.detach().float().norm(dim=-1)
        self.b_dec_norm = float(sae.b_dec.detach().float().norm())
        self.h = int(sae.W_dec.shape[0])
        self.eps_values: list[torch.Tensor] = []
        self.points = GroupedBottomK(n_points, n_groups=1)
        self.generator = torch.Generator().manual_seed(seed)

    def update(self, z: torch.Tensor, f: torch.Tensor) -> None:
        """z [n, d_in] working-space input, f [n, h] dense code."""
        z_norm = z.float().norm(dim=-1)
        ft_norm = f_tilde_norm(f, self.decoder_norms.to(f.device), self.b_dec_norm)
        eps = eps_lbo(z_norm, ft_norm, self.h).cpu()
        self.eps_values.append(eps)
        keys = torch.rand(len(eps), generator=self.generator)
        self.points.add(
            torch.zeros(len(eps), dtype=torch.long), keys,
            norm_z=z_norm.cpu(), norm_f_tilde=ft_norm.cpu(), eps=eps,
        )

    def result(self) -> dict[str, Any]:
        eps = torch.cat(self.eps_values) if self.eps_values else torch.zeros(0)
        if len(eps) == 0:
            return {}
        sample = self.points.result()
        inside = {f"frac_within_c{c}": float((eps * (self.h - 1) <= c).float().mean())
                  for c in BAND_LEVELS}
        return {
            "eps_lbo_mean": float(eps.mean()),
            "eps_lbo_median": float(eps.median()),
            "eps_lbo_scaled_median": float(eps.median()) * (self.h - 1),
            **inside,
            "zf_plot": {
                "norm_z": sample["norm_z"].tolist(),
                "norm_f_tilde": sample["norm_f_tilde"].tolist(),
                "eps_lbo": sample["eps"].tolist(),
                "bands": zf_bands(self.h),
                "h": self.h,
            },
        }
