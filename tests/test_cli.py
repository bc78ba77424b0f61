"""The command line: help, and readable errors (exit 2, no traceback) on bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run_cli(*args: str, lab=None) -> subprocess.CompletedProcess:
    env = {**os.environ}
    if lab is not None:
        env["WORKBENCH_LAB"] = str(lab)
    return subprocess.run([sys.executable, "-m", "app.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_help_lists_every_area():
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("demo", "app", "lab", "data", "lm", "acts", "probe", "sae", "bench"):
        assert command in out.stdout


@pytest.mark.parametrize("group", ["lab", "data", "lm", "acts", "probe", "sae", "bench"])
def test_each_group_has_help(group):
    out = run_cli(group, "--help")
    assert out.returncode == 0 and "Usage" in out.stdout


def _assert_clean_error(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("error: ")
    for needle in needles:
        assert needle in out.stderr, out.stderr


def test_unknown_artifact_and_invalid_name(tmp_path):
    _assert_clean_error(run_cli("lab", "show", "nothing", lab=tmp_path / "lab"),
                        "no artifact named 'nothing'")
    _assert_clean_error(run_cli("lab", "show", "../../etc", lab=tmp_path / "lab"),
                        "invalid artifact name")


def test_unknown_hook_lists_valid_hooks(tiny_lab):
    out = run_cli("acts", "cache", "--model", "lm", "--hook", "blocks.9.hook_nothing",
                  "--corpus", "corpus", "--tokens", "1000", "--name", "bad-hook", lab=tiny_lab.root)
    _assert_clean_error(out, "blocks.9.hook_nothing", "hook_resid_post")
    assert not tiny_lab.exists("bad-hook")


def test_unknown_model_name(tiny_lab):
    out = run_cli("acts", "cache", "--model", "no-such-model-xyz", "--hook",
                  "blocks.0.hook_resid_post", "--corpus", "corpus", "--tokens", "1000",
                  lab=tiny_lab.root)
    _assert_clean_error(out, "no-such-model-xyz", "lm")


def test_sae_width_mismatch_is_a_clear_error(tiny_lab):
    """SAE trained on one width, evaluated against activations of another width."""
    import torch

    from saes.training.config import SAETrainConfig
    from saes.training.trainer import train_saes

    wide = torch.randn(4096, 64)
    train_saes(tiny_lab, SAETrainConfig(name="cli-wide-sae", arch="topk", latents=128, k=4,
                                        tokens=4096, batch_size=1024), wide, progress=False)
    out = run_cli("sae", "eval", "cli-wide-sae", "--acts", "acts", lab=tiny_lab.root)
    _assert_clean_error(out)
    assert "64" in out.stderr and "128" in out.stderr


def test_sae_choices_lists_the_registries():
    """`sae choices` prints the values --arch, --normalize and --kernels take, from the one
    registry each (so the help never lists a value that does not exist)."""
    import json

    from saes import ARCHITECTURES
    from saes.training.config import NORMALIZATIONS
    from sparse_ops import BACKENDS

    out = run_cli("sae", "choices", "--json")
    assert out.returncode == 0, out.stderr
    tables = json.loads(out.stdout)
    assert list(tables["arch"]) == list(ARCHITECTURES)
    assert list(tables["normalize"]) == list(NORMALIZATIONS)
    assert list(tables["kernels"]) == list(BACKENDS)
