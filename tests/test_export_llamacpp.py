"""The llama.cpp path for real: a lab model converted by llama.cpp's own converter and a GGUF
control vector give llama.cpp the logits and token ids of TransformerLens.

Runs where `llama_cpp` (pip install llama-cpp-python, built from source) is installed and
LLAMA_CPP_DIR names a llama.cpp source tree with convert_hf_to_gguf.py (the sdist's
vendor/llama.cpp); skipped otherwise. CI leaves it out (building llama.cpp takes too long).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from fixtures_lab import SMALL_LANGUAGES, read_fortunes
from test_export_hf import LLAMA, make_model

from steering.vectors import SteeringVector
from workbench.models.tokenizer import load_tokenizer_folder, train_tokenizer

LLAMA_CPP_DIR = os.environ.get("LLAMA_CPP_DIR", "")
if not (Path(LLAMA_CPP_DIR) / "convert_hf_to_gguf.py").is_file():
    pytest.skip("LLAMA_CPP_DIR does not name a llama.cpp source tree with convert_hf_to_gguf.py "
                "(see docs/usage.md)", allow_module_level=True)
needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama_cpp is not installed (pip install llama-cpp-python; see docs/usage.md)")


@pytest.fixture(scope="module")
def texts():
    return [t for file in SMALL_LANGUAGES.values() for t in read_fortunes(file, 80)]


@pytest.fixture(scope="module")
def tokenizer(texts, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    train_tokenizer(texts, vocab_size=512).save_pretrained(str(folder))
    return load_tokenizer_folder(folder)


def test_llamacpp_converter_accepts_the_export(tmp_path, tokenizer):
    from gguf import GGUFReader

    from workbench.models.export_hf import export_hf
    from workbench.models.llamacpp import convert_to_gguf

    model = make_model(tokenizer)
    export_hf(model, tokenizer, tmp_path / "hf")
    out = convert_to_gguf(tmp_path / "hf", tmp_path / "lm.gguf", LLAMA_CPP_DIR)
    fields = GGUFReader(str(out)).fields
    assert fields["general.architecture"].contents() == "gpt2"
    assert fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert fields["tokenizer.ggml.add_bos_token"].contents() is True
    assert fields["tokenizer.ggml.bos_token_id"].contents() == tokenizer.bos_token_id
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# llama.cpp runs GPT-2 with GELU and Llama with SiLU.
@needs_llama_cpp
@pytest.mark.parametrize("options", [{"act_fn": "gelu"},
                                     {**LLAMA, "act_fn": "silu", "n_key_value_heads": 2}],
                         ids=["gpt2-style", "llama-style"])
def test_llamacpp_matches_transformer_lens(tmp_path, tokenizer, texts, options):
    from steering.llamacpp_check import run_llamacpp_check

    model = make_model(tokenizer, **options)
    gen = torch.Generator().manual_seed(1)
    vector = SteeringVector({"blocks.1.hook_resid_post": torch.randn(128, generator=gen)},
                            model="lm", resid_norm=8.0, strength=4.0)
    figures = run_llamacpp_check(model, vector, texts, tmp_path, LLAMA_CPP_DIR)
    scale = figures["logit_scale_max_abs"]
    assert figures["steering_effect_max_abs"] > 0.1 * scale  # the vector changes the logits
    assert figures["unsteered_max_abs_diff"] < 1e-2 * max(scale, 1.0)
    assert figures["steered_max_abs_diff"] < 1e-2 * max(scale, 1.0)
    assert figures["tokenizer_texts_identical"] == figures["tokenizer_texts"] == len(texts)
