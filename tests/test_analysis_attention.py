"""Attention sparsity: metrics and pattern classes on constructed patterns, the sparse-attention
what-if on a small model."""

from __future__ import annotations

import pytest
import torch

from workbench.analysis.attention import (
    AttentionConfig,
    HeadStats,
    SparseMethod,
    attention_stats,
    head_tables,
    pattern_metrics,
    whatif_run,
    whatif_tables,
)
from workbench.errors import InvalidInputError

CTX = 128


def _normalized(weights: torch.Tensor) -> torch.Tensor:
    weights = weights * torch.ones(CTX, CTX).tril()
    return weights / weights.sum(-1, keepdim=True)


def a_shape_pattern() -> torch.Tensor:
    """Half of every query's mass on key 0 (the sink), half on its last 4 keys."""
    w = torch.zeros(CTX, CTX)
    w[:, 0] = 4.0
    for q in range(CTX):
        w[q, max(0, q - 3):q + 1] += 1.0
    return _normalized(w)


def vertical_slash_pattern() -> torch.Tensor:
    """Mass on key columns 30 and 31 and on the diagonal 50 tokens back (the query itself
    before any of them is visible): far from the sink and the local window."""
    w = torch.zeros(CTX, CTX)
    for q in range(CTX):
        cells = [k for k in (30, 31) if k <= q] + ([q - 50] if q >= 50 else [])
        for k in cells or [q]:
            w[q, k] = 1.0
    return _normalized(w)


def dense_pattern() -> torch.Tensor:
    return _normalized(torch.ones(CTX, CTX))


def classes_of(patterns: list[torch.Tensor], cfg: AttentionConfig | None = None) -> list[str]:
    """Pattern class per head for patterns [ctx, ctx] given as heads of one layer (two copies
    of the sequence, as two batches, to exercise the accumulation)."""
    cfg = cfg or AttentionConfig()
    stats = HeadStats(1, len(patterns), CTX)
    batch = torch.stack(patterns)[None]  # [1, heads, ctx, ctx]
    for _ in range(2):
        stats.add(0, pattern_metrics(batch, cfg))
    return head_tables(stats, cfg)["heads"].pattern_class.tolist()


def test_constructed_patterns_are_classified():
    assert classes_of([a_shape_pattern(), vertical_slash_pattern(), dense_pattern()]) == [
        "A-shape", "vertical-slash", "dense"]


def test_block_sparse_pattern_is_classified():
    """Each query block reads its own block and one other, far block (not a column/diagonal)."""
    torch.manual_seed(0)
    w = torch.zeros(CTX, CTX)
    bs = 16
    for qb in range(CTX // bs):
        other = int(torch.randint(0, qb + 1, ()))
        for q in range(qb * bs, (qb + 1) * bs):
            w[q, other * bs:(other + 1) * bs] = torch.rand(bs) + 0.5
            w[q, qb * bs:q + 1] = torch.rand(q + 1 - qb * bs) + 0.5
    cfg = AttentionConfig(n_vertical=2, n_slash=2)
    assert classes_of([_normalized(w)], cfg) == ["block-sparse"]


def test_one_hot_attention_needs_one_key():
    one_hot = torch.eye(CTX)[None, None]  # every query attends only to itself
    m = pattern_metrics(one_hot)
    for key in ("k90_keys",):
        assert torch.all(m[key] == 1)
    positions = torch.arange(1, CTX).float()
    for key in ("k90", "k95", "k99"):
        torch.testing.assert_close(m[key][0, 0], 1.0 / (positions + 1))
    torch.testing.assert_close(m["eff_keys"][0, 0], torch.ones(CTX - 1))
    # attention to the first key only: all sink mass, local only where key 0 is local
    sink = torch.zeros(CTX, CTX)
    sink[:, 0] = 1.0
    m = pattern_metrics(sink[None, None])
    assert torch.all(m["sink_mass"] == 1) and torch.all(m["k90_keys"] == 1)


def test_dense_metrics_match_closed_form():
    m = pattern_metrics(dense_pattern()[None, None])
    q = torch.arange(1, CTX).float()
    torch.testing.assert_close(m["entropy"][0, 0], torch.log(q + 1))
    # the fewest keys with 90% of a uniform mass: ceil(0.9 (q + 1))
    torch.testing.assert_close(m["k90_keys"][0, 0], torch.ceil(0.9 * (q + 1) - 1e-6))


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    from fixtures_lab import small_lm_setup

    return small_lm_setup(tmp_path_factory.mktemp("attn") / "lab")[2]


def test_streamed_stats_and_whatif_on_a_model(small_model):
    model = small_model
    tokens = torch.randint(0, model.cfg.d_vocab, (6, 64))
    cfg = AttentionConfig(batch_tokens=128, block_size=16)
    stats = attention_stats(model, tokens, cfg)
    heads = head_tables(stats, cfg)["heads"]
    assert len(heads) == model.cfg.n_layers * model.cfg.n_heads
    assert (heads.n_queries == 6 * 63).all()
    assert heads.k90.between(0, 1).all() and heads.pattern_class.notna().all()
    # exact settings of the sparse methods reproduce the dense model
    dense_loss, _, _ = whatif_run(model, tokens, None, cfg)
    for method in (SparseMethod("blasst", 0, "lambda=0", (0.0,)),
                   SparseMethod("block_topk", 0, "keep_blocks=4", (4,))):
        loss, fractions, errors = whatif_run(model, tokens, method, cfg)
        assert loss == pytest.approx(dense_loss, abs=1e-4)
        assert all(e < 1e-4 for e in errors.values())
        assert all(f == pytest.approx(1.0) for f in fractions.values())
    tables = whatif_tables(model, tokens, AttentionConfig(
        batch_tokens=128, block_keep=(2,), vs_levels=((2, 2),), blasst_lambdas=(0.5,)))
    whatif = tables["whatif"]
    assert list(whatif.method) == ["dense", "block_topk", "vertical_slash", "blasst"]
    keep2 = whatif[whatif.method == "block_topk"].iloc[0]
    # 4 blocks: sink + diagonal keep 7 of the 10 causal blocks
    assert keep2.compute_sparsity == pytest.approx(0.3)
    layer_rows = tables["whatif_layers"]
    assert (layer_rows[layer_rows.method == "block_topk"].output_error > 0).all()


def test_bad_attention_settings():
    with pytest.raises(InvalidInputError, match="lambda"):
        AttentionConfig(blasst_lambdas=(1.5,)).validate()
    with pytest.raises(InvalidInputError, match="block_size"):
        AttentionConfig(block_size=0).validate()
    with pytest.raises(InvalidInputError, match="pattern must be"):
        pattern_metrics(torch.ones(1, 1, 4, 5))
