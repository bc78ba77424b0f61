"""MoE-X vs dense on text (`saes.text_eval`, `workbench moex text`): validation loss and the
language concept evaluation of MLP hidden units and of SAE features, on a small lab."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures_lab import small_lm_setup
from typer.testing import CliRunner

from app.cli import app
from saes.evaluation.concepts import ConceptEvalConfig, evaluate_concepts
from saes.text_eval import TextRow, UnitCodes, evaluate_text_table
from workbench.errors import InvalidInputError

SPEC = {"n_experts": 4, "k": 2, "d_expert": 64, "variant": "moex"}


@pytest.fixture(scope="module")
def text_lab(tmp_path_factory):
    import workbench.models.moex  # noqa: F401 (registers the "moex" architecture)
    from saes.training import SAETrainConfig, tensor_source, train_saes
    from workbench.models.presets import lm_config
    from workbench.models.tokenizer import load_tokenizer
    from workbench.models.train_config import LMTrainConfig
    from workbench.models.training import train_lm

    lab, corpus, model = small_lm_setup(tmp_path_factory.mktemp("text") / "lab")
    cfg = lm_config("tiny", d_vocab=len(load_tokenizer(lab, "tok")), n_ctx=64, d_mlp=128,
                    act_fn="relu")
    train_lm(lab, "mx", corpus.name, "tok", cfg,
             LMTrainConfig(steps=2, batch_size=4, warmup_steps=1, eval_every=2, eval_sequences=4,
                           final_eval_sequences=8, save_every=2, precision="fp32"),
             architecture="moex", architecture_options=SPEC, progress=False)
    tokens = model.to_tokens(corpus.texts("train")[:40])[:, :64]
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.1.mlp.hook_post"])
    x = cache["blocks.1.mlp.hook_post"].reshape(-1, model.cfg.d_mlp)
    train_saes(lab, [SAETrainConfig(name="lm-sae", arch="topk", latents=256, k=8, tokens=4096,
                                    batch_size=512)],
               tensor_source(x, "lm", "blocks.1.mlp.hook_post"), progress=False)
    return lab


def test_units_and_sae_features_through_the_concept_evaluation(text_lab):
    rows = [TextRow("dense neurons", "lm"), TextRow("SAE on dense", "lm", sae="lm-sae"),
            TextRow("MoE-X units", "mx")]
    records = evaluate_text_table(text_lab, "corpus", rows, layer=1, n_tokens=2048,
                                  name="text-table", echo=lambda s: None)
    by = {r["variant"]: r for r in records}
    assert by["dense neurons"]["units"] == 512 and by["SAE on dense"]["units"] == 256
    assert by["MoE-X units"]["units"] == 4 * 64
    # the wide hidden vector is zero outside the k selected experts: L0 <= k * d_expert
    assert 0 < by["MoE-X units"]["l0"] <= 2 * 64
    assert by["SAE on dense"]["l0"] <= 8 + 1e-6  # TopK
    for r in records:
        assert 0.5 <= r["concept_latent_auroc"] <= 1 and 0 <= r["concept_probe_accuracy"] <= 1
        assert r["val_loss"] is not None or r["model"] == "lm"  # `lm` is stored untrained
        assert r["n_tokens"] > 1024
    stored = json.loads((text_lab.get("text-table").path / "table.json").read_text())
    assert [r["variant"] for r in stored] == [r.label for r in rows]
    assert set(json.loads((text_lab.get("text-table").path / "concepts.json").read_text())) \
        == {r.label for r in rows}


def test_unit_codes_are_the_units_themselves():
    import numpy as np

    from workbench.probes.data import ProbeData

    g = torch.Generator().manual_seed(0)
    groups = torch.arange(200).repeat_interleave(10)
    labels = np.array(["a", "b"])[(groups % 2).numpy()]
    x = torch.rand(2000, 6, generator=g)
    x[:, 4] += torch.from_numpy(labels == "b").float()  # unit 4 marks language "b"
    result = evaluate_concepts(UnitCodes(6), ProbeData(x, labels, groups),
                               ConceptEvalConfig(n_tokens=2000))
    assert result["single_latent"]["per_class"]["b"]["latent"] == 4
    assert result["single_latent"]["per_class"]["b"]["test_auroc"] > 0.95
    assert torch.equal(UnitCodes(6).encode(x), x)


def test_text_command_and_errors(text_lab):
    out = CliRunner().invoke(app, ["--lab", str(text_lab.root), "moex", "text", "--corpus",
                                   "corpus", "--models", "dense=lm,MoE-X=mx", "--layer", "1",
                                   "--tokens", "2048"])
    assert out.exit_code == 0, out.output
    assert "unit AUROC" in out.output and "MoE-X" in out.output
    with pytest.raises(InvalidInputError, match="outside model"):
        evaluate_text_table(text_lab, "corpus", [TextRow("x", "mx")], layer=5)
    with pytest.raises(InvalidInputError, match="at least 1024 tokens"):
        evaluate_text_table(text_lab, "corpus", [TextRow("x", "mx")], layer=1, n_tokens=10)
