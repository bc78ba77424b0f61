"""LangFIR on the constructed case (planted language features + a generic feature), its report
artifact, and clear errors that write nothing."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from fixtures_steering import HOOK0, planted_setup

from steering.langfir import LangFIRConfig, discover, kept_features, load_report, run_langfir
from workbench.errors import InvalidInputError, NotFoundError


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_setup(tmp_path_factory.mktemp("planted") / "lab")


def _config(planted, **kw):
    tau = 0.5 * min(planted.coverage.values())
    return LangFIRConfig(**{"tau": tau, "tau_r": 0.08, "n_docs": 60, "n_random": 60,
                            "ablation_docs": 8, "stability_sizes": (10, 30, 60), **kw})


def test_keeps_exactly_the_planted_features(planted):
    assert min(planted.coverage.values()) > 0.08, planted.coverage
    texts = {lang: planted.corpus.texts("train", lang) for lang in planted.languages}
    result = discover(planted.model, planted.sae, texts, _config(planted))
    assert result.hook == HOOK0
    assert result.kept == {lang: [planted.planted[lang]] for lang in planted.languages}
    freq = result.frequencies
    assert freq.p_random[planted.generic] > 0.99  # the generic feature fires on random tokens ...
    for lang in planted.languages:  # ... and on every language: a candidate the filter drops
        assert freq[f"p_{lang}"][planted.generic] > 0.99
    feats = result.features.set_index("language")
    for lang in planted.languages:
        assert feats.loc[lang, "selectivity"] >= 5.0
    # the ablation matrix: every ablated language against every evaluated one
    assert set(zip(result.ablation.ablated, result.ablation.evaluated)) == {
        (a, e) for a in planted.languages for e in planted.languages}
    assert result.mean_resid[planted.languages[0]].shape == (planted.model.cfg.d_model,)
    stab = result.stability[result.stability.n_docs == 60]
    assert (stab.jaccard_to_largest == 1.0).all()


def test_kept_features_paper_pick_selectivity_and_cap():
    #                       0     1     2     3     4     5
    p_lang = torch.tensor([0.90, 0.80, 0.70, 0.60, 0.01, 0.65])
    p_rand = torch.tensor([0.01, 0.01, 0.50, 0.00, 0.00, 0.05])
    p_others = torch.tensor([[0.05, 0.40, 0.70, 0.00, 0.00, 0.10],
                             [0.02, 0.10, 0.60, 0.00, 0.00, 0.05]])
    # the paper's pick: frequent on L (tau) and quiet on random tokens (tau_r); 2 is generic
    assert kept_features(p_lang, p_rand, 0.05, 0.2) == [0, 1, 5, 3]
    # ours: 1 fires half as often on another language (selectivity 2) and goes
    assert kept_features(p_lang, p_rand, 0.05, 0.2, p_others, 5.0) == [0, 5, 3]
    assert kept_features(p_lang, p_rand, 0.05, 0.2, p_others, 5.0, max_features=2) == [0, 5]
    assert kept_features(p_lang, p_rand, 0.05, 0.2, max_features=1) == [0]
    # no other language: nothing to compare with, so no selectivity filter
    assert kept_features(p_lang, p_rand, 0.05, 0.2, None, 5.0) == [0, 1, 5, 3]


def test_selectivity_pick_drops_features_shared_with_another_language(planted):
    """A second copy of German text makes the German feature fire as often on another
    "language": the paper's monolingual pick keeps it for both, the selectivity pick for
    neither, and every other language keeps its planted feature either way."""
    texts = {lang: planted.corpus.texts("train", lang) for lang in planted.languages}
    texts["de2"] = texts["de"]
    cfg = _config(planted, min_selectivity=None, stability_sizes=(60,))
    paper = discover(planted.model, planted.sae, texts, cfg)
    assert paper.kept["de"] == paper.kept["de2"] == [planted.planted["de"]]
    assert paper.summary["selection"] == "monolingual (paper)"
    ours = discover(planted.model, planted.sae, texts,
                    _config(planted, min_selectivity=5.0, stability_sizes=(60,)))
    assert ours.kept["de"] == ours.kept["de2"] == []
    assert ours.summary["languages"]["de"]["n_candidates"] == 1  # the paper's pick, recorded
    for lang in planted.languages:
        if lang != "de":
            assert ours.kept[lang] == [planted.planted[lang]]


def test_report_artifact_round_trip(planted):
    lab = planted.lab
    art = run_langfir(lab, "planted-report", "planted-lm", str(planted.sae_path), "corpus",
                      config=_config(planted))
    assert art.kind == "langfir"
    report = load_report(lab, "planted-report")
    assert report.languages == planted.languages
    for lang in planted.languages:
        assert report.kept(lang) == [planted.planted[lang]]
    assert isinstance(report.features, pd.DataFrame) and len(report.features) == len(planted.languages)
    assert {"ablated", "evaluated", "increase"} <= set(report.ablation.columns)
    assert report.meta["resid_norm"] > 0
    with pytest.raises(NotFoundError, match="no language"):
        report.kept("xx")


def _fails(lab, name, match, exc=InvalidInputError, **kw):
    args = {"model": "planted-lm", "sae": kw.pop("sae"), "corpus": kw.pop("corpus", "corpus")}
    with pytest.raises(exc, match=match):
        run_langfir(lab, name, **args, **kw)
    assert not lab.exists(name)


def test_bad_input_gives_clear_errors_and_writes_nothing(planted, tmp_path):
    from sae_lens import StandardSAE, StandardSAEConfig

    from workbench.data.store import write_split

    lab = planted.lab
    sae = str(planted.sae_path)
    _fails(lab, "bad1", "unknown language", NotFoundError, sae=sae, languages=["en", "xx"])
    # a corpus that lists French but has no French text
    frame = planted.corpus.frame("train")
    with lab.new_artifact("corpus", "no-french") as art:
        write_split(art.path, "train", frame)
        write_split(art.path, "validation", planted.corpus.frame("validation"))
        art.manifest["languages"] = [*planted.languages, "fr"]
    _fails(lab, "bad2", "has no text", sae=sae, corpus="no-french", languages=["en", "fr"])
    narrow = StandardSAE(StandardSAEConfig(d_in=64, d_sae=8))
    narrow.cfg.metadata.hook_name = HOOK0
    narrow.save_model(str(tmp_path / "narrow"))
    _fails(lab, "bad3", "d_in=64", sae=str(tmp_path / "narrow"))
    deep = StandardSAE(StandardSAEConfig(d_in=128, d_sae=8))
    deep.cfg.metadata.hook_name = "blocks.9.hook_resid_post"
    deep.save_model(str(tmp_path / "deep"))
    _fails(lab, "bad4", "no hook", NotFoundError, sae=str(tmp_path / "deep"))
    with pytest.raises(InvalidInputError, match="tau"):
        LangFIRConfig(tau=float("nan")).validate()
    with pytest.raises(InvalidInputError, match="max_features"):
        LangFIRConfig(max_features=0).validate()
    with pytest.raises(InvalidInputError, match="min_selectivity"):
        LangFIRConfig(min_selectivity=float("nan")).validate()
    _fails(lab, "bad5", "max_features", sae=sae, config=LangFIRConfig(max_features=-1))
    with pytest.raises(InvalidInputError, match="at least one"):
        discover(planted.model, planted.sae, {})
    assert torch.isfinite(planted.sae.W_dec).all()


# -- vectors from the report, the steer commands ---------------------------------------------
def _cli(monkeypatch, capsys, lab, *args):
    from app.cli import main

    monkeypatch.setenv("WORKBENCH_LAB", str(lab.root))
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_report_vectors_by_method(planted):
    from steering.langfir import load_report
    from steering.making import METHODS, make_report_vectors, vector_from_report
    from steering.vectors import SteeringVector

    lab = planted.lab
    if not lab.exists("planted-report"):
        run_langfir(lab, "planted-report", "planted-lm", str(planted.sae_path), "corpus",
                    config=_config(planted))
    report = load_report(lab, "planted-report")
    for lang in planted.languages:
        vec = vector_from_report(report, lang, "langfir", planted.sae)
        planted_dir = planted.sae.W_dec[planted.planted[lang]]
        assert torch.allclose(vec.directions[HOOK0], planted_dir / planted_dir.norm(), atol=1e-5)
        assert vec.features[0]["index"] == planted.planted[lang]
        diff = vector_from_report(report, lang, "diffmean")
        # DiffMean finds the planted direction too: the language's mean residual carries e_L
        cos = float(diff.directions[HOOK0] @ vec.directions[HOOK0])
        assert cos > 0.3, (lang, cos)
        sd = vector_from_report(report, lang, "saediff", planted.sae)
        assert sd.features[0]["index"] == planted.planted[lang]
    arts = make_report_vectors(lab, "planted-report", overwrite=True)
    assert {a.name for a in arts} == {f"planted-report-{lang}-{m}" for lang in planted.languages
                                      for m in METHODS}
    back = SteeringVector.from_lab(lab, "planted-report-de-langfir")
    assert back.language == "de" and back.method == "langfir" and back.layers == [0]
    with pytest.raises(InvalidInputError, match="unknown method"):
        vector_from_report(report, "de", "lape", planted.sae)


def test_steer_commands(planted, monkeypatch, capsys):
    lab = planted.lab
    if not lab.exists("planted-report"):
        run_langfir(lab, "planted-report", "planted-lm", str(planted.sae_path), "corpus",
                    config=_config(planted))
    code, out, err = _cli(monkeypatch, capsys, lab, "langfir", "show", "planted-report")
    assert code == 0, err
    assert "CE increase" in out and "kept features by number of documents" in out
    code, out, err = _cli(monkeypatch, capsys, lab, "steer", "make", "feat-vec", "--from-feature",
                          f"{planted.sae_path}:{planted.planted['ru']}", "--strength", "3")
    assert code == 0, err
    code, out, err = _cli(monkeypatch, capsys, lab, "steer", "show", "feat-vec", "--json")
    assert code == 0 and '"method": "feature"' in out and '"strength": 3.0' in out
    code, out, err = _cli(monkeypatch, capsys, lab, "steer", "generate", "feat-vec",
                          "--prompt", "Hallo", "--prompt", "The cat", "--max-new-tokens", "5")
    assert code == 0, err
    assert out.count("unsteered:") == 4 and "sampled" in out
    code, out, err = _cli(monkeypatch, capsys, lab, "steer", "generate", "--feature",
                          f"{planted.sae_path}:{planted.planted['de']}", "--clamp", "20",
                          "--prompt", "The cat", "--max-new-tokens", "4")
    assert code == 0, err
    code, out, err = _cli(monkeypatch, capsys, lab, "steer", "generate", "feat-vec", "--prompt",
                          "x", "--strength", "nan")
    assert code == 2 and err.startswith("error: ") and "finite" in err
    code, out, err = _cli(monkeypatch, capsys, lab, "steer", "eval", "planted-report",
                          "--name", "planted-eval", "--targets", "ru", "--strengths", "0,8",
                          "--prompts-per-source", "2", "--max-new-tokens", "6")
    assert code == 0, err
    assert lab.get("planted-eval").kind == "analysis"
    summary = pd.read_parquet(lab.get("planted-eval").path / "summary.parquet")
    assert set(summary.strength) == {0.0, 8.0} and set(summary.target) == {"ru"}
    assert {"accuracy", "accuracy_langdetect", "fluency_ce", "bleu"} <= set(summary.columns)
    code, out, err = _cli(monkeypatch, capsys, lab, "langfir", "run", "--model", "planted-lm",
                          "--sae", str(planted.sae_path), "--corpus", "corpus", "--name",
                          "paper-pick", "--tau", str(_config(planted).tau), "--tau-r", "0.08",
                          "--min-selectivity", "0", "--max-features", "0", "--n-docs", "30",
                          "--no-vectors", "--json")
    assert code == 0, err
    meta = load_report(lab, "paper-pick").meta
    assert meta["config"]["min_selectivity"] is None and meta["config"]["max_features"] is None
    assert meta["summary"]["selection"] == "monolingual (paper)"
    code, out, err = _cli(monkeypatch, capsys, lab, "langfir", "run", "--model", "planted-lm",
                          "--sae", str(planted.sae_path), "--corpus", "corpus", "--languages",
                          "en,xx", "--name", "never")
    assert code == 2 and "unknown language" in err and not lab.exists("never")


def test_bench_generation_reports_both_timings(planted):
    from steering.bench import bench_generation
    from steering.making import make_report_vectors

    lab = planted.lab
    if not lab.exists("planted-report"):
        run_langfir(lab, "planted-report", "planted-lm", str(planted.sae_path), "corpus",
                    config=_config(planted))
        make_report_vectors(lab, "planted-report")
    elif not lab.exists("planted-report-de-langfir"):
        make_report_vectors(lab, "planted-report")
    fig = bench_generation(lab, "planted-report-de-langfir", n_prompts=2, max_new_tokens=3,
                           repeats=1)
    assert fig["unsteered_min_wall_s"] > 0 and fig["steered_median_cpu_s"] > 0
    assert "overhead_median_cpu_pct" in fig


def test_steer_make_from_a_tensor_file(planted, monkeypatch, capsys, tmp_path):
    import numpy as np

    from steering.vectors import SteeringVector

    lab = planted.lab
    np.save(tmp_path / "dir.npy", np.arange(128, dtype=np.float32))
    code, _out, err = _cli(monkeypatch, capsys, lab, "steer", "make", "file-vec", "--from-file",
                          str(tmp_path / "dir.npy"), "--hook", HOOK0, "--model", "planted-lm")
    assert code == 0, err
    vec = SteeringVector.from_lab(lab, "file-vec")
    expected = torch.arange(128, dtype=torch.float32)
    assert torch.allclose(vec.directions[HOOK0], expected / expected.norm())
    assert vec.resid_norm[HOOK0] > 0
    np.save(tmp_path / "short.npy", np.ones(64, dtype=np.float32))
    code, _out, err = _cli(monkeypatch, capsys, lab, "steer", "make", "short-vec", "--from-file",
                          str(tmp_path / "short.npy"), "--hook", HOOK0, "--model", "planted-lm")
    assert code == 2 and "needs [128]" in err and not lab.exists("short-vec")


def test_diagonal_dominance_needs_the_own_language_to_rise():
    import pandas as pd

    from steering.langfir import diagonal_dominance

    rows = []
    for ablated, own, other in (("a", 0.30, 0.05), ("b", -0.01, -0.002), ("c", 0.02, 0.0)):
        for evaluated in "abc":
            rows.append({"ablated": ablated, "evaluated": evaluated,
                         "increase": own if evaluated == ablated else other})
    dom = diagonal_dominance(pd.DataFrame(rows))
    assert dom["ratio"]["a"] == pytest.approx(6.0)
    # others falling a little while the own language falls too: not dominant (was inf)
    assert dom["ratio"]["b"] == 0.0
    assert dom["passing"] == ["a", "c"]
