"""Block-sparse and threshold-skipping (BLASST) attention, and the block index builders."""

from __future__ import annotations

from sparse_ops.testing import enable_interpreter_for_cpu_tests

enable_interpreter_for_cpu_tests()  # before any Triton kernel module is loaded

import pytest
import torch

import sparse_ops
from sparse_ops import (
    SparseOpsInputError,
    blasst_attention,
    blasst_attention_reference,
    block_sparse_attention,
    block_sparse_attention_reference,
    dense_causal_attention,
)
from sparse_ops.bench import AttentionShape, attention_inputs
from sparse_ops.testing import test_device, tolerance, triton_backends

DEVICE = test_device()
BACKENDS = triton_backends()


def qkv(batch, heads, seq, head_dim, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, heads, seq, head_dim, generator=g).to(DEVICE, dtype)
                 for _ in range(3))


# ----------------------------------------------------------------------------------------------
# block index formats and builders


def test_mask_lists_round_trip_drops_above_diagonal():
    mask = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(1)) > 0.5
    idx, cnt = sparse_ops.block_mask_to_lists(mask)
    assert idx.dtype == cnt.dtype == torch.int32
    causal = mask & torch.ones(5, 5, dtype=torch.bool).tril()
    assert torch.equal(cnt, causal.sum(-1).int())
    assert torch.equal(sparse_ops.block_lists_to_mask(idx, cnt, 5), causal)
    for b, h, i in [(0, 0, 4), (1, 2, 3)]:
        listed = idx[b, h, i, : cnt[b, h, i]].tolist()
        assert listed == sorted(listed) and listed == causal[b, h, i].nonzero().flatten().tolist()
    assert sparse_ops.computed_fraction(mask) == pytest.approx(causal.sum().item() / (6 * 15))


def test_topk_block_index_keeps_sink_diagonal_and_budget():
    q, k, _ = qkv(1, 2, 100, 16)
    mask = sparse_ops.topk_block_index(q, k, 16, keep_blocks=3)  # 7 blocks, last one partial
    assert mask.shape == (1, 2, 7, 7)
    assert mask[..., 0].all() and mask.diagonal(dim1=-2, dim2=-1).all()
    assert not (mask & ~torch.ones(7, 7, dtype=torch.bool, device=DEVICE).tril()).any()
    want = torch.tensor([min(3, i + 1) for i in range(7)], device=DEVICE)
    assert torch.equal(mask.sum(-1), want.expand(1, 2, 7))


def test_topk_block_index_picks_the_highest_pooled_score():
    q, k, _ = qkv(1, 1, 64, 16, seed=2)
    k[:, :, 32:48] += 5 * q[:, :, 48:64].mean(2, keepdim=True)  # block 2 matches block 3's queries
    mask = sparse_ops.topk_block_index(q, k, 16, keep_blocks=3)
    assert mask[0, 0, 3].tolist() == [True, False, True, True]


def test_vertical_slash_index_finds_columns_and_diagonals():
    seq, bs, n = 128, 16, 8
    q, k, _ = qkv(1, 1, seq, 32, seed=3)
    u = torch.randn(32, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    u = u / u.norm()
    q += 4 * u
    k[:, :, 40] = 8 * u  # key 40 is read by every query: a vertical line
    mask = sparse_ops.vertical_slash_index(q, k, bs, n_vertical=1, n_slash=0, last_q=64)
    col = 40 // bs
    assert mask[0, 0, col:, col].all(), "a vertical line marks its block for all later blocks"
    # diagonal + first column + the vertical column, minus the overlaps
    assert mask[0, 0].sum().item() == n + n - 1 + (n - col) - 1

    # key j holds query j + 48: the attention runs along the diagonal at offset 48 = 3 blocks
    q2 = 3 * torch.randn(1, 1, seq, 32, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    k2 = torch.roll(q2, shifts=-48, dims=2)
    mask2 = sparse_ops.vertical_slash_index(q2, k2, bs, n_vertical=0, n_slash=1, last_q=64)
    for i in range(3, n):
        assert mask2[0, 0, i, i - 3], f"query block {i} must see key block {i - 3}"
    assert mask2[0, 0].sum().item() == n + n - 1 + (n - 3) - 1


# ----------------------------------------------------------------------------------------------
# block-sparse attention


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head_dim,seq,block", [(64, 70, 16), (128, 96, 32), (64, 33, 32)])
def test_block_sparse_matches_reference(backend, head_dim, seq, block):
    q, k, v = qkv(2, 2, seq, head_dim)
    mask = sparse_ops.topk_block_index(q, k, block, keep_blocks=2)
    out, fraction = block_sparse_attention(q, k, v, mask, block, backend=backend)
    want = block_sparse_attention_reference(q, k, v, mask, block)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    assert fraction == pytest.approx(sparse_ops.computed_fraction(mask))
    assert out.shape == q.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_block_sparse_full_mask_is_dense_attention_and_lists_format(backend):
    q, k, v = qkv(1, 2, 50, 64, seed=5)
    full = torch.ones(1, 1, 4, 4, dtype=torch.bool, device=DEVICE)  # broadcast over B, H
    out, fraction = block_sparse_attention(q, k, v, full, 16, backend=backend)
    torch.testing.assert_close(out, dense_causal_attention(q, k, v), atol=1e-5, rtol=1e-5)
    assert fraction == 1.0
    lists = sparse_ops.block_mask_to_lists(full.expand(1, 2, 4, 4))
    out2, _ = block_sparse_attention(q, k, v, lists, 16, backend=backend)
    torch.testing.assert_close(out2, out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_block_sparse_rows_without_keys_are_zero(backend):
    q, k, v = qkv(1, 1, 64, 64, seed=6)
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool, device=DEVICE).tril()
    mask[0, 0, 2] = False  # query block 2 visits nothing
    out, fraction = block_sparse_attention(q, k, v, mask, 16, backend=backend)
    assert (out[0, 0, 32:48] == 0).all()
    torch.testing.assert_close(out, block_sparse_attention_reference(q, k, v, mask, 16),
                               atol=1e-5, rtol=1e-5)
    assert fraction == pytest.approx(7 / 10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_block_sparse_half_precision(backend, dtype):
    q, k, v = qkv(1, 2, 64, 64, dtype=dtype, seed=7)
    mask = sparse_ops.vertical_slash_index(q, k, 16, n_vertical=4, n_slash=4, last_q=16)
    out, _ = block_sparse_attention(q, k, v, mask, 16, backend=backend)
    assert out.dtype == dtype
    torch.testing.assert_close(out, block_sparse_attention_reference(q, k, v, mask, 16),
                               **tolerance(dtype))


# ----------------------------------------------------------------------------------------------
# BLASST


def peaked_qkv(seq, head_dim, block, heads=2, peaked=0.5, dtype=torch.float32):
    shape = AttentionShape(1, heads, seq, head_dim, block, 0.0)
    return attention_inputs(shape, DEVICE, dtype, peaked_heads=peaked, seed=9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head_dim,seq,block", [(64, 70, 16), (128, 80, 32)])
def test_blasst_zero_threshold_is_exact(backend, head_dim, seq, block):
    q, k, v = qkv(1, 2, seq, head_dim, seed=8)
    out, fraction = blasst_attention(q, k, v, 0.0, block, backend=backend)
    torch.testing.assert_close(out, dense_causal_attention(q, k, v), atol=1e-5, rtol=1e-5)
    assert fraction == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head_dim,seq,block", [(64, 100, 16), (128, 90, 32)])
def test_blasst_skips_and_stays_within_bound(backend, head_dim, seq, block):
    threshold = 1e-3
    q, k, v = peaked_qkv(seq, head_dim, block)
    out, fraction = blasst_attention(q, k, v, threshold, block, backend=backend)
    ref_out, ref_fraction = blasst_attention_reference(q, k, v, threshold, block)
    assert fraction < 0.9, "peaked heads should let blocks be skipped"
    assert fraction == pytest.approx(ref_fraction)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    exact = dense_causal_attention(q, k, v)
    bound = 2 * threshold * seq * v.abs().max()
    assert (out - exact).abs().max() <= bound
    skipped_everything = blasst_attention(q, k, v, 0.99, block, backend=backend)[1]
    assert skipped_everything <= fraction


@pytest.mark.parametrize("backend", BACKENDS)
def test_blasst_skip_rule_is_exactly_ln_lambda(backend):
    """Constant scores per key block: block 0 scores 0, block 1 ln(lambda) - 0.5 (skipped),
    block 2 ln(lambda) + 0.5 (kept), block 3 scores 0. Walk per query block 0..3 computes
    1, 1 (0; 1 skipped), 2 (0, 2), 3 (0, 2, 3) blocks: 7 of 10."""
    threshold, block, head_dim = 1e-2, 16, 16
    log_lambda = torch.tensor(threshold).log().item()
    levels = [0.0, log_lambda - 0.5, log_lambda + 0.5, 0.0]
    e0 = torch.zeros(head_dim)
    e0[0] = 1.0
    q = e0.repeat(1, 1, 4 * block, 1)
    k = torch.cat([e0 * lvl * head_dim**0.5 for lvl in levels for _ in range(block)])
    k = k.view(1, 1, 4 * block, head_dim)
    v = torch.randn(1, 1, 4 * block, head_dim, generator=torch.Generator().manual_seed(10))
    q, k, v = q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)
    out, fraction = blasst_attention(q, k, v, threshold, block, backend=backend)
    assert fraction == pytest.approx(0.7)
    assert blasst_attention(q, k, v, threshold**2, block, backend=backend)[1] == 1.0
    torch.testing.assert_close(out, blasst_attention_reference(q, k, v, threshold, block)[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_blasst_half_precision(backend):
    q, k, v = peaked_qkv(64, 64, 16, dtype=torch.float16)
    out, fraction = blasst_attention(q, k, v, 1e-3, 16, backend=backend)
    ref_out, ref_fraction = blasst_attention_reference(q, k, v, 1e-3, 16)
    assert out.dtype == torch.float16 and fraction == pytest.approx(ref_fraction)
    torch.testing.assert_close(out, ref_out, **tolerance(torch.float16))


# ----------------------------------------------------------------------------------------------
# validation


def test_attention_rejects_bad_inputs_with_clear_errors():
    q, k, v = qkv(1, 2, 40, 64)
    mask = torch.ones(1, 2, 3, 3, dtype=torch.bool, device=DEVICE)
    with pytest.raises(SparseOpsInputError, match="share the shape"):
        block_sparse_attention(q, k[:, :, :30], v, mask, 16)
    with pytest.raises(SparseOpsInputError, match=r"expected \[1 or 1, 2 or 1, 3, 3\]"):
        block_sparse_attention(q, k, v, mask[..., :2, :2], 16)
    with pytest.raises(SparseOpsInputError, match="dtype torch.float32; supported: bool"):
        block_sparse_attention(q, k, v, mask.float(), 16)
    with pytest.raises(SparseOpsInputError, match="block_size must be a positive int"):
        blasst_attention(q, k, v, 1e-3, 0)
    with pytest.raises(SparseOpsInputError, match=r"threshold \(lambda\) must be a number in"):
        blasst_attention(q, k, v, 1.5, 16)
    with pytest.raises(SparseOpsInputError, match="4 dimensions"):
        blasst_attention(q[0], k[0], v[0], 1e-3, 16)
    with pytest.raises(SparseOpsInputError, match="different dtypes"):
        blasst_attention(q, k.half(), v, 1e-3, 16)
    with pytest.raises(SparseOpsInputError, match="block mask .* or a"):
        block_sparse_attention(q, k, v, [mask], 16)
    if "triton" in BACKENDS:
        with pytest.raises(SparseOpsInputError, match="power of two in"):
            blasst_attention(q, k, v, 1e-3, 24, backend="triton")
        q2, k2, v2 = qkv(1, 1, 20, 48)
        with pytest.raises(SparseOpsInputError, match="head_dim=48"):
            blasst_attention(q2, k2, v2, 1e-3, 16, backend="triton")
    # the torch path accepts any block size and head dim
    out, _ = blasst_attention(q, k, v, 1e-3, 24, backend="torch")
    assert out.shape == q.shape
