"""Registry of model architectures that the workbench can train, store and load.

Every architecture is a `HookedTransformer` (or a subclass), so hooks, `run_with_cache` and
generation work the same for all. The default, "hooked_transformer", is TransformerLens' own
model built from a `HookedTransformerConfig`. Another module (e.g. MoE-X) registers its own:

    register_architecture(Architecture("moex", build=build_moex, aux_loss=load_balance_loss))

`build(cfg, options)` returns a freshly initialized model; `options` is a JSON-serializable dict of
settings beyond the HookedTransformer config (stored in the model artifact's manifest).
`aux_loss(model)`, when given, is added to the language-modelling loss after each forward pass
(e.g. a router load-balancing term) and may return None.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from workbench.errors import NotFoundError

DEFAULT_ARCHITECTURE = "hooked_transformer"
_TRUSTED_MODULE_PREFIXES = ("workbench.",)
# the workbench's own architectures, imported on first use (training names them before any
# manifest says where they live)
_BUILTIN_MODULES = {"moex": "workbench.models.moex"}


@dataclass(frozen=True)
class Architecture:
    """How to build a model of one kind and what extra loss its training adds."""

    name: str
    build: Callable[[HookedTransformerConfig, dict[str, Any]], HookedTransformer]
    aux_loss: Callable[[HookedTransformer], torch.Tensor | None] | None = None

    @property
    def module(self) -> str:
        return getattr(self.build, "__module__", "") or ""


_REGISTRY: dict[str, Architecture] = {}


def register_architecture(arch: Architecture) -> None:
    """Make `arch` available to training and loading under `arch.name`."""
    _REGISTRY[arch.name] = arch


def get_architecture(name: str, module: str | None = None) -> Architecture:
    """The registered architecture `name`; imports `module` first when it registers it.

    Only modules inside the workbench package are imported, so a manifest cannot make the loader
    run arbitrary code.
    """
    module = module or _BUILTIN_MODULES.get(name)
    if name not in _REGISTRY and module and module.startswith(_TRUSTED_MODULE_PREFIXES):
        importlib.import_module(module)
    if name not in _REGISTRY:
        raise NotFoundError(
            f"unknown model architecture {name!r}; registered: {sorted(_REGISTRY)}. Import the "
            "module that registers it first."
        )
    return _REGISTRY[name]


def quiet_hooked_transformer(cfg: HookedTransformerConfig, tokenizer: Any = None,
                             cls: type[HookedTransformer] = HookedTransformer) -> HookedTransformer:
    """`cls(cfg, tokenizer)` without TransformerLens 3's deprecation notice for HookedTransformer."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated.*", category=DeprecationWarning)
        return cls(cfg, tokenizer=tokenizer, move_to_device=False)


def move_model(model: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """Move a model (updating a HookedTransformer's cfg.device) without TransformerLens' print."""
    if isinstance(model, HookedTransformer):
        return model.to(device, print_details=False)
    return model.to(device)


def _build_hooked_transformer(cfg: HookedTransformerConfig,
                              options: dict[str, Any]) -> HookedTransformer:
    return quiet_hooked_transformer(cfg)


register_architecture(Architecture(DEFAULT_ARCHITECTURE, build=_build_hooked_transformer))
