"""workbench.models without training: tokenizer, presets, schedules, token data, hooks, loading
of local Hugging Face folders."""

from __future__ import annotations

import math
import unicodedata

import pytest
import torch
from fixtures_lab import SMALL_LANGUAGES, read_fortunes, small_corpus

from workbench.errors import InvalidInputError, NotFoundError
from workbench.lab import Lab
from workbench.models.architectures import quiet_hooked_transformer
from workbench.models.hooks import hook_layer, hook_patterns, validate_hook
from workbench.models.loading import load_model
from workbench.models.presets import lm_config
from workbench.models.schedules import checkpoint_steps, lr_factor
from workbench.models.token_data import (
    SequenceSampler,
    pack_sequences,
    tokenize_stream,
    unigram_baseline,
)
from workbench.models.tokenizer import (
    load_tokenizer,
    load_tokenizer_folder,
    train_tokenizer,
    train_tokenizer_artifact,
)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [t for file in SMALL_LANGUAGES.values() for t in read_fortunes(file, 150)]


@pytest.fixture(scope="module")
def tok(texts, tmp_path_factory):
    """A 600-token tokenizer, saved and reloaded the way artifacts are."""
    folder = tmp_path_factory.mktemp("tok")
    train_tokenizer(texts, vocab_size=600).save_pretrained(str(folder))
    return load_tokenizer_folder(folder)


# -- tokenizer ---------------------------------------------------------------------------------
def test_tokenizer_round_trip_and_special_tokens(tok):
    assert len(tok) == 600
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
    text = "Grüße aus Köln — Привет, мир! 😀 naïve"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.bos_token_id not in ids[1:]
    assert tok(text, add_special_tokens=False)["input_ids"] == ids[1:]
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.unk_token_id is None  # byte-level: every string is representable
    decomposed = unicodedata.normalize("NFD", "naïve")
    assert tok(decomposed)["input_ids"] == tok("naïve")["input_ids"]  # NFC normalization


def test_tokenizer_learns_merges_and_rejects_bad_input(texts):
    small = train_tokenizer(texts, vocab_size=300)
    assert len(small) == 300
    big = train_tokenizer(texts, vocab_size=1000)
    sample = " ".join(texts[:50])
    assert len(big(sample)["input_ids"]) < len(small(sample)["input_ids"])
    with pytest.raises(InvalidInputError, match="too small"):
        train_tokenizer(texts, vocab_size=100)
    with pytest.raises(InvalidInputError, match="empty corpus"):
        train_tokenizer(["", "   "])


def test_tokenizer_with_transformer_lens(tok):
    model = quiet_hooked_transformer(lm_config("tiny", d_vocab=len(tok), n_ctx=32), tok)
    assert model.tokenizer is tok and model.cfg.tokenizer_prepends_bos
    tokens = model.to_tokens("Hallo Welt")
    assert tokens[0, 0].item() == tok.bos_token_id
    bare = model.to_tokens("Hallo Welt", prepend_bos=False)
    assert torch.equal(bare, tokens[:, 1:])
    assert model.to_string(bare[0]) == "Hallo Welt"
    assert model.to_str_tokens("Hallo")[0] == "<|bos|>"
    batch = model.to_tokens(["a", "Hallo Welt"])
    assert batch[0, 0] == tok.bos_token_id and batch[0, -1] == tok.pad_token_id
    out = model.generate("Hallo", max_new_tokens=4, verbose=False, do_sample=False)
    assert isinstance(out, str) and out.startswith("Hallo")


def test_tokenizer_artifact(tmp_path):
    lab = Lab(tmp_path / "lab")
    small_corpus(lab, per_language=60)
    art = train_tokenizer_artifact(lab, "corpus", "tok", vocab_size=400)
    assert art.parents == ["corpus"] and art.metrics["vocab_size"] == 400
    assert {"chars_per_token_en", "chars_per_token_de", "chars_per_token_ru"} <= set(art.metrics)
    assert art.metrics["chars_per_token"] > 1.2  # pure bytes would give < 1
    assert load_tokenizer(lab, "tok")("x")["input_ids"][0] == 0
    with pytest.raises(InvalidInputError, match="already exists"):
        train_tokenizer_artifact(lab, "corpus", "tok", vocab_size=400)


# -- presets -----------------------------------------------------------------------------------
@pytest.mark.parametrize("options, hooks", [
    ({"act_fn": "relu"}, ["blocks.1.mlp.hook_post", "hook_pos_embed"]),
    ({"act_fn": "silu", "gated": True, "normalization": "RMS"}, ["blocks.0.mlp.hook_pre_linear"]),
    ({"positional": "rotary", "n_key_value_heads": 2}, ["blocks.0.attn.hook_rot_q"]),
])
def test_presets_build_working_models(options, hooks):
    cfg = lm_config("tiny", d_vocab=300, n_ctx=16, **options)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp) == (2, 128, 4, 32, 512)
    model = quiet_hooked_transformer(cfg)
    _, cache = model.run_with_cache(torch.randint(0, 300, (2, 16)))
    for hook in hooks:
        assert hook in cache
    if "n_key_value_heads" in options:
        assert model.blocks[0].attn._W_K.shape[0] == 2
    if options.get("act_fn") == "relu":
        assert (cache["blocks.0.mlp.hook_post"] >= 0).all()
    small = lm_config("small", d_vocab=300)
    assert (small.n_layers, small.d_model, small.n_ctx) == (4, 256, 128)


def test_precision_choice():
    from workbench.models.losses import resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")


def test_preset_errors():
    with pytest.raises(InvalidInputError, match="unknown LM preset"):
        lm_config("huge", d_vocab=100)
    with pytest.raises(InvalidInputError, match="act_fn"):
        lm_config("tiny", d_vocab=100, act_fn="tanh")
    with pytest.raises(InvalidInputError, match="must divide"):
        lm_config("tiny", d_vocab=100, n_key_value_heads=3)


# -- schedules and token data --------------------------------------------------------------------
def test_schedules():
    assert checkpoint_steps("geometric", 20) == [1, 2, 4, 8, 16, 20]
    assert checkpoint_steps("every:7", 20) == [7, 14, 20]
    assert checkpoint_steps("1,2,5", 10) == [1, 2, 5, 10]
    assert checkpoint_steps(None, 10) == []
    for bad in ("every:x", "0,3", "geometric:1"):
        with pytest.raises(InvalidInputError):
            checkpoint_steps(bad, 10)
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(55, 10, 100, 0.0) == pytest.approx(0.5)


def test_stream_packing_and_unigram_baseline(tok):
    stream = tokenize_stream(tok, ["ab", "Hallo"])
    ids = tok(["ab", "Hallo"], add_special_tokens=False)["input_ids"]
    assert stream.tolist() == [0, *ids[0], 1, 0, *ids[1], 1]
    seqs = pack_sequences(torch.arange(10, 30, dtype=torch.int32), n_ctx=5, bos_id=0, offset=2)
    assert seqs.tolist() == [[0, 12, 13, 14, 15], [0, 16, 17, 18, 19], [0, 20, 21, 22, 23],
                             [0, 24, 25, 26, 27]]
    base = unigram_baseline(torch.tensor([3, 3, 4, 4]), torch.tensor([3, 5]), d_vocab=6)
    assert base.entropy_train == pytest.approx(math.log(2))
    # add-one smoothing: p(3) = 3/10, p(5) = 1/10
    assert base.val_loss == pytest.approx(-(math.log(0.3) + math.log(0.1)) / 2)


def test_sampler_order_is_seeded_and_resumable():
    stream = torch.arange(1, 400, dtype=torch.int32)
    a = SequenceSampler(stream, n_ctx=8, bos_id=0, batch_size=5, seed=3)
    batches = [a.next_batch() for _ in range(20)]  # crosses epoch boundaries
    assert all(b.shape == (5, 8) and (b[:, 0] == 0).all() for b in batches)
    assert a.epoch >= 1
    b = SequenceSampler(stream, n_ctx=8, bos_id=0, batch_size=5, seed=3)
    for _ in range(7):
        b.next_batch()
    c = SequenceSampler(stream, n_ctx=8, bos_id=0, batch_size=5, seed=3)
    c.load_state_dict(b.state_dict())
    assert all(torch.equal(c.next_batch(), batches[i]) for i in range(7, 20))
    other = SequenceSampler(stream, n_ctx=8, bos_id=0, batch_size=5, seed=4)
    assert not torch.equal(other.next_batch(), batches[0])
    with pytest.raises(InvalidInputError, match="fewer than one batch"):
        SequenceSampler(stream[:20], n_ctx=8, bos_id=0, batch_size=5, seed=0)


# -- hooks -----------------------------------------------------------------------------------
def test_hooks(tok):
    model = quiet_hooked_transformer(lm_config("tiny", d_vocab=len(tok), n_ctx=16), tok)
    assert validate_hook(model, "blocks.1.hook_resid_post") == "blocks.1.hook_resid_post"
    assert "blocks.{0..1}.hook_resid_post" in hook_patterns(model)
    assert not any("hook_result" in p for p in hook_patterns(model))
    with pytest.raises(NotFoundError, match=r"2 layers.*blocks\.\{0\.\.1\}\.hook_resid_pre"):
        validate_hook(model, "blocks.5.hook_resid_post")
    with pytest.raises(NotFoundError, match="Did you mean blocks.0.hook_mlp_out"):
        validate_hook(model, "blocks.0.hook_mlp_outt")
    with pytest.raises(InvalidInputError, match="does not run"):
        validate_hook(model, "blocks.0.attn.hook_result")
    model.set_use_attn_result(True)
    assert validate_hook(model, "blocks.0.attn.hook_result")
    assert hook_layer("blocks.12.attn.hook_z") == 12 and hook_layer("hook_embed") is None


# -- local Hugging Face folders and unknown names ----------------------------------------------
def test_load_local_hf_gpt2_folder(tok, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64, vocab_size=len(tok),
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    hf = GPT2LMHeadModel(config).eval()
    folder = tmp_path / "llama-named-gpt2"  # the name must not mislead the conversion
    hf.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    model = load_model(str(folder))
    assert model.cfg.n_layers == 1 and model.cfg.d_model == 32
    tokens = model.to_tokens("Hallo Welt, wie geht's?")
    assert tokens[0, 0].item() == tok.bos_token_id
    with torch.no_grad():
        ours = model(tokens).log_softmax(-1)
        theirs = hf(tokens).logits.log_softmax(-1)
    assert torch.allclose(ours, theirs, atol=1e-4)
    raw = load_model(f"hf:{folder}", fold_ln=False, center_writing_weights=False,
                     center_unembed=False)
    with torch.no_grad():
        assert torch.allclose(raw(tokens), hf(tokens).logits, atol=1e-4)


def test_unknown_models_get_clear_errors(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    lab = Lab(tmp_path / "lab")
    with pytest.raises(NotFoundError, match="unknown model 'no-such-model'.*lab models: none"):
        load_model("no-such-model", lab=lab)
    with pytest.raises(NotFoundError, match="not in the local Hugging Face cache.*offline"):
        load_model("gpt2", lab=lab)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="neither a lab model"):
        load_model(str(tmp_path / "empty"), lab=lab)
