"""The fused attention core gives TransformerLens's activations, and steps aside when it cannot."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from workbench.models.fused_attention import can_fuse, fused_attention

HOOKS = ("blocks.0.attn.hook_z", "blocks.0.hook_resid_mid", "blocks.1.hook_resid_post",
         "blocks.1.mlp.hook_post", "blocks.1.attn.hook_q")


def _model(**overrides) -> HookedTransformer:
    torch.manual_seed(0)
    cfg = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50, n_ctx=24,
               act_fn="gelu", normalization_type="LN")
    cfg.update(overrides)
    model = HookedTransformer(HookedTransformerConfig(**cfg))
    with torch.no_grad():  # non-trivial biases and norms
        for name, p in model.named_parameters():
            if name.endswith(("b_Q", "b_K", "b_V", "b_O")):
                p.normal_(0, 0.1)
    return model.eval()


@pytest.mark.parametrize("overrides", [
    {},
    {"positional_embedding_type": "rotary", "normalization_type": "RMS", "rotary_dim": 8},
    {"n_key_value_heads": 2, "positional_embedding_type": "rotary", "rotary_dim": 8},
    {"normalization_type": "LNPre", "use_attn_scale": False},
], ids=["standard", "rotary-rms", "grouped-query", "ln-pre-unscaled"])
def test_fused_attention_gives_transformer_lens_activations(overrides):
    model = _model(**overrides)
    tokens = torch.randint(0, 50, (3, 24))
    with torch.no_grad():
        _, want = model.run_with_cache(tokens, names_filter=list(HOOKS))
        with fused_attention(model) as fused:
            _, got = model.run_with_cache(tokens, names_filter=list(HOOKS))
        assert fused
        logits_fused_after = model(tokens)
    for hook in HOOKS:
        torch.testing.assert_close(got[hook], want[hook], rtol=1e-4, atol=1e-5, msg=hook)
    # leaving the block restores TransformerLens's own attention
    assert "forward" not in vars(model.blocks[0].attn)
    torch.testing.assert_close(logits_fused_after, model(tokens))


def test_fused_attention_steps_aside():
    model = _model()
    assert can_fuse(model, "blocks.1.hook_resid_post")
    assert not can_fuse(model, "blocks.0.attn.hook_pattern")  # needs the pattern itself
    assert not can_fuse(model, "blocks.0.attn.hook_attn_scores")
    assert not can_fuse(_model(positional_embedding_type="alibi"))
    assert not can_fuse(_model(use_local_attn=True, attn_types=["local", "global"], window_size=4))
    with fused_attention(model, "blocks.0.attn.hook_pattern") as fused:
        assert not fused and "forward" not in vars(model.blocks[0].attn)


def test_fused_attention_hands_masked_calls_to_transformer_lens():
    model = _model()
    tokens = torch.randint(0, 50, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        want = model(tokens, attention_mask=mask)
        with fused_attention(model):
            got = model(tokens, attention_mask=mask)
    torch.testing.assert_close(got, want)
