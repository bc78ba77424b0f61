"""Weight-based feature properties: logit effects and nearest decoder directions.

Logit effects follow sae-lens / Neuronpedia: W_dec @ W_U through the model's unembedding,
ignoring the final layer norm. Nearest features: cosine similarity of decoder rows.
Both are computed in row chunks so memory stays at chunk x vocab (or chunk x d_sae).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def logit_effects(W_dec: torch.Tensor, W_U: torch.Tensor, k: int = 10, chunk: int = 512
                  ) -> dict[str, torch.Tensor]:
    """Top-k positive and negative logit effects per feature.

    W_dec [h, d], W_U [d, V] -> {"top_values", "top_ids", "bottom_values", "bottom_ids"}, each
    [h, k] (bottom sorted most negative first).
    """
    k = min(k, W_U.shape[1])
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in
                                           ("top_values", "top_ids", "bottom_values", "bottom_ids")}
    W_U = W_U.float()
    for rows in W_dec.float().split(chunk):
        effects = rows.to(W_U.device) @ W_U
        top = effects.topk(k, dim=-1)
        bottom = effects.topk(k, dim=-1, largest=False)
        parts["top_values"].append(top.values.cpu())
        parts["top_ids"].append(top.indices.cpu())
        parts["bottom_values"].append(bottom.values.cpu())
        parts["bottom_ids"].append(bottom.indices.cpu())
    return {name: torch.cat(p) for name, p in parts.items()}


@torch.no_grad()
def decoder_neighbors(W_dec: torch.Tensor, k: int = 5, chunk: int = 1024
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most similar other features by decoder cosine: W_dec [h, d] -> (ids [h, k],
    cosines [h, k])."""
    unit = F.normalize(W_dec.float(), dim=-1)
    h = len(unit)
    k = min(k, h - 1)
    ids, cos = [], []
    for start in range(0, h, chunk):
        sims = unit[start:start + chunk] @ unit.T
        rows = torch.arange(start, min(start + chunk, h))
        sims[torch.arange(len(rows)), rows] = -float("inf")  # not its own neighbour
        top = sims.topk(k, dim=-1)
        ids.append(top.indices.cpu())
        cos.append(top.values.cpu())
    return torch.cat(ids), torch.cat(cos)
