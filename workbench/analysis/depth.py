"""Depth utilization (Curse of Depth, arXiv 2502.05795; "When Does Sparsity Mitigate the Curse
of Depth", arXiv 2603.15389; ShortGPT).

With x_l = `blocks.l.hook_resid_pre` (x_L = the last block's `hook_resid_post`):

- angular distance d(l, n) = arccos(cos(x_l, x_{l+n})) / pi, averaged over tokens (BOS
  excluded), for every layer l and distance n (and ShortGPT's last-token variant);
- layer skipping: the loss with block l replaced by the identity (its output := its input),
  minus the base loss;
- usefulness: block l replaced by the affine map x_l -> x_{l+1} fitted by least squares on
  `fit_tokens` held-out tokens; layer l is useful when loss_affine / loss_base > 1.1
  (`useful_ratio`); global usefulness = the fraction of useful layers;
- variance (over tokens and channels) of every layer's residual stream output, attention output
  and MLP output (Pre-LN variance grows with depth);
- causal score of skipping layer s on a later layer t: ||u_t' - u_t|| / ||u_t|| with u_t the
  update x_{t+1} - x_t of the base run and u_t' that of the run without layer s (sums over
  tokens).
Everything streams batch by batch (running sums; memory flat in the number of tokens).

Entry points: `analyze_depth(model, lab=..., cfg=DepthConfig(...), name=...)` for one model and
`compare_depth(models, ...)` for the comparison table across models. Tables (Parquet,
`analysis` kind, `analysis="depth"`):

- `angular`: layer, n, distance, distance_last_token (l -> l + n).
- `layers`: layer, skip_loss, skip_delta, affine_loss, affine_ratio, useful, affine_fit_r2,
  resid_var, attn_var, mlp_var, resid_norm.
- `causal`: skipped, layer, score (layer > skipped).
- `comparison` (from `compare_depth`, with a `model` column added to the others): model,
  n_layers, d_model, act_fn, n_key_value_heads, gated, loss_base, global_usefulness,
  n_useful, mean_adjacent_distance, max_skip_delta, mean_skip_delta, resid_var_growth
  (last / first layer's residual variance).
summary.json: model, n_tokens, loss_base, global_usefulness, n_useful, n_layers,
useful_ratio, seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import torch

from workbench.analysis.common import (
    DEFAULT_BATCH_TOKENS,
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


@dataclass
class DepthConfig:
    """Settings of `analyze_depth`.

    n_tokens: evaluation tokens; fit_tokens: further tokens the affine maps are fitted on.
    useful_ratio: loss_affine / loss_base above which a layer counts as useful (paper: 1.1).
    ridge: relative ridge term of the least-squares fit (times the mean diagonal of X^T X).
    """

    corpus: str | None = None
    split: str = "validation"
    n_tokens: int = 32768
    fit_tokens: int = 8192
    context_size: int | None = None
    useful_ratio: float = 1.1
    ridge: float = 1e-6
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    seed: int = 0

    def validate(self) -> None:
        if self.n_tokens < 1 or self.fit_tokens < 1:
            raise InvalidInputError("n_tokens and fit_tokens must be >= 1")
        if not (self.useful_ratio > 0 and math.isfinite(self.useful_ratio)):
            raise InvalidInputError(f"useful_ratio must be a positive number, got "
                                    f"{self.useful_ratio}")


def angular_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """arccos(cos(x, y)) / pi per row: x, y [..., d] -> [...] in [0, 1] (float64)."""
    cos = torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=-1, eps=1e-12)
    return torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi


def _residuals(model) -> list[str]:
    from workbench.models.hooks import validate_hook

    n = model.cfg.n_layers
    names = [f"blocks.{l}.hook_resid_pre" for l in range(n)] + [f"blocks.{n - 1}.hook_resid_post"]
    for name in names:
        validate_hook(model, name)
    return names


@dataclass
class AffineMap:
    """x -> x @ W + b for block inputs x [..., d]: W [d, d], b [d]."""

    W: torch.Tensor
    b: torch.Tensor
    r2: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.double() @ self.W + self.b).to(x.dtype)


def fit_affine(xtx: torch.Tensor, xty: torch.Tensor, yty_trace: float, y_sum: torch.Tensor,
               n: int, ridge: float) -> AffineMap:
    """Least squares from sums over n rows: xtx = [X 1]^T [X 1] [d+1, d+1], xty = [X 1]^T Y
    [d+1, d], yty_trace = sum ||y||^2, y_sum = sum y [d]. R^2 is that of the fit rows."""
    d1 = xtx.shape[0]
    reg = ridge * float(xtx.diagonal()[:-1].mean()) * torch.eye(d1, dtype=xtx.dtype)
    reg[-1, -1] = 0.0
    sol = torch.linalg.solve(xtx + reg, xty)  # [d+1, d]
    sse = yty_trace - 2 * float((sol * xty).sum()) + float((sol * (xtx @ sol)).sum())
    sst = yty_trace - float(y_sum @ y_sum) / max(1, n)
    return AffineMap(sol[:-1], sol[-1], 1.0 - sse / sst if sst > 0 else float("nan"))


@torch.no_grad()
def fit_affine_maps(model, tokens: torch.Tensor, ridge: float = 1e-6,
                    batch_tokens: int = DEFAULT_BATCH_TOKENS) -> list[AffineMap]:
    """Per block l: the affine map x_l -> x_{l+1} fitted on the non-BOS tokens of `tokens`."""
    names = _residuals(model)
    device = next(model.parameters()).device
    d = model.cfg.d_model
    L = model.cfg.n_layers
    xtx = torch.zeros(L, d + 1, d + 1, dtype=torch.float64)
    xty = torch.zeros(L, d + 1, d, dtype=torch.float64)
    yty = torch.zeros(L, dtype=torch.float64)
    ysum = torch.zeros(L, d, dtype=torch.float64)
    with fused_forward(model):
        caches = (model.run_with_cache(b.to(device), names_filter=names)[1]
                  for b in iter_batches(tokens, batch_tokens))
        n = _accumulate_normal_equations(caches, names, d, xtx, xty, yty, ysum)
    return [fit_affine(xtx[l], xty[l], float(yty[l]), ysum[l], n, ridge) for l in range(L)]


def _accumulate_normal_equations(caches, names, d, xtx, xty, yty, ysum) -> int:
    L, n = len(names) - 1, 0
    for cache in caches:
        xs = [cache[h][:, 1:].reshape(-1, d).double().cpu() for h in names]
        ones = torch.ones(len(xs[0]), 1, dtype=torch.float64)
        for l in range(L):
            x1 = torch.cat([xs[l], ones], 1)
            xtx[l] += x1.T @ x1
            xty[l] += x1.T @ xs[l + 1]
            yty[l] += xs[l + 1].pow(2).sum()
            ysum[l] += xs[l + 1].sum(0)
        n += len(xs[0])
    return n


class _Sums:
    """Running sums of the base-run statistics."""

    def __init__(self, L: int):
        self.angular = torch.zeros(L + 1, L + 1, dtype=torch.float64)  # [l, n]
        self.angular_last = torch.zeros(L + 1, L + 1, dtype=torch.float64)
        self.moments = {k: torch.zeros(L, 3, dtype=torch.float64)  # count, sum, sum of squares
                        for k in ("resid", "attn", "mlp")}
        self.norm = torch.zeros(L, dtype=torch.float64)
        self.n_tokens = 0
        self.n_seq = 0
        self.n_targets = 0
        self.loss_base = 0.0
        self.loss_skip = [0.0] * L
        self.loss_affine = [0.0] * L
        self.causal_num = torch.zeros(L, L, dtype=torch.float64)
        self.causal_den = torch.zeros(L, dtype=torch.float64)

    def moment(self, kind: str, layer: int, x: torch.Tensor) -> None:
        x = x.double()
        self.moments[kind][layer] += torch.stack([torch.tensor(float(x.numel()), dtype=torch.float64),
                                                  x.sum(), x.pow(2).sum()])

    def variance(self, kind: str) -> list[float]:
        m = self.moments[kind]
        count = m[:, 0].clamp_min(1)
        return ((m[:, 2] / count) - (m[:, 1] / count) ** 2).tolist()


@torch.no_grad()
def analyze_depth(model, lab: Lab | None = None, cfg: DepthConfig | None = None,
                  name: str | None = None, overwrite: bool = False, progress: bool = True,
                  device: str | None = None) -> dict[str, Any]:
    """Depth-utilization analysis of `model` (object or `load_model` spec). Returns
    {"summary", "tables", "artifact"}; with `name` (and a lab) stores an `analysis` artifact."""
    cfg = cfg or DepthConfig()
    cfg.validate()
    check_name_free(lab, name, overwrite)
    start = time.perf_counter()
    model, model_name = resolve_model(model, lab, device)
    names = _residuals(model)
    L, d = model.cfg.n_layers, model.cfg.d_model
    corpus = cfg.corpus or model_corpus(lab, model_name)
    ctx_tokens = eval_tokens(model, lab, corpus, cfg.n_tokens + cfg.fit_tokens,
                             cfg.context_size, cfg.split, cfg.seed)
    n_fit = max(1, math.ceil(cfg.fit_tokens / ctx_tokens.shape[1]))
    if len(ctx_tokens) <= n_fit:
        raise InvalidInputError(
            f"the corpus split holds only {ctx_tokens.numel()} tokens, not enough for "
            f"fit_tokens={cfg.fit_tokens} plus evaluation tokens; lower fit_tokens")
    fit_tokens, tokens = ctx_tokens[:n_fit], ctx_tokens[n_fit:]
    maps = fit_affine_maps(model, fit_tokens, cfg.ridge, cfg.batch_tokens)
    has_mlp = not getattr(model.cfg, "attn_only", False)
    dev = next(model.parameters()).device
    sums = _Sums(L)
    batches = list(iter_batches(tokens, cfg.batch_tokens))
    with fused_forward(model):
        for batch in progress_bar(batches, f"depth {model_name}", enabled=progress):
            _depth_batch(model, batch.to(dev), names, maps, has_mlp, sums)
    base = sums.loss_base / max(1, sums.n_targets)
    tables = _depth_tables(L, sums, base, maps, cfg, has_mlp)
    layers = tables["layers"]
    summary = {"analysis": "depth", "model": model_name, "corpus": corpus,
               "n_tokens": int(tokens.numel()), "fit_tokens": int(fit_tokens.numel()),
               "loss_base": base, "n_layers": L, "d_model": d,
               "useful_ratio": cfg.useful_ratio, "n_useful": int(layers.useful.sum()),
               "global_usefulness": float(layers.useful.mean()),
               "seconds": time.perf_counter() - start}
    art = None
    if name is not None and lab is not None:
        art = write_analysis(lab, name, "depth", tables, summary,
                             [model_name.partition("@")[0], corpus or ""],
                             {"model": model_name, **asdict(cfg)}, overwrite)
    return {"summary": summary, "tables": tables, "artifact": art}


def _depth_batch(model, batch: torch.Tensor, names: list[str], maps: list[AffineMap],
                 has_mlp: bool, sums: _Sums) -> None:
    """Add one batch [b, ctx] to the sums: base run, then one skip and one affine run per layer."""
    L = len(names) - 1
    extra = [f"blocks.{l}.hook_attn_out" for l in range(L)]
    extra += [f"blocks.{l}.hook_mlp_out" for l in range(L)] if has_mlp else []
    logits, cache = model.run_with_cache(batch, names_filter=names + extra)
    xs = [cache[h][:, 1:].double().cpu() for h in names]  # [b, ctx-1, d] each
    losses = token_loss(logits, batch)
    sums.loss_base += float(losses.sum())
    sums.n_targets += losses.numel()
    sums.n_tokens += xs[0].shape[0] * xs[0].shape[1]
    sums.n_seq += xs[0].shape[0]
    for l in range(L + 1):
        for m in range(l + 1, L + 1):
            sums.angular[l, m - l] += angular_distance(xs[l], xs[m]).sum()
            sums.angular_last[l, m - l] += angular_distance(xs[l][:, -1], xs[m][:, -1]).sum()
    for l in range(L):
        sums.moment("resid", l, xs[l + 1])
        sums.norm[l] += xs[l + 1].norm(dim=-1).sum()
        sums.moment("attn", l, cache[f"blocks.{l}.hook_attn_out"][:, 1:])
        if has_mlp:
            sums.moment("mlp", l, cache[f"blocks.{l}.hook_mlp_out"][:, 1:])
    del cache
    updates = [xs[l + 1] - xs[l] for l in range(L)]
    for l in range(L):
        sums.causal_den[l] += updates[l].pow(2).sum()
    for s in range(L):
        loss, new_updates = _replaced_run(model, batch, s, None, names)
        sums.loss_skip[s] += loss
        for t in range(s + 1, L):
            sums.causal_num[s, t] += (new_updates[t] - updates[t]).pow(2).sum()
        sums.loss_affine[s] += _replaced_run(model, batch, s, maps[s], names, updates=False)[0]


def _replaced_run(model, batch: torch.Tensor, layer: int, affine: AffineMap | None,
                  names: list[str], updates: bool = True):
    """(summed loss, updates of every layer [b, ctx-1, d] if `updates`) with block `layer`'s
    output replaced by its input (skip) or by `affine`(input)."""
    stash: dict[str, torch.Tensor] = {}
    captured: dict[int, torch.Tensor] = {}

    def keep_input(x, hook):
        stash["x"] = x
        return x

    def replace(x, hook):
        inp = stash["x"]
        return inp.clone() if affine is None else affine(inp)

    def record(x, hook):
        captured[names.index(hook.name)] = x[:, 1:].double().cpu()
        return x

    hooks = [(f"blocks.{layer}.hook_resid_pre", keep_input),
             (f"blocks.{layer}.hook_resid_post", replace)]
    if updates:
        hooks += [(n, record) for n in names]
    logits = model.run_with_hooks(batch, fwd_hooks=hooks)
    loss = float(token_loss(logits, batch).sum())
    if not updates:
        return loss, None
    # the last name is the last block's resid_post: hooks run in registration order, so for the
    # skipped layer the recorded value is already the replaced one
    L = len(names) - 1
    new = [captured[l + 1] - captured[l] for l in range(L)]
    return loss, new


def _depth_tables(L, sums: _Sums, base: float, maps: list[AffineMap], cfg: DepthConfig,
                  has_mlp: bool) -> dict[str, pd.DataFrame]:
    skip = [x / max(1, sums.n_targets) for x in sums.loss_skip]
    affine = [x / max(1, sums.n_targets) for x in sums.loss_affine]
    causal_num, causal_den = sums.causal_num, sums.causal_den
    angular = [{"layer": l, "n": n,
                "distance": float(sums.angular[l, n] / max(1, sums.n_tokens)),
                "distance_last_token": float(sums.angular_last[l, n] / max(1, sums.n_seq))}
               for l in range(L + 1) for n in range(1, L + 1 - l)]
    resid, attn = sums.variance("resid"), sums.variance("attn")
    mlp = sums.variance("mlp") if has_mlp else [float("nan")] * L
    layers = [{"layer": l, "skip_loss": skip[l], "skip_delta": skip[l] - base,
               "affine_loss": affine[l], "affine_ratio": affine[l] / base,
               "useful": bool(affine[l] / base > cfg.useful_ratio),
               "affine_fit_r2": maps[l].r2, "resid_var": resid[l], "attn_var": attn[l],
               "mlp_var": mlp[l], "resid_norm": float(sums.norm[l] / max(1, sums.n_tokens))}
              for l in range(L)]
    causal = [{"skipped": s, "layer": t,
               "score": math.sqrt(float(causal_num[s, t]) / float(causal_den[t]))
               if causal_den[t] > 0 else 0.0}
              for s in range(L) for t in range(s + 1, L)]
    return {"angular": pd.DataFrame(angular), "layers": pd.DataFrame(layers),
            "causal": pd.DataFrame(causal, columns=["skipped", "layer", "score"])}


def comparison_row(model, summary: dict[str, Any], tables: dict[str, pd.DataFrame]
                   ) -> dict[str, Any]:
    """One row of the comparison table (see the module docstring)."""
    cfg = model.cfg
    layers, angular = tables["layers"], tables["angular"]
    resid = layers.resid_var.to_numpy()
    return {"model": summary["model"], "n_layers": cfg.n_layers, "d_model": cfg.d_model,
            "act_fn": cfg.act_fn, "n_key_value_heads": cfg.n_key_value_heads or cfg.n_heads,
            "gated": bool(cfg.gated_mlp), "loss_base": summary["loss_base"],
            "global_usefulness": summary["global_usefulness"], "n_useful": summary["n_useful"],
            "mean_adjacent_distance": float(angular[angular.n == 1].distance.mean()),
            "max_skip_delta": float(layers.skip_delta.max()),
            "mean_skip_delta": float(layers.skip_delta.mean()),
            "resid_var_growth": float(resid[-1] / resid[0]) if resid[0] > 0 else float("nan")}


def compare_depth(models: Sequence[Any], lab: Lab | None = None,
                  cfg: DepthConfig | None = None, name: str | None = None,
                  overwrite: bool = False, progress: bool = True,
                  device: str | None = None) -> dict[str, Any]:
    """`analyze_depth` for each model and one `comparison` table across them; the per-model
    tables are concatenated with a `model` column. Stored as one `analysis` artifact with
    `name`."""
    if not models:
        raise InvalidInputError("name at least one model to compare")
    check_name_free(lab, name, overwrite)
    cfg = cfg or DepthConfig()
    rows, parts = [], {"angular": [], "layers": [], "causal": []}
    summaries = []
    for spec in models:
        loaded, model_name = resolve_model(spec, lab, device)
        result = analyze_depth(loaded, lab, _with_corpus(cfg, lab, model_name), progress=progress)
        result["summary"]["model"] = model_name
        summaries.append(result["summary"])
        rows.append(comparison_row(loaded, result["summary"], result["tables"]))
        for key, frames in parts.items():
            frames.append(result["tables"][key].assign(model=model_name))
    tables = {"comparison": pd.DataFrame(rows),
              **{k: pd.concat(v, ignore_index=True) for k, v in parts.items()}}
    summary = {"analysis": "depth-comparison", "models": [s["model"] for s in summaries],
               "per_model": summaries}
    art = None
    if name is not None and lab is not None:
        art = write_analysis(lab, name, "depth", tables, summary,
                             [s["model"].partition("@")[0] for s in summaries],
                             {"models": [s["model"] for s in summaries], **asdict(cfg)},
                             overwrite)
    return {"summary": summary, "tables": tables, "artifact": art}


def _with_corpus(cfg: DepthConfig, lab: Lab | None, model_name: str) -> DepthConfig:
    if cfg.corpus is not None:
        return cfg
    from dataclasses import replace

    return replace(cfg, corpus=model_corpus(lab, model_name))
