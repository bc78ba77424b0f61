"""The native CPU backend of sparse_ops (sparse_ops/cpu_native.c) against PyTorch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sparse_ops
from sparse_ops import cpu_native
from sparse_ops.decode import gather_dot

pytestmark = pytest.mark.skipif(not cpu_native.available(),
                                reason="no C compiler: the PyTorch path is used (tested elsewhere)")


def _check_topk(pre, k, values, indices, columns=None):
    ref = torch.topk(pre if columns is None else pre[:, columns], k, dim=1).values
    torch.testing.assert_close(values.sort(1, descending=True).values, ref, rtol=0, atol=0)
    torch.testing.assert_close(pre.gather(1, indices), values, rtol=0, atol=0)
    assert torch.equal(indices, indices.sort(1).values)  # canonical order: increasing column
    assert all(len(set(row.tolist())) == k for row in indices)
    if columns is not None:
        assert bool(torch.isin(indices, columns).all())


@pytest.mark.parametrize("n,L,k", [(300, 4096, 32), (64, 4096, 128), (50, 100, 7), (9, 33, 33),
                                   (40, 4096, 1), (17, 260, 130)])
@pytest.mark.parametrize("kind", ["normal", "mostly_negative", "ties"])
def test_topk_rows_equals_torch_topk(n, L, k, kind):
    g = torch.Generator().manual_seed(n + L + k)
    pre = torch.randn(n, L, generator=g)
    if kind == "mostly_negative":
        pre -= 2.5
    if kind == "ties":
        pre = torch.randint(0, 4, (n, L), generator=g).float()
    values, indices = cpu_native.topk_rows(pre, k)
    _check_topk(pre, k, values, indices)


@pytest.mark.parametrize("k", [1, 16, 128])
def test_topk_rows_among_columns(k):
    g = torch.Generator().manual_seed(k)
    pre = torch.randn(200, 1000, generator=g)
    columns = torch.randperm(1000, generator=g)[:300].sort().values
    values, indices = cpu_native.topk_rows(pre, k, columns)
    _check_topk(pre, k, values, indices, columns)


def test_topk_rows_reads_strided_rows_and_flags_nan_rows():
    pre = torch.randn(20, 64)
    view = pre[:, :48]  # row stride 64, 48 columns
    values, indices = cpu_native.topk_rows(view, 5)
    _check_topk(view, 5, values, indices)
    pre[3] = float("nan")
    values, _ = cpu_native.topk_rows(pre, 5)
    assert bool(values[3].isnan().all())  # a NaN row comes out NaN, so the loss guard sees it
    assert not bool(values[[0, 1, 2, 4]].isnan().any())
    with pytest.raises(ValueError, match="k=65"):
        cpu_native.topk_rows(pre, 65)


def test_pair_sums_match_embedding_bag_gradients():
    n, K, L, D = 64, 8, 40, 19  # D not a multiple of the vector width
    vals, idx = torch.rand(n, K), torch.randint(0, L, (n, K))
    W, G = torch.randn(L, D), torch.randn(n, D)
    out, bias, grad_vals = cpu_native.pair_sums(vals, idx, G, L, with_bias=True, W=W)
    torch.testing.assert_close(grad_vals, gather_dot(G, idx, W, "torch"), rtol=1e-5, atol=1e-5)
    Wr = W.clone().requires_grad_()
    (F.embedding_bag(idx, Wr, per_sample_weights=vals, mode="sum") * G).sum().backward()
    torch.testing.assert_close(out, Wr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bias, torch.zeros(L).index_add_(0, idx.reshape(-1),
                                                                vals.reshape(-1)))
    out2, no_bias, no_grad_vals = cpu_native.pair_sums(vals, idx, G, L)
    assert no_bias is None and no_grad_vals is None
    torch.testing.assert_close(out2, out)
    with pytest.raises(ValueError, match="outside"):
        cpu_native.pair_sums(vals, idx, G, L - 30)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_topk_encode_among_matches_encoding_the_listed_rows(backend):
    """AuxK's encode among dead latents: same values, latent ids and gradients as encoding with
    the gathered rows (what it replaces), also when the main encode's pre-activations are
    handed on."""
    torch.manual_seed(0)
    x, W, b = torch.randn(30, 12), torch.randn(80, 12), torch.randn(80) * 0.1
    columns = torch.tensor([1, 5, 6, 20, 33, 34, 50, 61, 62, 79])

    def run(among: bool):
        ps = [t.clone().requires_grad_() for t in (x, W, b)]
        *_, pre = sparse_ops.topk_encode(ps[0], ps[1], ps[2], 6, backend,
                                         keep_preactivations=True)  # the main encode
        if among:
            values, ids = sparse_ops.topk_encode_among(ps[0], ps[1], ps[2], 4, columns, backend,
                                                       preactivations=pre)
        else:
            values, pos = sparse_ops.topk_encode(ps[0], ps[1][columns], ps[2][columns], 4,
                                                 backend)
            ids = columns[pos]
        order = ids.argsort(1)
        values, ids = values.gather(1, order), ids.gather(1, order)
        (values * torch.arange(1.0, 5.0)).sum().backward()
        return values, ids, [p.grad for p in ps]

    got, want = run(True), run(False)
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[0], want[0])
    for g, w in zip(got[2], want[2]):
        torch.testing.assert_close(g, w)


def test_without_a_compiler_the_torch_path_runs(monkeypatch):
    monkeypatch.setenv("WORKBENCH_NATIVE", "0")
    monkeypatch.setattr(cpu_native, "_STATE", {})
    assert not cpu_native.available()
    x, W = torch.randn(10, 6), torch.randn(40, 6)
    values, _ = sparse_ops.topk_encode(x, W, None, 3)
    ref = torch.topk(x @ W.T, 3, dim=1).values.relu()
    torch.testing.assert_close(values.sort(1, descending=True).values, ref)
