"""Board-state coverage / reconstruction on constructed features with known answers."""

from __future__ import annotations

import pytest
import torch

from saes.board_eval import (
    UnitCells,
    board_probe_accuracy,
    board_state_metrics,
    cell_labels,
    router_score_l0,
)
from workbench.errors import InvalidInputError


def _boards(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 13, (n, 64), generator=g)


def test_perfect_features_score_one():
    fit, test = _boards(600, 0), _boards(400, 1)
    noise_fit, noise_test = torch.rand(600, 50), torch.rand(400, 50)
    fit_x = torch.cat([cell_labels(fit).float() * 3.0, noise_fit], 1)
    test_x = torch.cat([cell_labels(test).float() * 3.0, noise_test], 1)
    result = board_state_metrics(fit_x, fit, test_x, test)
    assert result.coverage == pytest.approx(1.0)
    assert result.reconstruction == pytest.approx(1.0)
    assert result.n_cells == 768 and result.n_features == 768 + 50


def test_random_features_are_near_chance():
    fit, test = _boards(600, 0), _boards(400, 1)
    g = torch.Generator().manual_seed(2)
    p = cell_labels(test).float().mean(0)
    chance = float((2 * p / (1 + p)).mean())  # F1 of a feature that is always on
    assert chance == pytest.approx(0.143, abs=0.01)
    one = board_state_metrics(torch.rand(600, 1, generator=g), fit,
                              torch.rand(400, 1, generator=g), test)
    assert one.coverage == pytest.approx(chance, abs=0.01)
    assert one.reconstruction == 0.0  # no random feature reaches 95% precision
    # many random features: the best of 300 per cell is selection-biased upwards, still far
    # from a real feature
    many = board_state_metrics(torch.rand(600, 300, generator=g), fit,
                               torch.rand(400, 300, generator=g), test)
    assert chance < many.coverage < 0.3 and many.reconstruction < 0.05


def test_one_perfect_cell_among_random_features():
    fit, test = _boards(600, 0), _boards(400, 1)
    cell = 5 * 12 + 3  # square 5, class 4
    fit_x = torch.rand(600, 20)
    test_x = torch.rand(400, 20)
    fit_x[:, 0] = cell_labels(fit)[:, cell].float()
    test_x[:, 0] = cell_labels(test)[:, cell].float()
    result = board_state_metrics(fit_x, fit, test_x, test)
    random_only = board_state_metrics(fit_x[:, 1:], fit, test_x[:, 1:], test)
    f1 = board_state_metrics(fit_x, fit, test_x, test).coverage_by_t
    assert result.coverage > random_only.coverage
    assert max(f1) == result.coverage
    assert 0 < result.reconstruction < 0.2  # one cell of 768 reconstructed exactly


def test_probe_reads_a_linear_board_code():
    fit, test = _boards(500, 0), _boards(300, 1)
    acc = board_probe_accuracy(cell_labels(fit).float(), fit, cell_labels(test).float(), test,
                               squares=[0, 17])
    assert acc["probe_accuracy"] > 0.8  # chance 1/13


def test_mismatched_inputs():
    with pytest.raises(InvalidInputError, match="matching rows"):
        board_state_metrics(torch.rand(5, 3), _boards(4, 0), torch.rand(5, 3), _boards(5, 0))


def test_each_unit_gets_its_best_cell():
    fit, test = _boards(600, 0), _boards(400, 1)
    cells = [7 * 12 + 0, 30 * 12 + 11, 63 * 12 + 5]  # P on h1, k on g4, K on h8
    fit_x, test_x = torch.rand(600, 4), torch.rand(400, 4)
    for i, c in enumerate(cells):
        fit_x[:, i] = cell_labels(fit)[:, c].float() * (i + 1)
        test_x[:, i] = cell_labels(test)[:, c].float() * (i + 1)
    fit_x[:, 3] = test_x[:, 3] = 0.0  # a unit that never fires
    units = board_state_metrics(fit_x, fit, test_x, test).units
    assert units.cell.tolist()[:3] == cells and units.cell[3] == -1
    assert units.f1[:3].tolist() == pytest.approx([1.0] * 3) and units.f1[3] == 0
    assert units.square_piece(1) == (30, 12) and units.square_piece(3) is None
    assert units.max_act.tolist() == pytest.approx([1.0, 2.0, 3.0, 0.0])
    back = UnitCells.from_frame(units.to_frame("x").sample(frac=1.0, random_state=0))
    assert back.cell.tolist() == units.cell.tolist()
    assert back.f1.tolist() == pytest.approx(units.f1.tolist())


def test_router_pairs_and_expert_load():
    from transformer_lens import HookedTransformerConfig

    from workbench.models.moex import MoESpec, build_moex

    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=16,
                                  d_vocab=20, n_ctx=12, act_fn="relu", seed=0)
    model = build_moex(cfg, MoESpec(n_experts=4, k=2, d_expert=8).to_options())
    tokens = torch.randint(0, 20, (3, 12), generator=torch.Generator().manual_seed(0))
    full = router_score_l0(model, tokens, max_pairs=10_000)
    assert len(full["router_pairs"]) == 2 and len(full["expert_load"]) == 2
    assert full["router_games"] == 3  # what the page's dead-experts caption names
    for layer, pairs, load, r in zip((0, 1), full["router_pairs"], full["expert_load"],
                                     full["router_l0_r_per_layer"]):
        assert pairs["layer"] == layer and len(pairs["score"]) == 3 * 12 * 4
        assert sorted(set(pairs["expert"])) == [0, 1, 2, 3]
        xy = torch.tensor([pairs["score"], pairs["l0"]])
        assert float(torch.corrcoef(xy)[0, 1]) == pytest.approx(r, abs=1e-5)  # all pairs: r
        assert sum(load) == pytest.approx(1.0) and len(load) == 4
    few = router_score_l0(model, tokens, max_pairs=50)
    assert all(len(p["score"]) == 50 for p in few["router_pairs"])
    assert few["router_l0_r"] == pytest.approx(full["router_l0_r"])
    assert few["dead_experts"] == sum(x == 0 for load in full["expert_load"] for x in load)
