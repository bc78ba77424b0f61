"""Helpers for the steering tests (plain functions; each test file wraps them in fixtures)."""

from __future__ import annotations

from pathlib import Path

import torch


def random_lm_setup(root: Path, n_ctx: int = 64):
    """(lab, corpus, model): `small_lm_setup`'s random tiny LM (2 x 128) with a 512-token BPE."""
    from fixtures_lab import small_lm_setup

    torch.set_num_threads(1)
    return small_lm_setup(root, n_ctx=n_ctx)
