"""The analysis pages (sparsity laws, attention sparsity, depth utilization) with
streamlit.testing.v1.AppTest: on a lab with the three analyses (charts, tables, the live
attention what-if whose slider changes the result), on a lab with only a model (what is missing,
validated job forms, a depth job started from the page and its result shown), and on an empty
lab."""

from __future__ import annotations

import time

import pandas as pd
import pytest
from fixtures_analysis import ATTENTION, DEPTH, LAW, LAW_MODEL, add_analyses
from fixtures_dashboard import MAIN, assert_clean, open_page
from streamlit.testing.v1 import AppTest

from workbench.lab import Lab

LAWS, ATTN, DEPTH_PAGE = "views/sparsity_laws.py", "views/attention.py", "views/depth.py"


@pytest.fixture(scope="module")
def analysis_lab(tiny_lab):
    return add_analyses(tiny_lab)


@pytest.fixture(scope="module")
def model_only_lab(tmp_path_factory):
    """A lab with a corpus, a tokenizer and an (untrained) model `lm`, no analyses."""
    from fixtures_lab import small_lm_setup

    return small_lm_setup(tmp_path_factory.mktemp("model_only") / "lab")[0]


_app, _clean = open_page, assert_clean


def _charts(at: AppTest) -> list[str]:
    return [str(c.proto.spec) for c in at.get("plotly_chart")]


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def _button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


# -- a lab with the analyses -------------------------------------------------------------------
def test_sparsity_law_page_draws_ratios_fitted_curve_and_parameters(analysis_lab, monkeypatch):
    at = _app(monkeypatch, analysis_lab, LAWS)
    _clean(at)
    assert at.title[0].value == "Sparsity laws"
    charts = _charts(at)
    assert any("fitted law" in c and "activation ratio" in c for c in charts)
    fits = pd.read_parquet(analysis_lab.get(LAW).path / "fits.parquet")
    params = next(d.value for d in at.dataframe if "law" in d.value.columns)
    row = params[params.model == LAW_MODEL].iloc[0]
    a0 = fits[(fits.model == LAW_MODEL) & (fits.param == "A0")].iloc[0]
    assert row["A0"].startswith(f"{a0.value:.4g} ±") and row["law"].startswith("A(D) = exp")
    assert row["R²"] == pytest.approx(float(a0.r2))
    assert any("claims" in s.value for s in at.subheader)


def test_attention_page_heads_heatmap_table_and_stored_whatif(analysis_lab, monkeypatch):
    at = _app(monkeypatch, analysis_lab, ATTN)
    _clean(at)
    heads = pd.read_parquet(analysis_lab.get(ATTENTION).path / "heads.parquet")
    table = next(d.value for d in at.dataframe if "pattern_class" in d.value.columns)
    assert len(table) == len(heads) and table.k90.tolist() == pytest.approx(heads.k90.tolist())
    charts = _charts(at)
    assert any("k@90%" in c for c in charts), "the layer x head heatmap"
    assert any("block_topk" in c and "perplexity ratio" in c for c in charts)
    at.selectbox(key="attn-metric").select("entropy").run()
    _clean(at)
    assert any("entropy of the attention row" in c for c in _charts(at))


def test_attention_whatif_slider_changes_the_shown_result(analysis_lab, monkeypatch):
    at = _app(monkeypatch, analysis_lab, ATTN)
    at.selectbox(key="attn-layer").select(1).run()
    at.slider(key="attn-fraction").set_value(1.0).run()
    _clean(at)
    assert _metric(at, "compute sparsity") == "0%"
    assert _metric(at, "mean KL to the dense model") == "0.0000"
    assert _metric(at, "top-1 prediction unchanged") == "100%"
    full_loss = _metric(at, "loss on the text (nats)")
    at.slider(key="attn-fraction").set_value(0.1).run()
    _clean(at)
    assert _metric(at, "compute sparsity") != "0%"
    assert float(_metric(at, "mean KL to the dense model")) > 0
    assert _metric(at, "loss on the text (nats)") != full_loss
    assert any("Layer 1 head 0: top 10% of each row in every layer" in c for c in _charts(at))
    at.radio(key="attn-view").set_value("dense").run()
    assert any("Layer 1 head 0: dense attention" in c for c in _charts(at))
    # the block-sparse budget, on one layer only
    at.radio(key="attn-budget").set_value(
        "Block-sparse budget (key blocks per query block)").run()
    at.radio(key="attn-scope").set_value("the chosen layer only").run()
    _clean(at)
    blocks = next(s for s in at.slider if s.key.startswith("attn-blocks-"))
    layers = next(d.value for d in at.dataframe if "||z' - z|| / ||z||" in d.value.columns)
    assert layers.layer.tolist() == [1]
    before = _metric(at, "compute sparsity")
    blocks.set_value(blocks.max).run()
    _clean(at)
    assert _metric(at, "compute sparsity") == "0%" != before


def test_depth_page_draws_matrix_bars_and_variance(analysis_lab, monkeypatch):
    at = _app(monkeypatch, analysis_lab, DEPTH_PAGE)
    _clean(at)
    summary = analysis_lab.get(DEPTH).manifest["summary"]
    assert _metric(at, "global usefulness") == f"{summary['global_usefulness']:.2f}"
    charts = _charts(at)
    assert len(charts) == 5  # angular matrix, removal, usefulness, variance, causal
    assert any("angular distance" in c and "n = 1" in c for c in charts)
    assert any("useful above x1.1" in c for c in charts)
    assert any("residual stream" in c and "MLP output" in c for c in charts)
    at.toggle(key="depth-last").set_value(True).run()
    _clean(at)


# -- a lab with a model but no analyses --------------------------------------------------------
def test_pages_say_what_is_missing_and_offer_the_jobs(model_only_lab, monkeypatch):
    at = _app(monkeypatch, model_only_lab, LAWS)
    _clean(at)
    assert any("No sparsity-law analysis" in i.value for i in at.info)
    assert _button(at, "Build the sparsity-law lab")
    at = _app(monkeypatch, model_only_lab, ATTN)
    _clean(at)
    assert any("No attention analysis" in i.value for i in at.info)
    assert _button(at, "Start the attention analysis")
    assert at.metric, "the live what-if works without a stored analysis"
    # the default text is longer than this model's context of 64 tokens: cut, and said so
    assert any("the first 64 (the model's context)" in c.value for c in at.caption)
    at = _app(monkeypatch, model_only_lab, DEPTH_PAGE)
    _clean(at)
    assert any("No depth analysis" in i.value for i in at.info)


def test_depth_job_form_validates_then_runs_and_the_page_shows_it(model_only_lab, monkeypatch):
    lab = model_only_lab
    at = _app(monkeypatch, lab, DEPTH_PAGE)
    at.text_input(key="depth-job-name").input("../bad")
    _button(at, "Start the depth analysis").click().run()
    errors = " ".join(e.value for e in at.error)
    assert "invalid artifact name" in errors and "records no training corpus" in errors
    assert not lab.jobs(limit=5)
    at.text_input(key="depth-job-name").input("depth-form")
    at.selectbox(key="depth-job-corpus").select("corpus")
    at.number_input(key="depth-job-tokens").set_value(512)
    at.number_input(key="depth-job-fit").set_value(256)
    _button(at, "Start the depth analysis").click().run()
    assert not at.error, [e.value for e in at.error]
    assert any("Started job" in s.value for s in at.success)
    job = lab.jobs(limit=1)[0]
    deadline = time.time() + 240
    while time.time() < deadline and lab.job_row(job["id"])["status"] not in ("done", "failed"):
        time.sleep(0.5)
    assert lab.job_row(job["id"])["status"] == "done", lab.job_row(job["id"])
    at = _app(monkeypatch, lab, DEPTH_PAGE)
    _clean(at)
    assert "depth-form" in " ".join(c.value for c in at.caption)
    assert len(at.get("plotly_chart")) == 5


def test_lab_page_offers_the_analysis_jobs(model_only_lab, monkeypatch):
    monkeypatch.setenv("WORKBENCH_LAB", str(model_only_lab.root))
    at = AppTest.from_file(MAIN, default_timeout=240)
    at.run()
    at.selectbox(key="job-kind").select("Attention sparsity").run()
    _clean(at)
    assert at.selectbox(key="lab-attention-model").value == "lm"
    assert at.checkbox(key="lab-attention-whatif").value is True


# -- an empty lab ------------------------------------------------------------------------------
@pytest.mark.parametrize("page, job", [(LAWS, "Build the sparsity-law lab"),
                                       (ATTN, "Build the default lab"),
                                       (DEPTH_PAGE, "Build the default lab")])
def test_analysis_pages_on_an_empty_lab(tmp_path, monkeypatch, page, job):
    at = _app(monkeypatch, Lab(tmp_path / "lab"), page)
    _clean(at)
    assert at.info and _button(at, job)


# -- the job plans (no Streamlit) ------------------------------------------------------------------
def test_analysis_job_plans_validate_their_input(model_only_lab, tmp_path):
    from app.dashboard.job_forms import plan

    lab = model_only_lab
    ok = plan("attention", {"model": "lm", "tokens": 2048, "corpus": "corpus",
                            "whatif": False}, lab)
    assert ok.ok and ok.names == ["attention-lm"]
    assert ok.args == ["analyze", "attention", "--model", "lm", "--tokens", "2048", "--name",
                       "attention-lm", "--corpus", "corpus", "--no-whatif"]
    bad = plan("depth", {"model": "nope", "tokens": 10, "fit_tokens": 512, "name": "x y"}, lab)
    problems = " ".join(bad.problems)
    assert "no model named 'nope'" in problems and "at least 256" in problems
    assert "invalid artifact name" in problems
    law = plan("sparsity-law", {"models": ["lm"], "tokens": 1024}, lab)
    assert any("fewer than 2 checkpoints" in p for p in law.problems)
    assert any("choose at least one model" in p
               for p in plan("sparsity-law", {"models": [], "tokens": 1024}, lab).problems)
    quick = plan("sparsity-law-lab", {"quick": True}, Lab(tmp_path / "empty"))
    assert quick.ok and quick.args == ["lab", "build", "sparsity-law", "--quick"]
    assert "sparsity-law-quick" in quick.names and "slq-corpus" in quick.names
