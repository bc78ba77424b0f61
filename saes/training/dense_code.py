"""The dense baselines: ReLU + L1 and JumpReLU + L0 (every latent has a value per token).

    relu:      f = ReLU(z W_enc^T + b_enc);  penalty lambda * sum_i f_i ||W_dec,i|| (normalized,
               see losses.py); decoder rows free (the penalty reads their norms), initialized at
               norm 0.1 (Anthropic's April 2024 update); saved as sae_lens.StandardSAE.
    jumprelu:  f = z * H(z - theta) with sae-lens' straight-through estimator (rectangle kernel,
               bandwidth 0.05); penalty lambda * L0 through the same estimator; theta >= 0 kept
               by projection; unit-norm decoder rows; saved as sae_lens.JumpReLUSAE.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from sae_lens import SAE, JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig
from sae_lens.saes.jumprelu_sae import JumpReLU, Step
from torch import nn

from saes.training.losses import LossContext, StepResult
from saes.training.sparse_code import TrainableSAE, build_sae_lens


class DenseSAE(TrainableSAE):
    """Shared step of the dense baselines."""

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def penalty(self, f: torch.Tensor, pre: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x_hat for (normalized) rows x [n, d_in]."""
        f = self.activate(F.linear(x - self.b_dec, self.W_enc, self.b_enc))
        return torch.addmm(self.b_dec, f, self.W_dec)

    def step(self, x: torch.Tensor, ctx: LossContext) -> StepResult:
        pre = F.linear(x - self.b_dec, self.W_enc, self.b_enc)
        f = self.activate(pre)
        err = x - torch.addmm(self.b_dec, f, self.W_dec)
        sse = err.pow(2).sum()
        terms = {"recon": sse / ctx.variance, "sparsity": self.penalty(f, pre, ctx)}
        active = f.detach() > 0
        return StepResult(
            loss=sum(terms.values()), fired=active.sum(0), sse=sse.detach(), active=active.sum(),
            terms={k: v.detach() for k, v in terms.items()},
        )


class ReLUTrainable(DenseSAE):
    unit_norm_decoder = False
    decoder_init_norm = 0.1

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def penalty(self, f: torch.Tensor, pre: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        weighted_l1 = (f * self.W_dec.norm(dim=1)).sum()
        rms_norm = (ctx.variance / ctx.n_global).sqrt()
        return self.cfg.sparsity_coefficient * weighted_l1 / (ctx.n_global * rms_norm)

    def export(self, normalize_activations: str, metadata: dict[str, Any]) -> SAE:
        return build_sae_lens(StandardSAE, StandardSAEConfig, self.d_in, self.cfg.latents,
                              self.sae_lens_state(), normalize_activations, metadata)


class JumpReLUTrainable(DenseSAE):
    def __init__(self, cfg, d_in: int, backend: str = "auto"):
        super().__init__(cfg, d_in, backend)
        self.threshold = nn.Parameter(torch.full((cfg.latents,), float(cfg.jumprelu_init_threshold)))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return JumpReLU.apply(pre, self.threshold, self.cfg.jumprelu_bandwidth, False)

    def penalty(self, f: torch.Tensor, pre: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        l0 = Step.apply(pre, self.threshold, self.cfg.jumprelu_bandwidth, False).sum()
        return self.cfg.sparsity_coefficient * l0 / ctx.n_global

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        super().after_optimizer_step()
        self.threshold.clamp_(min=0.0)

    def load_extra_state_from_sae_lens(self, state, scale):
        self.threshold.copy_(state["threshold"])

    def fold_decoder_norms_into_encoder(self, norms):
        super().fold_decoder_norms_into_encoder(norms)
        self.threshold.mul_(norms)

    def export(self, normalize_activations: str, metadata: dict[str, Any]) -> SAE:
        state = {**self.sae_lens_state(), "threshold": self.threshold.detach().clone()}
        return build_sae_lens(JumpReLUSAE, JumpReLUSAEConfig, self.d_in, self.cfg.latents,
                              state, normalize_activations, metadata)
