"""The loss terms, normalized so that they are scale-free and exact under data parallelism.

With x the (normalized) global batch of N tokens and V = sum_n ||x_n - mean(x)||^2:

    recon   = sum_n ||x_n - x_hat_n||^2 / V                       (fraction of variance unexplained)
    auxk    = alpha_aux * AuxK (below)                             topk, batchtopk, topafa, structured
    afa     = lambda_AFA * d * sum_n (||f_n|| - ||x_n||)^2 / V      topafa; = the reference's
              per-element MSE + lambda_AFA * mean (...)^2, divided by the per-element variance
    l1      = lambda * sum_n sum_i f_ni ||W_dec,i|| / (N * sqrt(V / N))   relu
    l0      = lambda * sum_n #{i: z_ni > theta_i} / N              jumprelu (straight-through)

Each rank computes its tokens' share of every sum and divides by the global V and N, so the ranks'
losses (and gradients) add up to the one-process values.

AuxK dead-latent revival (Gao et al. 2024; as in openai/sparse_autoencoder and sparsify):
latents that have not fired for `dead_window_tokens` are "dead". Each step, the top k_aux
pre-activations among the dead latents of each token are decoded (no bias) into e_hat and fit
to the residual e = x - x_hat of the live reconstruction (detached):

    aux = scale * sum ||e_hat - e||^2 / sum ||e - mean(e)||^2,  scale = min(n_dead / k_aux, 1)

and the loss adds alpha_aux * aux (alpha_aux = 1/32). Sums run over the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from saes.training.distributed import Reducer


@dataclass
class LossContext:
    """What a training step needs beyond its own rows.

    variance: V of the global batch (scalar tensor); n_global: tokens in the global batch;
    dead: bool [units] latents (or groups) silent for the dead window, None before any are;
    reducer: the cross-rank collectives.
    """

    variance: torch.Tensor
    n_global: int
    dead: torch.Tensor | None
    reducer: Reducer

    def global_sq_dev(self, t: torch.Tensor) -> torch.Tensor:
        """sum_n ||t_n - mean(t)||^2 over the global batch of rows t [n_local, d] (detached)."""
        return global_sq_dev(t, self.n_global, self.reducer)


def global_sq_dev(t: torch.Tensor, n_global: int, reducer: Reducer) -> torch.Tensor:
    """Sum of squared deviations from the global mean (two passes, stable) -> scalar, > 0."""
    t = t.detach()
    mean = reducer.sum(t.sum(0)) / n_global
    total = reducer.sum((t - mean).pow(2).sum())
    return total.clamp_min(torch.finfo(t.dtype).tiny)


@dataclass
class StepResult:
    """One step's outcome on this rank's rows.

    loss: scalar to backpropagate; fired: int64 [units] activations per latent (or group);
    sse: sum of squared reconstruction errors; active: number of nonzero latent activations;
    terms: each loss term's value (detached); stats: arch-specific numbers (e.g. threshold).
    """

    loss: torch.Tensor
    fired: torch.Tensor
    sse: torch.Tensor
    active: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)


def auxk_loss(e_hat: torch.Tensor, residual: torch.Tensor, scale: float,
              ctx: LossContext) -> torch.Tensor:
    """AuxK's normalized error: the decoded aux code e_hat [n, d] (no b_dec) against the
    detached residual [n, d] of the live reconstruction, times `scale` (see module doc)."""
    return scale * F.mse_loss(e_hat, residual, reduction="sum") / ctx.global_sq_dev(residual)
