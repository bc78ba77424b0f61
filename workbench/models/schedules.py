"""Learning-rate and checkpoint schedules for language-model training."""

from __future__ import annotations

import math
from collections.abc import Sequence

from workbench.errors import InvalidInputError


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based).

    Linear warm-up from 1/warmup to 1 over `warmup_steps`, then cosine decay to `min_lr_ratio`
    at the last step.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def checkpoint_steps(spec: str | Sequence[int] | None, total_steps: int) -> list[int]:
    """The steps (1..total_steps) after which weights are kept, from a schedule spec.

    - None or "" or "none": no kept checkpoints;
    - "geometric" (steps 1, 2, 4, 8, ...) or "geometric:F" (powers of F, rounded, deduplicated);
    - "every:N": N, 2N, 3N, ...;
    - "1,2,5" or a list of ints: exactly those steps.
    The final step is always added to a non-empty schedule, so the last checkpoint is the final
    model. Steps beyond `total_steps` are an error.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "none")):
        return []
    if isinstance(spec, str):
        steps = _parse_spec(spec.strip().lower(), total_steps)
    else:
        steps = [int(s) for s in spec]
    bad = [s for s in steps if s < 1 or s > total_steps]
    if bad:
        raise InvalidInputError(
            f"checkpoint steps {bad[:5]} lie outside 1..{total_steps} (the training steps)"
        )
    return sorted(set(steps) | {total_steps})


def _parse_spec(spec: str, total_steps: int) -> list[int]:
    if spec.startswith("geometric"):
        factor = _number(spec.partition(":")[2] or "2", spec, float)
        if factor <= 1.0:
            raise InvalidInputError(f"the geometric factor must be > 1 in {spec!r}")
        steps, value = set(), 1.0
        while round(value) <= total_steps:
            steps.add(round(value))
            value *= factor
        return sorted(steps)
    if spec.startswith("every:"):
        every = _number(spec.partition(":")[2], spec, int)
        if every < 1:
            raise InvalidInputError(f"the interval must be >= 1 in {spec!r}")
        return list(range(every, total_steps + 1, every))
    return [_number(part, spec, int) for part in spec.split(",") if part.strip()]


def _number(text: str, spec: str, kind: type) -> int | float:
    try:
        return kind(text.strip())
    except ValueError:
        raise InvalidInputError(
            f"cannot read the checkpoint schedule {spec!r}; use 'geometric', 'geometric:1.5', "
            "'every:N' or a list of steps like '1,2,5'"
        ) from None
