"""Next-token losses of a HookedTransformer on packed token sequences."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" where `device` computes bfloat16 natively, else "fp32"; others as given."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        try:
            native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        except (AttributeError, RuntimeError):  # older torch: no such probes
            native = False
        return "bf16" if native else "fp32"
    return "fp32"


def autocast_context(precision: str, device: torch.device):
    """bf16 autocast for "bf16", nothing for "fp32"."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def next_token_loss(model: HookedTransformer, tokens: torch.Tensor,
                    precision: str = "fp32", ignore_index: int | None = None,
                    reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy (nats) of predicting tokens[:, 1:] from their prefixes.

    tokens: [batch, pos] int64 (position 0 is BOS and is never a target). Targets equal to
    `ignore_index` (padding) are skipped. reduction "mean" (over the counted targets) or "sum".
    Returns a scalar.
    """
    with autocast_context(precision, tokens.device):
        logits = model(tokens, return_type="logits")  # [batch, pos, d_vocab]
    logits = logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1),
                           ignore_index=-100 if ignore_index is None else ignore_index,
                           reduction=reduction)


def count_targets(tokens: torch.Tensor, ignore_index: int | None = None) -> int:
    """Number of targets of `tokens` [batch, pos] that next_token_loss counts."""
    targets = tokens[:, 1:]
    return targets.numel() if ignore_index is None else int((targets != ignore_index).sum())


@torch.no_grad()
def evaluate_loss(model: HookedTransformer, sequences: torch.Tensor, batch_size: int = 64,
                  precision: str = "fp32", ignore_index: int | None = None) -> float:
    """Mean next-token loss over all targets of `sequences` [n_seq, pos] (equal-size rows),
    skipping targets equal to `ignore_index` (padding)."""
    if len(sequences) == 0:
        return math.nan
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start:start + batch_size].to(device)
        n_targets = count_targets(batch, ignore_index)
        if n_targets == 0:
            continue
        total += float(next_token_loss(model, batch, precision, ignore_index, "sum"))
        count += n_targets
    model.train(was_training)
    return total / count if count else math.nan
