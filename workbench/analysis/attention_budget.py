"""A live sparse-attention what-if on one text, through TransformerLens' `hook_pattern`.

An attention budget keeps part of every attention row and drops the rest:

- "top_fraction" (value f in (0, 1]): query q keeps the ceil(f * (q + 1)) keys of largest
  probability in its causal row (at least one);
- "block_topk" (value = key blocks kept per query block): the block mask of
  `sparse_ops.topk_block_index` from mean-pooled Q and K (first block and diagonal always kept),
  the "block_topk" method of the stored what-if (`workbench.analysis.attention`), at token level.

The hook on `blocks.L.attn.hook_pattern` [batch, head, q, k] replaces the pattern p by softmax
attention restricted to the kept keys, p' = p * m / (sum_k p * m + 1 - sum_k p) (exact: the
extra term is the mass of an attention sink, zero for plain softmax rows), so the rest of the
forward pass (z = p' v, the output projection, later layers) is TransformerLens' own.

`text_whatif(model, tokens, budget)` runs the text dense and under the budget and returns the
loss per token, the KL divergence of the next-token distributions, top-1 agreement, compute
sparsity (1 - kept cells / causal cells; cells are tokens for "top_fraction" and blocks for
"block_topk", as the stored what-if counts them) and each layer's attention-output error
||z' - z|| / ||z|| (z = p v with the same v in that run), plus the dense and budgeted pattern of
one chosen head for drawing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from workbench.analysis.common import token_loss
from workbench.errors import InvalidInputError

BUDGET_KINDS = ("top_fraction", "block_topk")


@dataclass(frozen=True)
class AttentionBudget:
    """Which part of each attention row is kept (see the module docstring).

    kind: "top_fraction" (value: fraction of the causal row, in (0, 1]) or "block_topk"
    (value: key blocks per query block, >= 1, blocks of `block_size` tokens).
    """

    kind: str
    value: float
    block_size: int = 16

    def validate(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise InvalidInputError(f"unknown attention budget {self.kind!r}; one of "
                                    f"{', '.join(BUDGET_KINDS)}")
        if self.kind == "top_fraction" and not (0 < self.value <= 1):
            raise InvalidInputError(f"the kept fraction must lie in (0, 1], got {self.value}")
        if self.kind == "block_topk" and (self.value < 1 or int(self.value) != self.value):
            raise InvalidInputError(f"the kept key blocks must be a whole number >= 1, got "
                                    f"{self.value}")
        if self.block_size < 1:
            raise InvalidInputError(f"block_size must be >= 1, got {self.block_size}")

    def describe(self) -> str:
        if self.kind == "top_fraction":
            return f"top {self.value:.0%} of each row"
        return f"{int(self.value)} key blocks of {self.block_size} per query block"


def causal_mask(seq: int, device=None) -> torch.Tensor:
    """Bool [seq, seq]: key <= query."""
    return torch.ones(seq, seq, dtype=torch.bool, device=device).tril()


def top_fraction_mask(pattern: torch.Tensor, fraction: float) -> torch.Tensor:
    """Bool [batch, head, q, k]: in row q the ceil(fraction * (q + 1)) most attended keys
    (at least one; ties broken by position), never a key after the query."""
    s = pattern.shape[-1]
    device = pattern.device
    keep = torch.ceil(fraction * torch.arange(1, s + 1, device=device, dtype=torch.float64)
                      - 1e-9).clamp(min=1).long()  # [q]
    causal = causal_mask(s, device)
    scores = pattern.float().masked_fill(~causal, -1.0)  # acausal keys rank last
    order = scores.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(
        -1, order, torch.arange(s, device=device).expand_as(order))
    return (rank < keep[:, None]) & causal


def block_topk_mask(q: torch.Tensor, k: torch.Tensor, block_size: int,
                    keep_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(token mask [batch, head, s, s], block mask [batch, head, n, n]) of
    `sparse_ops.topk_block_index` for q, k [batch, head, s, d] (both causal; first key block
    and the diagonal block kept)."""
    import sparse_ops

    blocks = sparse_ops.topk_block_index(q, k, block_size, keep_blocks)  # [b, h, n, n]
    blocks = blocks & causal_mask(blocks.shape[-1], q.device)
    s = q.shape[2]
    of = torch.arange(s, device=q.device) // block_size
    return blocks[:, :, of][..., of] & causal_mask(s, q.device), blocks


def restrict_pattern(pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax attention restricted to `mask` from its pattern p [batch, head, q, k]:
    p * m / (sum_k p * m + 1 - sum_k p) (1 - sum_k p: an attention sink's share, 0 for plain
    softmax)."""
    kept = pattern * mask
    sink = (1.0 - pattern.sum(-1, keepdim=True)).clamp_min(0)
    return kept / (kept.sum(-1, keepdim=True) + sink).clamp_min(1e-30)


@dataclass
class BudgetRecord:
    """What the budget hooks saw: per layer kept and causal cells, attention-output error sums,
    and the patterns of layer `show_layer` (batch 0, all heads)."""

    show_layer: int | None = None
    kept: dict[int, float] = field(default_factory=dict)
    causal: dict[int, float] = field(default_factory=dict)
    err_num: dict[int, float] = field(default_factory=dict)
    err_den: dict[int, float] = field(default_factory=dict)
    pattern: torch.Tensor | None = None  # [head, s, s] as the forward pass used it
    mask: torch.Tensor | None = None     # [head, s, s] bool, the kept cells

    def layers(self) -> pd.DataFrame:
        rows = [{"layer": l, "compute_sparsity": 1.0 - self.kept[l] / max(1.0, self.causal[l]),
                 "output_error": math.sqrt(self.err_num[l] / self.err_den[l])
                 if self.err_den[l] > 0 else 0.0} for l in sorted(self.kept)]
        return pd.DataFrame(rows, columns=["layer", "compute_sparsity", "output_error"])


def _layer_of(hook) -> int:
    return int(hook.name.split(".")[1])


def budget_hooks(model, budget: AttentionBudget, layers: Sequence[int] | None = None,
                 record: BudgetRecord | None = None) -> list[tuple[str, Callable]]:
    """TransformerLens forward hooks applying `budget` at `blocks.L.attn.hook_pattern` of
    `layers` (default: all). "block_topk" also reads Q and K (`hook_rot_q/k` for rotary
    models, else `hook_q/k`); `hook_v` is read for the output error when `record` is given."""
    from workbench.models.hooks import validate_hook

    budget.validate()
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if layers is None else sorted({int(l) for l in layers})
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad:
        raise InvalidInputError(f"layers {bad} do not exist; the model has layers "
                                f"0..{n_layers - 1}")
    rotary = model.cfg.positional_embedding_type == "rotary"
    qk_names = ("hook_rot_q", "hook_rot_k") if rotary else ("hook_q", "hook_k")
    stash: dict[str, torch.Tensor] = {}

    def keep(t, hook):
        stash[hook.name.rsplit(".", 1)[-1]] = t
        return t

    def heads_first(t: torch.Tensor, n_heads: int) -> torch.Tensor:
        """[b, s, h_kv, d] -> [b, h, s, d] (grouped K/V heads repeated)."""
        if t.shape[2] != n_heads:
            t = t.repeat_interleave(n_heads // t.shape[2], dim=2)
        return t.transpose(1, 2)

    def apply(pattern, hook):  # [b, h, q, k]
        layer = _layer_of(hook)
        b, h, s, _ = pattern.shape
        if budget.kind == "top_fraction":
            mask = top_fraction_mask(pattern, budget.value)
            kept, n = float(mask.sum()), s
        else:
            q = heads_first(stash[qk_names[0]], h).float()
            k = heads_first(stash[qk_names[1]], h).float()
            mask, blocks = block_topk_mask(q, k, budget.block_size, int(budget.value))
            kept, n = float(blocks.sum()), blocks.shape[-1]
        new = restrict_pattern(pattern, mask).to(pattern.dtype)
        if record is not None:  # cells: tokens (top fraction) or blocks (block top-k)
            record.kept[layer] = record.kept.get(layer, 0.0) + kept
            record.causal[layer] = record.causal.get(layer, 0.0) + b * h * n * (n + 1) / 2
            v = heads_first(stash["hook_v"], h).to(pattern.dtype)
            z, z_new = pattern @ v, new @ v
            record.err_num[layer] = record.err_num.get(layer, 0.0) + float(
                (z_new - z).float().pow(2).sum())
            record.err_den[layer] = record.err_den.get(layer, 0.0) + float(
                z.float().pow(2).sum())
            if layer == record.show_layer:
                record.pattern = new[0].detach().float().cpu()
                record.mask = mask[0].cpu()
        return new

    hooks = []
    for layer in layers:
        reads = (*qk_names, "hook_v") if budget.kind == "block_topk" else ("hook_v",)
        if budget.kind != "block_topk" and record is None:
            reads = ()
        for name in reads:
            full = f"blocks.{layer}.attn.{name}"
            validate_hook(model, full)
            hooks.append((full, keep))
        full = f"blocks.{layer}.attn.hook_pattern"
        validate_hook(model, full)
        hooks.append((full, apply))
    return hooks


@dataclass
class TextWhatIf:
    """The effect of an attention budget on one text of T tokens (T - 1 predictions)."""

    budget: AttentionBudget
    layers_sparse: list[int]
    loss_dense: float
    loss_sparse: float
    token_loss_dense: np.ndarray   # [T - 1] nats
    token_loss_sparse: np.ndarray  # [T - 1]
    kl: np.ndarray                 # [T - 1] KL(dense || budgeted) of the next-token distribution
    top1_agreement: float          # share of positions whose top prediction is unchanged
    compute_sparsity: float        # 1 - kept / causal cells over the budgeted layers and heads
    per_layer: pd.DataFrame        # layer, compute_sparsity, output_error
    pattern_dense: np.ndarray      # [T, T] the shown head's dense pattern
    pattern_sparse: np.ndarray     # [T, T] the same head under the budget
    kept: np.ndarray               # [T, T] bool, the cells the budget keeps (causal: all)

    @property
    def loss_delta(self) -> float:
        return self.loss_sparse - self.loss_dense

    @property
    def mean_kl(self) -> float:
        return float(self.kl.mean()) if len(self.kl) else 0.0


@torch.no_grad()
def text_whatif(model, tokens: torch.Tensor, budget: AttentionBudget,
                layers: Sequence[int] | None = None, show: tuple[int, int] = (0, 0)
                ) -> TextWhatIf:
    """Run `tokens` [T] or [1, T] dense and under `budget` (at the layers `layers`, default
    all); `show` = (layer, head) whose patterns are returned. See the module docstring."""
    tokens = tokens.reshape(1, -1) if tokens.dim() == 1 else tokens
    if tokens.shape[0] != 1 or tokens.shape[1] < 2:
        raise InvalidInputError(f"give one text of at least 2 tokens, got shape "
                                f"{tuple(tokens.shape)}")
    layer, head = int(show[0]), int(show[1])
    if not (0 <= layer < model.cfg.n_layers and 0 <= head < model.cfg.n_heads):
        raise InvalidInputError(f"there is no head L{layer}H{head}; the model has "
                                f"{model.cfg.n_layers} layers of {model.cfg.n_heads} heads")
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    shown = f"blocks.{layer}.attn.hook_pattern"
    dense_logits, cache = model.run_with_cache(tokens, names_filter=[shown])
    dense_pattern = cache[shown][0, head].float().cpu()
    record = BudgetRecord(show_layer=layer)
    hooks = budget_hooks(model, budget, layers, record)
    sparse_logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    loss_d, loss_s = token_loss(dense_logits, tokens)[0], token_loss(sparse_logits, tokens)[0]
    logp_d = dense_logits[0, :-1].float().log_softmax(-1)
    logp_s = sparse_logits[0, :-1].float().log_softmax(-1)
    kl = (logp_d.exp() * (logp_d - logp_s)).sum(-1).clamp_min(0)
    agree = (logp_d.argmax(-1) == logp_s.argmax(-1)).float().mean()
    kept, causal = sum(record.kept.values()), sum(record.causal.values())
    if record.pattern is not None:
        sparse_pattern, kept_cells = record.pattern[head], record.mask[head]
    else:  # the shown layer is not budgeted
        sparse_pattern, kept_cells = dense_pattern, causal_mask(tokens.shape[1])
    return TextWhatIf(
        budget=budget, layers_sparse=sorted(record.kept), loss_dense=float(loss_d.mean()),
        loss_sparse=float(loss_s.mean()), token_loss_dense=loss_d.float().cpu().numpy(),
        token_loss_sparse=loss_s.float().cpu().numpy(), kl=kl.cpu().numpy(),
        top1_agreement=float(agree), compute_sparsity=1.0 - kept / max(1.0, causal),
        per_layer=record.layers(), pattern_dense=dense_pattern.numpy(),
        pattern_sparse=sparse_pattern.numpy(), kept=kept_cells.numpy())
