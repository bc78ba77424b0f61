"""Where training activations come from: a cached store, a live model, or a tensor in memory.

Every source yields float32 batches [batch_size, d_in] in an order fixed by the seed, forever
(the trainer stops after its token budget), and can skip the batches a resumed run has already
seen. It also carries the metadata the saved SAE records (model name, hook, context size).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from workbench.errors import InvalidInputError
from workbench.lab import Lab

BatchFactory = Callable[[int, int], Iterator[torch.Tensor]]


@dataclass
class ActivationSource:
    """A stream of activations.

    d_in: activation width; model_name / hook_name: where they come from (None if unknown);
    parents: lab artifacts the SAE derives from; description: one line for messages;
    make_batches(batch_size, seed) -> endless iterator of [batch_size, d_in] float32 tensors.
    """

    d_in: int
    model_name: str | None
    hook_name: str | None
    parents: list[str]
    description: str
    make_batches: BatchFactory
    metadata: dict[str, Any] = field(default_factory=dict)

    def batches(self, batch_size: int, seed: int, skip: int = 0) -> Iterator[torch.Tensor]:
        """Batches in seed order, the first `skip` of them dropped (resuming). Skipped batches
        are still produced and discarded: cheap for stores and tensors, a model forward per
        batch for live sources."""
        stream = self.make_batches(batch_size, seed)
        for _ in range(skip):
            next(stream, None)
        return stream


def tensor_source(
    x: torch.Tensor, model_name: str | None = None, hook_name: str | None = None
) -> ActivationSource:
    """In-memory activations [N, d_in]: reshuffled each epoch with the seed."""
    if x.dim() != 2:
        raise InvalidInputError(f"activations must be a [tokens, d_in] tensor, got {tuple(x.shape)}")

    def make_batches(batch_size: int, seed: int) -> Iterator[torch.Tensor]:
        if x.shape[0] < batch_size:
            raise InvalidInputError(
                f"only {x.shape[0]} tokens in memory, fewer than one batch ({batch_size}); "
                "use a smaller --batch-size"
            )
        generator = torch.Generator().manual_seed(seed)
        while True:
            order = torch.randperm(x.shape[0], generator=generator)
            for start in range(0, x.shape[0] - batch_size + 1, batch_size):
                yield x[order[start : start + batch_size]].float()

    return ActivationSource(x.shape[1], model_name, hook_name, [], "tensor in memory", make_batches)


def store_source(store: Any) -> ActivationSource:
    """A cached activations artifact (`workbench.activations.ActivationStore`)."""

    def make_batches(batch_size: int, seed: int) -> Iterator[torch.Tensor]:
        if store.n_tokens < batch_size:
            raise InvalidInputError(
                f"activations {store.name!r} hold {store.n_tokens} tokens, fewer than one batch "
                f"({batch_size}); cache more tokens or use a smaller --batch-size"
            )
        return store.iter_batches(batch_size, shuffle=True, seed=seed, drop_last=True, epochs=None)

    metadata = {"context_size": store.context_size or None, "dataset_path": store.name,
                "prepend_bos": True}
    return ActivationSource(store.d_in, store.model_name, store.hook, [store.name],
                            f"activations {store.name!r}", make_batches, metadata)


def live_source(
    lab: Lab, model_spec: Any, hook: str, corpus_name: str, context_size: int = 128,
    device: str | None = None,
) -> ActivationSource:
    """Activations computed on the fly from a model over a corpus (no cache on disk).

    model_spec: anything `load_model` takes (lab model name, TransformerLens name, HF folder) or
    a HookedTransformer with its tokenizer set. Raises NotFoundError for an unknown model,
    corpus or hook (listing the valid ones).
    """
    from workbench.activations import iter_live_batches
    from workbench.activations.batching import prefetched
    from workbench.data.store import load_corpus
    from workbench.models.hooks import validate_hook
    from workbench.models.loading import load_model

    if isinstance(model_spec, str):
        model = load_model(model_spec, lab=lab, device=device)
    else:
        model, model_spec = model_spec, getattr(model_spec.cfg, "model_name", "model")
    validate_hook(model, hook)
    corpus = load_corpus(lab, corpus_name)
    d_in = hook_width(model, hook)

    def make_batches(batch_size: int, seed: int) -> Iterator[torch.Tensor]:
        # the forward passes run in a background thread, overlapping the training steps
        return prefetched(iter_live_batches(model, hook, corpus, batch_size,
                                            context_size=context_size, seed=seed, epochs=None))

    parents = [n for n in (model_spec, corpus_name) if _in_lab(lab, n)]
    metadata = {"context_size": context_size, "dataset_path": corpus_name, "prepend_bos": True}
    return ActivationSource(d_in, model_spec, hook, parents,
                            f"live model {model_spec!r} at {hook!r} over corpus {corpus_name!r}",
                            make_batches, metadata)


def _in_lab(lab: Lab, name: str) -> bool:
    try:
        return lab.exists(name)
    except InvalidInputError:  # not an artifact name (a path, an hf: spec, ...)
        return False


def hook_width(model: Any, hook: str) -> int:
    """Width of the per-token activation at `hook` (one tiny forward pass)."""
    from workbench.activations.extract import hook_activations

    bos = getattr(model.tokenizer, "bos_token_id", None) or 0
    return int(hook_activations(model, torch.tensor([[bos, bos]]), hook).shape[-1])


def resolve_source(lab: Lab | None, source: Any) -> ActivationSource:
    """An ActivationSource from: an activations artifact name, a store, a tensor, or a source."""
    if isinstance(source, ActivationSource):
        return source
    if isinstance(source, torch.Tensor):
        return tensor_source(source)
    if isinstance(source, str):
        if lab is None:
            raise InvalidInputError(f"activations {source!r} named without a lab; pass lab=")
        from workbench.activations import open_activations

        return store_source(open_activations(lab, source))
    if hasattr(source, "iter_batches") and hasattr(source, "d_in"):
        return store_source(source)
    raise InvalidInputError(
        f"cannot train from a {type(source).__name__}; pass an activations artifact name, an "
        "ActivationStore, a [tokens, d_in] tensor or an ActivationSource"
    )
