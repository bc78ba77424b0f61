"""Shared test set-up: offline hub, Triton interpreter, and a small real lab built once.

`tiny_lab` is a lab made end to end with the real components (corpus from the default recipe
with a small budget, BPE tokenizer `tok`, tiny LM `lm`, activations `acts`), built once per test
session; tests that add artifacts to it use names of their own.
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


@pytest.fixture(scope="session")
def tiny_lab(tmp_path_factory):
    from fixtures_lab import build_tiny_lab

    return build_tiny_lab(tmp_path_factory.mktemp("tiny_lab") / "lab")
