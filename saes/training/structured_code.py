"""Training the structured (grouped-posterior) SAE (saes/structured.py has the inference model).

Per step: the dense group logits u = z W_enc^T + b_enc [n, G*(m+1)] and magnitude
pre-activations [n, G] are computed without autograd to rank the groups; the kept groups'
logits and magnitudes are then re-read through `selected_linear`, so gradients touch only the
kept groups' encoder rows:

    p = softmax(u_g) over the m values + null;  s_g = softplus(w_g . z + c_g)
    f_{g,v} = s_g p_{g,v} for the k_G kept groups -> sparse code [n, k_G * m]

Dead-unit revival works on groups: for groups not kept for the dead window, the most active
dead groups of each token are decoded (AuxK-style) to fit the residual.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from sae_lens import SAE
from torch import nn

from saes.structured import StructuredSAE, StructuredSAEConfig, group_activity, top_groups
from saes.training.losses import LossContext
from saes.training.sparse_code import SparseCode, SparseCodeSAE, build_sae_lens
from sparse_ops.decode import gather_sum, segment_sum
from sparse_ops.dispatch import resolve_backend


class _SelectedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W, b, idx, selected, backend):  # type: ignore[override]
        ctx.backend = backend
        ctx.has_bias = b is not None
        ctx.save_for_backward(x, W, idx)
        return selected.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, W, idx = ctx.saved_tensors
        g = grad.contiguous()
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = gather_sum(g, idx, W, None, ctx.backend)
        want_b = ctx.has_bias and ctx.needs_input_grad[2]
        if ctx.needs_input_grad[1] or want_b:
            grad_W, grad_b = segment_sum(g, idx, x, W.shape[0], ctx.backend, W.dtype, want_b)
            grad_b = grad_b.to(W.dtype) if want_b else None
        return grad_x, grad_W, grad_b, None, None, None


def selected_linear(
    x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, idx: torch.Tensor,
    dense_pre: torch.Tensor, backend: str,
) -> torch.Tensor:
    """Entries idx [N, K] of dense_pre = x W^T + b [N, L] (computed without grad) -> [N, K].

    x [N, d], W [L, d], b [L] or None. Differentiable w.r.t. x, W and b through the chosen
    entries only: the backward costs O(N * K * d) (sparse_ops' gather_sum / segment_sum on
    `backend`) instead of three dense [N, L] matmuls.
    """
    chosen = resolve_backend(backend, x.device)
    return _SelectedLinear.apply(x, W, b, idx, dense_pre.gather(1, idx), chosen)


class StructuredTrainable(SparseCodeSAE):
    """Structured SAE: G groups of m values (+ null), k_G groups kept per token."""

    def __init__(self, cfg, d_in: int, backend: str = "auto"):
        self.n_groups, self.group_size, self.k_groups = cfg.groups, cfg.group_size, cfg.k_groups
        super().__init__(cfg, d_in, backend)
        self.W_mag = nn.Parameter(torch.zeros(self.n_groups, d_in))
        self.b_mag = nn.Parameter(torch.zeros(self.n_groups))

    def initial_encoder(self, w_dec: torch.Tensor) -> torch.Tensor:
        """Value rows = decoder rows, null rows = 0: [G*(m+1), d_in]."""
        G, m = self.n_groups, self.group_size
        w = torch.zeros(G, m + 1, w_dec.shape[1])
        w[:, :m] = w_dec.view(G, m, -1)
        return w.reshape(G * (m + 1), -1)

    @property
    def n_units(self) -> int:
        return self.n_groups

    def unit_of(self, indices: torch.Tensor) -> torch.Tensor:
        return indices // self.group_size

    @torch.no_grad()
    def init_from_data(self, sample: torch.Tensor) -> None:
        """b_dec as usual; magnitudes start at the typical norm share of one kept group."""
        super().init_from_data(sample)
        share = float((sample - self.b_dec).norm(dim=1).mean()) / math.sqrt(self.k_groups)
        self.b_mag.fill_(share + math.log(-math.expm1(-share)))  # softplus^-1(share)

    def load_extra_state_from_sae_lens(self, state, scale):
        self.W_mag.copy_(state["W_mag"].T / scale)
        self.b_mag.copy_(state["b_mag"])

    def fold_decoder_norms_into_encoder(self, norms):
        """Per-value norms cannot move into a shared group magnitude: rows are renormalized
        only (a small change of the function when an imported SAE's rows are not unit)."""

    def _dense(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            logits = torch.addmm(self.b_enc, z, self.W_enc.T)
            magnitude = torch.addmm(self.b_mag, z, self.W_mag.T)
        return logits, magnitude

    def group_code(self, z, logits, magnitude, groups: torch.Tensor) -> SparseCode:
        """Sparse code of the groups [n, J] (differentiable through their rows only)."""
        n, J = groups.shape
        m = self.group_size
        rows = (groups.unsqueeze(-1) * (m + 1) + torch.arange(m + 1, device=z.device)).reshape(n, -1)
        u = selected_linear(z, self.W_enc, self.b_enc, rows, logits, self.backend).view(n, J, m + 1)
        posteriors = torch.softmax(u, dim=-1)[..., :m]
        scale = F.softplus(selected_linear(z, self.W_mag, self.b_mag, groups, magnitude,
                                           self.backend))
        values = (posteriors * scale.unsqueeze(-1)).reshape(n, J * m)
        indices = (groups.unsqueeze(-1) * m + torch.arange(m, device=z.device)).reshape(n, J * m)
        return SparseCode(values, indices)

    def encode_sparse(self, z: torch.Tensor, ctx: LossContext) -> SparseCode:
        logits, magnitude = self._dense(z)
        activity = group_activity(logits.view(z.shape[0], self.n_groups, self.group_size + 1))
        code = self.group_code(z, logits, magnitude, top_groups(activity, self.k_groups))
        code.preactivations = (logits, magnitude, activity)
        return code

    def aux_code(self, z: torch.Tensor, code: SparseCode, dead: torch.Tensor) -> SparseCode:
        logits, magnitude, activity = code.preactivations
        ids = dead.nonzero().squeeze(1)
        k_aux_groups = max(1, self.cfg.k_aux // self.group_size)
        top = torch.topk(activity[:, ids], min(k_aux_groups, ids.numel()), dim=1).indices
        aux = self.group_code(z, logits, magnitude, ids[top])
        aux.scale = min(ids.numel() / k_aux_groups, 1.0)
        return aux

    def export(self, normalize_activations: str, metadata: dict[str, Any]) -> SAE:
        state = self.sae_lens_state()
        state["W_mag"] = self.W_mag.detach().T.contiguous()
        state["b_mag"] = self.b_mag.detach().clone()
        return build_sae_lens(StructuredSAE, StructuredSAEConfig, self.d_in, self.cfg.latents,
                              state, normalize_activations, metadata, n_groups=self.n_groups,
                              group_size=self.group_size, k_groups=self.k_groups)
