"""Input normalization during training, and how it is stored in the saved sae-lens SAE.

    none     x as it is
    token    per-token standardization (x - mean(x)) / (std(x) + 1e-5), as top-AFA trains; the
             SAE is saved with sae-lens normalize_activations="layer_norm", which applies the
             same formula at inference and undoes it on the reconstruction
    dataset  x * s with s = sqrt(d_in) / E||x|| estimated on the first batch, as sae-lens'
             "expected_average_only_in"; s is folded into the saved weights
             (W_enc * s, W_dec / s, b_dec / s), so the saved SAE takes raw activations
"""

from __future__ import annotations

import math

import torch

from workbench.errors import InvalidInputError

TOKEN_EPS = 1e-5


def standardize_tokens(x: torch.Tensor) -> torch.Tensor:
    """[..., d] -> per-token standardized [..., d] (sae-lens "layer_norm": unbiased std, 1e-5)."""
    centered = x - x.mean(dim=-1, keepdim=True)
    return centered / (centered.std(dim=-1, keepdim=True) + TOKEN_EPS)


class InputNormalizer:
    """Applies the configured normalization to training batches; fitted on the first batch."""

    def __init__(self, mode: str):
        if mode not in ("none", "token", "dataset"):
            raise InvalidInputError(f"unknown normalization {mode!r}; use none, token or dataset")
        self.mode = mode
        self.scale: float | None = None

    def fit(self, sample: torch.Tensor) -> None:
        """Estimate the dataset scale from a sample [n, d] (dataset mode only)."""
        if self.mode != "dataset":
            return
        mean_norm = float(sample.float().norm(dim=1).mean())
        if not math.isfinite(mean_norm) or mean_norm <= 0:
            raise InvalidInputError(
                f"cannot scale activations whose mean norm is {mean_norm}; check the activations "
                "(all zero or NaN?) or train with --normalize none"
            )
        self.scale = math.sqrt(sample.shape[1]) / mean_norm

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "token":
            return standardize_tokens(x)
        if self.mode == "dataset":
            if self.scale is None:
                raise RuntimeError("InputNormalizer.fit must run before dataset scaling")
            return x * self.scale
        return x

    def denormalize(self, x_raw: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """A reconstruction x_hat of normalize(x_raw) back in the space of x_raw [..., d]."""
        if self.mode == "token":
            centered = x_raw - x_raw.mean(dim=-1, keepdim=True)
            return x_hat * centered.std(dim=-1, keepdim=True) + x_raw.mean(dim=-1, keepdim=True)
        if self.mode == "dataset":
            return x_hat / self.scale  # type: ignore[operator]
        return x_hat

    @property
    def sae_lens_mode(self) -> str:
        """The sae-lens normalize_activations value of the saved SAE (after folding)."""
        return "layer_norm" if self.mode == "token" else "none"

    def state_dict(self) -> dict:
        return {"mode": self.mode, "scale": self.scale}

    def load_state_dict(self, state: dict) -> None:
        self.mode, self.scale = state["mode"], state["scale"]
