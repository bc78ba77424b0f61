"""Steering-vector export: GGUF control vectors read back with the gguf reader, the safetensors
pair round trip, Neuronpedia JSON, the same vector in TransformerLens and in the HF export, bad
input, and the `steer export` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer
from fixtures_lab import SMALL_LANGUAGES, read_fortunes
from test_export_hf import LLAMA, make_model
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from steering.export import (
    ModelShape,
    export_vector,
    neuronpedia_request,
    read_gguf,
)
from steering.vectors import SteeringVector
from workbench.errors import InvalidInputError, WorkbenchError
from workbench.models.export_hf import export_hf
from workbench.models.tokenizer import load_tokenizer_folder, train_tokenizer

D_MODEL = 128  # the tiny preset


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = [t for file in SMALL_LANGUAGES.values() for t in read_fortunes(file, 40)]
    folder = tmp_path_factory.mktemp("tok")
    train_tokenizer(texts, vocab_size=400).save_pretrained(str(folder))
    return load_tokenizer_folder(folder)


def make_vector(hooks=("blocks.1.hook_resid_post",), d_model=D_MODEL, seed=0, strength=3.0):
    gen = torch.Generator().manual_seed(seed)
    directions = {h: torch.randn(d_model, generator=gen) for h in hooks}
    norms = {h: 5.0 + i for i, h in enumerate(hooks)}
    return SteeringVector(directions, model="lm", resid_norm=norms, strength=strength,
                          method="diffmean", language="de",
                          features=[{"source": "sae-x", "index": 7, "weight": 0.5}])


# -- GGUF ------------------------------------------------------------------------------------
def test_gguf_control_vector_reads_back(tmp_path):
    vec = make_vector(hooks=("blocks.1.hook_resid_post", "blocks.3.hook_resid_post"))
    shape = ModelShape(D_MODEL, 4, "llama")
    [path] = export_vector(vec, "gguf", tmp_path / "v.gguf", model=shape)
    meta, tensors = read_gguf(path)
    assert meta["general.architecture"] == "controlvector"
    assert meta["controlvector.model_hint"] == "llama"
    assert meta["controlvector.layer_count"] == 2
    assert sorted(tensors) == ["direction.1", "direction.3"]
    for layer, hook in ((1, "blocks.1.hook_resid_post"), (3, "blocks.3.hook_resid_post")):
        values = tensors[f"direction.{layer}"]
        assert values.dtype == np.float32 and values.shape == (D_MODEL,)
        expected = 3.0 * vec.resid_norm[hook] * vec.directions[hook].numpy()
        np.testing.assert_allclose(values, expected, rtol=1e-6)
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(path))
    assert reader.fields["controlvector.layer_count"].types == [GGUFValueType.UINT32]
    assert all(len(t.shape) == 1 and t.tensor_type.name == "F32" for t in reader.tensors)


def test_gguf_strength_override(tmp_path):
    vec = make_vector()
    [path] = export_vector(vec, "gguf", tmp_path / "v.gguf", strength=-2.0)
    _, tensors = read_gguf(path)
    expected = -2.0 * 5.0 * vec.directions["blocks.1.hook_resid_post"].numpy()
    np.testing.assert_allclose(tensors["direction.1"], expected, rtol=1e-6)


@pytest.mark.parametrize("hook, needles", [
    ("blocks.0.hook_resid_post", ["block 0", "direction.0", "L >= 1"]),
    ("blocks.2.hook_resid_pre", ["not a block output", "blocks.1.hook_resid_post"]),
    ("blocks.1.attn.hook_z", ["not a block output", "blocks.L.hook_resid_post"]),
    ("blocks.1.hook_mlp_out", ["not a block output"]),
])
def test_gguf_refuses_hooks_llamacpp_cannot_steer(tmp_path, hook, needles):
    vec = make_vector(hooks=(hook,))
    with pytest.raises(InvalidInputError) as err:
        export_vector(vec, "gguf", tmp_path / "v.gguf")
    for needle in needles:
        assert needle in str(err.value)
    assert list(tmp_path.iterdir()) == []


# -- safetensors pair and Neuronpedia --------------------------------------------------------
def test_safetensors_pair_round_trip_has_identical_effect(tmp_path, tokenizer):
    model = make_model(tokenizer)
    vec = make_vector()
    paths = export_vector(vec, "safetensors", tmp_path / "de", strength=2.5,
                          model=ModelShape.from_config(model.cfg))
    assert [p.name for p in paths] == ["de.safetensors", "de.json"]
    back = SteeringVector.load(tmp_path / "de")
    assert back.strength == 2.5 and back.hooks == vec.hooks and back.features == vec.features
    hook = vec.hooks[0]
    assert torch.equal(back.delta(hook), vec.delta(hook, 2.5))
    tokens = model.to_tokens("Guten Morgen, wie geht es dir heute?")
    with torch.no_grad():
        plain = model(tokens)
        with vec.apply(model, strength=2.5):
            steered = model(tokens)
        with back.apply(model):
            steered_back = model(tokens)
    assert torch.equal(steered, steered_back)
    assert (steered - plain).abs().max() > 1e-2  # the vector does something


def test_neuronpedia_json(tmp_path):
    vec = make_vector()
    [path] = export_vector(vec, "neuronpedia", tmp_path / "np.json", strength=4.0)
    body = json.loads(path.read_text())
    assert body == json.loads(json.dumps(neuronpedia_request(make_vector(strength=4.0))))
    [entry] = body["vectors"]
    assert entry["hook"] == "blocks.1.hook_resid_post" and entry["strength"] == 4.0
    added = entry["strength"] * torch.tensor(entry["steering_vector"])
    assert torch.allclose(added, vec.delta("blocks.1.hook_resid_post", 4.0), atol=1e-5)
    assert body["features"] == [{"model": "lm", "source": "sae-x", "index": 7, "strength": 2.0}]
    assert body["workbench"]["format"] == "workbench-steering"


# -- the same vector in TransformerLens and in the HF export ---------------------------------
@pytest.mark.parametrize("options", [{}, {**LLAMA, "act_fn": "silu", "n_key_value_heads": 2}],
                         ids=["gpt2-style", "llama-style"])
def test_vector_changes_tl_and_hf_export_identically(tmp_path, tokenizer, options):
    model = make_model(tokenizer, **options)
    export_hf(model, tokenizer, tmp_path / "hf")
    hf_model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    layers = hf_model.transformer.h if hasattr(hf_model, "transformer") else hf_model.model.layers
    vec = make_vector(hooks=("blocks.0.hook_resid_post", "blocks.1.hook_resid_post"))
    tokens = model.to_tokens(["Das ist ein kleiner Test.", "It is a small test, really."])
    tokens = tokens[:, :8]

    def hf_run(steer: bool):
        captured = {}

        def keep(i):
            def hook(module, args, output):
                captured[i] = (output[0] if isinstance(output, tuple) else output).detach()
            return hook

        with torch.no_grad():
            if steer:
                with vec.apply_hf(hf_model):
                    handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(layers)]
                    logits = hf_model(tokens).logits
            else:
                handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(layers)]
                logits = hf_model(tokens).logits
        for h in handles:
            h.remove()
        return logits, captured

    names = [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)]
    with torch.no_grad():
        tl_plain, plain_cache = model.run_with_cache(tokens, names_filter=names)
        with vec.apply(model):
            tl_steered, steered_cache = model.run_with_cache(tokens, names_filter=names)
    hf_plain, hf_plain_hidden = hf_run(False)
    hf_steered, hf_steered_hidden = hf_run(True)

    assert (tl_steered - tl_plain).abs().max() > 1e-2
    torch.testing.assert_close(hf_plain, tl_plain, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(hf_steered, tl_steered, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(hf_steered - hf_plain, tl_steered - tl_plain, atol=1e-4, rtol=1e-4)
    for i, name in enumerate(names):
        torch.testing.assert_close(hf_plain_hidden[i], plain_cache[name], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(hf_steered_hidden[i], steered_cache[name], atol=1e-4,
                                   rtol=1e-4)


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["safetensors", "gguf", "neuronpedia"])
def test_d_model_mismatch_writes_nothing(tmp_path, fmt):
    vec = make_vector(d_model=64)
    with pytest.raises(InvalidInputError, match="d_model=64.*residual width of 128"):
        export_vector(vec, fmt, tmp_path / "out", model=ModelShape(D_MODEL, 2, "gpt2"))
    with pytest.raises(InvalidInputError, match="block 5 but the model has 2 blocks"):
        export_vector(make_vector(hooks=("blocks.5.hook_resid_post",)), fmt, tmp_path / "out",
                      model=ModelShape(D_MODEL, 2, "gpt2"))
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_writes_nothing(tmp_path):
    with pytest.raises(InvalidInputError, match="unknown export format 'onnx'.*gguf"):
        export_vector(make_vector(), "onnx", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt, existing", [("gguf", "v.gguf"), ("neuronpedia", "v.gguf"),
                                           ("safetensors", "v.json")])
def test_existing_output_needs_overwrite(tmp_path, fmt, existing):
    out = tmp_path / ("v" if fmt == "safetensors" else "v.gguf")
    (tmp_path / existing).write_text("keep me")
    with pytest.raises(InvalidInputError, match="already exists.*--overwrite"):
        export_vector(make_vector(), fmt, out)
    assert (tmp_path / existing).read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]
    export_vector(make_vector(), fmt, out, overwrite=True)
    assert (tmp_path / existing).read_bytes() != b"keep me"


# -- the command -----------------------------------------------------------------------------
def _steer_app() -> typer.Typer:
    from app.cli.steer_export_cmds import add_commands

    app = typer.Typer()
    steer = typer.Typer()
    add_commands(steer)
    app.add_typer(steer, name="steer")
    return app


def test_steer_export_command(tmp_path, monkeypatch):
    from fixtures_lab import small_lm_setup

    lab, _, _ = small_lm_setup(tmp_path / "lab")
    make_vector().save_to_lab(lab, "de-vec", parents=["lm"])
    make_vector(d_model=64).save_to_lab(lab, "narrow")
    monkeypatch.setenv("WORKBENCH_LAB", str(lab.root))
    runner, app = CliRunner(), _steer_app()

    done = runner.invoke(app, ["steer", "export", "de-vec", "--format", "gguf", "--out",
                               str(tmp_path / "de.gguf"), "--strength", "2"])
    assert done.exit_code == 0, done.output
    meta, tensors = read_gguf(tmp_path / "de.gguf")
    assert meta["controlvector.model_hint"] == "gpt2" and list(tensors) == ["direction.1"]
    for fmt, out in (("safetensors", "de"), ("neuronpedia", "np.json")):
        done = runner.invoke(app, ["steer", "export", "de-vec", "--format", fmt, "--out",
                                   str(tmp_path / "np" / out)])
        assert done.exit_code == 0, done.output

    bad = runner.invoke(app, ["steer", "export", "narrow", "--format", "gguf", "--out",
                              str(tmp_path / "narrow.gguf")])
    assert isinstance(bad.exception, WorkbenchError) and "d_model=64" in str(bad.exception)
    bad = runner.invoke(app, ["steer", "export", "de-vec", "--format", "gguf", "--out",
                              str(tmp_path / "de.gguf")])
    assert isinstance(bad.exception, WorkbenchError) and "--overwrite" in str(bad.exception)
    bad = runner.invoke(app, ["steer", "export", "nothing", "--format", "gguf", "--out",
                              str(tmp_path / "x.gguf")])
    assert isinstance(bad.exception, WorkbenchError) and "de-vec" in str(bad.exception)
    assert not (tmp_path / "narrow.gguf").exists() and not (tmp_path / "x.gguf").exists()
