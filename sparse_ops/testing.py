"""Helpers for the sparse_ops test suite (tests/test_sparse_ops_*.py) and the GPU check.

The suite runs the Triton kernels on CPU tensors under ``TRITON_INTERPRET=1`` by default. With
``SPARSE_OPS_TEST_DEVICE=cuda`` (see sparse_ops/gpu_check.sh) the same tests run on CUDA tensors
with compiled kernels instead; the interpreter is then left off.
"""

from __future__ import annotations

import os

import torch


def test_device() -> torch.device:
    """Device for the kernel tests: $SPARSE_OPS_TEST_DEVICE (default cpu = interpreter)."""
    return torch.device(os.environ.get("SPARSE_OPS_TEST_DEVICE", "cpu"))


test_device.__test__ = False  # not a pytest test


def enable_interpreter_for_cpu_tests() -> None:
    """Set TRITON_INTERPRET=1 unless the tests target CUDA. Call before any Triton launch."""
    if test_device().type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")


def triton_backends() -> list[str]:
    """Backends to test: always "torch", "cpu" where the native kernels build (CPU runs), plus
    "triton" when it can run here."""
    from sparse_ops import cpu_native
    from sparse_ops.dispatch import interpreter_enabled, triton_available

    backends = ["torch"]
    if test_device().type == "cpu" and cpu_native.available():
        backends.append("cpu")
    if triton_available() and (test_device().type == "cuda" or interpreter_enabled()):
        backends.append("triton")
    return backends


def tolerance(dtype: torch.dtype) -> dict:
    """assert_close tolerances for results computed in fp32 and stored in ``dtype``."""
    if dtype == torch.bfloat16:
        return {"atol": 3e-2, "rtol": 2e-2}
    if dtype == torch.float16:
        return {"atol": 3e-3, "rtol": 3e-3}
    return {"atol": 2e-5, "rtol": 2e-5}
