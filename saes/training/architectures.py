"""Which trainable class implements each architecture name."""

from __future__ import annotations

from saes.training.base import TrainableSAE
from saes.training.config import SAETrainConfig
from saes.training.dense_archs import JumpReLUTrainable, ReLUTrainable
from saes.training.sparse_archs import BatchTopKTrainable, TopAFATrainable, TopKTrainable
from saes.training.structured_arch import StructuredTrainable

TRAINABLE: dict[str, type[TrainableSAE]] = {
    "topk": TopKTrainable,
    "batchtopk": BatchTopKTrainable,
    "topafa": TopAFATrainable,
    "structured": StructuredTrainable,
    "relu": ReLUTrainable,
    "jumprelu": JumpReLUTrainable,
}


def build_trainable(cfg: SAETrainConfig, d_in: int) -> TrainableSAE:
    """A freshly initialized trainable SAE for a resolved config (cfg.resolved(d_in))."""
    return TRAINABLE[cfg.arch](cfg, d_in)
