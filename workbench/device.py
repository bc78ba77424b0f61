"""Device choice: CUDA when present, else CPU."""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    """The device computations run on unless the user asks otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None` or "auto" -> the default device; anything else is passed to torch.device."""
    if device is None or device == "auto":
        return default_device()
    return torch.device(device)
