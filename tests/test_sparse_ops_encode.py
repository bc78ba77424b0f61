"""Fused top-k encode and top-AFA: Triton (interpreter on CPU) and torch paths vs the reference."""

from __future__ import annotations

from sparse_ops.testing import enable_interpreter_for_cpu_tests

enable_interpreter_for_cpu_tests()  # before any Triton kernel module is loaded

import pytest
import torch

import sparse_ops
from sparse_ops import SparseOpsInputError, topk_encode, topk_encode_reference
from sparse_ops.testing import test_device, tolerance, triton_backends

DEVICE = test_device()
BACKENDS = triton_backends()
needs_triton = pytest.mark.skipif("triton" not in BACKENDS, reason="triton cannot run here")


def make_sae(tokens, d_in, latents, dtype=torch.float32, bias_shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, d_in, generator=g)
    W = torch.randn(latents, d_in, generator=g) / d_in**0.5
    b = torch.randn(latents, generator=g) * 0.1 + bias_shift
    return (t.to(DEVICE, dtype) for t in (x, W, b))


def pre_activations(x, W, b):
    pre = x.double() @ W.double().T
    return pre if b is None else pre + b.double()


def check_selection(values, indices, x, W, b, k):
    """values/indices must be the top k of the fp64 pre-activations (up to rounding): sorted,
    distinct, values = relu(pre at indices), and nothing outside beats the k-th value."""
    pre = pre_activations(x, W, b)
    assert values.shape == indices.shape == (x.shape[0], k)
    assert indices.dtype == torch.int64
    assert (indices.sort(1).values.diff(dim=1) > 0).all(), "indices in a row must be distinct"
    assert (values.float().diff(dim=1) <= 0).all(), "values must be sorted descending"
    picked = pre.gather(1, indices)
    tol = tolerance(x.dtype)
    torch.testing.assert_close(values.double(), picked.clamp(min=0).to(values.dtype).double(),
                               **tol)
    kth = picked[:, -1:]
    outside = pre.scatter(1, indices, float("-inf"))
    slack = 1e-3 if x.dtype != torch.float32 else 1e-5
    assert (outside <= kth + slack * (1 + kth.abs())).all(), "a better latent was left out"


CASES = [
    # tokens, d_in, latents, k, bias_shift: k not a power of two, latents not a multiple of 64,
    # k == 1, k == latents, rows with fewer than k positive pre-activations (shift -2)
    (37, 40, 200, 7, 0.0),
    (20, 24, 70, 5, -2.0),
    (9, 16, 64, 1, 0.0),
    (12, 16, 19, 19, 0.0),
    (70, 32, 130, 16, 0.0),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tokens,d_in,latents,k,shift", CASES)
def test_encode_matches_reference(backend, tokens, d_in, latents, k, shift):
    x, W, b = make_sae(tokens, d_in, latents, bias_shift=shift)
    values, indices = topk_encode(x, W, b, k, backend=backend)
    check_selection(values, indices, x, W, b, k)
    ref_values, ref_indices = topk_encode_reference(x, W, b, k)
    torch.testing.assert_close(values, ref_values, **tolerance(x.dtype))
    positive = ref_values > 0
    assert torch.equal(indices[positive], ref_indices[positive])
    if shift < 0:
        assert (values == 0).any(), "case meant to have rows with fewer than k positives"


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_encode_triton_equals_torch_path(dtype):
    """Same selection, ties and order on both backends (fp32 accumulation in both)."""
    x, W, b = make_sae(33, 48, 150, dtype=dtype, seed=1)
    v_t, i_t = topk_encode(x, W, b, 6, backend="triton")
    v_r, i_r = topk_encode(x, W, b, 6, backend="torch")
    check_selection(v_t, i_t, x, W, b, 6)
    assert v_t.dtype == dtype
    assert torch.equal(i_t, i_r)
    torch.testing.assert_close(v_t, v_r, **tolerance(dtype))


@needs_triton
@pytest.mark.parametrize("merge,n_splits", [("extract", 3), ("bitonic", 1), ("bitonic", 2)])
def test_encode_merge_strategies_and_splits(merge, n_splits):
    """Both merge strategies of the kernel and latent splits give the same answer.
    (bitonic is slow in the interpreter: tiny shape.)"""
    x, W, b = make_sae(10, 16, 150, seed=2)
    ref = topk_encode(x, W, b, 5, backend="torch")
    got = topk_encode(x, W, b, 5, backend="triton", merge=merge, n_splits=n_splits)
    assert torch.equal(got[1], ref[1])
    torch.testing.assert_close(got[0], ref[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_break_to_smaller_index(backend):
    """Small integer data makes the pre-activations exact and full of ties: the selection must
    be the stable order (value descending, then index ascending), and an all-zero row must
    return values 0 at indices 0..k-1."""
    g = torch.Generator().manual_seed(8)
    x = torch.randint(-2, 3, (12, 8), generator=g).float().to(DEVICE)
    W = torch.randint(-2, 3, (45, 8), generator=g).float().to(DEVICE)
    x[1] = 0
    values, indices = topk_encode(x, W, None, 6, backend=backend)
    pre = x @ W.T  # exact: small integers
    want = torch.sort(-pre, dim=1, stable=True).indices[:, :6]
    assert torch.equal(indices, want)
    torch.testing.assert_close(values, pre.gather(1, want).clamp(min=0))
    assert torch.equal(indices[1], torch.arange(6, device=DEVICE)) and (values[1] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_encode_gradients_match_reference_autograd(backend, with_bias):
    x, W, b = make_sae(25, 20, 90, bias_shift=-0.3)
    b = b if with_bias else None
    params = [t.clone().requires_grad_() for t in (x, W) + ((b,) if with_bias else ())]
    ref_params = [t.clone().requires_grad_() for t in params]
    g = torch.randn(25, 6, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    values, indices = topk_encode(*params[:2], params[2] if with_bias else None, 6, backend=backend)
    ref_values, _ = topk_encode_reference(*ref_params[:2], ref_params[2] if with_bias else None, 6)
    grads = torch.autograd.grad((values * g).sum(), params)
    ref_grads = torch.autograd.grad((ref_values * g).sum(), ref_params)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    untouched = torch.ones(90, dtype=torch.bool, device=DEVICE)
    untouched[indices.flatten()] = False
    assert (grads[1][untouched] == 0).all(), "W_enc grad must touch only selected latents"


@pytest.mark.parametrize("backend", BACKENDS)
def test_encode_trains(backend):
    """A few SGD steps through encode + decode lower the reconstruction loss."""
    x, W, b = make_sae(32, 16, 64, seed=4)
    W_enc, b_enc = W.clone().requires_grad_(), b.clone().requires_grad_()
    W_dec = W.clone().requires_grad_()
    losses = []
    for _ in range(5):
        values, indices = topk_encode(x, W_enc, b_enc, 8, backend=backend)
        x_hat = sparse_ops.sparse_decode(values, indices, W_dec, None, backend=backend)
        loss = ((x_hat - x) ** 2).mean()
        losses.append(loss.item())
        gW, gb, gd = torch.autograd.grad(loss, (W_enc, b_enc, W_dec))
        with torch.no_grad():
            W_enc -= 0.5 * gW
            b_enc -= 0.5 * gb
            W_dec -= 0.5 * gd
    assert losses[-1] < losses[0]


def test_encode_handles_non_contiguous_input():
    x, W, b = make_sae(16, 24, 50)
    xt = x.T.contiguous().T  # same values, column-major strides
    assert not xt.is_contiguous()
    for backend in BACKENDS:
        got = topk_encode(xt, W, b, 4, backend=backend)
        want = topk_encode(x, W, b, 4, backend="torch")
        assert torch.equal(got[1], want[1])


# ----------------------------------------------------------------------------------------------
# top-AFA


def topafa_dense_reference(acts, dec_norms, z_norm):
    """The published rule over all latents (guard on the last cumulative entry)."""
    scaled = (acts * dec_norms) ** 2
    order = torch.argsort(scaled, dim=-1, descending=True, stable=True)
    cumulative = torch.cumsum(scaled.gather(-1, order), dim=-1)
    cumulative[..., -1] = 1e8
    k = (cumulative.sqrt() - z_norm[:, None]).abs().argmin(-1) + 1
    keep = torch.zeros_like(acts, dtype=torch.bool).scatter_(
        1, order, torch.arange(acts.shape[1], device=acts.device)[None, :] < k[:, None]
    )
    return acts * keep, k


def test_topafa_select_full_candidate_set_matches_published_rule():
    g = torch.Generator().manual_seed(5)
    acts = torch.relu(torch.randn(12, 30, generator=g)).to(DEVICE)
    dec_norms = (torch.rand(30, generator=g) + 0.5).to(DEVICE)
    z_norm = (torch.rand(12, generator=g) * 3).to(DEVICE)
    values, indices = acts.sort(dim=1, descending=True)
    masked, k = sparse_ops.topafa_select(values, indices, dec_norms, z_norm)
    want_dense, want_k = topafa_dense_reference(acts, dec_norms, z_norm)
    got_dense = torch.zeros_like(acts).scatter(1, indices, masked)
    assert torch.equal(k, want_k)
    torch.testing.assert_close(got_dense, want_dense)
    assert ((masked != 0).sum(1) <= k).all()


def test_topafa_select_hand_example_and_gradient():
    # decoder-scaled values 3, 4 (norm 2 * 2), 1: s = 9, 16, 1 -> sorted 16, 9, 1;
    # sqrt(C) = 4, 5, 5.10; ||z|| = 4.9 -> k = 2: keep latents with s 16 and 9
    values = torch.tensor([[3.0, 2.0, 1.0]], device=DEVICE, requires_grad=True)
    indices = torch.tensor([[0, 1, 2]], device=DEVICE)
    dec_norms = torch.tensor([1.0, 2.0, 1.0, 1.0], device=DEVICE)  # 4 latents: no guard
    masked, k = sparse_ops.topafa_select(values, indices, dec_norms, torch.tensor([4.9], device=DEVICE))
    assert k.tolist() == [2]
    assert masked.tolist() == [[3.0, 2.0, 0.0]]
    (grad,) = torch.autograd.grad(masked.sum(), values)
    assert grad.tolist() == [[1.0, 1.0, 0.0]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_topafa_encode(backend):
    z, W, _ = make_sae(10, 16, 40, seed=6)
    dec_norms = torch.rand(40, generator=torch.Generator().manual_seed(7)).to(DEVICE) + 0.5
    masked, indices, k = sparse_ops.topafa_encode(z, W, None, 12, dec_norms, backend=backend)
    values, want_idx = topk_encode(z, W, None, 12, backend="torch")
    want, want_k = sparse_ops.topafa_select(values, want_idx, dec_norms, z.norm(dim=1))
    assert torch.equal(indices, want_idx) and torch.equal(k, want_k)
    torch.testing.assert_close(masked, want)
    assert ((k >= 1) & (k <= 12)).all()


# ----------------------------------------------------------------------------------------------
# input validation


def test_encode_rejects_bad_inputs_with_clear_errors():
    x, W, b = make_sae(4, 8, 16)
    with pytest.raises(SparseOpsInputError, match="transpose"):
        topk_encode(x, W.T.contiguous(), b, 2)
    with pytest.raises(SparseOpsInputError, match="k=17 must be between 1 and"):
        topk_encode(x, W, b, 17)
    with pytest.raises(SparseOpsInputError, match="k=0"):
        topk_encode(x, W, b, 0)
    with pytest.raises(SparseOpsInputError, match="k must be an int"):
        topk_encode(x, W, b, 2.0)
    with pytest.raises(SparseOpsInputError, match="different dtypes"):
        topk_encode(x.double().float().half(), W, b, 2)
    with pytest.raises(SparseOpsInputError, match="dtype torch.int64"):
        topk_encode(x.long(), W, b, 2)
    with pytest.raises(SparseOpsInputError, match="2 dimensions"):
        topk_encode(x[None], W, b, 2)
    with pytest.raises(SparseOpsInputError, match="b_enc has 15 entries"):
        topk_encode(x, W, b[:15], 2)
    with pytest.raises(SparseOpsInputError, match="different devices"):
        topk_encode(x, W.to("meta"), b, 2)
    with pytest.raises(SparseOpsInputError, match="unknown backend"):
        topk_encode(x, W, b, 2, backend="cuda")
    with pytest.raises(SparseOpsInputError, match="merge="):
        topk_encode(x, W, b, 2, merge="heap")


@needs_triton
def test_encode_triton_rejects_huge_k():
    x, W, b = make_sae(2, 4, 1100)
    with pytest.raises(SparseOpsInputError, match="limit of 1024"):
        topk_encode(x, W, b, 1025, backend="triton")
