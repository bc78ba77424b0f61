"""Settings of a language-model training run (no torch import, so the CLI can show them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from workbench.errors import InvalidInputError
from workbench.models.schedules import checkpoint_steps

PRECISIONS = ("auto", "fp32", "bf16")
PACKINGS = ("stream", "document")


@dataclass
class LMTrainConfig:
    """Settings of one language-model training run.

    steps: optimizer steps; batch_size: sequences of n_ctx tokens per step.
    lr: peak learning rate, reached after `warmup_steps` of linear warm-up (at most half of
        `steps`), then cosine decay to lr * min_lr_ratio at the last step.
    checkpoints: steps whose weights are kept in the artifact (see
        `workbench.models.schedules.checkpoint_steps`: "geometric", "every:N", "1,2,5", a list).
    eval_every / eval_sequences: validation loss on `eval_sequences` evenly spread validation
        sequences every `eval_every` steps; the final validation loss uses up to
        `final_eval_sequences`.
    save_every: steps between resumable states in the work folder.
    precision: "fp32"; "bf16" (autocast: float32 weights and optimizer, bfloat16 matmuls); or
        "auto": bf16 where the hardware computes it natively (CPUs with AVX512-BF16/AMX, GPUs
        with bf16 support), else fp32. On a 2-core AMX CPU bf16 trains the tiny preset about
        1.4x faster at the same loss.
    unembed_bias: train the unembedding bias b_U. Off by default: b_U is fixed at zero, as in
        GPT-2 and Llama heads (which have none), so the model exports to their formats.
    packing: "stream" (documents concatenated and cut into rows of n_ctx) or "document" (one
        document per row from its first token, truncated and padded; padding is not a target).
    """

    steps: int = 1000
    batch_size: int = 16
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    checkpoints: str | list[int] | None = None
    eval_every: int = 200
    eval_sequences: int = 128
    final_eval_sequences: int = 2048
    save_every: int = 250
    log_every: int = 10
    precision: str = "auto"
    unembed_bias: bool = False
    packing: str = "stream"

    @property
    def effective_warmup(self) -> int:
        return min(self.warmup_steps, self.steps // 2)

    def validate(self) -> None:
        for label in ("steps", "batch_size", "eval_every", "eval_sequences",
                      "final_eval_sequences", "save_every", "log_every"):
            if int(getattr(self, label)) < 1:
                raise InvalidInputError(f"{label} must be >= 1, got {getattr(self, label)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InvalidInputError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise InvalidInputError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0:
            raise InvalidInputError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.packing not in PACKINGS:
            raise InvalidInputError(f"packing must be one of {PACKINGS}, got {self.packing!r}")
        if self.precision not in PRECISIONS:
            raise InvalidInputError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        checkpoint_steps(self.checkpoints, self.steps)


# Settings that do not change the weights: they may differ when a run is resumed.
NON_WEIGHT_FIELDS = ("checkpoints", "eval_every", "eval_sequences", "final_eval_sequences",
                     "save_every", "log_every")
