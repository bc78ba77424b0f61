"""sae-lens interop: every trained SAE is a sae-lens folder that `SAE.load_from_disk` and
`HookedSAETransformer` use unchanged; sae-lens's own folders load, import, train and evaluate
here; broken folders give clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures_lab import ARCH_KW
from sae_lens import SAE, HookedSAETransformer, TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata
from transformer_lens import HookedTransformerConfig

from saes.interop import import_sae, load_sae
from saes.training import SAETrainConfig, tensor_source, train_saes
from workbench.errors import InvalidInputError, NotFoundError, WorkbenchError
from workbench.lab import Lab

pytestmark = pytest.mark.usefixtures("one_thread")


D_IN = 16
HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One artifact per architecture, trained in a single sweep over one stream."""
    lab = Lab(tmp_path_factory.mktemp("lab"))
    torch.manual_seed(0)
    x = torch.randn(4096, D_IN) * 2 + 0.5
    configs = [SAETrainConfig(name=f"s-{arch}", arch=arch, tokens=2048, batch_size=256, **kw)
               for arch, kw in ARCH_KW.items()]
    arts = train_saes(lab, configs, tensor_source(x, "tiny-model", HOOK), progress=False)
    return lab, {a.manifest["arch"]: a for a in arts}, x


def test_every_arch_roundtrips_through_sae_lens_with_metadata(trained):
    lab, arts, x = trained
    for art in arts.values():
        cfg = json.loads((art.path / "cfg.json").read_text())
        assert cfg["d_in"] == D_IN and cfg["d_sae"] == 64
        assert cfg["metadata"]["hook_name"] == HOOK and cfg["metadata"]["model_name"] == "tiny-model"
        sae = SAE.load_from_disk(art.path)
        again = load_sae(art.name, lab=lab)
        torch.testing.assert_close(sae(x[:64]), again(x[:64]), rtol=0, atol=0)
        assert art.metrics["export_check_error"] < 1e-4
        assert art.manifest["d_in"] == D_IN and art.manifest["hook"] == HOOK
    assert json.loads((arts["topafa"].path / "cfg.json").read_text())["afa_lambda"] == 1 / 32
    structured = json.loads((arts["structured"].path / "cfg.json").read_text())
    assert (structured["n_groups"], structured["group_size"], structured["k_groups"]) == (16, 4, 3)


def test_run_with_saes_splices_every_arch(trained):
    lab, arts, _ = trained
    cfg = HookedTransformerConfig(n_layers=1, d_model=D_IN, n_ctx=8, d_head=4, n_heads=4,
                                  d_mlp=32, d_vocab=50, act_fn="relu")
    torch.manual_seed(0)
    model = HookedSAETransformer(cfg).eval()
    tokens = torch.randint(0, 50, (2, 8))
    clean = model(tokens)
    for arch, art in arts.items():
        sae = load_sae(art.name, lab=lab)
        spliced = model.run_with_saes(tokens, saes=[sae])
        by_hand = model.run_with_hooks(
            tokens, fwd_hooks=[(HOOK, lambda act, hook, sae=sae: sae(act))])
        torch.testing.assert_close(spliced, by_hand, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(spliced, clean), arch
        with_error = model.run_with_saes(tokens, saes=[sae], use_error_term=True)
        torch.testing.assert_close(with_error, clean, rtol=1e-4, atol=1e-4)


def _sae_lens_topk_folder(path, d_in=D_IN, d_sae=32):
    torch.manual_seed(3)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=4,
                                metadata=SAEMetadata(model_name="tiny-model", hook_name=HOOK)))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
    sae.save_model(path)
    return sae


def test_sae_lens_topk_folder_loads_imports_trains_and_evaluates(tmp_path):
    folder = tmp_path / "sae_lens_topk"
    original = _sae_lens_topk_folder(folder)
    x = torch.randn(3000, D_IN)
    loaded = load_sae(folder, device="cpu")
    torch.testing.assert_close(loaded(x), original(x), rtol=0, atol=0)

    lab = Lab(tmp_path / "lab")
    art = import_sae(lab, folder, "imported", hook=HOOK)
    assert art.kind == "sae" and art.manifest["arch"] == "topk" and art.manifest["d_sae"] == 32
    torch.testing.assert_close(load_sae("imported", lab=lab)(x), original(x), rtol=0, atol=0)

    def nmse(sae):
        with torch.no_grad():
            return float(((sae(x) - x).pow(2).sum(1) / x.pow(2).sum(1)).mean())

    before = nmse(loaded)
    cfg = SAETrainConfig(name="continued", arch="topk", init_from="imported", tokens=2560,
                         batch_size=256, normalize="none", lr=3e-3)
    (cont,) = train_saes(lab, [cfg], tensor_source(x, "tiny-model", HOOK), progress=False)
    assert cont.config["latents"] == 32 and cont.config["k"] == 4  # taken from the imported SAE
    assert nmse(load_sae("continued", lab=lab)) < 0.9 * before


def test_init_from_checks_width_and_architecture(tmp_path):
    lab = Lab(tmp_path / "lab")
    _sae_lens_topk_folder(tmp_path / "f", d_in=D_IN + 1)
    x = torch.randn(1024, D_IN)
    with pytest.raises(InvalidInputError, match="width 16 .* d_in=17"):
        train_saes(lab, [SAETrainConfig(name="a", arch="topk", init_from=str(tmp_path / "f"),
                                        tokens=512, batch_size=256)], x, progress=False)
    with pytest.raises(InvalidInputError, match="can start from"):
        train_saes(lab, [SAETrainConfig(name="b", arch="relu", init_from=str(tmp_path / "f"),
                                        tokens=512, batch_size=256)], x, progress=False)


def test_broken_sae_folders_give_clear_errors(tmp_path):
    folder = tmp_path / "sae"
    _sae_lens_topk_folder(folder)
    weights = folder / "sae_weights.safetensors"
    weights.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(InvalidInputError, match="corrupt"):
        load_sae(folder)
    _sae_lens_topk_folder(folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 33}))
    with pytest.raises(InvalidInputError, match="does not match cfg.json"):
        load_sae(folder)
    (folder / "cfg.json").write_text(json.dumps({**cfg, "architecture": "nonesuch"}))
    with pytest.raises(InvalidInputError, match="nonesuch"):
        load_sae(folder)
    (folder / "cfg.json").write_text("{not json")
    with pytest.raises(WorkbenchError, match="corrupt"):
        load_sae(folder)
    with pytest.raises(NotFoundError):
        load_sae("no-such-sae", lab=Lab(tmp_path / "lab"))
    with pytest.raises(NotFoundError, match="release"):
        load_sae("no-such-release/blocks.0.hook_resid_post")
    lab = Lab(tmp_path / "lab")
    with pytest.raises(InvalidInputError):
        import_sae(lab, folder, "bad")
    assert not lab.exists("bad") and not any((lab.root / "tmp").iterdir())
