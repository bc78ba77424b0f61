"""Lab LMs exported to Hugging Face transformers: every supported preset option loads with
AutoModelForCausalLM offline and reproduces the HookedTransformer's logits; the rest is refused."""

from __future__ import annotations

import pytest
import torch
from fixtures_lab import SMALL_LANGUAGES, read_fortunes
from transformers import AutoModelForCausalLM, AutoTokenizer

from workbench.errors import InvalidInputError
from workbench.models.architectures import quiet_hooked_transformer
from workbench.models.export_hf import EXPORT_INFO_FILE, export_hf, hf_style
from workbench.models.presets import lm_config
from workbench.models.tokenizer import load_tokenizer_folder, train_tokenizer

GPT2_OPTIONS = [{"act_fn": "gelu"}, {"act_fn": "relu"}, {"act_fn": "silu"}]
LLAMA = {"normalization": "RMS", "positional": "rotary", "gated": True}
LLAMA_OPTIONS = [{**LLAMA, "act_fn": "silu"}, {**LLAMA, "act_fn": "gelu"},
                 {**LLAMA, "act_fn": "relu"}, {**LLAMA, "act_fn": "silu", "n_key_value_heads": 2},
                 {**LLAMA, "act_fn": "silu", "n_key_value_heads": 1}]


@pytest.fixture(scope="module")
def texts():
    return [t for file in SMALL_LANGUAGES.values() for t in read_fortunes(file, 60)]


@pytest.fixture(scope="module")
def tokenizer(texts, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    train_tokenizer(texts, vocab_size=512).save_pretrained(str(folder))
    return load_tokenizer_folder(folder)  # as a lab loads it


def make_model(tokenizer, seed: int = 0, **options):
    """A tiny preset model with every parameter random (biases and norm gains too), b_U zero."""
    torch.manual_seed(seed)
    model = quiet_hooked_transformer(lm_config("tiny", d_vocab=len(tokenizer), n_ctx=48,
                                               **options), tokenizer)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name != "unembed.b_U" and not name.endswith(("W_E", "W_pos")) and param.ndim == 1:
                param.add_(0.2 * torch.randn_like(param))
    return model.eval()


@pytest.mark.parametrize("options", GPT2_OPTIONS + LLAMA_OPTIONS,
                         ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_export_loads_offline_and_matches_logits(tmp_path, tokenizer, texts, options):
    model = make_model(tokenizer, **options)
    report = export_hf(model, tokenizer, tmp_path / "hf")
    assert report.style == ("llama" if options.get("gated") else "gpt2")
    assert report.max_abs_logit_diff is not None and report.max_abs_logit_diff < 1e-4

    hf_model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    hf_tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    assert type(hf_model).__name__ == report.architecture
    batch = texts[:3]
    ids = [hf_tok(t)["input_ids"][:40] for t in batch]
    for text, row in zip(batch, ids):
        assert row == model.to_tokens(text)[0, :40].tolist()  # same tokenizer, BOS first
    tokens = torch.tensor([row[:20] for row in ids])
    with torch.no_grad():
        diff = (hf_model(tokens).logits - model(tokens)).abs().max().item()
    assert diff < 1e-4
    assert (tmp_path / "hf" / EXPORT_INFO_FILE).exists()


@pytest.mark.parametrize("options, needle", [
    ({"normalization": "LN", "positional": "rotary"}, "supported layouts"),
    ({"normalization": "RMS", "positional": "standard"}, "supported layouts"),
    ({"gated": True}, "supported layouts"),
    ({"normalization": "RMS", "positional": "rotary"}, "supported layouts"),
    ({"n_key_value_heads": 2}, "grouped-query attention"),
])
def test_unsupported_layouts_are_refused(tmp_path, tokenizer, options, needle):
    model = make_model(tokenizer, **options)
    with pytest.raises(InvalidInputError, match=needle):
        export_hf(model, tokenizer, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    assert list(tmp_path.iterdir()) == []


def test_nonzero_unembedding_bias_is_refused_with_reason(tmp_path, tokenizer):
    model = make_model(tokenizer)
    with torch.no_grad():
        model.unembed.b_U[3] = 0.5
    with pytest.raises(InvalidInputError, match="unembedding bias b_U is nonzero.*no bias"):
        hf_style(model)
    with pytest.raises(InvalidInputError):
        export_hf(model, tokenizer, tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path, tokenizer):
    model = make_model(tokenizer)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="already exists.*--overwrite"):
        export_hf(model, tokenizer, tmp_path / "hf")
    assert (tmp_path / "hf" / "keep.txt").read_text() == "mine"
    export_hf(model, tokenizer, tmp_path / "hf", overwrite=True, check=False)
    assert not (tmp_path / "hf" / "keep.txt").exists()
    assert (tmp_path / "hf" / "config.json").exists()


def test_cli_export_hf_of_a_lab_model(tmp_path):
    from fixtures_lab import small_lm_setup
    from test_cli import run_cli

    lab, _, _ = small_lm_setup(tmp_path / "lab")
    out = run_cli("lm", "export-hf", "lm", "--out", str(tmp_path / "hf"), "--json", lab=lab.root)
    assert out.returncode == 0, out.stderr
    assert '"style": "gpt2"' in out.stdout
    hf_model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    assert hf_model.config.n_layer == 2
    again = run_cli("lm", "export-hf", "lm", "--out", str(tmp_path / "hf"), lab=lab.root)
    assert again.returncode == 2 and again.stderr.startswith("error: ")
    assert "--overwrite" in again.stderr and "Traceback" not in again.stderr


# GPT-2's split pattern, as llama.cpp's "gpt-2" pre-tokenizer applies it.
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def test_tokenizer_splits_like_llamacpp_gpt2(tokenizer, texts):
    import regex

    from workbench.models.tokenizer import llamacpp_pre_tokenizer

    assert llamacpp_pre_tokenizer(tokenizer) == "gpt-2"
    pre = tokenizer.backend_tokenizer.pre_tokenizer
    byte_map = tokenizer.backend_tokenizer.decoder
    samples = texts + ["  two  spaces\tand\ttabs\n\nnew  lines 1234 3.14 it's I'LL ünïcödé 日本語"]
    for text in samples:
        pieces = [piece for piece, _ in pre.pre_tokenize_str(text)]
        decoded = [byte_map.decode([p]) for p in pieces]  # undo the byte-to-unicode mapping
        assert decoded == regex.findall(GPT2_SPLIT, text)


def test_other_pre_tokenizers_are_not_claimed_as_gpt2(tokenizer):
    from tokenizers import Tokenizer, pre_tokenizers

    from workbench.models.tokenizer import llamacpp_pre_tokenizer

    core = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    with pytest.raises(InvalidInputError, match="not GPT-2's byte-level"):
        llamacpp_pre_tokenizer(core)
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(InvalidInputError, match="not GPT-2's byte-level"):
        llamacpp_pre_tokenizer(core)


def test_gguf_conversion_without_llamacpp_tree_says_where_to_get_it(tmp_path, tokenizer,
                                                                     monkeypatch):
    from workbench.errors import NotFoundError
    from workbench.models.llamacpp import convert_to_gguf

    export_hf(make_model(tokenizer), tokenizer, tmp_path / "hf", check=False)
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    with pytest.raises(NotFoundError, match="LLAMA_CPP_DIR.*llama-cpp-python"):
        convert_to_gguf(tmp_path / "hf", tmp_path / "lm.gguf")
    with pytest.raises(NotFoundError, match="not a llama.cpp source tree"):
        convert_to_gguf(tmp_path / "hf", tmp_path / "lm.gguf", llama_cpp_dir=tmp_path)
    assert not (tmp_path / "lm.gguf").exists()
