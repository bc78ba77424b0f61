"""Native CPU helpers for the trainer's CPU kernels: row-wise top-k and a counting sort.

torch.topk on CPU costs about 4 ns per element per row even when k is small; selecting the top
32 of 4096 pre-activations per token that way takes longer than the encoder matmul itself. The
C code in `cpu_native.c` keeps a k-slot min-heap per row and skips, with one vectorized compare,
every chunk of 16 values that cannot enter it, so a row costs about one pass over its values.
`group_by` replaces a stable argsort of latent ids (backward passes) by an O(N) counting sort,
and `decode_backward` computes both gradients of a sparse decode from one read of each gradient
row per selected (token, latent) pair.

The library is compiled on first use with the system C compiler (`cc`, well under a second, no
torch headers) into a per-user cache and loaded with ctypes; ctypes releases the GIL and the C
code splits rows over torch.get_num_threads() POSIX threads. Where there is no compiler (or with
WORKBENCH_NATIVE=0) `available()` is False and callers use their PyTorch path: same results,
slower. Cache folder: $WORKBENCH_NATIVE_CACHE, else $XDG_CACHE_HOME/sparsity-workbench/native.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("cpu_native.c")
_FLAG_SETS = (["-O3", "-march=native"], ["-O3"])
_STATE: dict[str, object] = {}


def _cache_dir() -> Path:
    if os.environ.get("WORKBENCH_NATIVE_CACHE"):
        return Path(os.environ["WORKBENCH_NATIVE_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sparsity-workbench" / "native"


def _machine_key() -> str:
    """CPU identity for -march=native builds (a shared home may serve other machines)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return os.uname().machine


def _compile(compiler: str, flags: list[str], target: Path) -> bool:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        cmd = [compiler, *flags, "-fPIC", "-shared", "-pthread", str(SOURCE), "-o", str(out)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            return False
        os.replace(out, target)  # atomic: concurrent first uses never see a half-written file
    return True


def _load() -> ctypes.CDLL | None:
    if os.environ.get("WORKBENCH_NATIVE", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    source = SOURCE.read_bytes()
    for flags in _FLAG_SETS:
        key = hashlib.sha256(source + " ".join(flags).encode() + compiler.encode()
                             + _machine_key().encode()).hexdigest()[:16]
        target = _cache_dir() / f"cpu_native-{key}.so"
        try:
            if target.exists() or _compile(compiler, flags, target):
                return _bind(ctypes.CDLL(str(target)))
        except (OSError, subprocess.SubprocessError):
            continue
    return None


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.wb_topk_rows.argtypes = [p, i64, i64, i64, p, i64, i64, p, p, ctypes.c_int]
    lib.wb_topk_rows.restype = ctypes.c_int
    lib.wb_group_by.argtypes = [p, i64, i64, i64, p, p, p]
    lib.wb_group_by.restype = ctypes.c_int
    lib.wb_decode_backward.argtypes = [p, p, p, p, i64, i64, p, p, i64, p, p, ctypes.c_int]
    lib.wb_decode_backward.restype = ctypes.c_int
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded library (compiled on first call), or None where it cannot be built."""
    if "lib" not in _STATE:
        try:
            _STATE["lib"] = _load()
        except (OSError, subprocess.SubprocessError, AttributeError) as exc:  # a broken
            # toolchain or a stale library must not break training
            warnings.warn(f"native CPU kernels unavailable ({exc}); using the PyTorch path",
                          stacklevel=2)
            _STATE["lib"] = None
    return _STATE["lib"]  # type: ignore[return-value]


def available() -> bool:
    return library() is not None


def usable_rows(pre: torch.Tensor) -> bool:
    """Whether `topk_rows` can read pre as it is (float32 on CPU, unit column stride)."""
    return (pre.device.type == "cpu" and pre.dtype == torch.float32 and pre.dim() == 2
            and pre.stride(1) == 1 and available())


def topk_rows(pre: torch.Tensor, k: int, columns: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top k of each row of pre [n, L] (among `columns` [C] int64 when given) -> values [n, k]
    float32 and column indices [n, k] int64, unsorted within a row. Requires usable_rows(pre)."""
    lib = library()
    n, L = pre.shape
    if columns is not None:
        columns = columns.to(torch.int64).contiguous()
    width = L if columns is None else columns.numel()
    if not 1 <= k <= width:
        raise ValueError(f"k={k} must be between 1 and the number of columns ({width})")
    values = torch.empty(n, k, dtype=torch.float32)
    indices = torch.empty(n, k, dtype=torch.int64)
    rc = lib.wb_topk_rows(  # type: ignore[union-attr]
        pre.data_ptr(), n, pre.stride(0), L, None if columns is None else columns.data_ptr(),
        width, k, values.data_ptr(), indices.data_ptr(), torch.get_num_threads())
    if rc != 0:
        raise ValueError("native top-k rejected its arguments")
    return values, indices


def group_by(keys: torch.Tensor, rows: int, k: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stable counting sort of keys [n, k] (int64 in [0, rows)) flattened.

    -> order [n*k] (flat positions sorted by key), offsets [rows] (start of each key's run in
    order), bags [n*k] = order // k (the row each sorted pair came from)."""
    lib = library()
    flat = keys.reshape(-1).to(torch.int64).contiguous()
    order = torch.empty_like(flat)
    bags = torch.empty_like(flat)
    offsets = torch.empty(rows, dtype=torch.int64)
    rc = lib.wb_group_by(flat.data_ptr(), flat.numel(), rows, k,  # type: ignore[union-attr]
                         order.data_ptr(), offsets.data_ptr(), bags.data_ptr())
    if rc != 0:
        raise ValueError(f"latent ids outside [0, {rows})")
    return order, offsets, bags


Grouping = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (order, offsets, bags) of group_by


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _check(rc: int, what: str) -> None:
    if rc == -2:
        raise MemoryError(f"native {what}: out of memory")
    if rc != 0:
        raise ValueError(f"native {what} rejected its arguments")


def decode_backward(vals: torch.Tensor, grouping: Grouping, G: torch.Tensor, W: torch.Tensor,
                    want_vals: bool, want_W: bool
                    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of x_hat[n] = sum_j vals[n, j] W[idx[n, j]] given G = dL/dx_hat [n, d]:
    (grad_vals [n, K] | None, grad_W [L, d] | None), from one pass over the (n, j) pairs."""
    order, offsets, bags = grouping
    vals, G, W = vals.contiguous(), G.contiguous(), W.contiguous()
    grad_vals = torch.empty_like(vals) if want_vals else None
    grad_W = torch.empty_like(W) if want_W else None
    _check(library().wb_decode_backward(  # type: ignore[union-attr]
        vals.data_ptr(), order.data_ptr(), offsets.data_ptr(), bags.data_ptr(), order.numel(),
        W.shape[0], G.data_ptr(), W.data_ptr(), W.shape[1], _ptr(grad_vals), _ptr(grad_W),
        torch.get_num_threads()), "decode_backward")
    return grad_vals, grad_W
