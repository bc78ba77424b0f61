"""Activations of a model at one hook point: cached to disk or streamed from a live model.

Entry points:
    cache_activations(lab, name, model, hook, corpus, n_tokens, ...) -> ActivationStore
    open_activations(lab, name) -> ActivationStore   (.iter_batches, .read, .read_index,
                                                      .documents, .token_labels)
    iter_live_batches(model, hook, corpus, batch_size, ...) -> Iterator[Tensor [batch, d_in]]
    collect_activations(model, hook, corpus, n_tokens, ...) -> ActivationChunk

Modules: windows (documents -> packed BOS-led token windows), extract (hook activations, early
stop), live (the streaming pipeline), batching (fixed and shuffled batches), shards (the on-disk
format), cache (writing an artifact), store (reading it), memory (peak RSS).
"""

from workbench.activations.cache import CacheConfig, cache_activations, default_activations_name
from workbench.activations.live import (
    ActivationChunk,
    collect_activations,
    iter_activation_chunks,
    iter_live_batches,
)
from workbench.activations.memory import peak_rss_mb
from workbench.activations.store import ActivationStore, open_activations

__all__ = [
    "ActivationChunk",
    "ActivationStore",
    "CacheConfig",
    "cache_activations",
    "collect_activations",
    "default_activations_name",
    "iter_activation_chunks",
    "iter_live_batches",
    "open_activations",
    "peak_rss_mb",
]
