"""The trainable form of an SAE: parameters in the kernels' layout plus one step's loss.

Layout (as sparse_ops wants it; sae-lens stores W_enc transposed):
    W_enc [encoder rows, d_in]    b_enc [encoder rows] (absent for top-AFA)
    W_dec [latents, d_in]         b_dec [d_in]
Encoder rows = latents, except for the structured SAE (one logit per group value plus null).

`kernels` (kernels.py) are the sparse encode/decode ops for the device the SAE trains on.
Subclasses implement `step(x, ctx) -> StepResult` and `export(...) -> sae_lens.SAE`. Weights
start as W_dec = random unit rows and W_enc = W_dec (i.e. W_enc = W_dec^T in sae-lens layout);
b_dec from the data (`init_from_data`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from sae_lens import SAE
from sae_lens.saes.sae import SAEMetadata
from torch import nn

from saes.training.config import SAETrainConfig
from saes.training.init import decoder_bias, random_unit_rows
from saes.training.kernels import SparseKernels, kernels_for
from saes.training.losses import LossContext, StepResult


class TrainableSAE(nn.Module):
    """Base class: parameters, decoder-norm constraint, export helpers."""

    unit_norm_decoder: ClassVar[bool] = True
    has_encoder_bias: ClassVar[bool] = True
    decoder_init_norm: ClassVar[float] = 1.0

    def __init__(self, cfg: SAETrainConfig, d_in: int):
        super().__init__()
        self.cfg = cfg
        self.d_in = d_in
        generator = torch.Generator().manual_seed(cfg.seed)
        w_dec = random_unit_rows(cfg.latents, d_in, generator) * self.decoder_init_norm
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(self.initial_encoder(w_dec))
        self.b_enc = (nn.Parameter(torch.zeros(self.W_enc.shape[0]))
                      if self.has_encoder_bias else None)
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.kernels: SparseKernels = kernels_for(torch.device("cpu"), cfg.kernels)

    # -- initialization ------------------------------------------------------------------------
    def initial_encoder(self, w_dec: torch.Tensor) -> torch.Tensor:
        """W_enc at init from W_dec [latents, d_in]: the transpose in sae-lens terms."""
        return w_dec.clone()

    @torch.no_grad()
    def init_from_data(self, sample: torch.Tensor) -> None:
        """Data-dependent init from a (normalized) sample [n, d_in]: b_dec."""
        self.b_dec.copy_(decoder_bias(sample, self.cfg.b_dec_init).to(self.b_dec))

    @torch.no_grad()
    def load_sae_lens(self, sae: SAE, scale: float = 1.0) -> None:
        """Start from a sae-lens SAE of a matching architecture, re-expressed for inputs
        x * scale (the dataset normalization): W_enc / scale, W_dec * scale, b_dec * scale.
        Decoder rows are then normalized (their norms folded into the encoder) when this
        architecture trains with unit-norm rows."""
        state = {k: v.detach().float().cpu() for k, v in sae.state_dict().items()}
        self.W_enc.copy_(state["W_enc"].T / scale)
        self.W_dec.copy_(state["W_dec"] * scale)
        self.b_dec.copy_(state["b_dec"] * scale)
        if self.b_enc is not None and "b_enc" in state:
            self.b_enc.copy_(state["b_enc"])
        self.load_extra_state_from_sae_lens(state, scale)
        if self.unit_norm_decoder:
            norms = self.W_dec.norm(dim=1).clamp_min(1e-12)
            self.W_dec /= norms[:, None]
            self.fold_decoder_norms_into_encoder(norms)

    def load_extra_state_from_sae_lens(self, state: dict[str, torch.Tensor], scale: float) -> None:
        """Architecture-specific tensors of a sae-lens state dict (thresholds, ...)."""

    def fold_decoder_norms_into_encoder(self, norms: torch.Tensor) -> None:
        """Scale latent i's encoder row (and bias) by norms[i], so f_i W_dec,i is unchanged
        when W_dec,i is divided by norms[i]."""
        self.W_enc.mul_(norms[:, None])
        if self.b_enc is not None:
            self.b_enc.mul_(norms)

    @property
    def n_units(self) -> int:
        """Units tracked for dead-latent revival (latents; groups for the structured SAE)."""
        return self.cfg.latents

    # -- the constraint on decoder rows --------------------------------------------------------
    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Project out the gradient component along each (unit) decoder row."""
        if self.unit_norm_decoder and self.W_dec.grad is not None:
            g = self.W_dec.grad
            g -= (g * self.W_dec).sum(dim=1, keepdim=True) * self.W_dec

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Renormalize decoder rows to unit norm (subclasses add their own projections)."""
        if self.unit_norm_decoder:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    # -- training ------------------------------------------------------------------------------
    def step(self, x: torch.Tensor, ctx: LossContext) -> StepResult:
        """Loss on this rank's (normalized) rows x [n, d_in]."""
        raise NotImplementedError

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x_hat [n, d_in] of (normalized) rows x, as the exported SAE computes it."""
        raise NotImplementedError

    def finalize(self, x: torch.Tensor) -> None:
        """Last adjustments before export, given a (normalized) training batch [n, d_in]."""

    # -- export --------------------------------------------------------------------------------
    def export(self, normalize_activations: str, metadata: dict[str, Any]) -> SAE:
        """The trained SAE as a sae-lens object (CPU, float32, eval mode)."""
        raise NotImplementedError

    def sae_lens_state(self) -> dict[str, torch.Tensor]:
        """Common weights in sae-lens layout (W_enc transposed to [d_in, d_sae])."""
        state = {
            "W_enc": self.W_enc.detach().T.contiguous(),
            "W_dec": self.W_dec.detach().clone(),
            "b_dec": self.b_dec.detach().clone(),
        }
        if self.b_enc is not None:
            state["b_enc"] = self.b_enc.detach().clone()
        return state


def build_sae_lens(
    sae_class: type[SAE],
    cfg_class: type,
    d_in: int,
    d_sae: int,
    state: dict[str, torch.Tensor],
    normalize_activations: str,
    metadata: dict[str, Any],
    **fields: Any,
) -> SAE:
    """Instantiate a sae-lens SAE of `sae_class` and load `state` (all keys must match)."""
    cfg = cfg_class(
        d_in=d_in, d_sae=d_sae, dtype="float32", device="cpu",
        apply_b_dec_to_input=True, normalize_activations=normalize_activations,
        metadata=SAEMetadata(**metadata), **fields,
    )
    sae = sae_class(cfg)
    sae.load_state_dict({k: v.detach().float().cpu().contiguous() for k, v in state.items()},
                        strict=True)
    return sae.eval()
