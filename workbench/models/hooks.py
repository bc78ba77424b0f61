"""Hook names of a HookedTransformer: validation with helpful errors, layer of a hook.

A HookedTransformer has hook points that only run with some config switches (e.g.
`attn.hook_result` needs `cfg.use_attn_result`); `active_hooks` finds the ones that really run
by tracing one tiny forward pass, and `validate_hook` accepts only those.
"""

from __future__ import annotations

import difflib
import re

import torch
from transformer_lens import HookedRootModule

from workbench.errors import InvalidInputError, NotFoundError

_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")
# Config switches that turn optional hook points on; the trace is cached per combination.
_HOOK_SWITCHES = ("use_attn_result", "use_split_qkv_input", "use_attn_in", "use_hook_mlp_in",
                  "use_hook_tokens")


def hook_layer(hook_name: str) -> int | None:
    """The block index of a hook name ("blocks.3.hook_resid_post" -> 3); None outside blocks."""
    match = _LAYER_RE.match(hook_name)
    return int(match.group(1)) if match else None


def active_hooks(model: HookedRootModule) -> list[str]:
    """Names of the hook points that run in a forward pass of `model`, in model order.

    Traced once per config (one forward pass over two tokens, cached on the model); hooks
    already attached to the model see that pass too.
    """
    cfg = getattr(model, "cfg", None)
    key = tuple(getattr(cfg, s, None) for s in _HOOK_SWITCHES)
    cached = getattr(model, "_workbench_active_hooks", None)
    if cached is not None and cached[0] == key:
        return list(cached[1])
    fired: set[str] = set()

    def record(activation: torch.Tensor, hook) -> None:
        fired.add(hook.name)

    device = next(model.parameters()).device
    tokens = torch.zeros(1, 2, dtype=torch.long, device=device)
    with torch.no_grad():
        model.run_with_hooks(tokens, return_type=None, fwd_hooks=[(lambda _: True, record)])
    names = [n for n in model.hook_dict if n in fired]
    model._workbench_active_hooks = (key, names)
    return list(names)


def hook_patterns(model: HookedRootModule) -> list[str]:
    """The model's active hook names with layer numbers folded into ranges, in model order.

    e.g. ["hook_embed", "hook_pos_embed", "blocks.{0..1}.hook_resid_pre", ..., "ln_final.hook_scale"]
    """
    layers: dict[str, list[int]] = {}
    for name in active_hooks(model):
        layer = hook_layer(name)
        key = _LAYER_RE.sub("blocks.{}.", name) if layer is not None else name
        layers.setdefault(key, [])
        if layer is not None:
            layers[key].append(layer)
    return [
        key.replace("{}", "{" + _ranges(sorted(set(found))) + "}") if found else key
        for key, found in layers.items()
    ]


def validate_hook(model: HookedRootModule, hook_name: str) -> str:
    """Return `hook_name` if that hook point runs in the model, else raise a clear error.

    Unknown names raise NotFoundError listing the model's hooks compactly (per layer pattern)
    with the closest matches; hook points that exist but do not run with the current config
    (e.g. `attn.hook_result` without `cfg.use_attn_result`) raise InvalidInputError.
    """
    active = active_hooks(model)
    if hook_name in active:
        return hook_name
    if hook_name in model.hook_dict:
        raise InvalidInputError(
            f"hook {hook_name!r} exists but does not run with this model's config; enable it "
            f"first (e.g. model.set_use_attn_result(True) for attn.hook_result, "
            "set_use_split_qkv_input / set_use_attn_in / set_use_hook_mlp_in for the input hooks)"
        )
    close = difflib.get_close_matches(hook_name, active, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    n_layers = getattr(getattr(model, "cfg", None), "n_layers", None)
    layer = hook_layer(hook_name)
    if layer is not None and n_layers is not None and layer >= n_layers:
        hint = f" The model has {n_layers} layers (0..{n_layers - 1}).{hint}"
    raise NotFoundError(
        f"the model has no hook {hook_name!r}.{hint} Valid hooks: " + "; ".join(hook_patterns(model))
    )


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5] -> "0..2,5"."""
    parts, start, prev = [], values[0], values[0]
    for v in values[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(str(start) if start == prev else f"{start}..{prev}")
        if v is not None:
            start = prev = v
    return ",".join(parts)
