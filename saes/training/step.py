"""`SAETrainer`: one SAE, one optimizer, one step per global batch.

    trainer = SAETrainer(cfg.resolved(d_in), d_in, device, reducer, init_sae=None)
    trainer.initialize(first_batch)          # normalization scale, b_dec (fresh runs only)
    trainer.step(batch)                      # [batch_size, d_in] raw activations
    trainer.state_dict() / load_state_dict() # checkpoints
    trainer.export(metadata)                 # -> sae_lens.SAE with normalization folded in

Each step: normalize this rank's rows (`InputNormalizer`), compute the loss terms (the
architecture's `step`: sparse_code.py for TopK, BatchTopK and top-AFA; dense_code.py,
structured_code.py), backpropagate, sum gradients over ranks, project the decoder gradient, set
the scheduled learning rate, Adam, renormalize decoder rows, and update the dead-latent counters.
A non-finite loss stops training with TrainingDivergedError before the update, so the weights
(and checkpoints) stay good.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

import torch
from sae_lens import SAE

from saes import ARCHITECTURES
from saes.training.config import NORMALIZATIONS, ResolvedSAETrainConfig
from saes.training.dense_code import JumpReLUTrainable, ReLUTrainable
from saes.training.distributed import Reducer
from saes.training.losses import LossContext, global_sq_dev
from saes.training.sparse_code import (
    BatchTopKTrainable,
    TopAFATrainable,
    TopKTrainable,
    TrainableSAE,
)
from saes.training.structured_code import StructuredTrainable
from sparse_ops import SparseOpsInputError, resolve_backend
from workbench.errors import InvalidInputError, WorkbenchError

TRAINABLE: dict[str, type[TrainableSAE]] = {
    "topk": TopKTrainable,
    "batchtopk": BatchTopKTrainable,
    "topafa": TopAFATrainable,
    "structured": StructuredTrainable,
    "relu": ReLUTrainable,
    "jumprelu": JumpReLUTrainable,
}
"""The trainable class of each architecture named in `saes.ARCHITECTURES`."""
assert set(TRAINABLE) == set(ARCHITECTURES), "saes.ARCHITECTURES and TRAINABLE must agree"


class TrainingDivergedError(WorkbenchError):
    """The loss or the activations became NaN/inf; training stopped before the bad update."""


# ----------------------------------------------------------------------------------------------
# input normalization


TOKEN_EPS = 1e-5


def standardize_tokens(x: torch.Tensor) -> torch.Tensor:
    """[..., d] -> per-token standardized [..., d] (sae-lens "layer_norm": unbiased std, 1e-5)."""
    centered = x - x.mean(dim=-1, keepdim=True)
    return centered / (centered.std(dim=-1, keepdim=True) + TOKEN_EPS)


class InputNormalizer:
    """Applies the configured normalization (config.NORMALIZATIONS) to training batches,
    fitted on the first batch; and says how the saved sae-lens SAE stores it:

    none     x as it is
    token    per-token standardization (x - mean(x)) / (std(x) + 1e-5), as top-AFA trains; the
             SAE is saved with sae-lens normalize_activations="layer_norm", which applies the
             same formula at inference and undoes it on the reconstruction
    dataset  x * s with s = sqrt(d_in) / E||x|| estimated on the first batch, as sae-lens'
             "expected_average_only_in"; s is folded into the saved weights
             (W_enc * s, W_dec / s, b_dec / s), so the saved SAE takes raw activations
    """

    def __init__(self, mode: str):
        if mode not in NORMALIZATIONS:
            raise InvalidInputError(
                f"unknown normalization {mode!r}; use one of {', '.join(NORMALIZATIONS)}")
        self.mode = mode
        self.scale: float = 1.0  # dataset mode: set by fit

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
            return x * self.scale
        return x

    def denormalize(self, x_raw: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """A reconstruction x_hat of normalize(x_raw) back in the space of x_raw [..., d]."""
        if self.mode == "token":
            centered = x_raw - x_raw.mean(dim=-1, keepdim=True)
            return x_hat * centered.std(dim=-1, keepdim=True) + x_raw.mean(dim=-1, keepdim=True)
        if self.mode == "dataset":
            return x_hat / self.scale
        return x_hat

    @property
    def sae_lens_mode(self) -> str:
        """The sae-lens normalize_activations value of the saved SAE (after folding)."""
        return "layer_norm" if self.mode == "token" else "none"

    def state_dict(self) -> dict:
        return {"mode": self.mode, "scale": self.scale}

    def load_state_dict(self, state: dict) -> None:
        self.mode = state["mode"]
        self.scale = 1.0 if state["scale"] is None else float(state["scale"])


# ----------------------------------------------------------------------------------------------
# the trainer of one SAE


CHECKPOINT_FORMAT = 1


class SAETrainer:
    """Trains one SAE (see module doc). `cfg` is resolved (`cfg.resolved(d_in)`); `init_sae`:
    start from this sae-lens SAE (config `init_from`) instead of a random init."""

    def __init__(self, cfg: ResolvedSAETrainConfig, d_in: int, device: torch.device,
                 reducer: Reducer, init_sae: SAE | None = None):
        self.cfg = cfg
        self.d_in = d_in
        self.device = torch.device(device)
        self.reducer = reducer
        self.init_sae = init_sae
        try:
            resolve_backend(cfg.kernels, self.device)
        except SparseOpsInputError as exc:
            raise InvalidInputError(f"{cfg.name}: --kernels {cfg.kernels}: {exc}") from exc
        self.model = TRAINABLE[cfg.arch](cfg, d_in, cfg.kernels).to(self.device).train()
        self.normalizer = InputNormalizer(cfg.normalize)
        self.params = list(self.model.parameters())
        self.optimizer = torch.optim.Adam(
            self.params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), fused=True)
        units = self.model.n_units
        self.steps_done = 0
        self.seconds = 0.0
        self.tokens_since_fired = torch.zeros(units, dtype=torch.int64, device=self.device)
        self.window_counts = torch.zeros(units, dtype=torch.int64, device=self.device)
        self.window_tokens = 0
        self.last_window: tuple[torch.Tensor, int] | None = None
        self.recent: deque[dict[str, float]] = deque(maxlen=max(1, cfg.total_steps // 20))
        self.latest: dict[str, float] = {}

    # -- schedule ------------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return self.cfg.total_steps

    @property
    def done(self) -> bool:
        return self.steps_done >= self.total_steps

    def lr_at(self, step: int) -> float:
        """Linear warm-up, constant, then linear decay to 0 over the last decay_fraction."""
        cfg = self.cfg
        warmup = max(1, cfg.warmup_tokens // cfg.batch_size)
        decay = round(cfg.decay_fraction * self.total_steps)
        factor = min(1.0, (step + 1) / warmup)
        if decay > 0:
            factor = min(factor, (self.total_steps - step) / decay)
        return cfg.lr * max(factor, 0.0)

    # -- training ------------------------------------------------------------------------------
    @torch.no_grad()
    def initialize(self, x_global: torch.Tensor) -> None:
        """Data-dependent init from the first global batch (identical on every rank)."""
        x = x_global.to(self.device, torch.float32)
        self.normalizer.fit(x)
        if self.init_sae is not None:
            self.model.load_sae_lens(self.init_sae, self.normalizer.scale)
        else:
            self.model.init_from_data(self.normalizer(x))
        self.reducer.broadcast_(self.params + list(self.model.buffers()))

    def dead_mask(self) -> torch.Tensor:
        """bool [units]: silent for at least the dead window."""
        return self.tokens_since_fired >= self.cfg.dead_window_tokens

    def step(self, x_global: torch.Tensor) -> dict[str, float]:
        """One optimizer step on a global batch [batch_size, d_in]; returns its metrics."""
        start = time.perf_counter()
        n_global = x_global.shape[0]
        x = self.normalizer(self.reducer.shard(x_global.to(self.device, torch.float32)))
        ctx = LossContext(global_sq_dev(x, n_global, self.reducer), n_global, self.dead_mask(),
                          self.reducer)
        self.optimizer.zero_grad(set_to_none=True)
        result = self.model.step(x, ctx)
        if self.reducer.any(not bool(torch.isfinite(result.loss)), self.device):
            raise TrainingDivergedError(
                f"SAE {self.cfg.name!r}: the loss became NaN/inf at step {self.steps_done} "
                f"(token {self.steps_done * self.cfg.batch_size}); training stopped before the bad "
                f"update and the last good checkpoint is kept. Lower the learning rate "
                f"(--lr, now {self.cfg.lr:.3g}) and rerun to resume, or --restart"
            )
        result.loss.backward()
        self.reducer.sum_grads_(self.params)
        self.model.remove_parallel_grad()
        lr = self.lr_at(self.steps_done)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.model.after_optimizer_step()
        metrics = self._track(result, ctx, n_global)
        metrics["lr"] = lr
        self.steps_done += 1
        self.seconds += time.perf_counter() - start
        return metrics

    @torch.no_grad()
    def _track(self, result, ctx: LossContext, n_global: int) -> dict[str, float]:
        fired = self.reducer.sum(result.fired.to(torch.int64))
        names = sorted(result.terms)
        totals = self.reducer.sum(torch.stack(
            [result.sse.float(), result.active.float()] + [result.terms[k].float() for k in names]))
        self.tokens_since_fired += n_global
        self.tokens_since_fired[fired > 0] = 0
        self.window_counts += fired
        self.window_tokens += n_global
        if self.window_tokens >= self.cfg.dead_window_tokens:
            self.last_window = (self.window_counts.clone(), self.window_tokens)
            self.window_counts.zero_()
            self.window_tokens = 0
        values = totals.tolist()
        metrics = {
            "fvu": values[0] / float(ctx.variance),
            "l0": values[1] / n_global,
            "dead_fraction": float(self.dead_mask().float().mean()),
            **{f"loss_{k}": v for k, v in zip(names, values[2:])},
            **result.stats,
        }
        self.recent.append(metrics)
        self.latest = metrics
        return metrics

    # -- results -------------------------------------------------------------------------------
    def firing_frequency(self) -> torch.Tensor:
        """Per-unit firing frequency over the last full dead window (or what there is) [units]."""
        counts, tokens = self.window_counts, self.window_tokens
        if self.last_window is not None and tokens < self.cfg.dead_window_tokens // 2:
            counts, tokens = self.last_window[0] + counts, self.last_window[1] + tokens
        return counts.double().cpu() / max(tokens, 1)

    def final_metrics(self) -> dict[str, float]:
        """Training metrics averaged over the last 5% of steps, plus totals. A loss term absent
        from a step (AuxK with no dead latents) counts as 0 there."""
        keys = sorted({k for m in self.recent for k in m})
        avg = {}
        for k in keys:
            values = [m[k] for m in self.recent if k in m]
            avg[k] = sum(values) / (len(self.recent) if k.startswith("loss_") else len(values))
        tokens = self.steps_done * self.cfg.batch_size
        avg.update({
            "dead_fraction": float(self.dead_mask().float().mean()),
            "tokens": tokens,
            "steps": self.steps_done,
            "train_seconds": round(self.seconds, 3),
            "tokens_per_s": tokens / self.seconds if self.seconds > 0 else math.nan,
        })
        avg.pop("lr", None)
        return {"train_" + k if k in ("fvu", "l0") else k: v for k, v in avg.items()}

    @torch.no_grad()
    def export(self, metadata: dict[str, Any], last_batch: torch.Tensor | None = None) -> SAE:
        """The trained SAE as a sae-lens object taking raw activations (scale folded in).

        last_batch: a raw training batch [n, d_in] for final calibration (BatchTopK threshold).
        """
        if last_batch is not None:
            self.model.finalize(self.normalizer(last_batch.to(self.device, torch.float32)))
        sae = self.model.export(self.normalizer.sae_lens_mode, metadata)
        if self.normalizer.mode == "dataset":
            sae.fold_activation_norm_scaling_factor(self.normalizer.scale)
        return sae

    # -- checkpoints ---------------------------------------------------------------------------
    def params_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.params)

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.training_identity(),
            "steps_done": self.steps_done,
            "seconds": self.seconds,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "normalizer": self.normalizer.state_dict(),
            "tokens_since_fired": self.tokens_since_fired.cpu(),
            "window_counts": self.window_counts.cpu(),
            "window_tokens": self.window_tokens,
            "last_window": (None if self.last_window is None
                            else [self.last_window[0].cpu(), self.last_window[1]]),
            "recent": list(self.recent),
        }

    def load_state_dict(self, state: dict[str, Any], where: str) -> None:
        if state.get("format") != CHECKPOINT_FORMAT or state.get("config") != self.cfg.training_identity():
            raise InvalidInputError(
                f"the checkpoint {where} was made with a different configuration of "
                f"{self.cfg.name!r}; rerun with the same options to resume, or pass --restart to "
                "start over"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.normalizer.load_state_dict(state["normalizer"])
        self.steps_done = int(state["steps_done"])
        self.seconds = float(state["seconds"])
        self.tokens_since_fired = state["tokens_since_fired"].to(self.device)
        self.window_counts = state["window_counts"].to(self.device)
        self.window_tokens = int(state["window_tokens"])
        last = state["last_window"]
        self.last_window = None if last is None else (last[0].to(self.device), int(last[1]))
        self.recent.extend(state["recent"])
        self.latest = self.recent[-1] if self.recent else {}
