"""Shared test set-up: offline hub, Triton interpreter, and a small real lab built once.

`tiny_lab` is a lab made end to end with the real components (corpus from the default recipe
with a small budget, BPE tokenizer `tok`, tiny LM `lm`, activations `acts`), built once per test
session; tests that add artifacts to it use names of their own. `one_thread` pins torch to one
thread for a module. Helpers that are not fixtures live in fixtures_lab.py and are imported as
`from fixtures_lab import ...` (this file puts tests/ on sys.path).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).parent))  # `from fixtures_lab import ...`

import pytest


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one torch thread is as fast, and immune to a busy machine (OpenMP threads
    waiting for a descheduled sibling). Use with `pytestmark = pytest.mark.usefixtures(...)`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_lab(tmp_path_factory):
    from fixtures_lab import build_tiny_lab

    return build_tiny_lab(tmp_path_factory.mktemp("tiny_lab") / "lab")
