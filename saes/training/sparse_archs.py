"""SAEs whose code is a few (value, latent) pairs per token: TopK, BatchTopK, top-AFA.

One step (shared by all, `SparseCodeSAE.step`):

    z = x - b_dec
    values, indices = encode_sparse(z)                 [n, K] each (K small; zeros allowed)
    x_hat = sparse_decode(values, indices, W_dec, b_dec)
    loss = recon + extra terms (top-AFA) + alpha_aux * AuxK(dead latents)

The encode is a top-k encode (kernels.py: sparse_ops' fused kernel on GPUs, the CPU version on
CPU) whose backward touches only the selected latents; the decode runs on the selected rows of
W_dec; so no [n x latents] matrix is ever differentiated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from sae_lens import SAE, JumpReLUSAE, JumpReLUSAEConfig, TopKSAE, TopKSAEConfig

from saes.topafa import TopAFASAE, TopAFASAEConfig
from saes.training.auxk import auxk_loss, dead_latent_ids
from saes.training.base import TrainableSAE, build_sae_lens
from saes.training.distributed import Reducer
from saes.training.losses import LossContext, StepResult
from sparse_ops import topafa_select


@dataclass
class SparseCode:
    """values [n, K] (>= 0, zeros = inactive) at latents indices [n, K] int64."""

    values: torch.Tensor
    indices: torch.Tensor
    scale: float = 1.0  # AuxK's weight for an aux code
    dense: Any = None  # arch-specific dense intermediates reused by aux_code
    stats: dict[str, float] = field(default_factory=dict)


class SparseCodeSAE(TrainableSAE):
    """Base of the sparse-code SAEs: the shared step and latent-level AuxK."""

    def encode_sparse(self, z: torch.Tensor, ctx: LossContext) -> SparseCode:
        raise NotImplementedError

    def extra_terms(self, x: torch.Tensor, code: SparseCode, ctx: LossContext
                    ) -> dict[str, torch.Tensor]:
        return {}

    def unit_of(self, indices: torch.Tensor) -> torch.Tensor:
        """Latent ids -> the units tracked for dead revival (latents themselves here)."""
        return indices

    def aux_code(self, z: torch.Tensor, code: SparseCode, dead: torch.Tensor) -> SparseCode:
        """Top-k_aux pre-activations among the dead latents of each token."""
        ids = dead_latent_ids(dead)
        k_aux = int(self.cfg.k_aux)
        values, indices = self.kernels.topk_encode_among(z, self.W_enc, self.b_enc,
                                                         min(k_aux, ids.numel()), ids)
        return SparseCode(values, indices, scale=min(ids.numel() / k_aux, 1.0))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x_hat for (normalized) rows x [n, d_in] by this rank alone, without training effects."""
        was_training = self.training
        self.eval()
        try:
            ctx = LossContext(torch.ones((), device=x.device), x.shape[0], None, Reducer(local=True))
            code = self.encode_sparse(x - self.b_dec, ctx)
            return self.kernels.sparse_decode(code.values, code.indices, self.W_dec, self.b_dec)
        finally:
            self.train(was_training)

    def step(self, x: torch.Tensor, ctx: LossContext) -> StepResult:
        z = x - self.b_dec
        code = self.encode_sparse(z, ctx)
        x_hat = self.kernels.sparse_decode(code.values, code.indices, self.W_dec, self.b_dec)
        sse = F.mse_loss(x_hat, x, reduction="sum")  # one fused pass forward and backward
        terms = {"recon": sse / ctx.variance, **self.extra_terms(x, code, ctx)}
        if ctx.dead is not None and bool(ctx.dead.any()):
            aux = self.aux_code(z, code, ctx.dead)
            terms["auxk"] = self.cfg.aux_alpha * auxk_loss(
                aux.values, aux.indices, self.kernels.sparse_decode, self.W_dec,
                x - x_hat.detach(), aux.scale, ctx)
        active = code.values.detach() > 0
        fired = torch.bincount(self.unit_of(code.indices[active]), minlength=self.n_units)
        return StepResult(
            loss=sum(terms.values()), fired=fired, sse=sse.detach(), active=active.sum(),
            terms={k: v.detach() for k, v in terms.items()}, stats=code.stats,
        )


class TopKTrainable(SparseCodeSAE):
    """f = ReLU(TopK_k(z W_enc^T + b_enc)); saved as sae_lens.TopKSAE."""

    def encode_sparse(self, z: torch.Tensor, ctx: LossContext) -> SparseCode:
        values, indices = self.kernels.topk_encode(z, self.W_enc, self.b_enc, int(self.cfg.k))
        return SparseCode(values, indices)

    def export(self, normalize_activations: str, metadata: dict[str, Any]) -> SAE:
        return build_sae_lens(TopKSAE, TopKSAEConfig, self.d_in, self.cfg.latents,
                              self.sae_lens_state(), normalize_activations, metadata,
                              k=int(self.cfg.k), rescale_acts_by_decoder_norm=False)


class BatchTopKTrainable(SparseCodeSAE):
    """Keep the k*B largest ReLU pre-activations of the whole (global) batch of B tokens.

    Exact without sorting all B * latents values: each row contributes its top `width`
    candidates (width = 4k, doubled on demand); the batch threshold is the (k*B)-th largest
    candidate, which is the true one unless some row kept all of its candidates, in which case
    width grows and the step is redone. The inference threshold is an EMA of the batch threshold
    (the smallest kept value), recalibrated on the last batch with the final weights
    (`finalize`); the SAE is saved as sae_lens.JumpReLUSAE with that threshold.
    """

    def __init__(self, cfg, d_in):
        super().__init__(cfg, d_in)
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float64))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.int64))
        self.register_buffer("width", torch.tensor(min(cfg.latents, 4 * int(cfg.k))))

    def encode_sparse(self, z: torch.Tensor, ctx: LossContext) -> SparseCode:
        n_keep = int(self.cfg.k) * ctx.n_global
        while True:
            width = int(self.width)
            values, indices = self.kernels.topk_encode(z, self.W_enc, self.b_enc, width)
            with torch.no_grad():
                pool = ctx.reducer.cat(values.detach().reshape(-1))
                threshold = torch.kthvalue(pool, max(1, pool.numel() - n_keep + 1)).values
                keep = (values.detach() >= threshold) & (values.detach() > 0)
                saturated = width < self.cfg.latents and bool(keep.all(dim=1).any())
            if not ctx.reducer.any(saturated, z.device):
                break
            self.width.fill_(min(self.cfg.latents, 2 * width))
        self._update_threshold(float(threshold))
        return SparseCode(values * keep, indices, stats={"threshold": float(self.threshold)})

    @torch.no_grad()
    def finalize(self, x: torch.Tensor) -> None:
        """Set the inference threshold from the final weights: the (k*n)-th largest ReLU
        pre-activation of a training batch (the EMA lags behind weights that still move)."""
        pre = torch.relu(torch.addmm(self.b_enc, x - self.b_dec, self.W_enc.T)).flatten()
        n_keep = min(int(self.cfg.k) * x.shape[0], pre.numel())
        self.threshold.fill_(float(torch.kthvalue(pre, pre.numel() - n_keep + 1).values))

    def load_extra_state_from_sae_lens(self, state, scale):
        if "threshold" in state:  # a JumpReLU SAE: its (mean) threshold starts the EMA
            self.threshold.fill_(float(state["threshold"].mean()))
            self.threshold_updates.fill_(1)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Inference semantics (as the saved JumpReLU SAE): keep pre-activations > threshold."""
        pre = torch.addmm(self.b_enc, x - self.b_dec, self.W_enc.T)
        f = torch.relu(pre) * (pre > float(self.threshold))
        return torch.addmm(self.b_dec, f, self.W_dec)

    @torch.no_grad()
    def _update_threshold(self, batch_threshold: float) -> None:
        if batch_threshold <= 0 or not self.training:
            return
        if int(self.threshold_updates) == 0:
            self.threshold.fill_(batch_threshold)
        else:
            rate = self.cfg.batchtopk_threshold_ema
            self.threshold.mul_(1 - rate).add_(rate * batch_threshold)
        self.threshold_updates += 1

    def export(self, normalize_activations: str, metadata: dict[str, Any]) -> SAE:
        state = self.sae_lens_state()
        state["threshold"] = torch.full((self.cfg.latents,), float(self.threshold))
        return build_sae_lens(JumpReLUSAE, JumpReLUSAEConfig, self.d_in, self.cfg.latents,
                              state, normalize_activations, metadata)


class TopAFATrainable(SparseCodeSAE):
    """top-AFA (methods/saes.md): per-token k(x) by norm matching, plus the AFA loss.

    Candidates are the top `width` ReLU pre-activations (no encoder bias); sparse_ops'
    `topafa_select` cuts each row at k(x). With unit-norm decoder rows the candidate order is the
    order of s_i, so the cut is exact unless a row keeps all `width` candidates; then width
    doubles and the step is redone (width adapts to about twice the largest k(x) seen).
    """

    has_encoder_bias = False

    def __init__(self, cfg, d_in):
        super().__init__(cfg, d_in)
        self.register_buffer("width", torch.tensor(min(cfg.latents, 64)))

    def encode_sparse(self, z: torch.Tensor, ctx: LossContext) -> SparseCode:
        dec_norms = self.W_dec.detach().norm(dim=1)
        latents = self.cfg.latents
        while True:
            width = int(self.width)
            candidates, indices = self.kernels.topk_encode(z, self.W_enc, None, width)
            values, k_rows = topafa_select(candidates, indices, dec_norms,
                                           z.detach().norm(dim=1))
            if width >= latents or not bool((k_rows >= width).any()):
                break
            self.width.fill_(min(latents, 2 * width))
        largest = int(k_rows.max()) if k_rows.numel() else 1
        self.width.fill_(min(latents, max(64, _next_pow2(2 * largest))))
        return SparseCode(values, indices, stats={"k_max": float(largest)})

    def extra_terms(self, x: torch.Tensor, code: SparseCode, ctx: LossContext
                    ) -> dict[str, torch.Tensor]:
        f_norm = code.values.pow(2).sum(dim=1).clamp_min(1e-30).sqrt()
        gap = (f_norm - x.norm(dim=1)).pow(2).sum()
        return {"afa": self.cfg.afa_lambda * self.d_in * gap / ctx.variance}

    def export(self, normalize_activations: str, metadata: dict[str, Any]) -> SAE:
        return build_sae_lens(TopAFASAE, TopAFASAEConfig, self.d_in, self.cfg.latents,
                              self.sae_lens_state(), normalize_activations, metadata,
                              afa_lambda=float(self.cfg.afa_lambda))


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()
