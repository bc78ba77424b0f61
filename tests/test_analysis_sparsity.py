"""Activation sparsity (CETT, thresholds, PPL-p%) and the sparsity-law fits, on constructed
cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from workbench.analysis.sparsity import (
    SparsityConfig,
    analyze_sparsity,
    cett,
    collect_mlp_activations,
    mlp_layers,
    search_increasing,
    sparse_run,
    threshold_for_cett,
    threshold_hooks,
    threshold_rule,
    thresholds_for_target,
)
from workbench.analysis.sparsity_law import fit_law, law_relu, law_silu
from workbench.errors import InvalidInputError, NotFoundError
from workbench.models.architectures import quiet_hooked_transformer

NORMS = [1.0, 2.0, 3.0, 4.0]  # ||n_i|| of the hand-built MLP's one token type


def hand_built_model(gated: bool = False, attn_only: bool = False) -> HookedTransformer:
    """One layer, d_model = d_mlp = 4, no norms, no attention output: the MLP sees the token
    embedding x. W_in (and W_gate) = I, ReLU, W_out = diag(w) with orthogonal rows, so
    a = relu(x) (gated: relu(x) * x) and ||n_i|| = |a_i| w_i exactly; CETT has a closed form."""
    cfg = HookedTransformerConfig(n_layers=1, d_model=4, d_head=2, n_heads=2, d_mlp=4,
                                  d_vocab=3, n_ctx=8, act_fn="relu", normalization_type=None,
                                  gated_mlp=gated, attn_only=attn_only, seed=0)
    model = quiet_hooked_transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        if attn_only:
            return model.eval()
        w = torch.tensor([2.0, 1.0, 1.0, 0.5])
        # token 1 -> x = a chosen so that ||n|| = NORMS (the others: zeros)
        a = torch.tensor(NORMS) / w
        x = a.sqrt() if gated else a
        model.embed.W_E[1] = x
        model.blocks[0].mlp.W_in.copy_(torch.eye(4))
        if gated:
            model.blocks[0].mlp.W_gate.copy_(torch.eye(4))
        model.blocks[0].mlp.W_out.copy_(torch.diag(w))
    return model.eval()


def closed_form_cett(t: float) -> float:
    norms = np.array(NORMS)
    return math.sqrt((norms[norms <= t] ** 2).sum() / (norms ** 2).sum())


@pytest.mark.parametrize("gated", [False, True])
def test_hand_built_mlp_cett_and_thresholds(gated):
    model = hand_built_model(gated)
    layers = mlp_layers(model)
    assert [m.layer for m in layers] == [0]
    torch.testing.assert_close(layers[0].w_norm, torch.tensor([2.0, 1.0, 1.0, 0.5]))
    tokens = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1]])  # position 0 (BOS) is left out
    acts = collect_mlp_activations(model, layers, tokens)
    assert acts[0].shape == (7, 4)
    torch.testing.assert_close(acts[0][0] * layers[0].w_norm, torch.tensor(NORMS))
    for t in (0.5, 1.0, 2.5, 3.0, 3.5, 10.0):
        got = float(cett(acts[0], layers[0].W_out, t).mean())
        assert got == pytest.approx(closed_form_cett(t), abs=1e-6)
    # target 0.5: CETT is sqrt(5/30) = 0.408 for t in [2, 3) and sqrt(14/30) = 0.683 from t = 3,
    # so the largest threshold meeting it lies just below 3
    t, c = threshold_for_cett(acts[0], layers[0].W_out, 0.5)
    assert 2.99 < t < 3.0 and c == pytest.approx(math.sqrt(5 / 30), abs=1e-6)
    run = sparse_run(model, layers, tokens, threshold_rule({0: t}))
    assert run.active[0] == pytest.approx(0.5)  # neurons with ||n|| 3 and 4 stay on
    # target 0: nothing may be cut (threshold below the smallest norm), ratio 1
    t0, c0 = threshold_for_cett(acts[0], layers[0].W_out, 0.0)
    assert t0 < 1.0 and c0 == 0.0
    assert sparse_run(model, layers, tokens, threshold_rule({0: t0})).active[0] == 1.0


def test_threshold_hook_sets_neurons_below_threshold_to_zero():
    model = hand_built_model()
    seen = {}
    hooks = threshold_hooks(model, {"blocks.0.mlp.hook_post": 2.5})
    model.run_with_hooks(torch.tensor([[0, 1]]), fwd_hooks=hooks + [
        ("blocks.0.mlp.hook_post", lambda a, hook: seen.setdefault("a", a.clone()))])
    norms = seen["a"][0, 1] * torch.tensor([2.0, 1.0, 1.0, 0.5])
    torch.testing.assert_close(norms, torch.tensor([0.0, 0.0, 3.0, 4.0]))


def test_search_increasing_is_monotone_and_hits_its_target():
    result = search_increasing(lambda c: 1 + 0.05 * c * c, 1.01, tol=1e-9, max_evals=80)
    assert result.value == pytest.approx(math.sqrt(0.2), abs=1e-6)
    assert result.ppl_ratio <= 1.01
    # with a value tolerance it stops early, within it below the target
    loose = search_increasing(lambda c: 1 + 0.05 * c * c, 1.01, value_tol=1e-4)
    assert 1.01 - 1e-4 <= loose.ppl_ratio <= 1.01 and len(loose.trace) < len(result.trace)


def test_ppl_p_search_on_a_trained_lm(tiny_lab):
    cfg = SparsityConfig(n_tokens=2048, threshold_tokens=1024, p=1.0, ppl_tol=0.02, topk=False)
    result = analyze_sparsity("lm", tiny_lab, cfg, progress=False)
    summary, search = result["summary"], result["tables"]["search"]
    assert summary["ppl_ratio"] == pytest.approx(1.01, abs=2.5e-4)
    assert 0.0 < summary["activation_ratio"] < 1.0
    trace = search[search.method == "cett"].sort_values("param")
    # the bigger the CETT target, the fewer neurons stay on and the higher the perplexity (up
    # to noise below the search tolerance: cutting a few more neurons can lower the loss by
    # ~1e-4 on 2k tokens)
    assert np.all(np.diff(trace.activation_ratio.to_numpy()) <= 1e-6)
    assert np.all(np.diff(trace.ppl_ratio.to_numpy()) >= -cfg.ppl_tol / 100)
    assert trace.ppl_ratio.iloc[-1] > 1.1 * trace.ppl_ratio.iloc[0]
    assert set(result["tables"]["layers"].layer) == {0, 1}


def test_law_fits_recover_the_parameters_of_noisy_curves():
    rng = np.random.default_rng(0)
    D = np.geomspace(0.01, 100, 16)
    relu_true = {"c": 1.0, "alpha": 0.5, "b": -1.0, "A0": 0.1}
    fit = fit_law(D, law_relu(D, **relu_true) + rng.normal(0, 1e-3, len(D)), "relu")
    assert fit.r2 > 0.99
    for key, value in relu_true.items():
        assert fit.params[key] == pytest.approx(value, rel=0.1, abs=0.02), key
        assert abs(fit.params[key] - value) < 5 * fit.stderr[key] + 1e-3, key
    silu_true = {"c": 0.05, "alpha": 0.5, "A0": 0.4}
    fit = fit_law(D, law_silu(D, **silu_true) + rng.normal(0, 1e-3, len(D)), "silu")
    assert fit.r2 > 0.99
    for key, value in silu_true.items():
        assert fit.params[key] == pytest.approx(value, rel=0.1), key
    assert fit(D).shape == D.shape


def test_bad_input_gives_clear_errors():
    with pytest.raises(InvalidInputError, match="no MLPs"):
        mlp_layers(hand_built_model(attn_only=True))
    for p in (0.0, -1.0, 150.0, float("nan")):
        with pytest.raises(InvalidInputError, match="perplexity increase"):
            SparsityConfig(p=p).validate()
    model = hand_built_model()
    with pytest.raises(NotFoundError, match="no hook 'blocks.0.mlp.hook_nothing'"):
        threshold_hooks(model, {"blocks.0.mlp.hook_nothing": 1.0})
    with pytest.raises(InvalidInputError, match="not an MLP activation"):
        threshold_hooks(model, {"blocks.0.hook_resid_post": 1.0})
    with pytest.raises(NotFoundError, match="no MLP layer 3"):
        threshold_hooks(model, {3: 1.0})
    with pytest.raises(InvalidInputError, match="CETT target"):
        thresholds_for_target({}, 1.5)
    with pytest.raises(InvalidInputError, match="at least 5"):
        fit_law([1, 2], [0.5, 0.4], "relu")
    with pytest.raises(InvalidInputError, match="corpus"):
        analyze_sparsity(model, None, SparsityConfig(), progress=False)
