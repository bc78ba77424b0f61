"""SAE architectures: forward shapes, the top-AFA k(x) rule, BatchTopK's L0, the structured
SAE's group sparsity, and the trainer's sparse paths against the inference classes."""

from __future__ import annotations

from collections import deque

import pytest
import torch
from fixtures_lab import ARCH_KW
from sae_lens import SAE

import saes  # noqa: F401  (registers topafa / structured with sae-lens)
import sparse_ops
from saes.structured import StructuredSAE, StructuredSAEConfig
from saes.topafa import TopAFASAE, TopAFASAEConfig
from saes.training import SAETrainConfig, SAETrainer
from saes.training.distributed import Reducer
from saes.training.losses import LossContext
from sparse_ops import cpu_native

pytestmark = pytest.mark.usefixtures("one_thread")

D_IN = 16
EXPECTED_CLASS = {"topk": "TopKSAE", "batchtopk": "JumpReLUSAE", "topafa": "TopAFASAE",
                  "structured": "StructuredSAE", "relu": "StandardSAE", "jumprelu": "JumpReLUSAE"}


def _trainer(arch: str, steps: int = 3, **kw) -> tuple[SAETrainer, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(256 * (steps + 1), D_IN) * 3 + 1
    cfg = SAETrainConfig(name=f"t-{arch}", arch=arch, tokens=256 * steps, batch_size=256,
                         dead_window_tokens=256, **{**ARCH_KW[arch], **kw}).resolved(D_IN)
    t = SAETrainer(cfg, D_IN, torch.device("cpu"), Reducer())
    t.initialize(x[:256])
    for i in range(steps):
        t.step(x[i * 256:(i + 1) * 256])
    return t, x[-256:]


@pytest.mark.parametrize("arch", list(ARCH_KW))
def test_exported_sae_shapes_and_matches_trainer(arch):
    t, x = _trainer(arch)
    sae = t.export({"model_name": "m", "hook_name": "blocks.0.hook_resid_post"})
    assert type(sae).__name__ == EXPECTED_CLASS[arch]
    d_sae = 64
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (D_IN, d_sae)
    batch = x[:30].view(2, 15, D_IN)
    f = sae.encode(batch)
    assert f.shape == (2, 15, d_sae) and bool((f >= 0).all())
    assert sae.decode(f).shape == (2, 15, D_IN)
    expected = t.normalizer.denormalize(x, t.model.reconstruct(t.normalizer(x)))
    got = sae(x)
    if arch == "topafa":
        # k(x) is an argmin over |sqrt(C_j) - ||z|||: where two gaps nearly tie, the rounding of
        # the export's normalization (not of the rule) may move the cut by one latent
        off = ((got - expected).abs() > 1e-4 + 1e-4 * expected.abs()).any(dim=1)
        assert int(off.sum()) <= max(1, x.shape[0] // 100), f"{int(off.sum())} rows differ"
        got, expected = got[~off], expected[~off]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_topafa_k_rule_on_hand_made_inputs():
    """s_i = (a_i ||W_dec,i||)^2 sorted descending decides the kept set, not a_i alone."""
    cfg = TopAFASAEConfig(d_in=4, d_sae=4)
    sae = TopAFASAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4))
        sae.b_dec.zero_()
        sae.W_dec.copy_(torch.diag(torch.tensor([0.1, 2.0, 1.0, 3.0])))
    x = torch.tensor([[3.0, 1.0, 0.5, 0.2],    # s = [.09, 4, .25, .36]: C = 4, 4.36, 4.61, guard
                      [0.0, 2.0, 0.0, 0.3]])   # s = [0, 16, 0, .81]:    C = 16, 16.81, ...
    # row 0: ||z|| = 3.208 -> |sqrt(C) - ||z|||: 1.21, 1.12, 1.06, 1e4 -> k = 3 -> keep {1, 3, 2}
    # row 1: ||z|| = 2.022 -> |sqrt(C) - ||z|||: 1.98, 2.08, 2.08, 1e4 -> k = 1 -> keep {1}
    f = sae.encode(x)
    torch.testing.assert_close(f, torch.tensor([[0.0, 1.0, 0.5, 0.2], [0.0, 2.0, 0.0, 0.0]]))


@pytest.mark.parametrize("kernels", ["cpu", "torch"])
def test_topafa_training_path_matches_full_selection_with_retries(kernels):
    # cpu: the native cut over the whole dictionary; torch: candidates widened and redone
    t, x = _trainer("topafa", steps=1, kernels=kernels)
    model = t.model
    z = t.normalizer(x) - model.b_dec.detach()
    model.width.fill_(2)  # far too few candidates: the torch path must widen and redo
    ctx = LossContext(torch.ones(()), z.shape[0], None, Reducer(local=True))
    code = model.encode_sparse(z, ctx)
    rows = torch.repeat_interleave(torch.arange(z.shape[0]), code.lengths)  # flat bags
    dense = torch.zeros(z.shape[0], 64).index_put_((rows, code.indices), code.values.detach())
    sae = model.export("none", {})
    with torch.no_grad():
        full = sae.encode(z + model.b_dec)  # the inference class sorts all latents
    torch.testing.assert_close(dense, full)
    assert int(model.width) > 2
    # firing counts of the ragged code: the kept pairs
    fired, n_active = model.fired_units(code)
    assert torch.equal(fired, (full > 0).sum(dim=0))
    assert int(n_active) == int((full > 0).sum())


def test_batchtopk_mean_l0_is_k_and_selection_is_exact():
    t, x = _trainer("batchtopk", steps=1)
    model = t.model
    z = t.normalizer(x) - model.b_dec.detach()
    model.width.fill_(4)  # = k: rows that want more force a retry
    ctx = LossContext(torch.ones(()), z.shape[0], None, Reducer(local=True))
    code = model.encode_sparse(z, ctx)
    active = code.values.detach() > 0
    assert int(active.sum()) == 4 * z.shape[0]  # mean L0 == k exactly
    with torch.no_grad():
        pre = torch.relu(z @ model.W_enc.T + model.b_enc).flatten()
    expected = torch.topk(pre, 4 * z.shape[0]).indices
    got = (torch.arange(z.shape[0])[:, None] * 64 + code.indices)[active]
    assert torch.equal(got.sort().values, expected.sort().values)
    assert int(active.sum(1).max()) > 4  # L0 varies per token


def test_structured_sae_keeps_at_most_k_groups():
    cfg = StructuredSAEConfig(d_in=D_IN, d_sae=40, n_groups=10, group_size=4, k_groups=3)
    sae = StructuredSAE(cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_()
    f = sae.encode(torch.randn(7, 5, D_IN))
    groups_on = (f.view(7, 5, 10, 4) != 0).any(-1).sum(-1)
    assert int(groups_on.max()) <= 3 and int(groups_on.min()) == 3
    posteriors = sae.group_posteriors(torch.randn(3, D_IN))
    torch.testing.assert_close(posteriors.sum(-1), torch.ones(3, 10))


CPU_BACKENDS = ["cpu", "torch"] if cpu_native.available() else ["torch"]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_sparse_kernels_match_dense_autograd(backend):
    torch.manual_seed(1)
    n, d, h, k = 40, 12, 96, 5
    x, W, b = torch.randn(n, d), torch.randn(h, d), torch.randn(h) * 0.1
    Wd, bd = torch.randn(h, d), torch.randn(d)

    def run(sparse: bool):
        ps = [t.clone().requires_grad_() for t in (x, W, b, Wd, bd)]
        if sparse:
            vals, idx = sparse_ops.topk_encode(ps[0], ps[1], ps[2], k, backend, sort=False)
            out = sparse_ops.sparse_decode(vals, idx, ps[3], ps[4], backend)
        else:
            pre = torch.relu(ps[0] @ ps[1].T + ps[2])
            top = torch.topk(pre, k, dim=1)
            f = torch.zeros_like(pre).scatter(1, top.indices, top.values)
            out = f @ ps[3] + ps[4]
        out.pow(2).sum().backward()
        return out, [p.grad for p in ps]

    out_s, grads_s = run(True)
    out_d, grads_d = run(False)
    torch.testing.assert_close(out_s, out_d, rtol=1e-4, atol=1e-4)
    for gs, gd in zip(grads_s, grads_d):
        torch.testing.assert_close(gs, gd, rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(not cpu_native.available(), reason="no C compiler: no native top-k")
def test_exact_topk_two_level_equals_torch_topk():
    pre = torch.randn(64, 1024)
    for k in (1, 7, 32, 200):
        values, indices = cpu_native.topk_rows(pre, k)
        ref = torch.topk(pre, k, dim=1)
        assert torch.equal(indices.sort(1).values, ref.indices.sort(1).values)
        torch.testing.assert_close(values.sort(1).values, ref.values.sort(1).values)


def test_registered_architectures_load_through_sae_lens(tmp_path):
    for sae in (TopAFASAE(TopAFASAEConfig(d_in=8, d_sae=24, normalize_activations="layer_norm")),
                StructuredSAE(StructuredSAEConfig(d_in=8, d_sae=24, n_groups=6, group_size=4,
                                                  k_groups=2))):
        folder = tmp_path / sae.cfg.architecture()
        sae.save_model(folder)
        loaded = SAE.load_from_disk(folder)
        assert type(loaded) is type(sae)
        x = torch.randn(9, 8)
        torch.testing.assert_close(loaded(x), sae(x), rtol=0, atol=0)


def test_final_metrics_average_loss_terms_that_come_and_go():
    t, _ = _trainer("topk", steps=1)
    t.recent = deque(maxlen=10)
    t.recent.extend([{"fvu": 0.2, "l0": 4.0, "loss_recon": 0.2},
                     {"fvu": 0.4, "l0": 4.0, "loss_recon": 0.4, "loss_auxk": 0.1}])
    metrics = t.final_metrics()
    assert metrics["train_fvu"] == pytest.approx(0.3)
    assert metrics["loss_auxk"] == pytest.approx(0.05)


def test_batchtopk_exported_threshold_keeps_k_per_token_on_average():
    """The saved JumpReLU threshold is calibrated on the final weights: on the calibration
    batch the inference SAE keeps k latents per token on average."""
    t, x = _trainer("batchtopk", steps=4)
    sae = t.export({"model_name": "m", "hook_name": "blocks.0.hook_resid_post"}, last_batch=x)
    with torch.no_grad():
        l0 = (sae.encode(x) > 0).sum(-1).float().mean()
    assert abs(float(l0) - 4) <= 0.05 * 4
