"""`SAETrainConfig`: everything that defines one SAE training run.

One config per SAE; `train_saes(lab, configs, source)` trains several of them from one pass over
the activations (they must share `batch_size` and `seed`, which fix the data order).

Defaults follow the TopK SAE literature (Gao et al. 2024; sparsify): AuxK with k_aux = d_in / 2
and alpha_aux = 1/32, unit-norm decoder rows, W_dec = W_enc^T init, geometric-median b_dec, Adam
with a linear warm-up and a linear decay over the last 20% of training.

`SAETrainConfig` is what a user writes (None = "pick the default"); `cfg.resolved(d_in)` is a
`ResolvedSAETrainConfig` in which every defaulted field holds its value (never None).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from saes import ARCHITECTURES
from saes.training.sparse_code import B_DEC_INITS
from sparse_ops.dispatch import BACKENDS
from workbench.errors import InvalidInputError
from workbench.lab import validate_name

NORMALIZATIONS: dict[str, str] = {
    "none": "activations as they are",
    "token": "per-token standardization (saved as sae-lens layer_norm)",
    "dataset": "one scale so the mean norm is sqrt(d_in), folded into the saved weights",
}
"""Input normalization modes (applied by step.InputNormalizer)."""

# Default sparsity penalty per arch (the terms are defined in losses.py).
DEFAULT_SPARSITY = {"relu": 0.02, "jumprelu": 0.002}
DEFAULT_LR_AT_16K_LATENTS = 1e-3
"""Adam lr of a 16384-latent SAE; others get it times sqrt(16384 / latents) (see SAETrainConfig)."""

# sae-lens architectures a trainable architecture can start from (`init_from`).
INIT_FROM_ARCHS = {
    "topk": ("topk",), "batchtopk": ("jumprelu", "topk"), "topafa": ("topafa",),
    "structured": ("structured",), "relu": ("standard",), "jumprelu": ("jumprelu",),
}

# Fields that do not change the trained weights: a checkpoint made under other values of these
# can still be resumed.
RESUME_INDIFFERENT = ("name", "checkpoint_every_tokens", "device", "kernels")


@dataclass
class SAETrainConfig:
    """One SAE training run.

    Architecture:
        arch: topk | batchtopk | topafa | structured | relu | jumprelu.
        latents: dictionary size d_sae (structured: groups * group_size, filled in).
        k: active latents per token (topk) or on average over the batch (batchtopk).
        afa_lambda: top-AFA weight lambda_AFA of the norm-matching loss.
        groups, group_size, k_groups: structured SAE (G groups of m values, k_G kept).
        sparsity_coefficient: L1 weight (relu) or L0 weight (jumprelu); None = per-arch default.
        jumprelu_bandwidth, jumprelu_init_threshold: JumpReLU straight-through estimator.
        batchtopk_threshold_ema: EMA rate of the BatchTopK inference threshold (None:
            max(0.01, 20 / steps), so it reflects about the last 5% of training, when the
            weights have settled; a slower EMA over a short run remembers early thresholds).
    Data and optimization:
        tokens: training tokens; batch_size: tokens per step (the global batch under DDP).
        lr: Adam learning rate (None: 1e-3 * sqrt(16384 / latents): sparsify's 1/sqrt(latents)
            rule with a 5x larger constant, because our inputs are normalized and our decoder
            rows unit-norm; sae-lens reaches a similar effective rate through its 0.1-norm
            decoder init. Measured on a trained 4 x 256 LM, TopK 4096/k=32, 2M tokens: NMSE
            0.0125 at 4e-4, 0.0050 at 2e-3, 0.0044 at 3e-3 (with more dead latents)).
        warmup_tokens: linear lr warm-up (None: 5% of tokens); decay_fraction: final share of
        training with a linear decay to 0.
        normalize: none | token (per-token standardization, saved as sae-lens "layer_norm")
            | dataset (scale so the mean norm is sqrt(d_in), folded into the saved weights);
            None = token for topafa, dataset otherwise.
        b_dec_init: geometric_median | mean | zeros (from the first batch).
        k_aux (None: d_in // 2), aux_alpha, dead_window_tokens (None: tokens / 10 clamped to
        [5 batches, 10M]): AuxK revival of latents silent for the window.
        seed: weight init and data order.
        init_from: start from this SAE instead of a random init (lab SAE name or sae-lens
            folder, of a matching architecture; its size sets `latents`).
        checkpoint_every_tokens: None = every 10% of training.
        device: None = CUDA when present, else CPU; kernels: the sparse_ops backend of the
        sparse encode/decode (sparse_ops.dispatch.BACKENDS; auto = Triton on GPUs, the native
        CPU kernels on CPU where they build, else the PyTorch reference).
    """

    name: str
    arch: str = "topk"
    latents: int = 4096
    k: int | None = None
    afa_lambda: float = 1.0 / 32
    groups: int | None = None
    group_size: int | None = None
    k_groups: int | None = None
    sparsity_coefficient: float | None = None
    jumprelu_bandwidth: float = 0.05
    jumprelu_init_threshold: float = 0.5
    batchtopk_threshold_ema: float | None = None
    tokens: int = 2_000_000
    batch_size: int = 4096
    lr: float | None = None
    warmup_tokens: int | None = None
    decay_fraction: float = 0.2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    normalize: str | None = None
    b_dec_init: str = "geometric_median"
    k_aux: int | None = None
    aux_alpha: float = 1.0 / 32
    dead_window_tokens: int | None = None
    seed: int = 0
    init_from: str | None = None
    checkpoint_every_tokens: int | None = None
    device: str | None = None
    kernels: str = "auto"

    # -- derived values ------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return max(1, self.tokens // self.batch_size)

    def resolved(self, d_in: int) -> ResolvedSAETrainConfig:
        """A copy with every None default filled in for inputs of width `d_in` (validated)."""
        self.validate(d_in)
        cfg = ResolvedSAETrainConfig(**asdict(self))
        if cfg.arch == "structured":
            cfg.latents = cfg.groups * cfg.group_size
        if cfg.lr is None:
            cfg.lr = DEFAULT_LR_AT_16K_LATENTS * math.sqrt(16384 / cfg.latents)
        if cfg.warmup_tokens is None:
            cfg.warmup_tokens = cfg.tokens // 20
        if cfg.normalize is None:
            cfg.normalize = "token" if cfg.arch == "topafa" else "dataset"
        if cfg.sparsity_coefficient is None:
            cfg.sparsity_coefficient = DEFAULT_SPARSITY.get(cfg.arch, 0.0)
        for name in ("k", "groups", "group_size", "k_groups"):  # 0 = not used by this arch
            if getattr(cfg, name) is None:
                setattr(cfg, name, 0)
        if cfg.batchtopk_threshold_ema is None:
            cfg.batchtopk_threshold_ema = min(1.0, max(0.01, 20 / cfg.total_steps))
        if cfg.k_aux is None:
            cfg.k_aux = max(1, d_in // 2)
        if cfg.dead_window_tokens is None:
            cfg.dead_window_tokens = min(max(cfg.tokens // 10, 5 * cfg.batch_size), 10_000_000)
        if cfg.checkpoint_every_tokens is None:
            cfg.checkpoint_every_tokens = max(cfg.batch_size, cfg.tokens // 10)
        return cfg

    def validate(self, d_in: int | None = None) -> None:
        """Raise InvalidInputError naming the first bad field and how to fix it."""
        validate_name(self.name)
        if self.arch not in ARCHITECTURES:
            raise InvalidInputError(f"unknown SAE architecture {self.arch!r}; use one of "
                                    f"{', '.join(ARCHITECTURES)}")
        _positive(self, "tokens", "batch_size")
        if self.tokens < self.batch_size:
            raise InvalidInputError(
                f"{self.name}: --tokens ({self.tokens}) is less than one batch "
                f"({self.batch_size}); train on more tokens or use a smaller --batch-size"
            )
        if self.arch == "structured":
            self._validate_structured()
        else:
            _positive(self, "latents")
        if self.arch in ("topk", "batchtopk"):
            if self.k is None:
                raise InvalidInputError(f"{self.name}: arch {self.arch} needs --k (active latents)")
            _positive(self, "k")
            if self.k > self.latents:
                raise InvalidInputError(
                    f"{self.name}: k={self.k} is larger than the number of latents "
                    f"({self.latents}); use k <= latents"
                )
        if self.normalize is not None and self.normalize not in NORMALIZATIONS:
            raise InvalidInputError(
                f"{self.name}: unknown normalization {self.normalize!r}; use one of "
                f"{', '.join(NORMALIZATIONS)}"
            )
        if self.kernels not in BACKENDS:
            raise InvalidInputError(
                f"{self.name}: unknown kernels {self.kernels!r}; use one of {', '.join(BACKENDS)}")
        if self.b_dec_init not in B_DEC_INITS:
            raise InvalidInputError(
                f"{self.name}: unknown b_dec init {self.b_dec_init!r}; use one of "
                f"{', '.join(B_DEC_INITS)}"
            )
        if self.lr is not None and not self.lr > 0:
            raise InvalidInputError(f"{self.name}: lr must be positive, got {self.lr}")
        if not 0 <= self.decay_fraction <= 1:
            raise InvalidInputError(f"{self.name}: decay_fraction must be in [0, 1]")
        if self.afa_lambda < 0 or (self.sparsity_coefficient or 0) < 0:
            raise InvalidInputError(f"{self.name}: loss coefficients must be >= 0")
        if self.k_aux is not None:
            _positive(self, "k_aux")
        if d_in is not None and d_in < 1:
            raise InvalidInputError(f"activations have width d_in={d_in}; need d_in >= 1")

    def _validate_structured(self) -> None:
        missing = [f for f in ("groups", "group_size", "k_groups") if getattr(self, f) is None]
        if missing:
            raise InvalidInputError(
                f"{self.name}: arch structured needs --groups, --group-size and --k-groups "
                f"(missing: {', '.join(missing)})"
            )
        _positive(self, "groups", "group_size", "k_groups")
        if self.k_groups > self.groups:  # type: ignore[operator]  (checked not None above)
            raise InvalidInputError(
                f"{self.name}: k_groups={self.k_groups} is larger than groups={self.groups}; "
                "use k_groups <= groups"
            )

    # -- serialization -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAETrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def training_identity(self) -> dict[str, Any]:
        """The fields that determine the trained weights (compared when resuming)."""
        return {k: v for k, v in self.to_dict().items() if k not in RESUME_INDIFFERENT}

    def variant_label(self) -> str:
        """Short label of what distinguishes this SAE in a sweep, e.g. `topk-4096-k32`."""
        parts = [self.arch]
        if self.arch == "structured":
            parts.append(f"g{self.groups}x{self.group_size}-kg{self.k_groups}")
        else:
            parts.append(str(self.latents))
        if self.k is not None and self.arch in ("topk", "batchtopk"):
            parts.append(f"k{self.k}")
        if self.arch == "topafa":
            parts.append(f"afa{self.afa_lambda:g}")
        if self.arch in ("relu", "jumprelu") and self.sparsity_coefficient is not None:
            parts.append(f"s{self.sparsity_coefficient:g}")
        return "-".join(parts)


@dataclass
class ResolvedSAETrainConfig(SAETrainConfig):
    """An `SAETrainConfig` with its defaults filled in (made by `SAETrainConfig.resolved`):
    no field is None except `init_from` (start from that SAE, if any). Fields an architecture
    does not use are 0: k outside topk / batchtopk, groups / group_size / k_groups outside
    structured, sparsity_coefficient outside relu / jumprelu."""

    k: int = 0
    groups: int = 0
    group_size: int = 0
    k_groups: int = 0
    sparsity_coefficient: float = 0.0
    batchtopk_threshold_ema: float = 0.0
    lr: float = 0.0
    warmup_tokens: int = 0
    normalize: str = "dataset"
    k_aux: int = 0
    dead_window_tokens: int = 0
    checkpoint_every_tokens: int = 0


def _positive(cfg: SAETrainConfig, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidInputError(f"{cfg.name}: {name} must be a positive integer, got {value!r}")


def check_shared_stream(configs: list[SAETrainConfig]) -> None:
    """SAEs trained from one stream must agree on what fixes the stream: batch size and seed."""
    if not configs:
        raise InvalidInputError("no SAE configs given; pass at least one")
    names = [c.name for c in configs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InvalidInputError(f"SAE names must be unique in one run; repeated: {dupes}")
    for attr in ("batch_size", "seed"):
        values = {getattr(c, attr) for c in configs}
        if len(values) > 1:
            raise InvalidInputError(
                f"SAEs trained from one activation stream must share {attr}; got {sorted(values)}"
            )
