"""SAE training: a small, fast trainer for every architecture.

    from saes.training import SAETrainConfig, train_saes
    train_saes(lab, [SAETrainConfig(name="sae-topk", arch="topk", latents=4096, k=32)], "acts")

One TopK step reads top to bottom in two files: step.py (`SAETrainer.step`: normalize, loss,
backward, Adam, decoder renorm, dead-latent counters) and sparse_code.py (`SparseCodeSAE.step`:
encode, decode, AuxK, with sparse_ops' kernels).

Modules:
    config           SAETrainConfig (what a user sets) and its resolved form
    step             SAETrainer: one SAE's optimizer step; input normalization; the
                     architecture -> trainable class registry
    sparse_code      trainable SAE base; TopK, BatchTopK, top-AFA and their shared step
    dense_code       the dense baselines ReLU + L1 and JumpReLU + L0
    structured_code  the structured (grouped-posterior) SAE
    losses           loss terms, normalized for data parallelism, incl. AuxK
    trainer          train_saes: the run over one stream, checkpoints, artifacts
    sources          activation streams: cached store, live model, tensor
    distributed      torchrun / DDP collectives
"""

from saes.training.config import SAETrainConfig
from saes.training.sources import ActivationSource, live_source, resolve_source, tensor_source
from saes.training.step import SAETrainer, TrainingDivergedError
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
