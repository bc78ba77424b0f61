"""Activation sparsity of MLPs by PPL-p% (Luo et al. 2024, "Sparsing Law"; thunlp/SparsingLaw).

An MLP is a sum over neurons: FFN(x) = sum_i n_i with n_i = a_i W_out[i, :] (TransformerLens
stores W_out as [d_mlp, d_model]), where a = `blocks.L.mlp.hook_post` is act(W_in x) for plain
MLPs and act(W_gate x) * (W_in x) (+ b_in) for gated ones; so ||n_i|| = |a_i| ||W_out[i]||. The
output bias b_out is not a neuron and is left out of FFN(x).

- CETT(t) = || sum_{i: ||n_i|| <= t} n_i || / || sum_i n_i ||, averaged over tokens
  (`cett`, `mean_cett`).
- For a CETT target c each layer gets the largest threshold t_l with mean CETT(t_l) <= c, by
  bisection between min ||n|| and its 0.99 quantile on a sample of the dense activations
  (`threshold_for_cett`, `thresholds_for_target`).
- Running sparse: neuron i of layer l is switched off (a_i := 0) when ||n_i|| <= t_l
  (`threshold_hooks`, forward hooks on `hook_post`); the activation ratio is the mean fraction
  of neurons left on, per token, then averaged (BOS positions excluded).
- PPL-p%: the largest c in [0, 1] with exp(loss_sparse - loss_dense) <= 1 + p/100, by bisection
  (`search_increasing`: stops when the interval is below `c_tol` or the PPL increase is within
  `ppl_tol` percentage points of p). Beside it: the plain zero ratio (act(gate/pre) != 0, what
  ReLU gives for free), a fixed threshold |a| <= eps, and the top-k fraction (keep the k
  largest ||n_i|| per token, one k for all layers) searched to the same PPL increase.

Entry point: `analyze_sparsity(model, lab=..., cfg=SparsityConfig(...), name=...)`; the tables
it stores (Parquet, artifact kind `analysis`, `analysis="sparsity"`):

- `layers`: layer, hook, d_mlp, threshold (t_l at the PPL-p% target), cett (mean CETT at t_l
  on the threshold sample), activation_ratio (PPL-p%), zero_ratio, fixed_ratio (|a| > eps),
  topk_ratio (kept fraction at the top-k PPL-p% point), w_out_norm_mean.
- `search`: method ("cett" | "topk"), step, param (c or kept fraction k), ppl_ratio,
  loss, activation_ratio (mean over layers) -- every evaluation of both searches.
- `tokens`: seq, pos, token_id, layer, activation_ratio -- per token and layer under the
  PPL-p% thresholds (BOS excluded).
summary.json: model, n_tokens, p, cett_target, thresholds, loss_dense, loss_sparse, ppl_ratio,
activation_ratio, sparsity, zero_ratio, fixed_eps, fixed_ratio, fixed_ppl_ratio,
topk_fraction, topk_ppl_ratio, evaluations, seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

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
from workbench.errors import InvalidInputError, NotFoundError
from workbench.lab import Lab

_SUPPORTED_MLPS = ("MLP", "GatedMLP")
_QUANTILE_SAMPLE = 1 << 22  # norms used for the 0.99 quantile (upper end of the bisection)


# -- the MLP layers ------------------------------------------------------------------------------
@dataclass
class MLPLayer:
    """One supported MLP: W_out [d_mlp, d_model], w_norm [d_mlp] = ||W_out[i, :]||."""

    layer: int
    hook: str  # blocks.L.mlp.hook_post (the neuron activations a)
    pre_hook: str  # blocks.L.mlp.hook_pre (act(pre) != 0 gives the zero ratio)
    W_out: torch.Tensor
    w_norm: torch.Tensor
    act_fn: Callable[[torch.Tensor], torch.Tensor]

    @property
    def d_mlp(self) -> int:
        return int(self.W_out.shape[0])


def mlp_layers(model) -> list[MLPLayer]:
    """The model's MLPs of the supported kinds (TransformerLens MLP / GatedMLP with a plain
    activation), in layer order; InvalidInputError when there is none or one is of another kind."""
    if getattr(model.cfg, "attn_only", False):
        raise InvalidInputError("the model is attention-only (cfg.attn_only): it has no MLPs, so "
                                "activation sparsity cannot be measured")
    if model.cfg.is_layer_norm_activation():
        raise InvalidInputError(
            f"act_fn {model.cfg.act_fn!r} normalizes the activations (SoLU + LN); CETT needs "
            "plain or gated MLPs (relu, gelu, silu, ...)")
    out = []
    for layer, block in enumerate(model.blocks):
        mlp = getattr(block, "mlp", None)
        kind = type(mlp).__name__
        if kind not in _SUPPORTED_MLPS:
            raise InvalidInputError(
                f"layer {layer} has an MLP of kind {kind} (supported: {', '.join(_SUPPORTED_MLPS)}"
                "); mixture-of-experts and other MLP kinds have no single neuron basis for CETT")
        W_out = mlp.W_out.detach().float()
        out.append(MLPLayer(layer, f"blocks.{layer}.mlp.hook_post", f"blocks.{layer}.mlp.hook_pre",
                            W_out, W_out.norm(dim=1), mlp.act_fn))
    if not out:
        raise InvalidInputError("the model has no MLP layers")
    return out


# -- CETT and thresholds ---------------------------------------------------------------------
def neuron_norms(a: torch.Tensor, w_norm: torch.Tensor) -> torch.Tensor:
    """||n_i|| = |a_i| ||W_out[i]||: a [T, d_mlp], w_norm [d_mlp] -> [T, d_mlp]."""
    return a.abs() * w_norm


def cett(a: torch.Tensor, W_out: torch.Tensor, threshold: float,
         w_norm: torch.Tensor | None = None) -> torch.Tensor:
    """CETT per token [T] of activations a [T, d_mlp] with W_out [d_mlp, d_model] at threshold t.

    Tokens whose FFN output is zero get CETT 0.
    """
    w_norm = W_out.norm(dim=1) if w_norm is None else w_norm
    tail = (neuron_norms(a, w_norm) <= threshold).to(a.dtype)
    full = (a @ W_out).norm(dim=1)
    truncated = ((a * tail) @ W_out).norm(dim=1)
    return torch.where(full > 0, truncated / full.clamp_min(1e-30), torch.zeros_like(full))


def mean_cett(a: torch.Tensor, W_out: torch.Tensor, threshold: float,
              w_norm: torch.Tensor | None = None) -> float:
    return float(cett(a, W_out, threshold, w_norm).mean())


class CETTCurve:
    """Mean CETT of one layer's sampled activations a [T, d_mlp] as a function of the threshold,
    memoized: bisections for different targets start from the same bracket, so their first
    midpoints coincide and are computed once (the PPL-p% search asks for many nearby targets)."""

    def __init__(self, a: torch.Tensor, W_out: torch.Tensor, w_norm: torch.Tensor | None = None):
        self.a, self.W_out = a, W_out
        self.w_norm = W_out.norm(dim=1) if w_norm is None else w_norm
        norms = neuron_norms(a, self.w_norm)
        self.full = (a @ W_out).norm(dim=1)  # [T]
        sample = norms.flatten()
        if sample.numel() > _QUANTILE_SAMPLE:
            pick = torch.randperm(sample.numel(), generator=torch.Generator().manual_seed(0))
            sample = sample[pick[:_QUANTILE_SAMPLE]]
        self.lo = float(norms.min())
        self.hi = float(torch.quantile(sample.double(), 0.99))
        self._norms = norms
        self._memo: dict[float, float] = {}

    def __call__(self, t: float) -> float:
        if t not in self._memo:
            tail = (self._norms <= t).to(self.a.dtype)
            truncated = ((self.a * tail) @ self.W_out).norm(dim=1)
            value = torch.where(self.full > 0, truncated / self.full.clamp_min(1e-30),
                                torch.zeros_like(self.full))
            self._memo[t] = float(value.mean())
        return self._memo[t]

    def threshold(self, target: float, iters: int = 30) -> tuple[float, float]:
        """(t, CETT(t)): the largest threshold with mean CETT(t) <= target, by `iters` bisection
        steps between min ||n|| and the 0.99 quantile of ||n||. A target reached only beyond
        the quantile returns the quantile; a target below CETT at the smallest norm returns a
        threshold just below it (nothing switched off)."""
        lo, hi = self.lo, self.hi
        if self(hi) <= target:
            return hi, self(hi)
        if self(lo) > target:
            below = lo - max(abs(lo) * 1e-6, 1e-30)  # below the smallest norm even in float32
            return below, self(below)
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            if self(mid) <= target:
                lo = mid
            else:
                hi = mid
        return lo, self(lo)


def threshold_for_cett(a: torch.Tensor, W_out: torch.Tensor, target: float, iters: int = 30,
                       w_norm: torch.Tensor | None = None) -> tuple[float, float]:
    """(t, CETT(t)) for one layer's activations a [T, d_mlp]; see `CETTCurve.threshold`."""
    return CETTCurve(a, W_out, w_norm).threshold(target, iters)


def cett_curves(acts: dict[int, torch.Tensor], layers: Sequence[MLPLayer]
                ) -> dict[int, CETTCurve]:
    """{layer: CETTCurve} of sampled activations {layer: [T, d_mlp]}."""
    return {m.layer: CETTCurve(acts[m.layer], m.W_out, m.w_norm) for m in layers}


def thresholds_for_target(curves: dict[int, CETTCurve], target: float, iters: int = 30
                          ) -> dict[int, tuple[float, float]]:
    """{layer: (t_l, CETT(t_l))} for a CETT target (`cett_curves` makes `curves`)."""
    check_fraction("the CETT target", target)
    return {layer: curve.threshold(target, iters) for layer, curve in curves.items()}


# -- collecting activations and running sparse ---------------------------------------------------
@torch.no_grad()
def collect_mlp_activations(model, layers: Sequence[MLPLayer], tokens: torch.Tensor,
                            batch_tokens: int = DEFAULT_BATCH_TOKENS) -> dict[int, torch.Tensor]:
    """Dense activations a {layer: [T, d_mlp] float32} of every non-BOS position of
    `tokens` [n_seq, ctx] (keep `tokens` small: this holds them all)."""
    device = next(model.parameters()).device
    out: dict[int, list[torch.Tensor]] = {m.layer: [] for m in layers}
    names = {m.hook: m.layer for m in layers}
    for batch in iter_batches(tokens, batch_tokens):
        _, cache = model.run_with_cache(batch.to(device), names_filter=list(names),
                                        stop_at_layer=layers[-1].layer + 1)
        for hook, layer in names.items():
            out[layer].append(cache[hook][:, 1:].reshape(-1, cache[hook].shape[-1]).float().cpu())
    return {layer: torch.cat(parts) for layer, parts in out.items()}


@dataclass
class SparseRun:
    """Counts of one sparse (or dense) evaluation pass."""

    loss: float
    n_targets: int
    active: dict[int, float]  # layer -> mean fraction of active neurons (non-BOS tokens)
    per_token: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [n_seq, ctx-1]

    @property
    def activation_ratio(self) -> float:
        return sum(self.active.values()) / max(1, len(self.active))


Rule = Callable[[torch.Tensor, MLPLayer], torch.Tensor]  # a [b, p, d_mlp] -> keep mask (bool)


def threshold_rule(thresholds: dict[int, float]) -> Rule:
    """Keep neuron i when ||n_i|| > t_l (the CETT rule)."""
    return lambda a, m: neuron_norms(a, m.w_norm.to(a.device)) > thresholds[m.layer]


def topk_rule(fraction: float) -> Rule:
    """Keep the ceil(fraction * d_mlp) largest ||n_i|| of each token."""
    def rule(a: torch.Tensor, m: MLPLayer) -> torch.Tensor:
        k = max(1, math.ceil(fraction * m.d_mlp))
        norms = neuron_norms(a, m.w_norm.to(a.device))
        idx = norms.topk(k, dim=-1).indices
        return torch.zeros_like(norms, dtype=torch.bool).scatter_(-1, idx, True)
    return rule


def fixed_rule(eps: float) -> Rule:
    """Keep neuron i when |a_i| > eps."""
    return lambda a, m: a.abs() > eps


def threshold_hooks(model, thresholds: dict[str | int, float]) -> list[tuple[str, Callable]]:
    """Forward hooks that run the model sparse: {hook name `blocks.L.mlp.hook_post` or layer L:
    t_L}; neuron i is set to 0 when |a_i| ||W_out[i]|| <= t_L. Use with
    `model.run_with_hooks(tokens, fwd_hooks=threshold_hooks(model, ...))` or `model.hooks(...)`.
    """
    from workbench.models.hooks import validate_hook

    by_layer = {m.layer: m for m in mlp_layers(model)}
    chosen: dict[int, float] = {}
    for key, value in thresholds.items():
        if isinstance(key, str):
            validate_hook(model, key)
            layer = next((m.layer for m in by_layer.values() if m.hook == key), None)
            if layer is None:
                raise InvalidInputError(f"hook {key!r} is not an MLP activation; thresholds "
                                        "apply to blocks.L.mlp.hook_post")
        else:
            layer = int(key)
            if layer not in by_layer:
                raise NotFoundError(f"the model has no MLP layer {layer}; layers: "
                                    f"{sorted(by_layer)}")
        chosen[layer] = float(value)
    return [(hook, fn) for hook, fn, _ in _rule_hooks([by_layer[l] for l in sorted(chosen)],
                                                      threshold_rule(chosen), None)]


def _rule_hooks(layers: Sequence[MLPLayer], rule: Rule, counts: dict[int, list] | None):
    hooks = []
    for m in layers:
        def fn(a, hook, m=m):
            keep = rule(a, m)
            if counts is not None:
                counts[m.layer].append(keep[:, 1:].float().mean(-1).cpu())  # [b, ctx-1]
            return a * keep.to(a.dtype)
        hooks.append((m.hook, fn, m))
    return hooks


@torch.no_grad()
def sparse_run(model, layers: Sequence[MLPLayer], tokens: torch.Tensor, rule: Rule | None,
               batch_tokens: int = DEFAULT_BATCH_TOKENS, keep_per_token: bool = False,
               zero_counts: bool = False) -> SparseRun:
    """Loss and activation ratios of `model` on `tokens` [n_seq, ctx] with the MLP neurons that
    `rule` rejects set to 0 (rule None: dense; then `zero_counts` counts act(pre) != 0)."""
    from workbench.models.fused_forward import fused_forward

    device = next(model.parameters()).device
    counts: dict[int, list] = {m.layer: [] for m in layers}
    if rule is not None:
        hooks = [(h, fn) for h, fn, _ in _rule_hooks(layers, rule, counts)]
    elif zero_counts:
        hooks = [(m.pre_hook, _zero_counter(m, counts)) for m in layers]
    else:
        hooks = []
    total, n = 0.0, 0
    with fused_forward(model):
        for batch in iter_batches(tokens, batch_tokens):
            batch = batch.to(device)
            losses = token_loss(model.run_with_hooks(batch, fwd_hooks=hooks), batch)
            total += float(losses.sum())
            n += losses.numel()
    per_token = {layer: torch.cat(parts) for layer, parts in counts.items() if parts}
    active = {layer: float(t.mean()) for layer, t in per_token.items()}
    return SparseRun(total / max(1, n), n, active, per_token if keep_per_token else {})


def _zero_counter(m: MLPLayer, counts: dict[int, list]):
    def fn(pre, hook):
        counts[m.layer].append((m.act_fn(pre[:, 1:]) != 0).float().mean(-1).cpu())
        return pre
    return fn


# -- the PPL-p% search -----------------------------------------------------------------------------
@dataclass
class SearchResult:
    """The chosen parameter, its PPL ratio, and every (param, ppl_ratio) evaluated in order."""

    value: float
    ppl_ratio: float
    trace: list[tuple[float, float]]


def search_increasing(evaluate: Callable[[float], float], target: float, low: float = 0.0,
                      high: float = 1.0, tol: float = 1e-6, value_tol: float = 0.0,
                      max_evals: int = 40) -> SearchResult:
    """Largest x in [low, high] with evaluate(x) <= target, for an evaluate that grows with x
    (bisection). Stops when high - low < tol, when evaluate(x) lies within `value_tol` below
    target, or after `max_evals` evaluations; returns the best x found that meets the target."""
    trace: list[tuple[float, float]] = []

    def ev(x: float) -> float:
        y = float(evaluate(x))
        trace.append((x, y))
        return y

    y_high = ev(high)
    if y_high <= target:
        return SearchResult(high, y_high, trace)
    y_low = ev(low)
    if y_low > target:
        return SearchResult(low, y_low, trace)
    while high - low >= tol and len(trace) < max_evals and target - y_low > value_tol:
        mid = 0.5 * (low + high)
        y_mid = ev(mid)
        if y_mid <= target:
            low, y_low = mid, y_mid
        else:
            high = mid
    return SearchResult(low, y_low, trace)


@dataclass
class SparsityConfig:
    """Settings of `analyze_sparsity`.

    p: allowed perplexity increase in percent (PPL-p%), in (0, 100].
    n_tokens: evaluation tokens (corpus windows of `context_size`); the searches use the first
        `search_tokens` of them, the reported figures all of them.
    threshold_tokens: dense-activation sample the per-layer thresholds come from.
    c_tol: bisection tolerance on the CETT target; ppl_tol: stop once the PPL increase is within
        this many percentage points below p; max_evals: per search.
    fixed_eps: the fixed-threshold baseline |a| <= eps; topk: run the top-k search.
    """

    corpus: str | None = None
    split: str = "validation"
    n_tokens: int = 32768
    search_tokens: int | None = 16384
    threshold_tokens: int = 4096
    context_size: int | None = None
    p: float = 1.0
    c_tol: float = 1e-6
    ppl_tol: float = 0.05
    max_evals: int = 24
    fixed_eps: float = 1e-2
    topk: bool = True
    bisect_iters: int = 24
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    seed: int = 0

    def validate(self) -> None:
        check_fraction("p (the allowed perplexity increase in percent)", self.p, 0.0, 100.0,
                       open_low=True)
        for label in ("n_tokens", "threshold_tokens", "max_evals", "bisect_iters",
                      "batch_tokens"):
            if int(getattr(self, label)) < 1:
                raise InvalidInputError(f"{label} must be >= 1, got {getattr(self, label)}")
        if self.fixed_eps < 0:
            raise InvalidInputError(f"fixed_eps must be >= 0, got {self.fixed_eps}")


@dataclass
class PPLSearch:
    """What `ppl_p_search` found: the CETT target, thresholds, the dense loss and the trace."""

    target: float
    thresholds: dict[int, tuple[float, float]]
    loss_dense: float
    result: SearchResult
    activation_ratios: list[float]  # per trace entry


def ppl_p_search(model, layers: Sequence[MLPLayer], curves: dict[int, CETTCurve],
                 tokens: torch.Tensor, p: float, cfg: SparsityConfig,
                 loss_dense: float | None = None, bar=None) -> PPLSearch:
    """Search the CETT target c whose thresholds raise the PPL on `tokens` by p%."""
    check_fraction("p (the allowed perplexity increase in percent)", p, 0.0, 100.0, open_low=True)
    if loss_dense is None:
        loss_dense = sparse_run(model, layers, tokens, None, cfg.batch_tokens).loss
    ratios: list[float] = []

    def evaluate(c: float) -> float:
        ts = thresholds_for_target(curves, c, cfg.bisect_iters)
        run = sparse_run(model, layers, tokens, threshold_rule({l: t for l, (t, _) in ts.items()}),
                         cfg.batch_tokens)
        ratios.append(run.activation_ratio)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(c=f"{c:.4g}", ppl=f"{math.exp(run.loss - loss_dense):.4f}")
        return math.exp(run.loss - loss_dense)

    result = search_increasing(evaluate, 1 + p / 100, 0.0, 1.0, cfg.c_tol, cfg.ppl_tol / 100,
                               cfg.max_evals)
    thresholds = thresholds_for_target(curves, result.value, cfg.bisect_iters)
    return PPLSearch(result.value, thresholds, loss_dense, result, ratios)


# -- the analysis -------------------------------------------------------------------------------
def analyze_sparsity(model, lab: Lab | None = None, cfg: SparsityConfig | None = None,
                     name: str | None = None, overwrite: bool = False,
                     progress: bool = True, device: str | None = None) -> dict[str, Any]:
    """PPL-p% activation sparsity of `model` (object or `load_model` spec) with baselines.

    Returns {"summary": dict, "tables": {name: DataFrame}, "artifact": Artifact | None}; with
    `name` (and a lab) the result is stored as an `analysis` artifact.
    """
    cfg = cfg or SparsityConfig()
    cfg.validate()
    check_name_free(lab, name, overwrite)
    start = time.perf_counter()
    model, model_name = resolve_model(model, lab, device)
    layers = mlp_layers(model)
    corpus = cfg.corpus or model_corpus(lab, model_name)
    tokens = eval_tokens(model, lab, corpus, cfg.n_tokens, cfg.context_size, cfg.split, cfg.seed)
    ctx = tokens.shape[1]
    search_seq = math.ceil((cfg.search_tokens or cfg.n_tokens) / ctx)
    search_tokens = tokens[:search_seq]
    sample = tokens[:max(1, math.ceil(cfg.threshold_tokens / (ctx - 1)))]
    with progress_bar(range(0), f"sparsity {model_name}", total=None, enabled=progress) as bar:
        curves = cett_curves(collect_mlp_activations(model, layers, sample, cfg.batch_tokens),
                             layers)
        dense = sparse_run(model, layers, tokens, None, cfg.batch_tokens, zero_counts=True)
        dense_search = (dense.loss if search_seq >= len(tokens)
                        else sparse_run(model, layers, search_tokens, None, cfg.batch_tokens).loss)
        search = ppl_p_search(model, layers, curves, search_tokens, cfg.p, cfg, dense_search, bar)
        thresholds = {l: t for l, (t, _) in search.thresholds.items()}
        final = sparse_run(model, layers, tokens, threshold_rule(thresholds), cfg.batch_tokens,
                           keep_per_token=True)
        fixed = sparse_run(model, layers, tokens, fixed_rule(cfg.fixed_eps), cfg.batch_tokens)
        topk_rows, topk_final = [], None
        if cfg.topk:
            def topk_eval(drop: float) -> float:
                run = sparse_run(model, layers, search_tokens, topk_rule(1.0 - drop),
                                 cfg.batch_tokens)
                topk_rows.append(run.activation_ratio)
                bar.update(1)
                return math.exp(run.loss - dense_search)

            topk = search_increasing(topk_eval, 1 + cfg.p / 100, 0.0, 1.0 - 1e-3, 1e-3,
                                     cfg.ppl_tol / 100, cfg.max_evals)
            topk_final = (1.0 - topk.value,
                          sparse_run(model, layers, tokens, topk_rule(1.0 - topk.value),
                                     cfg.batch_tokens))
    tables = _sparsity_tables(layers, search, thresholds, final, dense, fixed, topk_final,
                              topk_rows if cfg.topk else [], topk if cfg.topk else None, tokens)
    summary = {
        "analysis": "sparsity", "model": model_name, "corpus": corpus,
        "n_tokens": int(final.n_targets), "context_size": ctx, "p": cfg.p,
        "cett_target": search.target,
        "thresholds": {str(l): t for l, t in thresholds.items()},
        "loss_dense": dense.loss, "loss_sparse": final.loss,
        "ppl_ratio": math.exp(final.loss - dense.loss),
        "activation_ratio": final.activation_ratio, "sparsity": 1 - final.activation_ratio,
        "zero_ratio": dense.activation_ratio, "fixed_eps": cfg.fixed_eps,
        "fixed_ratio": fixed.activation_ratio, "fixed_ppl_ratio": math.exp(fixed.loss - dense.loss),
        "topk_fraction": topk_final[0] if topk_final else None,
        "topk_ppl_ratio": math.exp(topk_final[1].loss - dense.loss) if topk_final else None,
        "evaluations": len(search.result.trace) + len(topk_rows),
        "search_tokens": int(search_tokens[:, 1:].numel()),
        "seconds": time.perf_counter() - start,
    }
    art = None
    if name is not None and lab is not None:
        parents = [model_name.partition("@")[0], corpus or ""]
        art = write_analysis(lab, name, "sparsity", tables, summary, parents,
                             {"model": model_name, **asdict(cfg)}, overwrite)
    return {"summary": summary, "tables": tables, "artifact": art}


def _sparsity_tables(layers, search: PPLSearch, thresholds, final: SparseRun, dense: SparseRun,
                     fixed: SparseRun, topk_final, topk_ratios, topk: SearchResult | None,
                     tokens: torch.Tensor) -> dict[str, pd.DataFrame]:
    layer_rows = [{
        "layer": m.layer, "hook": m.hook, "d_mlp": m.d_mlp, "threshold": thresholds[m.layer],
        "cett": search.thresholds[m.layer][1], "activation_ratio": final.active[m.layer],
        "zero_ratio": dense.active[m.layer], "fixed_ratio": fixed.active[m.layer],
        "topk_ratio": topk_final[1].active[m.layer] if topk_final else float("nan"),
        "w_out_norm_mean": float(m.w_norm.mean()),
    } for m in layers]
    search_rows = [{"method": "cett", "step": i, "param": c, "ppl_ratio": r,
                    "loss": search.loss_dense + math.log(r), "activation_ratio": a}
                   for i, ((c, r), a) in enumerate(zip(search.result.trace,
                                                       search.activation_ratios))]
    if topk is not None:
        search_rows += [{"method": "topk", "step": i, "param": 1.0 - d, "ppl_ratio": r,
                         "loss": search.loss_dense + math.log(r), "activation_ratio": a}
                        for i, ((d, r), a) in enumerate(zip(topk.trace, topk_ratios))]
    n_seq, ctx = tokens.shape
    seq = torch.arange(n_seq).repeat_interleave(ctx - 1)
    pos = torch.arange(1, ctx).repeat(n_seq)
    frames = [pd.DataFrame({"seq": seq.int().numpy(), "pos": pos.int().numpy(),
                            "token_id": tokens[:, 1:].reshape(-1).int().numpy(),
                            "layer": layer,
                            "activation_ratio": ratios.reshape(-1).float().numpy()})
              for layer, ratios in final.per_token.items()]
    return {"layers": pd.DataFrame(layer_rows), "search": pd.DataFrame(search_rows),
            "tokens": pd.concat(frames, ignore_index=True)}
