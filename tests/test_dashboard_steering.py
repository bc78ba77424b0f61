"""The LangFIR and steering page with streamlit.testing.v1.AppTest on a small lab (the session's
tiny lab, its SAE `dash-sae`, a small LangFIR report with DiffMean vectors and a steering
evaluation): the report's tables and heatmaps, a playground generation, the evaluation table and
chart, the export downloads; on an empty lab and on partial labs, what is missing and the job
offered through the validated forms (one started and shown finished). Also the steering job
plans of app.dashboard.job_forms."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from fixtures_dashboard import SAE, add_dashboard_saes, assert_clean, open_page
from fixtures_steering import PAGE_EVAL, PAGE_LANGUAGES, PAGE_REPORT, add_steering_artifacts
from streamlit.testing.v1 import AppTest

from app.dashboard.job_forms import plan
from workbench.lab import Lab

PAGE = "views/steering.py"


@pytest.fixture(scope="module")
def steer_lab(tiny_lab):
    return add_steering_artifacts(add_dashboard_saes(tiny_lab))


def _app(monkeypatch, lab: Lab) -> AppTest:
    at = open_page(monkeypatch, lab, PAGE)
    if PAGE_REPORT in [a.name for a in lab.list("langfir")] and \
            at.selectbox(key="steer-report").value != PAGE_REPORT:
        at.selectbox(key="steer-report").select(PAGE_REPORT).run()
    return at


_clean = assert_clean


def _frame(at: AppTest, *columns: str):
    found = [d.value for d in at.dataframe if set(columns) <= set(d.value.columns)]
    assert found, f"no table with columns {columns}"
    return found[0]


def _charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _chart(at: AppTest, title_part: str) -> dict:
    for spec in _charts(at):
        if title_part in json.dumps(spec.get("layout", {}).get("title", "")):
            return spec
    raise AssertionError(f"no chart titled ...{title_part}...")


def _button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def _export_choice(at: AppTest):
    return next(s for s in at.selectbox if s.label == "Vector to export").value


def _downloads(at: AppTest) -> list[str]:
    """The file names the download buttons save (their labels name the file ending)."""
    names = []
    for d in at.get("download_button"):
        name, ending = d.proto.help.split()[1], d.proto.label.removeprefix("Download ")
        assert ending.startswith(".") and name.endswith(ending), (d.proto.label, name)
        names.append(name)
    return names


def test_report_tables_and_heatmaps(steer_lab, monkeypatch):
    from steering.langfir import load_report

    rep = load_report(steer_lab, PAGE_REPORT)
    at = _app(monkeypatch, steer_lab)
    _clean(at)
    assert at.title[0].value == "LangFIR and steering"
    kept = _frame(at, "language", "n_kept", "features", "min_selectivity")
    assert kept.language.tolist() == list(PAGE_LANGUAGES)
    assert kept.n_kept.tolist() == [len(rep.kept(lang)) for lang in PAGE_LANGUAGES]
    sel = _frame(at, "feature", "selectivity", "p_random", *[f"p_{x}" for x in PAGE_LANGUAGES])
    assert len(sel) == len(rep.features)
    _frame(at, "own_increase", "mean_other_increase", "ratio", "dominant")
    _frame(at, "p_own", "max_guide_p_other", "loudest_on", "passes")
    ablation = _chart(at, "projected out")["data"][0]
    assert ablation["type"] == "heatmap"
    assert ablation["y"] == sorted(set(rep.ablation.ablated), key=list(PAGE_LANGUAGES).index)
    assert ablation["x"] == list(PAGE_LANGUAGES)
    assert _chart(at, "installation-guide")["data"][0]["type"] == "heatmap"
    assert _chart(at, "random tokens")["data"][0]["type"] == "heatmap"
    assert len(_chart(at, "Kept features vs documents")["data"]) == len(PAGE_LANGUAGES)


def test_playground_generates_unsteered_and_steered_text(steer_lab, monkeypatch):
    at = _app(monkeypatch, steer_lab)
    at.radio(key="play-source").set_value("a target language of the report").run()
    at.selectbox(key="play-language").select("de").run()
    at.selectbox(key="play-method").select("diffmean").run()
    at.text_input(key="play-prompt").input("The dog").run()
    at.slider(key="play-strength").set_value(8.0).run()
    at.number_input(key="play-temp").set_value(0.0).run()
    at.button(key="play-run").click().run()
    _clean(at)
    unsteered, steered = at.code[-2].value, at.code[-1].value
    assert unsteered.startswith("The dog") and steered.startswith("The dog")
    assert unsteered != steered
    assert any("Steered**: DiffMean to de, strength +8" in m.value for m in at.markdown)
    assert sum("py3langid hears" in c.value for c in at.caption) == 2
    # a LangFIR vector the lab does not store: made from the report on the fly
    at.selectbox(key="play-method").select("langfir").run()
    _clean(at)
    if any("is not stored" in c.value for c in at.caption):
        at.button(key="play-run").click().run()
        _clean(at)
        assert at.code[-1].value.startswith("The dog")


def test_evaluation_table_and_accuracy_chart(steer_lab, monkeypatch):
    from steering.evaluation import load_steer_eval

    ev = load_steer_eval(steer_lab, PAGE_EVAL)
    at = _app(monkeypatch, steer_lab)
    _clean(at)
    best = _frame(at, "method", "target", "strength", "accuracy", "fluency_ce", "bleu")
    assert len(best) == len(ev.best)
    full = [d.value for d in at.dataframe if "acc_x_bleu" in d.value.columns
            and len(d.value) == len(ev.summary)]
    assert full, "the full method x target x strength table"
    acc = _chart(at, "accuracy vs strength")
    assert {t["name"] for t in acc["data"]} == {"DiffMean", "LangFIR (mean-weighted)"}
    assert acc["data"][0]["x"] == [0.0, 4.0]
    at.selectbox(key="eval-target").select("de").run()
    _clean(at)
    de = ev.summary[(ev.summary.target == "de") & (ev.summary.method == "diffmean")]
    trace = next(t for t in _chart(at, "accuracy vs strength")["data"] if t["name"] == "DiffMean")
    assert trace["y"] == pytest.approx(de.sort_values("strength").accuracy.tolist())


def test_export_offers_downloads_and_says_why_not(steer_lab, monkeypatch):
    at = _app(monkeypatch, steer_lab)
    vector = f"{PAGE_REPORT}-fr-diffmean"
    at.radio(key="play-source").set_value("a stored steering vector").run()
    at.selectbox(key="play-vector").select(vector).run()
    _clean(at)
    assert _export_choice(at) == ("stored", vector)
    assert _downloads(at) == [f"{vector}.safetensors", f"{vector}.json",
                              f"{vector}.neuronpedia.json"]
    # the fixture's SAE reads block 0, which llama.cpp cannot steer: the page says so
    assert any("block 0" in w.value and "llama.cpp" in w.value for w in at.warning)
    # the playground's unsaved vector is offered too
    at.radio(key="play-source").set_value("a target language of the report").run()
    at.selectbox(key="play-method").select("saediff").run()
    _clean(at)
    spec = _export_choice(at)
    assert spec[0] == "report" and spec[3] == "saediff"
    stem = f"{PAGE_REPORT}-{spec[2]}-saediff"
    assert f"{stem}.neuronpedia.json" in _downloads(at)


def test_empty_lab_says_what_is_missing_and_offers_the_job(tmp_path, monkeypatch):
    at = _app(monkeypatch, Lab(tmp_path / "lab"))
    _clean(at)
    assert any("no SAE yet" in i.value and "LangFIR" in i.value for i in at.info)
    assert any(b.label == "Build the default lab" for b in at.button)


def _without(lab: Lab, root: Path, *names: str) -> Lab:
    shutil.copytree(lab.root, root)
    copy = Lab(root)
    for name in names:
        copy.remove(name)
    return copy


def test_partial_labs_offer_the_missing_jobs(steer_lab, tmp_path, monkeypatch):
    vectors = [a.name for a in steer_lab.list("steering")]
    # no evaluation: offered with its form
    lab = _without(steer_lab, tmp_path / "no-eval", PAGE_EVAL)
    at = _app(monkeypatch, lab)
    _clean(at)
    assert any("No steering evaluation" in i.value for i in at.info)
    at.text_input(key="eval-steer-eval-strengths").input("0,abc")
    _button(at, "Evaluate steering").click().run()
    assert any("strengths" in e.value for e in at.error)
    # vectors but no report: the playground runs on the stored vectors
    lab.remove(PAGE_REPORT)
    at = _app(monkeypatch, lab)
    _clean(at)
    assert any("No LangFIR report" in i.value for i in at.info)
    at.button(key="play-run").click().run()
    _clean(at)
    assert len(at.code) == 2
    # nothing: LangFIR offered; the form validates, then starts a job that finishes
    for name in vectors:
        lab.remove(name)
    at = _app(monkeypatch, lab)
    _clean(at)
    assert any("No LangFIR report and no steering vector" in i.value for i in at.info)
    at.selectbox(key="first-langfir-sae").select(SAE)
    at.selectbox(key="first-langfir-model").select("lm")
    at.text_input(key="first-langfir-name").input("../bad")
    at.text_input(key="first-langfir-languages").input("en,xx")
    _button(at, "Run LangFIR").click().run()
    errors = " ".join(e.value for e in at.error)
    assert "invalid artifact name" in errors and "no language xx" in errors
    assert not lab.list("langfir")
    at.text_input(key="first-langfir-name").input("form-langfir")
    at.text_input(key="first-langfir-languages").input("en,de")
    _button(at, "Run LangFIR").click().run()
    assert not at.error, [e.value for e in at.error]
    assert any("Started job" in s.value for s in at.success)
    job = next(j for j in lab.jobs(limit=10) if j["kind"] == "command")
    deadline = time.time() + 300
    while time.time() < deadline and lab.job_row(job["id"])["status"] not in ("done", "failed"):
        time.sleep(1)
    assert lab.job_row(job["id"])["status"] == "done", lab.job_row(job["id"])
    at = _app(monkeypatch, lab)
    _clean(at)
    assert at.selectbox(key="steer-report").value == "form-langfir"
    assert _frame(at, "language", "n_kept").language.tolist() == ["en", "de"]


def test_steering_job_plans_validate(steer_lab):
    lab = steer_lab
    ok = plan("langfir", {"model": "lm", "sae": SAE, "corpus": "corpus", "name": "new-report",
                          "languages": "en,fr", "tau": 0.3, "tau_r": 0.1}, lab)
    assert ok.ok, ok.problems
    assert ok.args[:2] == ["langfir", "run"]
    assert ok.args[ok.args.index("--languages") + 1] == "en,fr"
    assert "new-report" in ok.names and "new-report-fr-diffmean" in ok.names
    bad = plan("langfir", {"model": "lm", "sae": SAE, "corpus": "corpus", "name": PAGE_REPORT,
                           "languages": "", "tau": 0.0, "tau_r": 2}, lab)
    text = " ".join(bad.problems)
    assert "already exists" in text and "tau must lie in (0, 1]" in text
    assert "tau_r must lie in (0, 1]" in text
    wrong = plan("langfir", {"model": "lm", "sae": SAE, "corpus": "tok", "name": "x",
                             "tau": 0.3, "tau_r": 0.1}, lab)
    assert any("not a corpus" in p for p in wrong.problems)
    make = plan("steer-make", {"report": PAGE_REPORT, "language": "de", "method": "langfir_eq",
                               "name": "", "strength": 3.0}, lab)
    assert make.ok and make.names == [f"{PAGE_REPORT}-de-langfir_eq"]
    assert make.args[-2:] == ["--strength", "3"]
    nope = plan("steer-make", {"report": PAGE_REPORT, "language": "xx", "method": "mean",
                               "strength": float("nan")}, lab)
    assert len(nope.problems) == 3, nope.problems
    ev = plan("steer-eval", {"report": PAGE_REPORT, "methods": ["diffmean"], "strengths": "0,2",
                             "targets": "de", "prompts": 2, "tokens": 8, "name": "new-eval"}, lab)
    assert ev.ok and ev.args[:3] == ["steer", "eval", PAGE_REPORT]
    assert ev.args[ev.args.index("--targets") + 1] == "de"
    bad_ev = plan("steer-eval", {"report": "nope", "methods": [], "strengths": "",
                                 "prompts": 0, "tokens": 8}, lab)
    assert len(bad_ev.problems) >= 4, bad_ev.problems
