"""Look inside a model on one text: its tokens, next-token predictions and the activations at
any hook point (what the dashboard's Model page draws).

    view = inspect_text(model, "Der Hund schläft", hook="blocks.0.hook_resid_post", k=5)
    view.tokens            # ["<bos>", "Der", " Hund", ...]            (T strings)
    view.top_ids / top_probs  [T, k] next-token predictions after each position
    view.acts              [T, units] activations at the hook (heads flattened into units)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from workbench.errors import InvalidInputError
from workbench.models.hooks import validate_hook
from workbench.models.token_text import readable_token

MAX_TOKENS = 512


@dataclass
class TextInspection:
    """One text through a model (shapes in the module docstring)."""

    tokens: list[str]
    token_ids: list[int]
    top_tokens: list[list[str]]
    top_ids: torch.Tensor      # [T, k] int64
    top_probs: torch.Tensor    # [T, k] float32
    hook: str | None
    acts: torch.Tensor | None  # [T, units] float32
    unit_labels: str           # what a unit is: "unit", "head*d_head + i", "head*T + key"


def tokenize(model: HookedTransformer, text: str, truncate: bool = False) -> torch.Tensor:
    """BOS-led token ids [1, T] of `text`, checked against the model's context length (or,
    with `truncate`, cut to it)."""
    if model.tokenizer is None:
        raise InvalidInputError("the model has no tokenizer, so it cannot read text")
    if not text.strip():
        raise InvalidInputError("type some text first")
    tokens = model.to_tokens(text, truncate=False)
    limit = min(int(model.cfg.n_ctx), MAX_TOKENS)
    if tokens.shape[1] > limit and truncate:
        return tokens[:, :limit]
    if tokens.shape[1] > limit:
        raise InvalidInputError(
            f"the text has {tokens.shape[1]} tokens, more than the model's context of {limit}; "
            "shorten it"
        )
    return tokens


def token_strings(model: HookedTransformer, ids: list[int]) -> list[str]:
    """Each token id decoded on its own (byte-level BPE markers become real characters; a
    split-byte token shows as its hex bytes, e.g. '<0xE2>')."""
    return [readable_token(model.tokenizer, i) for i in ids]


def _units(acts: torch.Tensor, hook: str) -> tuple[torch.Tensor, str]:
    """Hook activations of batch 0 as [T, units]."""
    a = acts[0].float()
    if hook.endswith(("hook_pattern", "hook_attn_scores")):  # [head, q, k] -> [q, head * k]
        return a.permute(1, 0, 2).reshape(a.shape[1], -1), "head * T + key position"
    if a.dim() == 3:  # [T, head, d_head]
        return a.reshape(a.shape[0], -1), "head * d_head + i"
    return a, "unit"


@torch.no_grad()
def inspect_text(model: HookedTransformer, text: str, hook: str | None = None,
                 k: int = 5) -> TextInspection:
    """Tokens, top-k next-token predictions and (if `hook`) activations of `text`."""
    tokens = tokenize(model, text)
    if hook:
        validate_hook(model, hook)
        logits, cache = model.run_with_cache(tokens, names_filter=[hook])
        acts, labels = _units(cache[hook], hook)
    else:
        logits, acts, labels = model(tokens), None, "unit"
    probs = logits[0].float().softmax(-1)
    top = probs.topk(min(k, probs.shape[-1]), dim=-1)
    ids = tokens[0].tolist()
    return TextInspection(
        tokens=token_strings(model, ids), token_ids=ids,
        top_tokens=[token_strings(model, row) for row in top.indices.tolist()],
        top_ids=top.indices.cpu(), top_probs=top.values.cpu(), hook=hook,
        acts=None if acts is None else acts.cpu(), unit_labels=labels,
    )


def top_units(acts: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """The k units of largest activation at each position: acts [T, units] -> (ids, values),
    each [T, k]."""
    top = acts.topk(min(k, acts.shape[-1]), dim=-1)
    return top.indices, top.values
