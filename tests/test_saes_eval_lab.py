"""`workbench sae eval|concepts|stats` and the lab functions behind them, on a small lab."""

from __future__ import annotations

import json

import pytest
import typer
from fixtures_lab import small_lm_setup
from typer.testing import CliRunner

from app.cli.sae_eval_cmds import add_commands
from saes.evaluation import CONCEPTS_FILE, EVAL_FILE
from saes.feature_stats import load_feature_stats
from workbench.lab import Lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Lab:
    """Untrained tiny LM, 4096 cached tokens, one small TopK SAE trained on them."""
    from saes.training import SAETrainConfig, train_saes
    from workbench.activations import cache_activations

    lab, _, _ = small_lm_setup(tmp_path_factory.mktemp("evallab"))
    cache_activations(lab, "acts", "lm", "blocks.0.hook_resid_post", "corpus", n_tokens=4096,
                      context_size=64, progress=False)
    train_saes(lab, [SAETrainConfig(name="sae", arch="topk", latents=64, k=4, tokens=4096,
                                    batch_size=1024)], "acts", progress=False)
    return lab


@pytest.fixture(scope="module")
def cli(lab, monkeypatch_module):
    monkeypatch_module.setenv("WORKBENCH_LAB", str(lab.root))
    app = typer.Typer()
    sae_app = typer.Typer()
    add_commands(sae_app)
    app.add_typer(sae_app, name="sae")
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["sae", *args])


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_sae_eval_cli_stores_results(lab, cli):
    result = cli("eval", "sae", "--tokens", "1024", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["l0"] == pytest.approx(4.0)
    assert 0 < out["nmse"] < 2 and out["n_tokens"] >= 1024
    assert {"ce_loss_score", "kl_div_with_sae", "delta_lm_loss", "zf_plot",
            "density_histogram"} <= set(out)
    stored = json.loads((lab.get("sae").path / EVAL_FILE).read_text())
    assert stored["nmse"] == pytest.approx(out["nmse"])
    metrics = lab.get("sae").metrics
    assert metrics["nmse"] == pytest.approx(out["nmse"])
    assert "train_fvu" in metrics and "eval_dead_fraction" in metrics  # trainer's kept


def test_sae_concepts_and_stats_cli(lab, cli):
    result = cli("concepts", "sae", "--tokens", "2048")
    assert result.exit_code == 0, result.output
    assert "probe (upper bound)" in result.output
    concepts = json.loads((lab.get("sae").path / CONCEPTS_FILE).read_text())
    assert set(concepts["classes"]) == {"de", "en", "ru"}
    result = cli("stats", "sae", "--tokens", "2048")
    assert result.exit_code == 0, result.output
    features, contexts = load_feature_stats(lab, "sae")
    assert len(features) == 64
    assert features.n_fired.sum() == 4 * 2048  # TopK k=4: every token fires 4 latents
    assert set(contexts.language.dropna()) <= {"de", "en", "ru"}
    assert all(len(t) == len(a) for t, a in zip(contexts.tokens, contexts.acts))


def test_unknown_sae_is_a_clear_error(cli):
    result = cli("eval", "no-such-sae")
    assert result.exit_code != 0
    assert "no-such-sae" in str(result.exception)


def test_eval_on_cached_activations_and_mismatched_store(lab, cli):
    from types import SimpleNamespace

    from saes.evaluation.lab_runs import check_store_fits
    from saes.interop import load_sae
    from workbench.errors import InvalidInputError

    result = cli("eval", "sae", "--on-acts", "--tokens", "1024", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["reconstruction_source"] == "activations" and out["n_tokens"] == 1024
    sae = load_sae("sae", lab=lab)
    other = SimpleNamespace(name="other", hook="blocks.1.hook_resid_post", d_in=sae.cfg.d_in)
    with pytest.raises(InvalidInputError, match="do not fit SAE"):
        check_store_fits(sae, other, "sae")
