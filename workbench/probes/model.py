"""Linear probes: an affine map from activations [N, d] to class scores [N, C].

Two ways to fit it:
- "linear": ridge regression of one-hot targets (one-vs-rest least squares, closed form);
- "logistic": multinomial logistic regression (softmax cross-entropy + L2 weight decay),
  full-batch L-BFGS with a strong-Wolfe line search, or mini-batch Adam for large N.
Both are fitted on standardized features and the standardization is folded into the weights,
so a saved probe is just `scores = x @ weight.T + bias` on raw activations.

    probe = fit_probe(features, labels, ProbeConfig(kind="logistic"))
    probe.predict(x)            # class names [N]
    probe.evaluate(x, labels)   # accuracy, macro F1, per-class precision/recall/F1
    probe.save(folder); Probe.load(folder)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from workbench.errors import InvalidInputError, NotFoundError
from workbench.lab import read_json, write_json
from workbench.probes.metrics import classification_metrics

KINDS = ("logistic", "linear")
WEIGHTS_FILE = "probe.safetensors"
META_FILE = "probe.json"


@dataclass
class ProbeConfig:
    """How to fit a probe. weight_decay: L2 penalty per example (ridge lambda / N for "linear",
    the coefficient of ||W||^2 / 2 added to the mean cross-entropy for "logistic")."""

    kind: str = "logistic"
    weight_decay: float = 1e-4
    optimizer: str = "lbfgs"      # logistic only: "lbfgs" (full batch) or "adam" (mini-batch)
    max_iter: int = 100           # L-BFGS iterations, or Adam epochs
    lr: float = 1e-2              # Adam learning rate
    batch_size: int = 4096        # Adam batch size
    seed: int = 0

    def check(self) -> None:
        if self.kind not in KINDS:
            raise InvalidInputError(f"unknown probe kind {self.kind!r}; use one of {list(KINDS)}")
        if self.optimizer not in ("lbfgs", "adam"):
            raise InvalidInputError(f"unknown optimizer {self.optimizer!r}; use 'lbfgs' or 'adam'")
        if self.weight_decay < 0:
            raise InvalidInputError(f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclass
class Probe:
    """weight [C, d] float32, bias [C] float32, classes [C] (str or int labels, sorted)."""

    weight: torch.Tensor
    bias: torch.Tensor
    classes: list[Any]
    kind: str
    info: dict[str, Any] = field(default_factory=dict)      # model, hook, config, ...
    metrics: dict[str, Any] = field(default_factory=dict)   # train / validation metrics

    @property
    def d_in(self) -> int:
        return self.weight.shape[1]

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """features [N, d] -> class scores [N, C] float32."""
        x = _as_features(features, "features")
        if x.shape[1] != self.d_in:
            raise InvalidInputError(
                f"the probe takes {self.d_in}-wide activations, got width {x.shape[1]}; use "
                f"activations of the hook it was trained on ({self.info.get('hook', '?')})"
            )
        return x @ self.weight.T.to(x.device) + self.bias.to(x.device)

    def predict_index(self, features: torch.Tensor) -> torch.Tensor:
        """features [N, d] -> predicted class indices [N] int64."""
        return self.scores(features).argmax(dim=1)

    def predict(self, features: torch.Tensor) -> np.ndarray:
        """features [N, d] -> predicted class labels [N]."""
        return np.asarray(self.classes, dtype=object)[self.predict_index(features).cpu().numpy()]

    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        """features [N, d] -> class probabilities [N, C] (logistic probes only)."""
        if self.kind != "logistic":
            raise InvalidInputError(
                "a linear (least-squares) probe gives scores, not probabilities; use "
                ".scores() or train a logistic probe"
            )
        return torch.softmax(self.scores(features), dim=1)

    def evaluate(self, features: torch.Tensor, labels: Sequence[Any]) -> dict[str, Any]:
        """Accuracy, macro F1 and per-class metrics of the probe on (features [N, d], labels [N]).

        Labels the probe never saw count as errors, under their own class name."""
        labels = as_label_array(labels, len(features))
        extra = sorted(set(labels.tolist()) - set(self.classes), key=str)
        classes = list(self.classes) + extra
        lookup = {c: i for i, c in enumerate(classes)}
        y_true = torch.tensor([lookup[v] for v in labels.tolist()], dtype=torch.int64)
        return classification_metrics(y_true, self.predict_index(features).cpu(), classes)

    # -- files ---------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """Write probe.safetensors (weight, bias) and probe.json (classes, kind, info, metrics)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.weight.contiguous().cpu(), "bias": self.bias.contiguous().cpu()},
                  str(folder / WEIGHTS_FILE))
        write_json(folder / META_FILE, {"kind": self.kind, "classes": self.classes,
                                        "d_in": self.d_in, "info": self.info,
                                        "metrics": self.metrics})

    @classmethod
    def load(cls, folder: str | Path) -> Probe:
        folder = Path(folder)
        meta = read_json(folder / META_FILE, "probe description")
        file = folder / WEIGHTS_FILE
        if not file.exists():
            raise NotFoundError(f"probe weights are missing: {file}")
        try:
            tensors = load_file(str(file))
        except Exception as exc:  # safetensors raises its own error types
            raise InvalidInputError(f"probe weights {file} are unreadable ({exc})") from exc
        probe = cls(tensors["weight"], tensors["bias"], list(meta["classes"]), meta["kind"],
                    dict(meta.get("info", {})), dict(meta.get("metrics", {})))
        if probe.weight.shape != (len(probe.classes), int(meta["d_in"])):
            raise InvalidInputError(f"probe weights {file} do not match {folder / META_FILE}")
        return probe


def fit_probe(features: torch.Tensor, labels: Sequence[Any], config: ProbeConfig | None = None,
              device=None) -> Probe:
    """Fit a probe on features [N, d] and labels [N] (str or int; at least two classes)."""
    config = config or ProbeConfig()
    config.check()
    x = _as_features(features, "features")
    labels = as_label_array(labels, len(x))
    classes = sorted(set(labels.tolist()), key=lambda v: (str(type(v)), v))
    if len(classes) < 2:
        raise InvalidInputError(
            f"a probe needs at least two classes, the labels only have {classes}")
    lookup = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([lookup[v] for v in labels.tolist()], dtype=torch.int64)
    if device is not None:
        x, y = x.to(device), y.to(device)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    if config.kind == "linear":
        w, b = _fit_ridge(z, y, len(classes), config.weight_decay)
    else:
        w, b = _fit_logistic(z, y, len(classes), config)
    weight = (w / std[None, :]).float().cpu()           # [C, d] on raw activations
    bias = (b - (w * (mean / std)[None, :]).sum(1)).float().cpu()
    return Probe(weight, bias, classes, config.kind, {"config": asdict(config)})


def _fit_ridge(z: torch.Tensor, y: torch.Tensor, n_classes: int, weight_decay: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One-vs-rest least squares on centred features z [N, d]: W [C, d], b [C] (float64)."""
    z64 = z.double()
    targets = torch.nn.functional.one_hot(y, n_classes).double()
    gram = z64.T @ z64 + weight_decay * len(z) * torch.eye(z.shape[1], dtype=z64.dtype,
                                                            device=z.device)
    w = torch.linalg.solve(gram, z64.T @ (targets - targets.mean(0)))
    return w.T, targets.mean(0)


def _fit_logistic(z: torch.Tensor, y: torch.Tensor, n_classes: int, config: ProbeConfig
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on standardized z [N, d]: W [C, d], b [C]."""
    generator = torch.Generator().manual_seed(config.seed)
    w = torch.zeros(n_classes, z.shape[1], device=z.device, requires_grad=True)
    b = torch.zeros(n_classes, device=z.device, requires_grad=True)

    def loss_of(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        ce = torch.nn.functional.cross_entropy(xb @ w.T + b, yb)
        return ce + 0.5 * config.weight_decay * (w * w).sum()

    if config.optimizer == "lbfgs":
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=config.max_iter,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-6)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = loss_of(z, y)
            loss.backward()
            return loss

        opt.step(closure)
    else:
        opt = torch.optim.Adam([w, b], lr=config.lr)
        for _ in range(config.max_iter):
            order = torch.randperm(len(z), generator=generator).to(z.device)
            for start in range(0, len(z), config.batch_size):
                idx = order[start:start + config.batch_size]
                opt.zero_grad()
                loss_of(z[idx], y[idx]).backward()
                opt.step()
    if not torch.isfinite(w).all():
        raise InvalidInputError("probe training diverged (non-finite weights); raise "
                                "weight_decay or use the 'linear' kind")
    return w.detach(), b.detach()


def _as_features(features, what: str) -> torch.Tensor:
    x = torch.as_tensor(features)
    if x.dim() != 2:
        raise InvalidInputError(f"{what} must be a [N, d] matrix, got shape {tuple(x.shape)}")
    x = x.float()
    if not torch.isfinite(x).all():
        raise InvalidInputError(f"{what} contain NaN or inf values")
    return x


def as_label_array(labels, n: int) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.cpu().numpy()
    arr = np.asarray(labels, dtype=object).reshape(-1)
    if len(arr) != n:
        raise InvalidInputError(f"got {len(arr)} labels for {n} feature rows")
    if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in arr):
        raise InvalidInputError("some labels are missing (None/NaN); drop those rows first")
    return np.array([v.item() if hasattr(v, "item") else v for v in arr], dtype=object)
