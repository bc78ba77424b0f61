"""Fused top-k encode and top-AFA: Triton (interpreter on CPU) and torch paths vs the reference."""

from __future__ import annotations

from sparse_ops.testing import enable_interpreter_for_cpu_tests

enable_interpreter_for_cpu_tests()  # before any Triton kernel module is loaded

import pytest
import torch

import sparse_ops
from sparse_ops import SparseOpsInputError, cpu_native, topk_encode, topk_encode_reference
from sparse_ops.testing import test_device, tolerance, triton_backends
from sparse_ops.decode import padding_mask

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
def test_topafa_encode_keeps_what_the_full_sort_keeps(backend):
    z, W, _ = make_sae(10, 16, 40, seed=6)
    W = torch.nn.functional.normalize(W, dim=1)  # unit rows, as the trainer keeps them
    dec_norms = torch.ones(40, device=DEVICE)
    code = sparse_ops.topafa_encode(z, W, None, dec_norms, backend=backend, width=2)
    acts = torch.relu(z @ W.T)
    want, want_k = topafa_dense_reference(acts, dec_norms, z.norm(dim=1))
    assert torch.equal(code.k, want_k)
    torch.testing.assert_close(sparse_ops.topafa_dense(code, 40), want)
    # flat bags: exactly the kept pairs, no padding
    assert code.values.shape == code.indices.shape == (int(code.lengths.sum()),)
    assert torch.equal(code.offsets, torch.cumsum(code.lengths, 0) - code.lengths)


# ----------------------------------------------------------------------------------------------
# top-AFA's ragged code: the native cut and the decode/backward with lengths


def _full_sort_kept(pre: torch.Tensor, dec_norms: torch.Tensor, z_norm: torch.Tensor):
    """The rule's definition: every latent a candidate, sorted in full (sparse_ops.topafa_select)."""
    acts = torch.relu(pre)
    ids = torch.arange(pre.shape[1]).expand_as(pre)
    return sparse_ops.topafa_select(acts, ids, dec_norms, z_norm)


def _dense_from_bags(shape, lengths, ids, vals) -> torch.Tensor:
    rows = torch.repeat_interleave(torch.arange(shape[0]), lengths)
    return torch.zeros(shape).index_put_((rows, ids), vals, accumulate=True)


def _adversarial_rows(latents: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    pre = torch.randint(-2, 3, (40, latents), generator=g).float()  # ties everywhere
    z_norm = torch.rand(40, generator=g) * 30
    pre[0] = -1.0                              # all-zero row
    pre[1] = 0.0                               # all exactly zero
    z_norm[2] = 1e5                            # ||z|| beyond every C_j: the guard decides
    pre[3], z_norm[3] = 1.0, 1e4               # every latent tied, k(x) = the whole dictionary
    z_norm[4] = 0.0                            # zero input norm
    z_norm[5] = float(latents) ** 0.5          # exactly reachable
    pre[6], z_norm[6] = 1.0, 100.5 ** 0.5      # the crossing inside one bucket of equal scores
    pre[7] = 1.0 + torch.arange(latents) % 3 * 1e-3  # three close levels, one score bin
    z_norm[7] = 150.0 ** 0.5
    pre[8] = torch.rand(latents, generator=g) * 1e-3  # a bucket of tiny scores under a big one
    pre[8, 5], z_norm[8] = 30.0, 30.0000001
    return pre.contiguous(), z_norm


@pytest.mark.skipif(not cpu_native.available(), reason="no C compiler for the native kernels")
@pytest.mark.parametrize("case", ["gaussian", "scaled norms", "adversarial"])
def test_native_topafa_cut_equals_the_full_sort(case):
    latents, d = 512, 32
    g = torch.Generator().manual_seed(3)
    W = torch.nn.functional.normalize(torch.randn(latents, d, generator=g), dim=1)
    dec_norms = torch.ones(latents)
    if case == "adversarial":
        pre, z_norm = _adversarial_rows(latents)
    else:
        z = torch.randn(300, d, generator=g) * torch.rand(300, 1, generator=g) * 4
        pre, z_norm = (z @ W.T).contiguous(), z.norm(dim=1)
        if case == "scaled norms":
            dec_norms = torch.rand(latents, generator=g) + 0.5
    k, lengths, offsets, ids, vals = cpu_native.topafa_rows(pre, dec_norms, z_norm)
    want, want_k = _full_sort_kept(pre, dec_norms, z_norm)
    assert torch.equal(k, want_k)
    got = _dense_from_bags(pre.shape, lengths, ids, vals)
    assert torch.equal(got > 0, want > 0)  # the same latents, ties broken the same way
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert torch.equal(lengths, (want > 0).sum(dim=1))
    if case == "adversarial":
        assert int(k[3]) == latents and int(lengths[3]) == latents  # the whole dictionary
        assert int(lengths[0]) == 0 and int(lengths[1]) == 0


@pytest.mark.skipif(not cpu_native.available(), reason="no C compiler for the native kernels")
def test_native_topafa_cut_on_the_default_lab_shape():
    # trained top-AFA SAEs: unit decoder rows, a few thousand latents, k(x) from 1 to hundreds
    g = torch.Generator().manual_seed(8)
    latents, d = 2048, 128
    W = torch.nn.functional.normalize(torch.randn(latents, d, generator=g), dim=1)
    z = torch.randn(512, d, generator=g) * (0.2 + 3 * torch.rand(512, 1, generator=g))
    pre = (z @ W.T).contiguous()
    k, lengths, offsets, ids, vals = cpu_native.topafa_rows(pre, torch.ones(latents),
                                                            z.norm(dim=1))
    want, want_k = _full_sort_kept(pre, torch.ones(latents), z.norm(dim=1))
    assert torch.equal(k, want_k)
    torch.testing.assert_close(_dense_from_bags(pre.shape, lengths, ids, vals), want,
                               rtol=0, atol=0)
    assert torch.equal(offsets, torch.cumsum(lengths, 0) - lengths)
    for t in (0, 17, 511):  # increasing latent ids within each token's bag
        bag = ids[int(offsets[t]):int(offsets[t] + lengths[t])]
        assert bool((bag[1:] > bag[:-1]).all())


@pytest.mark.skipif(not cpu_native.available(), reason="no C compiler for the native kernels")
def test_native_topafa_cut_on_rows_with_long_tails_of_tiny_scores():
    # like a trained top-AFA SAE: hundreds of positive latents, most of them tiny, and ||z||
    # beyond or near their total, so the cut lands where adding a score barely moves C
    # (float32 sums stop moving there, and the last bit of sqrt would decide)
    g = torch.Generator().manual_seed(21)
    latents = 2048
    scale = torch.exp(-12 * torch.rand(1024, latents, generator=g))  # 1 .. 6e-6
    pre = torch.where(torch.rand(1024, latents, generator=g) < 0.25, scale, -scale).contiguous()
    total = (torch.relu(pre) ** 2).sum(dim=1).sqrt()
    z_norm = total * (0.9 + 0.2 * torch.rand(1024, generator=g))
    k, lengths, offsets, ids, vals = cpu_native.topafa_rows(pre, torch.ones(latents), z_norm)
    want, want_k = _full_sort_kept(pre, torch.ones(latents), z_norm)
    assert torch.equal(k, want_k)
    assert torch.equal(_dense_from_bags(pre.shape, lengths, ids, vals), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ragged_decode_and_encode_gradients_match_the_dense_code(backend):
    z, W, _ = make_sae(24, 16, 64, seed=9)
    W = torch.nn.functional.normalize(W, dim=1)
    dec_norms = torch.ones(64, device=DEVICE)
    W_enc = W.clone().requires_grad_(True)
    W_dec = W.clone().requires_grad_(True)
    z = z.clone().requires_grad_(True)
    code = sparse_ops.topafa_encode(z, W_enc, None, dec_norms, backend=backend)
    x_hat = sparse_ops.sparse_decode(code.values, code.indices, W_dec, None, backend=backend,
                                     offsets=code.offsets)
    loss = (x_hat - 1.0).pow(2).sum() + code.values.pow(2).sum() + code.values.sum()
    grads = torch.autograd.grad(loss, (z, W_enc, W_dec))
    # the same kept set as a dense masked code through plain autograd
    z2, W_enc2, W_dec2 = (t.detach().clone().requires_grad_(True) for t in (z, W_enc, W_dec))
    acts = torch.relu(z2 @ W_enc2.T)
    keep = (sparse_ops.topafa_dense(code, 64) > 0).to(acts.dtype)
    f = acts * keep
    loss2 = (f @ W_dec2 - 1.0).pow(2).sum() + f.pow(2).sum() + f.sum()
    want = torch.autograd.grad(loss2, (z2, W_enc2, W_dec2))
    for got, expected in zip(grads, want):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_flat_bag_decode_equals_the_padded_code_and_validates(backend):
    # tokens with 2, 0 and 3 pairs: the same code padded (lengths) and as flat bags (offsets)
    g = torch.Generator().manual_seed(4)
    W = torch.randn(6, 5, generator=g).to(DEVICE)
    b = torch.randn(5, generator=g).to(DEVICE)
    padded = torch.rand(3, 3, generator=g).to(DEVICE)
    ids = torch.tensor([[0, 5, 0], [0, 0, 0], [2, 5, 1]], device=DEVICE)
    lengths = torch.tensor([2, 0, 3], device=DEVICE)
    keep = padding_mask(lengths, 3)
    flat = padded[keep].clone()
    outs, grads = [], []
    for vals, kw in ((padded, {"lengths": lengths}),
                     (flat, {"offsets": torch.tensor([0, 2, 2], device=DEVICE)})):
        vals = vals.clone().requires_grad_(True)
        Wd, bd = W.clone().requires_grad_(True), b.clone().requires_grad_(True)
        idx = ids if vals.dim() == 2 else ids[keep]
        out = sparse_ops.sparse_decode(vals, idx, Wd, bd, backend=backend, **kw)
        gv, gW, gb = torch.autograd.grad((out * out.detach().cos()).sum(), (vals, Wd, bd))
        outs.append(out)
        grads.append((gv if gv.dim() == 1 else gv[keep], gW, gb))
    torch.testing.assert_close(outs[0], outs[1])
    assert outs[1][1].tolist() == pytest.approx(b.tolist())  # an empty bag decodes to b_dec
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(SparseOpsInputError, match="offsets must rise from 0"):
        sparse_ops.sparse_decode(flat, ids[keep], W, b, offsets=torch.tensor([0, 3, 2], device=DEVICE))
    with pytest.raises(SparseOpsInputError, match="not both"):
        sparse_ops.sparse_decode(flat, ids[keep], W, b, lengths=lengths,
                                 offsets=torch.tensor([0, 2, 2], device=DEVICE))
    with pytest.raises(SparseOpsInputError, match="6 latents"):
        sparse_ops.sparse_decode(flat, ids[keep] + 3, W, b, offsets=torch.tensor([0, 2, 2], device=DEVICE))


def test_decode_lengths_ignore_padding_and_validate():
    values = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]], device=DEVICE)
    indices = torch.tensor([[0, 1, 2], [1, 2, 0]], device=DEVICE)
    W = torch.eye(3, device=DEVICE)
    out = sparse_ops.sparse_decode(values, indices, W, None, lengths=torch.tensor([2, 1], device=DEVICE))
    assert out.tolist() == [[1.0, 2.0, 0.0], [0.0, 3.0, 0.0]]
    with pytest.raises(SparseOpsInputError, match="lengths must lie in"):
        sparse_ops.sparse_decode(values, indices, W, None, lengths=torch.tensor([4, 1], device=DEVICE))
    with pytest.raises(SparseOpsInputError, match="lengths has 1 entries"):
        sparse_ops.sparse_decode(values, indices, W, None, lengths=torch.tensor([1], device=DEVICE))


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
