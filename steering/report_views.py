"""Tables of a stored LangFIR report in the shapes the dashboard and the CLI show.

All take a `steering.langfir.LangFIRReport` and return DataFrames (no computation on the model):

    kept_summary(report)        one row per language: kept features, worst selectivity, ...
    selectivity_table(report)   one row per kept feature: its frequency on every language and
                                on random tokens (columns `p_<lang>`, `p_random`)
    stability_pivot(report)     languages x document counts (10/30/100/300): kept-set size or
                                Jaccard similarity to the largest sample's kept set
    ablation_pivot(report)      ablated language x evaluated language: CE increase (or CE)
    dominance_table(report)     one row per ablated language: own CE increase, mean increase
                                on the others, their ratio and whether it is >= 3 (the goal)
    register_matrix(report)     kept-feature language x installation-guide language: the mean
                                firing frequency of L's kept features on G's guide text
    register_check(report)      one row per language: do L's features stay quiet on the other
                                languages' guide text (language, not register)?

Languages keep the report's order everywhere. The register check compares a kept feature's
frequency on its own language's text (p_own) with its highest frequency on another language's
installation-guide paragraphs; a language passes when every kept feature fires at least
REGISTER_FACTOR times more often on its own text (the same bar as the selectivity goal).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from steering.langfir import LangFIRReport, diagonal_dominance

REGISTER_FACTOR = 5.0
DOMINANCE_FACTOR = 3.0  # the ablation goal: own increase >= 3x the mean on the others


def _ratio(num: float, den: float) -> float:
    if not math.isfinite(num) or not math.isfinite(den):
        return float("nan")
    return num / den if den > 0 else float("inf")


def kept_summary(report: LangFIRReport) -> pd.DataFrame:
    """Per language: n_kept, features (list of indices, most frequent first), min_selectivity,
    max_p_random and max_guide_p_other over its kept features (NaN without kept features)."""
    feats = report.features
    rows = []
    for lang in report.languages:
        mine = feats[feats.language == lang].sort_values("rank")
        rows.append({
            "language": lang, "n_kept": len(mine),
            "features": [int(i) for i in mine.feature],
            "min_selectivity": float(mine.selectivity.min()) if len(mine) else float("nan"),
            "max_p_random": float(mine.p_random.max()) if len(mine) else float("nan"),
            "max_guide_p_other": (float(mine.max_guide_p_other.max())
                                  if len(mine) else float("nan")),
        })
    return pd.DataFrame(rows, columns=["language", "n_kept", "features", "min_selectivity",
                                       "max_p_random", "max_guide_p_other"])


def selectivity_table(report: LangFIRReport) -> pd.DataFrame:
    """One row per kept feature: language, feature, selectivity (p_own / max other language),
    p_random, then p_<lang> for every language of the report."""
    langs = report.languages
    cols = ["language", "feature", "selectivity", "p_random", *[f"p_{lang}" for lang in langs]]
    return report.features[cols].reset_index(drop=True)


def stability_pivot(report: LangFIRReport, values: str = "n_kept") -> pd.DataFrame:
    """Languages (rows, report order) x n_docs (columns, ascending) of `values` ("n_kept" or
    "jaccard_to_largest")."""
    if values not in ("n_kept", "jaccard_to_largest"):
        raise ValueError(f"values must be n_kept or jaccard_to_largest, got {values!r}")
    table = report.stability.pivot(index="language", columns="n_docs", values=values)
    order = [lang for lang in report.languages if lang in table.index]
    return table.loc[order, sorted(table.columns)]


def ablation_pivot(report: LangFIRReport, values: str = "increase") -> pd.DataFrame:
    """Ablated language (rows) x evaluated language (columns) of `values` ("increase": CE with
    the ablated language's kept directions projected out minus the base CE; or "ce"). Languages
    without kept features have no row."""
    if values not in ("increase", "ce"):
        raise ValueError(f"values must be increase or ce, got {values!r}")
    abl = report.ablation
    if abl.empty:
        return pd.DataFrame(index=pd.Index([], name="ablated"),
                            columns=pd.Index([], name="evaluated"), dtype=float)
    table = abl.pivot(index="ablated", columns="evaluated", values=values)
    rows = [lang for lang in report.languages if lang in table.index]
    cols = [lang for lang in report.languages if lang in table.columns]
    return table.loc[rows, cols]


def dominance_table(report: LangFIRReport, factor: float = DOMINANCE_FACTOR) -> pd.DataFrame:
    """Per ablated language: own_increase (CE increase on its own text when its kept directions
    are projected out), mean_other_increase (mean over the other evaluated languages), ratio
    own / mean other and dominant (ratio >= factor), as `steering.langfir.diagonal_dominance`
    judges them."""
    table = ablation_pivot(report)
    judged = diagonal_dominance(report.ablation, factor) if len(report.ablation) else {}
    rows = []
    for lang in table.index:
        if lang not in judged.get("ratio", {}):
            continue
        others = table.loc[lang].drop(lang).dropna()
        rows.append({"language": lang, "own_increase": float(table.loc[lang, lang]),
                     "mean_other_increase": float(others.mean()),
                     "ratio": judged["ratio"][lang], "dominant": lang in judged["passing"]})
    return pd.DataFrame(rows, columns=["language", "own_increase", "mean_other_increase",
                                       "ratio", "dominant"])


def guide_languages(report: LangFIRReport) -> list[str]:
    """The languages whose installation-guide text the report measured (report order)."""
    have = {c[len("guide_p_"):] for c in report.frequencies.columns if c.startswith("guide_p_")}
    return [lang for lang in report.languages if lang in have]


def register_matrix(report: LangFIRReport) -> pd.DataFrame:
    """Kept-feature language L (rows) x guide language G (columns): mean over L's kept features
    of their firing frequency on G's installation-guide paragraphs. Rows only for languages
    with kept features; empty without guide text."""
    guides = guide_languages(report)
    feats = report.features
    rows = {}
    for lang in report.languages:
        mine = feats[feats.language == lang]
        if len(mine):
            rows[lang] = [float(mine[f"guide_p_{g}"].mean()) for g in guides]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=guides, dtype=float)
    table.index.name, table.columns.name = "features of", "guide text of"
    return table


def register_check(report: LangFIRReport, factor: float = REGISTER_FACTOR) -> pd.DataFrame:
    """Per language with kept features: p_own (mean over its kept features on its own text),
    guide_p_own (on its own guide text, NaN without one), max_guide_p_other (the highest
    frequency of one of its features on another language's guide text) with that language
    (loudest_on), min_ratio (min over kept features of p_own / max_guide_p_other) and passes
    (min_ratio >= factor; None when no other language has guide text)."""
    guides = guide_languages(report)
    feats = report.features
    rows = []
    for lang in report.languages:
        mine = feats[feats.language == lang]
        if not len(mine):
            continue
        others = [g for g in guides if g != lang]
        if others:
            other = mine[[f"guide_p_{g}" for g in others]].to_numpy()  # [kept, other guides]
            worst = np.unravel_index(int(np.argmax(other)), other.shape)
            max_other = float(other[worst])
            loudest = others[int(worst[1])]
            ratios = [_ratio(float(p), float(m)) for p, m in zip(mine.p_own, other.max(1))]
            min_ratio = min(ratios)
            passes: bool | None = bool(min_ratio >= factor)
        else:
            max_other, loudest, min_ratio, passes = float("nan"), None, float("nan"), None
        rows.append({
            "language": lang, "n_kept": len(mine), "p_own": float(mine.p_own.mean()),
            "guide_p_own": (float(mine[f"guide_p_{lang}"].mean()) if lang in guides
                            else float("nan")),
            "max_guide_p_other": max_other, "loudest_on": loudest, "min_ratio": min_ratio,
            "passes": passes,
        })
    return pd.DataFrame(rows, columns=["language", "n_kept", "p_own", "guide_p_own",
                                       "max_guide_p_other", "loudest_on", "min_ratio",
                                       "passes"])


__all__ = [
    "DOMINANCE_FACTOR",
    "REGISTER_FACTOR",
    "ablation_pivot",
    "dominance_table",
    "guide_languages",
    "kept_summary",
    "register_check",
    "register_matrix",
    "selectivity_table",
    "stability_pivot",
]
