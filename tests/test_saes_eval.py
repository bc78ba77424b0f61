"""SAE evaluation: metrics on hand-made inputs, eps_LBO, the CE/KL splice, concept evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from transformer_lens import HookedTransformer, HookedTransformerConfig

from saes.evaluation import (
    downstream_metrics,
    eps_lbo,
    evaluate_concepts,
    evaluate_sae,
    f_tilde_norm,
    fvu,
    nmse,
    zf_bands,
)
from saes.evaluation.metrics import ReconstructionAccumulator
from saes.evaluation.sampling import GroupedBottomK
from saes.structured import StructuredSAE, StructuredSAEConfig
from workbench.errors import InvalidInputError, WorkbenchError
from workbench.probes import ProbeData

HOOK = "blocks.0.hook_resid_post"


def identity_sae(d: int) -> StandardSAE:
    """ReLU(x) - ReLU(-x) = x: an exact identity with 2d latents."""
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=2 * d))
    sae.cfg.metadata.hook_name = HOOK
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def zero_sae(d: int) -> StandardSAE:
    """Reconstructs every input as the zero vector."""
    sae = identity_sae(d)
    with torch.no_grad():
        sae.W_dec.zero_()
    return sae


@pytest.fixture(scope="module")
def model() -> HookedTransformer:
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=32, d_head=8, n_heads=2,
                                  d_mlp=32, d_vocab=40, act_fn="gelu", normalization_type="LN")
    model = HookedTransformer(cfg)
    model.eval()
    return model


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, 40, (6, 24), generator=torch.Generator().manual_seed(1))


# -- reconstruction metrics ------------------------------------------------------------------
def test_perfect_and_zero_reconstruction():
    x = torch.randn(50, 8)
    assert nmse(x, x) == 0.0 and fvu(x, x) == 0.0
    assert nmse(x, torch.zeros_like(x)) == pytest.approx(1.0)
    # FVU of predicting the mean is exactly 1
    assert fvu(x, x.mean(0).expand_as(x)) == pytest.approx(1.0)


def test_accumulator_matches_whole_tensor_metrics():
    torch.manual_seed(0)
    x = torch.randn(300, 8) + 2.0
    x_hat = x + 0.3 * torch.randn_like(x)
    f = torch.relu(torch.randn(300, 5))
    f[:, 4] = 0.0  # a dead latent
    acc = ReconstructionAccumulator(5)
    for xs, fs, hs in zip(x.split(64), f.split(64), x_hat.split(64)):
        acc.update(xs, fs, hs)
    r = acc.result()
    assert r["nmse"] == pytest.approx(nmse(x, x_hat), rel=1e-6)
    assert r["fvu"] == pytest.approx(fvu(x, x_hat), rel=1e-6)
    assert r["explained_variance"] == pytest.approx(1 - fvu(x, x_hat), rel=1e-6)
    assert r["l0"] == pytest.approx(float((f != 0).sum(1).float().mean()))
    assert r["dead_fraction"] == pytest.approx(0.2)
    assert sum(r["l0_histogram"]["counts"]) == 300
    assert sum(r["density_histogram"]["counts"]) + r["density_histogram"]["n_dead"] == 5
    expected_shrink = float((x_hat.norm(dim=1) / x.norm(dim=1)).mean())
    assert r["shrinkage"] == pytest.approx(expected_shrink, rel=1e-6)


# -- eps_LBO -----------------------------------------------------------------------------------
def test_eps_lbo_hand_computed():
    # ||f~||^2 = (1*1)^2 + (2*0.5)^2 + ||b_dec||^2 (= 4) = 6; ||z||^2 = 9; h = 4
    f = torch.tensor([[1.0, 2.0, 0.0, 0.0]])
    ft = f_tilde_norm(f, torch.tensor([1.0, 0.5, 1.0, 1.0]), b_dec_norm=2.0)
    assert ft.item() == pytest.approx(math.sqrt(6))
    eps = eps_lbo(torch.tensor([3.0]), ft, h=4)
    assert eps.item() == pytest.approx(3 / (3 * 6))
    band = zf_bands(4)[0]
    assert band["c"] == 0.25 and band["lower_slope"] == pytest.approx(1 / math.sqrt(1.25))
    assert zf_bands(4)[-1]["upper_slope"] is None


def test_eps_lbo_in_evaluation_matches_definition():
    # identity SAE: f~ = [relu(x), relu(-x), ||b_dec|| = 0] so ||f~|| = ||z|| and eps_LBO = 0
    result = evaluate_sae(identity_sae(6), torch.randn(64, 6), n_tokens=64, batch_size=16)
    assert result["nmse"] == pytest.approx(0.0, abs=1e-10)
    assert result["eps_lbo_mean"] == pytest.approx(0.0, abs=1e-6)
    assert len(result["zf_plot"]["norm_z"]) == 64
    # two unit decoder rows at 60 degrees, x = d1 + d2 (f = [1, 1] exactly):
    # ||z||^2 = 2 + 2 cos 60 = 3, ||f~||^2 = 2, eps_LBO = |3 - 2| / ((2 - 1) * 2) = 0.5
    sae = StandardSAE(StandardSAEConfig(d_in=2, d_sae=2))
    W_dec = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    with torch.no_grad():
        sae.W_dec.copy_(W_dec)
        sae.W_enc.copy_(torch.linalg.inv(W_dec))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    result = evaluate_sae(sae, W_dec.sum(0, keepdim=True).repeat(4, 1), n_tokens=4)
    assert result["nmse"] == pytest.approx(0.0, abs=1e-10)
    assert result["eps_lbo_mean"] == pytest.approx(0.5, rel=1e-5)


# -- CE / KL splice ----------------------------------------------------------------------------
def test_identity_splice_scores_one_and_zero_kl(model, tokens):
    r = downstream_metrics(identity_sae(16), model, tokens, keep=torch.ones_like(tokens).bool())
    assert r["ce_loss_score"] == pytest.approx(1.0, abs=1e-4)
    assert r["kl_div_with_sae"] == pytest.approx(0.0, abs=1e-6)
    assert r["delta_lm_loss"] == pytest.approx(0.0, abs=1e-5)
    assert r["kl_div_with_ablation"] > 1e-3  # the ablation does change the model


def test_zero_reconstruction_splice_scores_zero(model, tokens):
    r = downstream_metrics(zero_sae(16), model, tokens, keep=torch.ones_like(tokens).bool())
    assert r["ce_loss_score"] == pytest.approx(0.0, abs=1e-5)
    assert r["kl_div_score"] == pytest.approx(0.0, abs=1e-5)


def test_evaluate_on_heldout_text_uses_only_kept_positions(model, tokens):
    keep = torch.ones_like(tokens).bool()
    keep[:, 0] = False  # BOS-like positions are neither spliced nor scored
    r = evaluate_sae(identity_sae(16), None, model=model, tokens=tokens, keep=keep,
                     n_tokens=10_000)
    assert r["n_tokens"] == int(keep.sum())
    assert r["nmse"] == pytest.approx(0.0, abs=1e-10)
    assert r["ce_loss_score"] == pytest.approx(1.0, abs=1e-4)


def test_width_mismatch_and_unknown_hook_are_clear_errors(model, tokens):
    with pytest.raises(InvalidInputError, match="d_in=6"):
        evaluate_sae(identity_sae(6), torch.randn(10, 5))
    sae = identity_sae(16)
    sae.cfg.metadata.hook_name = "blocks.9.hook_nothing"
    with pytest.raises(WorkbenchError, match="no hook"):
        downstream_metrics(sae, model, tokens)
    with pytest.raises(InvalidInputError, match="nothing to evaluate"):
        evaluate_sae(sae)


# -- sampling ----------------------------------------------------------------------------------
def test_grouped_bottom_k_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    groups = torch.randint(0, 7, (500,), generator=gen)
    keys = torch.rand(500, generator=gen)
    sel = GroupedBottomK(3, n_groups=7)
    for g, k, i in zip(groups.split(64), keys.split(64), torch.arange(500).split(64)):
        sel.add(g, k, idx=i)
    got = sel.result()
    for g in range(7):
        want = torch.argsort(torch.where(groups == g, keys, torch.tensor(2.0)))[:3]
        assert got["idx"][got["group"] == g].tolist() == want.tolist()


# -- concepts ----------------------------------------------------------------------------------
def _language_data(d: int = 24, seed: int = 0):
    torch.manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(3, d), dim=-1)
    docs = torch.arange(90).repeat_interleave(30)
    lang = (torch.arange(90) % 3)[docs]
    x = torch.randn(len(docs), d) + 2.0 * directions[lang]
    labels = np.array([["de", "en", "fr"][i] for i in lang.tolist()], dtype=object)
    return ProbeData(x, labels, docs), directions


def test_concept_eval_finds_planted_language_latent():
    data, directions = _language_data()
    sae = StandardSAE(StandardSAEConfig(d_in=24, d_sae=48))
    with torch.no_grad():
        sae.W_enc[:, 17] = directions[0]
        sae.b_enc.zero_()
        sae.b_enc[17] = -1.0
    r = evaluate_concepts(sae, data)
    de = r["single_latent"]["per_class"]["de"]
    assert de["latent"] == 17
    assert de["test_auroc"] > 0.85
    assert r["probe"]["accuracy"] > r["group"]["accuracy"] - 0.05
    assert 17 in r["group"]["latents"]
    assert "posterior_group" not in r


def test_concept_eval_finds_planted_structured_group():
    data, directions = _language_data()
    sae = StructuredSAE(StructuredSAEConfig(d_in=24, d_sae=32, n_groups=8, group_size=4,
                                            k_groups=2))
    with torch.no_grad():
        sae.W_enc[:, 5 * 5:5 * 5 + 3] = 3 * directions.T  # group 5, values 0..2
    r = evaluate_concepts(sae, data)["posterior_group"]
    assert r["group"] == 5
    assert r["accuracy"] > 0.8
    assert r["direct_logpost_corr"] > 0.9
    assert {v["value"] for v in r["direct_per_class"].values()} == {0, 1, 2}
