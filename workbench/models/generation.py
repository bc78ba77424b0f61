"""Sampling text from a HookedTransformer (a quick look at what a model learned)."""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer

from workbench.errors import InvalidInputError


def generate_text(model: HookedTransformer, prompt: str, max_new_tokens: int = 40,
                  temperature: float = 0.8, top_k: int | None = 50, seed: int = 0) -> str:
    """Continue `prompt` (BOS is prepended) and return prompt + continuation as text.

    Stops at EOS or after `max_new_tokens`; `temperature=0` means greedy decoding.
    """
    if model.tokenizer is None:
        raise InvalidInputError("the model has no tokenizer; load it with load_model(...)")
    if max_new_tokens < 1:
        raise InvalidInputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise InvalidInputError(f"temperature must be >= 0, got {temperature}")
    tokens = model.to_tokens(prompt, truncate=False)  # [1, pos]
    room = model.cfg.n_ctx - tokens.shape[1]
    if max_new_tokens > room:
        raise InvalidInputError(
            f"the prompt has {tokens.shape[1]} tokens and the model's context is "
            f"{model.cfg.n_ctx}; ask for at most {max(room, 0)} new tokens or shorten the prompt"
        )
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            tokens, max_new_tokens=max_new_tokens, temperature=temperature if temperature else 1.0,
            do_sample=temperature > 0, top_k=top_k, stop_at_eos=True, verbose=False,
        )  # [1, pos + new]
    return model.tokenizer.decode(out[0], skip_special_tokens=True)
