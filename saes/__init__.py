"""Sparse autoencoders: architectures, sae-lens interop, training, evaluation, feature statistics.

Every SAE is a sae-lens object saved in sae-lens's on-disk format (`cfg.json` +
`sae_weights.safetensors`):

    arch        trained as                      saved / loaded as
    topk        TopK + AuxK                     sae_lens.TopKSAE
    batchtopk   BatchTopK + AuxK                sae_lens.JumpReLUSAE (learned threshold)
    topafa      top-AFA + AuxK                  saes.topafa.TopAFASAE       ("topafa")
    structured  grouped posteriors + AuxK       saes.structured.StructuredSAE ("structured")
    relu        ReLU + L1 (decoder-norm weighted) sae_lens.StandardSAE
    jumprelu    JumpReLU + L0 (straight-through) sae_lens.JumpReLUSAE

Importing this package registers "topafa" and "structured" with sae-lens, so
`sae_lens.SAE.load_from_disk(path)` and `sae_lens.HookedSAETransformer` work with them.

Entry points: `load_sae(spec, lab=None, device=None)` (interop), `SAETrainConfig` and
`train_saes(lab, configs, source)` (training).
"""

from __future__ import annotations

from typing import Any

from sae_lens.registry import SAE_CLASS_REGISTRY, register_sae_class

from saes.structured import StructuredSAE, StructuredSAEConfig
from saes.topafa import TopAFASAE, TopAFASAEConfig

ARCHITECTURES: dict[str, str] = {
    "topk": "TopK + AuxK, saved as sae_lens.TopKSAE",
    "batchtopk": "BatchTopK + AuxK, saved as sae_lens.JumpReLUSAE (learned threshold)",
    "topafa": "top-AFA + AuxK, saved as saes.topafa.TopAFASAE",
    "structured": "grouped posteriors + AuxK, saved as saes.structured.StructuredSAE",
    "relu": "ReLU + L1 (decoder-norm weighted), saved as sae_lens.StandardSAE",
    "jumprelu": "JumpReLU + L0 (straight-through), saved as sae_lens.JumpReLUSAE",
}
"""The SAE architectures the workbench trains (the one list: config validation, the trainable
classes in saes/training/step.py and the CLI's choices all derive from it)."""


def _register_with_sae_lens() -> None:
    """Register our inference classes with sae-lens once (safe to call again)."""
    for sae_class, cfg_class in ((TopAFASAE, TopAFASAEConfig), (StructuredSAE, StructuredSAEConfig)):
        name = cfg_class.architecture()
        if SAE_CLASS_REGISTRY.get(name, (None,))[0] is not sae_class:
            SAE_CLASS_REGISTRY.pop(name, None)
            register_sae_class(name, sae_class, cfg_class)


_register_with_sae_lens()

_LAZY = {
    "load_sae": "saes.interop",
    "import_sae": "saes.interop",
    "SAETrainConfig": "saes.training.config",
    "train_saes": "saes.training.trainer",
    "SAETrainer": "saes.training.step",
}


def __getattr__(name: str) -> Any:
    """Lazy access to the heavier entry points (keeps `import saes` light)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'saes' has no attribute {name!r}")


__all__ = [
    "ARCHITECTURES",
    "SAETrainConfig",
    "StructuredSAE",
    "StructuredSAEConfig",
    "TopAFASAE",
    "TopAFASAEConfig",
    "import_sae",
    "load_sae",
    "train_saes",
]
