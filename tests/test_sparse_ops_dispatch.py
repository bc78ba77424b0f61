"""Backend dispatch, lazy Triton loading and interpreter switching, import without triton."""

from __future__ import annotations

from sparse_ops.testing import enable_interpreter_for_cpu_tests

enable_interpreter_for_cpu_tests()

import subprocess
import sys
import textwrap

import pytest
import torch

import sparse_ops
from sparse_ops import SparseOpsInputError, cpu_native, resolve_backend
from sparse_ops.dispatch import load_kernels, triton_available

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton not installed")


def test_auto_picks_reference_on_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter never makes auto pick triton
    assert resolve_backend("auto", "cpu") == ("cpu" if cpu_native.available() else "torch")
    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_backend("torch", torch.device("cuda")) == "torch"


@needs_triton
def test_auto_picks_triton_on_cuda_and_triton_needs_interpreter_on_cpu(monkeypatch):
    assert resolve_backend("auto", torch.device("cuda", 0)) == "triton"
    assert resolve_backend("triton", "cuda") == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton", "cpu") == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(SparseOpsInputError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton", "cpu")
    with pytest.raises(SparseOpsInputError, match="backend='torch' there"):
        resolve_backend("triton", "meta")


def test_unknown_backend_is_rejected():
    with pytest.raises(SparseOpsInputError, match="unknown backend 'gpu'"):
        resolve_backend("gpu", "cpu")
    with pytest.raises(ValueError):  # SparseOpsInputError is a ValueError
        sparse_ops.topk_encode(torch.zeros(2, 3), torch.zeros(4, 3), None, 1, backend="fast")


def test_public_functions_dispatch_to_reference_on_cpu(monkeypatch):
    """backend='auto' on CPU never launches Triton, even with the interpreter on."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")

    def forbid(name):
        raise AssertionError(f"Triton kernels {name} loaded for backend='auto' on CPU")

    monkeypatch.setattr(sparse_ops.encode, "load_kernels", forbid)
    monkeypatch.setattr(sparse_ops.decode, "load_kernels", forbid)
    monkeypatch.setattr(sparse_ops.attention_common, "load_kernels", forbid)
    x, W = torch.randn(3, 8), torch.randn(10, 8)
    values, indices = sparse_ops.topk_encode(x, W, None, 2)
    sparse_ops.sparse_decode(values, indices, W, None)
    q = torch.randn(1, 1, 20, 16)
    sparse_ops.block_sparse_attention(q, q, q, sparse_ops.topk_block_index(q, q, 16, 1), 16)
    sparse_ops.blasst_attention(q, q, q, 1e-3, 16)


@needs_triton
def test_load_kernels_follows_the_interpreter_setting(monkeypatch):
    """@triton.jit decides interpreted-or-compiled when it decorates, so load_kernels re-imports
    the kernel module whenever TRITON_INTERPRET changed since the last load."""
    from triton.runtime.interpreter import InterpretedFunction

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    compiled = load_kernels("decode_kernels")
    assert compiled.INTERPRETED is False
    assert not isinstance(compiled.gather_sum_kernel, InterpretedFunction)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    interpreted = load_kernels("decode_kernels")
    assert interpreted.INTERPRETED is True
    assert isinstance(interpreted.gather_sum_kernel, InterpretedFunction)
    assert load_kernels("decode_kernels") is interpreted  # cached while the setting holds


def test_package_imports_and_runs_without_triton():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # make `import triton` fail
        import torch, sparse_ops
        assert not sparse_ops.triton_available()
        x, W = torch.randn(4, 8), torch.randn(16, 8)
        v, i = sparse_ops.topk_encode(x, W, None, 3)
        sparse_ops.sparse_decode(v, i, W, None)
        try:
            sparse_ops.topk_encode(x, W, None, 3, backend="triton")
        except ValueError as exc:
            assert "needs the triton package" in str(exc), exc
        else:
            raise SystemExit("backend='triton' without triton must fail")
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
