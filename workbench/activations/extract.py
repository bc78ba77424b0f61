"""Run a HookedTransformer on token windows and return the activations at one hook point.

Only the layers up to the hook are computed (`stop_at_layer`), so caching an early layer of a deep
model costs a fraction of a full forward pass, and attention cores and layer norms run as fused
kernels where that gives the same result (`workbench.models.fused_forward`).
"""

from __future__ import annotations

import math

import torch

from workbench.errors import InvalidInputError
from workbench.models.fused_forward import fused_forward
from workbench.models.hooks import hook_layer

_EMBEDDING_HOOKS = ("hook_embed", "hook_pos_embed", "hook_tokens")


def stop_layer(model, hook: str) -> int | None:
    """The `stop_at_layer` that still computes `hook`: layer + 1 for `blocks.L.*` (the last
    block stops before ln_final and the unembedding), 0 for the embedding hooks, None (full
    forward) for hooks after the last block (ln_final, unembed)."""
    if hook in _EMBEDDING_HOOKS:
        return 0
    layer = hook_layer(hook)
    return None if layer is None else min(layer + 1, model.cfg.n_layers)


@torch.no_grad()
def hook_activations(model, tokens: torch.Tensor, hook: str) -> torch.Tensor:
    """Activations at `hook` for `tokens` [batch, ctx] -> [batch, ctx, d_in].

    Per-head hooks ([batch, ctx, n_heads, d_head], e.g. `attn.hook_z`) are flattened to
    d_in = n_heads * d_head. Hooks that are not per token (attention patterns and scores,
    [batch, heads, q, k]) are refused with an error.
    """
    device = model.cfg.device
    tokens = tokens.to(device)
    with fused_forward(model, hook):
        _, cache = model.run_with_cache(tokens, names_filter=hook,
                                        stop_at_layer=stop_layer(model, hook))
    acts = cache[hook]
    if acts.dim() < 3 or tuple(acts.shape[:2]) != tuple(tokens.shape) or "attn_scores" in hook \
            or "hook_pattern" in hook:
        raise InvalidInputError(
            f"hook {hook!r} gives activations of shape {tuple(acts.shape)}, not one vector per "
            "token [batch, pos, ...]; pick a per-token hook such as "
            "blocks.0.hook_resid_post, blocks.0.mlp.hook_post or blocks.0.attn.hook_z"
        )
    return acts.reshape(*tokens.shape, math.prod(acts.shape[2:]))
