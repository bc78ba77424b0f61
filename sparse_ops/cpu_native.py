"""The native CPU backend's primitives (``backend="cpu"``): row-wise top-k and sparse-code sums.

torch.topk on CPU costs about 4 ns per element per row even when k is small; selecting the top
32 of 4096 pre-activations per token that way takes longer than the encoder matmul itself. The
C code in ``cpu_native.c`` bounds each row's k-th largest value from below (segment maxima, or the
last rows' k-th values as a guess), collects with one vectorized compare per 16 values only the
few that reach it, and cuts those to k, so a row costs about one pass over its values.
:func:`pair_sums` computes the weight gradients of the sparse encode and decode (and the decode's
code gradient) in token order, each thread owning a range of latents: every gradient or input
row is read once while it sits in L1, and no sort of the (token, latent) pairs is needed.
:func:`dense_preactivations` is the encode's one dense matmul, into a reused buffer.

The library is compiled on first use with the system C compiler (``cc``, well under a second, no
torch headers) into a per-user cache and loaded with ctypes; ctypes releases the GIL and the C
code splits rows over torch.get_num_threads() POSIX threads. Where there is no compiler (or with
WORKBENCH_NATIVE=0) :func:`available` is False and ``backend="auto"`` picks the PyTorch
reference instead (sparse_ops.dispatch). Cache folder: $WORKBENCH_NATIVE_CACHE, else
$XDG_CACHE_HOME/sparsity-workbench/native.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
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
    build = SOURCE.read_bytes() + compiler.encode() + _machine_key().encode()
    for flags in _FLAG_SETS:
        key = hashlib.sha256(build + " ".join(flags).encode()).hexdigest()[:16]
        try:
            target = _cache_dir() / f"cpu_native-{key}.so"
            if target.exists() or _compile(compiler, flags, target):
                return _bind(ctypes.CDLL(str(target)))
        except (OSError, RuntimeError, subprocess.SubprocessError):  # RuntimeError: no home
            continue
    return None


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.wb_topk_rows.argtypes = [p, i64, i64, i64, p, i64, i64, p, p, ctypes.c_int]
    lib.wb_topk_rows.restype = ctypes.c_int
    lib.wb_pair_sums.argtypes = [p, p, p, p, p, p, i64, i64, i64, i64, p, p, p, ctypes.c_int]
    lib.wb_pair_sums.restype = ctypes.c_int
    lib.wb_topafa_rows.argtypes = [p, p, p, i64, i64, i64, p, p, p, p, ctypes.c_int]
    lib.wb_topafa_rows.restype = ctypes.c_int
    lib.wb_flatten_rows.argtypes = [p, p, p, p, i64, i64, p, p, ctypes.c_int]
    lib.wb_flatten_rows.restype = None
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded library (compiled on first call), or None where it cannot be built (a
    missing or broken compiler, an unwritable cache: `_load` gives up quietly)."""
    if "lib" not in _STATE:
        _STATE["lib"] = _load()
    return _STATE["lib"]  # type: ignore[return-value]


def available() -> bool:
    return library() is not None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def usable_rows(pre: torch.Tensor) -> bool:
    """Whether `topk_rows` can read pre as it is (float32 on CPU, unit column stride)."""
    return (pre.device.type == "cpu" and pre.dtype == torch.float32 and pre.dim() == 2
            and pre.stride(1) == 1 and available())


def topk_rows(pre: torch.Tensor, k: int, columns: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top k of each row of pre [n, L] (among `columns` [C] int64 when given) -> values [n, k]
    float32 and column indices [n, k] int64, in increasing column order within a row (so the
    result depends on the row alone). Requires usable_rows(pre)."""
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
        pre.data_ptr(), n, pre.stride(0), L, _ptr(columns),
        width, k, values.data_ptr(), indices.data_ptr(), torch.get_num_threads())
    if rc != 0:
        raise ValueError("native top-k rejected its arguments")
    return values, indices


def pair_sums(vals: torch.Tensor, idx: torch.Tensor, G: torch.Tensor, rows: int,
              with_bias: bool = False, W: torch.Tensor | None = None,
              lengths: torch.Tensor | None = None, offsets: torch.Tensor | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Over the (token n, latent l = idx[n, j]) pairs of a sparse code vals, idx [n, K]:
    out[l] = sum vals[n, j] * G[n] -> [rows, d] (G [n, d]); bias[l] = sum vals[n, j] -> [rows]
    when with_bias; with W [rows, d] also grad_vals[n, j] = <G[n], W[l]> -> [n, K]. All float32.
    lengths [n] int64 (each <= K): row n has only its first lengths[n] pairs (a ragged code
    stored padded); the others cost nothing and get grad_vals 0. With offsets [n] (and
    lengths) the code is flat bags instead: vals, idx and grad_vals [nnz], row n's pairs at
    offsets[n] .. offsets[n] + lengths[n]."""
    vals, idx, G = vals.contiguous(), idx.to(torch.int64).contiguous(), G.contiguous()
    out = torch.empty(rows, G.shape[1], dtype=torch.float32)
    bias = torch.empty(rows, dtype=torch.float32) if with_bias else None
    grad_vals = None
    if W is not None:
        W = W.contiguous()
        padded = lengths is not None and offsets is None
        grad_vals = torch.zeros_like(vals) if padded else torch.empty_like(vals)
    if lengths is not None:
        lengths = lengths.to(torch.int64).contiguous()
    if offsets is not None:
        if lengths is None:
            raise ValueError("pair_sums over flat bags needs lengths beside offsets")
        offsets = offsets.to(torch.int64).contiguous()
    n, K = (offsets.shape[0], 0) if offsets is not None else idx.shape
    rc = library().wb_pair_sums(  # type: ignore[union-attr]
        vals.data_ptr(), idx.data_ptr(), _ptr(lengths), _ptr(offsets), G.data_ptr(), _ptr(W),
        n, K, rows, G.shape[1], out.data_ptr(), _ptr(bias), _ptr(grad_vals),
        torch.get_num_threads())
    if rc != 0:
        raise ValueError(f"latent ids outside [0, {rows})")
    return out, bias, grad_vals


def flatten_rows(vals: torch.Tensor, idx: torch.Tensor, lengths: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A ragged code stored padded (vals float32, idx int64 [n, K], lengths [n]) -> the flat
    pairs vals [nnz], idx [nnz] and the bag offsets [n] that F.embedding_bag takes."""
    vals, idx = vals.contiguous(), idx.to(torch.int64).contiguous()
    lengths = lengths.to(torch.int64).contiguous()
    offsets = torch.cumsum(lengths, 0) - lengths
    nnz = int(lengths.sum())
    flat_vals = torch.empty(nnz, dtype=torch.float32)
    flat_idx = torch.empty(nnz, dtype=torch.int64)
    library().wb_flatten_rows(  # type: ignore[union-attr]
        vals.data_ptr(), idx.data_ptr(), lengths.data_ptr(), offsets.data_ptr(), idx.shape[0],
        idx.shape[1], flat_vals.data_ptr(), flat_idx.data_ptr(), torch.get_num_threads())
    return flat_vals, flat_idx, offsets


def topafa_rows(pre: torch.Tensor, dec_norms: torch.Tensor, z_norm: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """top-AFA's cut of every row of pre [n, L] over the whole dictionary (the full-sort rule of
    sparse_ops.encode.topafa_select, without sorting the rows).

    dec_norms [L], z_norm [n] float32. Returns k [n] int64 (the rule's k(x)), lengths [n] int64
    (the kept latents with a positive activation, <= k), offsets [n] int64 (where each row's
    pairs start: exclusive prefix sums of lengths), and the kept pairs as flat bags: ids [nnz]
    int64 (increasing within a row) and their activations vals [nnz] float32, nnz =
    sum(lengths). Requires usable_rows(pre) and a contiguous pre."""
    n, L = pre.shape
    if not pre.is_contiguous():
        raise ValueError("topafa_rows needs a contiguous [n, L] pre-activation matrix")
    dec_norms = dec_norms.float().contiguous()
    z_norm = z_norm.float().contiguous()
    k = torch.empty(n, dtype=torch.int64)
    lengths = torch.empty(n, dtype=torch.int64)
    ids_ws = _workspace(n, L, k, "topafa_ids")
    vals_ws = _workspace(n, L, pre, "topafa_vals")
    rc = library().wb_topafa_rows(  # type: ignore[union-attr]
        pre.data_ptr(), dec_norms.data_ptr(), z_norm.data_ptr(), n, L, L, k.data_ptr(),
        lengths.data_ptr(), ids_ws.data_ptr(), vals_ws.data_ptr(), torch.get_num_threads())
    if rc != 0:
        raise ValueError(f"native top-AFA cut failed (code {rc})")
    vals, ids, offsets = flatten_rows(vals_ws, ids_ws, lengths)
    return k, lengths, offsets, ids, vals


# ----------------------------------------------------------------------------------------------
# the encode's dense matmul, into reused buffers

_WORKSPACE: dict[tuple, torch.Tensor] = {}


def _workspace(rows: int, cols: int, like: torch.Tensor, slot: str) -> torch.Tensor:
    """A reused [rows, cols] buffer (one flat buffer per slot, dtype and device, grown as
    needed): a fresh 64 MB pre-activation tensor per step costs page faults comparable to a
    third of the matmul. Only valid until the next call for the same slot."""
    key = (slot, like.dtype, like.device)
    buf = _WORKSPACE.get(key)
    if buf is None or buf.numel() < rows * cols:
        buf = _WORKSPACE[key] = torch.empty(rows * cols, dtype=like.dtype, device=like.device)
    return buf[: rows * cols].view(rows, cols)


def dense_preactivations(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x W^T + b -> [n, L] (no autograd), in a buffer that the next call overwrites.

    x [n, d], W [L, d], b [L] or None. The bias rides along as an extra input column of ones
    ([x, 1] [W, b]^T): one GEMM, where addmm would first copy b into all n x L outputs."""
    with torch.no_grad():
        pre = _workspace(x.shape[0], W.shape[0], x, "pre")
        if b is None:
            return torch.mm(x, W.T, out=pre)
        n, d = x.shape
        x1 = _workspace(n, d + 1, x, "x1")
        x1[:, :d] = x
        x1[:, d] = 1.0
        wb = _workspace(W.shape[0], d + 1, W, "wb")
        wb[:, :d] = W
        wb[:, d] = b
        return torch.mm(x1, wb.T, out=pre)


def release_workspace() -> None:
    """Free the reused buffers (e.g. at the end of a training run)."""
    _WORKSPACE.clear()


def usable(*tensors: torch.Tensor | None) -> bool:
    """Whether the native code can take these (non-None) tensors: float32 on CPU, library built."""
    return available() and all(t.device.type == "cpu" and t.dtype == torch.float32
                               for t in tensors if t is not None)
