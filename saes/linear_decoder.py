"""The plain linear decoder shared by our sae-lens SAE classes (top-AFA, structured)."""

from __future__ import annotations

import torch


class LinearDecoderMixin:
    """decode(f) = f W_dec + b_dec with sae-lens's hooks and output normalization.

    Mix in before `sae_lens.SAE` (the class supplies W_dec, b_dec and the hook points).
    """

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """f [..., d_sae] -> x_hat [..., d_in] (undoing the input normalization)."""
        sae_out = self.hook_sae_recons(feature_acts @ self.W_dec + self.b_dec)  # type: ignore[attr-defined]
        sae_out = self.run_time_activation_norm_fn_out(sae_out)  # type: ignore[attr-defined]
        return self.reshape_fn_out(sae_out, self.d_head)  # type: ignore[attr-defined]
