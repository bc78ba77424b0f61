"""Backend choice, lazy Triton loading and input validation shared by every kernel.

Backends (:data:`BACKENDS`; one place decides, :func:`resolve_backend`)
--------
``backend="auto"``   Triton when the tensors are on CUDA and ``import triton`` works; on CPU the
                     native CPU kernels when they build (``sparse_ops/cpu_native.py``), else the
                     PyTorch reference.
``backend="cpu"``    the native CPU kernels (CPU tensors; needs a C compiler at first use).
``backend="torch"``  always the PyTorch reference (any device).
``backend="triton"`` the Triton kernels: on CUDA, or on CPU tensors when ``TRITON_INTERPRET=1``
                     is set (Triton's interpreter: slow, for correctness tests only).

How Triton reads ``TRITON_INTERPRET`` (checked with triton 3.x)
---------------------------------------------------------------
``triton.knobs.runtime.interpret`` re-reads the environment variable each time it is asked, but
``@triton.jit`` asks only once, when it *decorates* a function: with the variable set it returns
an ``InterpretedFunction`` (runs on CPU tensors), without it a ``JITFunction`` (needs a GPU
driver). Importing ``triton`` itself fixes nothing. This package therefore keeps every
``@triton.jit`` function in ``sparse_ops/kernels/*.py``, imports those modules only on first use
(:func:`load_kernels`), and re-imports a module when the interpreter setting has changed since it
was loaded. Setting ``TRITON_INTERPRET=1`` any time before the first Triton-backend call is enough,
even when another module imported ``triton`` earlier in the same process.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

from sparse_ops import cpu_native

BACKEND_DESCRIPTIONS = {
    "auto": "Triton on CUDA; on CPU the native kernels where they build, else the reference",
    "cpu": "the native CPU kernels (sparse_ops/cpu_native.c, built with the system cc)",
    "triton": "the Triton kernels (CUDA; CPU only under TRITON_INTERPRET=1)",
    "torch": "the PyTorch reference (any device)",
}
BACKENDS = tuple(BACKEND_DESCRIPTIONS)

_TRITON_IMPORT_ERROR: str | None = None
_LOADED_KERNELS: dict[str, tuple[ModuleType, bool]] = {}


class SparseOpsInputError(ValueError):
    """Bad input to a sparse_ops function; the message names the problem and the fix."""


def triton_available() -> bool:
    """True when ``import triton`` works in this environment (it is never imported eagerly)."""
    global _TRITON_IMPORT_ERROR
    try:
        import triton  # noqa: F401
    except Exception as exc:  # noqa: BLE001 (ImportError, or a broken install)
        _TRITON_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
        return False
    return True


def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET`` is set to a true value in the environment right now."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """Return ``"triton"``, ``"cpu"`` or ``"torch"`` for a requested ``backend`` and ``device``.

    Raises :class:`SparseOpsInputError` (a ``ValueError``) when the request cannot be honoured,
    with the fix in the message.
    """
    if backend not in BACKENDS:
        raise SparseOpsInputError(
            f"unknown backend {backend!r}; use one of {', '.join(repr(b) for b in BACKENDS)}"
        )
    device = torch.device(device)
    if backend == "torch":
        return "torch"
    if backend == "auto":
        if device.type == "cuda" and triton_available():
            return "triton"
        return "cpu" if device.type == "cpu" and cpu_native.available() else "torch"
    if backend == "cpu":
        if device.type != "cpu":
            raise SparseOpsInputError(
                f"backend='cpu' runs on CPU tensors, got device {device}; move them with "
                ".cpu() or use backend='auto'")
        if not cpu_native.available():
            raise SparseOpsInputError(
                "backend='cpu' needs the native CPU kernels, which did not build (no C compiler "
                "`cc`, WORKBENCH_NATIVE=0, or an unwritable cache folder); install a C compiler "
                "or use backend='torch'")
        return "cpu"
    # backend == "triton"
    if not triton_available():
        raise SparseOpsInputError(
            f"backend='triton' needs the triton package, which failed to import "
            f"({_TRITON_IMPORT_ERROR}); install triton (Linux) or use backend='torch'"
        )
    if device.type == "cuda":
        return "triton"
    if device.type == "cpu":
        if interpreter_enabled():
            return "triton"
        raise SparseOpsInputError(
            "backend='triton' on CPU tensors runs only in Triton's interpreter: set the "
            "environment variable TRITON_INTERPRET=1 (before the first Triton call), move the "
            "tensors to CUDA, or use backend='torch'"
        )
    raise SparseOpsInputError(
        f"backend='triton' supports CUDA tensors (or CPU with TRITON_INTERPRET=1), got device "
        f"{device}; use backend='torch' there"
    )


def load_kernels(name: str) -> ModuleType:
    """Import ``sparse_ops.kernels.<name>`` (the ``@triton.jit`` code), matching the interpreter.

    The module is re-imported when ``TRITON_INTERPRET`` changed since it was last loaded, so its
    kernels are ``InterpretedFunction`` objects exactly when the interpreter is on.
    """
    interpret = interpreter_enabled()
    cached = _LOADED_KERNELS.get(name)
    if cached is not None and cached[1] == interpret:
        return cached[0]
    module = importlib.import_module(f"sparse_ops.kernels.{name}")
    if getattr(module, "INTERPRETED", None) != interpret:
        module = importlib.reload(module)
    _LOADED_KERNELS[name] = (module, interpret)
    return module


# ----------------------------------------------------------------------------------------------
# validation helpers: every message names the argument, what was wrong and what to do


def require(condition: bool, message: str) -> None:
    """Raise :class:`SparseOpsInputError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise SparseOpsInputError(message)


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_tensor(
    name: str,
    t: object,
    ndim: int | None = None,
    dtypes: tuple[torch.dtype, ...] | None = FLOAT_DTYPES,
) -> torch.Tensor:
    """Check that ``t`` is a tensor with ``ndim`` dimensions and one of ``dtypes``."""
    require(isinstance(t, torch.Tensor), f"{name} must be a torch.Tensor, got {type(t).__name__}")
    assert isinstance(t, torch.Tensor)
    if ndim is not None:
        require(
            t.dim() == ndim,
            f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}; reshape it "
            f"(e.g. x.reshape(-1, x.shape[-1]) for token batches)",
        )
    if dtypes is not None:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        require(
            t.dtype in dtypes,
            f"{name} has dtype {t.dtype}; supported: {names} (convert with .to(...))",
        )
    return t


def _check_shared(what: str, fix: str, attr: str, tensors: dict[str, torch.Tensor | None]):
    """Check that the given (non-None) tensors agree on ``attr`` and return its value."""
    present = {k: v for k, v in tensors.items() if v is not None}
    values = {getattr(v, attr) for v in present.values()}
    require(
        len(values) == 1,
        f"tensors have different {what} ("
        + ", ".join(f"{k}: {getattr(v, attr)}" for k, v in present.items())
        + f"); {fix}",
    )
    return values.pop()


def check_same_device(**tensors: torch.Tensor | None) -> torch.device:
    """Check that all given (non-None) tensors live on one device and return it."""
    return _check_shared("devices", "move them to one device with .to(device)", "device", tensors)


def check_same_dtype(**tensors: torch.Tensor | None) -> torch.dtype:
    """Check that all given (non-None) tensors share one dtype and return it."""
    return _check_shared("dtypes", "convert them to one dtype with .to(dtype)", "dtype", tensors)


def check_indices(name: str, indices: torch.Tensor, n_rows: int, n_latents: int) -> None:
    """Check an integer index tensor [n_rows, k] whose entries must lie in [0, n_latents)."""
    check_tensor(name, indices, ndim=2, dtypes=(torch.int64, torch.int32))
    require(
        indices.shape[0] == n_rows,
        f"{name} has {indices.shape[0]} rows but the values/activations have {n_rows}; "
        f"pass the matching pair",
    )
    if indices.numel():
        lo, hi = torch.aminmax(indices)
        lo, hi = int(lo), int(hi)
        require(
            lo >= 0 and hi < n_latents,
            f"{name} holds entries in [{lo}, {hi}] but the dictionary has {n_latents} latents "
            f"(valid: 0..{n_latents - 1}); check that indices and weights belong together",
        )


def next_power_of_two(n: int) -> int:
    """Smallest power of two >= n (n >= 1)."""
    return 1 << max(0, (int(n) - 1).bit_length())
