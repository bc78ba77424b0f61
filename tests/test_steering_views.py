"""The dashboard's views of a LangFIR report (steering.report_views) on a hand-made report with
known numbers, the stored steering evaluations read back (steering.evaluation), and exports as
in-memory files (steering.export.export_files)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from steering import report_views as views
from steering.langfir import LangFIRReport
from workbench.errors import InvalidInputError

LANGS = ["en", "de", "fr"]
# feature -> (language it is kept for, p per language, p_random, p on each guide text)
KEPT = {
    10: ("en", {"en": 0.5, "de": 0.05, "fr": 0.02}, 0.01, {"en": 0.4, "de": 0.04, "fr": 0.02}),
    11: ("en", {"en": 0.4, "de": 0.1, "fr": 0.0}, 0.02, {"en": 0.3, "de": 0.02, "fr": 0.2}),
    20: ("de", {"en": 0.01, "de": 0.6, "fr": 0.03}, 0.03, {"en": 0.01, "de": 0.5, "fr": 0.05}),
}


class _Art:
    name = "hand-made"


def _report(guides=("en", "de", "fr")) -> LangFIRReport:
    freq = pd.DataFrame({"feature": range(30)})
    for lang in LANGS:
        freq[f"p_{lang}"] = 0.001
        freq[f"mu_{lang}"] = 0.0
    freq["p_random"] = 0.001
    for g in guides:
        freq[f"guide_p_{g}"] = 0.0
    rows = []
    rank = {}
    for feature, (lang, p, p_rand, guide) in KEPT.items():
        for other in LANGS:
            freq.loc[feature, f"p_{other}"] = p[other]
        freq.loc[feature, "p_random"] = p_rand
        for g in guides:
            freq.loc[feature, f"guide_p_{g}"] = guide[g]
        max_other = max(p[o] for o in LANGS if o != lang)
        rows.append({"language": lang, "rank": rank.setdefault(lang, 0), "feature": feature,
                     "p_own": p[lang], "mu_own": 1.0, "p_random": p_rand,
                     "max_p_other": max_other, "selectivity": p[lang] / max_other,
                     "guide_p_own": guide.get(lang, math.nan) if lang in guides else math.nan,
                     "max_guide_p_other": max(guide[g] for g in guides if g != lang)
                     if len([g for g in guides if g != lang]) else math.nan,
                     **{f"p_{o}": p[o] for o in LANGS},
                     **{f"guide_p_{g}": guide[g] for g in guides}})
        rank[lang] += 1
    features = pd.DataFrame(rows)
    stability = pd.DataFrame([  # deliberately not in the report's language order
        {"language": "de", "n_docs": 30, "docs_used": 30, "n_kept": 1, "kept": [20],
         "jaccard_to_largest": 1.0},
        {"language": "en", "n_docs": 30, "docs_used": 30, "n_kept": 2, "kept": [10, 11],
         "jaccard_to_largest": 1.0},
        {"language": "en", "n_docs": 10, "docs_used": 10, "n_kept": 1, "kept": [10],
         "jaccard_to_largest": 0.5},
        {"language": "de", "n_docs": 10, "docs_used": 10, "n_kept": 1, "kept": [20],
         "jaccard_to_largest": 1.0},
        {"language": "fr", "n_docs": 10, "docs_used": 10, "n_kept": 0, "kept": [],
         "jaccard_to_largest": 1.0},
        {"language": "fr", "n_docs": 30, "docs_used": 20, "n_kept": 0, "kept": [],
         "jaccard_to_largest": 1.0},
    ])
    increase = {("en", "en"): 0.9, ("en", "de"): 0.1, ("en", "fr"): 0.2,
                ("de", "en"): 0.1, ("de", "de"): 0.3, ("de", "fr"): 0.2}
    ablation = pd.DataFrame([{"ablated": a, "evaluated": e, "ce": 3.0 + v, "ce_base": 3.0,
                              "increase": v} for (a, e), v in increase.items()])
    meta = {"languages": LANGS, "hook": "blocks.1.hook_resid_post", "model": "m", "sae": "s",
            "resid_norm": 2.0, "summary": {}}
    return LangFIRReport(artifact=_Art(), meta=meta, features=features, frequencies=freq,
                         stability=stability, ablation=ablation, mean_resid={})


def test_kept_summary_and_selectivity_table():
    rep = _report()
    kept = views.kept_summary(rep).set_index("language")
    assert list(kept.index) == LANGS
    assert kept.loc["en", "features"] == [10, 11] and kept.loc["de", "features"] == [20]
    assert kept.loc["fr", "n_kept"] == 0 and math.isnan(kept.loc["fr", "min_selectivity"])
    assert kept.loc["en", "min_selectivity"] == pytest.approx(4.0)  # feature 11: 0.4 / 0.1
    assert kept.loc["en", "max_p_random"] == pytest.approx(0.02)
    sel = views.selectivity_table(rep)
    assert list(sel.columns) == ["language", "feature", "selectivity", "p_random", "p_en",
                                 "p_de", "p_fr"]
    assert sel[sel.feature == 20].p_de.iloc[0] == pytest.approx(0.6)


def test_stability_and_ablation_pivots_keep_the_report_order():
    rep = _report()
    n_kept = views.stability_pivot(rep)
    assert list(n_kept.index) == LANGS and list(n_kept.columns) == [10, 30]
    assert n_kept.loc["en"].tolist() == [1, 2]
    assert views.stability_pivot(rep, "jaccard_to_largest").loc["en", 10] == 0.5
    with pytest.raises(ValueError):
        views.stability_pivot(rep, "docs")
    matrix = views.ablation_pivot(rep)
    assert list(matrix.index) == ["en", "de"] and list(matrix.columns) == LANGS
    assert matrix.loc["en", "en"] == pytest.approx(0.9)
    assert views.ablation_pivot(rep, "ce").loc["de", "fr"] == pytest.approx(3.2)
    dom = views.dominance_table(rep).set_index("language")
    assert dom.loc["en", "ratio"] == pytest.approx(0.9 / 0.15) and dom.loc["en", "dominant"]
    assert dom.loc["de", "ratio"] == pytest.approx(2.0) and not dom.loc["de", "dominant"]
    assert dom.loc["de", "mean_other_increase"] == pytest.approx(0.1 + 0.05)


def test_register_matrix_and_check():
    rep = _report()
    matrix = views.register_matrix(rep)
    assert list(matrix.index) == ["en", "de"] and list(matrix.columns) == LANGS
    assert matrix.loc["en", "fr"] == pytest.approx((0.02 + 0.2) / 2)
    check = views.register_check(rep).set_index("language")
    assert "fr" not in check.index  # no kept features
    # feature 11 fires on 20% of the French guide text against 40% of English: 2x < 5x
    assert check.loc["en", "loudest_on"] == "fr"
    assert check.loc["en", "max_guide_p_other"] == pytest.approx(0.2)
    assert check.loc["en", "min_ratio"] == pytest.approx(2.0) and not check.loc["en", "passes"]
    assert check.loc["de", "min_ratio"] == pytest.approx(12.0) and check.loc["de", "passes"]
    assert check.loc["de", "guide_p_own"] == pytest.approx(0.5)


def test_register_check_with_guide_text_for_some_languages_only():
    rep = _report(guides=("en",))
    assert views.guide_languages(rep) == ["en"]
    check = views.register_check(rep).set_index("language")
    assert check.loc["en", "passes"] is None  # no other language's guide text to compare
    assert check.loc["de", "loudest_on"] == "en"
    assert check.loc["de", "min_ratio"] == pytest.approx(0.6 / 0.01)
    assert math.isnan(check.loc["de", "guide_p_own"])


# -- stored evaluations ----------------------------------------------------------------------
def _summary() -> pd.DataFrame:
    rows = []
    for method, acc in (("diffmean", {0.0: 0.0, 2.0: 1.0}), ("langfir", {0.0: 0.0, 2.0: 0.5})):
        for target, shift in (("de", 0.0), ("fr", -0.5)):
            for strength, a in acc.items():
                rows.append({"method": method, "target": target, "strength": strength,
                             "accuracy": max(a + shift, 0.0), "accuracy_langdetect": a,
                             "fluency_ce": 2.0 + strength, "bleu": 10.0, "n": 4,
                             "acc_x_bleu": a * 10.0})
    return pd.DataFrame(rows)


def test_accuracy_by_strength():
    from steering.evaluation import accuracy_by_strength

    curve = accuracy_by_strength(_summary())
    assert list(curve.columns) == ["method", "strength", "accuracy", "fluency_ce", "bleu",
                                   "n_targets"]
    row = curve[(curve.method == "diffmean") & (curve.strength == 2.0)].iloc[0]
    assert row.accuracy == pytest.approx(0.75) and row.n_targets == 2
    one = accuracy_by_strength(_summary(), "fr")
    assert one[(one.method == "langfir") & (one.strength == 2.0)].accuracy.iloc[0] == 0.0
    with pytest.raises(InvalidInputError, match="no target 'xx'"):
        accuracy_by_strength(_summary(), "xx")


def test_stored_evaluations_are_found_and_read(tmp_path):
    from steering.evaluation import best_strengths, load_steer_eval, steer_evals
    from workbench.lab import Lab

    lab = Lab(tmp_path / "lab")
    for name, report in (("ev-a", "rep-a"), ("ev-b", "rep-b")):
        with lab.new_artifact("analysis", name) as art:
            _summary().to_parquet(art.path / "summary.parquet")
            best_strengths(_summary()).to_parquet(art.path / "best.parquet")
            art.manifest.update({"analysis": "steer-eval", "report": report})
    with lab.new_artifact("analysis", "other-analysis") as art:
        art.manifest["analysis"] = "sparsity"
    assert [a.name for a in steer_evals(lab)] == ["ev-a", "ev-b"]
    assert [a.name for a in steer_evals(lab, "rep-b")] == ["ev-b"]
    ev = load_steer_eval(lab, "ev-a")
    assert ev.report == "rep-a" and len(ev.summary) == 8
    assert set(ev.best.strength) == {2.0}
    with pytest.raises(InvalidInputError, match="not a steering evaluation"):
        load_steer_eval(lab, "other-analysis")


# -- exports as files ------------------------------------------------------------------------
def _vector(hook: str = "blocks.1.hook_resid_post"):
    from steering.vectors import SteeringVector

    return SteeringVector.from_tensor(torch.arange(1.0, 9.0), hook, "m", 3.0, method="diffmean",
                                      language="de", strength=2.0)


def test_export_files_for_every_format(tmp_path):
    from steering.export import ModelShape, export_files, read_gguf
    from steering.vectors import SteeringVector

    vec = _vector()
    pair = export_files(vec, "safetensors", "de-vec", strength=4.0)
    assert sorted(pair) == ["de-vec.json", "de-vec.safetensors"]
    for file, data in pair.items():
        (tmp_path / file).write_bytes(data)
    back = SteeringVector.load(tmp_path / "de-vec")
    assert back.strength == 4.0 and torch.allclose(back.directions[vec.hooks[0]],
                                                   vec.directions[vec.hooks[0]])
    gguf = export_files(vec, "gguf", "de-vec", model=ModelShape(8, 2, "gpt2"))
    (tmp_path / "de-vec.gguf").write_bytes(gguf["de-vec.gguf"])
    meta, tensors = read_gguf(tmp_path / "de-vec.gguf")
    assert meta["controlvector.model_hint"] == "gpt2"
    assert torch.allclose(torch.from_numpy(tensors["direction.1"]), vec.delta(vec.hooks[0]))
    body = json.loads(export_files(vec, "neuronpedia", "de-vec")["de-vec.neuronpedia.json"])
    assert body["vectors"][0]["hook"] == vec.hooks[0] and body["vectors"][0]["strength"] == 2.0


def test_export_files_refuses_what_the_format_cannot_hold():
    from steering.export import ModelShape, export_files

    with pytest.raises(InvalidInputError, match="block 0"):
        export_files(_vector("blocks.0.hook_resid_post"), "gguf", "v")
    with pytest.raises(InvalidInputError, match="d_model"):
        export_files(_vector(), "safetensors", "v", model=ModelShape(16, 2))
    with pytest.raises(InvalidInputError, match="unknown export format"):
        export_files(_vector(), "onnx", "v")
    with pytest.raises(InvalidInputError, match="file name stem"):
        export_files(_vector(), "neuronpedia", "")
