"""Sparse decode: forward and backward on both backends against embedding_bag autograd."""

from __future__ import annotations

from sparse_ops.testing import enable_interpreter_for_cpu_tests

enable_interpreter_for_cpu_tests()  # before any Triton kernel module is loaded

import pytest
import torch

from sparse_ops import SparseOpsInputError, sparse_decode, sparse_decode_reference
from sparse_ops.testing import test_device, tolerance, triton_backends

DEVICE = test_device()
BACKENDS = triton_backends()


def make_code(tokens, k, latents, d_in, dtype=torch.float32, index_dtype=torch.int64, seed=0,
              hot_latent=None):
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(tokens, k, generator=g) * 2
    indices = torch.stack([torch.randperm(latents, generator=g)[:k] for _ in range(tokens)])
    if hot_latent is not None:  # every token uses it: a long segment in the W_dec gradient
        indices[:, 0] = hot_latent
        indices[:, 1:][indices[:, 1:] == hot_latent] = (hot_latent + 1) % latents
    W = torch.randn(latents, d_in, generator=g)
    b = torch.randn(d_in, generator=g)
    return (values.to(DEVICE, dtype), indices.to(DEVICE, index_dtype), W.to(DEVICE, dtype),
            b.to(DEVICE, dtype))


def run_with_grads(fn, values, indices, W, b, grad_out):
    leaves = [t.clone().requires_grad_() for t in (values, W) + (() if b is None else (b,))]
    out = fn(leaves[0], indices, leaves[1], leaves[2] if b is not None else None)
    grads = torch.autograd.grad(out, leaves, grad_out)
    return (out,) + grads


CASES = [
    # tokens, k, latents, d_in: k odd, d_in not a multiple of the tiles, a tiny dictionary
    (37, 5, 50, 40),
    (8, 1, 3, 16),
    (65, 12, 300, 130),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tokens,k,latents,d_in", CASES)
def test_decode_forward_backward_fp32(backend, tokens, k, latents, d_in):
    values, indices, W, b = make_code(tokens, k, latents, d_in)
    grad_out = torch.randn(tokens, d_in, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    got = run_with_grads(lambda *a: sparse_decode(*a, backend=backend), values, indices, W, b,
                         grad_out)
    want = run_with_grads(sparse_decode_reference, values, indices, W, b, grad_out)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decode_half_precision(backend, dtype):
    values, indices, W, b = make_code(20, 4, 30, 24, dtype=dtype)
    grad_out = torch.randn(20, 24, generator=torch.Generator().manual_seed(2)).to(DEVICE, dtype)
    got = run_with_grads(lambda *a: sparse_decode(*a, backend=backend), values, indices, W, b,
                         grad_out)
    want = run_with_grads(sparse_decode_reference, values, indices, W, b, grad_out)
    for g, w in zip(got, want):
        assert g.dtype == dtype
        torch.testing.assert_close(g, w, **tolerance(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_hot_latent_int32_indices_no_bias(backend):
    """A latent used by every token (long sorted segment), int32 indices, no bias; unused
    latents get exactly zero gradient; repeated latents within a row add up."""
    values, indices, W, _ = make_code(40, 6, 64, 32, index_dtype=torch.int32, hot_latent=7)
    indices = indices % 48  # latents 48..63 unused; some rows now repeat a latent
    grad_out = torch.randn(40, 32, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    got = run_with_grads(lambda *a: sparse_decode(*a, backend=backend), values, indices, W, None,
                         grad_out)
    want = run_with_grads(sparse_decode_reference, values, indices, W, None, grad_out)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-5)
    unused = torch.ones(64, dtype=torch.bool, device=DEVICE)
    unused[indices.long().flatten()] = False
    assert unused.any() and (got[2][unused] == 0).all()


def test_decode_rejects_bad_inputs_with_clear_errors():
    values, indices, W, b = make_code(4, 3, 10, 8)
    with pytest.raises(SparseOpsInputError, match=r"entries in \[.*\] but the dictionary has 5"):
        sparse_decode(values, indices, W[:5], b)
    with pytest.raises(SparseOpsInputError, match="same shape"):
        sparse_decode(values[:, :2], indices, W, b)
    with pytest.raises(SparseOpsInputError, match="share a dtype"):
        sparse_decode(values.half(), indices, W, b)
    with pytest.raises(SparseOpsInputError, match="dtype torch.float32; supported: int64, int32"):
        sparse_decode(values, indices.float(), W, b)
    with pytest.raises(SparseOpsInputError, match="transpose"):
        sparse_decode(values, indices, W, b[:7])
    with pytest.raises(SparseOpsInputError, match="rows"):
        sparse_decode(values, indices[:3], W, b)
    with pytest.raises(SparseOpsInputError, match="different devices"):
        sparse_decode(values, indices, W, b.to("meta"))
    negative = indices.clone()
    negative[0, 0] = -1
    with pytest.raises(SparseOpsInputError, match="valid: 0..9"):
        sparse_decode(values, negative, W, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_encode_decode_zero_tokens(backend):
    from sparse_ops import topk_encode

    x = torch.zeros(0, 8, device=DEVICE)
    W = torch.randn(16, 8).to(DEVICE)
    values, indices = topk_encode(x, W, None, 3, backend=backend)
    assert values.shape == indices.shape == (0, 3)
    assert sparse_decode(values, indices, W, None, backend=backend).shape == (0, 8)
