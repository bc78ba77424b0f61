"""Board-state coverage / reconstruction on constructed features with known answers."""

from __future__ import annotations

import pytest
import torch

from saes.board_eval import board_probe_accuracy, board_state_metrics, cell_labels
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
