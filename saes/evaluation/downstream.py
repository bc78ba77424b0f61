"""Downstream metrics: splice the SAE's reconstruction into the model at its hook.

For each batch of token windows [B, T] three forward passes run: clean, with the activation at
the hook replaced by the SAE's reconstruction, and with it replaced by zeros. Positions whose
input token is special (BOS, EOS, padding) keep their clean activation in both modified passes
and are left out of the averages (as sae-lens does), so the zero-ablation baseline ablates
exactly the positions the SAE replaces. Reported (sae-lens names):

- ce_loss_without_sae, ce_loss_with_sae, ce_loss_with_ablation: mean next-token CE;
- ce_loss_score = (CE_ablation - CE_sae) / (CE_ablation - CE_clean);
- delta_lm_loss = CE_sae - CE_clean;
- kl_div_with_sae, kl_div_with_ablation: mean KL(clean || modified) over the vocabulary;
- kl_div_score = (KL_ablation - KL_sae) / KL_ablation.

The replacement hook hands every encoded chunk to an optional callback, so reconstruction
metrics on the same held-out text come out of the same passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F

from saes.evaluation.encoding import EncodedBatch, encode_batch, hook_name_of, sae_width
from workbench.errors import InvalidInputError, NotFoundError

EncodedCallback = Callable[[EncodedBatch], None]


def kl_per_token(clean_logits: torch.Tensor, new_logits: torch.Tensor) -> torch.Tensor:
    """KL(clean || new) per position: logits [B, T, V] -> [B, T]."""
    clean_logp = F.log_softmax(clean_logits.float(), dim=-1)
    new_logp = F.log_softmax(new_logits.float(), dim=-1)
    return (clean_logp.exp() * (clean_logp - new_logp)).sum(-1)


def special_token_mask(tokens: torch.Tensor, special_ids: Iterable[int]) -> torch.Tensor:
    """True where the token is an ordinary (non-special) token: tokens [B, T] -> bool [B, T]."""
    keep = torch.ones_like(tokens, dtype=torch.bool)
    for token_id in special_ids:
        keep &= tokens != int(token_id)
    return keep


def special_token_ids(tokenizer: Any) -> list[int]:
    """BOS/EOS/PAD/UNK ids a tokenizer defines (empty without a tokenizer)."""
    if tokenizer is None:
        return []
    ids = getattr(tokenizer, "all_special_ids", None) or []
    return sorted({int(i) for i in ids if i is not None})


def _flat_view(activation: torch.Tensor, d_in: int) -> torch.Tensor:
    """Activation at the hook [B, T, ...] -> [B, T, d_in] (head dimensions flattened)."""
    flat = activation.reshape(*activation.shape[:2], -1)
    if flat.shape[-1] != d_in:
        raise InvalidInputError(
            f"the activation at the hook has width {flat.shape[-1]} but the SAE expects "
            f"d_in={d_in}; use the model and hook the SAE was trained on"
        )
    return flat


def make_splice_hooks(
    sae: Any, keep: torch.Tensor, on_encoded: EncodedCallback | None = None
) -> tuple[Callable, Callable]:
    """(replace_with_reconstruction, replace_with_zeros) hook functions for TransformerLens.

    keep: bool [B, T], the positions to modify. Head-shaped hooks (hook_z etc.) are flattened
    to [B, T, d_in] for the SAE and reshaped back.
    """
    d_in, _ = sae_width(sae)

    def reconstruct(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        flat = _flat_view(activation, d_in)
        mask = keep.to(flat.device)
        encoded = encode_batch(sae, flat[mask])
        if on_encoded is not None:
            on_encoded(encoded)
        out = flat.clone()
        out[mask] = encoded.x_hat.to(device=out.device, dtype=out.dtype)
        return out.reshape(activation.shape)

    def ablate(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        flat = _flat_view(activation, d_in).clone()
        flat[keep.to(flat.device)] = 0.0
        return flat.reshape(activation.shape)

    return reconstruct, ablate


class DownstreamAccumulator:
    """Sums per-token CE and KL over batches (positions restricted by a mask)."""

    NAMES = ("ce_loss_without_sae", "ce_loss_with_sae", "ce_loss_with_ablation",
             "kl_div_with_sae", "kl_div_with_ablation")

    def __init__(self) -> None:
        self.sums = {name: 0.0 for name in self.NAMES}
        self.n_ce = 0
        self.n_kl = 0

    def update(self, ce: dict[str, torch.Tensor], kl: dict[str, torch.Tensor],
               keep: torch.Tensor) -> None:
        ce_mask = keep[:, :-1]
        for name, values in ce.items():
            self.sums[name] += float(values[ce_mask].double().sum())
        for name, values in kl.items():
            self.sums[name] += float(values[keep].double().sum())
        self.n_ce += int(ce_mask.sum())
        self.n_kl += int(keep.sum())

    def result(self) -> dict[str, float]:
        if self.n_ce == 0:
            raise InvalidInputError(
                "no ordinary tokens to score the splice on; give longer held-out texts"
            )
        out = {name: self.sums[name] / (self.n_ce if name.startswith("ce") else self.n_kl)
               for name in self.NAMES}
        clean, sae_ce, ablated = (out["ce_loss_without_sae"], out["ce_loss_with_sae"],
                                  out["ce_loss_with_ablation"])
        gap = ablated - clean
        out["ce_loss_score"] = (ablated - sae_ce) / gap if abs(gap) > 1e-12 else float("nan")
        out["delta_lm_loss"] = sae_ce - clean
        kl_abl = out["kl_div_with_ablation"]
        out["kl_div_score"] = (kl_abl - out["kl_div_with_sae"]) / kl_abl if kl_abl > 1e-12 \
            else float("nan")
        out["n_tokens_downstream"] = self.n_ce
        return out


@torch.no_grad()
def splice_batch(
    sae: Any, model: Any, tokens: torch.Tensor, hook_name: str, keep: torch.Tensor,
    on_encoded: EncodedCallback | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per-token CE [B, T-1] and KL [B, T] for one batch of token windows [B, T]."""
    reconstruct, ablate = make_splice_hooks(sae, keep, on_encoded)
    clean_logits, clean_ce = model(tokens, return_type="both", loss_per_token=True)
    sae_logits, sae_ce = model.run_with_hooks(
        tokens, return_type="both", loss_per_token=True, fwd_hooks=[(hook_name, reconstruct)]
    )
    abl_logits, abl_ce = model.run_with_hooks(
        tokens, return_type="both", loss_per_token=True, fwd_hooks=[(hook_name, ablate)]
    )
    ce = {"ce_loss_without_sae": clean_ce, "ce_loss_with_sae": sae_ce,
          "ce_loss_with_ablation": abl_ce}
    kl = {"kl_div_with_sae": kl_per_token(clean_logits, sae_logits),
          "kl_div_with_ablation": kl_per_token(clean_logits, abl_logits)}
    return ce, kl


def check_hook(model: Any, hook_name: str | None) -> str:
    """The hook name, checked against the model's hook points."""
    if not hook_name:
        raise InvalidInputError(
            "the SAE does not name the hook it was trained on (cfg.metadata.hook_name); "
            "pass hook_name explicitly"
        )
    if hook_name not in model.hook_dict:
        names = ", ".join(list(model.hook_dict)[:12])
        raise NotFoundError(
            f"the model has no hook {hook_name!r} (the SAE's hook); hooks include: {names}, ..."
        )
    return hook_name


@torch.no_grad()
def downstream_metrics(
    sae: Any,
    model: Any,
    tokens: torch.Tensor,
    keep: torch.Tensor | None = None,
    hook_name: str | None = None,
    batch_size_tokens: int = 4096,
    on_encoded: EncodedCallback | None = None,
) -> dict[str, float]:
    """CE/KL with the SAE spliced in, over token windows [n_seq, T] (T >= 2).

    keep [n_seq, T] bool: the text positions to splice and score (default: every position whose
    token is not one of the model tokenizer's special tokens). `on_encoded` receives every chunk
    the SAE encoded (for reconstruction metrics on the same text).
    """
    hook_name = check_hook(model, hook_name or hook_name_of(sae))
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise InvalidInputError(
            f"held-out tokens must be [n_sequences, context >= 2], got {tuple(tokens.shape)}"
        )
    if keep is None:
        keep = special_token_mask(tokens, special_token_ids(getattr(model, "tokenizer", None)))
    if keep.shape != tokens.shape:
        raise InvalidInputError(
            f"keep mask {tuple(keep.shape)} must match tokens {tuple(tokens.shape)}"
        )
    device = next(model.parameters()).device
    seqs_per_batch = max(1, batch_size_tokens // tokens.shape[1])
    acc = DownstreamAccumulator()
    for batch, batch_keep in zip(tokens.split(seqs_per_batch), keep.split(seqs_per_batch)):
        batch, batch_keep = batch.to(device), batch_keep.to(device)
        ce, kl = splice_batch(sae, model, batch, hook_name, batch_keep, on_encoded)
        acc.update(ce, kl, batch_keep)
    return acc.result()
