"""top-AFA SAE (Lee et al. 2025, arXiv 2503.24277) as a sae-lens `SAE` ("topafa").

No hyperparameter k: each input keeps as many latents as it takes for their decoder-scaled norm
to best match the norm of the encoder input (the "approximate feature activation" target):

    z = x - b_dec                          (x standardized per token when normalize_activations
                                            is "layer_norm", as the reference trains it)
    a = ReLU(z W_enc)                      [..., d_sae]   (no encoder bias, as in the reference)
    s_i = (a_i * ||W_dec,i||)^2, sorted descending, C_j = cumulative sums (last = guard)
    k(x) = argmin_j |sqrt(C_j) - ||z||| + 1; the k(x) largest s_i keep a_i, the rest are 0
    x_hat = f W_dec + b_dec

The k(x) cut is `sparse_ops.topafa_select` (shared with the trainer). W_enc is stored as sae-lens
does, [d_in, d_sae]; W_dec [d_sae, d_in]; b_dec [d_in].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sae_lens import SAE, SAEConfig
from typing_extensions import override

from saes.linear_decoder import LinearDecoderMixin
from sparse_ops.encode import topafa_select

ARCHITECTURE = "topafa"


@dataclass
class TopAFASAEConfig(SAEConfig):
    """sae-lens config of a top-AFA SAE.

    afa_lambda: the weight of the AFA loss lambda_AFA the SAE was trained with (recorded for
    reference; inference does not use it).
    """

    afa_lambda: float = 1.0 / 32

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


class TopAFASAE(LinearDecoderMixin, SAE[TopAFASAEConfig]):
    """Inference top-AFA SAE: encode keeps a per-input number of latents (see module doc)."""

    @override
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., d_in] -> feature activations f [..., d_sae] (k(x) nonzero per input)."""
        sae_in = self.process_sae_in(x)
        hidden_pre = self.hook_sae_acts_pre(sae_in @ self.W_enc)
        acts = torch.relu(hidden_pre)
        flat = acts.reshape(-1, self.cfg.d_sae)
        ids = torch.arange(self.cfg.d_sae, device=flat.device).expand(flat.shape[0], -1)
        z_norm = sae_in.reshape(-1, sae_in.shape[-1]).float().norm(dim=-1)
        kept, _ = topafa_select(flat, ids, self.W_dec.norm(dim=-1).to(flat.dtype), z_norm)
        return self.hook_sae_acts_post(kept.reshape(acts.shape))

    @override
    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        raise NotImplementedError(
            "top-AFA's k(x) depends on the decoder norms; folding them would change which "
            "latents are kept (the trainer keeps them at 1 already)"
        )
