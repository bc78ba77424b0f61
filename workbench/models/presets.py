"""Language-model presets as TransformerLens `HookedTransformerConfig`s.

A preset fixes the shape (layers, width, heads, MLP width); the options choose the parts that
sparsity analyses compare: activation function (GELU / ReLU / SiLU), gated MLPs, grouped-query
attention, LayerNorm vs RMSNorm, learned vs rotary positions.

    cfg = lm_config("tiny", d_vocab=4096, act_fn="relu")
    model = HookedTransformer(cfg, tokenizer=tok)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformer_lens import HookedTransformerConfig

from workbench.errors import InvalidInputError


@dataclass(frozen=True)
class LMShape:
    """The size of a preset: residual width d_model, n_heads heads of width d_head, MLP width d_mlp."""

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    description: str = ""


PRESETS: dict[str, LMShape] = {
    "tiny": LMShape(2, 128, 4, 32, 512, "2 layers x 128, 4 heads of 32, MLP 512 (trains in minutes on CPU)"),
    "narrow": LMShape(4, 128, 4, 32, 512, "4 layers x 128, 4 heads of 32, MLP 512 (the default lab's LM)"),
    "small": LMShape(4, 256, 8, 32, 1024, "4 layers x 256, 8 heads of 32, MLP 1024"),
}
ACT_FNS = ("gelu", "relu", "silu")
NORMALIZATIONS = ("LN", "RMS")
POSITIONAL = ("standard", "rotary")
DEFAULT_N_CTX = 128


def lm_config(
    preset: str,
    d_vocab: int,
    n_ctx: int = DEFAULT_N_CTX,
    act_fn: str = "gelu",
    gated: bool = False,
    n_key_value_heads: int | None = None,
    normalization: str = "LN",
    positional: str = "standard",
    d_mlp: int | None = None,
    seed: int = 0,
) -> HookedTransformerConfig:
    """Build the `HookedTransformerConfig` of a preset with the chosen options.

    Args:
        preset: a key of PRESETS ("tiny", "narrow", "small").
        d_vocab: vocabulary size (the tokenizer's `len(tokenizer)`).
        n_ctx: context length in tokens.
        act_fn: "gelu", "relu" or "silu" (the MLP non-linearity).
        gated: gated MLP, out = W_out (act(W_gate x) * (W_in x)).
        n_key_value_heads: grouped-query attention with this many key/value heads (must divide
            the number of heads); None for ordinary multi-head attention.
        normalization: "LN" (LayerNorm) or "RMS" (RMSNorm).
        positional: "standard" (learned absolute positions) or "rotary".
        d_mlp: override the preset's MLP width (e.g. 2/3 of it for gated MLPs at equal size).
        seed: weight-initialization seed stored in the config.
    """
    shape = _preset(preset)
    _check_choice("act_fn", act_fn, ACT_FNS)
    _check_choice("normalization", normalization, NORMALIZATIONS)
    _check_choice("positional", positional, POSITIONAL)
    for label, value in (("d_vocab", d_vocab), ("n_ctx", n_ctx)):
        if not isinstance(value, int) or value < 2:
            raise InvalidInputError(f"{label} must be an integer >= 2, got {value!r}")
    if n_key_value_heads is not None and (
        n_key_value_heads < 1 or shape.n_heads % n_key_value_heads
    ):
        raise InvalidInputError(
            f"n_key_value_heads={n_key_value_heads} must divide the {shape.n_heads} heads of "
            f"preset {preset!r}; choose one of {_divisors(shape.n_heads)}"
        )
    if d_mlp is not None and d_mlp < 1:
        raise InvalidInputError(f"d_mlp must be positive, got {d_mlp}")
    kwargs: dict[str, Any] = {
        "n_layers": shape.n_layers,
        "d_model": shape.d_model,
        "n_heads": shape.n_heads,
        "d_head": shape.d_head,
        "d_mlp": d_mlp or shape.d_mlp,
        "d_vocab": d_vocab,
        "n_ctx": n_ctx,
        "act_fn": act_fn,
        "gated_mlp": gated,
        "normalization_type": normalization,
        "positional_embedding_type": positional,
        "default_prepend_bos": True,
        "model_name": f"workbench-{preset}",
        "seed": seed,
        "dtype": torch.float32,
    }
    if n_key_value_heads is not None and n_key_value_heads != shape.n_heads:
        kwargs["n_key_value_heads"] = n_key_value_heads
    if positional == "rotary":
        kwargs["rotary_dim"] = shape.d_head
    return HookedTransformerConfig(**kwargs)


def list_presets() -> list[dict[str, Any]]:
    """One row per preset: name, shape and description (for `workbench lm list-presets`)."""
    return [{"name": name, **asdict(shape)} for name, shape in PRESETS.items()]


def _preset(name: str) -> LMShape:
    if name not in PRESETS:
        raise InvalidInputError(f"unknown LM preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def _check_choice(label: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidInputError(f"unknown {label} {value!r}; choose one of {list(choices)}")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
