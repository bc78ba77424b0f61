"""Dashboard pages with streamlit.testing.v1.AppTest: every page on a small lab and on an empty
lab (no exceptions, no error messages), and the main widgets: feature search, test your text,
steering, job form validation, and a job started from a form and shown finished."""

from __future__ import annotations

import time

import pytest
from fixtures_dashboard import (
    HOOK,
    IMPORTED,
    SAE,
    add_dashboard_saes,
    assert_clean,
    open_page,
)
from streamlit.testing.v1 import AppTest

from workbench.lab import Lab

PAGES = ("views/lab.py", "views/model.py", "views/saes.py", "views/features.py")


@pytest.fixture(scope="module")
def dash_lab(tiny_lab):
    return add_dashboard_saes(tiny_lab)


_app, _clean = open_page, assert_clean


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [i.value for i in at.info] + \
        [c.value for c in at.caption] + [t.value for t in at.title]
    return "\n".join(str(p) for p in parts)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_on_an_empty_lab_says_what_is_missing(tmp_path, monkeypatch, page):
    at = _app(monkeypatch, Lab(tmp_path / "lab"), page)
    _clean(at)
    assert "lab" in _texts(at) and at.info
    assert any(b.label.startswith("Build the default lab") for b in at.button)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_on_a_small_lab(dash_lab, monkeypatch, page):
    at = _app(monkeypatch, dash_lab, page)
    _clean(at)
    assert at.title


def test_lab_page_lists_artifacts_and_flags_a_corrupt_one(dash_lab, tmp_path, monkeypatch):
    lab = Lab(tmp_path / "lab")
    for name in ("ok-one", "broken-one"):
        with lab.new_artifact("analysis", name):
            pass
    (lab.artifact_path("broken-one") / "manifest.json").write_text("{")
    at = _app(monkeypatch, lab)
    assert not at.exception
    assert any("broken-one" in w.value and "lab rm broken-one" in w.value for w in at.warning)
    assert "ok-one" in at.dataframe[0].value["name"].tolist()


def test_model_page_shows_tokens_predictions_and_activations(dash_lab, monkeypatch):
    at = _app(monkeypatch, dash_lab, "views/model.py")
    at.text_area(key="model-text").input("Der Hund schläft.").run()
    _clean(at)
    predictions = at.dataframe[0].value
    assert {"token", "#1", "next in text"} <= set(predictions.columns)
    assert len(predictions) >= 4
    assert at.get("plotly_chart"), "the activation heatmap is drawn"
    # a model named by the user (here the lab model's folder, as a path)
    at.selectbox(key="model-choice").select_index(-1).run()
    at.text_input[0].input(str(dash_lab.get("lm").path)).run()
    _clean(at)
    assert len(at.dataframe[0].value) >= 4


def test_saes_page_shows_the_evaluation_table_and_plots(dash_lab, monkeypatch):
    at = _app(monkeypatch, dash_lab, "views/saes.py")
    _clean(at)
    table = at.dataframe[0].value
    row = table[table.SAE == SAE].iloc[0]
    assert 0 < row["NMSE"] < 2 and row["L0"] == pytest.approx(8, abs=0.5)
    assert len(at.get("plotly_chart")) >= 3  # frontier, density, curves / ZF


def _feature_page(monkeypatch, lab, sae: str = SAE) -> AppTest:
    at = _app(monkeypatch, lab, "views/features.py")
    at.selectbox(key="feature-sae").select(sae).run()
    return at


def test_feature_search_by_token_logit_and_prompt(dash_lab, monkeypatch):
    from saes.feature_stats import load_feature_stats

    features, contexts = load_feature_stats(dash_lab, SAE)
    top = contexts[(contexts.kind == "top") & (contexts["rank"] == 0)].iloc[0]
    token = top.tokens[top.centre]
    at = _feature_page(monkeypatch, dash_lab)
    at.text_input(key="search-token").input(token).run()
    _clean(at)
    hits = [d.value for d in at.dataframe if "hits" in d.value.columns]
    assert hits and int(top.feature) in hits[0].feature.tolist()
    # open a result: the feature page follows
    at.selectbox(key="open-token").select(int(top.feature)).run()
    at.button(key="open-btn-token").click().run()
    assert at.number_input(key="feature-index").value == int(top.feature)
    logit_token = features.iloc[int(top.feature)].top_logit_tokens[0]
    at.text_input(key="search-logit").input(logit_token).run()
    assert any("effect" in d.value.columns and int(top.feature) in d.value.feature.tolist()
               for d in at.dataframe)
    at.text_input(key="search-prompt").input("Der Hund schläft im Garten.").run()
    _clean(at)
    ranked = [d.value for d in at.dataframe if "peak_position" in d.value.columns]
    assert ranked and len(ranked[0]) > 0


def test_test_your_text_and_steering_generate(dash_lab, monkeypatch):
    at = _feature_page(monkeypatch, dash_lab)
    at.number_input(key="feature-index").set_value(3).run()
    at.text_area(key="test-text").input("The dog and the cat.").run()
    at.button(key="test-run").click().run()
    _clean(at)
    assert any("on your text" in str(c.proto.spec) for c in at.get("plotly_chart"))
    at.text_input(key="steer-prompt").input("Der Hund").run()
    at.slider(key="steer-strength").set_value(8.0).run()
    at.button(key="steer-run").click().run()
    _clean(at)
    unsteered, steered = at.code[-2].value, at.code[-1].value
    assert unsteered.startswith("Der Hund") and steered.startswith("Der Hund")
    assert unsteered != steered


def test_feature_page_on_an_imported_sae_lens_sae(dash_lab, monkeypatch):
    at = _feature_page(monkeypatch, dash_lab, IMPORTED)
    _clean(at)
    assert at.text_input(key=f"feature-hook-{IMPORTED}").value == HOOK
    assert any("no feature statistics" in i.value for i in at.info)
    assert any(b.label == "Compute feature statistics" for b in at.button)
    at.button(key="test-run").click().run()   # live encoding works without the tables
    _clean(at)


def _select_job(at: AppTest, title: str) -> AppTest:
    at.selectbox(key="job-kind").select(title).run()
    return at


def _widget(widgets, label: str):
    return next(w for w in widgets if w.label == label)


def test_job_form_validates_then_starts_a_job_shown_finished(dash_lab, monkeypatch):
    at = _app(monkeypatch, dash_lab)
    _select_job(at, "Train an SAE")
    _widget(at.text_input, "Name of the new SAE").input("../bad")
    _widget(at.number_input, "Latents").set_value(64)
    _widget(at.number_input, "k (TopK / BatchTopK)").set_value(100)
    _widget(at.number_input, "Training tokens").set_value(100)
    _widget(at.button, "Start job").click().run()
    errors = " ".join(e.value for e in at.error)
    assert "invalid artifact name" in errors and "cannot exceed" in errors
    assert "training tokens must be at least 4096" in errors
    assert not dash_lab.jobs(limit=5) or all(j["kind"] != "command" or "../bad" not in j["name"]
                                             for j in dash_lab.jobs(limit=5))
    _widget(at.text_input, "Name of the new SAE").input(SAE)
    _widget(at.button, "Start job").click().run()
    assert any("already exists" in e.value for e in at.error)
    # a valid job: a small SAE, started in the background through the job layer
    _widget(at.text_input, "Name of the new SAE").input("dash-form-sae")
    _widget(at.number_input, "k (TopK / BatchTopK)").set_value(4)
    _widget(at.number_input, "Training tokens").set_value(8192)
    _widget(at.button, "Start job").click().run()
    assert not at.error, [e.value for e in at.error]
    assert any("Started job" in s.value for s in at.success)
    deadline = time.time() + 240
    while time.time() < deadline and not dash_lab.exists("dash-form-sae"):
        time.sleep(1)
    job = next(j for j in dash_lab.jobs(limit=10) if j["kind"] == "command")
    while time.time() < deadline and dash_lab.job_row(job["id"])["status"] != "done":
        time.sleep(0.5)
    assert dash_lab.job_row(job["id"])["status"] == "done", dash_lab.job_row(job["id"])
    at = _app(monkeypatch, dash_lab)
    jobs = next(d.value for d in at.dataframe if "status" in d.value.columns)
    assert jobs[jobs.id == job["id"]].status.iloc[0] == "done"
    assert "dash-form-sae" in at.dataframe[0].value["name"].tolist()
