"""MoE-X: a mixture-of-experts MLP that is one wide, sparsely activated MLP (Yang et al. 2025).

The layer (`MoEMLP`) replaces `block.mlp` of a TransformerLens `HookedTransformer`, so hooks,
`run_with_cache`, the activation store, SAE training and probes work on it unchanged.

Math (x in R^d is one token's normalized residual; M experts of D hidden units each)::

    expert j:   h_j = act(x W_in[j] + b_in[j])          W_in [M, d, D], b_in [M, D], h_j in R^D
                y_j = h_j W_out[j]                        W_out [M, D, d]
    routing:    w = score(x) in R^M;  S = TopK(w, k);  g = gates(w, S) (zero outside S)
    output:     y = sum_{j in S} g_j y_j + b_out          b_out [d] (shared)

which is exactly the wide MLP  y = z W_out.view(M*D, d) + b_out  with the wide sparse hidden
vector  z = concat_j(g_j h_j) in R^{M*D}  (zero blocks for unselected experts): "a large MLP with
sparse activations". `hook_post` carries z [batch, pos, M*D] (the same name as a dense MLP's
hidden, so analyses read dense and MoE hidden units alike).

Sparsity-aware routing (router="sparsity", the MoE-X router): treat the D rows of expert j's
encoder as draws of a Gaussian per input coordinate c,
    mu_j[c] = mean_i W_in[j][c, i],   var_j[c] = mean_i (W_in[j][c, i] - mu_j[c])^2,
and the biases likewise (bias mean bm_j, variance bv_j). A hidden pre-activation of expert j on
x then has mean m_j = mu_j . x + bm_j and variance s_j^2 = var_j . (x * x) + bv_j, so
P(h_j,i > 0) = Phi(m_j / s_j) and the score
    w_j = -erf(m_j / (sqrt(2) s_j)) = 1 - 2 P(h_j,i > 0)  in [-1, 1]   (higher = sparser)
costs O(M d) per token without evaluating any expert. Gates: softmax over the selected scores.
Gradients reach the expert weights through mu / var, pushing selected experts to be sparse.

Plain routing (router="softmax", Switch / top-k MoE): logits w = x W_router [d, M],
p = softmax(w) over all experts, gates g_j = p_j for j in S (Switch keeps the unnormalized
probability so the router learns from the LM loss even with k = 1).

Load balancing (Switch Transformer): f_j = share of the N*k (token, slot) assignments that go to
expert j (no gradient), P_j = mean over tokens of softmax(w)_j; loss = coef * M * sum_j f_j P_j
(1 * coef when balanced). Under torch.distributed f_j is summed over ranks (see
`load_balance_loss`).

Variants (same machinery, `MoESpec.for_variant`):
    moex       sparsity router + ReLU experts (MoE-X)
    switch     softmax router + GELU experts (Switch / top-k MoE baseline)
    moe_relu   softmax router + ReLU experts (ablation: ReLU experts only)
    moex_gelu  sparsity router + GELU experts (ablation: the router only)
Dense GELU / ReLU baselines are ordinary TransformerLens MLPs.

Compute: token-slot pairs are sorted by expert and each expert runs one matmul over its tokens
(a loop over the M experts, never over tokens). When a hook is attached to `hook_post` the output
is computed from the (possibly edited) wide hidden vector instead, so hooks that patch hidden
units change the output as they should.

Upcycling (`upcycle_dense`): every expert starts as a copy of a trained dense MLP of width D
(plus optional Gaussian noise); the gates sum to 1, so with noise 0 the MoE model computes the
dense model's function exactly at step 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.hook_points import HookPoint

from workbench.errors import InvalidInputError
from workbench.models.architectures import (
    Architecture,
    quiet_hooked_transformer,
    register_architecture,
)

ARCHITECTURE = "moex"
ROUTERS = ("sparsity", "softmax")
EXPERT_ACTS = ("relu", "gelu")
VARIANTS: dict[str, tuple[str, str]] = {  # name -> (router, expert activation)
    "moex": ("sparsity", "relu"),
    "switch": ("softmax", "gelu"),
    "moe_relu": ("softmax", "relu"),
    "moex_gelu": ("sparsity", "gelu"),
}
DENSE_VARIANTS = {"dense_gelu": "gelu", "dense_relu": "relu"}
_PROVENANCE_KEYS = ("upcycled_from", "upcycle_noise", "variant")  # recorded, not architectural
_EPS = 1e-6


@dataclass(frozen=True)
class MoESpec:
    """The MoE layer of every block: n_experts experts of d_expert hidden units, top-k routed.

    Active MLP width per token is k * d_expert (equal active parameters to a dense MLP of that
    width); total hidden width n_experts * d_expert.
    """

    n_experts: int = 8
    k: int = 2
    d_expert: int = 256
    router: str = "sparsity"
    expert_act: str = "relu"
    balance_coef: float = 0.01

    def __post_init__(self) -> None:
        for label in ("n_experts", "k", "d_expert"):
            value = getattr(self, label)
            if not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"MoE {label} must be a positive integer, got {value!r}")
        if self.k > self.n_experts:
            raise InvalidInputError(
                f"MoE top-k k={self.k} exceeds the {self.n_experts} experts; choose k <= "
                f"n_experts (e.g. k=2 of 8)"
            )
        if self.router not in ROUTERS:
            raise InvalidInputError(f"unknown MoE router {self.router!r}; choose one of {ROUTERS}")
        if self.expert_act not in EXPERT_ACTS:
            raise InvalidInputError(
                f"unknown expert activation {self.expert_act!r}; choose one of {EXPERT_ACTS}")
        if not (self.balance_coef >= 0 and math.isfinite(self.balance_coef)):
            raise InvalidInputError(f"balance_coef must be >= 0, got {self.balance_coef}")

    @property
    def d_hidden(self) -> int:
        """Width of the wide sparse hidden vector (n_experts * d_expert)."""
        return self.n_experts * self.d_expert

    @classmethod
    def for_variant(cls, variant: str, **kwargs: Any) -> MoESpec:
        """The spec of a named variant (see VARIANTS) with the given sizes."""
        if variant not in VARIANTS:
            raise InvalidInputError(
                f"unknown MoE variant {variant!r}; choose one of {sorted(VARIANTS)} (dense "
                f"baselines: {sorted(DENSE_VARIANTS)})"
            )
        router, act = VARIANTS[variant]
        return cls(router=router, expert_act=act, **kwargs)

    def to_options(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> MoESpec:
        known = {f.name for f in fields(cls)}
        unknown = set(options) - known - set(_PROVENANCE_KEYS)
        if unknown:
            raise InvalidInputError(f"unknown MoE options {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: v for k, v in options.items() if k in known})


def sparsity_scores(x: torch.Tensor, W_in: torch.Tensor, b_in: torch.Tensor) -> torch.Tensor:
    """MoE-X routing scores -erf(m / (sqrt(2) s)) [N, M] of tokens x [N, d].

    W_in [M, d, D], b_in [M, D]; the score is 1 - 2 * (expected firing fraction of the expert).
    """
    mu = W_in.mean(dim=-1)  # [M, d]
    var = W_in.var(dim=-1, unbiased=False)  # [M, d]
    m = x @ mu.T + b_in.mean(dim=-1)  # [N, M]
    s2 = (x * x) @ var.T + b_in.var(dim=-1, unbiased=False)  # [N, M]
    return -torch.erf(m / (math.sqrt(2.0) * torch.sqrt(s2 + _EPS)))


class MoEMLP(nn.Module):
    """Drop-in MLP of a HookedTransformer block: [batch, pos, d_model] -> [batch, pos, d_model].

    Hook points: hook_scores [b, p, M] (router scores or logits), hook_experts [b, p, k] (selected
    expert ids, int64, best first), hook_gates [b, p, k], hook_post [b, p, M*D] (the wide sparse
    hidden vector; computed only when hooked), hook_out [b, p, d_model].
    """

    def __init__(self, cfg: HookedTransformerConfig, spec: MoESpec):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        M, D, d = spec.n_experts, spec.d_expert, cfg.d_model
        self.W_in = nn.Parameter(torch.empty(M, d, D, dtype=cfg.dtype))
        self.b_in = nn.Parameter(torch.zeros(M, D, dtype=cfg.dtype))
        self.W_out = nn.Parameter(torch.empty(M, D, d, dtype=cfg.dtype))
        self.b_out = nn.Parameter(torch.zeros(d, dtype=cfg.dtype))
        if spec.router == "softmax":
            self.W_router = nn.Parameter(torch.zeros(d, M, dtype=cfg.dtype))
        self.act = F.relu if spec.expert_act == "relu" else F.gelu
        self.hook_scores = HookPoint()
        self.hook_experts = HookPoint()
        self.hook_gates = HookPoint()
        self.hook_post = HookPoint()
        self.hook_out = HookPoint()
        self.last_routing: dict[str, torch.Tensor] | None = None  # for load_balance_loss
        self.materialize_hidden = False  # compute via the wide hidden even when not hooked
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 style init (normal with the config's initializer_range), biases zero."""
        std = self.cfg.initializer_range if self.cfg.initializer_range > 0 else 0.02
        for p in (self.W_in, self.W_out):
            p.normal_(0.0, std)
        if hasattr(self, "W_router"):
            self.W_router.normal_(0.0, std)

    # -- routing -----------------------------------------------------------------------------
    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scores [N, M], selected experts [N, k] (int64) and their gates [N, k] for x [N, d]."""
        spec = self.spec
        if spec.router == "sparsity":
            scores = sparsity_scores(x, self.W_in, self.b_in)
            top, experts = scores.topk(spec.k, dim=-1)
            gates = torch.softmax(top, dim=-1)
        else:
            scores = x @ self.W_router
            top, experts = scores.topk(spec.k, dim=-1)
            gates = torch.softmax(scores, dim=-1).gather(-1, experts)
        return scores, experts, gates

    # -- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        shape = x.shape
        xf = x.reshape(-1, shape[-1])  # [N, d]
        N = xf.shape[0]
        scores, experts, gates = self.route(xf)
        scores = self.hook_scores(scores.view(*shape[:-1], spec.n_experts)).reshape(N, -1)
        experts = self.hook_experts(experts.view(*shape[:-1], spec.k)).reshape(N, -1)
        gates = self.hook_gates(gates.view(*shape[:-1], spec.k)).reshape(N, -1)
        if self.training:
            self.last_routing = {"scores": scores, "experts": experts.detach()}

        flat_expert = experts.reshape(-1)  # [N*k]
        order = torch.argsort(flat_expert, stable=True)
        sorted_expert = flat_expert[order]
        token_of = order // spec.k  # token of each sorted slot
        counts = torch.bincount(flat_expert, minlength=spec.n_experts).tolist()
        x_parts = xf.index_select(0, token_of).split(counts)  # per expert: its tokens [n_j, d]
        hidden = torch.cat([self.act(xj @ Wj + bj) for xj, Wj, bj in  # [N*k, D]
                            zip(x_parts, self.W_in.unbind(0), self.b_in.unbind(0))])
        g_sorted = gates.reshape(-1)[order].unsqueeze(-1)  # [N*k, 1]

        if self.materialize_hidden or self.hook_post._forward_hooks:
            wide = x.new_zeros(N, spec.n_experts, spec.d_expert)
            wide = wide.index_put((token_of, sorted_expert), hidden * g_sorted)
            wide = self.hook_post(wide.view(*shape[:-1], spec.d_hidden))
            out = wide.reshape(N, -1) @ self.W_out.reshape(spec.d_hidden, -1) + self.b_out
        else:
            # g_j (h_j W_out[j]) = (g_j h_j) W_out[j]: gate the narrower output
            y_sorted = torch.cat([hj @ Wj for hj, Wj in  # [N*k, d]
                                  zip(hidden.split(counts), self.W_out.unbind(0))]) * g_sorted
            out = y_sorted.new_zeros(N, shape[-1]).index_add(0, token_of, y_sorted) + self.b_out
        return self.hook_out(out.view(shape))

    # -- analysis helpers --------------------------------------------------------------------
    @torch.no_grad()
    def expert_firing(self, x: torch.Tensor) -> torch.Tensor:
        """True firing fraction [N, M] of every expert's hidden units on x [N, d] (all experts
        computed densely; for evaluating the router, not for the forward pass)."""
        pre = torch.einsum("nd,mdh->nmh", x, self.W_in) + self.b_in  # [N, M, D]
        return (pre > 0).float().mean(dim=-1)


# -- model construction ----------------------------------------------------------------------
def moe_layers(model: HookedTransformer) -> list[MoEMLP]:
    return [block.mlp for block in model.blocks if isinstance(block.mlp, MoEMLP)]


def install_moe(model: HookedTransformer, spec: MoESpec) -> HookedTransformer:
    """Replace every block's MLP by a fresh MoEMLP and re-register the hook points."""
    if model.cfg.attn_only:
        raise InvalidInputError("an attention-only model has no MLPs to replace with MoE layers")
    if model.cfg.gated_mlp:
        raise InvalidInputError("MoE layers replace ordinary MLPs; build the config with "
                                "gated=False")
    for block in model.blocks:
        block.mlp = MoEMLP(model.cfg, spec).to(next(model.parameters()).device)
    model.setup()  # rebuild TransformerLens' hook_dict / mod_dict with the new hook points
    return model


def build_moex(cfg: HookedTransformerConfig, options: dict[str, Any]) -> HookedTransformer:
    """A HookedTransformer of `cfg` whose MLPs are MoE layers of `MoESpec(**options)`."""
    spec = MoESpec.from_options(options)
    return install_moe(quiet_hooked_transformer(cfg), spec)


def load_balance_loss(model: HookedTransformer) -> torch.Tensor | None:
    """Switch load-balancing loss summed over the MoE layers of the last training forward.

    Per layer: coef * M * sum_j f_j P_j. Under torch.distributed the assignment counts (f) are
    summed over ranks, so each rank's loss is its local-mean share of the global-batch loss (the
    trainer averages the ranks' gradients, as for the LM loss).
    """
    total = None
    for layer in moe_layers(model):
        routing, layer.last_routing = layer.last_routing, None
        if routing is None or layer.spec.balance_coef == 0:
            continue
        M = layer.spec.n_experts
        counts = torch.bincount(routing["experts"].reshape(-1), minlength=M).float()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(counts)
        f = counts / counts.sum()
        P = torch.softmax(routing["scores"].float(), dim=-1).mean(dim=0)
        term = layer.spec.balance_coef * M * (f * P).sum()
        total = term if total is None else total + term
    return total


@torch.no_grad()
def upcycle_dense(dense: HookedTransformer, spec: MoESpec, noise: float = 0.0,
                  seed: int = 0) -> HookedTransformer:
    """A MoE model whose experts are copies of `dense`'s MLPs (+ noise * std(W) Gaussian noise).

    Needs spec.d_expert == dense d_mlp and an ungated dense MLP. All other weights are copied.
    With noise=0 the result computes exactly the dense model's function (the gates sum to 1).
    """
    cfg = dense.cfg
    if cfg.gated_mlp or cfg.attn_only:
        raise InvalidInputError("upcycling needs a dense model with ordinary (ungated) MLPs")
    if spec.d_expert != cfg.d_mlp:
        raise InvalidInputError(
            f"upcycling copies the dense MLP into every expert: d_expert ({spec.d_expert}) must "
            f"equal the dense model's d_mlp ({cfg.d_mlp})"
        )
    if noise < 0:
        raise InvalidInputError(f"upcycle noise must be >= 0, got {noise}")
    moe = build_moex(cfg, spec.to_options())
    state = {k: v for k, v in dense.state_dict().items() if ".mlp." not in k}
    moe.load_state_dict(state, strict=False)  # everything but the MLPs
    gen = torch.Generator().manual_seed(seed)
    for block_dense, layer in zip(dense.blocks, moe_layers(moe)):
        mlp = block_dense.mlp
        for name, src in (("W_in", mlp.W_in), ("b_in", mlp.b_in), ("W_out", mlp.W_out)):
            dst = getattr(layer, name)
            copies = src.detach().cpu().unsqueeze(0).expand_as(dst).clone()
            if noise > 0 and name != "b_in":
                copies += noise * src.detach().std().cpu() * torch.randn(copies.shape,
                                                                         generator=gen)
            dst.copy_(copies)
        layer.b_out.copy_(mlp.b_out)
    if dense.tokenizer is not None:
        moe.set_tokenizer(dense.tokenizer)
    return moe


register_architecture(Architecture(ARCHITECTURE, build=build_moex, aux_loss=load_balance_loss))
