"""MoE-X layer: it is the wide sparse MLP it claims to be; routing scores predict firing;
upcycling is exact; bad settings give clear errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from workbench.errors import InvalidInputError
from workbench.models.architectures import quiet_hooked_transformer
from workbench.models.moex import (
    MoEMLP,
    MoESpec,
    build_moex,
    load_balance_loss,
    sparsity_scores,
    upcycle_dense,
)
from workbench.models.presets import lm_config


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _cfg(**kw):
    return lm_config("tiny", d_vocab=40, n_ctx=32, **kw)


def _reference_wide_hidden(layer: MoEMLP, x: torch.Tensor) -> torch.Tensor:
    """z = concat_j(g_j h_j) token by token, from the formulas (no batching tricks): [N, M*D]."""
    spec = layer.spec
    rows = []
    for token in x:
        if spec.router == "sparsity":
            mu, var = layer.W_in.mean(-1), layer.W_in.var(-1, unbiased=False)
            m = mu @ token + layer.b_in.mean(-1)
            s = torch.sqrt(var @ (token * token) + layer.b_in.var(-1, unbiased=False) + 1e-6)
            score = -torch.erf(m / (math.sqrt(2) * s))
            chosen = score.topk(spec.k).indices
            gates = torch.softmax(score[chosen], 0)
        else:
            p = torch.softmax(token @ layer.W_router, 0)
            chosen = p.topk(spec.k).indices
            gates = p[chosen]
        z = torch.zeros(spec.n_experts, spec.d_expert)
        act = F.relu if spec.expert_act == "relu" else F.gelu
        for g, j in zip(gates, chosen.tolist()):
            z[j] = g * act(token @ layer.W_in[j] + layer.b_in[j])
        rows.append(z.reshape(-1))
    return torch.stack(rows)


@pytest.mark.parametrize("variant", ["moex", "switch", "moe_relu", "moex_gelu"])
def test_layer_equals_wide_sparse_mlp(variant):
    cfg = _cfg()
    layer = MoEMLP(cfg, MoESpec.for_variant(variant, n_experts=5, k=2, d_expert=16))
    with torch.no_grad():
        layer.b_in.normal_(0, 0.1)
        layer.b_out.normal_(0, 0.1)
    x = torch.randn(3, 7, cfg.d_model)
    z = _reference_wide_hidden(layer, x.reshape(-1, cfg.d_model))
    W_wide = layer.W_out.reshape(-1, cfg.d_model)  # [M*D, d]
    expected = (z @ W_wide + layer.b_out).reshape(x.shape)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-4)
    # the hooked path (output from the wide hidden) gives the same, and exposes z
    seen = {}
    layer.hook_post.add_hook(lambda t, hook: seen.setdefault("z", t.detach().clone()))
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(seen["z"].reshape(-1, z.shape[1]), z, atol=1e-5, rtol=1e-4)
    # each token's wide hidden has at most k non-zero expert blocks
    blocks = seen["z"].reshape(-1, 5, 16).abs().sum(-1) > 0
    assert int(blocks.sum(-1).max()) <= 2


def test_hooks_patch_the_output_and_cache_in_the_model():
    model = build_moex(_cfg(), MoESpec(n_experts=4, k=2, d_expert=32).to_options())
    tokens = torch.randint(0, 40, (2, 10))
    logits, cache = model.run_with_cache(tokens)
    for name, width in (("hook_scores", 4), ("hook_experts", 2), ("hook_gates", 2),
                        ("hook_post", 128), ("hook_out", 128)):
        assert cache[f"blocks.1.mlp.{name}"].shape == (2, 10, width)
    torch.testing.assert_close(model(tokens), logits)
    zeroed = model.run_with_hooks(
        tokens, fwd_hooks=[("blocks.1.mlp.hook_post", lambda t, hook: torch.zeros_like(t))])
    no_mlp = model.run_with_hooks(
        tokens, fwd_hooks=[("blocks.1.mlp.hook_out",
                            lambda t, hook: model.blocks[1].mlp.b_out.expand_as(t))])
    torch.testing.assert_close(zeroed, no_mlp, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(zeroed, logits)


def test_routing_score_matches_monte_carlo_firing_probability():
    """Experts whose encoder columns really are Gaussian per input coordinate: the score's
    implied firing probability (1 - w) / 2 matches the measured fraction of active units."""
    M, d, D = 6, 24, 4096
    cfg = _cfg()
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(M, d, 1, generator=g) * 0.3
    sigma = torch.rand(M, d, 1, generator=g) * 0.5 + 0.1
    W_in = mu + sigma * torch.randn(M, d, D, generator=g)
    b_in = torch.randn(M, 1, generator=g) * 0.3 + 0.2 * torch.randn(M, D, generator=g)
    x = torch.randn(200, d, generator=g)
    score = sparsity_scores(x, W_in, b_in)  # [200, M]
    fired = ((torch.einsum("nd,mdh->nmh", x, W_in) + b_in) > 0).float().mean(-1)
    predicted = (1 - score) / 2
    assert (predicted - fired).abs().max() < 0.05
    r = torch.corrcoef(torch.stack([score.flatten(), fired.flatten()]))[0, 1]
    assert r < -0.99  # higher score = sparser expert
    # the layer's own helper measures the same firing fractions
    layer = MoEMLP(cfg, MoESpec(n_experts=M, d_expert=D))  # d_model 128: pad inputs with 0
    layer.W_in.data = torch.cat([W_in, torch.zeros(M, cfg.d_model - d, D)], 1)
    layer.b_in.data = b_in.clone()
    xs = torch.cat([x, torch.zeros(200, cfg.d_model - d)], 1)
    torch.testing.assert_close(layer.expert_firing(xs), fired)


def test_load_balance_loss_is_coef_when_balanced_and_more_when_not():
    model = build_moex(_cfg(), MoESpec(n_experts=4, k=1, d_expert=8, balance_coef=0.01).to_options())
    layer = model.blocks[0].mlp
    for block in model.blocks[1:]:
        block.mlp.last_routing = None
    layer.last_routing = {"scores": torch.zeros(8, 4), "experts": torch.arange(8).remainder(4)[:, None]}
    assert float(load_balance_loss(model)) == pytest.approx(0.01)
    scores = torch.tensor([[5.0, 0, 0, 0]]).repeat(8, 1)
    layer.last_routing = {"scores": scores, "experts": torch.zeros(8, 1, dtype=torch.long)}
    assert float(load_balance_loss(model)) > 0.035
    assert load_balance_loss(model) is None  # consumed


@pytest.mark.parametrize("k", [1, 2])
def test_upcycled_moex_equals_dense_at_step_zero(k):
    cfg = _cfg(act_fn="relu")
    dense = quiet_hooked_transformer(cfg)
    with torch.no_grad():
        for block in dense.blocks:
            block.mlp.b_in.normal_(0, 0.1)
            block.mlp.b_out.normal_(0, 0.1)
    spec = MoESpec(n_experts=4, k=k, d_expert=cfg.d_mlp)
    tokens = torch.randint(0, 40, (2, 12))
    exact = upcycle_dense(dense, spec, noise=0.0)
    torch.testing.assert_close(exact(tokens), dense(tokens), atol=1e-5, rtol=1e-4)
    noisy = upcycle_dense(dense, spec, noise=0.05, seed=1)
    assert not torch.allclose(noisy(tokens), dense(tokens), atol=1e-4)
    with pytest.raises(InvalidInputError, match="d_expert"):
        upcycle_dense(dense, MoESpec(n_experts=4, k=k, d_expert=cfg.d_mlp // 2))


def test_bad_settings_give_clear_errors():
    with pytest.raises(InvalidInputError, match="exceeds the 4 experts"):
        MoESpec(n_experts=4, k=5)
    with pytest.raises(InvalidInputError, match="d_expert must be a positive integer"):
        MoESpec(d_expert=0)
    with pytest.raises(InvalidInputError, match="unknown MoE variant 'mixtral'.*moex"):
        MoESpec.for_variant("mixtral")
    with pytest.raises(InvalidInputError, match="unknown MoE router"):
        MoESpec(router="hash")
    with pytest.raises(InvalidInputError, match="unknown MoE options"):
        build_moex(_cfg(), {"n_expert": 3})
    with pytest.raises(InvalidInputError, match="gated=False"):
        build_moex(_cfg(gated=True), {})


def test_moex_architecture_found_without_importing_its_module_first():
    # training names the architecture before any manifest says which module registers it
    import subprocess
    import sys

    code = ("import sys; from workbench.models.architectures import get_architecture; "
            "assert 'workbench.models.moex' not in sys.modules; "
            "print(get_architecture('moex').name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "moex", out.stderr[-2000:]
