"""SAE training: a small, fast trainer for every architecture (read trainer.py first).

    from saes.training import SAETrainConfig, train_saes
    train_saes(lab, [SAETrainConfig(name="sae-topk", arch="topk", latents=4096, k=32)], "acts")

Modules: config (SAETrainConfig), trainer (train_saes: the loop, checkpoints, artifacts),
sae_trainer (one SAE's step), base / sparse_archs / structured_arch / dense_archs (the
architectures' losses and their export to sae-lens classes), auxk, losses, init,
normalization, selected (sparse-gradient gathers), sources (store, live model, tensor),
distributed (torchrun / DDP), checkpoint.
"""

from saes.training.config import SAETrainConfig
from saes.training.sae_trainer import SAETrainer, TrainingDivergedError
from saes.training.sources import ActivationSource, live_source, resolve_source, tensor_source
from saes.training.trainer import train_saes

__all__ = [
    "ActivationSource",
    "SAETrainConfig",
    "SAETrainer",
    "TrainingDivergedError",
    "live_source",
    "resolve_source",
    "tensor_source",
    "train_saes",
]
