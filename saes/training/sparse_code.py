"""The trainable SAEs and their step: TopK, BatchTopK, top-AFA (codes of a few latents per token).

Parameters are kept in the kernels' layout (sae-lens stores W_enc transposed):

    W_enc [encoder rows, d_in]    b_enc [encoder rows] (absent for top-AFA)
    W_dec [latents, d_in]         b_dec [d_in]

Encoder rows = latents, except for the structured SAE (one logit per group value plus null).
Weights start as W_dec = random unit rows and W_enc = W_dec (i.e. W_enc = W_dec^T in sae-lens
layout); b_dec from the data (`init_from_data`).

One step of a sparse-code SAE (`SparseCodeSAE.step`), on normalized rows x [n, d_in]:

    z = x - b_dec
    code = encode(z)                          values, indices [n, K] (zeros allowed), and the
                                              pre-activations z W_enc^T + b_enc [n, L] where the
                                              backend computed them (cpu), else None
    x_hat = sparse_decode(values, indices, W_dec, b_dec)
    loss = recon + extra terms (top-AFA) + alpha_aux * AuxK (losses.py)
    AuxK's code: the top k_aux among the dead latents, selected from code.preactivations when
    present (no second matmul), else by encoding with the dead latents' rows

Encode and decode are sparse_ops' `topk_encode` / `sparse_decode` (backend `cfg.kernels`:
Triton on CUDA, the native CPU kernels on CPU); their backward touches only the selected
latents, so no [n x latents] matrix is ever differentiated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from sae_lens import SAE, JumpReLUSAE, JumpReLUSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata
from torch import nn

import sparse_ops
from saes.topafa import TopAFASAE, TopAFASAEConfig
from saes.training.distributed import Reducer
from saes.training.losses import LossContext, StepResult, auxk_loss
from workbench.errors import InvalidInputError

if TYPE_CHECKING:
    from saes.training.config import ResolvedSAETrainConfig


# ----------------------------------------------------------------------------------------------
# initialization


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


B_DEC_INITS = {
    "geometric_median": geometric_median,
    "mean": lambda sample: sample.mean(0),
    "zeros": lambda sample: torch.zeros(sample.shape[1], dtype=sample.dtype),
}
"""How b_dec starts, from a sample of (normalized) activations [n, d] -> [d]."""


# ----------------------------------------------------------------------------------------------
# the base: parameters, decoder-norm constraint, sae-lens import and export


class TrainableSAE(nn.Module):
    """Base class of every trainable SAE. `cfg` is resolved; `backend` is the sparse_ops
    backend choice of its encode/decode (`cfg.kernels`, checked against the device)."""

    unit_norm_decoder: ClassVar[bool] = True
    has_encoder_bias: ClassVar[bool] = True
    decoder_init_norm: ClassVar[float] = 1.0

    def __init__(self, cfg: ResolvedSAETrainConfig, d_in: int, backend: str = "auto"):
        super().__init__()
        self.cfg = cfg
        self.d_in = d_in
        self.backend = backend
        generator = torch.Generator().manual_seed(cfg.seed)
        w_dec = random_unit_rows(cfg.latents, d_in, generator) * self.decoder_init_norm
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(self.initial_encoder(w_dec))
        self.b_enc = (nn.Parameter(torch.zeros(self.W_enc.shape[0]))
                      if self.has_encoder_bias else None)
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    # -- initialization ------------------------------------------------------------------------
    def initial_encoder(self, w_dec: torch.Tensor) -> torch.Tensor:
        """W_enc at init from W_dec [latents, d_in]: the transpose in sae-lens terms."""
        return w_dec.clone()

    @torch.no_grad()
    def init_from_data(self, sample: torch.Tensor) -> None:
        """Data-dependent init from a (normalized) sample [n, d_in]: b_dec."""
        if self.cfg.b_dec_init not in B_DEC_INITS:
            raise InvalidInputError(f"unknown b_dec init {self.cfg.b_dec_init!r}; use one of "
                                    f"{', '.join(B_DEC_INITS)}")
        self.b_dec.copy_(B_DEC_INITS[self.cfg.b_dec_init](sample).to(self.b_dec))

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


# ----------------------------------------------------------------------------------------------
# the sparse-code step


@dataclass
class SparseCode:
    """values [n, K] (>= 0, zeros = inactive) at latents indices [n, K] int64.

    offsets, lengths: [n] int64 each for a ragged code stored as flat bags (top-AFA): values
    and indices are then [nnz], token t's lengths[t] pairs starting at offsets[t]; else None.
    preactivations: what the encode computed densely without autograd and AuxK reuses (the
    [n, L] pre-activations on the cpu backend, the structured SAE's group logits), or None;
    scale: AuxK's weight for an aux code; stats: arch-specific numbers for the log.
    """

    values: torch.Tensor
    indices: torch.Tensor
    preactivations: Any = None
    lengths: torch.Tensor | None = None
    scale: float = 1.0
    stats: dict[str, float] = field(default_factory=dict)
    offsets: torch.Tensor | None = None


class SparseCodeSAE(TrainableSAE):
    """Base of the sparse-code SAEs: the shared step and latent-level AuxK."""

    def encode_sparse(self, z: torch.Tensor, ctx: LossContext) -> SparseCode:
        raise NotImplementedError

    def topk(self, z: torch.Tensor, k: int) -> SparseCode:
        """The k largest ReLU pre-activations of each row of z (unsorted), keeping the dense
        pre-activations for AuxK where the backend computes them."""
        values, indices, pre = sparse_ops.topk_encode(
            z, self.W_enc, self.b_enc, k, self.backend, sort=False, keep_preactivations=True)
        return SparseCode(values, indices, pre)

    def extra_terms(self, x: torch.Tensor, code: SparseCode, ctx: LossContext
                    ) -> dict[str, torch.Tensor]:
        return {}

    def unit_of(self, indices: torch.Tensor) -> torch.Tensor:
        """Latent ids -> the units tracked for dead revival (latents themselves here)."""
        return indices

    def fired_units(self, code: SparseCode) -> tuple[torch.Tensor, torch.Tensor]:
        """(how often each unit fired in the batch [n_units] int64, active pairs [])."""
        ids = self.unit_of(code.indices.reshape(-1))
        if code.offsets is not None:  # flat bags: every pair is active
            return torch.bincount(ids, minlength=self.n_units), code.lengths.sum()
        active = code.values.detach().reshape(-1) > 0
        # weighted count over the whole rectangle: no boolean gather of the active pairs
        fired = torch.bincount(ids, weights=active.to(torch.float32), minlength=self.n_units)
        return fired.round().to(torch.int64), active.sum()

    def aux_code(self, z: torch.Tensor, code: SparseCode, dead: torch.Tensor) -> SparseCode:
        """Top-k_aux pre-activations among the dead latents of each token."""
        ids = dead.nonzero().squeeze(1)
        k_aux = self.cfg.k_aux
        values, indices = sparse_ops.topk_encode_among(
            z, self.W_enc, self.b_enc, min(k_aux, ids.numel()), ids, self.backend,
            preactivations=code.preactivations)
        return SparseCode(values, indices, scale=min(ids.numel() / k_aux, 1.0))

    def decode(self, code: SparseCode) -> torch.Tensor:
        return sparse_ops.sparse_decode(code.values, code.indices, self.W_dec, self.b_dec,
                                        self.backend, offsets=code.offsets)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x_hat for (normalized) rows x [n, d_in] by this rank alone, without training effects."""
        was_training = self.training
        self.eval()
        try:
            ctx = LossContext(torch.ones((), device=x.device), x.shape[0], None, Reducer(local=True))
            return self.decode(self.encode_sparse(x - self.b_dec, ctx))
        finally:
            self.train(was_training)

    def step(self, x: torch.Tensor, ctx: LossContext) -> StepResult:
        z = x - self.b_dec
        code = self.encode_sparse(z, ctx)
        x_hat = self.decode(code)
        sse = F.mse_loss(x_hat, x, reduction="sum")  # one fused pass forward and backward
        terms = {"recon": sse / ctx.variance, **self.extra_terms(x, code, ctx)}
        if ctx.dead is not None and bool(ctx.dead.any()):
            aux = self.aux_code(z, code, ctx.dead)
            e_hat = sparse_ops.sparse_decode(aux.values, aux.indices, self.W_dec, None,
                                             self.backend)
            terms["auxk"] = self.cfg.aux_alpha * auxk_loss(e_hat, x - x_hat.detach(), aux.scale,
                                                           ctx)
        fired, n_active = self.fired_units(code)
        return StepResult(
            loss=sum(terms.values()), fired=fired, sse=sse.detach(), active=n_active,
            terms={k: v.detach() for k, v in terms.items()}, stats=code.stats,
        )


# ----------------------------------------------------------------------------------------------
# the architectures


class TopKTrainable(SparseCodeSAE):
    """f = ReLU(TopK_k(z W_enc^T + b_enc)); saved as sae_lens.TopKSAE."""

    def encode_sparse(self, z: torch.Tensor, ctx: LossContext) -> SparseCode:
        return self.topk(z, self.cfg.k)

    def export(self, normalize_activations: str, metadata: dict[str, Any]) -> SAE:
        return build_sae_lens(TopKSAE, TopKSAEConfig, self.d_in, self.cfg.latents,
                              self.sae_lens_state(), normalize_activations, metadata,
                              k=self.cfg.k, rescale_acts_by_decoder_norm=False)


class BatchTopKTrainable(SparseCodeSAE):
    """Keep the k*B largest ReLU pre-activations of the whole (global) batch of B tokens.

    Exact without sorting all B * latents values: each row contributes its top `width`
    candidates (width = 4k, doubled on demand); the batch threshold is the (k*B)-th largest
    candidate, which is the true one unless some row kept all of its candidates, in which case
    width grows and the step is redone. The inference threshold is an EMA of the batch threshold
    (the smallest kept value), recalibrated on the last batch with the final weights
    (`finalize`); the SAE is saved as sae_lens.JumpReLUSAE with that threshold.
    """

    def __init__(self, cfg: ResolvedSAETrainConfig, d_in: int, backend: str = "auto"):
        super().__init__(cfg, d_in, backend)
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float64))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.int64))
        self.register_buffer("width", torch.tensor(min(cfg.latents, 4 * cfg.k)))

    def encode_sparse(self, z: torch.Tensor, ctx: LossContext) -> SparseCode:
        n_keep = self.cfg.k * ctx.n_global
        while True:
            width = int(self.width)
            code = self.topk(z, width)
            with torch.no_grad():
                values = code.values.detach()
                pool = ctx.reducer.cat(values.reshape(-1))
                threshold = torch.kthvalue(pool, max(1, pool.numel() - n_keep + 1)).values
                keep = (values >= threshold) & (values > 0)
                saturated = width < self.cfg.latents and bool(keep.all(dim=1).any())
            if not ctx.reducer.any(saturated, z.device):
                break
            self.width.fill_(min(self.cfg.latents, 2 * width))
        self._update_threshold(float(threshold))
        return SparseCode(code.values * keep, code.indices, code.preactivations,
                          stats={"threshold": float(self.threshold)})

    @torch.no_grad()
    def finalize(self, x: torch.Tensor) -> None:
        """Set the inference threshold from the final weights: the (k*n)-th largest ReLU
        pre-activation of a training batch (the EMA lags behind weights that still move)."""
        pre = torch.relu(torch.addmm(self.b_enc, x - self.b_dec, self.W_enc.T)).flatten()
        n_keep = min(self.cfg.k * x.shape[0], pre.numel())
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
    """top-AFA: per-token k(x) by norm matching, plus the AFA loss (see saes.topafa).

    sparse_ops.topafa_encode (no encoder bias) returns each token's kept latents as flat bags
    (no padding), so decode and backward cost each token its own k(x). On the cpu backend the
    cut is exact over the whole dictionary; elsewhere it starts from the top `width` candidates (twice
    the last batch's 99th-percentile k(x)) and redoes only the rows that keep all of them.
    """

    has_encoder_bias = False

    def __init__(self, cfg: ResolvedSAETrainConfig, d_in: int, backend: str = "auto"):
        super().__init__(cfg, d_in, backend)
        self.register_buffer("width", torch.tensor(min(cfg.latents, 64)))

    def encode_sparse(self, z: torch.Tensor, ctx: LossContext) -> SparseCode:
        dec_norms = self.W_dec.detach().norm(dim=1)
        code = sparse_ops.topafa_encode(z, self.W_enc, None, dec_norms, self.backend,
                                        width=int(self.width))
        largest = int(code.k.max()) if code.k.numel() else 1
        # candidates for the torch/triton path: twice the 99th percentile of k(x), so an
        # outlier row costs a redo of itself, not a wider set for every token
        high = float(torch.quantile(code.k.float(), 0.99)) if code.k.numel() else 1.0
        self.width.fill_(min(self.cfg.latents, max(64, _next_pow2(int(2 * high)))))
        return SparseCode(code.values, code.indices, code.preactivations, code.lengths,
                          stats={"k_max": float(largest)}, offsets=code.offsets)

    def extra_terms(self, x: torch.Tensor, code: SparseCode, ctx: LossContext
                    ) -> dict[str, torch.Tensor]:
        f_sq = torch.segment_reduce(code.values.pow(2), "sum", lengths=code.lengths)
        f_norm = f_sq.clamp_min(1e-30).sqrt()
        gap = (f_norm - x.norm(dim=1)).pow(2).sum()
        return {"afa": self.cfg.afa_lambda * self.d_in * gap / ctx.variance}

    def export(self, normalize_activations: str, metadata: dict[str, Any]) -> SAE:
        return build_sae_lens(TopAFASAE, TopAFASAEConfig, self.d_in, self.cfg.latents,
                              self.sae_lens_state(), normalize_activations, metadata,
                              afa_lambda=float(self.cfg.afa_lambda))


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()
