"""Depth utilization on constructed cases: an identity layer, a layer that is an affine map."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.analysis.depth import (
    DepthConfig,
    analyze_depth,
    angular_distance,
    compare_depth,
    fit_affine_maps,
)
from workbench.errors import InvalidInputError


@pytest.fixture(scope="module")
def small_lab(tmp_path_factory):
    from fixtures_lab import small_lm_setup

    return small_lm_setup(tmp_path_factory.mktemp("depth") / "lab")[0]


@pytest.fixture()
def setup(small_lab):
    """The lab and a fresh copy of its random `lm` (tests change the model's weights)."""
    from workbench.models.loading import load_model

    return small_lab, load_model("lm", small_lab, device="cpu")


CFG = DepthConfig(corpus="corpus", n_tokens=1024, fit_tokens=1024, batch_tokens=512)


def make_identity(model, layer: int) -> None:
    """Block `layer` adds nothing to the residual stream (zero attention and MLP outputs)."""
    block = model.blocks[layer]
    with torch.no_grad():
        for p in (block.attn.W_O, block.attn.b_O, block.mlp.W_out, block.mlp.b_out):
            p.zero_()


def make_affine(model, layer: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Block `layer` computes x -> x A + c (permanent hooks replace its output)."""
    gen = torch.Generator().manual_seed(seed)
    d = model.cfg.d_model
    A = torch.eye(d) + 0.3 * torch.randn(d, d, generator=gen) / math.sqrt(d)
    c = 0.5 * torch.randn(d, generator=gen)
    stash = {}
    model.add_hook(f"blocks.{layer}.hook_resid_pre",
                   lambda x, hook: stash.__setitem__("x", x), is_permanent=True)
    model.add_hook(f"blocks.{layer}.hook_resid_post",
                   lambda x, hook: stash["x"] @ A + c, is_permanent=True)
    return A, c


def test_angular_distance_closed_form():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    torch.testing.assert_close(angular_distance(x, y), torch.tensor([0.0, 0.5, 1.0],
                                                                    dtype=torch.float64))


def test_identity_layer_has_distance_zero_and_is_not_useful(setup):
    lab, model = setup
    make_identity(model, 1)
    result = analyze_depth(model, lab, CFG, progress=False)
    angular, layers = result["tables"]["angular"], result["tables"]["layers"]
    d11 = angular[(angular.layer == 1) & (angular.n == 1)].distance.item()
    assert d11 < 1e-3
    assert angular[(angular.layer == 0) & (angular.n == 1)].distance.item() > 0.05
    row = layers[layers.layer == 1].iloc[0]
    assert not row.useful
    assert row.skip_delta == pytest.approx(0.0, abs=1e-5)
    assert row.affine_ratio == pytest.approx(1.0, abs=1e-3)
    assert row.affine_fit_r2 == pytest.approx(1.0, abs=1e-6)
    causal = result["tables"]["causal"]
    assert causal.score.item() >= 0  # skipping layer 0 changes layer 1's (zero) update by 0
    assert result["summary"]["n_useful"] <= 1


def test_affine_layer_is_fitted_exactly_and_not_useful(setup):
    lab, model = setup
    A, c = make_affine(model, 0)
    maps = fit_affine_maps(model, torch.randint(0, model.cfg.d_vocab, (24, 64)))
    torch.testing.assert_close(maps[0].W.float(), A, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(maps[0].b.float(), c, atol=1e-3, rtol=1e-3)
    result = analyze_depth(model, lab, CFG, progress=False)
    row = result["tables"]["layers"].iloc[0]
    assert row.affine_ratio == pytest.approx(1.0, abs=1e-3) and not row.useful
    # the same analysis with a threshold below 1 calls every layer useful
    low = analyze_depth(model, lab, DepthConfig(**{**CFG.__dict__, "useful_ratio": 0.5}),
                        progress=False)
    assert low["summary"]["global_usefulness"] == 1.0


def test_comparison_table_across_models(setup):
    lab, _ = setup
    result = compare_depth(["lm", "lm"], lab, DepthConfig(corpus="corpus", n_tokens=512,
                                                          fit_tokens=512), progress=False)
    table = result["tables"]["comparison"]
    assert list(table.model) == ["lm", "lm"] and (table.n_layers == 2).all()
    assert set(result["tables"]["layers"].model) == {"lm"}


def test_bad_depth_input():
    with pytest.raises(InvalidInputError, match="useful_ratio"):
        DepthConfig(useful_ratio=-1).validate()
    with pytest.raises(InvalidInputError, match="at least one model"):
        compare_depth([])
