"""Attention sparsity: coverage metrics, pattern classes, and a sparse-attention what-if.

Metrics (per layer, head and query position q >= 1; the BOS query sees only itself), from
`blocks.L.attn.hook_pattern` [batch, head, query, key], computed batch by batch inside the
forward pass (one layer's pattern at a time, nothing kept but running sums and fixed-bin
histograms, so memory stays flat as tokens grow):

- k@p (p = 0.9 / 0.95 / 0.99): the fewest keys whose attention mass reaches p, as a fraction of
  the causal context q + 1 (`k90`, `k95`, `k99`; `k90_keys` is the count itself);
- entropy H = -sum p log p (nats) and effective keys exp(H);
- sink mass (keys 0..sink_tokens-1), local mass (keys q-local_window+1..q), and their union
  `a_mass`;
- per (sequence, head): vertical-slash coverage `vs_coverage`, the mass of the `n_vertical` key
  columns and `n_slash` diagonals (q - k offsets) that hold the most of that sequence's mass
  (MInference's pattern); block coverage `block_k90`, the fewest key blocks (of `block_size`)
  holding 90% of each query block's mass, as a fraction of its causal blocks.

Pattern class per head (head means over all queries / sequences), the first rule that matches:
1. "A-shape"         a_mass >= a_shape_min (default 0.9): sink + local window;
2. "vertical-slash"  vs_coverage >= vs_min (0.9): a few columns and diagonals;
3. "block-sparse"    block_k90 <= block_max (0.5): 90% of the mass in at most half the blocks;
4. "dense"           otherwise.

What-if (`whatif=True`): the model's loss when every layer's attention core is replaced by a
sparse one from `sparse_ops` (Triton on CUDA, the PyTorch path on CPU), at several levels of
- "block_topk": `topk_block_index` (mean-pooled Q.K per block, MInference block-sparse) keeping
  `keep_blocks` key blocks per query block (first block and diagonal included);
- "vertical_slash": `vertical_slash_index` from the last `last_q` queries, (n_vertical, n_slash);
- "blasst": `blasst_attention` threshold skipping with lambda;
with compute sparsity = 1 - computed blocks / causal blocks (the causal triangle, as in The
Sparse Frontier) and the output error ||z - z_sparse|| / ||z|| per layer (z = the dense attention
of the same q, k, v in that run).

Entry point: `analyze_attention(model, lab=..., cfg=AttentionConfig(...), name=...)`. Tables
(Parquet, `analysis` kind, `analysis="attention"`):

- `heads`: layer, head, k90, k95, k99, k90_keys, entropy, eff_keys, sink_mass, local_mass,
  a_mass, vs_coverage, block_k90, k90_median, entropy_median, pattern_class, n_queries.
- `positions`: layer, head, pos, k90, entropy, eff_keys, sink_mass, local_mass (means per query
  position over all sequences).
- `histograms`: layer, head, metric (k90 | entropy | sink_mass | local_mass), bin, lo, hi,
  count.
- `whatif`: method, level, param, compute_sparsity, loss, loss_delta, ppl_ratio (one row per
  method and level; method "dense" is the baseline).
- `whatif_layers`: method, level, layer, compute_sparsity, output_error.
summary.json: model, n_tokens, context_size, class_counts, mean k90/entropy, whatif (best
level per method within `max_ppl_ratio`), peak_rss_mb, seconds.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from workbench.analysis.common import (
    DEFAULT_BATCH_TOKENS,
    check_fraction,
    check_name_free,
    eval_tokens,
    iter_batches,
    model_corpus,
    progress_bar,
    resolve_model,
    token_loss,
    write_analysis,
)
from workbench.errors import InvalidInputError
from workbench.lab import Lab
from workbench.models.fused_forward import fused_forward

COVERAGE_PS = (0.9, 0.95, 0.99)
PATTERN_CLASSES = ("A-shape", "vertical-slash", "block-sparse", "dense")
HIST_BINS = 50
_HIST_RANGES = {"k90": (0.0, 1.0), "sink_mass": (0.0, 1.0), "local_mass": (0.0, 1.0)}


@dataclass
class AttentionConfig:
    """Settings of `analyze_attention` (see the module docstring for the metrics and rules).

    whatif_tokens: tokens of the what-if runs (default: all n_tokens).
    block_keep / vs_levels / blasst_lambdas: the sparsity levels of the three methods.
    max_ppl_ratio: the summary's "best level" is the sparsest within this PPL ratio.
    """

    corpus: str | None = None
    split: str = "validation"
    n_tokens: int = 32768
    context_size: int | None = None
    sink_tokens: int = 4
    local_window: int = 16
    n_vertical: int = 8
    n_slash: int = 8
    block_size: int = 16
    a_shape_min: float = 0.9
    vs_min: float = 0.9
    block_max: float = 0.5
    whatif: bool = True
    whatif_tokens: int | None = None
    block_keep: tuple[int, ...] = (2, 3, 4, 6)
    vs_levels: tuple[tuple[int, int], ...] = ((4, 4), (8, 8), (16, 16))
    vs_last_q: int = 32
    blasst_lambdas: tuple[float, ...] = (0.5, 0.2, 0.05, 0.01)
    max_ppl_ratio: float = 1.01
    backend: str = "auto"
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    seed: int = 0

    def validate(self) -> None:
        for label in ("n_tokens", "sink_tokens", "local_window", "n_vertical", "n_slash",
                      "block_size", "vs_last_q", "batch_tokens"):
            if int(getattr(self, label)) < 1:
                raise InvalidInputError(f"{label} must be >= 1, got {getattr(self, label)}")
        for label in ("a_shape_min", "vs_min", "block_max"):
            check_fraction(label, getattr(self, label))
        for lam in self.blasst_lambdas:
            if not 0 <= lam < 1:
                raise InvalidInputError(f"BLASST lambda must lie in [0, 1), got {lam}")
        if any(k < 1 for k in self.block_keep):
            raise InvalidInputError(f"block_keep levels must be >= 1, got {self.block_keep}")


# -- metrics of one pattern ---------------------------------------------------------------------
def pattern_metrics(pattern: torch.Tensor, cfg: AttentionConfig | None = None
                    ) -> dict[str, torch.Tensor]:
    """Metrics of causal attention probabilities `pattern` [batch, head, q, k] (q = k = ctx).

    Returns per-query tensors [batch, head, ctx - 1] (queries 1..ctx-1): k90, k95, k99 (fractions
    of the causal context), k90_keys, entropy, eff_keys, sink_mass, local_mass, a_mass; and per
    (batch, head) [batch, head]: vs_coverage, block_k90.
    """
    cfg = cfg or AttentionConfig()
    s, s_k = pattern.shape[-2:]
    if pattern.dim() != 4 or s != s_k or s < 2:
        raise InvalidInputError(f"pattern must be [batch, head, ctx, ctx] with ctx >= 2, got "
                                f"{tuple(pattern.shape)}")
    p = pattern.float()
    q_pos = torch.arange(s, device=p.device)
    context = (q_pos + 1).float()  # causal keys per query
    out: dict[str, torch.Tensor] = {}
    sorted_p = p.sort(dim=-1, descending=True).values
    cum = sorted_p.cumsum(-1)
    for cover in COVERAGE_PS:
        keys = ((cum < cover - 1e-6).sum(-1) + 1).clamp(max=context.long())  # [b, h, s]
        out[f"k{round(cover * 100)}"] = (keys / context)[..., 1:]
        if cover == 0.9:
            out["k90_keys"] = keys[..., 1:].float()
    ent = -(p * p.clamp_min(1e-30).log()).sum(-1)
    out["entropy"] = ent[..., 1:]
    out["eff_keys"] = ent.exp()[..., 1:]
    k_pos = q_pos[None, :]
    sink = (k_pos < cfg.sink_tokens).expand(s, s)
    local = (k_pos > q_pos[:, None] - cfg.local_window) & (k_pos <= q_pos[:, None])
    out["sink_mass"] = (p * sink).sum(-1)[..., 1:]
    out["local_mass"] = (p * local).sum(-1)[..., 1:]
    out["a_mass"] = (p * (sink | local)).sum(-1)[..., 1:]
    out["vs_coverage"] = _vs_coverage(p[:, :, 1:], cfg.n_vertical, cfg.n_slash, q_offset=1)
    out["block_k90"] = _block_coverage(p, cfg.block_size, 0.9)
    return out


def _vs_coverage(p: torch.Tensor, n_vertical: int, n_slash: int, q_offset: int) -> torch.Tensor:
    """Mean mass per query covered by the n_vertical best columns + n_slash best diagonals of
    each (batch, head): p [b, h, nq, s] for queries q_offset..q_offset+nq-1."""
    b, h, nq, s = p.shape
    q_pos = torch.arange(q_offset, q_offset + nq, device=p.device)
    k_pos = torch.arange(s, device=p.device)
    offset = (q_pos[:, None] - k_pos[None, :]).clamp(min=0)  # [nq, s]; acausal cells hold 0 mass
    columns = p.sum(2).topk(min(n_vertical, s), dim=-1).indices  # [b, h, nv]
    per_offset = torch.zeros(b, h, s, device=p.device).scatter_add_(
        -1, offset.reshape(1, 1, -1).expand(b, h, -1), p.reshape(b, h, -1))
    offsets = per_offset.topk(min(n_slash, s), dim=-1).indices  # [b, h, ns]
    col_mask = torch.zeros(b, h, s, dtype=torch.bool, device=p.device).scatter_(-1, columns, True)
    off_mask = torch.zeros(b, h, s, dtype=torch.bool, device=p.device).scatter_(-1, offsets, True)
    covered = col_mask[:, :, None, :] | off_mask[:, :, offset.reshape(-1)].view(b, h, nq, s)
    return (p * covered).sum(-1).mean(-1)


def _block_coverage(p: torch.Tensor, block_size: int, cover: float) -> torch.Tensor:
    """Mean over query blocks of (fewest key blocks with `cover` of the block's mass) / (causal
    key blocks), per (batch, head): p [b, h, s, s] -> [b, h]."""
    b, h, s, _ = p.shape
    n = -(-s // block_size)
    padded = torch.zeros(b, h, n * block_size, n * block_size, device=p.device)
    padded[:, :, :s, :s] = p
    mass = padded.view(b, h, n, block_size, n, block_size).sum((3, 5))  # [b, h, n, n]
    mass = mass / mass.sum(-1, keepdim=True).clamp_min(1e-30)
    cum = mass.sort(-1, descending=True).values.cumsum(-1)
    blocks = (cum < cover - 1e-6).sum(-1) + 1  # [b, h, n]
    causal = torch.arange(1, n + 1, device=p.device)
    return (blocks.clamp(max=causal) / causal).float().mean(-1)


def classify_head(a_mass: float, vs_coverage: float, block_k90: float,
                  cfg: AttentionConfig | None = None) -> str:
    """The pattern class of a head from its mean metrics (rule in the module docstring)."""
    cfg = cfg or AttentionConfig()
    if a_mass >= cfg.a_shape_min:
        return "A-shape"
    if vs_coverage >= cfg.vs_min:
        return "vertical-slash"
    if block_k90 <= cfg.block_max:
        return "block-sparse"
    return "dense"


# -- streaming accumulation ------------------------------------------------------------------
@dataclass
class HeadStats:
    """Running sums of the metrics for all layers and heads (fixed size: memory stays flat)."""

    n_layers: int
    n_heads: int
    ctx: int
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # metric -> [L, H] float64
    pos_sums: dict[str, torch.Tensor] = field(default_factory=dict)  # metric -> [L, H, ctx-1]
    hists: dict[str, torch.Tensor] = field(default_factory=dict)  # metric -> [L, H, bins]
    n_queries: torch.Tensor | None = None  # [L, H]
    n_sequences: torch.Tensor | None = None  # [L, H]
    pos_counts: torch.Tensor | None = None  # [L, H, ctx-1]
    max_entropy: float = 0.0

    def __post_init__(self):
        shape = (self.n_layers, self.n_heads)
        self.n_queries = torch.zeros(shape, dtype=torch.float64)
        self.n_sequences = torch.zeros(shape, dtype=torch.float64)
        self.pos_counts = torch.zeros(*shape, self.ctx - 1, dtype=torch.float64)
        self.max_entropy = math.log(self.ctx)

    def add(self, layer: int, metrics: dict[str, torch.Tensor]) -> None:
        for name, value in metrics.items():
            value = value.double().cpu()
            if value.dim() == 3:  # per query [b, h, ctx-1]
                self.sums.setdefault(name, torch.zeros(self.n_layers, self.n_heads,
                                                       dtype=torch.float64))
                self.sums[name][layer] += value.sum((0, 2))
                self.pos_sums.setdefault(name, torch.zeros(self.n_layers, self.n_heads,
                                                           self.ctx - 1, dtype=torch.float64))
                self.pos_sums[name][layer] += value.sum(0)
                if name in _HIST_RANGES or name == "entropy":
                    self._hist(layer, name, value)
            else:  # per sequence [b, h]
                self.sums.setdefault(name, torch.zeros(self.n_layers, self.n_heads,
                                                       dtype=torch.float64))
                self.sums[name][layer] += value.sum(0)
        some = next(v for v in metrics.values() if v.dim() == 3)
        self.n_queries[layer] += some.shape[0] * some.shape[2]
        self.n_sequences[layer] += some.shape[0]
        self.pos_counts[layer] += some.shape[0]

    def _range(self, name: str) -> tuple[float, float]:
        return _HIST_RANGES.get(name, (0.0, self.max_entropy))

    def _hist(self, layer: int, name: str, value: torch.Tensor) -> None:
        lo, hi = self._range(name)
        idx = ((value - lo) / (hi - lo) * HIST_BINS).long().clamp(0, HIST_BINS - 1)
        counts = torch.zeros(self.n_heads, HIST_BINS, dtype=torch.float64)
        counts.scatter_add_(1, idx.transpose(0, 1).reshape(self.n_heads, -1),
                            torch.ones_like(idx, dtype=torch.float64).transpose(0, 1)
                            .reshape(self.n_heads, -1))
        self.hists.setdefault(name, torch.zeros(self.n_layers, self.n_heads, HIST_BINS,
                                                dtype=torch.float64))
        self.hists[name][layer] += counts

    def mean(self, name: str) -> torch.Tensor:
        denom = self.n_queries if self.pos_sums.get(name) is not None else self.n_sequences
        return self.sums[name] / denom.clamp_min(1)

    def median(self, name: str) -> torch.Tensor:
        """Median per [L, H] from the histogram (bin centre)."""
        hist = self.hists[name]
        cum = hist.cumsum(-1) / hist.sum(-1, keepdim=True).clamp_min(1)
        idx = (cum < 0.5).sum(-1).clamp(max=HIST_BINS - 1)
        lo, hi = self._range(name)
        return lo + (idx.double() + 0.5) * (hi - lo) / HIST_BINS


def head_tables(stats: HeadStats, cfg: AttentionConfig) -> dict[str, pd.DataFrame]:
    """The `heads`, `positions` and `histograms` tables from accumulated statistics."""
    rows = []
    means = {name: stats.mean(name) for name in stats.sums}
    medians = {name: stats.median(name) for name in ("k90", "entropy")}
    for layer in range(stats.n_layers):
        for head in range(stats.n_heads):
            row = {"layer": layer, "head": head}
            row.update({name: float(v[layer, head]) for name, v in means.items()})
            row["k90_median"] = float(medians["k90"][layer, head])
            row["entropy_median"] = float(medians["entropy"][layer, head])
            row["pattern_class"] = classify_head(row["a_mass"], row["vs_coverage"],
                                                 row["block_k90"], cfg)
            row["n_queries"] = int(stats.n_queries[layer, head])
            rows.append(row)
    pos_rows = []
    names = ("k90", "entropy", "eff_keys", "sink_mass", "local_mass")
    per_pos = {n: stats.pos_sums[n] / stats.pos_counts.clamp_min(1) for n in names}
    for layer in range(stats.n_layers):
        for head in range(stats.n_heads):
            for i in range(stats.ctx - 1):
                pos_rows.append({"layer": layer, "head": head, "pos": i + 1,
                                 **{n: float(per_pos[n][layer, head, i]) for n in names}})
    hist_rows = []
    for name, hist in stats.hists.items():
        lo, hi = stats._range(name)
        width = (hi - lo) / HIST_BINS
        for layer in range(stats.n_layers):
            for head in range(stats.n_heads):
                for i in range(HIST_BINS):
                    hist_rows.append({"layer": layer, "head": head, "metric": name, "bin": i,
                                      "lo": lo + i * width, "hi": lo + (i + 1) * width,
                                      "count": int(hist[layer, head, i])})
    return {"heads": pd.DataFrame(rows), "positions": pd.DataFrame(pos_rows),
            "histograms": pd.DataFrame(hist_rows)}


def _pattern_hooks(model) -> list[str]:
    from workbench.models.hooks import validate_hook

    hooks = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    for hook in hooks:
        validate_hook(model, hook)
    return hooks


@torch.no_grad()
def attention_stats(model, tokens: torch.Tensor, cfg: AttentionConfig,
                    progress: bool = False) -> HeadStats:
    """Accumulate the metrics of every layer and head over `tokens` [n_seq, ctx], streaming."""
    hooks = _pattern_hooks(model)
    stats = HeadStats(model.cfg.n_layers, model.cfg.n_heads, tokens.shape[1])
    device = next(model.parameters()).device

    def record(pattern, hook):
        layer = int(hook.name.split(".")[1])
        stats.add(layer, pattern_metrics(pattern, cfg))

    batches = list(iter_batches(tokens, cfg.batch_tokens))
    with fused_forward(model, hooks[0]):  # the layer norms only: the patterns are needed
        for batch in progress_bar(batches, "attention metrics", enabled=progress):
            model.run_with_hooks(batch.to(device), return_type=None,
                                 fwd_hooks=[(h, record) for h in hooks])
    return stats


# -- the sparse-attention what-if -----------------------------------------------------------------
@dataclass(frozen=True)
class SparseMethod:
    """One sparse-attention setting: method "block_topk" | "vertical_slash" | "blasst"."""

    method: str
    level: int
    param: str
    options: tuple

    def attend(self, q, k, v, cfg: AttentionConfig, sm_scale: float):
        """(out [b, h, s, d], computed fraction) through sparse_ops."""
        import sparse_ops

        if self.method == "block_topk":
            index = sparse_ops.topk_block_index(q, k, cfg.block_size, self.options[0])
            return sparse_ops.block_sparse_attention(q, k, v, index, cfg.block_size,
                                                     backend=cfg.backend, sm_scale=sm_scale)
        if self.method == "vertical_slash":
            n_v, n_s = self.options
            index = sparse_ops.vertical_slash_index(q, k, cfg.block_size, n_v, n_s,
                                                    last_q=cfg.vs_last_q)
            return sparse_ops.block_sparse_attention(q, k, v, index, cfg.block_size,
                                                     backend=cfg.backend, sm_scale=sm_scale)
        return sparse_ops.blasst_attention(q, k, v, self.options[0], cfg.block_size,
                                           backend=cfg.backend, sm_scale=sm_scale)


def sparse_methods(cfg: AttentionConfig) -> list[SparseMethod]:
    out = [SparseMethod("block_topk", i, f"keep_blocks={k}", (k,))
           for i, k in enumerate(cfg.block_keep)]
    out += [SparseMethod("vertical_slash", i, f"n_vertical={a},n_slash={b}", (a, b))
            for i, (a, b) in enumerate(cfg.vs_levels)]
    out += [SparseMethod("blasst", i, f"lambda={lam:g}", (lam,))
            for i, lam in enumerate(cfg.blasst_lambdas)]
    return out


def check_whatif_model(model) -> None:
    """The what-if replaces TransformerLens' causal softmax attention; other kinds are refused."""
    from workbench.models.fused_forward import attention_is_plain

    for layer, block in enumerate(model.blocks):
        if not attention_is_plain(block.attn):
            raise InvalidInputError(
                f"layer {layer}'s attention is not plain causal softmax attention (local "
                "windows, ALiBi, soft-capping, sinks, ...); the sparse-attention what-if only "
                "replaces plain causal attention (pass whatif=False / --no-whatif)")


@torch.no_grad()
def whatif_run(model, tokens: torch.Tensor, method: SparseMethod | None, cfg: AttentionConfig
               ) -> tuple[float, dict[int, float], dict[int, float]]:
    """(loss, computed fraction per layer, output error per layer) with every layer's attention
    core replaced by `method` (None: dense)."""
    device = next(model.parameters()).device
    n_layers = model.cfg.n_layers
    rotary = model.cfg.positional_embedding_type == "rotary"
    stash: dict[str, torch.Tensor] = {}
    err_num = dict.fromkeys(range(n_layers), 0.0)
    err_den = dict.fromkeys(range(n_layers), 0.0)
    computed = {layer: [] for layer in range(n_layers)}

    def keep(t, hook):
        stash[hook.name.rsplit(".", 1)[-1]] = t
        return t

    def replace(z, hook):  # z [b, s, h, d]: dense attention output of this layer
        layer = int(hook.name.split(".")[1])
        attn = model.blocks[layer].attn
        q = stash["hook_rot_q" if rotary else "hook_q"]
        k = stash["hook_rot_k" if rotary else "hook_k"]
        v = stash["hook_v"]
        if k.shape[2] != q.shape[2]:  # grouped-query attention
            rep = q.shape[2] // k.shape[2]
            k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
        q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        out, fraction = method.attend(q, k, v.to(q.dtype), cfg, 1.0 / float(attn.attn_scale))
        out = out.transpose(1, 2).to(z.dtype)
        err_num[layer] += float((out - z).float().pow(2).sum())
        err_den[layer] += float(z.float().pow(2).sum())
        computed[layer].append(fraction)
        return out

    hooks = []
    if method is not None:
        for layer in range(n_layers):
            names = ("hook_rot_q", "hook_rot_k", "hook_v") if rotary else ("hook_q", "hook_k",
                                                                          "hook_v")
            hooks += [(f"blocks.{layer}.attn.{n}", keep) for n in names]
            hooks.append((f"blocks.{layer}.attn.hook_z", replace))
    total, n = 0.0, 0
    with fused_forward(model):  # z = SDPA(q, k, v): the dense output the error is measured to
        for batch in iter_batches(tokens, cfg.batch_tokens):
            batch = batch.to(device)
            losses = token_loss(model.run_with_hooks(batch, fwd_hooks=hooks), batch)
            total += float(losses.sum())
            n += losses.numel()
    fractions = {l: float(np.mean(c)) if c else 1.0 for l, c in computed.items()}
    errors = {l: math.sqrt(err_num[l] / err_den[l]) if err_den[l] > 0 else 0.0
              for l in range(n_layers)}
    return total / max(1, n), fractions, errors


def whatif_tables(model, tokens: torch.Tensor, cfg: AttentionConfig, progress: bool = False
                  ) -> dict[str, pd.DataFrame]:
    """The `whatif` and `whatif_layers` tables (dense baseline + every method and level)."""
    check_whatif_model(model)
    dense_loss, _, _ = whatif_run(model, tokens, None, cfg)
    rows = [{"method": "dense", "level": 0, "param": "", "compute_sparsity": 0.0,
             "loss": dense_loss, "loss_delta": 0.0, "ppl_ratio": 1.0}]
    layer_rows = []
    for method in progress_bar(sparse_methods(cfg), "attention what-if", enabled=progress):
        loss, fractions, errors = whatif_run(model, tokens, method, cfg)
        rows.append({"method": method.method, "level": method.level, "param": method.param,
                     "compute_sparsity": 1.0 - float(np.mean(list(fractions.values()))),
                     "loss": loss, "loss_delta": loss - dense_loss,
                     "ppl_ratio": math.exp(loss - dense_loss)})
        layer_rows += [{"method": method.method, "level": method.level, "layer": l,
                        "compute_sparsity": 1.0 - fractions[l], "output_error": errors[l]}
                       for l in fractions]
    return {"whatif": pd.DataFrame(rows), "whatif_layers": pd.DataFrame(layer_rows)}


# -- the analysis -------------------------------------------------------------------------------
def analyze_attention(model, lab: Lab | None = None, cfg: AttentionConfig | None = None,
                      name: str | None = None, overwrite: bool = False, progress: bool = True,
                      device: str | None = None) -> dict[str, Any]:
    """Attention-sparsity metrics, pattern classes and (optionally) the sparse-attention
    what-if of `model` (object or `load_model` spec). Returns {"summary", "tables",
    "artifact"}; with `name` (and a lab) the tables are stored as an `analysis` artifact."""
    from workbench.activations.memory import peak_rss_mb

    cfg = cfg or AttentionConfig()
    cfg.validate()
    check_name_free(lab, name, overwrite)
    start = time.perf_counter()
    model, model_name = resolve_model(model, lab, device)
    _pattern_hooks(model)
    if cfg.whatif:
        check_whatif_model(model)
    corpus = cfg.corpus or model_corpus(lab, model_name)
    tokens = eval_tokens(model, lab, corpus, cfg.n_tokens, cfg.context_size, cfg.split, cfg.seed)
    stats = attention_stats(model, tokens, cfg, progress)
    tables = head_tables(stats, cfg)
    metrics_seconds = time.perf_counter() - start
    if cfg.whatif:
        n_seq = math.ceil((cfg.whatif_tokens or cfg.n_tokens) / tokens.shape[1])
        tables.update(whatif_tables(model, tokens[:n_seq], cfg, progress))
    heads = tables["heads"]
    summary = {
        "analysis": "attention", "model": model_name, "corpus": corpus,
        "n_tokens": int(tokens.numel()), "context_size": int(tokens.shape[1]),
        "class_counts": {c: int((heads.pattern_class == c).sum()) for c in PATTERN_CLASSES},
        "mean_k90": float(heads.k90.mean()), "mean_entropy": float(heads.entropy.mean()),
        "mean_sink_mass": float(heads.sink_mass.mean()),
        "metrics_seconds": metrics_seconds,
    }
    if cfg.whatif:
        summary["whatif"] = _best_levels(tables["whatif"], cfg.max_ppl_ratio)
    summary["peak_rss_mb"] = peak_rss_mb()
    summary["seconds"] = time.perf_counter() - start
    art = None
    if name is not None and lab is not None:
        art = write_analysis(lab, name, "attention", tables, summary,
                             [model_name.partition("@")[0], corpus or ""],
                             {"model": model_name, **asdict(cfg)}, overwrite)
    return {"summary": summary, "tables": tables, "artifact": art}


def _best_levels(whatif: pd.DataFrame, max_ppl_ratio: float) -> dict[str, Any]:
    """Per method: the sparsest level whose PPL ratio stays within `max_ppl_ratio`."""
    out = {}
    for method, group in whatif[whatif.method != "dense"].groupby("method"):
        ok = group[group.ppl_ratio <= max_ppl_ratio]
        best = ok.sort_values("compute_sparsity").iloc[-1] if len(ok) else None
        out[method] = None if best is None else {
            "param": best.param, "compute_sparsity": float(best.compute_sparsity),
            "ppl_ratio": float(best.ppl_ratio)}
    return out

