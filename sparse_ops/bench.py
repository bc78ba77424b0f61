"""Kernel benchmarks: each sparse_ops kernel against its PyTorch baseline, side by side.

Per shape: our median time and the baseline's (after warm-up, measured in one process,
alternating), the time ratio ours / baseline (and the speedup, its inverse), the peak extra memory
of each call (bytes allocated beyond what existed before the call) and their ratio.

* CUDA: ``backend="auto"`` runs the Triton kernels; peak memory from
  ``torch.cuda.max_memory_allocated``. Shapes of real workloads (SAE: 8192 tokens, bf16;
  attention: head dim 128, 4k-32k tokens, blocks 64/128, 50-95% sparsity).
* CPU: ``backend="auto"`` again: the native CPU kernels for encode and decode where they build
  (the PyTorch reference otherwise), the PyTorch reference for attention, against the same
  baselines on small shapes (Triton's interpreter is for correctness only and is never timed
  here); peak memory from the PyTorch profiler's memory timeline. These numbers say nothing
  about the GPU kernels.

Baselines: encode ``torch.topk(torch.relu(x @ W.T + b), k)``; decode a dense code
(``scatter``) times W_dec, and ``F.embedding_bag``; attention ``F.scaled_dot_product_attention``
(dense causal).

Use ``run_kernel_benchmarks()`` (returns rows as dicts) and ``format_table(rows)``; the command
line is ``workbench bench kernels [--quick] [--json]`` (app/cli/bench_kernels.py).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sparse_ops.attention_blasst import blasst_attention
from sparse_ops.attention_block_sparse import block_sparse_attention
from sparse_ops.block_index import block_mask_to_lists, causal_block_mask, num_blocks
from sparse_ops.decode import sparse_decode
from sparse_ops.dispatch import resolve_backend
from sparse_ops.encode import topk_encode

MIB = 1024 * 1024


@dataclass(frozen=True)
class SaeShape:
    tokens: int
    d_in: int
    latents: int
    k: int


@dataclass(frozen=True)
class AttentionShape:
    batch: int
    heads: int
    seq: int
    head_dim: int
    block: int
    sparsity: float  # target fraction of causal blocks skipped


# ----------------------------------------------------------------------------------------------
# measurement


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    """Wall-clock milliseconds of ``repeats`` calls (CUDA: synchronized around each call)."""
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak bytes allocated during ``fn()`` beyond what was allocated before it (None: unknown)."""
    if device.type == "cuda":
        _sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    try:  # private but stable-enough API; the benchmark degrades to "n/a" without it
        from torch.profiler import ProfilerActivity, profile
        from torch.profiler._memory_profiler import MemoryProfileTimeline

        with profile(
            activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
            with_stack=True,
        ) as prof:
            fn()
        _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(device)
        totals = [sum(s) for s in sizes]
        return int(max(totals) - totals[0]) if totals else 0
    except Exception:  # noqa: BLE001 (private API: any failure means 'unknown')
        return None


def compare(
    ours: Callable[[], object],
    baseline: Callable[[], object],
    device: torch.device,
    warmup: int,
    repeats: int,
) -> dict:
    """Warm both up, time them alternately, measure peak memory; return the comparison fields."""
    with torch.no_grad():
        for _ in range(warmup):
            ours()
            baseline()
        ours_t: list[float] = []
        base_t: list[float] = []
        for _ in range(repeats):  # alternate so drift (clocks, other load) hits both alike
            ours_t += time_ms(ours, device, 1)
            base_t += time_ms(baseline, device, 1)
        ours_mem = peak_extra_bytes(ours, device)
        base_mem = peak_extra_bytes(baseline, device)
    ours_ms, base_ms = statistics.median(ours_t), statistics.median(base_t)
    mem_ratio = None
    if ours_mem is not None and base_mem:
        mem_ratio = ours_mem / base_mem
    return {
        "ours_ms": ours_ms,
        "baseline_ms": base_ms,
        "time_ratio": ours_ms / base_ms if base_ms > 0 else None,
        "speedup": base_ms / ours_ms if ours_ms > 0 else None,
        "ours_peak_mib": None if ours_mem is None else ours_mem / MIB,
        "baseline_peak_mib": None if base_mem is None else base_mem / MIB,
        "memory_ratio": mem_ratio,
    }


# ----------------------------------------------------------------------------------------------
# inputs


def sae_inputs(shape: SaeShape, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """x [tokens, d_in], W_enc/W_dec [latents, d_in], b_enc [latents], b_dec [d_in]."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*size, scale=1.0):
        return (torch.randn(*size, generator=g) * scale).to(device=device, dtype=dtype)

    x = rand(shape.tokens, shape.d_in)
    W_enc = rand(shape.latents, shape.d_in, scale=shape.d_in**-0.5)
    b_enc = rand(shape.latents, scale=0.1)
    W_dec = rand(shape.latents, shape.d_in, scale=shape.d_in**-0.5)
    b_dec = rand(shape.d_in, scale=0.1)
    return x, W_enc, b_enc, W_dec, b_dec


def attention_inputs(
    shape: AttentionShape, device: torch.device, dtype: torch.dtype, peaked_heads: float = 0.0,
    seed: int = 0,
):
    """q, k, v [batch, heads, seq, head_dim]. The first ``peaked_heads`` fraction of heads gets
    a strong attention sink on the first block (every query aligned with it), so threshold
    skipping has something to skip; the other heads stay flat (random)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    size = (shape.batch, shape.heads, shape.seq, shape.head_dim)
    q, k, v = (torch.randn(*size, generator=g) for _ in range(3))
    n_peaked = round(peaked_heads * shape.heads)
    if n_peaked:
        direction = torch.randn(shape.head_dim, generator=g)
        direction = direction / direction.norm() * 1.5 * shape.head_dim**0.5
        q[:, :n_peaked] += direction
        k[:, :n_peaked, : shape.block] += direction
    return tuple(t.to(device=device, dtype=dtype) for t in (q, k, v))


def mask_for_sparsity(shape: AttentionShape, device: torch.device) -> torch.Tensor:
    """A causal block mask (first block, diagonal, then nearest blocks) keeping about
    (1 - sparsity) of the causal triangle: keep_blocks per query block chosen to match."""
    n = num_blocks(shape.seq, shape.block)
    total = n * (n + 1) / 2
    target = (1.0 - shape.sparsity) * total
    keep = 1
    while keep < n and sum(min(keep + 1, i + 1) for i in range(n)) <= target:
        keep += 1
    qb = torch.arange(n, device=device)[:, None]
    kb = torch.arange(n, device=device)[None, :]
    mask = (kb == 0) | ((qb - kb) < max(1, keep - 1))  # sink + a band of keep - 1 blocks
    mask = mask & causal_block_mask(n, device)
    return mask.expand(shape.batch, shape.heads, n, n)


# ----------------------------------------------------------------------------------------------
# cases


def _row(kernel: str, shape: str, ours: str, baseline: str, device, dtype, cmp: dict, **extra):
    return {
        "kernel": kernel, "shape": shape, "device": str(device), "dtype": str(dtype)[6:],
        "ours": ours, "baseline": baseline, **cmp, **extra,
    }


def bench_encode(shape: SaeShape, device, dtype, warmup, repeats) -> list[dict]:
    x, W_enc, b_enc, _, _ = sae_inputs(shape, device, dtype)
    backend = resolve_backend("auto", device)
    cmp = compare(
        lambda: topk_encode(x, W_enc, b_enc, shape.k),
        lambda: torch.topk(torch.relu(x @ W_enc.T + b_enc), shape.k),
        device, warmup, repeats,
    )
    name = f"T={shape.tokens} d={shape.d_in} L={shape.latents} k={shape.k}"
    return [_row("topk_encode", name, backend, "topk(relu(x@W.T+b))", device, dtype, cmp)]


def bench_decode(shape: SaeShape, device, dtype, warmup, repeats) -> list[dict]:
    x, W_enc, b_enc, W_dec, b_dec = sae_inputs(shape, device, dtype)
    with torch.no_grad():
        values, indices = topk_encode(x, W_enc, b_enc, shape.k)
    backend = resolve_backend("auto", device)
    name = f"T={shape.tokens} d={shape.d_in} L={shape.latents} k={shape.k}"

    def dense():
        code = torch.zeros(shape.tokens, shape.latents, device=device, dtype=dtype)
        return code.scatter_(1, indices, values) @ W_dec + b_dec

    def bag():
        return F.embedding_bag(indices, W_dec, per_sample_weights=values, mode="sum") + b_dec

    def ours():
        return sparse_decode(values, indices, W_dec, b_dec)

    return [
        _row("sparse_decode", name, backend, base_name, device, dtype,
             compare(ours, base_fn, device, warmup, repeats))
        for base_name, base_fn in (("dense scatter+matmul", dense), ("F.embedding_bag", bag))
    ]


def _bench_attention(kernel: str, run, shape: AttentionShape, q, k, v, label: str,
                     device, dtype, warmup, repeats) -> list[dict]:
    """One row: ``run(q, k, v) -> (out, computed_fraction)`` against dense causal SDPA."""
    _, fraction = run(q, k, v)
    cmp = compare(
        lambda: run(q, k, v),
        lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        device, warmup, repeats,
    )
    name = (f"B={shape.batch} H={shape.heads} S={shape.seq} D={shape.head_dim} "
            f"blk={shape.block}{label}")
    backend = "triton" if resolve_backend("auto", device) == "triton" else "torch"  # no cpu kernel
    return [_row(kernel, name, backend, "SDPA causal (dense)", device,
                 dtype, cmp, computed_fraction=fraction)]


def bench_block_sparse(shape: AttentionShape, device, dtype, warmup, repeats) -> list[dict]:
    q, k, v = attention_inputs(shape, device, dtype)
    lists = block_mask_to_lists(mask_for_sparsity(shape, device))  # built once, then reused
    return _bench_attention(
        "block_sparse_attention",
        lambda q, k, v: block_sparse_attention(q, k, v, lists, shape.block),
        shape, q, k, v, "", device, dtype, warmup, repeats,
    )


def bench_blasst(shape: AttentionShape, device, dtype, warmup, repeats, threshold=1e-3):
    q, k, v = attention_inputs(shape, device, dtype, peaked_heads=shape.sparsity)
    return _bench_attention(
        "blasst_attention",
        lambda q, k, v: blasst_attention(q, k, v, threshold, shape.block),
        shape, q, k, v, f" lambda={threshold:g}", device, dtype, warmup, repeats,
    )


def benchmark_plan(device: torch.device, quick: bool):
    """(sae shapes, block-sparse shapes, blasst shapes, dtype, warmup, repeats) for a device."""
    if device.type == "cuda":
        d_ins, latents, ks = (768, 2304), (16384, 65536), (32, 64, 128)
        if quick:
            d_ins, latents, ks = (768,), (16384,), (64,)
        sae = [SaeShape(8192, d, n, k) for d in d_ins for n in latents for k in ks]
        seqs = (4096, 32768) if quick else (4096, 8192, 16384, 32768)
        blocks = (128,) if quick else (64, 128)
        sparsities = (0.9,) if quick else (0.5, 0.9, 0.95)
        sparse = [AttentionShape(1, 16, s, 128, b, p)
                  for s in seqs for b in blocks for p in sparsities]
        blasst = [AttentionShape(1, 16, s, 128, b, 0.7) for s in seqs for b in blocks]
        return sae, sparse, blasst, torch.bfloat16, (3 if quick else 5), (10 if quick else 25)
    sae = [SaeShape(1024, 256, 4096, 32)]
    if not quick:
        sae.append(SaeShape(2048, 512, 8192, 64))
    sparse = [AttentionShape(1, 4, 1024, 64, 64, 0.9)]
    if not quick:
        sparse.append(AttentionShape(1, 4, 1024, 64, 64, 0.5))
    blasst = [AttentionShape(1, 4, 1024, 64, 64, 0.7)]
    return sae, sparse, blasst, torch.float32, 1, 3


def run_kernel_benchmarks(device: str | torch.device | None = None, quick: bool = False) -> list[dict]:
    """Run every kernel benchmark on ``device`` (default: CUDA if present, else CPU).

    Returns one dict per (kernel, shape, baseline) with keys kernel, shape, device, dtype, ours
    (backend used: "triton", "cpu" = the native CPU kernels, or "torch" = the PyTorch
    reference), baseline, ours_ms,
    baseline_ms, time_ratio (ours / baseline), speedup (baseline / ours), ours_peak_mib,
    baseline_peak_mib, memory_ratio (ours / baseline; None where unknown) and, for attention,
    computed_fraction.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sae, sparse, blasst, dtype, warmup, repeats = benchmark_plan(device, quick)
    rows: list[dict] = []
    for shape in sae:
        rows += bench_encode(shape, device, dtype, warmup, repeats)
        rows += bench_decode(shape, device, dtype, warmup, repeats)
    for shape in sparse:
        rows += bench_block_sparse(shape, device, dtype, warmup, repeats)
    for shape in blasst:
        rows += bench_blasst(shape, device, dtype, warmup, repeats)
    return rows


# ----------------------------------------------------------------------------------------------
# output


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def describe_run(rows: list[dict]) -> str:
    """One paragraph saying what was measured (and, on CPU, what was not)."""
    if not rows:
        return "no benchmark rows"
    if rows[0]["device"].startswith("cuda"):
        return ("CUDA: Triton kernels ('triton') against PyTorch baselines; median times after "
                "warm-up, peak extra memory from torch.cuda.max_memory_allocated.")
    return ("CPU: no GPU here, so this compares the native CPU kernels ('cpu', where they build) "
            "or the PyTorch *reference* path ('torch') with the baselines on small shapes. "
            "These are not Triton kernel timings (the Triton "
            "interpreter is for correctness only); run on a CUDA machine for kernel numbers. "
            "Peak memory from the PyTorch profiler's memory timeline.")


def format_table(rows: list[dict]) -> str:
    """Render benchmark rows as an aligned text table, preceded by describe_run()."""
    header = ["kernel", "shape", "ours", "baseline", "ours ms", "base ms", "ours/base",
              "ours MiB", "base MiB", "mem ratio", "computed"]
    lines = [
        [r["kernel"], r["shape"], f"{r['ours']} {r['dtype']}", r["baseline"],
         _fmt(r["ours_ms"], ".3f"), _fmt(r["baseline_ms"], ".3f"), _fmt(r["time_ratio"], ".2f"),
         _fmt(r["ours_peak_mib"], ".1f"), _fmt(r["baseline_peak_mib"], ".1f"),
         _fmt(r["memory_ratio"], ".3f"), _fmt(r.get("computed_fraction"), ".2f")]
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    render = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in [header] + lines]
    render.insert(1, "  ".join("-" * w for w in widths))
    return describe_run(rows) + "\n\n" + "\n".join(render)


def print_table(rows: list[dict]) -> None:
    """Print :func:`format_table` output."""
    print(format_table(rows))


if __name__ == "__main__":  # python -m sparse_ops.bench
    print_table(run_kernel_benchmarks(quick=True))
