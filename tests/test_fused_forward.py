"""The fused forward gives TransformerLens's activations, and steps aside when it cannot."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.components import AbstractAttention, LayerNorm

from workbench.models.fused_forward import fusable_modules, fused_forward

HOOKS = ("blocks.0.attn.hook_z", "blocks.0.hook_resid_mid", "blocks.1.hook_resid_post",
         "blocks.1.mlp.hook_post", "blocks.1.attn.hook_q", "ln_final.hook_normalized")


def _model(**overrides) -> HookedTransformer:
    torch.manual_seed(0)
    cfg = {"n_layers": 2, "d_model": 32, "n_heads": 4, "d_head": 8, "d_mlp": 64, "d_vocab": 50,
           "n_ctx": 24, "act_fn": "gelu", "normalization_type": "LN"}
    cfg.update(overrides)
    model = HookedTransformer(HookedTransformerConfig(**cfg))
    with torch.no_grad():  # non-trivial biases and norm weights
        for name, p in model.named_parameters():
            if name.endswith(("b_Q", "b_K", "b_V", "b_O", ".b")):
                p.normal_(0, 0.1)
            if name.endswith(".w"):
                p.uniform_(0.5, 1.5)
    return model.eval()


def _kinds(pairs) -> set[str]:
    return {"attention" if isinstance(m, AbstractAttention) else type(m).__name__ for m, _ in pairs}


@pytest.mark.parametrize("overrides", [
    {},
    {"positional_embedding_type": "rotary", "normalization_type": "RMS", "rotary_dim": 8},
    {"n_key_value_heads": 2, "positional_embedding_type": "rotary", "rotary_dim": 8},
    {"normalization_type": "LNPre", "use_attn_scale": False},
    {"normalization_type": "RMSPre"},
], ids=["standard", "rotary-rms", "grouped-query", "ln-pre-unscaled", "rms-pre"])
def test_fused_forward_gives_transformer_lens_activations(overrides):
    model = _model(**overrides)
    tokens = torch.randint(0, 50, (3, 24))
    hooks = [h for h in HOOKS if h in model.hook_dict]
    with torch.no_grad():
        _, want = model.run_with_cache(tokens, names_filter=hooks)
        # ln_final.hook_normalized is a norm hook: ask without it so the norms are fused too
        with fused_forward(model, "blocks.1.hook_resid_post") as swapped:
            _, got = model.run_with_cache(tokens, names_filter=hooks[:-1])
            logits = model(tokens)
        assert swapped == 2 + 5  # two attention modules, five norms (ln1, ln2 x 2, ln_final)
        with fused_forward(model, "ln_final.hook_normalized") as swapped_for_norm_hook:
            _, got_norm = model.run_with_cache(tokens, names_filter=hooks[-1:])
        assert swapped_for_norm_hook == 2  # norms left to TransformerLens for their hooks
        want_logits = model(tokens)
    for hook in hooks[:-1]:
        torch.testing.assert_close(got[hook], want[hook], rtol=1e-4, atol=1e-5, msg=hook)
    torch.testing.assert_close(got_norm[hooks[-1]], want[hooks[-1]])
    torch.testing.assert_close(logits, want_logits, rtol=1e-4, atol=1e-4)
    assert all("forward" not in vars(m) for m in model.modules())  # restored on leaving


def test_fused_forward_steps_aside():
    model = _model()
    assert _kinds(fusable_modules(model, "blocks.1.hook_resid_post")) == {"attention", "LayerNorm"}
    assert _kinds(fusable_modules(model, "blocks.0.attn.hook_pattern")) == {"LayerNorm"}
    assert _kinds(fusable_modules(model, "blocks.0.attn.hook_attn_scores")) == {"LayerNorm"}
    assert _kinds(fusable_modules(model, "blocks.0.ln1.hook_scale")) == {"attention"}
    assert _kinds(fusable_modules(_model(positional_embedding_type="alibi"))) == {"LayerNorm"}
    local = _model(use_local_attn=True, attn_types=["local", "global"], window_size=4)
    assert sum(isinstance(m, AbstractAttention) for m, _ in fusable_modules(local)) == 1
    half = _model(dtype=torch.bfloat16)  # TL computes bf16 norms in float32: left alone
    assert not any(isinstance(m, LayerNorm) for m, _ in fusable_modules(half))


def test_fused_forward_hands_masked_calls_to_transformer_lens():
    model = _model()
    tokens = torch.randint(0, 50, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        want = model(tokens, attention_mask=mask)
        with fused_forward(model):
            got = model(tokens, attention_mask=mask)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
