"""LangFIR: language features of an SAE by random-token filtering (Wong, Sajjad, Siddique 2026).

For each language L and SAE feature i, over the non-BOS tokens of monolingual documents:

    p_L(i)   = share of tokens where f_i > 0        (activation frequency)
    mu_L(i)  = mean of f_i over all tokens          (mean activation)

and the same on random-token sequences (ids uniform over the vocabulary minus special tokens,
lengths drawn from the documents' lengths). The kept features of L are

    K_L = { i : p_L(i) >= tau  and  p_rand(i) < tau_r }

(consistently active on L, quiet on random tokens: position, BOS and generic features fire on
random tokens too and do not encode language). The paper's discovery uses only L's own text;
the other languages serve evaluation: selectivity p_L(i) / max_{L' != L} p_L'(i), the register check
(frequencies on every language's installation-guide text, the corpus's parallel set), the
stability of K_L over 10/30/100/300 documents, and the directional-ablation matrix (CE per
evaluation language with K_L's decoder directions projected out at the SAE's hook).

Two additions of ours (not in the paper; LangFIRConfig.min_selectivity and max_features, both
can be switched off to get the paper's pick): a selectivity filter, p_L(i) >= min_selectivity x
max_{L' != L} p_L'(i), which reads the other languages' text (so discovery is then no longer
monolingual), and a cap of max_features per language (most frequent on L first). The report
records the paper's pick beside ours (summary: n_candidates, n_candidates_selective_5x).

Defaults: tau = 0.05, tau_r = 0.2, min_selectivity = 5, max_features = 5. Why, on the default
lab (TopK SAE, 2048 latents, k 32, at blocks.1.hook_resid_post of the 4 x 128 LM; a feature
fires on ~1% of tokens on average): random sequences over a 4096-token vocabulary shared by nine
languages contain every language's tokens, so language features fire on random tokens too
(0.1-14%), overlapping the generic features (12-44%). No (tau, tau_r) of the paper's pick makes
every kept feature 5x selective there: it keeps 45-100 features per language at tau 0.05, of
which 1-17 reach 5x, and related languages (es/pt/it) share features that the random-token
filter cannot tell apart. The selectivity filter removes the generic features, so tau_r can be
0.2 (with 0.1 it also dropped German's and Italian's most frequent language features and the
ablation matrix was diagonal-dominant for 7 of 9 languages instead of 8); tau 0.05 keeps
English's and Spanish's only 5x features (they fire on 7.7% and 7.0% of those languages'
tokens; at tau 0.1 both keep nothing). Measured figures: README.md and docs/usage.md.

    result = discover(model, sae, texts={"en": [...], "de": [...]}, config=LangFIRConfig())
    art = run_langfir(lab, "langfir-topk", model="default-lm", sae="default-topk",
                      corpus="default-corpus", languages=["en", "de"])
    report = load_report(lab, "langfir-topk")      # LangFIRReport (tables as DataFrames)

Report artifact (kind `langfir`): features.parquet (the kept features per language with their
frequency and mean activation on every language, on random tokens and on each language's
guide text), frequencies.parquet (p and mu of every feature on every language and on random
tokens), stability.parquet, ablation.parquet, mean_resid.safetensors (mean residual per
language at the hook, for DiffMean), report.json (config, summary, timings).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from steering.text_batches import batches, encode_documents, pad_id_of, residuals_at, token_losses
from workbench.errors import InvalidInputError, NotFoundError
from workbench.lab import Artifact, Lab, validate_name, write_json

STABILITY_SIZES = (10, 30, 100, 300)
REPORT_FILES = ("features.parquet", "frequencies.parquet", "stability.parquet",
                "ablation.parquet", "mean_resid.safetensors", "report.json")


@dataclass
class LangFIRConfig:
    """Settings of a LangFIR run.

    tau: frequency threshold (a candidate fires on at least this share of L's tokens).
    tau_r: random-token filter (a kept feature fires on less than this share of random tokens).
    min_selectivity: ours, not the paper's: also require p_L(i) >= min_selectivity x
    max_{L' != L} p_L'(i). This reads the other languages' text, so the pick is no longer
    monolingual; None (or 0) gives the paper's monolingual pick.
    max_features: ours: keep at most this many features per language, the most frequent on L
    first (the paper finds typically fewer than five survivors; it reports no cap). None: no cap.
    n_docs: monolingual documents per language for the kept set (train split).
    stability_sizes: document counts at which the kept set is recomputed (10/30/100/300).
    n_random: random-token sequences. ablation_docs: validation documents per language for the
    ablation matrix. guide_docs: installation-guide paragraphs per language for the register
    check. n_ctx: tokens per document (None: the model's context). batch_size: documents per
    forward pass. seed: random tokens and document order.
    """

    tau: float = 0.05
    tau_r: float = 0.2
    min_selectivity: float | None = 5.0
    max_features: int | None = 5
    n_docs: int = 100
    stability_sizes: tuple[int, ...] = STABILITY_SIZES
    n_random: int = 100
    ablation_docs: int = 16
    guide_docs: int = 40
    n_ctx: int | None = None
    batch_size: int = 32
    seed: int = 0

    def validate(self) -> None:
        for label in ("tau", "tau_r"):
            value = getattr(self, label)
            if not (isinstance(value, (int, float)) and 0.0 < value <= 1.0):
                raise InvalidInputError(f"{label} must lie in (0, 1], got {value!r}")
        for label in ("n_docs", "n_random", "ablation_docs", "batch_size"):
            if int(getattr(self, label)) < 1:
                raise InvalidInputError(f"{label} must be >= 1, got {getattr(self, label)}")
        if self.min_selectivity is not None and not (
                isinstance(self.min_selectivity, (int, float))
                and math.isfinite(self.min_selectivity) and self.min_selectivity >= 0):
            raise InvalidInputError(f"min_selectivity must be a number >= 0 (or None), got "
                                    f"{self.min_selectivity!r}")
        if self.max_features is not None and int(self.max_features) < 1:
            raise InvalidInputError(f"max_features must be >= 1 (or None for no cap), got "
                                    f"{self.max_features}")
        if any(int(n) < 1 for n in self.stability_sizes):
            raise InvalidInputError(f"stability sizes must be >= 1, got {self.stability_sizes}")


@dataclass
class FeatureStats:
    """Per-feature statistics on one text set: p [d_sae], mu [d_sae], n_tokens, mean_resid [d]."""

    p: torch.Tensor
    mu: torch.Tensor
    n_tokens: int
    mean_resid: torch.Tensor
    resid_norm: float


@dataclass
class LangFIRResult:
    """What `discover` finds (see the module docstring for the tables)."""

    hook: str
    languages: list[str]
    kept: dict[str, list[int]]
    features: pd.DataFrame
    frequencies: pd.DataFrame
    stability: pd.DataFrame
    ablation: pd.DataFrame
    mean_resid: dict[str, torch.Tensor]
    resid_norm: float
    summary: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


# -- statistics ------------------------------------------------------------------------------
class _Accumulator:
    """Running per-document firing counts and activation sums of an SAE over batches."""

    def __init__(self, n_docs: int, d_sae: int, d_model: int):
        self.counts = torch.zeros(n_docs, d_sae)
        self.sums = torch.zeros(n_docs, d_sae)
        self.tokens = torch.zeros(n_docs)
        self.resid_sum = torch.zeros(n_docs, d_model, dtype=torch.float64)
        self.norm_sum = torch.zeros(n_docs, dtype=torch.float64)

    def add(self, doc: torch.Tensor, mask: torch.Tensor, resid: torch.Tensor,
            acts: torch.Tensor) -> None:
        """doc [b], mask [b, pos], resid [b, pos, d], acts [b, pos, d_sae] (all on CPU)."""
        m = mask.float()
        self.counts.index_add_(0, doc, ((acts > 0).float() * m[..., None]).sum(1))
        self.sums.index_add_(0, doc, (acts * m[..., None]).sum(1))
        self.tokens.index_add_(0, doc, m.sum(1))
        self.resid_sum.index_add_(0, doc, (resid.double() * m[..., None].double()).sum(1))
        self.norm_sum.index_add_(0, doc, (resid.double().norm(dim=-1) * m.double()).sum(1))

    def stats(self, n: int | None = None) -> FeatureStats:
        """Statistics over the first n documents (all when None)."""
        sl = slice(0, n)
        tokens = float(self.tokens[sl].sum())
        if tokens == 0:
            raise InvalidInputError("no tokens to compute feature statistics on")
        return FeatureStats(p=self.counts[sl].sum(0) / tokens, mu=self.sums[sl].sum(0) / tokens,
                            n_tokens=int(tokens),
                            mean_resid=(self.resid_sum[sl].sum(0) / tokens).float(),
                            resid_norm=float(self.norm_sum[sl].sum() / tokens))


@torch.no_grad()
def sae_statistics(model, sae, hook: str, docs: Sequence[Sequence[int]],
                   batch_size: int = 32) -> _Accumulator:
    """Run the model to `hook` over the documents (token ids, BOS first) and accumulate the SAE's
    per-document firing counts, activation sums and residual sums (BOS left out)."""
    d_sae, d_model = int(sae.cfg.d_sae), int(sae.cfg.d_in)
    acc = _Accumulator(len(docs), d_sae, d_model)
    pad = pad_id_of(model.tokenizer)
    sae_device = sae.W_dec.device
    for batch in batches(docs, batch_size, pad):
        resid = residuals_at(model, hook, batch.tokens)  # [b, pos, d]
        acts = sae.encode(resid.to(sae_device, sae.W_dec.dtype)).float().cpu()
        acc.add(batch.doc, batch.mask, resid.float().cpu(), acts)
    return acc


def random_token_documents(tokenizer, lengths: Sequence[int], n: int, d_vocab: int,
                           seed: int = 0) -> list[list[int]]:
    """n sequences of BOS + ids uniform over the vocabulary minus special tokens, with lengths
    drawn from `lengths` (the monolingual documents' token counts)."""
    special = set(tokenizer.all_special_ids)
    allowed = torch.tensor([i for i in range(min(d_vocab, len(tokenizer))) if i not in special])
    gen = torch.Generator().manual_seed(seed)
    pool = torch.tensor(list(lengths))
    picks = pool[torch.randint(len(pool), (n,), generator=gen)]
    out = []
    for length in picks.tolist():
        ids = allowed[torch.randint(len(allowed), (max(int(length) - 1, 1),), generator=gen)]
        out.append([tokenizer.bos_token_id, *ids.tolist()])
    return out


def selectivity(p_lang: torch.Tensor, p_others: torch.Tensor | None) -> torch.Tensor:
    """p_L(i) / max_{L' != L} p_L'(i) per feature: p_lang [d_sae], p_others [n_other, d_sae]
    (inf where no other language fires or there is none)."""
    if p_others is None or p_others.shape[0] == 0:
        return torch.full_like(p_lang, float("inf"))
    top = p_others.max(0).values
    return torch.where(top > 0, p_lang / top.clamp_min(1e-12), torch.full_like(p_lang, float("inf")))


def kept_features(p_lang: torch.Tensor, p_rand: torch.Tensor, tau: float, tau_r: float,
                  p_others: torch.Tensor | None = None, min_selectivity: float | None = None,
                  max_features: int | None = None) -> list[int]:
    """The kept features of L, most frequent on L first.

    Paper: K_L = {i : p_L(i) >= tau and p_rand(i) < tau_r} (p_lang, p_rand [d_sae]).
    Ours, both optional: with min_selectivity, also p_L(i) >= min_selectivity x
    max_{L' != L} p_L'(i) (p_others [n_other, d_sae]: the other languages' frequencies; no
    filter without other languages); with max_features, the first max_features of K_L.
    """
    keep = (p_lang >= tau) & (p_rand < tau_r)
    if min_selectivity:
        keep &= selectivity(p_lang, p_others) >= min_selectivity
    idx = torch.nonzero(keep).flatten()
    order = idx[torch.argsort(p_lang[idx], descending=True, stable=True)].tolist()
    return order[:max_features] if max_features else order


def _pick(cfg: LangFIRConfig, lang: str, p: Mapping[str, torch.Tensor], p_rand: torch.Tensor,
          paper: bool = False) -> list[int]:
    """kept_features of `lang` under cfg; `paper`: the paper's pick (tau, tau_r only)."""
    if paper:
        return kept_features(p[lang], p_rand, cfg.tau, cfg.tau_r)
    others = [p[o] for o in p if o != lang]
    return kept_features(p[lang], p_rand, cfg.tau, cfg.tau_r,
                         torch.stack(others) if others else None, cfg.min_selectivity,
                         cfg.max_features)


# -- directional ablation --------------------------------------------------------------------
def ablation_hook(directions: torch.Tensor):
    """A hook projecting the span of directions [k, d] out of the residual [b, pos, d]."""
    q, _ = torch.linalg.qr(directions.T.float())  # [d, k] orthonormal basis of the span

    def hook(resid: torch.Tensor, hook=None) -> torch.Tensor:
        basis = q.to(resid.device, resid.dtype)
        return resid - (resid @ basis) @ basis.T

    return hook


def mean_ce(model, docs: Sequence[Sequence[int]], batch_size: int, fwd_hooks=()) -> float:
    """Mean next-token CE over the documents' real tokens (BOS predicts the first token)."""
    pad = pad_id_of(model.tokenizer)
    total, count = 0.0, 0
    for batch in batches(docs, batch_size, pad):
        losses = token_losses(model, batch.tokens, fwd_hooks)  # [b, pos - 1]
        valid = batch.mask[:, 1:]
        total += float(losses[valid].sum())
        count += int(valid.sum())
    return total / max(count, 1)


def ablation_matrix(model, hook: str, directions: Mapping[str, torch.Tensor],
                    eval_docs: Mapping[str, Sequence[Sequence[int]]],
                    batch_size: int = 32) -> pd.DataFrame:
    """CE per evaluation language with each language's kept directions [k, d] projected out at
    `hook`: rows (ablated, evaluated, ce, ce_base, increase); a language without kept
    features gets no rows."""
    base = {lang: mean_ce(model, docs, batch_size) for lang, docs in eval_docs.items()}
    rows = []
    for ablated, dirs in directions.items():
        if dirs.shape[0] == 0:
            continue
        hooks = [(hook, ablation_hook(dirs))]
        for evaluated, docs in eval_docs.items():
            ce = mean_ce(model, docs, batch_size, hooks)
            rows.append({"ablated": ablated, "evaluated": evaluated, "ce": ce,
                         "ce_base": base[evaluated], "increase": ce - base[evaluated]})
    return pd.DataFrame(rows, columns=["ablated", "evaluated", "ce", "ce_base", "increase"])


def diagonal_dominance(ablation: pd.DataFrame, factor: float = 3.0) -> dict[str, Any]:
    """Per ablated language: own CE increase / mean increase on the others, and whether it is
    at least `factor`; plus the share of languages that pass."""
    ratios = {}
    for lang, rows in ablation.groupby("ablated"):
        own = rows[rows.evaluated == lang].increase
        others = rows[rows.evaluated != lang].increase
        if own.empty or others.empty:
            continue
        mean_other, own_increase = float(others.mean()), float(own.iloc[0])
        if mean_other > 1e-9:
            ratios[lang] = own_increase / mean_other
        else:  # the others do not move: dominant only if the own language's CE rises
            ratios[lang] = float("inf") if own_increase > 1e-9 else 0.0
    passing = [lang for lang, r in ratios.items() if r >= factor]
    return {"ratio": ratios, "passing": passing, "factor": factor,
            "share_passing": len(passing) / len(ratios) if ratios else 0.0}


# -- discovery -------------------------------------------------------------------------------
def check_sae_fits(model, sae, hook: str | None = None) -> str:
    """The SAE's hook, checked: it runs in the model and its width equals the SAE's d_in."""
    from workbench.models.hooks import validate_hook

    meta = getattr(sae.cfg, "metadata", None)
    hook = hook or (meta.hook_name if meta is not None else None)
    if not hook:
        raise InvalidInputError("the SAE names no hook (cfg.metadata.hook_name); pass --hook")
    validate_hook(model, hook)
    width = int(residuals_at(model, hook, torch.zeros(1, 2, dtype=torch.long)).shape[-1])
    if width != int(sae.cfg.d_in):
        raise InvalidInputError(
            f"the SAE reads d_in={sae.cfg.d_in} but the model gives width {width} at {hook!r}; "
            "use an SAE trained on this model's hook"
        )
    return hook


def discover(model, sae, texts: Mapping[str, Sequence[str]], config: LangFIRConfig | None = None,
             eval_texts: Mapping[str, Sequence[str]] | None = None,
             guide_texts: Mapping[str, Sequence[str]] | None = None,
             hook: str | None = None) -> LangFIRResult:
    """LangFIR on a model and an SAE (see the module docstring).

    texts: monolingual documents per language (discovery, stability); eval_texts: held-out
    documents per language for the ablation matrix (default: texts); guide_texts: the
    installation-guide text per language for the register check (optional).
    """
    cfg = config or LangFIRConfig()
    cfg.validate()
    if not texts:
        raise InvalidInputError("LangFIR needs text in at least one language")
    hook = check_sae_fits(model, sae, hook)
    n_ctx = int(cfg.n_ctx or model.cfg.n_ctx)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    langs = list(texts)
    n_stat = max([cfg.n_docs, *cfg.stability_sizes])
    docs = {}
    for lang in langs:
        encoded = [d for d in encode_documents(model.tokenizer, texts[lang][:n_stat], n_ctx)
                   if len(d) >= 2]
        if not encoded:
            raise InvalidInputError(f"language {lang!r} has no text to study; give it documents "
                                    "or leave it out of --languages")
        docs[lang] = encoded
    accs = {lang: sae_statistics(model, sae, hook, docs[lang], cfg.batch_size) for lang in langs}
    lengths = [len(d) for lang in langs for d in docs[lang][:cfg.n_docs]]
    rand_docs = random_token_documents(model.tokenizer, lengths, cfg.n_random,
                                       int(model.cfg.d_vocab), cfg.seed)
    rand = sae_statistics(model, sae, hook, rand_docs, cfg.batch_size).stats()
    stats = {lang: accs[lang].stats(cfg.n_docs) for lang in langs}
    timings["statistics_s"] = time.perf_counter() - t0

    p_all = {lang: stats[lang].p for lang in langs}
    kept = {lang: _pick(cfg, lang, p_all, rand.p) for lang in langs}
    candidates = {lang: _pick(cfg, lang, p_all, rand.p, paper=True) for lang in langs}
    guide = {}
    t1 = time.perf_counter()
    for lang, paragraphs in (guide_texts or {}).items():
        gdocs = [d for d in encode_documents(model.tokenizer, list(paragraphs)[:cfg.guide_docs],
                                             n_ctx) if len(d) >= 2]
        if gdocs:
            guide[lang] = sae_statistics(model, sae, hook, gdocs, cfg.batch_size).stats()
    timings["guide_s"] = time.perf_counter() - t1

    frequencies = _frequency_table(langs, stats, rand, guide)
    features = _kept_table(kept, frequencies, langs, guide)
    stability = _stability_table(langs, accs, rand, cfg)

    t2 = time.perf_counter()
    eval_docs = {}
    for lang in langs:
        source = (eval_texts or {}).get(lang) or texts[lang][-cfg.ablation_docs:]
        encoded = [d for d in encode_documents(model.tokenizer, list(source)[:cfg.ablation_docs],
                                               n_ctx) if len(d) >= 2]
        if encoded:
            eval_docs[lang] = encoded
    w_dec = sae.W_dec.detach().float().cpu()
    directions = {lang: w_dec[kept[lang]] for lang in langs}
    ablation = ablation_matrix(model, hook, directions, eval_docs, cfg.batch_size)
    timings["ablation_s"] = time.perf_counter() - t2

    all_tokens = sum(s.n_tokens for s in stats.values())
    resid_norm = sum(s.resid_norm * s.n_tokens for s in stats.values()) / all_tokens
    summary = _summary(langs, kept, candidates, features, ablation, rand, stats, cfg)
    timings["total_s"] = time.perf_counter() - t0
    return LangFIRResult(hook=hook, languages=langs, kept=kept, features=features,
                         frequencies=frequencies, stability=stability, ablation=ablation,
                         mean_resid={lang: stats[lang].mean_resid for lang in langs},
                         resid_norm=resid_norm, summary=summary, timings=timings)


def _frequency_table(langs, stats, rand, guide) -> pd.DataFrame:
    cols: dict[str, Any] = {"feature": np.arange(rand.p.numel())}
    for lang in langs:
        cols[f"p_{lang}"] = stats[lang].p.numpy()
        cols[f"mu_{lang}"] = stats[lang].mu.numpy()
    cols["p_random"] = rand.p.numpy()
    cols["mu_random"] = rand.mu.numpy()
    for lang, g in guide.items():
        cols[f"guide_p_{lang}"] = g.p.numpy()
    return pd.DataFrame(cols)


def _kept_table(kept, freq: pd.DataFrame, langs, guide) -> pd.DataFrame:
    rows = []
    for lang in langs:
        for rank, i in enumerate(kept[lang]):
            row = freq.iloc[i]
            others = [float(row[f"p_{o}"]) for o in langs if o != lang]
            max_other = max(others) if others else 0.0
            guide_other = [float(row[f"guide_p_{o}"]) for o in guide if o != lang]
            rows.append({
                "language": lang, "rank": rank, "feature": int(i),
                "p_own": float(row[f"p_{lang}"]), "mu_own": float(row[f"mu_{lang}"]),
                "p_random": float(row["p_random"]), "max_p_other": max_other,
                "selectivity": float(row[f"p_{lang}"]) / max_other if max_other > 0 else float("inf"),
                "guide_p_own": float(row[f"guide_p_{lang}"]) if lang in guide else float("nan"),
                "max_guide_p_other": max(guide_other) if guide_other else float("nan"),
                **{f"p_{o}": float(row[f"p_{o}"]) for o in langs},
                **{f"guide_p_{o}": float(row[f"guide_p_{o}"]) for o in guide},
            })
    columns = ["language", "rank", "feature", "p_own", "mu_own", "p_random", "max_p_other",
               "selectivity", "guide_p_own", "max_guide_p_other",
               *[f"p_{o}" for o in langs], *[f"guide_p_{o}" for o in guide]]
    return pd.DataFrame(rows, columns=columns)


def _stability_table(langs, accs, rand, cfg: LangFIRConfig) -> pd.DataFrame:
    """The kept set of every language recomputed from the first n documents of each language
    (n in cfg.stability_sizes), with its Jaccard overlap to the set at the largest n."""
    sizes = sorted(set(cfg.stability_sizes))
    sets: dict[str, dict[int, set[int]]] = {lang: {} for lang in langs}
    used: dict[str, dict[int, int]] = {lang: {} for lang in langs}
    for n in sizes:
        for lang in langs:
            used[lang][n] = min(n, accs[lang].counts.shape[0])
        p_n = {lang: accs[lang].stats(used[lang][n]).p for lang in langs}
        for lang in langs:
            sets[lang][n] = set(_pick(cfg, lang, p_n, rand.p))
    rows = []
    for lang in langs:
        largest = sets[lang][sizes[-1]]
        for n in sizes:
            s = sets[lang][n]
            union = s | largest
            rows.append({"language": lang, "n_docs": n, "docs_used": used[lang][n],
                         "n_kept": len(s), "kept": sorted(s),
                         "jaccard_to_largest": len(s & largest) / len(union) if union else 1.0})
    return pd.DataFrame(rows, columns=["language", "n_docs", "docs_used", "n_kept", "kept",
                                       "jaccard_to_largest"])


def _summary(langs, kept, candidates, features: pd.DataFrame, ablation: pd.DataFrame, rand,
             stats, cfg: LangFIRConfig) -> dict[str, Any]:
    p_all = {lang: stats[lang].p for lang in langs}
    per_lang = {}
    for lang in langs:
        rows = features[features.language == lang]
        others = [p_all[o] for o in langs if o != lang]
        paper_sel = selectivity(p_all[lang], torch.stack(others) if others else None)
        paper_sel = paper_sel[candidates[lang]]
        per_lang[lang] = {
            "n_kept": len(kept[lang]),
            "kept": kept[lang],
            # the paper's pick (tau and tau_r only): its size and how many of it reach 5x
            "n_candidates": len(candidates[lang]),
            "n_candidates_selective_5x": int((paper_sel >= 5.0).sum()),
            "min_selectivity": float(rows.selectivity.min()) if len(rows) else None,
            "n_tokens": stats[lang].n_tokens,
        }
    with_features = [lang for lang in langs if kept[lang]]
    selective = [lang for lang in with_features
                 if per_lang[lang]["min_selectivity"] is not None
                 and per_lang[lang]["min_selectivity"] >= 5.0]
    return {
        "selection": "monolingual (paper)" if not cfg.min_selectivity
        else f"selectivity >= {cfg.min_selectivity:g} (reads the other languages)",
        "languages": per_lang,
        "languages_with_features": with_features,
        "languages_all_selective_5x": selective,
        "ablation_dominance": diagonal_dominance(ablation) if len(ablation) else {},
        "random_tokens": rand.n_tokens,
        "mean_feature_frequency": float(torch.stack([s.p for s in stats.values()]).mean()),
    }


# -- lab artifact ----------------------------------------------------------------------------
def lab_names(lab: Lab, specs: Sequence[str]) -> list[str]:
    """The specs that name artifacts of the lab (paths and hub ids are not parents)."""
    out = []
    for spec in specs:
        name = str(spec).partition("@")[0]
        try:
            if lab.exists(name):
                out.append(name)
        except InvalidInputError:
            continue
    return out


@dataclass
class LangFIRReport:
    """A stored LangFIR report, read back."""

    artifact: Artifact
    meta: dict[str, Any]
    features: pd.DataFrame
    frequencies: pd.DataFrame
    stability: pd.DataFrame
    ablation: pd.DataFrame
    mean_resid: dict[str, torch.Tensor]

    @property
    def name(self) -> str:
        return self.artifact.name

    @property
    def languages(self) -> list[str]:
        return list(self.meta["languages"])

    def kept(self, language: str) -> list[int]:
        self.check_language(language)
        return [int(i) for i in self.meta["summary"]["languages"][language]["kept"]]

    def check_language(self, language: str) -> str:
        if language not in self.languages:
            raise NotFoundError(f"the LangFIR report {self.name!r} has no language {language!r}; "
                                f"it covers {', '.join(self.languages)}")
        return language


def corpus_texts(corpus, languages: Sequence[str] | None, split: str):
    """{language: texts} of a corpus split, checking the languages against the corpus."""
    frame = corpus.frame(split)
    have = sorted(set(corpus.languages) | set(frame.language.unique()))
    langs = list(languages) if languages else list(corpus.languages)
    unknown = [lang for lang in langs if lang not in have]
    if unknown:
        raise NotFoundError(f"unknown language(s) {', '.join(unknown)} in corpus "
                            f"{corpus.name!r}; it has {', '.join(have)}")
    out = {}
    for lang in langs:
        texts = frame[frame.language == lang].text.tolist()
        if not texts:
            raise InvalidInputError(f"language {lang!r} has no text in the {split} split of "
                                    f"corpus {corpus.name!r}; leave it out of --languages")
        out[lang] = texts
    return out


def run_langfir(lab: Lab, name: str, model: str, sae: str, corpus: str,
                languages: Sequence[str] | None = None, config: LangFIRConfig | None = None,
                overwrite: bool = False, device: str | None = None) -> Artifact:
    """Run LangFIR on lab (or any loadable) model/SAE/corpus and store the report `name`."""
    from saes import load_sae
    from workbench.data.store import load_corpus
    from workbench.models.loading import load_model

    validate_name(name)
    cfg = config or LangFIRConfig()
    cfg.validate()
    if lab.exists(name) and not overwrite:
        raise InvalidInputError(f"artifact {name!r} already exists; pick another --name or pass "
                                "--overwrite")
    corp = load_corpus(lab, corpus)
    texts = corpus_texts(corp, languages, "train")
    try:
        held_out = corpus_texts(corp, list(texts), "validation")
    except InvalidInputError:
        held_out = None
    parallel = corp.parallel()
    guide = None
    if parallel is not None and len(parallel):
        guide = {lang: rows.text.tolist() for lang, rows in parallel.groupby("language")}
    lm = load_model(model, lab=lab, device=device)
    sae_obj = load_sae(sae, lab=lab, device=device)
    with lab.job("langfir", name, {"model": model, "sae": sae, "corpus": corpus,
                                   **asdict(cfg)}, total=1) as job:
        result = discover(lm, sae_obj, texts, cfg, eval_texts=held_out, guide_texts=guide)
        job.update(1, force=True, **result.timings)
    return write_report(lab, name, result, cfg, parents=[model, sae, corpus],
                        sources={"model": model, "sae": sae, "corpus": corpus},
                        overwrite=overwrite)


def write_report(lab: Lab, name: str, result: LangFIRResult, cfg: LangFIRConfig,
                 parents: Sequence[str], sources: dict[str, str],
                 overwrite: bool = False) -> Artifact:
    lab_parents = lab_names(lab, parents)
    meta = {"hook": result.hook, "languages": result.languages, "resid_norm": result.resid_norm,
            "config": asdict(cfg), "summary": result.summary, "timings": result.timings,
            **sources}
    with lab.new_artifact("langfir", name, parents=lab_parents, config=asdict(cfg),
                          overwrite=overwrite) as art:
        result.features.to_parquet(art.path / "features.parquet", index=False)
        result.frequencies.to_parquet(art.path / "frequencies.parquet", index=False)
        result.stability.to_parquet(art.path / "stability.parquet", index=False)
        result.ablation.to_parquet(art.path / "ablation.parquet", index=False)
        save_file({lang: v.contiguous() for lang, v in result.mean_resid.items()},
                  str(art.path / "mean_resid.safetensors"))
        write_json(art.path / "report.json", meta)
        art.manifest.update({"hook": result.hook, "languages": result.languages, **sources})
        art.metrics.update({
            "n_kept": {lang: len(v) for lang, v in result.kept.items()},
            "ablation_share_dominant": result.summary.get("ablation_dominance", {}).get(
                "share_passing"),
            "total_s": result.timings.get("total_s"),
        })
    return lab.get(name, kind="langfir")


def load_report(lab: Lab, name: str) -> LangFIRReport:
    art = lab.get(name, kind="langfir")
    missing = [f for f in REPORT_FILES if not (art.path / f).exists()]
    if missing:
        raise InvalidInputError(f"the LangFIR report {name!r} lacks {missing}; run "
                                "`workbench langfir run` again with --overwrite")
    meta = json.loads((art.path / "report.json").read_text())
    return LangFIRReport(
        artifact=art, meta=meta,
        features=pd.read_parquet(art.path / "features.parquet"),
        frequencies=pd.read_parquet(art.path / "frequencies.parquet"),
        stability=pd.read_parquet(art.path / "stability.parquet"),
        ablation=pd.read_parquet(art.path / "ablation.parquet"),
        mean_resid=load_file(str(art.path / "mean_resid.safetensors")),
    )
