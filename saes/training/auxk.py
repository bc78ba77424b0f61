"""AuxK dead-latent revival (Gao et al. 2024; as in openai/sparse_autoencoder and sparsify).

Latents that have not fired for `dead_window_tokens` are "dead". Each step, the top k_aux
pre-activations among the dead latents of each token are decoded (no bias) and fit to the
residual e = x - x_hat of the live reconstruction (detached):

    aux = scale * sum ||e_hat - e||^2 / sum ||e - mean(e)||^2,  scale = min(n_dead / k_aux, 1)

and the loss adds alpha_aux * aux (alpha_aux = 1/32). Sums run over the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from saes.training.losses import LossContext


def auxk_loss(
    aux_values: torch.Tensor,
    aux_indices: torch.Tensor,
    sparse_decode,
    W_dec: torch.Tensor,
    residual: torch.Tensor,
    scale: float,
    ctx: LossContext,
) -> torch.Tensor:
    """Normalized error of decoding aux code [N, K] (no b_dec) against residual [N, d].

    sparse_decode: the decode op in use (kernels.py)."""
    e_hat = sparse_decode(aux_values, aux_indices, W_dec, None)
    return scale * F.mse_loss(e_hat, residual, reduction="sum") / ctx.global_sq_dev(residual)


def dead_latent_ids(dead: torch.Tensor) -> torch.Tensor:
    """bool [L] -> int64 ids of the dead latents."""
    return dead.nonzero().squeeze(1)
