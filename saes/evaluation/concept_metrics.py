"""Small building blocks of the concept evaluation: AUROC of every latent at once, F1 at a
threshold, column-wise Pearson correlation, and many tiny softmax probes fitted in one batch."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata


def auroc_per_latent(f: torch.Tensor, y: torch.Tensor, n_classes: int, chunk: int = 256
                     ) -> torch.Tensor:
    """AUROC of each latent's activation as a score for each class (one vs rest).

    f [N, h] codes, y [N] class indices -> [C, h]. Ties count one half (average ranks, i.e. the
    Mann-Whitney U statistic), so a latent that never fires scores exactly 0.5.
    """
    onehot = torch.nn.functional.one_hot(y, n_classes).double()  # [N, C]
    n_pos = onehot.sum(0)  # [C]
    n_neg = len(y) - n_pos
    out = []
    for start in range(0, f.shape[1], chunk):
        ranks = torch.from_numpy(rankdata(f[:, start:start + chunk].numpy(), axis=0))  # [N, c]
        rank_sum = onehot.T @ ranks  # [C, c]
        u = rank_sum - (n_pos * (n_pos + 1) / 2)[:, None]
        out.append(u / (n_pos * n_neg).clamp_min(1)[:, None])
    return torch.cat(out, dim=1).float()


def f1_score(predicted: torch.Tensor, positive: torch.Tensor) -> float:
    """F1 of boolean predictions [N] against boolean truth [N]."""
    tp = float((predicted & positive).sum())
    denom = float(predicted.sum() + positive.sum())
    return 2 * tp / denom if denom else 0.0


def best_f1_threshold(scores: torch.Tensor, positive: torch.Tensor, n_candidates: int = 64
                      ) -> tuple[float, float]:
    """(threshold, F1) of the rule `score > threshold` with the best F1 on this data; candidates
    are 0 (fires at all) and quantiles of the positive scores."""
    candidates = [0.0]
    firing = scores[scores > 0]
    if len(firing):
        qs = torch.linspace(0, 1, n_candidates + 1)[:-1]
        candidates += torch.quantile(firing.float(), qs).tolist()
    best = max(((f1_score(scores > t, positive), t) for t in candidates), key=lambda p: p[0])
    return best[1], best[0]


def pearson_columns(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of matching columns: a, b [N, k] -> [k] (0 for constant columns)."""
    a = a.double() - a.double().mean(0)
    b = b.double() - b.double().mean(0)
    denom = (a.norm(dim=0) * b.norm(dim=0))
    return torch.where(denom > 0, (a * b).sum(0) / denom.clamp_min(1e-30),
                       torch.zeros_like(denom)).float()


def fit_batched_softmax(x: torch.Tensor, y: torch.Tensor, n_classes: int,
                        weight_decay: float = 1e-4, max_iter: int = 100) -> torch.Tensor:
    """Fit G independent multinomial logistic probes at once and return their accuracy on the
    data they were fit on.

    x [G, N, D] (one small feature set per group), y [N] -> train accuracy [G]. Features are
    standardized per group; full-batch L-BFGS on the summed losses (the problems are
    independent, so the sum is minimized by minimizing each).
    """
    G, N, D = x.shape
    mean, std = x.mean(1, keepdim=True), x.std(1, keepdim=True).clamp_min(1e-6)
    z = (x - mean) / std
    w = torch.zeros(G, D, n_classes, requires_grad=True)
    b = torch.zeros(G, 1, n_classes, requires_grad=True)
    target = y.expand(G, N).reshape(-1)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = torch.bmm(z, w) + b
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, n_classes), target) * G
        loss = loss + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        predicted = (torch.bmm(z, w) + b).argmax(-1)
    return (predicted == y[None, :]).float().mean(1)


def match_values_to_classes(corr: np.ndarray) -> list[int]:
    """One-to-one assignment of group values (columns) to classes (rows) maximizing the summed
    correlation: corr [C, m] -> value index per class (-1 when there are fewer values)."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-np.nan_to_num(corr, nan=-1.0))
    out = [-1] * corr.shape[0]
    for r, c in zip(rows, cols):
        out[int(r)] = int(c)
    return out
