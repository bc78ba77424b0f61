"""A lab for the dashboard tests: the session's `tiny_lab` plus a small TopK SAE `dash-sae`
(trained, evaluated, with feature statistics) and the same SAE imported as a plain sae-lens
folder `dash-imported` (no activations parent, no feature statistics)."""

from __future__ import annotations

from pathlib import Path

from workbench.lab import Lab

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "dashboard" / "main.py")
SAE = "dash-sae"
IMPORTED = "dash-imported"
HOOK = "blocks.0.hook_resid_post"


def add_dashboard_saes(lab: Lab) -> Lab:
    """Add the two SAEs to `lab` unless they exist (idempotent; a few seconds)."""
    from saes.evaluation.lab_runs import evaluate_lab_sae
    from saes.feature_stats import FeatureStatsConfig, compute_feature_stats
    from saes.interop import import_sae
    from saes.training import SAETrainConfig, train_saes

    if not lab.exists(SAE):
        train_saes(lab, [SAETrainConfig(name=SAE, arch="topk", latents=256, k=8, tokens=16384,
                                        batch_size=512)], "acts", progress=False)
        evaluate_lab_sae(lab, SAE, n_tokens=2048)
        compute_feature_stats(lab, SAE, config=FeatureStatsConfig(n_tokens=8192))
    if not lab.exists(IMPORTED):
        import_sae(lab, lab.get(SAE).path, IMPORTED, model="lm", hook=HOOK)
    return lab


def open_page(monkeypatch, lab: Lab, page: str | None = None):
    """The dashboard in Streamlit's AppTest over `lab`, run once, then switched to `page`
    (a script under app/dashboard, e.g. "views/features.py") and run again."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("WORKBENCH_LAB", str(lab.root))
    at = AppTest.from_file(MAIN, default_timeout=240)
    at.run()
    if page is not None:
        at.switch_page(page)
        at.run()
    return at


def assert_clean(at) -> None:
    """No exception and no error message on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
