"""A HookedTransformer forward whose attention core and layer norms run as fused kernels.

TransformerLens computes attention step by step so that every intermediate has a hook point:
scores = q k^T / scale (hook_attn_scores), the causal mask by torch.where, softmax
(hook_pattern), then z = pattern v; and a layer norm as five elementwise passes (hook_scale,
hook_normalized). On a CPU those intermediates cost about as much as all the matmuls of a small
model. When nobody asks for them, `fused_forward(model, hook)` swaps, for the duration of a
`with` block, the `forward` of

- each plain causal attention module for torch's `scaled_dot_product_attention` (same scale):

      q, k, v = attn.calculate_qkv_matrices(x, x, x)      # TransformerLens: hook_q/k/v, qk-norm
      q, k = attn.apply_rotary(q), attn.apply_rotary(k)   # rotary models (hook_rot_q/k)
      z = attn.hook_z(SDPA(q, k, v, is_causal=True, scale=1 / attn.attn_scale))
      out = z W_O + b_O

  (attention masks, a KV cache, ALiBi, local or bidirectional attention, soft-capping, sinks,
  OLMo clipping, use_attn_result and 4-bit weights keep TransformerLens's code);
- each LayerNorm / LayerNormPre / RMSNorm / RMSNormPre module (float32/float64 models) for
  `F.layer_norm` / `F.rms_norm` with the same eps.

Everything else (embeddings, q/k/v and output projections, MLPs, the residual stream and their
hook points) stays TransformerLens's own code. Results equal TransformerLens's to float
rounding (tests/test_fused_forward.py); on the 4 x 256 lab model, layers 0-1 ran about 1.8x
faster on 2 CPU cores.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

_ATTENTION_HOOKS = ("hook_attn_scores", "hook_pattern", "hook_result")
_NORM_HOOKS = ("hook_scale", "hook_normalized")
_POSITIONAL = ("standard", "rotary", "shortformer")
_OWN_ATTENTION_CODE = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")


def attention_is_plain(attn) -> bool:
    """Whether a TransformerLens attention module computes exactly causal softmax attention
    over its q, k, v (so the fused kernel gives the same result)."""
    from transformer_lens.components import AbstractAttention
    from transformer_lens.utilities.activation_functions import softcap_enabled

    if not isinstance(attn, AbstractAttention) or type(attn).forward is not AbstractAttention.forward:
        return False
    cfg = attn.cfg
    checks = (
        getattr(attn, "_attention_dir_override", None) in (None, "causal"),
        getattr(cfg, "attention_dir", "causal") == "causal",
        getattr(attn, "attn_type", "global") == "global",
        cfg.positional_embedding_type in _POSITIONAL,
        getattr(cfg, "original_architecture", None) not in _OWN_ATTENTION_CODE,
        getattr(cfg, "clip_qkv", None) is None,
        not getattr(cfg, "use_logn_attn", False),
        not softcap_enabled(getattr(cfg, "attn_scores_soft_cap", None)),
        not getattr(cfg, "use_attention_sinks", False),
        not getattr(cfg, "use_attn_result", False),
        not getattr(cfg, "load_in_4bit", False),
    )
    return all(checks)


def _norm_forwards() -> dict[type, object]:
    """TransformerLens norm class -> its fused forward (exact classes only)."""
    from transformer_lens.components import LayerNorm, LayerNormPre, RMSNorm, RMSNormPre

    return {
        LayerNorm: lambda m, x: F.layer_norm(x, (x.shape[-1],), m.w, m.b, m.eps),
        LayerNormPre: lambda m, x: F.layer_norm(x, (x.shape[-1],), None, None, m.eps),
        RMSNorm: lambda m, x: F.rms_norm(x, (x.shape[-1],), m.w, m.eps),
        RMSNormPre: lambda m, x: F.rms_norm(x, (x.shape[-1],), None, m.eps),
    }


def fusable_modules(model, hook: str | None = None) -> list[tuple[torch.nn.Module, object]]:
    """(module, fused forward) pairs `fused_forward` would swap when computing `hook`: none of
    the attention cores when the hook is inside the attention pattern computation, none of the
    norms when it is a norm's hook_scale / hook_normalized."""
    from transformer_lens.components import AbstractAttention

    last = hook.rsplit(".", 1)[-1] if hook else ""
    norms = {} if last in _NORM_HOOKS else _norm_forwards()
    attention = AbstractAttention if last not in _ATTENTION_HOOKS else ()
    pairs = []
    for module in model.modules():  # runs for every forward pass: cheap tests first
        if isinstance(module, attention) and attention_is_plain(module):
            pairs.append((module, _fused_attention_forward))
        elif type(module) in norms and getattr(module.cfg, "dtype", None) in (torch.float32,
                                                                            torch.float64):
            pairs.append((module, norms[type(module)]))
    return pairs


@contextmanager
def fused_forward(model, hook: str | None = None) -> Iterator[int]:
    """Within the block, `model`'s plain attention cores and layer norms run fused (see module
    doc); yields how many modules were swapped. Leaving the block restores them."""
    pairs = fusable_modules(model, hook)
    for module, forward in pairs:
        module.forward = forward.__get__(module)  # instance attribute: shadows the class's
    try:
        yield len(pairs)
    finally:
        for module, _ in pairs:
            del module.forward


def _fused_attention_forward(attn, query_input, key_input, value_input,
                             past_kv_cache_entry=None, additive_attention_mask=None,
                             attention_mask=None, position_bias=None):
    """AbstractAttention.forward for plain causal attention (inputs [batch, pos, d_model])."""
    if any(t is not None for t in (past_kv_cache_entry, additive_attention_mask, attention_mask,
                                   position_bias)):
        return type(attn).forward(attn, query_input, key_input, value_input, past_kv_cache_entry,
                                  additive_attention_mask, attention_mask, position_bias)
    q, k, v = attn.calculate_qkv_matrices(query_input, key_input, value_input)
    if attn.cfg.positional_embedding_type == "rotary":
        q = attn.hook_rot_q(attn.apply_rotary(q, 0, None))
        k = attn.hook_rot_k(attn.apply_rotary(k, 0, None))
    if k.shape[2] != q.shape[2]:  # grouped-query attention: share each K/V head (as TL does)
        repeats = q.shape[2] // k.shape[2]
        k = torch.repeat_interleave(k, dim=2, repeats=repeats)
        v = torch.repeat_interleave(v, dim=2, repeats=repeats)
    # [batch, pos, heads, d_head] -> [batch, heads, pos, d_head] and back
    z = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.to(q.dtype).transpose(1, 2), is_causal=True,
        scale=1.0 / float(attn.attn_scale)).transpose(1, 2)
    z = attn.hook_z(z)
    batch, pos, heads, d_head = z.shape
    W_O = attn.W_O.reshape(heads * d_head, -1)  # [heads * d_head, d_model]
    return F.linear(z.reshape(batch, pos, heads * d_head).to(W_O.dtype), W_O.T, attn.b_O)
