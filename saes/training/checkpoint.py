"""Checkpoints of a running SAE training job, kept in `lab.work_dir(name)` until it succeeds.

One file, `checkpoint.pt`: a dict of tensors and plain values (model and optimizer state,
counters, the config it was made with), written to a temporary file and renamed into place, so
a kill leaves either the previous or the new checkpoint, never half of one. Loaded with
`torch.load(weights_only=True)` (no pickled code).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import torch

from workbench.errors import InvalidInputError

CHECKPOINT_FILE = "checkpoint.pt"


def checkpoint_path(work_dir: Path) -> Path:
    return Path(work_dir) / CHECKPOINT_FILE


def save_checkpoint(work_dir: Path, state: dict[str, Any]) -> None:
    """Atomically write `state` to work_dir/checkpoint.pt."""
    final = checkpoint_path(work_dir)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(work_dir: Path) -> dict[str, Any] | None:
    """The checkpoint in work_dir, or None when there is none."""
    path = checkpoint_path(work_dir)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file
        raise InvalidInputError(
            f"the training checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); "
            "delete it or pass --restart to train from scratch"
        ) from exc
