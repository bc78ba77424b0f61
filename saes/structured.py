"""Structured (grouped-posterior) SAE as a sae-lens `SAE` ("structured").

After "I Predict Therefore I Am" (arXiv 2503.08980) and Concept Component Analysis (arXiv
2601.20420); this project's formulation, in which each group's values compete through a
softmax with a "null" value and a shared magnitude scales the winners:

    G groups, each a discrete concept with m values plus a "null" value (concept absent)
    u = (x - b_dec) W_enc + b_enc                  [..., G*(m+1)], per group [m values, null]
    p_g = softmax(u_g)                              values of a group compete
    r_g = 1 - p_g,null                              group activity; the k_G most active groups
                                                    are kept, the others set to null
    s_g = softplus((x - b_dec) W_mag + b_mag)       [..., G] magnitude head
    f_{g,v} = s_g p_{g,v} for the m non-null values of kept groups, else 0   [..., G*m = d_sae]
    x_hat = f W_dec + b_dec

Groups are ranked by the logit of r_g, logsumexp(u_g[:m]) - u_g[m], which orders them exactly as
r_g does without rounding to 1.0 when p_null is tiny. Weights in sae-lens layout: W_enc
[d_in, G*(m+1)], b_enc [G*(m+1)], W_mag [d_in, G], b_mag [G], W_dec [G*m, d_in], b_dec [d_in].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sae_lens import SAE, SAEConfig
from torch import nn
from typing_extensions import override

from saes.linear_decoder import LinearDecoderMixin

ARCHITECTURE = "structured"


@dataclass
class StructuredSAEConfig(SAEConfig):
    """sae-lens config of a structured SAE: d_sae must equal n_groups * group_size."""

    n_groups: int = 1
    group_size: int = 1
    k_groups: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_groups * self.group_size != self.d_sae:
            raise ValueError(
                f"structured SAE: d_sae ({self.d_sae}) must equal n_groups * group_size "
                f"({self.n_groups} * {self.group_size})"
            )
        if not 1 <= self.k_groups <= self.n_groups:
            raise ValueError(
                f"structured SAE: k_groups ({self.k_groups}) must be between 1 and n_groups "
                f"({self.n_groups})"
            )

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


def group_activity(logits: torch.Tensor) -> torch.Tensor:
    """Group logits [..., G, m+1] (null last) -> activity logit [..., G], monotone in 1 - p_null."""
    return torch.logsumexp(logits[..., :-1], dim=-1) - logits[..., -1]


def top_groups(activity: torch.Tensor, k_groups: int) -> torch.Tensor:
    """Activity [..., G] -> indices [..., k_groups] of the most active groups."""
    return torch.topk(activity, k_groups, dim=-1, sorted=False).indices


class StructuredSAE(LinearDecoderMixin, SAE[StructuredSAEConfig]):
    """Inference structured SAE (see module doc); encode returns f [..., G*m]."""

    b_enc: nn.Parameter
    W_mag: nn.Parameter
    b_mag: nn.Parameter

    @override
    def initialize_weights(self) -> None:
        cfg = self.cfg
        n_logits = cfg.n_groups * (cfg.group_size + 1)
        kw = {"dtype": self.dtype, "device": self.device}
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, **kw))
        w_dec = torch.empty(cfg.d_sae, cfg.d_in, **kw)
        nn.init.kaiming_uniform_(w_dec)
        self.W_dec = nn.Parameter(w_dec)
        w_enc = torch.zeros(cfg.d_in, n_logits, **kw)
        value_cols = torch.ones(cfg.n_groups, cfg.group_size + 1, dtype=torch.bool)
        value_cols[:, -1] = False
        if w_enc.device.type != "meta":
            w_enc[:, value_cols.flatten().to(w_enc.device)] = w_dec.T
        self.W_enc = nn.Parameter(w_enc)
        self.b_enc = nn.Parameter(torch.zeros(n_logits, **kw))
        self.W_mag = nn.Parameter(torch.zeros(cfg.d_in, cfg.n_groups, **kw))
        self.b_mag = nn.Parameter(torch.zeros(cfg.n_groups, **kw))

    @override
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., d_in] -> f [..., G*m] with at most k_groups groups nonzero."""
        cfg = self.cfg
        sae_in = self.process_sae_in(x)
        logits = self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc)
        grouped = logits.unflatten(-1, (cfg.n_groups, cfg.group_size + 1))
        posteriors = torch.softmax(grouped, dim=-1)[..., :-1]
        keep = torch.zeros(grouped.shape[:-1], dtype=posteriors.dtype, device=posteriors.device)
        keep.scatter_(-1, top_groups(group_activity(grouped), cfg.k_groups), 1.0)
        magnitude = F.softplus(sae_in @ self.W_mag + self.b_mag) * keep
        feature_acts = (posteriors * magnitude.unsqueeze(-1)).flatten(-2)
        return self.hook_sae_acts_post(feature_acts)

    @override
    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        """Fold a dataset-wise input scale into the weights (the magnitude head reads x too)."""
        self.W_mag.data *= scaling_factor
        super().fold_activation_norm_scaling_factor(scaling_factor)

    @override
    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        raise NotImplementedError(
            "a structured SAE shares one magnitude per group, so per-latent decoder norms cannot "
            "be folded into the encoder (the trainer keeps them at 1 already)"
        )

    def group_posteriors(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., d_in] -> p [..., G, m+1]: each group's posterior over its values (null last).

        For probing a concept with the group's posterior alone (no top-k_G cut).
        """
        sae_in = self.process_sae_in(x)
        logits = sae_in @ self.W_enc + self.b_enc
        return torch.softmax(logits.unflatten(-1, (self.cfg.n_groups, self.cfg.group_size + 1)), -1)
