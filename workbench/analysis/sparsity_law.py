"""Activation-sparsity laws along training (Luo et al. 2024, "Sparsing Law", arXiv 2411.02335).

For every kept checkpoint of a lab model (`NAME@STEP`, see `workbench.models.training`) the
PPL-p% activation ratio (`workbench.analysis.sparsity`) is measured on the same evaluation
tokens. By default (the paper's choice, for stability) one CETT target c is searched jointly on
the last `joint_last` checkpoints (the mean PPL ratio over them = 1 + p/100) and applied to
every checkpoint; `joint_last=0` searches c per checkpoint instead.

The laws, fitted with `scipy.optimize.curve_fit` on D = training tokens in billions
(`fit_law`, checkpoints with step >= `fit_min_step`):

- ReLU-like models ("relu" form): A(D) = exp(-c D^alpha + b) + A0 (falls toward A0);
- SiLU-like models ("silu" form): A(D) = -c D^(-alpha) + A0 (rises toward A0);
with parameters, their standard errors (sqrt of the covariance diagonal), R^2 and the fitted
curve. A0 is the limit activation ratio compared across widths/depths.

Entry point: `analyze_sparsity_law(lab, name, models, cfg)`. Tables (Parquet, `analysis` kind,
`analysis="sparsity-law"`):

- `ratios`: model, step, tokens, D (billions of tokens), cett_target, activation_ratio,
  zero_ratio, loss_dense, loss_sparse, ppl_ratio, used_in_fit.
- `fits`: model, form, param (c, alpha, b, A0), value, stderr, r2, n_points.
- `curves`: model, D, fitted (the fitted law on 100 log-spaced D).
- `models`: model, act_fn, gated, n_layers, d_model, d_mlp, n_params, width_depth
  (d_model / n_layers), final_ratio, limit_ratio (A0 of the fit), r2, trend (Spearman rho of
  step vs ratio over the fitted checkpoints).
summary.json: p, models, claims (one entry per paper claim: claim, held, evidence), report
(readable lines), seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from workbench.analysis.common import (
    DEFAULT_BATCH_TOKENS,
    check_fraction,
    check_name_free,
    eval_tokens,
    model_corpus,
    progress_bar,
    write_analysis,
)
from workbench.analysis.sparsity import (
    SparsityConfig,
    cett_curves,
    collect_mlp_activations,
    mlp_layers,
    search_increasing,
    sparse_run,
    threshold_rule,
    thresholds_for_target,
)
from workbench.errors import InvalidInputError
from workbench.lab import Lab

LAW_FORMS = ("relu", "silu")
LAW_PARAMS = {"relu": ("c", "alpha", "b", "A0"), "silu": ("c", "alpha", "A0")}


# -- the laws ----------------------------------------------------------------------------------
def law_relu(D, c, alpha, b, A0):
    """A(D) = exp(-c D^alpha + b) + A0."""
    return np.exp(-c * np.power(D, alpha) + b) + A0


def law_silu(D, c, alpha, A0):
    """A(D) = -c D^(-alpha) + A0."""
    return -c * np.power(D, -alpha) + A0


LAWS = {"relu": law_relu, "silu": law_silu}


@dataclass
class LawFit:
    """A fitted law: params and stderr by name, R^2, and the number of points."""

    form: str
    params: dict[str, float]
    stderr: dict[str, float]
    r2: float
    n_points: int

    def __call__(self, D) -> np.ndarray:
        return LAWS[self.form](np.asarray(D, dtype=float), **self.params)


def fit_law(D: Sequence[float], A: Sequence[float], form: str) -> LawFit:
    """Fit the `form` law ("relu" | "silu") to activation ratios A at token counts D (> 0)
    with scipy's curve_fit from several starting points (the best R^2 wins)."""
    from scipy.optimize import curve_fit

    if form not in LAW_FORMS:
        raise InvalidInputError(f"unknown law form {form!r}; use one of {LAW_FORMS}")
    D, A = np.asarray(D, dtype=float), np.asarray(A, dtype=float)
    n_params = len(LAW_PARAMS[form])
    if D.shape != A.shape or len(D) < n_params + 1:
        raise InvalidInputError(f"the {form} law has {n_params} parameters: fit it to at least "
                                f"{n_params + 1} (D, ratio) points, got {len(D)}")
    if not (np.all(np.isfinite(D)) and np.all(D > 0) and np.all(np.isfinite(A))):
        raise InvalidInputError("D must be positive and D, A finite to fit a law")
    span = float(A.max() - A.min()) or 1e-3
    if form == "relu":
        lo, hi = [1e-8, 1e-3, -30.0, -1.0], [1e4, 4.0, 10.0, 2.0]
        starts = [[c, a, math.log(span), float(A.min()) - 0.1 * span]
                  for c in (0.1, 1.0, 10.0) for a in (0.2, 0.5, 1.0)]
    else:
        lo, hi = [1e-12, 1e-3, -1.0], [1e4, 4.0, 2.0]
        starts = [[span * float(D.min()) ** a, a, float(A.max()) + 0.1 * span]
                  for a in (0.1, 0.3, 0.6, 1.0)]
    best = None
    for p0 in starts:
        p0 = list(np.clip(p0, lo, hi))
        try:
            params, cov = curve_fit(LAWS[form], D, A, p0=p0, bounds=(lo, hi), maxfev=20000)
        except (RuntimeError, ValueError):
            continue
        resid = A - LAWS[form](D, *params)
        sse = float(resid @ resid)
        if best is None or sse < best[0]:
            best = (sse, params, cov)
    if best is None:
        raise InvalidInputError(f"the {form} law could not be fitted to these {len(D)} points")
    sse, params, cov = best
    sst = float(((A - A.mean()) ** 2).sum())
    stderr = np.sqrt(np.clip(np.diag(cov), 0, None)) if np.all(np.isfinite(cov)) else \
        np.full(n_params, np.inf)
    names = LAW_PARAMS[form]
    return LawFit(form, {k: float(v) for k, v in zip(names, params)},
                  {k: float(v) for k, v in zip(names, stderr)},
                  1.0 - sse / sst if sst > 0 else float("nan"), len(D))


def default_form(act_fn: str) -> str:
    """The law form of an activation: "relu" for ReLU, "silu" for smooth ones (SiLU, GELU)."""
    return "relu" if act_fn in ("relu", "relu2") else "silu"


# -- along training -----------------------------------------------------------------------------
@dataclass
class SparsityLawConfig:
    """Settings of `analyze_sparsity_law` (see the module docstring).

    joint_last: checkpoints the one CETT target is searched on (0: search per checkpoint).
    fit_min_step: checkpoints before this step are measured but left out of the fit (the first
        steps of training are still near the random initialization).
    """

    corpus: str | None = None
    split: str = "validation"
    n_tokens: int = 16384
    threshold_tokens: int = 4096
    context_size: int | None = None
    p: float = 1.0
    joint_last: int = 3
    fit_min_step: int = 8
    c_tol: float = 1e-6
    ppl_tol: float = 0.05
    max_evals: int = 20
    bisect_iters: int = 24
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    seed: int = 0

    def validate(self) -> None:
        check_fraction("p (the allowed perplexity increase in percent)", self.p, 0.0, 100.0,
                       open_low=True)
        if self.joint_last < 0:
            raise InvalidInputError(f"joint_last must be >= 0, got {self.joint_last}")
        if self.n_tokens < 1 or self.threshold_tokens < 1:
            raise InvalidInputError("n_tokens and threshold_tokens must be >= 1")

    def search_cfg(self) -> SparsityConfig:
        return SparsityConfig(p=self.p, c_tol=self.c_tol, ppl_tol=self.ppl_tol,
                              max_evals=self.max_evals, bisect_iters=self.bisect_iters,
                              batch_tokens=self.batch_tokens)


@dataclass
class _Checkpoint:
    step: int
    model: Any
    layers: list
    curves: dict
    dense_loss: float
    zero_ratio: float


def _load_checkpoint(lab: Lab, name: str, step: int, tokens: torch.Tensor, sample: torch.Tensor,
                     cfg: SparsityLawConfig) -> _Checkpoint:
    from workbench.models.loading import load_model

    model = load_model(f"{name}@{step}", lab=lab)
    layers = mlp_layers(model)
    curves = cett_curves(collect_mlp_activations(model, layers, sample, cfg.batch_tokens), layers)
    dense = sparse_run(model, layers, tokens, None, cfg.batch_tokens, zero_counts=True)
    return _Checkpoint(step, model, layers, curves, dense.loss, dense.activation_ratio)


def _sparse_at(ck: _Checkpoint, c: float, tokens: torch.Tensor, cfg: SparsityLawConfig):
    ts = thresholds_for_target(ck.curves, c, cfg.bisect_iters)
    return sparse_run(ck.model, ck.layers, tokens,
                      threshold_rule({l: t for l, (t, _) in ts.items()}), cfg.batch_tokens)


def _joint_target(cks: list[_Checkpoint], tokens: torch.Tensor, cfg: SparsityLawConfig) -> float:
    """One CETT target whose mean PPL ratio over the checkpoints `cks` is 1 + p/100."""
    def evaluate(c: float) -> float:
        return float(np.mean([math.exp(_sparse_at(ck, c, tokens, cfg).loss - ck.dense_loss)
                              for ck in cks]))

    return search_increasing(evaluate, 1 + cfg.p / 100, 0.0, 1.0, cfg.c_tol, cfg.ppl_tol / 100,
                             cfg.max_evals).value


def checkpoint_ratios(lab: Lab, model: str, cfg: SparsityLawConfig | None = None,
                      progress: bool = True) -> pd.DataFrame:
    """The `ratios` rows (see the module docstring) of every kept checkpoint of lab model
    `model`, on evaluation tokens of its training corpus (or `cfg.corpus`)."""
    from workbench.models.model_io import list_checkpoints

    cfg = cfg or SparsityLawConfig()
    cfg.validate()
    art = lab.get(model, kind="model")
    steps = list_checkpoints(art.path)
    if len(steps) < 2:
        raise InvalidInputError(
            f"model {model!r} keeps {len(steps)} checkpoint(s); the ratio along training needs "
            "several: train it with checkpoints='geometric' (`workbench lm train --checkpoints "
            "geometric`)")
    tokens_per_step = int(art.manifest.get("tokens_per_step") or
                          art.config.get("train", {}).get("batch_size", 1) *
                          art.config.get("model", {}).get("n_ctx", 1))
    from workbench.models.loading import load_model

    first = load_model(f"{model}@{steps[-1]}", lab=lab)
    corpus = cfg.corpus or model_corpus(lab, model)
    tokens = eval_tokens(first, lab, corpus, cfg.n_tokens, cfg.context_size, cfg.split, cfg.seed)
    sample = tokens[:max(1, math.ceil(cfg.threshold_tokens / (tokens.shape[1] - 1)))]
    del first
    bar = progress_bar(steps, f"sparsity-law {model}", enabled=progress)
    joint_c = None
    if cfg.joint_last:
        last = [_load_checkpoint(lab, model, s, tokens, sample, cfg)
                for s in steps[-cfg.joint_last:]]
        joint_c = _joint_target(last, tokens, cfg)
        del last
    rows = []
    search_cfg = cfg.search_cfg()
    for step in bar:
        ck = _load_checkpoint(lab, model, step, tokens, sample, cfg)
        if joint_c is None:
            def evaluate(c: float, ck=ck) -> float:
                return math.exp(_sparse_at(ck, c, tokens, cfg).loss - ck.dense_loss)
            c = search_increasing(evaluate, 1 + cfg.p / 100, 0.0, 1.0, search_cfg.c_tol,
                                  search_cfg.ppl_tol / 100, search_cfg.max_evals).value
        else:
            c = joint_c
        run = _sparse_at(ck, c, tokens, cfg)
        rows.append({"model": model, "step": step, "tokens": step * tokens_per_step,
                     "D": step * tokens_per_step / 1e9, "cett_target": c,
                     "activation_ratio": run.activation_ratio, "zero_ratio": ck.zero_ratio,
                     "loss_dense": ck.dense_loss, "loss_sparse": run.loss,
                     "ppl_ratio": math.exp(run.loss - ck.dense_loss),
                     "used_in_fit": step >= cfg.fit_min_step})
    return pd.DataFrame(rows)


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(x) < 3:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def analyze_sparsity_law(lab: Lab, name: str | None, models: Sequence[str],
                         cfg: SparsityLawConfig | None = None, overwrite: bool = False,
                         progress: bool = True) -> dict[str, Any]:
    """Activation ratio along training, fitted laws, and the width/depth comparison of `models`
    (lab models with kept checkpoints). Returns {"summary", "tables", "artifact"}."""
    cfg = cfg or SparsityLawConfig()
    cfg.validate()
    if not models:
        raise InvalidInputError("name at least one lab model with kept checkpoints")
    check_name_free(lab, name, overwrite)
    start = time.perf_counter()
    ratio_frames, fit_rows, curve_rows, model_rows = [], [], [], []
    for model in models:
        frame = checkpoint_ratios(lab, model, cfg, progress)
        ratio_frames.append(frame)
        mcfg = lab.get(model, kind="model").config.get("model", {})
        form = default_form(str(mcfg.get("act_fn")))
        used = frame[frame.used_in_fit]
        fit = None
        try:
            fit = fit_law(used.D.to_numpy(), used.activation_ratio.to_numpy(), form)
        except InvalidInputError:
            pass
        if fit is not None:
            for param, value in fit.params.items():
                fit_rows.append({"model": model, "form": form, "param": param, "value": value,
                                 "stderr": fit.stderr[param], "r2": fit.r2,
                                 "n_points": fit.n_points})
            grid = np.geomspace(frame.D.min(), frame.D.max(), 100)
            curve_rows += [{"model": model, "D": float(d), "fitted": float(a)}
                           for d, a in zip(grid, fit(grid))]
        n_layers, d_model = int(mcfg.get("n_layers", 0)), int(mcfg.get("d_model", 0))
        model_rows.append({
            "model": model, "act_fn": mcfg.get("act_fn"), "gated": bool(mcfg.get("gated_mlp")),
            "n_layers": n_layers, "d_model": d_model, "d_mlp": mcfg.get("d_mlp"),
            "n_params": lab.get(model).metrics.get("n_params"),
            "width_depth": d_model / max(1, n_layers),
            "final_ratio": float(frame.activation_ratio.iloc[-1]),
            "limit_ratio": fit.params["A0"] if fit else float("nan"),
            "r2": fit.r2 if fit else float("nan"),
            "trend": _spearman(used.step, used.activation_ratio),
        })
    tables = {"ratios": pd.concat(ratio_frames, ignore_index=True),
              "fits": pd.DataFrame(fit_rows, columns=["model", "form", "param", "value",
                                                      "stderr", "r2", "n_points"]),
              "curves": pd.DataFrame(curve_rows, columns=["model", "D", "fitted"]),
              "models": pd.DataFrame(model_rows)}
    claims = paper_claims(tables["models"], tables["ratios"])
    summary = {"analysis": "sparsity-law", "p": cfg.p, "models": list(models),
               "joint_last": cfg.joint_last, "n_tokens": cfg.n_tokens, "claims": claims,
               "report": _report(tables, claims), "seconds": time.perf_counter() - start}
    art = None
    if name is not None:
        art = write_analysis(lab, name, "sparsity-law", tables, summary, list(models),
                             {"models": list(models), **asdict(cfg)}, overwrite)
    return {"summary": summary, "tables": tables, "artifact": art}


def paper_claims(models: pd.DataFrame, ratios: pd.DataFrame) -> list[dict[str, Any]]:
    """Verdicts on the paper's qualitative laws from the `models` / `ratios` tables.

    - "ReLU ratio falls with training": every ReLU model's ratio trend (Spearman rho, fitted
      checkpoints) is negative and its last ratio is below its first fitted one;
    - "SiLU ratio rises with training": the same with the signs reversed, for smooth activations;
    - "limit ratio rises with width/depth": among the models of one activation with >= 3 shapes,
      Spearman rho of width/depth vs limit ratio (A0; the final ratio where no fit) is positive.
    """
    out = []
    for form, word, sign in (("relu", "ReLU", -1), ("silu", "SiLU", 1)):
        chosen = models[models.act_fn.map(lambda a: default_form(str(a))) == form]
        if chosen.empty:
            continue
        evidence, held = [], True
        for row in chosen.itertuples():
            r = ratios[(ratios.model == row.model) & ratios.used_in_fit]
            first, last = float(r.activation_ratio.iloc[0]), float(r.activation_ratio.iloc[-1])
            ok = (sign * row.trend > 0) and (sign * (last - first) > 0)
            held &= bool(ok)
            evidence.append(f"{row.model}: ratio {first:.4f} -> {last:.4f}, rho {row.trend:+.2f}")
        out.append({"claim": f"{word} activation ratio {'falls' if sign < 0 else 'rises'} "
                             "with training", "held": bool(held), "evidence": "; ".join(evidence)})
    for act, group in models.groupby("act_fn"):
        if group.width_depth.nunique() < 3:
            continue
        limit = group.limit_ratio.where(group.limit_ratio.between(0, 1), group.final_ratio)
        rho = _spearman(group.width_depth, limit)
        rho_final = _spearman(group.width_depth, group.final_ratio)
        order = group.assign(limit=limit).sort_values("width_depth")
        pairs = ", ".join(f"{w:g}: {v:.4f}" for w, v in zip(order.width_depth, order.limit))
        out.append({"claim": f"limit activation ratio rises with width/depth ({act})",
                    "held": bool(rho > 0),
                    "evidence": f"width/depth -> limit ratio {pairs}; rho {rho:+.2f} "
                                f"(final-checkpoint ratio rho {rho_final:+.2f})"})
    return out


def _report(tables: dict[str, pd.DataFrame], claims: list[dict[str, Any]]) -> list[str]:
    lines = []
    for model, fit in tables["fits"].groupby("model", sort=False):
        params = ", ".join(f"{r.param}={r.value:.4g}±{r.stderr:.2g}" for r in fit.itertuples())
        lines.append(f"{model}: {fit.form.iloc[0]} law {params}; R^2 {fit.r2.iloc[0]:.3f}")
    for row in tables["models"].itertuples():
        lines.append(f"{row.model}: width/depth {row.width_depth:g}, final ratio "
                     f"{row.final_ratio:.4f}, limit A0 {row.limit_ratio:.4f}")
    for claim in claims:
        lines.append(f"claim '{claim['claim']}': {'HELD' if claim['held'] else 'NOT HELD'} "
                     f"({claim['evidence']})")
    return lines
