"""`evaluate_sae`: every reconstruction, sparsity, geometry (ZF) and downstream metric of one SAE.

    result = evaluate_sae(sae, store, model=model, tokens=heldout_tokens, keep=keep)
    result["nmse"], result["l0"], result["ce_loss_score"], result["zf_plot"], ...

Reconstruction metrics run over an activation source (store, tensor or iterable of tensors).
With `source=None` they run on the activations met at the hook while scoring the held-out
`tokens` (one pass gives both, on text the SAE never trained on).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from saes.evaluation.downstream import downstream_metrics
from saes.evaluation.encoding import (
    ActivationSource,
    EncodedBatch,
    flat_activations,
    hook_name_of,
    iter_encoded,
    sae_width,
)
from saes.evaluation.metrics import ReconstructionAccumulator
from saes.evaluation.zf import ZFCollector
from workbench.errors import InvalidInputError


@dataclass
class EvalConfig:
    """n_tokens: tokens for the reconstruction metrics (and, held-out, for the splice);
    batch_size: tokens encoded at once (memory ~ batch_size x d_sae floats);
    zf_points: points kept for the ZF scatter plot."""

    n_tokens: int = 32768
    batch_size: int = 4096
    zf_points: int = 2000
    seed: int = 0

    def check(self) -> None:
        for name in ("n_tokens", "batch_size", "zf_points"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be positive, got {getattr(self, name)}")


class SAEEvaluator:
    """Collects reconstruction metrics and eps_LBO from encoded chunks."""

    def __init__(self, sae: Any, config: EvalConfig):
        _, d_sae = sae_width(sae)
        self.reconstruction = ReconstructionAccumulator(d_sae)
        self.zf = ZFCollector(sae, n_points=config.zf_points, seed=config.seed)

    def __call__(self, batch: EncodedBatch) -> None:
        self.reconstruction.update(batch.x, batch.f, batch.x_hat)
        self.zf.update(batch.z, batch.f)

    def result(self) -> dict[str, Any]:
        return {**self.reconstruction.result(), **self.zf.result()}


def _trim_tokens(tokens: torch.Tensor, keep: torch.Tensor | None, n_tokens: int
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Keep the first windows that hold at least n_tokens scored positions."""
    counts = keep.sum(1) if keep is not None else torch.full((len(tokens),), tokens.shape[1])
    n_windows = int(torch.searchsorted(counts.cumsum(0), torch.tensor(n_tokens))) + 1
    return tokens[:n_windows], (keep[:n_windows] if keep is not None else None)


def evaluate_sae(
    sae: Any,
    source: ActivationSource | None = None,
    model: Any = None,
    tokens: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
    n_tokens: int = 32768,
    batch_size: int = 4096,
    hook_name: str | None = None,
    config: EvalConfig | None = None,
) -> dict[str, Any]:
    """Evaluate `sae` (any sae_lens.SAE).

    source: activations [N, d_in] / store / iterable for the reconstruction metrics; None to
        use the activations at the hook on `tokens`.
    model, tokens [n_seq, T], keep [n_seq, T] bool: held-out token windows for the CE/KL splice
        (keep marks the text positions; default: non-special tokens).
    Returns a dict: scalar metrics (nmse, fvu, explained_variance, l0, dead_fraction, shrinkage,
    eps_lbo_mean, ce_loss_score, kl_div_score, delta_lm_loss, ...) plus l0_histogram,
    density_histogram and zf_plot.
    """
    with torch.no_grad(), flat_activations(sae):
        return _evaluate(sae, source, model, tokens, keep, hook_name,
                         config or EvalConfig(n_tokens=n_tokens, batch_size=batch_size))


def _evaluate(sae: Any, source: ActivationSource | None, model: Any, tokens: torch.Tensor | None,
              keep: torch.Tensor | None, hook_name: str | None, config: EvalConfig
              ) -> dict[str, Any]:
    config.check()
    sae.eval()
    with_model = model is not None and tokens is not None
    if source is None and not with_model:
        raise InvalidInputError(
            "nothing to evaluate on: give activations (a store or tensor) or a model with "
            "held-out tokens"
        )
    evaluator = SAEEvaluator(sae, config)
    if source is not None:
        for batch in iter_encoded(sae, source, config.batch_size, config.n_tokens):
            evaluator(batch)
    result: dict[str, Any] = {}
    if with_model:
        if source is None:
            tokens, keep = _trim_tokens(tokens, keep, config.n_tokens)
        result.update(downstream_metrics(
            sae, model, tokens, keep=keep, hook_name=hook_name,
            batch_size_tokens=config.batch_size,
            on_encoded=evaluator if source is None else None,
        ))
    result = {**evaluator.result(), **result}
    if result.get("n_tokens", 0) == 0:
        raise InvalidInputError("the activation source yielded no tokens; nothing was evaluated")
    d_in, d_sae = sae_width(sae)
    result.update({
        "d_in": d_in, "d_sae": d_sae, "hook_name": hook_name or hook_name_of(sae),
        "reconstruction_source": "held-out text at the hook" if source is None else "activations",
        "eval_config": asdict(config),
    })
    return result


CATALOG_RENAMES = {"dead_fraction": "eval_dead_fraction", "n_dead": "eval_n_dead",
                   "n_tokens": "eval_tokens"}
"""Catalog names of eval metrics that would clash with the trainer's (its dead fraction is
measured over the training window)."""
CATALOG_SKIP = ("d_in", "d_sae")


def scalar_metrics(result: dict[str, Any]) -> dict[str, float | int]:
    """The scalar (number) entries of an evaluation result under their catalog names."""
    return {CATALOG_RENAMES.get(k, k): v for k, v in result.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in CATALOG_SKIP}
