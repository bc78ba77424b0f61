"""Running any `sae_lens.SAE` over activations in bounded-memory chunks.

Every evaluation in this package sees an SAE only through the sae-lens base-class API
(`sae.encode`, `sae.decode`, `sae.process_sae_in`, `sae.W_dec`, `sae.b_dec`, `sae.cfg`), so
sae-lens's own classes, pretrained releases and the workbench's registered architectures all
work the same way.

Activation sources are one of:
- a Tensor [N, d_in];
- an activation store (anything with `iter_batches(batch_size, shuffle=..., drop_last=...,
  max_tokens=...)`, e.g. `workbench.activations.ActivationStore`);
- any iterable of Tensors [n_i, d_in] (e.g. live activations from a model).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from workbench.errors import InvalidInputError

ActivationSource = Any  # Tensor | store with iter_batches | Iterable[Tensor]


@dataclass
class EncodedBatch:
    """One chunk run through an SAE.

    x: [n, d_in] the activations as given (float32, SAE device).
    z: [n, d_in] the SAE's input in its working space (after its own input normalization, before
       b_dec is subtracted): the space where x_hat_work = f @ W_dec + b_dec.
    f: [n, d_sae] dense latent code.
    x_hat: [n, d_in] reconstruction in the space of x.
    """

    x: torch.Tensor
    z: torch.Tensor
    f: torch.Tensor
    x_hat: torch.Tensor


def sae_device(sae: Any) -> torch.device:
    return sae.W_dec.device


def sae_width(sae: Any) -> tuple[int, int]:
    """(d_in, d_sae) of an SAE, read from its decoder [d_sae, d_in]."""
    d_sae, d_in = sae.W_dec.shape
    return int(d_in), int(d_sae)


def hook_name_of(sae: Any) -> str | None:
    """The model hook the SAE was trained on (sae-lens keeps it in cfg.metadata)."""
    metadata = getattr(sae.cfg, "metadata", None)
    return getattr(metadata, "hook_name", None) if metadata is not None else None


def dense(f: torch.Tensor) -> torch.Tensor:
    """sae-lens TopK SAEs may return a sparse COO code; everything here works on dense codes."""
    return f.to_dense() if f.is_sparse else f


@contextmanager
def flat_activations(sae: Any) -> Iterator[Any]:
    """Within the block the SAE takes flat [n, d_in] inputs even when it was set up to reshape
    hook_z activations [..., n_heads, d_head] itself (as sae-lens's evals do)."""
    reshaping = bool(getattr(sae, "hook_z_reshaping_mode", False))
    if reshaping:
        sae.turn_off_forward_pass_hook_z_reshaping()
    try:
        yield sae
    finally:
        if reshaping:
            sae.turn_on_forward_pass_hook_z_reshaping()


@torch.no_grad()
def working_space_input(sae: Any, x: torch.Tensor) -> torch.Tensor:
    """The SAE's input after its own normalization (e.g. per-token standardization), [n, d_in].

    Uses `process_sae_in` (which subtracts b_dec when `apply_b_dec_to_input`) and adds b_dec
    back, so it follows whatever normalization the architecture implements there.
    """
    processed = sae.process_sae_in(x)
    if getattr(sae.cfg, "apply_b_dec_to_input", True):
        processed = processed + sae.b_dec
    return processed.float()


@torch.no_grad()
def encode_batch(sae: Any, x: torch.Tensor) -> EncodedBatch:
    """Encode and decode one chunk x [n, d_in]; checks the width first."""
    d_in, _ = sae_width(sae)
    if x.ndim != 2 or x.shape[1] != d_in:
        raise InvalidInputError(
            f"activations of shape {tuple(x.shape)} do not fit this SAE (d_in={d_in}); evaluate "
            "it on activations from the model and hook it was trained on"
        )
    x = x.to(device=sae_device(sae), dtype=torch.float32)
    z = working_space_input(sae, x)
    f = dense(sae.encode(x))
    x_hat = sae.decode(f).float()
    return EncodedBatch(x=x, z=z, f=f.float(), x_hat=x_hat)


def iter_activation_chunks(
    source: ActivationSource, batch_size: int, n_tokens: int | None
) -> Iterator[torch.Tensor]:
    """Yield Tensors [<=batch_size, d_in] from `source`, at most `n_tokens` rows in all."""
    if batch_size <= 0:
        raise InvalidInputError(f"batch_size must be positive, got {batch_size}")
    if isinstance(source, torch.Tensor):
        chunks: Iterable[torch.Tensor] = source.split(batch_size)
    elif hasattr(source, "iter_batches"):
        chunks = source.iter_batches(
            batch_size, shuffle=False, drop_last=False, max_tokens=n_tokens
        )
    else:
        chunks = source
    seen = 0
    for chunk in chunks:
        for piece in chunk.reshape(-1, chunk.shape[-1]).split(batch_size):
            if n_tokens is not None:
                piece = piece[: n_tokens - seen]
            if len(piece) == 0:
                break
            seen += len(piece)
            yield piece
        if n_tokens is not None and seen >= n_tokens:
            return


def iter_encoded(
    sae: Any, source: ActivationSource, batch_size: int, n_tokens: int | None
) -> Iterator[EncodedBatch]:
    """Encode `source` chunk by chunk (memory bounded by batch_size x d_sae)."""
    for chunk in iter_activation_chunks(source, batch_size, n_tokens):
        yield encode_batch(sae, chunk)
