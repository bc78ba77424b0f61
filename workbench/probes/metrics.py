"""Classification metrics for probes: accuracy, macro F1 and per-class precision/recall/F1."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def classification_metrics(y_true: torch.Tensor, y_pred: torch.Tensor,
                           classes: Sequence[Any]) -> dict[str, Any]:
    """Metrics of predicted class indices against true ones.

    y_true, y_pred: [N] int64 indices into `classes`. Returns accuracy, macro_f1 (mean F1 over
    the classes that occur in y_true or y_pred), n, per_class[name] = {precision, recall, f1,
    accuracy, support} where a class's accuracy is the fraction of its examples predicted
    correctly (= recall, the usual "per-language accuracy"), and confusion [C][C] (rows: true).
    """
    n_classes = len(classes)
    y_true = torch.as_tensor(y_true, dtype=torch.int64).flatten()
    y_pred = torch.as_tensor(y_pred, dtype=torch.int64).flatten()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {tuple(y_true.shape)} and y_pred {tuple(y_pred.shape)} differ")
    confusion = torch.bincount(y_true * n_classes + y_pred, minlength=n_classes ** 2)
    confusion = confusion.reshape(n_classes, n_classes).double()
    true_pos = confusion.diag()
    support = confusion.sum(1)
    predicted = confusion.sum(0)
    precision = _safe_div(true_pos, predicted)
    recall = _safe_div(true_pos, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    present = (support + predicted) > 0
    n = int(y_true.numel())
    return {
        "n": n,
        "accuracy": float(true_pos.sum() / n) if n else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            str(name): {
                "precision": float(precision[i]), "recall": float(recall[i]),
                "f1": float(f1[i]), "accuracy": float(recall[i]), "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion": confusion.long().tolist(),
        "classes": [str(c) for c in classes],
    }


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp(min=1e-12), torch.zeros_like(num))
