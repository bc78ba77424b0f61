"""Triton kernels (``@triton.jit`` code only).

The modules here import ``triton`` when they are imported, so nothing outside this folder imports
them directly: use ``sparse_ops.dispatch.load_kernels(name)``, which imports them on first use
and re-imports them when ``TRITON_INTERPRET`` changed (see ``sparse_ops/dispatch.py``). Host-side
launch code, references and autograd live next to the public function in ``sparse_ops/*.py``.
"""
