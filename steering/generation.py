"""Generating with and without steering: batched prompts (left-padded), greedy or seeded sampling.

    texts = generate(model, ["Der Hund", "The dog"], vector=vec, strength=6.0)   # continuations
    with clamp_feature(model, sae, 123, value=10.0): ...                         # SAE splice
    rows = side_by_side(model, prompts, vector=vec, strength=6.0, seed=0)

Clamping sets one SAE feature to a value at every position through the SAE splice: with
f = encode(x) and the reconstruction error e = x - decode(f) kept, x' = decode(f') + e where f'
equals f except f'_i = value, i.e. x' = x + (value - f_i(x)) W_dec[i] (as Neuronpedia's steer
page clamps features).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from steering.vectors import SteeringVector, check_positions, check_strength
from workbench.errors import InvalidInputError
from workbench.models.token_text import readable_text


@dataclass
class GenerationConfig:
    """max_new_tokens per prompt; temperature 0 = greedy; top_k for sampling; seed for
    sampling; use_cache: TransformerLens's KV cache; stop_at_eos: stop a sequence at EOS (off:
    always max_new_tokens, e.g. for timing)."""

    max_new_tokens: int = 30
    temperature: float = 0.0
    top_k: int | None = 50
    seed: int = 0
    use_cache: bool = True
    stop_at_eos: bool = True

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise InvalidInputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not check_strength(self.temperature, "temperature") >= 0:
            raise InvalidInputError(f"temperature must be >= 0, got {self.temperature}")


@contextmanager
def clamp_feature(model, sae, index: int, value: float) -> Iterator[None]:
    """Clamp SAE feature `index` to `value` at every position (the SAE splice, error kept)."""
    value = check_strength(value, "clamp value")
    n = int(sae.W_dec.shape[0])
    if not 0 <= index < n:
        raise InvalidInputError(f"feature index {index} is out of range: the SAE has {n} features")
    hook = sae.cfg.metadata.hook_name
    from workbench.models.hooks import validate_hook

    validate_hook(model, hook)
    direction = sae.W_dec[index].detach()

    def splice(resid: torch.Tensor, hook=None) -> torch.Tensor:
        acts = sae.encode(resid.to(direction.dtype))[..., index]  # [b, pos]
        return resid + ((value - acts)[..., None] * direction).to(resid.dtype)

    with model.hooks(fwd_hooks=[(hook, splice)]):
        yield


@torch.no_grad()
def generate(model, prompts: Sequence[str], vector: SteeringVector | None = None,
             strength: float | None = None, positions: str = "all",
             config: GenerationConfig | None = None, steer=None) -> list[str]:
    """Continuations (text after each prompt) of a batch of prompts, optionally steered by
    `vector` (or inside any context `steer()`, e.g. a feature clamp)."""
    cfg = config or GenerationConfig()
    cfg.validate()
    check_positions(positions)
    if not prompts:
        return []
    tokens = model.to_tokens(list(prompts), padding_side="left")  # [b, P]
    room = int(model.cfg.n_ctx) - tokens.shape[1]
    if room < 1:
        raise InvalidInputError(f"the prompt fills the model's {model.cfg.n_ctx}-token context")
    new = min(cfg.max_new_tokens, room)
    if vector is not None:
        context = vector.apply(model, strength=strength, positions=positions)
    else:
        context = steer() if steer is not None else nullcontext()
    torch.manual_seed(cfg.seed)
    inputs = list(prompts) if len(prompts) > 1 else tokens
    with context:
        out = model.generate(inputs, max_new_tokens=new, do_sample=cfg.temperature > 0,
                             temperature=cfg.temperature or 1.0, top_k=cfg.top_k,
                             use_past_kv_cache=cfg.use_cache, verbose=False,
                             stop_at_eos=cfg.stop_at_eos, return_type="tokens",
                             padding_side="left")
    width = tokens.shape[1]
    tok = model.tokenizer
    # a character split over tokens is joined; bytes left invalid show as <0xNN>, not U+FFFD
    return [readable_text(tok, row[width:].tolist()) for row in out]


def side_by_side(model, prompts: Sequence[str], vector: SteeringVector | None = None,
                 strength: float | None = None, positions: str = "all",
                 config: GenerationConfig | None = None, steer=None) -> list[dict]:
    """Rows of prompt, unsteered and steered continuation (same seed for both)."""
    cfg = config or GenerationConfig()
    plain = generate(model, prompts, config=cfg)
    steered = generate(model, prompts, vector, strength, positions, cfg, steer)
    return [{"prompt": p, "unsteered": a, "steered": b} for p, a, b in zip(prompts, plain, steered)]
