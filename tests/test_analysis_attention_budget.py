"""The live attention-budget what-if (workbench.analysis.attention_budget): masks on constructed
patterns, exactness at a full budget, and agreement with the stored what-if's block top-k
(sparse_ops block-sparse attention, a separate implementation) on a small model."""

from __future__ import annotations

import pytest
import torch

from workbench.analysis.attention import AttentionConfig, SparseMethod, whatif_run
from workbench.analysis.attention_budget import (
    AttentionBudget,
    restrict_pattern,
    text_whatif,
    top_fraction_mask,
)
from workbench.errors import InvalidInputError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_top_fraction_keeps_the_largest_keys_of_each_row():
    s = 8
    torch.manual_seed(0)
    scores = torch.randn(1, 2, s, s).masked_fill(~torch.ones(s, s, dtype=torch.bool).tril(),
                                                 float("-inf"))
    pattern = scores.softmax(-1)
    mask = top_fraction_mask(pattern, 0.5)
    counts = mask.sum(-1)[0, 0]
    expected = torch.ceil(0.5 * torch.arange(1, s + 1)).long()
    assert counts.tolist() == expected.tolist()
    assert not (mask & ~torch.ones(s, s, dtype=torch.bool).tril()).any()
    row = pattern[0, 1, 6]
    kept = row[mask[0, 1, 6]]
    dropped = row[~mask[0, 1, 6] & (torch.arange(s) <= 6)]
    assert kept.min() >= dropped.max()
    full = top_fraction_mask(pattern, 1.0)
    assert torch.equal(full[0, 0], torch.ones(s, s, dtype=torch.bool).tril())
    restricted = restrict_pattern(pattern, mask)
    torch.testing.assert_close(restricted.sum(-1), torch.ones(1, 2, s))
    # restricting the scores then taking the softmax is the same
    torch.testing.assert_close(restricted, scores.masked_fill(~mask, float("-inf")).softmax(-1))


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    from fixtures_lab import small_lm_setup

    return small_lm_setup(tmp_path_factory.mktemp("budget") / "lab")[2]


def test_full_budget_is_the_dense_model(small_model):
    tokens = torch.randint(0, small_model.cfg.d_vocab, (1, 40), generator=torch.Generator()
                           .manual_seed(1))
    for budget in (AttentionBudget("top_fraction", 1.0), AttentionBudget("block_topk", 8, 8)):
        result = text_whatif(small_model, tokens, budget, show=(1, 0))
        assert result.loss_sparse == pytest.approx(result.loss_dense, abs=1e-5)
        assert result.mean_kl < 1e-6 and result.top1_agreement == 1.0
        assert result.compute_sparsity == pytest.approx(0.0, abs=1e-9)
        assert (result.per_layer.output_error < 1e-5).all()
        assert result.pattern_dense.shape == (40, 40)


def test_a_smaller_budget_changes_the_output_and_matches_block_sparse_attention(small_model):
    tokens = torch.randint(0, small_model.cfg.d_vocab, (1, 64), generator=torch.Generator()
                           .manual_seed(2))
    tight = text_whatif(small_model, tokens, AttentionBudget("top_fraction", 0.1), show=(0, 1))
    assert tight.compute_sparsity > 0.5
    assert tight.mean_kl > 1e-4 and tight.loss_sparse != pytest.approx(tight.loss_dense)
    assert (tight.per_layer.output_error > 0).all()
    kept_rows = tight.kept.sum(-1)
    assert kept_rows[63] == 7 and kept_rows[0] == 1  # ceil(0.1 * 64), ceil(0.1 * 1)
    assert (tight.pattern_sparse[~tight.kept] == 0).all()
    # only layer 1 budgeted: layer 0's output is untouched
    one = text_whatif(small_model, tokens, AttentionBudget("top_fraction", 0.1), layers=[1])
    assert one.layers_sparse == [1] and list(one.per_layer.layer) == [1]
    assert one.kept.sum() == 64 * 65 // 2  # the shown layer 0 is not budgeted: all kept
    # block top-k through the pattern hook = sparse_ops' block-sparse attention (hook_z)
    cfg = AttentionConfig(block_size=16, batch_tokens=4096)
    budget = AttentionBudget("block_topk", 2, 16)
    ours = text_whatif(small_model, tokens, budget)
    loss, fractions, _ = whatif_run(small_model, tokens, SparseMethod("block_topk", 0,
                                                                      "keep_blocks=2", (2,)), cfg)
    assert ours.loss_sparse == pytest.approx(loss, abs=2e-4)
    assert ours.compute_sparsity == pytest.approx(1 - sum(fractions.values()) / len(fractions))


def test_bad_budgets_are_refused(small_model):
    tokens = torch.randint(0, small_model.cfg.d_vocab, (1, 8))
    with pytest.raises(InvalidInputError, match="fraction"):
        text_whatif(small_model, tokens, AttentionBudget("top_fraction", 0.0))
    with pytest.raises(InvalidInputError, match="whole number"):
        text_whatif(small_model, tokens, AttentionBudget("block_topk", 1.5))
    with pytest.raises(InvalidInputError, match="unknown attention budget"):
        text_whatif(small_model, tokens, AttentionBudget("random", 0.5))
    with pytest.raises(InvalidInputError, match="no head"):
        text_whatif(small_model, tokens, AttentionBudget("top_fraction", 0.5), show=(9, 0))
    with pytest.raises(InvalidInputError, match="do not exist"):
        text_whatif(small_model, tokens, AttentionBudget("top_fraction", 0.5), layers=[7])
